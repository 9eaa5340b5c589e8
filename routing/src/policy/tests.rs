use super::*;

fn lb(p: LbPolicy) -> Option<LoadBalancer> {
    Some(LoadBalancer::simple(p))
}

fn pool(max_connections: u32) -> Option<ConnectionPool> {
    Some(ConnectionPool {
        tcp: Some(TcpSettings {
            max_connections: Some(max_connections),
            ..Default::default()
        }),
        http: None,
    })
}

fn od(n: u32) -> Option<OutlierDetection> {
    Some(OutlierDetection {
        consecutive_5xx_errors: Some(n),
        ..Default::default()
    })
}

fn tp(
    load_balancer: Option<LoadBalancer>,
    connection_pool: Option<ConnectionPool>,
    outlier_detection: Option<OutlierDetection>,
    port_level_settings: Vec<PortTrafficPolicy>,
) -> TrafficPolicy {
    TrafficPolicy {
        load_balancer,
        connection_pool,
        outlier_detection,
        tls: None,
        port_level_settings,
    }
}

fn ptp(
    port: u16,
    load_balancer: Option<LoadBalancer>,
    connection_pool: Option<ConnectionPool>,
    outlier_detection: Option<OutlierDetection>,
) -> PortTrafficPolicy {
    PortTrafficPolicy {
        port,
        load_balancer,
        connection_pool,
        outlier_detection,
        tls: None,
    }
}

fn cp(
    load_balancer: Option<LoadBalancer>,
    connection_pool: Option<ConnectionPool>,
    outlier_detection: Option<OutlierDetection>,
) -> ClusterPolicy {
    ClusterPolicy {
        load_balancer,
        connection_pool,
        outlier_detection,
        tls: None,
    }
}

#[test]
fn merge_table() {
    use LbPolicy::*;
    let top = tp(
        lb(Random),
        pool(100),
        od(7),
        vec![ptp(9443, lb(RoundRobin), None, None)],
    );
    let sub_lb = tp(lb(LeastRequest), None, None, vec![]);
    let sub_pool_port = tp(None, pool(5), None, vec![ptp(9080, None, pool(1), None)]);
    type Case<'a> = (
        &'a str,
        Option<&'a TrafficPolicy>,
        Option<&'a TrafficPolicy>,
        u16,
        ClusterPolicy,
    );
    let cases: Vec<Case> = vec![
        ("nothing", None, None, 9080, ClusterPolicy::default()),
        (
            "top only",
            Some(&top),
            None,
            9080,
            cp(lb(Random), pool(100), od(7)),
        ),
        // port-level replaces the whole top-level policy: pool and OD are not inherited
        (
            "top port-level",
            Some(&top),
            None,
            9443,
            cp(lb(RoundRobin), None, None),
        ),
        (
            "subset lb overrides lb only",
            Some(&top),
            Some(&sub_lb),
            9080,
            cp(lb(LeastRequest), pool(100), od(7)),
        ),
        (
            "subset over top port-level",
            Some(&top),
            Some(&sub_lb),
            9443,
            cp(lb(LeastRequest), None, None),
        ),
        (
            "subset pool, other port",
            Some(&top),
            Some(&sub_pool_port),
            9443,
            cp(lb(RoundRobin), pool(5), None),
        ),
        // subset port-level: every component comes from it (lb and OD reset to defaults)
        (
            "subset port-level",
            Some(&top),
            Some(&sub_pool_port),
            9080,
            cp(None, pool(1), None),
        ),
        (
            "subset without top",
            None,
            Some(&sub_lb),
            9080,
            cp(lb(LeastRequest), None, None),
        ),
        (
            "subset port-level without top",
            None,
            Some(&sub_pool_port),
            9080,
            cp(None, pool(1), None),
        ),
    ];
    for (name, top, sub, port, want) in cases {
        assert_eq!(ClusterPolicy::merge(top, sub, port), want, "{name}");
    }
}

#[test]
fn components_override_as_a_whole() {
    // a subset connectionPool with only http drops the top-level tcp settings
    let top = tp(None, pool(100), None, vec![]);
    let sub = tp(
        None,
        Some(ConnectionPool {
            tcp: None,
            http: Some(HttpSettings {
                http2_max_requests: Some(3),
                ..Default::default()
            }),
        }),
        None,
        vec![],
    );
    let m = ClusterPolicy::merge(Some(&top), Some(&sub), 80);
    let l = m.limits();
    assert_eq!(l.max_connections, u32::MAX);
    assert_eq!(l.max_requests, 3);
}

#[test]
fn defaults() {
    let p = ClusterPolicy::default();
    assert_eq!(p.lb_policy(), LbPolicy::LeastRequest);
    assert_eq!(p.limits(), PoolLimits::default());
    assert!(p.outlier().is_none());
    assert!(p.warmup().is_none());
    let s = OutlierDetection::default().settings();
    assert_eq!(s.consecutive_5xx, 5);
    assert_eq!(s.consecutive_gateway, 0);
    assert_eq!(s.interval, Duration::from_secs(10));
    assert_eq!(s.base_ejection_time, Duration::from_secs(30));
    assert_eq!(s.max_ejection_time, Duration::from_secs(300));
    assert_eq!(s.max_ejection_percent, 10);
    assert_eq!(s.min_health_percent, 0);
    let s = OutlierDetection {
        max_ejection_percent: Some(0),
        base_ejection_time: Some(Duration::from_secs(600)),
        ..Default::default()
    }
    .settings();
    assert_eq!(s.max_ejection_percent, 10, "Istio forwards only > 0");
    assert_eq!(s.max_ejection_time, Duration::from_secs(600));
    // zero limits mean default
    let p = cp(None, pool(0), None);
    assert_eq!(p.limits().max_connections, u32::MAX);
}

#[test]
fn warmup_only_for_rr_and_lr() {
    let w = Warmup::linear(Duration::from_secs(60));
    for (p, has) in [
        (LbPolicy::RoundRobin, true),
        (LbPolicy::LeastRequest, true),
        (LbPolicy::Random, false),
        (LbPolicy::Passthrough, false),
    ] {
        let c = cp(
            Some(LoadBalancer {
                simple: p,
                consistent_hash: None,
                warmup: Some(w),
                locality: None,
            }),
            None,
            None,
        );
        assert_eq!(c.warmup().is_some(), has, "{p:?}");
    }
}

#[test]
fn warmup_weights() {
    let w = Warmup::linear(Duration::from_secs(60));
    assert!((w.weight(Duration::ZERO) - 0.1).abs() < 1e-9);
    assert!((w.weight(Duration::from_secs(30)) - 0.5).abs() < 1e-9);
    assert_eq!(w.weight(Duration::from_secs(60)), 1.0);
    assert_eq!(w.weight(Duration::from_secs(600)), 1.0);
    // short window: the 1 s minimum age dominates the floor
    let short = Warmup::linear(Duration::from_secs(5));
    assert!((short.weight(Duration::ZERO) - 0.2).abs() < 1e-9);
    let aggressive = Warmup {
        aggression: 2.0,
        ..w
    };
    assert!((aggressive.weight(Duration::from_secs(15)) - 0.5).abs() < 1e-9);
}

#[test]
fn durations_format() {
    assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
    assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    assert_eq!(format_duration(Duration::ZERO), "0s");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
}
