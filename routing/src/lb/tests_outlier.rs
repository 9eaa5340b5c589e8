//! Outlier detection and the carry-over of runtime state across reloads.

use super::tests::{cluster, endpoint, eps, fail, od, picked, with_policy};
use super::*;
use crate::outlier::{EjectionKind, Outcome};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Duration;

#[test]
fn outlier_ejects_returns_and_grows() {
    let t0 = Instant::now();
    let c = with_policy(od(100, 0), eps(3, t0), t0);
    let bad = c.endpoints[0].target();
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
    assert_eq!(c.ejected(t0), vec![c.endpoints[0].target()]);
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
    assert!(!c10.is_ejected(c10.endpoints[0].target(), back));
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
    let t = c.endpoints[0].target();
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
    assert!(!plain.is_ejected(plain.endpoints[0].target(), t0));
}

#[test]
fn carry_over_keeps_state() {
    // On the microsecond grid a cluster endpoint keeps its join time in.
    let t0 = crate::lb::Joined::at(Instant::now()).instant();
    let old = with_policy(od(100, 0), eps(2, t0), t0);
    fail(&old, 0, 3, t0).unwrap();
    let active = old.endpoints[1].begin();
    let pool = old.try_acquire(PoolResource::Request).unwrap();
    let later = t0 + Duration::from_secs(5);
    // reload: endpoint 2 stays, endpoint 3 is new, endpoint 1 stays ejected
    let mut new = with_policy(od(100, 0), eps(3, later), later);
    new.carry_over(&old);
    assert!(new.is_ejected(old.endpoints[0].target(), later));
    assert_eq!(new.endpoint(old.endpoints[1].target()).unwrap().active(), 1);
    assert_eq!(new.endpoint(old.endpoints[1].target()).unwrap().added(), t0);
    assert_eq!(new.endpoints[2].added(), later);
    assert_eq!(new.in_use(PoolResource::Request), 1);
    drop((active, pool));
    assert_eq!(new.in_use(PoolResource::Request), 0);
    assert_eq!(new.endpoint(old.endpoints[1].target()).unwrap().active(), 0);
}

#[test]
fn round_robin_continues_across_a_reload() {
    let t0 = Instant::now();
    let rr = || ClusterPolicy::with_lb(LbPolicy::RoundRobin);
    let old = with_policy(rr(), eps(3, t0), t0);
    let first = old.pick(&[]).unwrap().target();
    assert_eq!(first, old.endpoints[0].target());
    let mut new = with_policy(rr(), eps(3, t0), t0);
    new.carry_over(&old);
    // The rotation goes on where it was: a reload every request still spreads the load.
    assert_eq!(new.pick(&[]).unwrap().target(), old.endpoints[1].target());
    // Requests still on the old snapshot share the same position.
    assert_eq!(old.pick(&[]).unwrap().target(), old.endpoints[2].target());
    assert_eq!(new.pick(&[]).unwrap().target(), old.endpoints[0].target());
}

#[test]
fn carry_over_matches_target_and_identity_in_any_order() {
    // On the microsecond grid a cluster endpoint keeps its join time in.
    let t0 = crate::lb::Joined::at(Instant::now()).instant();
    let old = with_policy(od(100, 0), eps(3, t0), t0);
    // endpoint i + 1 has i + 1 requests in flight
    let guards: Vec<ActiveGuard> = (0..3)
        .flat_map(|i| (0..=i).map(move |_| i))
        .map(|i| old.endpoints[i].begin())
        .collect();
    fail(&old, 2, 3, t0).unwrap();
    let later = t0 + Duration::from_secs(5);
    // reversed, and endpoint 2 is now another workload at the same address
    let mut reordered: Vec<ClusterEndpoint> = eps(3, later).into_iter().rev().collect();
    let e2 = &reordered[1];
    let other = Arc::new(Endpoint {
        workload: Arc::new(other_identity(
            &e2.endpoint.workload,
            "spiffe://cluster.local/ns/default/sa/other",
        )),
        ..(*e2.endpoint).clone()
    });
    reordered[1] = ClusterEndpoint::new_at(other, e2.target().port(), later);
    let mut new = with_policy(od(100, 0), reordered, later);
    new.carry_over(&old);
    let (e3, e2, e1) = (&new.endpoints[0], &new.endpoints[1], &new.endpoints[2]);
    assert_eq!((e1.active(), e1.added()), (1, t0));
    assert_eq!((e3.active(), e3.added()), (3, t0));
    assert!(new.is_ejected(e3.target(), later), "ejection carried over");
    // changed identity: fresh state
    assert_eq!((e2.active(), e2.added()), (0, later));
    assert!(!new.is_ejected(e2.target(), later));
    drop(guards);
    assert_eq!((e1.active(), e3.active()), (0, 0));
}

#[test]
fn endpoints_carry_their_parsed_identity() {
    let t0 = Instant::now();
    let c = with_policy(od(100, 0), eps(1, t0), t0);
    let id = c.endpoints[0].spiffe_id().unwrap();
    assert_eq!(id.to_string(), &*c.endpoints[0].endpoint.workload.identity);
    // A bad identity keeps the parser's error (the attempt fails with it; nothing is dialled).
    let good = endpoint(1);
    let bad = Arc::new(Endpoint {
        workload: Arc::new(other_identity(
            &good.workload,
            "spiffe://cluster.local/default/sa",
        )),
        ..(*good).clone()
    });
    let e = ClusterEndpoint::new_at(bad.clone(), 1, t0);
    let err = e.spiffe_id().unwrap_err();
    assert_eq!(
        err,
        &bad.workload
            .identity
            .parse::<crate::SpiffeId>()
            .unwrap_err()
    );
    assert!(err.to_string().contains("invalid SPIFFE id"), "{err}");
}

/// An endpoint's outlier state is made only when outlier detection looks at it: picks and
/// reports on a cluster without it leave none (each would be 48 bytes per endpoint of every
/// cluster), one with it makes it on the first report, and a dump reads 0 ejections without
/// making it.
#[test]
fn outlier_state_is_made_only_where_detection_runs() {
    let t0 = Instant::now();
    assert!(std::mem::size_of::<crate::runtime::EndpointRuntime>() <= 16);
    let plain = cluster(LbPolicy::RoundRobin, 3);
    let bad = plain.endpoints[0].target();
    assert_eq!(picked(&plain, t0).len(), 3);
    assert!(fail(&plain, 0, 5, t0).is_none());
    assert!(!plain.is_ejected(bad, t0));
    let dump = serde_json::to_value(&plain.endpoints[0]).unwrap();
    assert_eq!(dump["ejections"], 0);
    assert!(plain
        .endpoints
        .iter()
        .all(|e| !e.runtime.has_outlier_state()));

    let detected = with_policy(od(100, 0), eps(3, t0), t0);
    assert!(!detected.endpoints[0].runtime.has_outlier_state());
    assert!(fail(&detected, 0, 3, t0).is_some());
    assert!(detected.endpoints[0].runtime.has_outlier_state());
    let dump = serde_json::to_value(&detected.endpoints[0]).unwrap();
    assert_eq!(dump["ejections"], 1);
}

/// `w` with another identity.
fn other_identity(w: &crate::model::Workload, identity: &str) -> crate::model::Workload {
    crate::model::Workload::new(
        w.name.clone(),
        w.namespace.clone(),
        w.service_account.clone(),
        identity.into(),
    )
}
