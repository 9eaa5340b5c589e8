//! locality_1_24.json: EDS priorities and locality weights.

use super::*;

// ---- Locality: EDS priorities and locality weights (fixture locality_1_24.json) ----

/// bookinfo.json with locality_1_24.json laid over it.
fn bookinfo_with_localities() -> Translation {
    bookinfo_with_overlay("locality_1_24.json")
}

/// Picks per target over `n` seeded picks at `now`.
fn pick_counts(
    c: &routing::Cluster,
    n: usize,
    now: std::time::Instant,
) -> std::collections::BTreeMap<SocketAddr, usize> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        *m.entry(c.pick_at(None, &[], now, &mut rng).unwrap().target())
            .or_default() += 1;
    }
    m
}

#[test]
fn locality_failover_priorities_spill_by_health() {
    let t = bookinfo_with_localities();
    let text: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
    assert!(!text.iter().any(|w| w.contains("priority")), "{text:#?}");
    let c = t.snapshot.cluster(REVIEWS, 9080, None).unwrap();
    let mut placed: Vec<(String, u32, String)> = c
        .endpoints
        .iter()
        .map(|e| {
            (
                e.target().to_string(),
                e.placement.priority,
                e.placement.locality.to_string(),
            )
        })
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            ("10.244.1.7:9080".into(), 0, "us-east1/us-east1-b".into()),
            ("10.244.1.8:9080".into(), 0, "us-east1/us-east1-b".into()),
            ("10.244.1.9:9080".into(), 1, "us-east1/us-east1-c".into()),
            ("10.244.3.3:9080".into(), 2, "us-west1/us-west1-a".into()),
            ("10.244.4.4:9080".into(), 3, "eu-west1/eu-west1-a".into()),
        ]
    );
    // The two endpoints of the us-east1-b group share its placement (one `Arc` per locality
    // group of the assignment, not one per endpoint).
    let group: Vec<_> = c
        .endpoints
        .iter()
        .filter(|e| e.placement.locality.zone == "us-east1-b")
        .collect();
    assert_eq!(group.len(), 2);
    assert!(std::sync::Arc::ptr_eq(
        &group[0].placement,
        &group[1].placement
    ));
    // Healthy: the waypoint's own zone only.
    let t0 = std::time::Instant::now();
    let m = pick_counts(c, 2000, t0);
    assert_eq!(
        m.keys().copied().collect::<Vec<_>>(),
        [addr("10.244.1.7:9080"), addr("10.244.1.8:9080")]
    );
    // One of the two ejected: P0's
    // health is min(100, 1.4 × 50 %) = 70 %, the other 30 % spill to P1 (us-east1-c).
    let bad = addr("10.244.1.7:9080");
    let at = t0 + Duration::from_millis(5);
    for _ in 0..3 {
        c.report(bad, routing::Outcome::Status(503), at);
    }
    assert!(c.is_ejected(bad, at));
    let m = pick_counts(c, 10_000, at);
    assert_eq!(m.get(&bad), None);
    let p0 = m[&addr("10.244.1.8:9080")] as f64 / 10_000.0;
    let p1 = m[&addr("10.244.1.9:9080")] as f64 / 10_000.0;
    assert!((p0 - 0.7).abs() < 0.02 && (p1 - 0.3).abs() < 0.02, "{m:?}");
    // The config dump shows the placement.
    let dump = serde_json::to_value(c).unwrap();
    let eu = dump["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == "10.244.4.4:9080")
        .unwrap();
    assert_eq!(
        (&eu["priority"], &eu["locality"]),
        (&3.into(), &"eu-west1/eu-west1-a".into())
    );
}

#[test]
fn locality_distribute_weights_split_picks() {
    let t = bookinfo_with_localities();
    let c = t
        .snapshot
        .cluster("ratings.default.svc.cluster.local", 9080, None)
        .unwrap();
    // The us-west1 group was emptied by `distribute`: two endpoints, one per zone.
    assert_eq!(c.endpoints.len(), 2);
    let m = pick_counts(c, 20_000, std::time::Instant::now());
    let b = m[&addr("10.244.1.6:9080")] as f64 / 20_000.0;
    assert!((b - 0.8).abs() < 0.02, "{m:?}");
    assert!(c.endpoints.iter().all(|e| e.placement.priority == 0));
}
