//! Priority levels and localities.

use super::levels::priority_loads;
use super::tests::{cluster, counts_at, endpoint, eps, fail, od, with_policy};
use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Duration;

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
        locality: std::sync::Arc::new(Locality {
            region: "r1".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
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
            .map(|(i, p)| {
                (
                    endpoint(i as u8 + 1).address,
                    std::sync::Arc::new(p.clone()),
                )
            })
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
    let (a, b) = (c.endpoints[0].target(), c.endpoints[1].target());
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..50 {
        let t = c.pick_at(None, &[a], t0, &mut rng).unwrap().target();
        assert_eq!(t, b);
    }
    // Both P0 endpoints tried: another usable endpoint of a loaded level, else none.
    assert!(c.pick_at(None, &[a, b], t0, &mut rng).is_none());
    assert_eq!(
        c.pick_attempt(None, &[a, b], true)
            .map(|e| e.placement.priority),
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
