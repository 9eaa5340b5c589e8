//! Data-plane runtime state, apart from the configuration a snapshot compiles: what requests
//! change (round-robin position, circuit-breaker counters, active requests, warmup start,
//! outlier state).
//!
//! Per cluster one [`ClusterRuntime`], and per endpoint of it, keyed by (target `ip:port`,
//! expected identity), one [`EndpointRuntime`]. A [`Cluster`] and its [`ClusterEndpoint`]s hold
//! `Arc`s to them (a request reaches its state without a lookup); a snapshot's [`Registry`]
//! indexes the same `Arc`s by cluster name and endpoint key (for tests and dumps). On a reload
//! [`crate::Snapshot::carry_over_state`] looks each cluster built for the new snapshot up in the
//! previous snapshot (by service, port and subset, with the same name), indexes that cluster's
//! endpoint states — a scan up to 32 of them, a hash map above — and adopts what it finds:
//! O(endpoints of the clusters built). Clusters the new snapshot shares with the old one (an
//! unchanged service under xDS) keep their state untouched. What the new config no longer names
//! is not looked up: its state lives on only while the old snapshot (or a guard taken from it)
//! does, and an endpoint that comes back later starts fresh.

use crate::lb::{Cluster, ClusterEndpoint, Joined};
use crate::model::Endpoint;
use crate::outlier::HostOutlier;
use crate::pool::PoolCounters;
use once_cell::race::OnceBox;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Cluster-wide state that survives reloads (shared by every snapshot's cluster of this name).
#[derive(Debug)]
pub struct ClusterRuntime {
    /// Round-robin position: a reload continues the rotation where it was.
    pub(crate) rr: AtomicUsize,
    /// Circuit-breaker counters (guards hold them too).
    pub(crate) pool: Arc<PoolCounters>,
    /// Start of the outlier-detection interval grid.
    pub(crate) origin: Instant,
    /// Serializes ejection decisions (the max-ejection-percent check).
    pub(crate) eject_lock: Mutex<()>,
    /// Ejections made since start (Envoy's `outlier_detection.ejections_enforced_total`).
    pub(crate) ejections: std::sync::atomic::AtomicU64,
}

impl ClusterRuntime {
    /// Fresh state; `origin` starts the outlier interval grid.
    pub(crate) fn new(origin: Instant) -> Self {
        ClusterRuntime {
            rr: AtomicUsize::new(0),
            pool: Arc::new(PoolCounters::default()),
            origin,
            eject_lock: Mutex::new(()),
            ejections: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Per-endpoint state that survives reloads.
#[derive(Debug)]
pub struct EndpointRuntime {
    /// Requests in flight (LEAST_REQUEST), counted by [`crate::ActiveGuard`]s. (When the
    /// endpoint joined is its [`ClusterEndpoint`]'s, in bytes that would be padding there:
    /// here it would make this state 32 bytes where it is 16, 48 allocated where it is 32.)
    pub(crate) active: AtomicUsize,
    /// Made when outlier detection first looks at the endpoint: most clusters have none, and
    /// inline it would make every endpoint's state 48 bytes larger (112 instead of 48 bytes
    /// allocated, one per endpoint of every cluster). A `OnceBox` is one pointer where a
    /// `OnceLock` of a box is two words (64 bytes allocated).
    outlier: OnceBox<Mutex<HostOutlier>>,
}

impl EndpointRuntime {
    pub(crate) fn new() -> Self {
        EndpointRuntime {
            active: AtomicUsize::new(0),
            outlier: OnceBox::new(),
        }
    }

    /// The endpoint's outlier state (fresh the first time it is asked for).
    pub(crate) fn outlier(&self) -> &Mutex<HostOutlier> {
        self.outlier.get_or_init(Box::default)
    }

    /// Times outlier detection ejected the endpoint (0 when it never looked at it).
    pub(crate) fn num_ejections(&self) -> u32 {
        self.outlier.get().map_or(0, |o| {
            o.lock().unwrap_or_else(|e| e.into_inner()).num_ejections()
        })
    }

    /// Whether its outlier state was ever made.
    #[cfg(test)]
    pub(crate) fn has_outlier_state(&self) -> bool {
        self.outlier.get().is_some()
    }
}

/// Which endpoint state a cluster endpoint takes over: the same target and the same expected
/// identity (a pod replaced at the same address by another workload starts fresh).
#[derive(Debug, Clone)]
struct EndpointKey {
    target: SocketAddr,
    endpoint: Arc<Endpoint>,
}

impl EndpointKey {
    fn of(e: &ClusterEndpoint) -> Self {
        EndpointKey {
            target: e.target(),
            endpoint: e.endpoint.clone(),
        }
    }

    /// Whether it is the key of an endpoint at `target` expecting `identity`.
    fn is(&self, target: SocketAddr, identity: &str) -> bool {
        self.target == target && *self.endpoint.workload.identity == *identity
    }
}

impl PartialEq for EndpointKey {
    fn eq(&self, other: &Self) -> bool {
        self.is(other.target, &other.endpoint.workload.identity)
    }
}

impl Eq for EndpointKey {}

/// By target alone (equality still compares the identity): endpoints at one address rarely
/// differ in identity, and hashing the identity string too would cost a pass over it per
/// endpoint for nothing.
impl Hash for EndpointKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.target.hash(state);
    }
}

/// Up to this many endpoints a cluster's endpoint states are a slice scanned in order; above, a
/// hash map. A scan of a few dozen `SocketAddr`s is cheaper than hashing one, and a slice is one
/// allocation of exactly its size where a map has empty buckets (5,000 clusters × 10 endpoints:
/// see docs/benchmarks.md, "Carry-over").
const SCAN_UP_TO: usize = 32;

/// A cluster's endpoint states by key; of endpoints with the same key the first is kept.
#[derive(Debug)]
enum EndpointIndex {
    Few(Box<[(EndpointKey, Held)]>),
    Many(HashMap<EndpointKey, Held>),
}

/// What an endpoint carries over: its state and when it joined.
type Held = (Arc<EndpointRuntime>, Joined);

/// The runtime state one cluster of a snapshot uses.
#[derive(Debug)]
pub struct ClusterState {
    runtime: Arc<ClusterRuntime>,
    endpoints: EndpointIndex,
}

impl ClusterState {
    /// The state `cluster` holds, indexed. Of endpoints with the same key the first is kept.
    pub(crate) fn of(cluster: &Cluster) -> Self {
        let endpoints = if cluster.endpoints.len() <= SCAN_UP_TO {
            let mut few: Vec<(EndpointKey, Held)> = Vec::with_capacity(cluster.endpoints.len());
            for e in &cluster.endpoints {
                let key = EndpointKey::of(e);
                if !few.iter().any(|(k, _)| *k == key) {
                    few.push((key, (e.runtime.clone(), e.joined())));
                }
            }
            EndpointIndex::Few(few.into_boxed_slice())
        } else {
            let mut many = HashMap::with_capacity(cluster.endpoints.len());
            for e in &cluster.endpoints {
                many.entry(EndpointKey::of(e))
                    .or_insert_with(|| (e.runtime.clone(), e.joined()));
            }
            EndpointIndex::Many(many)
        };
        ClusterState {
            runtime: cluster.runtime.clone(),
            endpoints,
        }
    }

    /// The cluster-wide state.
    pub fn runtime(&self) -> &Arc<ClusterRuntime> {
        &self.runtime
    }

    /// Every (key, state) held, in no particular order.
    fn entries(&self) -> Box<dyn Iterator<Item = (&EndpointKey, &Arc<EndpointRuntime>)> + '_> {
        match &self.endpoints {
            EndpointIndex::Few(few) => Box::new(few.iter().map(|(k, (r, _))| (k, r))),
            EndpointIndex::Many(many) => Box::new(many.iter().map(|(k, (r, _))| (k, r))),
        }
    }

    /// The state of the endpoint at `target` expecting `identity`, if the cluster has it (a scan:
    /// for tests and dumps, not the data path).
    pub fn endpoint(&self, target: SocketAddr, identity: &str) -> Option<&Arc<EndpointRuntime>> {
        self.entries()
            .find(|(k, _)| k.is(target, identity))
            .map(|(_, r)| r)
    }

    /// Number of endpoint states held.
    pub fn endpoint_count(&self) -> usize {
        match &self.endpoints {
            EndpointIndex::Few(few) => few.len(),
            EndpointIndex::Many(many) => many.len(),
        }
    }

    /// The state for `e`, and when its endpoint joined, when this (previous) cluster had an
    /// endpoint with its key.
    pub(crate) fn endpoint_of(&self, e: &ClusterEndpoint) -> Option<&Held> {
        match &self.endpoints {
            EndpointIndex::Few(few) => few
                .iter()
                .find(|(k, _)| k.is(e.target(), &e.endpoint.workload.identity))
                .map(|(_, r)| r),
            EndpointIndex::Many(many) => many.get(&EndpointKey::of(e)),
        }
    }
}

/// The runtime state of a snapshot's clusters, by cluster name.
#[derive(Debug, Default)]
pub struct Registry {
    clusters: HashMap<String, ClusterState>,
}

impl Registry {
    /// Index the state these clusters hold.
    pub(crate) fn index<'a>(clusters: impl Iterator<Item = &'a Cluster>) -> Self {
        let clusters = clusters
            .map(|c| (c.name.to_string(), ClusterState::of(c)))
            .collect();
        Registry { clusters }
    }

    /// The state of the cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterState> {
        self.clusters.get(name)
    }

    /// Number of clusters with state.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use crate::{load_str, Snapshot};
    use std::net::SocketAddr;
    use std::sync::Arc;

    /// ServiceEntry `name` on port 80 with one endpoint per address.
    fn entry(name: &str, vip: &str, addresses: &[&str]) -> String {
        let eps: String = addresses
            .iter()
            .map(|a| format!("  - address: {a}\n    serviceAccount: sa\n"))
            .collect();
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  \
             namespace: default\nspec:\n  hosts:\n  - {name}.default.svc.cluster.local\n  \
             addresses:\n  - {vip}\n  ports:\n  - number: 80\n    name: http\n    \
             protocol: HTTP\n  resolution: STATIC\n  endpoints:\n{eps}"
        )
    }

    /// Loaded and carried over from `previous`, as a publish does.
    fn publish(docs: &[String], previous: &Snapshot) -> Snapshot {
        let mut s = load_str(&[("c.yaml".into(), docs.concat())], "cluster.local").unwrap();
        s.carry_over_state(previous);
        s
    }

    const S1: &str = "inbound-vip|80|http|s1.default.svc.cluster.local";
    const S2: &str = "inbound-vip|80|http|s2.default.svc.cluster.local";
    const ID: &str = "spiffe://cluster.local/ns/default/sa/sa";

    #[test]
    fn removed_endpoints_and_clusters_leave_with_the_old_snapshot() {
        let e1: SocketAddr = "10.1.0.1:80".parse().unwrap();
        let e2: SocketAddr = "10.1.0.2:80".parse().unwrap();
        let both = entry("s1", "10.0.0.1", &["10.1.0.1", "10.1.0.2"]);
        let a = publish(
            &[both.clone(), entry("s2", "10.0.0.2", &["10.1.0.3"])],
            &Snapshot::empty(),
        );
        let c1 = a.cluster("s1.default.svc.cluster.local", 80, None).unwrap();
        let (g1, g2) = (c1.begin(e1), c1.begin(e2));
        let s2_pool = a.runtime().cluster(S2).unwrap().runtime().clone();
        let e2_state = Arc::downgrade(a.runtime().cluster(S1).unwrap().endpoint(e2, ID).unwrap());

        // B: e2 and s2 are gone.
        let b = publish(&[entry("s1", "10.0.0.1", &["10.1.0.1"])], &a);
        assert!(b.runtime().cluster(S2).is_none());
        assert_eq!(b.runtime().len(), 1);
        let b1 = b.runtime().cluster(S1).unwrap();
        assert_eq!(b1.endpoint_count(), 1);
        assert!(b1.endpoint(e2, ID).is_none());
        assert_eq!(
            b.cluster("s1.default.svc.cluster.local", 80, None)
                .unwrap()
                .endpoints[0]
                .active(),
            1
        );

        // C: e2 is back, with fresh state; e1 kept its own all along.
        let c = publish(&[both], &b);
        let c1 = c.cluster("s1.default.svc.cluster.local", 80, None).unwrap();
        assert_eq!(c1.endpoint(e1).unwrap().active(), 1);
        assert_eq!(c1.endpoint(e2).unwrap().active(), 0, "e2 starts fresh");
        assert!(c.runtime().cluster(S2).is_none());

        // Nothing of A's removed state outlives A and its guards.
        drop((a, g2, s2_pool));
        assert!(e2_state.upgrade().is_none(), "e2's old state leaked");
        drop(g1);
        assert_eq!(c1.endpoint(e1).unwrap().active(), 0);
    }

    #[test]
    fn clusters_either_side_of_the_scan_limit_carry_over() {
        for n in [
            super::SCAN_UP_TO,
            super::SCAN_UP_TO + 1,
            3 * super::SCAN_UP_TO,
        ] {
            let ips: Vec<String> = (0..n)
                .map(|i| format!("10.1.{}.{}", i / 200, i % 200 + 1))
                .collect();
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            let docs = [entry("s1", "10.0.0.1", &ips)];
            let a = publish(&docs, &Snapshot::empty());
            let last: SocketAddr = format!("{}:80", ips[n - 1]).parse().unwrap();
            let guard = a
                .cluster("s1.default.svc.cluster.local", 80, None)
                .unwrap()
                .begin(last);
            let b = publish(&docs, &a);
            let state = b.runtime().cluster(S1).unwrap();
            assert_eq!(state.endpoint_count(), n);
            assert_eq!(
                state
                    .endpoint(last, ID)
                    .unwrap()
                    .active
                    .load(std::sync::atomic::Ordering::Relaxed),
                1,
                "n={n}"
            );
            let c1 = b.cluster("s1.default.svc.cluster.local", 80, None).unwrap();
            assert_eq!(c1.endpoint(last).unwrap().active(), 1, "n={n}");
            let other: SocketAddr = format!("{}:80", ips[0]).parse().unwrap();
            assert_eq!(c1.endpoint(other).unwrap().active(), 0, "n={n}");
            drop(guard);
            assert_eq!(c1.endpoint(last).unwrap().active(), 0, "n={n}");
        }
    }

    #[test]
    fn a_snapshot_never_carried_over_is_indexed_on_first_use() {
        let docs = [entry("s1", "10.0.0.1", &["10.1.0.1", "10.1.0.2"])];
        let first = load_str(&[("c.yaml".into(), docs.concat())], "cluster.local").unwrap();
        let next = publish(&docs, &first);
        let state = |s: &Snapshot| s.runtime().cluster(S1).unwrap().runtime().clone();
        assert!(Arc::ptr_eq(&state(&first), &state(&next)));
        assert_eq!(next.runtime().cluster(S1).unwrap().endpoint_count(), 2);
    }
}
