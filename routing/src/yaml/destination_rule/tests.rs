use super::*;
use crate::yaml::fields::parse_duration;
use crate::yaml::tests::files;
use crate::{load_str, HashKey, LbPolicy, PoolResource, Snapshot};
use std::time::Duration;

const FQDN: &str = "reviews.default.svc.cluster.local";

fn dr(body: &str) -> String {
    format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n{body}"
        )
}

fn with_dr(body: &str) -> Vec<(String, String)> {
    // without the VirtualService (it names subsets most rules here lack)
    let mut f = files(&[]);
    f.retain(|(n, _)| n != "reviews-dr.yaml" && n != "reviews.yaml");
    f.push(("reviews-dr.yaml".into(), dr(body)));
    f
}

fn load(body: &str) -> Snapshot {
    load_str(&with_dr(body), "cluster.local").unwrap_or_else(|e| panic!("{e}"))
}

fn error(body: &str) -> String {
    match load_str(&with_dr(body), "cluster.local") {
        Ok(_) => panic!("loaded:\n{body}"),
        Err(e) => e.to_string(),
    }
}

const FULL: &str = "  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: affinity, path: /, ttl: 1h}
        maglev: {tableSize: 1009}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, maxConnectionDuration: 1h, idleTimeout: 0s}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxRetries: 3
        idleTimeout: 1m30s
        maxConcurrentStreams: 50
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
      minHealthPercent: 30
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 60s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 5}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
        warmup: {duration: 2m, minimumPercent: 20, aggression: 2}
  - name: v3
    labels: {version: v3}
";

#[test]
fn full_policy_parses_and_merges() {
    let s = load(FULL);
    let d = &s.destination_rules()[0];
    let tp = d.traffic_policy.as_ref().unwrap();
    let ch = tp
        .load_balancer
        .as_ref()
        .unwrap()
        .consistent_hash
        .as_ref()
        .unwrap();
    assert_eq!(ch.algorithm, HashAlgorithm::Maglev { table_size: 1009 });
    assert_eq!(
        ch.key,
        Some(HashKey::Cookie(HttpCookie {
            name: "affinity".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(3600)),
        }))
    );
    let cp = tp.connection_pool.as_ref().unwrap();
    let tcp = cp.tcp.as_ref().unwrap();
    assert_eq!(tcp.max_connections, Some(100));
    assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(30)));
    assert_eq!(tcp.max_connection_duration, Some(Duration::from_secs(3600)));
    assert_eq!(tcp.idle_timeout, Some(Duration::ZERO));
    let http = cp.http.as_ref().unwrap();
    assert_eq!(
        (
            http.http1_max_pending_requests,
            http.http2_max_requests,
            http.max_requests_per_connection,
            http.max_retries,
            http.max_concurrent_streams
        ),
        (Some(10), Some(1000), Some(10), Some(3), Some(50))
    );
    assert_eq!(http.idle_timeout, Some(Duration::from_secs(90)));
    let od = tp.outlier_detection.as_ref().unwrap();
    assert_eq!(
        od,
        &OutlierDetection {
            consecutive_5xx_errors: Some(7),
            consecutive_gateway_errors: Some(3),
            interval: Some(Duration::from_secs(300)),
            base_ejection_time: Some(Duration::from_secs(900)),
            max_ejection_percent: Some(50),
            min_health_percent: Some(30),
        }
    );
    assert_eq!(tp.port_level_settings.len(), 1);

    // the service has only port 9080: its port-level entry replaces the whole top level
    let all = s.cluster(FQDN, 9080, None).unwrap();
    assert_eq!(all.lb, LbPolicy::RoundRobin);
    assert!(all.policy.connection_pool.is_none());
    assert!(all.outlier_settings().is_none());
    assert_eq!(
        all.policy.warmup(),
        Some(Warmup::linear(Duration::from_secs(60)))
    );
    // v1: its connectionPool over the port-level policy
    let v1 = s.cluster(FQDN, 9080, Some("v1")).unwrap();
    assert_eq!(v1.lb, LbPolicy::RoundRobin);
    assert_eq!(v1.limits().max_requests, 5);
    assert_eq!(v1.limits().max_connections, u32::MAX);
    let _g = v1.try_acquire(PoolResource::Request).unwrap();
    // v2: its loadBalancer with the full warmup config
    let v2 = s.cluster(FQDN, 9080, Some("v2")).unwrap();
    assert_eq!(v2.lb, LbPolicy::LeastRequest);
    let w = v2.policy.warmup().unwrap();
    assert_eq!(
        (w.duration, w.minimum_percent, w.aggression),
        (Duration::from_secs(120), 20.0, 2.0)
    );
    assert!(v2.policy.connection_pool.is_none());
    // v3: no policy of its own
    assert_eq!(
        s.cluster(FQDN, 9080, Some("v3")).unwrap().lb,
        LbPolicy::RoundRobin
    );
    // the dump carries the policy
    let j = s.to_json();
    assert_eq!(
        j["destination_rules"][0]["traffic_policy"]["outlier_detection"]["interval"],
        "5m"
    );
    assert_eq!(
        j["clusters"][0]["policy"]["load_balancer"]["simple"],
        "ROUND_ROBIN"
    );
}

#[test]
fn top_level_policy_without_port_level() {
    let s = load(
            "  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 4096}}\n    outlierDetection: {consecutive5xxErrors: 2}\n",
        );
    let c = s.cluster(FQDN, 9080, None).unwrap();
    assert_eq!(c.lb, LbPolicy::RingHash);
    assert_eq!(
        c.consistent_hash().unwrap().key,
        Some(HashKey::Header("x-user".into()))
    );
    let o = c.outlier_settings().unwrap();
    assert_eq!((o.consecutive_5xx, o.max_ejection_percent), (2, 10));
    // deprecated minimumRingSize alone sets the ring size
    let s = load("  trafficPolicy:\n    loadBalancer:\n      consistentHash: {useSourceIp: true, minimumRingSize: 2048}\n");
    let ch = s
        .cluster(FQDN, 9080, None)
        .unwrap()
        .consistent_hash()
        .unwrap()
        .clone();
    assert_eq!(ch.key, Some(HashKey::SourceIp));
    assert_eq!(
        ch.algorithm,
        HashAlgorithm::RingHash {
            minimum_ring_size: 2048
        }
    );
    let s = load(
        "  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpQueryParameterName: u}\n",
    );
    let ch = s
        .cluster(FQDN, 9080, None)
        .unwrap()
        .consistent_hash()
        .unwrap()
        .clone();
    assert_eq!(ch.key, Some(HashKey::QueryParameter("u".into())));
    assert_eq!(
        ch.algorithm,
        HashAlgorithm::RingHash {
            minimum_ring_size: 1024
        }
    );
    // zero limits mean default; numeric strings are accepted
    let s = load(
        "  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 0, maxRetries: \"4\"}}\n",
    );
    let l = s.cluster(FQDN, 9080, None).unwrap().limits();
    assert_eq!((l.max_requests, l.max_retries), (u32::MAX, 4));
}

#[test]
fn error_paths() {
    let tp = |p: &str| format!("  trafficPolicy: {p}\n");
    let at = "reviews-dr.yaml doc 0 DestinationRule default/reviews: spec.trafficPolicy";
    let cases: &[(&str, &str)] = &[
            ("{connectionPool: {http: {http2MaxRequests: -1}}}", ".connectionPool.http.http2MaxRequests: must be ≥ 0, got -1"),
            ("{connectionPool: {http: {http1MaxPendingRequests: 3000000000}}}", ".connectionPool.http.http1MaxPendingRequests: must be ≤ 2147483647"),
            ("{connectionPool: {http: {maxRetries: many}}}", ".connectionPool.http.maxRetries: must be an integer, got \"many\""),
            ("{connectionPool: {tcp: {maxConnections: 1.5}}}", ".connectionPool.tcp.maxConnections: must be an integer"),
            ("{connectionPool: {tcp: {connectTimeout: 0s}}}", ".connectionPool.tcp.connectTimeout: must be ≥ 1ms"),
            ("{connectionPool: {tcp: {connectTimeout: 10}}}", ".connectionPool.tcp.connectTimeout: invalid duration \"10\": missing unit"),
            ("{connectionPool: {tcp: {connectTimeout: 1.5ms}}}", ".connectionPool.tcp.connectTimeout: only millisecond precision"),
            ("{connectionPool: {http: {idleTimeout: 5 minutes}}}", ".connectionPool.http.idleTimeout: invalid duration \"5 minutes\""),
            ("{connectionPool: {}}", ".connectionPool: must set tcp or http"),
            ("{outlierDetection: {interval: 10}}", ".outlierDetection.interval: invalid duration \"10\": missing unit"),
            ("{outlierDetection: {baseEjectionTime: -1s}}", ".outlierDetection.baseEjectionTime: invalid duration \"-1s\": must not be negative"),
            ("{outlierDetection: {maxEjectionPercent: 101}}", ".outlierDetection.maxEjectionPercent: must be a percentage in 0..=100, got 101"),
            ("{outlierDetection: {minHealthPercent: -5}}", ".outlierDetection.minHealthPercent: must be a percentage in 0..=100, got -5"),
            ("{outlierDetection: {consecutive5xxErrors: -1}}", ".outlierDetection.consecutive5xxErrors: must be ≥ 0"),
            ("{outlierDetection: {consecutiveGatewayErrors: x}}", ".outlierDetection.consecutiveGatewayErrors: must be an integer"),
            ("{loadBalancer: {simple: FASTEST}}", ".loadBalancer.simple: unknown value \"FASTEST\""),
            ("{loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}", ".loadBalancer: simple and consistentHash are mutually exclusive"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x}}}", ".loadBalancer.consistentHash: only one of httpHeaderName"),
            ("{loadBalancer: {consistentHash: {useSourceIp: yes please}}}", ".loadBalancer.consistentHash.useSourceIp: must be true or false"),
            ("{loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}}", ".loadBalancer.consistentHash.httpCookie.name: missing required field"),
            ("{loadBalancer: {consistentHash: {httpCookie: {name: c}}}}", ".loadBalancer.consistentHash.httpCookie.ttl: missing required field"),
            ("{loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: soon}}}}", ".loadBalancer.consistentHash.httpCookie.ttl: invalid duration \"soon\""),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}}", ".loadBalancer.consistentHash: ringHash and maglev are mutually exclusive"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}}}", ".loadBalancer.consistentHash.maglev.tableSize: must be a prime number, got 65536"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}}", ".loadBalancer.consistentHash.maglev.tableSize: must be less than 5000011"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 9000000}}}}", ".loadBalancer.consistentHash.ringHash.minimumRingSize: must be ≤ 8388608"),
            ("{loadBalancer: {warmupDurationSecs: 1x}}", ".loadBalancer.warmupDurationSecs: invalid duration \"1x\": unknown unit \"x\""),
            ("{loadBalancer: {warmup: {minimumPercent: 10}}}", ".loadBalancer.warmup.duration: missing required field"),
            ("{loadBalancer: {warmup: {duration: 1m, minimumPercent: 120}}}", ".loadBalancer.warmup.minimumPercent: must be ≥ 0 and ≤ 100"),
            ("{loadBalancer: {warmup: {duration: 1m, aggression: 0}}}", ".loadBalancer.warmup.aggression: must be > 0, got 0"),
            ("{}", ": must set at least one of loadBalancer"),
            ("{portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port: missing required field"),
            ("{portLevelSettings: [{port: {}, loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port.number: missing required field"),
            ("{portLevelSettings: [{port: {number: 0}, loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port.number: port 0 out of range"),
            ("{portLevelSettings: [{port: {number: 70000}, loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port.number: must be ≤ 65535"),
            ("{portLevelSettings: [{port: {number: 9080}}]}", ".portLevelSettings[0]: must set at least one of loadBalancer, connectionPool"),
            ("{portLevelSettings: [{port: {number: 9080}, connectionPool: {http: {maxRetries: -2}}}]}", ".portLevelSettings[0].connectionPool.http.maxRetries: must be ≥ 0, got -2"),
        ];
    for (policy, want) in cases {
        let e = error(&tp(policy));
        let want = format!("{at}{want}");
        assert!(e.contains(&want), "{policy}\n  want: {want}\n  got:  {e}");
    }
    // subset policies are checked the same way
    let e = error("  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {outlierDetection: {interval: 0s}}\n");
    assert!(
        e.contains("spec.subsets[0].trafficPolicy.outlierDetection.interval: must be ≥ 1ms"),
        "{e}"
    );
}

#[test]
fn warnings() {
    let s = load(
        "  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer:
      simple: RANDOM
      warmupDurationSecs: 30s
      localityLbSetting: {enabled: true}
    connectionPool:
      tcp: {tcpKeepalive: {time: 7200s}}
      http: {h2UpgradePolicy: UPGRADE}
    outlierDetection: {consecutiveErrors: 5}
    portLevelSettings:
    - port: {number: 9080}
      tls: {mode: DISABLE}
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
    - port: {number: 8080}
      loadBalancer: {consistentHash: {}}
",
    );
    let w = s.warnings().join("\n");
    let at = "reviews-dr.yaml doc 0 DestinationRule default/reviews: spec.trafficPolicy";
    for want in [
            ".loadBalancer.localityLbSetting is not supported yet; ignored",
            ".loadBalancer.warmup: applies only to ROUND_ROBIN and LEAST_REQUEST, not Random; ignored",
            ".connectionPool.tcp.tcpKeepalive is not supported yet; ignored",
            ".connectionPool.http.h2UpgradePolicy is not supported yet; ignored",
            ".outlierDetection.consecutiveErrors is not supported yet; ignored",
            ".portLevelSettings[1].port.number: duplicate port 9080; the first entry applies",
            ".portLevelSettings[2].loadBalancer.consistentHash: no hash key",
            ".portLevelSettings[2].port.number: port 8080 is not a port of reviews.default.svc.cluster.local; ignored",
        ] {
            assert!(w.contains(&format!("{at}{want}")), "missing {want}\nin:\n{w}");
        }
    // the tls-only port-level entry still replaces the top-level policy for 9080
    let c = s.cluster(FQDN, 9080, None).unwrap();
    assert_eq!(c.lb, LbPolicy::LeastRequest);
    assert!(c.policy.connection_pool.is_none());
    let s = load("  trafficPolicy:\n    loadBalancer:\n      consistentHash: {useSourceIp: true, minimumRingSize: 10, maglev: {}}\n      warmup: {duration: 1m}\n      warmupDurationSecs: 10s\n");
    let w = s.warnings().join("\n");
    assert!(
        w.contains("consistentHash.minimumRingSize: deprecated field ignored"),
        "{w}"
    );
    assert!(
        w.contains("loadBalancer.warmupDurationSecs: ignored: warmup is set"),
        "{w}"
    );
}

#[test]
fn durations() {
    let ok = |s: &str, d: Duration| assert_eq!(parse_duration(s), Ok(d), "{s}");
    ok("1s", Duration::from_secs(1));
    ok("100ms", Duration::from_millis(100));
    ok("1m", Duration::from_secs(60));
    ok("1h30m", Duration::from_secs(5400));
    ok("1.5s", Duration::from_millis(1500));
    ok(".5s", Duration::from_millis(500));
    ok("250us", Duration::from_micros(250));
    ok("250µs", Duration::from_micros(250));
    ok("7ns", Duration::from_nanos(7));
    ok("0", Duration::ZERO);
    ok("0s", Duration::ZERO);
    ok("+2s", Duration::from_secs(2));
    for bad in ["", "1", "s", "1d", "-1s", "1.s5", "abc", "1s2"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}
