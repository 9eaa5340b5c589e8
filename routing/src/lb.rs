//! Clusters and load balancing.
//!
//! A [`Cluster`] is one (service, port, subset) with its endpoints and its
//! effective [`ClusterPolicy`]. Per attempt the proxy asks it for an endpoint
//! ([`Cluster::pick`], [`Cluster::pick_hashed`], or [`Cluster::pick_at`] with
//! explicit time and randomness), takes circuit-breaker guards
//! ([`Cluster::try_acquire`]), counts the request as active
//! ([`ClusterEndpoint::begin`]) and reports the outcome to outlier detection
//! ([`Cluster::report`]).
//!
//! Active-request counters (for LEAST_REQUEST), warmup start times, outlier
//! state and circuit-breaker counters live behind `Arc`s: guards may outlive
//! the snapshot borrow, and [`crate::Snapshot::carry_over_state`] hands them
//! to the next snapshot's cluster of the same name (per endpoint: same
//! `ip:port` and identity), so a reload neither resets ejections, warmup nor
//! limits. Without the carry-over a new snapshot starts from zero.
//!
//! # What the proxy calls, per request
//!
//! 1. `snapshot.cluster(host, port, subset)`. If [`Cluster::passthrough`],
//!    connect to the request's original destination; no pick.
//! 2. [`Cluster::request_hash`] (consistent-hash clusters; empty otherwise).
//!    If it returns a `set_cookie`, add `set-cookie:
//!    {SetCookie::header_value}` to the response.
//! 3. [`Cluster::try_acquire`]`(Request)` for the whole request; `Overflow` →
//!    503, flag `UO`.
//! 4. Per attempt: for a retry, `try_acquire(Retry)` for the attempt
//!    (`Overflow` → stop retrying, keep the last failure); then
//!    [`Cluster::pick_attempt`]`(hash, &tried, avoid_tried)` (the retry
//!    policy's `previous_hosts`: tried endpoints only while others are
//!    left); `None` → 503 `UH` (nothing usable);
//!    then [`ClusterEndpoint::begin`] for LEAST_REQUEST.
//! 5. When an attempt must open a new upstream connection (tunnel):
//!    `try_acquire(PendingRequest)` while dialing, `try_acquire(Connection)`
//!    for the connection's life (keep the guard with the pooled tunnel).
//!    The dial timeout is `policy.connect_timeout()` when set.
//! 6. [`Cluster::report`]`(target, outcome, Instant::now())` once per attempt:
//!    the upstream's status, or `ConnectFailure`, `Reset`, `Timeout`. Not for
//!    503s the proxy made itself (`UO`, `UH`).
//!
//! On a config reload: build the new snapshot, call
//! [`crate::Snapshot::carry_over_state`] with the old one, then publish it.

use crate::hash::{HashRequest, HashTable, RequestHash};
use crate::model::{Endpoint, LbPolicy, Locality};
use crate::outlier::{in_panic, may_eject, Ejection, EjectionKind, HostOutlier, Outcome};
use crate::policy::{
    ClusterPolicy, ConsistentHash, HashAlgorithm, OutlierSettings, Placement, PoolLimits, Warmup,
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE,
};
use crate::pool::{Overflow, PoolCounters, PoolGuard, PoolHandle, PoolResource};
use rand::Rng;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-endpoint state that survives reloads.
#[derive(Debug)]
struct EndpointState {
    /// When the endpoint joined the cluster (slow start).
    added: Instant,
    outlier: Mutex<HostOutlier>,
}

/// One endpoint of a [`Cluster`] with its resolved target address.
#[derive(Debug)]
pub struct ClusterEndpoint {
    pub endpoint: Arc<Endpoint>,
    /// Endpoint IP : service port's target port.
    pub target: SocketAddr,
    /// Priority level (0 = preferred; higher levels take the load P0 cannot).
    pub priority: u32,
    pub locality: Locality,
    /// The locality group's weight (used with locality-weighted LB).
    pub locality_weight: u32,
    active: Arc<AtomicUsize>,
    state: Arc<EndpointState>,
}

impl ClusterEndpoint {
    /// An endpoint that joins now.
    pub fn new(endpoint: Arc<Endpoint>, target: SocketAddr) -> Self {
        Self::new_at(endpoint, target, Instant::now())
    }

    /// An endpoint that joined at `added` (the start of its warmup).
    pub fn new_at(endpoint: Arc<Endpoint>, target: SocketAddr, added: Instant) -> Self {
        ClusterEndpoint {
            endpoint,
            target,
            priority: 0,
            locality: Locality::default(),
            locality_weight: 1,
            active: Arc::new(AtomicUsize::new(0)),
            state: Arc::new(EndpointState {
                added,
                outlier: Mutex::new(HostOutlier::default()),
            }),
        }
    }

    /// Placed in an assignment's priority level and locality.
    pub fn placed(mut self, p: &Placement) -> Self {
        self.priority = p.priority;
        self.locality = p.locality.clone();
        self.locality_weight = p.locality_weight;
        self
    }

    /// Requests currently in flight to this endpoint (as counted by guards).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// When this endpoint joined the cluster (start of its warmup).
    pub fn added(&self) -> Instant {
        self.state.added
    }

    /// Count one active request until the guard is dropped.
    pub fn begin(&self) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            counter: Some(self.active.clone()),
        }
    }

    /// Ejected at `now` (after replaying the interval ticks up to `now`).
    fn ejected_at(&self, now: Instant, origin: Instant, s: &OutlierSettings) -> bool {
        let mut h = lock(&self.state.outlier);
        h.catch_up(now, origin, s);
        h.is_ejected()
    }
}

impl Serialize for ClusterEndpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ClusterEndpoint", 9)?;
        st.serialize_field("name", &self.endpoint.name)?;
        st.serialize_field("target", &self.target.to_string())?;
        // How this cluster dials it (a DestinationRule ISTIO_MUTUAL makes a direct endpoint
        // istio_mutual here; the cluster's `policy.tls` says which TLS a direct one gets).
        st.serialize_field("transport", &self.endpoint.transport)?;
        if self.priority == 0 && self.locality == Locality::default() {
            st.skip_field("priority")?;
            st.skip_field("locality")?;
            st.skip_field("locality_weight")?;
        } else {
            st.serialize_field("priority", &self.priority)?;
            st.serialize_field("locality", &self.locality.to_string())?;
            st.serialize_field("locality_weight", &self.locality_weight)?;
        }
        st.serialize_field("identity", &self.endpoint.identity)?;
        st.serialize_field("active", &self.active())?;
        st.serialize_field("ejections", &lock(&self.state.outlier).num_ejections())?;
        st.end()
    }
}

/// Decrements its endpoint's active-request counter on drop.
#[derive(Debug)]
#[must_use = "the request counts as active only while the guard lives"]
pub struct ActiveGuard {
    counter: Option<Arc<AtomicUsize>>,
}

impl ActiveGuard {
    /// A guard that counts nothing (e.g. target not in the cluster).
    pub fn detached() -> Self {
        ActiveGuard { counter: None }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Cluster-wide state that survives reloads.
#[derive(Debug)]
struct ClusterShared {
    pool: Arc<PoolCounters>,
    /// Start of the outlier-detection interval grid.
    origin: Instant,
    /// Serializes ejection decisions (the max-ejection-percent check).
    eject_lock: Mutex<()>,
}

/// Everything needed to pick an endpoint for one (service, port, subset).
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// `inbound-vip|<port>|<http|tcp>[/<subset>]|<hostname>`
    pub name: String,
    pub service_hostname: String,
    /// Service port.
    pub port: u16,
    pub subset: Option<String>,
    /// The load-balancing algorithm (`policy.lb_policy()`).
    pub lb: LbPolicy,
    /// The effective DestinationRule policy for this port and subset.
    pub policy: ClusterPolicy,
    pub endpoints: Vec<ClusterEndpoint>,
    #[serde(skip)]
    rr: AtomicUsize,
    #[serde(skip)]
    table: Option<HashTable>,
    #[serde(skip)]
    limits: PoolLimits,
    #[serde(skip)]
    outlier: Option<OutlierSettings>,
    #[serde(skip)]
    warmup: Option<Warmup>,
    /// Priority levels and localities; `None`: one level, localities ignored.
    #[serde(skip)]
    levels: Option<Levels>,
    #[serde(skip)]
    shared: Arc<ClusterShared>,
}

/// Envoy's default overprovisioning factor (istiod sends no
/// `policy.overprovisioning_factor`), in percent.
pub const OVERPROVISIONING_FACTOR: u64 = 140;

/// The endpoints of a cluster by priority level (ascending) and, within a
/// level, by locality: indices into [`Cluster::endpoints`], computed once.
#[derive(Debug)]
struct Levels {
    /// `locality_weighted_lb_config`: pick a locality by weight first.
    weighted: bool,
    levels: Vec<Level>,
}

#[derive(Debug)]
struct Level {
    hosts: Vec<usize>,
    /// (weight, hosts) per locality.
    localities: Vec<(u32, Vec<usize>)>,
}

impl Levels {
    /// `None` when there is nothing to choose: one level and no locality weighting.
    fn new(endpoints: &[ClusterEndpoint], weighted: bool) -> Option<Self> {
        use std::collections::BTreeMap;
        let mut by: BTreeMap<u32, BTreeMap<&Locality, (u32, Vec<usize>)>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            by.entry(e.priority)
                .or_default()
                .entry(&e.locality)
                .or_insert((e.locality_weight, Vec::new()))
                .1
                .push(i);
        }
        if by.len() <= 1 && !weighted {
            return None;
        }
        let levels = by
            .into_values()
            .map(|locs| {
                let localities: Vec<(u32, Vec<usize>)> = locs.into_values().collect();
                Level {
                    hosts: localities.iter().flat_map(|(_, h)| h.clone()).collect(),
                    localities,
                }
            })
            .collect();
        Some(Levels { weighted, levels })
    }
}

/// Load per priority level (percent, summing to 100, or all 0 when nothing
/// can take load) and whether each level is in panic, from each level's
/// `(healthy, hosts)`, as Envoy computes them (`LoadBalancerBase`
/// `recalculatePerPriorityState` / `recalculatePerPriorityPanic`):
///
/// - a level's health is `min(100, 1.4 × healthy %)`;
/// - load fills P0 up to its health, the rest spills to P1, and so on; when the
///   healths add up to less than 100 they are scaled up to 100 (rounding
///   remainder to the first level with health);
/// - a level is in panic when its healthy % is below `panic_threshold` (then
///   it balances over all its hosts); when every level is, the load follows
///   the host counts instead.
pub fn priority_loads(levels: &[(usize, usize)], panic_threshold: u8) -> (Vec<u32>, Vec<bool>) {
    let n = levels.len();
    let mut load = vec![0u32; n];
    let health: Vec<u64> = levels
        .iter()
        .map(|&(healthy, hosts)| {
            if hosts == 0 {
                0
            } else {
                (OVERPROVISIONING_FACTOR * healthy as u64 / hosts as u64).min(100)
            }
        })
        .collect();
    let total: u64 = health.iter().sum::<u64>().min(100);
    let threshold = panic_threshold.min(100);
    if total == 0 && threshold == 0 {
        // Panic disabled and nothing healthy: no host at all.
        return (load, vec![false; n]);
    }
    let panic: Vec<bool> = levels
        .iter()
        .map(|&(healthy, hosts)| total == 0 || in_panic(healthy, hosts, threshold))
        .collect();
    if panic.iter().all(|p| *p) {
        let all: usize = levels.iter().map(|l| l.1).sum();
        if all == 0 {
            return (load, panic);
        }
        let mut left = 100u32;
        for (i, &(_, hosts)) in levels.iter().enumerate() {
            load[i] = (100 * hosts / all) as u32;
            left -= load[i];
        }
        if let Some(first) = levels.iter().position(|l| l.1 > 0) {
            load[first] += left;
        }
        return (load, panic);
    }
    let mut left = 100u64;
    for (i, h) in health.iter().enumerate() {
        let share = (h * 100 / total).min(left);
        load[i] = share as u32;
        left -= share;
    }
    if let Some(first) = health.iter().position(|h| *h > 0) {
        load[first] += left as u32;
    }
    (load, panic)
}

/// Istio's inbound-VIP cluster name; `proto` is `"http"` or `"tcp"`.
pub fn cluster_name(hostname: &str, port: u16, proto: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("inbound-vip|{port}|{proto}/{s}|{hostname}"),
        None => format!("inbound-vip|{port}|{proto}|{hostname}"),
    }
}

/// Index into `weights` for `u ∈ [0, 1)`, proportional to the weights.
fn weighted_index(weights: &[f64], u: f64) -> Option<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = u * total;
    let mut last = None;
    for (i, w) in weights.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        if x < *w {
            return Some(i);
        }
        x -= w;
        last = Some(i);
    }
    last
}

/// Weyl sequence with the golden ratio: evenly spread points in [0, 1).
fn golden(n: usize) -> f64 {
    (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as f64 / 18_446_744_073_709_551_616.0
}

impl Cluster {
    /// A cluster with only a `simple` load-balancer policy, created now.
    pub fn new(
        name: String,
        service_hostname: String,
        port: u16,
        subset: Option<String>,
        lb: LbPolicy,
        endpoints: Vec<ClusterEndpoint>,
    ) -> Self {
        Self::with_policy(
            name,
            service_hostname,
            port,
            subset,
            ClusterPolicy::with_lb(lb),
            endpoints,
            Instant::now(),
        )
    }

    /// A cluster with an effective policy; `now` starts its outlier-detection
    /// interval grid.
    pub fn with_policy(
        name: String,
        service_hostname: String,
        port: u16,
        subset: Option<String>,
        policy: ClusterPolicy,
        mut endpoints: Vec<ClusterEndpoint>,
        now: Instant,
    ) -> Self {
        let lb = policy.lb_policy();
        let locality = policy
            .load_balancer
            .as_ref()
            .and_then(|l| l.locality.as_ref());
        if let Some(loc) = locality {
            endpoints = endpoints
                .into_iter()
                .map(|e| match loc.endpoints.get(&e.target.ip()) {
                    Some(p) => e.placed(p),
                    None => e,
                })
                .collect();
        }
        let levels = Levels::new(&endpoints, locality.is_some_and(|l| l.weighted));
        let targets: Vec<SocketAddr> = endpoints.iter().map(|e| e.target).collect();
        let algorithm = policy.consistent_hash().map(|c| c.algorithm);
        let table = match (lb, algorithm) {
            (
                LbPolicy::RingHash | LbPolicy::Maglev,
                Some(HashAlgorithm::RingHash { minimum_ring_size }),
            ) => Some(HashTable::ring(&targets, minimum_ring_size)),
            (LbPolicy::RingHash | LbPolicy::Maglev, Some(HashAlgorithm::Maglev { table_size })) => {
                Some(HashTable::maglev(&targets, table_size))
            }
            (LbPolicy::RingHash, None) => {
                Some(HashTable::ring(&targets, DEFAULT_MINIMUM_RING_SIZE))
            }
            (LbPolicy::Maglev, None) => {
                Some(HashTable::maglev(&targets, DEFAULT_MAGLEV_TABLE_SIZE))
            }
            _ => None,
        };
        Cluster {
            name,
            service_hostname,
            port,
            subset,
            lb,
            limits: policy.limits(),
            outlier: policy.outlier(),
            warmup: policy.warmup(),
            levels,
            policy,
            endpoints,
            rr: AtomicUsize::new(0),
            table,
            shared: Arc::new(ClusterShared {
                pool: Arc::new(PoolCounters::default()),
                origin: now,
                eject_lock: Mutex::new(()),
            }),
        }
    }

    /// Take over the live state of `previous` (the same cluster in the
    /// snapshot being replaced): circuit-breaker counters, the outlier
    /// interval grid and, per endpoint with the same target and identity,
    /// active requests, warmup start and outlier state. Endpoints new to the
    /// cluster keep their own (fresh) state: they are warming up.
    pub(crate) fn carry_over(&mut self, previous: &Cluster) {
        self.shared = previous.shared.clone();
        for e in &mut self.endpoints {
            if let Some(p) = previous
                .endpoints
                .iter()
                .find(|p| p.target == e.target && p.endpoint.identity == e.endpoint.identity)
            {
                e.active = p.active.clone();
                e.state = p.state.clone();
            }
        }
    }

    /// Pick an endpoint by the LB policy, skipping those whose `target` is in
    /// `exclude` (retries on another endpoint) and ejected ones. `None` if
    /// nothing is left. Consistent-hash clusters pick at random here (as
    /// Envoy does for a request without hash key); use [`Cluster::pick_hashed`].
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<&ClusterEndpoint> {
        self.pick_at(None, exclude, Instant::now(), &mut rand::thread_rng())
    }

    /// [`Cluster::pick`] with the request's hash ([`Cluster::request_hash`]):
    /// the same hash maps to the same endpoint while it is available; when it
    /// is excluded or ejected, to the next one on the ring / table. Non-hash
    /// policies ignore the hash.
    pub fn pick_hashed(&self, hash: u64, exclude: &[SocketAddr]) -> Option<&ClusterEndpoint> {
        self.pick_at(Some(hash), exclude, Instant::now(), &mut rand::thread_rng())
    }

    /// The pick for an attempt of a request that already `tried` these
    /// endpoints. With `avoid_tried` (Envoy's `previous_hosts` retry
    /// predicate) the tried ones are skipped while another is usable;
    /// otherwise — or when every usable endpoint was tried — any may be
    /// picked again, as Envoy's load balancer falls back to the last host it
    /// picked. So a retry to a one-endpoint cluster goes to that endpoint.
    /// (Envoy re-picks at most `host_selection_retry_max_attempts` times and
    /// may, rarely, return to a tried host while another exists; skipping
    /// them outright is that loop's likely outcome without the chance.)
    pub fn pick_attempt(
        &self,
        hash: Option<u64>,
        tried: &[SocketAddr],
        avoid_tried: bool,
    ) -> Option<&ClusterEndpoint> {
        let (now, rng) = (Instant::now(), &mut rand::thread_rng());
        if avoid_tried && !tried.is_empty() {
            if let Some(e) = self.pick_at(hash, tried, now, rng) {
                return Some(e);
            }
        }
        self.pick_at(hash, &[], now, rng)
    }

    /// The general pick: explicit hash, time (outlier un-ejection, warmup)
    /// and randomness (RANDOM, LEAST_REQUEST, missing hash).
    pub fn pick_at<R: Rng + ?Sized>(
        &self,
        hash: Option<u64>,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut R,
    ) -> Option<&ClusterEndpoint> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let mask = match &self.levels {
            None => self.usable(now),
            Some(levels) => Some(self.level_candidates(levels, exclude, now, rng)?),
        };
        let allowed = |i: usize| {
            mask.as_ref().is_none_or(|u| u[i]) && !exclude.contains(&self.endpoints[i].target)
        };
        if !(0..n).any(allowed) {
            return None;
        }
        let i = match self.lb {
            LbPolicy::RingHash | LbPolicy::Maglev => {
                let h = hash.unwrap_or_else(|| rng.gen());
                self.table.as_ref()?.lookup(h, allowed)
            }
            LbPolicy::Random => {
                let cands: Vec<usize> = (0..n).filter(|&i| allowed(i)).collect();
                Some(cands[rng.gen_range(0..cands.len())])
            }
            LbPolicy::RoundRobin => self.pick_round_robin(&allowed, now),
            LbPolicy::LeastRequest | LbPolicy::Passthrough => {
                self.pick_least_request(&allowed, now, rng)
            }
        }?;
        Some(&self.endpoints[i])
    }

    /// The endpoints this pick may use, as Envoy narrows them: a priority level
    /// by the health-based spill ([`priority_loads`]), then, unless the level is
    /// in panic, its healthy endpoints — of one locality picked by
    /// `weight × min(1, 1.4 × healthy share)` when locality-weighted. When the
    /// request's `exclude` leaves nothing there, the level's other usable
    /// endpoints, then those of every level with load. `None`: no level
    /// can take load.
    fn level_candidates<R: Rng + ?Sized>(
        &self,
        levels: &Levels,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut R,
    ) -> Option<Vec<bool>> {
        let healthy: Vec<bool> = match self.outlier.as_ref() {
            Some(s) => self
                .endpoints
                .iter()
                .map(|e| !e.ejected_at(now, self.shared.origin, s))
                .collect(),
            None => vec![true; self.endpoints.len()],
        };
        let count = |hosts: &[usize]| hosts.iter().filter(|&&i| healthy[i]).count();
        let per_level: Vec<(usize, usize)> = levels
            .levels
            .iter()
            .map(|l| (count(&l.hosts), l.hosts.len()))
            .collect();
        let threshold = self.outlier.as_ref().map_or(0, |s| s.min_health_percent);
        let (load, panic) = priority_loads(&per_level, threshold);
        let mut x = rng.gen_range(0..100u32);
        let chosen = load.iter().position(|&l| {
            if x < l {
                true
            } else {
                x -= l;
                false
            }
        })?;
        let usable_in = |p: usize, i: usize| panic[p] || healthy[i];
        let open = |i: &usize| !exclude.contains(&self.endpoints[*i].target);
        let level = &levels.levels[chosen];
        let mut mask = vec![false; self.endpoints.len()];
        if levels.weighted && !panic[chosen] {
            let weights: Vec<f64> = level
                .localities
                .iter()
                .map(|(w, hosts)| {
                    let share = count(hosts) as f64 / hosts.len() as f64;
                    f64::from(*w) * (OVERPROVISIONING_FACTOR as f64 / 100.0 * share).min(1.0)
                })
                .collect();
            if let Some(k) = weighted_index(&weights, rng.gen()) {
                let hosts = &level.localities[k].1;
                if hosts.iter().any(|i| healthy[*i] && open(i)) {
                    for &i in hosts.iter().filter(|i| healthy[**i]) {
                        mask[i] = true;
                    }
                    return Some(mask);
                }
            }
        }
        if level.hosts.iter().any(|i| usable_in(chosen, *i) && open(i)) {
            for &i in level.hosts.iter().filter(|i| usable_in(chosen, **i)) {
                mask[i] = true;
            }
            return Some(mask);
        }
        for (p, l) in levels
            .levels
            .iter()
            .enumerate()
            .filter(|(p, _)| load[*p] > 0)
        {
            for &i in l.hosts.iter().filter(|i| usable_in(p, **i)) {
                mask[i] = true;
            }
        }
        Some(mask)
    }

    /// Plain rotation; while endpoints warm up, a weighted rotation (an evenly
    /// spread sequence over the cumulative weights).
    fn pick_round_robin(&self, allowed: &dyn Fn(usize) -> bool, now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        let tick = self.rr.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = self.warm_weights(allowed, now) {
            return weighted_index(&w, golden(tick));
        }
        if self.levels.is_none() {
            return (0..n).map(|k| (tick + k) % n).find(|&i| allowed(i));
        }
        // A level or locality is a subset: rotate over it alone, so skipped
        // endpoints do not hand their turn to the next allowed one.
        let cands: Vec<usize> = (0..n).filter(|&i| allowed(i)).collect();
        (!cands.is_empty()).then(|| cands[tick % cands.len()])
    }

    /// Power of two choices on active requests (Istio's default). While
    /// endpoints warm up: a weighted random choice by
    /// `weight / (active + 1)`, Envoy's effective weight for unequal weights.
    fn pick_least_request<R: Rng + ?Sized>(
        &self,
        allowed: &dyn Fn(usize) -> bool,
        now: Instant,
        rng: &mut R,
    ) -> Option<usize> {
        if let Some(w) = self.warm_weights(allowed, now) {
            let eff: Vec<f64> = w
                .iter()
                .zip(&self.endpoints)
                .map(|(w, e)| w / (e.active() as f64 + 1.0))
                .collect();
            return weighted_index(&eff, rng.gen());
        }
        let cands: Vec<usize> = (0..self.endpoints.len()).filter(|&i| allowed(i)).collect();
        match cands.len() {
            0 => None,
            1 => Some(cands[0]),
            len => {
                let a = rng.gen_range(0..len);
                let mut b = rng.gen_range(0..len - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (cands[a], cands[b]);
                Some(
                    if self.endpoints[eb].active() < self.endpoints[ea].active() {
                        eb
                    } else {
                        ea
                    },
                )
            }
        }
    }

    /// Slow-start weights of the allowed endpoints (0 for the others), or
    /// `None` when there is no warmup or all allowed weights are equal.
    fn warm_weights(&self, allowed: &dyn Fn(usize) -> bool, now: Instant) -> Option<Vec<f64>> {
        let warmup = self.warmup?;
        let w: Vec<f64> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if allowed(i) {
                    warmup.weight(now.saturating_duration_since(e.added()))
                } else {
                    0.0
                }
            })
            .collect();
        let mut live = w.iter().filter(|x| **x > 0.0);
        let first = *live.next()?;
        live.any(|x| (x - first).abs() > 1e-9).then_some(w)
    }

    /// Slow-start weight factor of `target` at `now` (1 without warmup or
    /// once warm); `None` if `target` is not in the cluster.
    pub fn weight(&self, target: SocketAddr, now: Instant) -> Option<f64> {
        let e = self.endpoint(target)?;
        Some(
            self.warmup
                .map_or(1.0, |w| w.weight(now.saturating_duration_since(e.added()))),
        )
    }

    /// `Some(mask)` of endpoints not ejected; `None` = all usable (no
    /// detector, nothing ejected, or below the panic threshold).
    fn usable(&self, now: Instant) -> Option<Vec<bool>> {
        let s = self.outlier.as_ref()?;
        let origin = self.shared.origin;
        let mask: Vec<bool> = self
            .endpoints
            .iter()
            .map(|e| !e.ejected_at(now, origin, s))
            .collect();
        let healthy = mask.iter().filter(|u| **u).count();
        if healthy == mask.len() || in_panic(healthy, mask.len(), s.min_health_percent) {
            return None;
        }
        Some(mask)
    }

    /// The endpoint with this target, if any.
    pub fn endpoint(&self, target: SocketAddr) -> Option<&ClusterEndpoint> {
        self.endpoints.iter().find(|e| e.target == target)
    }

    /// Count one active request to `target` until the guard is dropped; a
    /// detached (no-op) guard if `target` is not in this cluster.
    pub fn begin(&self, target: SocketAddr) -> ActiveGuard {
        self.endpoint(target)
            .map(ClusterEndpoint::begin)
            .unwrap_or_else(ActiveGuard::detached)
    }

    /// `PASSTHROUGH`: the proxy connects to the original destination
    /// address of the request instead of picking an endpoint.
    pub fn passthrough(&self) -> bool {
        self.lb == LbPolicy::Passthrough
    }

    /// The consistent-hash policy, if this cluster hashes.
    pub fn consistent_hash(&self) -> Option<&ConsistentHash> {
        self.policy.consistent_hash()
    }

    /// What to hash this request with (and the affinity cookie to set on the
    /// response, for a cookie key with `ttl` when the request has none).
    /// Empty for clusters that do not hash.
    pub fn request_hash(
        &self,
        req: &dyn HashRequest,
        downstream_remote: SocketAddr,
        downstream_local: SocketAddr,
    ) -> RequestHash {
        match self.consistent_hash() {
            Some(ch) => RequestHash::compute(ch, req, downstream_remote, downstream_local),
            None => RequestHash::default(),
        }
    }

    /// Circuit-breaker limits of this cluster.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Take one unit of `resource`, or [`Overflow`] at the limit (503 `UO`).
    /// The unit is released when the guard drops.
    pub fn try_acquire(&self, resource: PoolResource) -> Result<PoolGuard, Overflow> {
        self.shared
            .pool
            .try_acquire(resource, resource.limit(&self.limits))
    }

    /// The circuit breakers alone, for resources taken after the snapshot lookup.
    pub fn pool_handle(&self) -> PoolHandle {
        PoolHandle::new(self.shared.pool.clone(), self.limits)
    }

    /// Units of `resource` currently held.
    pub fn in_use(&self, resource: PoolResource) -> u64 {
        self.shared.pool.in_use(resource)
    }

    /// Outlier detection in force (defaults applied), if configured.
    pub fn outlier_settings(&self) -> Option<&OutlierSettings> {
        self.outlier.as_ref()
    }

    /// Whether `target` is ejected at `now`.
    pub fn is_ejected(&self, target: SocketAddr, now: Instant) -> bool {
        match (self.outlier.as_ref(), self.endpoint(target)) {
            (Some(s), Some(e)) => e.ejected_at(now, self.shared.origin, s),
            _ => false,
        }
    }

    /// Targets ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let Some(s) = self.outlier.as_ref() else {
            return Vec::new();
        };
        self.endpoints
            .iter()
            .filter(|e| e.ejected_at(now, self.shared.origin, s))
            .map(|e| e.target)
            .collect()
    }

    /// Feed outlier detection with the outcome of one attempt on `target`.
    /// Report only what the upstream caused (not local 503s such as `UO`).
    /// Returns the ejection this outcome caused, if any. A no-op without
    /// `outlierDetection` or for an unknown target.
    pub fn report(&self, target: SocketAddr, outcome: Outcome, now: Instant) -> Option<Ejection> {
        let s = self.outlier.as_ref()?;
        let origin = self.shared.origin;
        let e = self.endpoint(target)?;
        let fired = {
            let mut h = lock(&e.state.outlier);
            h.catch_up(now, origin, s);
            h.record(outcome.status(), s)
        };
        let kinds = [
            (fired.gateway, EjectionKind::ConsecutiveGatewayErrors),
            (fired.five_xx, EjectionKind::Consecutive5xx),
        ];
        let mut result = None;
        for (_, kind) in kinds.into_iter().filter(|(f, _)| *f) {
            let _decision = lock(&self.shared.eject_lock);
            let ejected = self
                .endpoints
                .iter()
                .filter(|o| o.ejected_at(now, origin, s))
                .count();
            let mut h = lock(&e.state.outlier);
            if h.is_ejected() {
                continue; // Envoy ignores detections on an ejected host
            }
            if may_eject(ejected, self.endpoints.len(), s.max_ejection_percent) {
                let duration = h.eject(now, s);
                result = Some(Ejection {
                    target,
                    kind,
                    ejections: h.num_ejections(),
                    duration,
                });
            }
            h.reset(kind);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        ConnectionPool, HashKey, HttpSettings, LoadBalancer, OutlierDetection, TcpSettings,
    };
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    fn endpoint(i: u8) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            address: format!("127.0.10.{i}").parse().unwrap(),
            labels: BTreeMap::new(),
            service_account: "sa".into(),
            namespace: "default".into(),
            identity: "spiffe://cluster.local/ns/default/sa/sa".into(),
            transport: Default::default(),
            name: format!("ep{i}"),
        })
    }

    fn eps(n: u8, added: Instant) -> Vec<ClusterEndpoint> {
        (1..=n)
            .map(|i| {
                let ep = endpoint(i);
                let t = SocketAddr::new(ep.address, 9080);
                ClusterEndpoint::new_at(ep, t, added)
            })
            .collect()
    }

    fn cluster(lb: LbPolicy, n: u8) -> Cluster {
        Cluster::new(
            "c".into(),
            "h".into(),
            9080,
            None,
            lb,
            eps(n, Instant::now()),
        )
    }

    fn with_policy(
        policy: ClusterPolicy,
        endpoints: Vec<ClusterEndpoint>,
        now: Instant,
    ) -> Cluster {
        Cluster::with_policy("c".into(), "h".into(), 9080, None, policy, endpoints, now)
    }

    fn counts(c: &Cluster, picks: usize, exclude: &[SocketAddr]) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for _ in 0..picks {
            *m.entry(c.pick(exclude).unwrap().target).or_default() += 1;
        }
        m
    }

    fn counts_at(c: &Cluster, picks: usize, now: Instant, seed: u64) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = vec![0; c.endpoints.len()];
        for _ in 0..picks {
            let t = c.pick_at(None, &[], now, &mut rng).unwrap().target;
            v[c.endpoints.iter().position(|e| e.target == t).unwrap()] += 1;
        }
        v
    }

    #[test]
    fn round_robin_exact_fairness() {
        let c = cluster(LbPolicy::RoundRobin, 3);
        let m = counts(&c, 3 * 7, &[]);
        assert_eq!(m.len(), 3);
        assert!(m.values().all(|v| *v == 7), "{m:?}");
    }

    #[test]
    fn exclude_skips_for_every_policy() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
            LbPolicy::Passthrough,
            LbPolicy::RingHash,
            LbPolicy::Maglev,
        ] {
            let c = cluster(lb, 3);
            let ex = [c.endpoints[0].target, c.endpoints[2].target];
            let m = counts(&c, 50, &ex);
            assert_eq!(
                m.keys().copied().collect::<Vec<_>>(),
                vec![c.endpoints[1].target],
                "{lb:?}"
            );
            let all: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.target).collect();
            assert!(c.pick(&all).is_none(), "{lb:?}");
            assert!(c.pick_hashed(7, &all).is_none(), "{lb:?}");
            assert!(cluster(lb, 0).pick(&[]).is_none(), "{lb:?}");
        }
    }

    #[test]
    fn retry_picks_prefer_untried_then_return_to_tried() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
            LbPolicy::RingHash,
        ] {
            // One endpoint: a retry goes back to it, with or without previous_hosts.
            let one = cluster(lb, 1);
            let only = one.endpoints[0].target;
            for avoid in [true, false] {
                let e = one.pick_attempt(Some(7), &[only], avoid).map(|e| e.target);
                assert_eq!(e, Some(only), "{lb:?} avoid={avoid}");
            }
            // Several: previous_hosts skips the tried ones while others are left.
            let c = cluster(lb, 3);
            let tried = [c.endpoints[0].target, c.endpoints[2].target];
            for _ in 0..30 {
                let e = c.pick_attempt(Some(7), &tried, true).unwrap().target;
                assert_eq!(e, c.endpoints[1].target, "{lb:?}");
            }
            let all: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.target).collect();
            assert!(c.pick_attempt(None, &all, true).is_some(), "{lb:?}");
            assert!(cluster(lb, 0).pick_attempt(None, &all, true).is_none());
        }
        // Without the predicate a retry may land on a tried endpoint.
        let c = cluster(LbPolicy::Random, 2);
        let tried = [c.endpoints[0].target];
        assert!((0..200).any(|_| c.pick_attempt(None, &tried, false).unwrap().target == tried[0]));
    }

    #[test]
    fn random_uses_all_endpoints() {
        let c = cluster(LbPolicy::Random, 3);
        assert_eq!(counts(&c, 300, &[]).len(), 3);
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let c = cluster(LbPolicy::LeastRequest, 2);
        let busy = c.endpoints[0].target;
        let _g1 = c.begin(busy);
        let _g2 = c.begin(busy);
        assert_eq!(c.endpoints[0].active(), 2);
        for _ in 0..100 {
            assert_eq!(c.pick(&[]).unwrap().target, c.endpoints[1].target);
        }
        drop(_g1);
        drop(_g2);
        assert_eq!(c.endpoints[0].active(), 0);
        // with equal load both get traffic
        assert_eq!(counts(&c, 200, &[]).len(), 2);
    }

    #[test]
    fn least_request_skewed_load_seeded() {
        // 4 endpoints: 0 idle, the others busy (5, 10, 20 active)
        let c = cluster(LbPolicy::LeastRequest, 4);
        let mut guards = Vec::new();
        for (i, n) in [(1, 5), (2, 10), (3, 20)] {
            for _ in 0..n {
                guards.push(c.endpoints[i].begin());
            }
        }
        let v = counts_at(&c, 10_000, Instant::now(), 7);
        // P2C: the idle endpoint wins whenever drawn: 1 - (3/4·2/3) = 1/2
        assert!((4700..=5300).contains(&v[0]), "{v:?}");
        // the busiest is never picked (it always loses the comparison)
        assert_eq!(v[3], 0, "{v:?}");
        assert!(v[1] > v[2], "{v:?}");
        drop(guards);
    }

    #[test]
    fn guard_outlives_borrow_and_unknown_target_is_detached() {
        let c = cluster(LbPolicy::LeastRequest, 1);
        let g = {
            let e = c.pick(&[]).unwrap();
            e.begin()
        };
        assert_eq!(c.endpoints[0].active(), 1);
        drop(g);
        assert_eq!(c.endpoints[0].active(), 0);
        let _d = c.begin("1.2.3.4:1".parse().unwrap());
        assert_eq!(c.endpoints[0].active(), 0);
    }

    #[test]
    fn names() {
        assert_eq!(
            cluster_name("reviews.default.svc.cluster.local", 9080, "http", None),
            "inbound-vip|9080|http|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            cluster_name(
                "reviews.default.svc.cluster.local",
                9080,
                "http",
                Some("v1")
            ),
            "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
        );
    }

    fn hashed(algorithm: HashAlgorithm) -> ClusterPolicy {
        ClusterPolicy {
            load_balancer: Some(LoadBalancer {
                consistent_hash: Some(ConsistentHash {
                    key: Some(HashKey::Header("x-user".into())),
                    algorithm,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn consistent_hash_sticky_and_minimally_disrupted() {
        let now = Instant::now();
        for alg in [
            HashAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
            HashAlgorithm::Maglev { table_size: 65537 },
        ] {
            let ten = with_policy(hashed(alg), eps(10, now), now);
            assert!(matches!(ten.lb, LbPolicy::RingHash | LbPolicy::Maglev));
            let mut nine_eps = eps(10, now);
            let removed = nine_eps.remove(3).target;
            let nine = with_policy(hashed(alg), nine_eps, now);
            let mut moved = 0;
            for k in 0..10_000 {
                let req =
                    crate::hash::SimpleHashRequest::new("/").with_header("x-user", format!("u{k}"));
                let h = ten.request_hash(
                    &req,
                    "1.1.1.1:1".parse().unwrap(),
                    "2.2.2.2:2".parse().unwrap(),
                );
                assert!(h.set_cookie.is_none());
                let h = h.hash.unwrap();
                let a = ten.pick_hashed(h, &[]).unwrap().target;
                assert_eq!(ten.pick_hashed(h, &[]).unwrap().target, a, "sticky");
                let b = nine.pick_hashed(h, &[]).unwrap().target;
                if a != b {
                    moved += 1;
                }
                if a == removed {
                    assert_ne!(b, removed);
                }
                // retry: excluding the first choice moves only this key
                let r = ten.pick_hashed(h, &[a]).unwrap().target;
                assert_ne!(r, a);
            }
            assert!(moved < 2000, "{alg:?}: {moved} of 10000 keys moved");
            assert!(moved > 500, "{alg:?}: about 1/10 must move, got {moved}");
        }
    }

    #[test]
    fn consistent_hash_without_key_spreads() {
        let now = Instant::now();
        let c = with_policy(
            hashed(HashAlgorithm::Maglev { table_size: 65537 }),
            eps(4, now),
            now,
        );
        let v = counts_at(&c, 4000, now, 3);
        assert!(v.iter().all(|&x| x > 700), "{v:?}");
    }

    fn warm(p: LbPolicy, secs: u64) -> ClusterPolicy {
        ClusterPolicy {
            load_balancer: Some(LoadBalancer {
                simple: p,
                consistent_hash: None,
                warmup: Some(Warmup::linear(Duration::from_secs(secs))),
                locality: None,
            }),
            ..Default::default()
        }
    }

    /// Two warm endpoints and one that joins at `t0`.
    fn warming(p: LbPolicy, t0: Instant) -> Cluster {
        let old = t0 - Duration::from_secs(3600);
        let mut e = eps(2, old);
        let ep = endpoint(3);
        let t = SocketAddr::new(ep.address, 9080);
        e.push(ClusterEndpoint::new_at(ep, t, t0));
        with_policy(warm(p, 60), e, old)
    }

    #[test]
    fn warmup_weights_over_the_window() {
        let t0 = Instant::now();
        let c = warming(LbPolicy::RoundRobin, t0);
        let new = c.endpoints[2].target;
        let w = |s: u64| c.weight(new, t0 + Duration::from_secs(s)).unwrap();
        assert!((w(0) - 0.1).abs() < 1e-9);
        assert!((w(30) - 0.5).abs() < 1e-9);
        assert_eq!(w(60), 1.0);
        assert_eq!(c.weight(c.endpoints[0].target, t0), Some(1.0));
        assert_eq!(c.weight("9.9.9.9:1".parse().unwrap(), t0), None);
        assert_eq!(
            cluster(LbPolicy::RoundRobin, 1).weight(c.endpoints[0].target, t0),
            Some(1.0)
        );
    }

    #[test]
    fn round_robin_honours_warmup() {
        let t0 = Instant::now();
        for (s, share) in [(0, 0.1 / 2.1), (30, 0.5 / 2.5)] {
            let c = warming(LbPolicy::RoundRobin, t0);
            let v = counts_at(&c, 10_000, t0 + Duration::from_secs(s), 1);
            let got = v[2] as f64 / 10_000.0;
            assert!((got - share).abs() < 0.01, "t={s}: {got} vs {share} {v:?}");
        }
        // warm: exact rotation again
        let c = warming(LbPolicy::RoundRobin, t0);
        assert_eq!(
            counts_at(&c, 3000, t0 + Duration::from_secs(60), 1),
            vec![1000; 3]
        );
    }

    #[test]
    fn least_request_honours_warmup() {
        let t0 = Instant::now();
        let c = warming(LbPolicy::LeastRequest, t0);
        let v = counts_at(&c, 10_000, t0, 5);
        let got = v[2] as f64 / 10_000.0;
        assert!((got - 0.1 / 2.1).abs() < 0.015, "{got} {v:?}");
        let v = counts_at(&c, 10_000, t0 + Duration::from_secs(60), 5);
        assert!(v.iter().all(|&x| x > 3000), "warm: even spread {v:?}");
    }

    fn limited() -> ClusterPolicy {
        ClusterPolicy {
            connection_pool: Some(ConnectionPool {
                tcp: Some(TcpSettings {
                    max_connections: Some(1),
                    ..Default::default()
                }),
                http: Some(HttpSettings {
                    http2_max_requests: Some(2),
                    http1_max_pending_requests: Some(1),
                    max_retries: Some(1),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pool_overflow_and_release() {
        let now = Instant::now();
        let c = with_policy(limited(), eps(2, now), now);
        let r1 = c.try_acquire(PoolResource::Request).unwrap();
        let r2 = c.try_acquire(PoolResource::Request).unwrap();
        let o = c.try_acquire(PoolResource::Request).unwrap_err();
        assert_eq!(o.limit, 2);
        assert_eq!(o.resource, PoolResource::Request);
        let conn = c.try_acquire(PoolResource::Connection).unwrap();
        assert!(c.try_acquire(PoolResource::Connection).is_err());
        let p = c.try_acquire(PoolResource::PendingRequest).unwrap();
        assert!(c.try_acquire(PoolResource::PendingRequest).is_err());
        let rt = c.try_acquire(PoolResource::Retry).unwrap();
        assert!(c.try_acquire(PoolResource::Retry).is_err());
        assert_eq!(c.in_use(PoolResource::Request), 2);
        drop(r1);
        assert_eq!(c.in_use(PoolResource::Request), 1);
        let _r3 = c.try_acquire(PoolResource::Request).unwrap();
        drop((r2, conn, p, rt));
        assert_eq!(c.in_use(PoolResource::Connection), 0);
        // no connectionPool: unlimited
        let free = cluster(LbPolicy::RoundRobin, 1);
        let gs: Vec<PoolGuard> = (0..1000)
            .map(|_| free.try_acquire(PoolResource::Request).unwrap())
            .collect();
        assert_eq!(free.in_use(PoolResource::Request), 1000);
        drop(gs);
    }

    fn od(max_ejection_percent: u8, min_health_percent: u8) -> ClusterPolicy {
        ClusterPolicy {
            load_balancer: Some(LoadBalancer::simple(LbPolicy::RoundRobin)),
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx_errors: Some(3),
                interval: Some(Duration::from_secs(1)),
                base_ejection_time: Some(Duration::from_secs(30)),
                max_ejection_percent: Some(max_ejection_percent),
                min_health_percent: Some(min_health_percent),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fail(c: &Cluster, i: usize, n: usize, at: Instant) -> Option<Ejection> {
        let t = c.endpoints[i].target;
        (0..n).fold(None, |_, _| c.report(t, Outcome::Status(503), at))
    }

    fn picked(c: &Cluster, now: Instant) -> Vec<SocketAddr> {
        let mut rng = StdRng::seed_from_u64(9);
        let mut v: Vec<SocketAddr> = (0..60)
            .map(|_| c.pick_at(None, &[], now, &mut rng).unwrap().target)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn outlier_ejects_returns_and_grows() {
        let t0 = Instant::now();
        let c = with_policy(od(100, 0), eps(3, t0), t0);
        let bad = c.endpoints[0].target;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // two 5xx and a success: no ejection
        assert!(fail(&c, 0, 2, at(100)).is_none());
        assert!(c.report(bad, Outcome::Status(200), at(100)).is_none());
        assert!(fail(&c, 0, 2, at(100)).is_none());
        let e = c.report(bad, Outcome::ConnectFailure, at(500)).unwrap();
        assert_eq!(e.kind, EjectionKind::Consecutive5xx);
        assert_eq!((e.ejections, e.duration), (1, Duration::from_secs(30)));
        assert!(c.is_ejected(bad, at(600)));
        assert_eq!(c.ejected(at(600)), vec![bad]);
        assert!(!picked(&c, at(600)).contains(&bad));
        // due at 30.5 s → back on the 31 s tick
        assert!(c.is_ejected(bad, at(30_900)));
        assert!(!c.is_ejected(bad, at(31_000)));
        assert!(picked(&c, at(31_000)).contains(&bad));
        // fails again before the next tick: ejected for 2 × base
        let e = fail(&c, 0, 3, at(31_200)).unwrap();
        assert_eq!((e.ejections, e.duration), (2, Duration::from_secs(60)));
        assert!(c.is_ejected(bad, at(91_000)));
        assert!(!c.is_ejected(bad, at(92_000)));
        // a third time before the next tick: 3 × base; reports while ejected change nothing
        let e3 = fail(&c, 0, 3, at(92_500)).unwrap();
        assert!(c.report(bad, Outcome::Status(500), at(92_600)).is_none());
        assert_eq!(e3.duration, Duration::from_secs(90));
        // healthy ticks shrink the backoff again: 3 ticks after returning, back to 1 × base
        assert!(!c.is_ejected(bad, at(183_000)));
        let e4 = fail(&c, 0, 3, at(186_500)).unwrap();
        assert_eq!(e4.duration, Duration::from_secs(30));
    }

    #[test]
    fn outlier_respects_max_ejection_percent() {
        let t0 = Instant::now();
        // 3 hosts, 50 %: the first ejection is 33 %, the second would be 67 %
        let c = with_policy(od(50, 0), eps(3, t0), t0);
        assert!(fail(&c, 0, 3, t0).is_some());
        assert!(fail(&c, 1, 3, t0).is_none());
        assert_eq!(c.ejected(t0), vec![c.endpoints[0].target]);
        // default 10 % with 3 hosts: nothing is ever ejected (Envoy, always_eject_one_host off)
        let d = with_policy(od(0, 0), eps(3, t0), t0);
        assert_eq!(d.outlier_settings().unwrap().max_ejection_percent, 10);
        assert!(fail(&d, 0, 3, t0).is_none());
        // the overflowed detection reset its counter: three more failures are needed
        let c10 = with_policy(od(10, 0), eps(10, t0), t0);
        assert!(fail(&c10, 0, 3, t0).is_some());
        assert!(fail(&c10, 1, 3, t0).is_none(), "20 % > 10 %");
        assert!(fail(&c10, 1, 2, t0).is_none());
        // once the first host is back, the third failure since the reset ejects
        let back = t0 + Duration::from_secs(31);
        assert!(!c10.is_ejected(c10.endpoints[0].target, back));
        assert!(fail(&c10, 1, 1, back).is_some());
    }

    #[test]
    fn outlier_min_health_percent_panics() {
        let t0 = Instant::now();
        // 4 hosts, 2 ejected → 50 % healthy < 60 %: use all endpoints
        let c = with_policy(od(100, 60), eps(4, t0), t0);
        assert!(fail(&c, 0, 3, t0).is_some());
        assert_eq!(picked(&c, t0).len(), 3, "75 % healthy: ejection honoured");
        assert!(fail(&c, 1, 3, t0).is_some());
        assert_eq!(
            picked(&c, t0).len(),
            4,
            "below minHealthPercent: all endpoints"
        );
        // without a panic threshold, everything ejected means no endpoint
        let all = with_policy(od(100, 0), eps(2, t0), t0);
        fail(&all, 0, 3, t0).unwrap();
        fail(&all, 1, 3, t0).unwrap();
        assert!(all
            .pick_at(None, &[], t0, &mut StdRng::seed_from_u64(1))
            .is_none());
    }

    #[test]
    fn gateway_errors_detector() {
        let t0 = Instant::now();
        let mut p = od(100, 0);
        if let Some(o) = p.outlier_detection.as_mut() {
            o.consecutive_5xx_errors = Some(0);
            o.consecutive_gateway_errors = Some(2);
        }
        let c = with_policy(p, eps(2, t0), t0);
        let t = c.endpoints[0].target;
        for _ in 0..5 {
            assert!(
                c.report(t, Outcome::Status(500), t0).is_none(),
                "500 is not a gateway error"
            );
        }
        assert!(c.report(t, Outcome::Timeout, t0).is_none());
        let e = c.report(t, Outcome::Reset, t0).unwrap();
        assert_eq!(e.kind, EjectionKind::ConsecutiveGatewayErrors);
        // no detector configured: reports are ignored
        let plain = cluster(LbPolicy::RoundRobin, 1);
        assert!(fail(&plain, 0, 10, t0).is_none());
        assert!(!plain.is_ejected(plain.endpoints[0].target, t0));
    }

    #[test]
    fn carry_over_keeps_state() {
        let t0 = Instant::now();
        let old = with_policy(od(100, 0), eps(2, t0), t0);
        fail(&old, 0, 3, t0).unwrap();
        let active = old.endpoints[1].begin();
        let pool = old.try_acquire(PoolResource::Request).unwrap();
        let later = t0 + Duration::from_secs(5);
        // reload: endpoint 2 stays, endpoint 3 is new, endpoint 1 stays ejected
        let mut new = with_policy(od(100, 0), eps(3, later), later);
        new.carry_over(&old);
        assert!(new.is_ejected(old.endpoints[0].target, later));
        assert_eq!(new.endpoint(old.endpoints[1].target).unwrap().active(), 1);
        assert_eq!(new.endpoint(old.endpoints[1].target).unwrap().added(), t0);
        assert_eq!(new.endpoints[2].added(), later);
        assert_eq!(new.in_use(PoolResource::Request), 1);
        drop((active, pool));
        assert_eq!(new.in_use(PoolResource::Request), 0);
        assert_eq!(new.endpoint(old.endpoints[1].target).unwrap().active(), 0);
    }

    #[test]
    fn passthrough_flag() {
        assert!(cluster(LbPolicy::Passthrough, 1).passthrough());
        assert!(!cluster(LbPolicy::LeastRequest, 1).passthrough());
    }

    #[test]
    fn helpers() {
        assert_eq!(weighted_index(&[0.0, 1.0, 0.0], 0.99), Some(1));
        assert_eq!(weighted_index(&[0.0, 0.0], 0.5), None);
        assert_eq!(weighted_index(&[1.0, 3.0], 0.3), Some(1));
        let g: Vec<f64> = (0..5).map(golden).collect();
        assert!(g.iter().all(|x| (0.0..1.0).contains(x)));
    }

    // ---- Priority levels and localities ----

    #[test]
    fn priority_spill_math() {
        // (healthy, hosts) per level → load %, panic per level.
        /// (healthy, hosts) per level, panic threshold, expected load, expected panic.
        type Case<'a> = (&'a [(usize, usize)], u8, &'a [u32], &'a [bool]);
        let cases: &[Case] = &[
            (&[(4, 4), (2, 2)], 50, &[100, 0], &[false, false]),
            (&[(2, 4), (2, 2)], 50, &[70, 30], &[false, false]),
            // ≥ 5/7 healthy is enough for 100 % (1.4 × 75 % = 105, capped).
            (&[(3, 4), (2, 2)], 50, &[100, 0], &[false, false]),
            (&[(0, 4), (2, 2)], 50, &[0, 100], &[true, false]),
            // P0 in panic still takes its share (over all its hosts).
            (&[(1, 4), (2, 2)], 50, &[35, 65], &[true, false]),
            (
                &[(1, 4), (4, 4), (1, 1)],
                0,
                &[35, 65, 0],
                &[false, false, false],
            ),
            // Healths below 100 in total are scaled up: 70 + 28 = 98.
            (&[(1, 2), (1, 5)], 0, &[72, 28], &[false, false]),
            // Every level in panic: by host count.
            (
                &[(0, 2), (0, 1), (0, 1)],
                50,
                &[50, 25, 25],
                &[true, true, true],
            ),
            (
                &[(0, 3), (0, 3), (0, 3)],
                50,
                &[34, 33, 33],
                &[true, true, true],
            ),
            // Panic disabled and nothing healthy: no load anywhere.
            (&[(0, 2), (0, 2)], 0, &[0, 0], &[false, false]),
        ];
        for (levels, threshold, load, panic) in cases {
            let (l, p) = priority_loads(levels, *threshold);
            assert_eq!(
                (&l[..], &p[..]),
                (*load, *panic),
                "{levels:?} @ {threshold}"
            );
        }
    }

    fn placement(priority: u32, zone: &str, locality_weight: u32) -> Placement {
        Placement {
            priority,
            locality: Locality {
                region: "r1".into(),
                zone: zone.into(),
                sub_zone: String::new(),
            },
            locality_weight,
        }
    }

    /// `eps(n)` placed by `places[i]` (endpoint i+1), with outlier detection.
    fn placed_cluster(places: &[Placement], weighted: bool, t0: Instant) -> Cluster {
        let mut policy = od(100, 50);
        policy.load_balancer.as_mut().unwrap().locality = Some(crate::policy::LocalityLb {
            weighted,
            endpoints: places
                .iter()
                .enumerate()
                .map(|(i, p)| (endpoint(i as u8 + 1).address, p.clone()))
                .collect(),
        });
        with_policy(policy, eps(places.len() as u8, t0), t0)
    }

    fn share(v: &[usize], idx: std::ops::Range<usize>) -> f64 {
        v[idx].iter().sum::<usize>() as f64 / v.iter().sum::<usize>() as f64
    }

    #[test]
    fn priority_failover_follows_health() {
        let t0 = Instant::now();
        let mut places = vec![placement(0, "a", 4); 4];
        places.extend(vec![placement(1, "b", 2); 2]);
        let c = placed_cluster(&places, false, t0);
        // All healthy: P0 only.
        let v = counts_at(&c, 2000, t0, 1);
        assert_eq!(share(&v, 4..6), 0.0, "{v:?}");
        assert!(v[..4].iter().all(|n| *n > 400), "{v:?}");
        // 2 of 4 P0 endpoints ejected: 70 % P0 (its two healthy ones), 30 % P1.
        let at = t0 + Duration::from_millis(10);
        assert!(fail(&c, 0, 3, at).is_some());
        assert!(fail(&c, 1, 3, at).is_some());
        let v = counts_at(&c, 10_000, at, 2);
        assert_eq!(v[0] + v[1], 0, "{v:?}");
        assert!((share(&v, 2..4) - 0.70).abs() < 0.02, "{v:?}");
        assert!((share(&v, 4..6) - 0.30).abs() < 0.02, "{v:?}");
        // The whole of P0 ejected: everything to P1.
        assert!(fail(&c, 2, 3, at).is_some());
        assert!(fail(&c, 3, 3, at).is_some());
        let v = counts_at(&c, 1000, at, 3);
        assert_eq!(share(&v, 4..6), 1.0, "{v:?}");
        // Back after the ejection time: P0 again.
        let later = t0 + Duration::from_secs(31);
        let v = counts_at(&c, 1000, later, 4);
        assert_eq!(share(&v, 0..4), 1.0, "{v:?}");
    }

    #[test]
    fn retry_exclusion_stays_in_the_level_then_spills() {
        let t0 = Instant::now();
        let places = [
            placement(0, "a", 2),
            placement(0, "a", 2),
            placement(1, "b", 1),
        ];
        let c = placed_cluster(&places, false, t0);
        let (a, b) = (c.endpoints[0].target, c.endpoints[1].target);
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            let t = c.pick_at(None, &[a], t0, &mut rng).unwrap().target;
            assert_eq!(t, b);
        }
        // Both P0 endpoints tried: another usable endpoint of a loaded level, else none.
        assert!(c.pick_at(None, &[a, b], t0, &mut rng).is_none());
        assert_eq!(
            c.pick_attempt(None, &[a, b], true).map(|e| e.priority),
            Some(0)
        );
    }

    #[test]
    fn locality_weights_split_a_level() {
        let t0 = Instant::now();
        // Zone a weight 1 (one endpoint), zone b weight 3 (two endpoints), zone c weight 0.
        let places = [
            placement(0, "a", 1),
            placement(0, "b", 3),
            placement(0, "b", 3),
            placement(0, "c", 0),
        ];
        let c = placed_cluster(&places, true, t0);
        let v = counts_at(&c, 20_000, t0, 7);
        assert!((share(&v, 0..1) - 0.25).abs() < 0.02, "{v:?}");
        assert!((share(&v, 1..3) - 0.75).abs() < 0.02, "{v:?}");
        assert_eq!(v[3], 0, "{v:?}");
        // Without locality_weighted_lb_config the weights are ignored: one set.
        let c = placed_cluster(&places, false, t0);
        let v = counts_at(&c, 20_000, t0, 7);
        for n in &v {
            assert!((*n as f64 / 20_000.0 - 0.25).abs() < 0.02, "{v:?}");
        }
    }

    #[test]
    fn locality_weight_scales_with_locality_health() {
        let t0 = Instant::now();
        // Two localities of weight 1; one of zone a's two endpoints ejected:
        // a's effective weight is 1 × min(1, 1.4 × 0.5) = 0.7.
        let places = [
            placement(0, "a", 1),
            placement(0, "a", 1),
            placement(0, "b", 1),
            placement(0, "b", 1),
        ];
        let c = placed_cluster(&places, true, t0);
        let at = t0 + Duration::from_millis(10);
        assert!(fail(&c, 0, 3, at).is_some());
        let v = counts_at(&c, 20_000, at, 8);
        assert_eq!(v[0], 0, "{v:?}");
        assert!((share(&v, 1..2) - 0.7 / 1.7).abs() < 0.02, "{v:?}");
    }

    #[test]
    fn placement_is_serialized() {
        let t0 = Instant::now();
        let c = placed_cluster(&[placement(1, "a", 3)], true, t0);
        let v = serde_json::to_value(&c.endpoints[0]).unwrap();
        assert_eq!(v["priority"], 1);
        assert_eq!(v["locality"], "r1/a");
        assert_eq!(v["locality_weight"], 3);
        let plain = serde_json::to_value(&cluster(LbPolicy::RoundRobin, 1).endpoints[0]).unwrap();
        assert!(plain.get("priority").is_none(), "{plain}");
    }
}
