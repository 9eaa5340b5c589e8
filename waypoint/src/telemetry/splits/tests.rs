//! The split audit's counts, windows and layouts.
use super::*;

/// A reviews subset with `weight` (the outcome tests share it).
pub(super) fn dest(subset: &str, weight: u32) -> RouteDestination {
    RouteDestination {
        host: "reviews.default.svc.cluster.local".into(),
        subset: Some(subset.into()),
        port: None,
        weight,
        headers: Default::default(),
    }
}

#[test]
fn shares_since_start_and_in_window() {
    let audit = SplitAudit::new(Duration::from_secs(60));
    let dests = [dest("v1", 90), dest("v2", 10)];
    let t0 = audit.started;
    for _ in 0..9 {
        audit.record_at("reviews", "r.0", &dests, &dests[0], t0);
    }
    audit.record_at("reviews", "r.0", &dests, &dests[1], t0);
    // Two minutes later only v2 gets traffic: the window forgets the old v1 requests.
    let later = t0 + Duration::from_secs(120);
    audit.record_at("reviews", "r.0", &dests, &dests[1], later);
    let report = audit.report_at(later);
    let r = &report.routes[0];
    assert_eq!(r.requests, 11);
    assert_eq!(r.requests_in_window, 1);
    let v1 = &r.destinations[0];
    assert_eq!(v1.configured_share, 0.9);
    assert_eq!(v1.requests, 9);
    assert_eq!(v1.observed_share, Some(9.0 / 11.0));
    assert_eq!(v1.observed_share_in_window, Some(0.0));
    assert_eq!(r.destinations[1].observed_share_in_window, Some(1.0));
    let text = report.render_text();
    assert!(text.contains("subset=v1"), "{text}");
    assert!(text.contains("81.8%"), "{text}");
}

#[test]
fn weight_changes_follow_config_and_removed_destinations_keep_history() {
    let audit = SplitAudit::new(Duration::from_secs(60));
    let old = [dest("v1", 90), dest("v2", 10)];
    audit.record("reviews", "r.0", &old, &old[0]);
    let new = [dest("v2", 50), dest("v3", 50)];
    audit.record("reviews", "r.0", &new, &new[1]);
    let r = &audit.report().routes[0];
    let by: Vec<_> = r
        .destinations
        .iter()
        .map(|d| (d.subset.clone().unwrap(), d.weight, d.requests))
        .collect();
    assert_eq!(
        by,
        vec![
            ("v1".to_string(), 0, 1),
            ("v2".to_string(), 50, 0),
            ("v3".to_string(), 50, 1)
        ]
    );
}

/// The counters are atomics: concurrent requests on one route are all counted, exactly, and
/// a configuration change in the middle loses none.
#[test]
fn concurrent_counts_are_exact() {
    let audit = SplitAudit::new(Duration::from_secs(60));
    let dests = [dest("v1", 50), dest("v2", 50)];
    let t0 = audit.started;
    const THREADS: u64 = 8;
    const EACH: u64 = 20_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (audit, dests) = (&audit, &dests);
            s.spawn(move || {
                for i in 0..EACH {
                    // Every thread changes the weights once, half-way through.
                    let now = t0 + Duration::from_millis(i / 100);
                    let w = if i < EACH / 2 { 50 } else { 60 };
                    let d = [dest("v1", w), dest("v2", 100 - w)];
                    let d = if t % 2 == 0 { &d[..] } else { &dests[..] };
                    audit.record_at("reviews", "r.0", d, &d[(i % 2) as usize], now);
                }
            });
        }
    });
    let r = &audit
        .report_at(t0 + Duration::from_millis(EACH / 100))
        .routes[0];
    assert_eq!(r.requests, THREADS * EACH);
    assert_eq!(r.requests_in_window, THREADS * EACH, "all within 60 s");
    assert_eq!(r.destinations.len(), 2);
    for d in &r.destinations {
        assert_eq!(d.requests, THREADS * EACH / 2);
        assert_eq!(d.requests_in_window, THREADS * EACH / 2);
    }
    // The window still slides: 2 minutes on, nothing is in it.
    let r = &audit.report_at(t0 + Duration::from_secs(120)).routes[0];
    assert_eq!((r.requests, r.requests_in_window), (THREADS * EACH, 0));
}

#[test]
fn metrics_expose_requests_and_ratios() {
    let audit = SplitAudit::new(Duration::from_secs(300));
    let dests = [dest("v1", 90), dest("v2", 10)];
    audit.record("reviews", "r.0", &dests, &dests[0]);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(SplitCollector(audit)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("waypoint_route_split_requests_total{destination_service=\"reviews\",route_name=\"r.0\",destination_host=\"reviews.default.svc.cluster.local\",destination_subset=\"v1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("waypoint_route_split_configured_ratio{"),
        "{text}"
    );
    assert!(text.contains("window=\"300s\"} 1.0"), "{text}");
}
