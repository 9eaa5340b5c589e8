//! Clusters and load balancing.
//!
//! Active-request bookkeeping (for [`LbPolicy::LeastRequest`]) uses RAII guards:
//! call [`Cluster::begin`] (or [`ClusterEndpoint::begin`]) when a request is sent
//! to an endpoint and drop the returned [`ActiveGuard`] when it finishes. The guard
//! owns an `Arc` to the counter, so it may outlive the snapshot borrow (and even
//! the snapshot: counters are per snapshot, a reload starts them at zero).

use crate::model::{Endpoint, LbPolicy};
use rand::Rng;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One endpoint of a [`Cluster`] with its resolved target address.
#[derive(Debug)]
pub struct ClusterEndpoint {
    pub endpoint: Arc<Endpoint>,
    /// Endpoint IP : service port's target port.
    pub target: SocketAddr,
    active: Arc<AtomicUsize>,
}

impl ClusterEndpoint {
    pub fn new(endpoint: Arc<Endpoint>, target: SocketAddr) -> Self {
        ClusterEndpoint {
            endpoint,
            target,
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests currently in flight to this endpoint (as counted by guards).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Count one active request until the guard is dropped.
    pub fn begin(&self) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            counter: Some(self.active.clone()),
        }
    }
}

impl Serialize for ClusterEndpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ClusterEndpoint", 4)?;
        st.serialize_field("name", &self.endpoint.name)?;
        st.serialize_field("target", &self.target.to_string())?;
        st.serialize_field("identity", &self.endpoint.identity)?;
        st.serialize_field("active", &self.active())?;
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

/// Everything needed to pick an endpoint for one (service, port, subset).
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// `inbound-vip|<port>|<http|tcp>[/<subset>]|<hostname>`
    pub name: String,
    pub service_hostname: String,
    /// Service port.
    pub port: u16,
    pub subset: Option<String>,
    pub lb: LbPolicy,
    pub endpoints: Vec<ClusterEndpoint>,
    #[serde(skip)]
    rr: AtomicUsize,
}

/// Istio's inbound-VIP cluster name; `proto` is `"http"` or `"tcp"`.
pub fn cluster_name(hostname: &str, port: u16, proto: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("inbound-vip|{port}|{proto}/{s}|{hostname}"),
        None => format!("inbound-vip|{port}|{proto}|{hostname}"),
    }
}

impl Cluster {
    pub fn new(
        name: String,
        service_hostname: String,
        port: u16,
        subset: Option<String>,
        lb: LbPolicy,
        endpoints: Vec<ClusterEndpoint>,
    ) -> Self {
        Cluster {
            name,
            service_hostname,
            port,
            subset,
            lb,
            endpoints,
            rr: AtomicUsize::new(0),
        }
    }

    /// Pick an endpoint by the LB policy, skipping those whose `target` is in
    /// `exclude` (retries on another endpoint). `None` if nothing is left.
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<&ClusterEndpoint> {
        let n = self.endpoints.len();
        let allowed = |e: &ClusterEndpoint| !exclude.contains(&e.target);
        match self.lb {
            LbPolicy::RoundRobin => {
                if n == 0 {
                    return None;
                }
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &self.endpoints[(start + i) % n])
                    .find(|e| allowed(e))
            }
            LbPolicy::Random => {
                let cands: Vec<&ClusterEndpoint> =
                    self.endpoints.iter().filter(|e| allowed(e)).collect();
                if cands.is_empty() {
                    return None;
                }
                Some(cands[rand::thread_rng().gen_range(0..cands.len())])
            }
            LbPolicy::LeastRequest => {
                let cands: Vec<&ClusterEndpoint> =
                    self.endpoints.iter().filter(|e| allowed(e)).collect();
                match cands.len() {
                    0 => None,
                    1 => Some(cands[0]),
                    len => {
                        // Power of two choices over distinct candidates.
                        let mut rng = rand::thread_rng();
                        let a = rng.gen_range(0..len);
                        let mut b = rng.gen_range(0..len - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (ea, eb) = (cands[a], cands[b]);
                        Some(if eb.active() < ea.active() { eb } else { ea })
                    }
                }
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn cluster(lb: LbPolicy, n: u8) -> Cluster {
        let eps = (1..=n)
            .map(|i| {
                let ip = format!("127.0.10.{i}").parse().unwrap();
                let ep = Endpoint {
                    address: ip,
                    labels: BTreeMap::new(),
                    service_account: "sa".into(),
                    namespace: "default".into(),
                    identity: "spiffe://cluster.local/ns/default/sa/sa".into(),
                    name: format!("ep{i}"),
                };
                ClusterEndpoint::new(Arc::new(ep), SocketAddr::new(ip, 9080))
            })
            .collect();
        Cluster::new("c".into(), "h".into(), 9080, None, lb, eps)
    }

    fn counts(c: &Cluster, picks: usize, exclude: &[SocketAddr]) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for _ in 0..picks {
            *m.entry(c.pick(exclude).unwrap().target).or_default() += 1;
        }
        m
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
        }
        assert!(cluster(LbPolicy::RoundRobin, 0).pick(&[]).is_none());
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
    fn least_request_p2c_with_three() {
        let c = cluster(LbPolicy::LeastRequest, 3);
        let _g: Vec<ActiveGuard> = (0..5)
            .flat_map(|_| {
                [
                    c.begin(c.endpoints[0].target),
                    c.begin(c.endpoints[1].target),
                ]
            })
            .collect();
        let m = counts(&c, 3000, &[]);
        let idle = m.get(&c.endpoints[2].target).copied().unwrap_or(0);
        // picked whenever it is one of the two choices: ~2/3
        assert!(idle > 1800, "{m:?}");
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
}
