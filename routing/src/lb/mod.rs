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
//! The round-robin position, active-request counters (for LEAST_REQUEST),
//! warmup start times, outlier state and circuit-breaker counters are runtime
//! state ([`crate::runtime`]): the cluster and its endpoints hold `Arc`s to it,
//! guards may outlive the snapshot borrow, and
//! [`crate::Snapshot::carry_over_state`] hands it to the next snapshot's
//! cluster of the same name (per endpoint: same `ip:port` and identity), so a
//! reload neither resets the rotation, ejections, warmup nor limits. Without
//! the carry-over a new snapshot starts from zero.
//!
//! Each endpoint's expected identity is parsed once, when the cluster is built
//! ([`ClusterEndpoint::spiffe_id`]).
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

mod health;
mod joined;
pub use health::ClusterStats;
pub(crate) use joined::Joined;
mod levels;
mod pick;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_levels;
#[cfg(test)]
mod tests_outlier;

use crate::hash::{HashRequest, HashTable, RequestHash};
use crate::model::{Endpoint, LbPolicy, Locality};
use crate::policy::{
    ClusterPolicy, ConsistentHash, HashAlgorithm, OutlierSettings, Placement, PoolLimits, Warmup,
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE,
};
use crate::pool::{Overflow, PoolGuard, PoolHandle, PoolResource};
use crate::runtime::{ClusterRuntime, ClusterState, EndpointRuntime};
use crate::spiffe::{SpiffeId, SpiffeIdError};
use levels::Levels;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One endpoint of a [`Cluster`] with its resolved target address.
#[derive(Debug)]
pub struct ClusterEndpoint {
    pub endpoint: Arc<Endpoint>,
    /// The service port's target port on this endpoint; [`ClusterEndpoint::target`] pairs it
    /// with `endpoint.address` (a port, not a 32-byte `SocketAddr`: the address is the
    /// endpoint's).
    port: u16,
    /// When it joined the cluster (the start of its slow start), in the 6 bytes after `port`
    /// that would otherwise be padding.
    joined: Joined,
    /// Its priority level (0 = preferred; higher levels take the load P0 cannot), locality and
    /// the locality group's weight (used with locality-weighted LB): the assignment's locality
    /// group, shared with its other endpoints ([`Placement::unplaced`] when none).
    pub placement: Arc<Placement>,
    pub(crate) runtime: Arc<EndpointRuntime>,
}

impl ClusterEndpoint {
    /// An endpoint that joins now.
    pub fn new(endpoint: Arc<Endpoint>, port: u16) -> Self {
        Self::new_at(endpoint, port, Instant::now())
    }

    /// An endpoint that joined at `added` (the start of its warmup).
    pub fn new_at(endpoint: Arc<Endpoint>, port: u16, added: Instant) -> Self {
        ClusterEndpoint {
            endpoint,
            port,
            joined: Joined::at(added),
            placement: Placement::unplaced(),
            runtime: Arc::new(EndpointRuntime::new()),
        }
    }

    /// Where requests go: the endpoint's address at the service port's target port.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.endpoint.address, self.port)
    }

    /// The identity this endpoint's peer must prove (its workload's identity, parsed once for
    /// all of the workload's endpoints), or why it is not a SPIFFE id — empty, for instance,
    /// when only the handshake tells (xDS without workload discovery): then no HBONE peer can be
    /// checked against it, and the attempt fails closed.
    pub fn spiffe_id(&self) -> Result<&Arc<SpiffeId>, &SpiffeIdError> {
        self.endpoint.workload.spiffe_id()
    }

    /// Placed in an assignment's priority level and locality.
    pub fn placed(mut self, p: &Arc<Placement>) -> Self {
        self.placement = p.clone();
        self
    }

    /// Requests currently in flight to this endpoint (as counted by guards).
    pub fn active(&self) -> usize {
        self.runtime.active.load(Ordering::Relaxed)
    }

    /// When this endpoint joined the cluster (start of its warmup), to the microsecond.
    pub fn added(&self) -> Instant {
        self.joined.instant()
    }

    pub(crate) fn joined(&self) -> Joined {
        self.joined
    }

    /// Count one active request until the guard is dropped.
    pub fn begin(&self) -> ActiveGuard {
        self.runtime.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            runtime: Some(self.runtime.clone()),
        }
    }
}

impl Serialize for ClusterEndpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ClusterEndpoint", 9)?;
        st.serialize_field("name", &self.endpoint.workload.name)?;
        st.serialize_field("target", &self.target().to_string())?;
        // How this cluster dials it (a DestinationRule ISTIO_MUTUAL makes a direct endpoint
        // istio_mutual here; the cluster's `policy.tls` says which TLS a direct one gets).
        st.serialize_field("transport", &self.endpoint.transport)?;
        let p = &*self.placement;
        if p.priority == 0 && *p.locality == Locality::default() {
            st.skip_field("priority")?;
            st.skip_field("locality")?;
            st.skip_field("locality_weight")?;
        } else {
            st.serialize_field("priority", &p.priority)?;
            st.serialize_field("locality", &p.locality.to_string())?;
            st.serialize_field("locality_weight", &p.locality_weight)?;
        }
        st.serialize_field("identity", &self.endpoint.workload.identity)?;
        st.serialize_field("active", &self.active())?;
        st.serialize_field("ejections", &self.runtime.num_ejections())?;
        st.end()
    }
}

/// Decrements its endpoint's active-request counter on drop.
#[derive(Debug)]
#[must_use = "the request counts as active only while the guard lives"]
pub struct ActiveGuard {
    runtime: Option<Arc<EndpointRuntime>>,
}

impl ActiveGuard {
    /// A guard that counts nothing (e.g. target not in the cluster).
    pub fn detached() -> Self {
        ActiveGuard { runtime: None }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(r) = &self.runtime {
            r.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Everything needed to pick an endpoint for one (service, port, subset).
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// `inbound-vip|<port>|<http|tcp>[/<subset>]|<hostname>`
    pub name: Box<str>,
    /// One string for the clusters of a service.
    pub service_hostname: Arc<str>,
    /// Service port.
    pub port: u16,
    pub subset: Option<Box<str>>,
    /// The load-balancing algorithm (`policy.lb_policy()`).
    pub lb: LbPolicy,
    /// The effective DestinationRule policy for this port and subset, shared with the clusters
    /// that have an equal one ([`ClusterPolicy::shared`]).
    #[serde(serialize_with = "crate::model::serialize_arc")]
    pub policy: Arc<ClusterPolicy>,
    pub endpoints: Vec<ClusterEndpoint>,
    /// The parts most clusters lack are boxed (a snapshot holds a cluster per service port and
    /// subset): inline they made every cluster 296 bytes, boxed it is 168.
    #[serde(skip)]
    table: Option<Box<HashTable>>,
    #[serde(skip)]
    limits: PoolLimits,
    #[serde(skip)]
    outlier: Option<Box<OutlierSettings>>,
    #[serde(skip)]
    warmup: Option<Box<Warmup>>,
    /// Priority levels and localities; `None`: one level, localities ignored.
    #[serde(skip)]
    levels: Option<Box<Levels>>,
    /// Round-robin position, circuit breakers, outlier grid: shared across reloads.
    #[serde(skip)]
    pub(crate) runtime: Arc<ClusterRuntime>,
}

/// Istio's inbound-VIP cluster name; `proto` is `"http"` or `"tcp"`.
pub fn cluster_name(hostname: &str, port: u16, proto: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("inbound-vip|{port}|{proto}/{s}|{hostname}"),
        None => format!("inbound-vip|{port}|{proto}|{hostname}"),
    }
}

impl Cluster {
    /// A cluster with only a `simple` load-balancer policy, created now.
    pub fn new(
        name: String,
        service_hostname: Arc<str>,
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
        service_hostname: Arc<str>,
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
                .map(|e| match loc.endpoints.get(&e.endpoint.address) {
                    Some(p) => e.placed(p),
                    None => e,
                })
                .collect();
        }
        // Held as long as the snapshot: no spare capacity (collected from a filter, ten
        // endpoints would take sixteen slots).
        endpoints.shrink_to_fit();
        let levels = Levels::new(&endpoints, locality.is_some_and(|l| l.weighted));
        let targets: Vec<SocketAddr> = endpoints.iter().map(|e| e.target()).collect();
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
            name: name.into(),
            service_hostname,
            port,
            subset: subset.map(Into::into),
            lb,
            limits: policy.limits(),
            outlier: policy.outlier().map(Box::new),
            warmup: policy.warmup().map(Box::new),
            levels: levels.map(Box::new),
            policy: ClusterPolicy::shared(policy),
            endpoints,
            table: table.map(Box::new),
            runtime: Arc::new(ClusterRuntime::new(now)),
        }
    }

    /// Take over the live state of `previous` (the same cluster in the
    /// snapshot being replaced): the round-robin position, circuit-breaker
    /// counters, the outlier interval grid and, per endpoint with the same
    /// target and identity, active requests, warmup start and outlier state.
    /// Endpoints new to the cluster keep their own (fresh) state: they are
    /// warming up. O(endpoints of both): `previous`'s endpoint states are indexed once, then
    /// one lookup per endpoint (a scan of up to 32 entries, else a hash lookup).
    pub(crate) fn carry_over(&mut self, previous: &Cluster) {
        let previous = ClusterState::of(previous);
        self.runtime = previous.runtime().clone();
        for e in &mut self.endpoints {
            if let Some((runtime, joined)) = previous.endpoint_of(e) {
                e.runtime = runtime.clone();
                e.joined = *joined;
            }
        }
    }

    /// The endpoint with this target, if any.
    pub fn endpoint(&self, target: SocketAddr) -> Option<&ClusterEndpoint> {
        self.endpoints.iter().find(|e| e.target() == target)
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
        self.runtime
            .pool
            .try_acquire(resource, resource.limit(&self.limits))
    }

    /// The circuit breakers alone, for resources taken after the snapshot lookup.
    pub fn pool_handle(&self) -> PoolHandle {
        PoolHandle::new(self.runtime.pool.clone(), self.limits)
    }

    /// Units of `resource` currently held.
    pub fn in_use(&self, resource: PoolResource) -> u64 {
        self.runtime.pool.in_use(resource)
    }
}
