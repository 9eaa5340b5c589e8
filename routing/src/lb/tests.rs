//! Picks, consistent hashing, warmup and circuit breakers; the helpers the other test
//! modules share.

use super::pick::{golden, weighted_index};
use super::*;
use crate::outlier::{Ejection, Outcome};
use crate::policy::{
    ConnectionPool, HashKey, HttpSettings, LoadBalancer, OutlierDetection, TcpSettings,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::Duration;

pub(super) fn endpoint(i: u8) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        address: format!("127.0.10.{i}").parse().unwrap(),
        labels: Default::default(),
        workload: Arc::new(crate::model::Workload::new(
            format!("ep{i}").into(),
            "default".into(),
            "sa".into(),
            "spiffe://cluster.local/ns/default/sa/sa".into(),
        )),
        transport: Default::default(),
    })
}

pub(super) fn eps(n: u8, added: Instant) -> Vec<ClusterEndpoint> {
    (1..=n)
        .map(|i| ClusterEndpoint::new_at(endpoint(i), 9080, added))
        .collect()
}

pub(super) fn cluster(lb: LbPolicy, n: u8) -> Cluster {
    Cluster::new(
        "c".into(),
        "h".into(),
        9080,
        None,
        lb,
        eps(n, Instant::now()),
    )
}

pub(super) fn with_policy(
    policy: ClusterPolicy,
    endpoints: Vec<ClusterEndpoint>,
    now: Instant,
) -> Cluster {
    Cluster::with_policy("c".into(), "h".into(), 9080, None, policy, endpoints, now)
}

pub(super) fn counts(
    c: &Cluster,
    picks: usize,
    exclude: &[SocketAddr],
) -> HashMap<SocketAddr, usize> {
    let mut m = HashMap::new();
    for _ in 0..picks {
        *m.entry(c.pick(exclude).unwrap().target()).or_default() += 1;
    }
    m
}

pub(super) fn counts_at(c: &Cluster, picks: usize, now: Instant, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0; c.endpoints.len()];
    for _ in 0..picks {
        let t = c.pick_at(None, &[], now, &mut rng).unwrap().target();
        v[c.endpoints.iter().position(|e| e.target() == t).unwrap()] += 1;
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
        let ex = [c.endpoints[0].target(), c.endpoints[2].target()];
        let m = counts(&c, 50, &ex);
        assert_eq!(
            m.keys().copied().collect::<Vec<_>>(),
            vec![c.endpoints[1].target()],
            "{lb:?}"
        );
        let all: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.target()).collect();
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
        let only = one.endpoints[0].target();
        for avoid in [true, false] {
            let e = one
                .pick_attempt(Some(7), &[only], avoid)
                .map(|e| e.target());
            assert_eq!(e, Some(only), "{lb:?} avoid={avoid}");
        }
        // Several: previous_hosts skips the tried ones while others are left.
        let c = cluster(lb, 3);
        let tried = [c.endpoints[0].target(), c.endpoints[2].target()];
        for _ in 0..30 {
            let e = c.pick_attempt(Some(7), &tried, true).unwrap().target();
            assert_eq!(e, c.endpoints[1].target(), "{lb:?}");
        }
        let all: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.target()).collect();
        assert!(c.pick_attempt(None, &all, true).is_some(), "{lb:?}");
        assert!(cluster(lb, 0).pick_attempt(None, &all, true).is_none());
    }
    // Without the predicate a retry may land on a tried endpoint.
    let c = cluster(LbPolicy::Random, 2);
    let tried = [c.endpoints[0].target()];
    assert!((0..200).any(|_| c.pick_attempt(None, &tried, false).unwrap().target() == tried[0]));
}

#[test]
fn random_uses_all_endpoints() {
    let c = cluster(LbPolicy::Random, 3);
    assert_eq!(counts(&c, 300, &[]).len(), 3);
}

#[test]
fn least_request_prefers_idle_endpoint() {
    let c = cluster(LbPolicy::LeastRequest, 2);
    let busy = c.endpoints[0].target();
    let _g1 = c.begin(busy);
    let _g2 = c.begin(busy);
    assert_eq!(c.endpoints[0].active(), 2);
    for _ in 0..100 {
        assert_eq!(c.pick(&[]).unwrap().target(), c.endpoints[1].target());
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
        let removed = nine_eps.remove(3).target();
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
            let a = ten.pick_hashed(h, &[]).unwrap().target();
            assert_eq!(ten.pick_hashed(h, &[]).unwrap().target(), a, "sticky");
            let b = nine.pick_hashed(h, &[]).unwrap().target();
            if a != b {
                moved += 1;
            }
            if a == removed {
                assert_ne!(b, removed);
            }
            // retry: excluding the first choice moves only this key
            let r = ten.pick_hashed(h, &[a]).unwrap().target();
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
    e.push(ClusterEndpoint::new_at(endpoint(3), 9080, t0));
    with_policy(warm(p, 60), e, old)
}

#[test]
fn warmup_weights_over_the_window() {
    // On the microsecond grid a cluster endpoint keeps its join time in.
    let t0 = crate::lb::Joined::at(Instant::now()).instant();
    let c = warming(LbPolicy::RoundRobin, t0);
    let new = c.endpoints[2].target();
    let w = |s: u64| c.weight(new, t0 + Duration::from_secs(s)).unwrap();
    assert!((w(0) - 0.1).abs() < 1e-9);
    assert!((w(30) - 0.5).abs() < 1e-9);
    assert_eq!(w(60), 1.0);
    assert_eq!(c.weight(c.endpoints[0].target(), t0), Some(1.0));
    assert_eq!(c.weight("9.9.9.9:1".parse().unwrap(), t0), None);
    assert_eq!(
        cluster(LbPolicy::RoundRobin, 1).weight(c.endpoints[0].target(), t0),
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

pub(super) fn od(max_ejection_percent: u8, min_health_percent: u8) -> ClusterPolicy {
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

pub(super) fn fail(c: &Cluster, i: usize, n: usize, at: Instant) -> Option<Ejection> {
    let t = c.endpoints[i].target();
    (0..n).fold(None, |_, _| c.report(t, Outcome::Status(503), at))
}

pub(super) fn picked(c: &Cluster, now: Instant) -> Vec<SocketAddr> {
    let mut rng = StdRng::seed_from_u64(9);
    let mut v: Vec<SocketAddr> = (0..60)
        .map(|_| c.pick_at(None, &[], now, &mut rng).unwrap().target())
        .collect();
    v.sort();
    v.dedup();
    v
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

/// A snapshot holds one cluster endpoint per pod per cluster (100 000 at 5 000 services of
/// ten pods and two subsets): its placement (priority, locality, group weight) is its
/// assignment's locality group's, shared (one `Arc` for every endpoint no assignment placed),
/// its parsed identity its workload's, and its target a port beside the endpoint's address,
/// so each is 32 bytes (40 with a pointer to its parse, 56 with the placement inline and the
/// identity a `Result` of two `Arc`s, 80 with a `SocketAddr`).
#[test]
fn a_cluster_endpoint_is_small_and_shares_its_placement() {
    let size = std::mem::size_of::<ClusterEndpoint>();
    assert!(size <= 32, "ClusterEndpoint is {size} bytes");
    let mut e = eps(2, Instant::now());
    assert!(Arc::ptr_eq(&e[0].placement, &e[1].placement));
    let group = Arc::new(crate::policy::Placement {
        priority: 1,
        ..Default::default()
    });
    let placed = e.remove(0).placed(&group);
    assert!(Arc::ptr_eq(&placed.placement, &group));
    assert_eq!(e[0].placement.locality_weight, 1, "unplaced: weight 1");
}

/// A snapshot holds a cluster per service port and subset (15 000 at 5 000 services): what
/// most lack (a hash table, outlier detection, warmup, priority levels) is boxed.
#[test]
fn a_cluster_boxes_what_most_clusters_lack() {
    let size = std::mem::size_of::<Cluster>();
    assert!(size <= 168, "Cluster is {size} bytes");
    let c = cluster(LbPolicy::RoundRobin, 2);
    assert!(c.outlier.is_none() && c.warmup.is_none() && c.levels.is_none());
    assert!(c.table.is_none());
}

/// Clusters with equal policies (istiod gives a waypoint's clusters the same one) share it;
/// another policy is its own.
#[test]
fn clusters_share_equal_policies() {
    let now = Instant::now();
    let a = with_policy(ClusterPolicy::default(), eps(2, now), now);
    let b = with_policy(ClusterPolicy::default(), eps(3, now), now);
    assert!(Arc::ptr_eq(&a.policy, &b.policy));
    let ring = hashed(HashAlgorithm::RingHash {
        minimum_ring_size: 64,
    });
    let c = with_policy(ring.clone(), eps(2, now), now);
    assert!(!Arc::ptr_eq(&a.policy, &c.policy));
    assert_eq!(*c.policy, ring);
    let d = with_policy(ring.clone(), eps(1, now), now);
    assert!(Arc::ptr_eq(&c.policy, &d.policy));
}

/// A snapshot holds one endpoint per pod per service (50 000 at 5 000 services): its
/// workload's four names are one shared record, so it is 40 bytes (64 allocated with its
/// counts), where the names inline made it 96 (112).
#[test]
fn a_snapshot_endpoint_is_small() {
    let size = std::mem::size_of::<Endpoint>();
    assert!(size <= 40, "Endpoint is {size} bytes");
}
