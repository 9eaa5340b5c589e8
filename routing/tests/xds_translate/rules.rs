//! rules.json: matches, retries, rewrites, cluster policies, TCP proxy; warnings, rejections and
//! mutated input.

use super::*;

const WEB: &str = "10.96.1.1:8080";
const WEB_HOST: &str = "web.default.svc.cluster.local";

#[test]
fn rules_matches() {
    let t = load("rules.json");
    let s = &t.snapshot;
    let name = |req: SimpleRequest| routed(route_of(s, WEB, &req)).name.clone();
    assert_eq!(name(SimpleRequest::new("/exact")), "exact");
    assert_eq!(name(SimpleRequest::new("/exact/no")), "catch-all");
    assert_eq!(
        name(SimpleRequest::new("/ci/x")),
        "prefix-ci",
        "case-insensitive prefix"
    );
    assert_eq!(name(SimpleRequest::new("/items/42")), "regex");
    assert_eq!(name(SimpleRequest::new("/items/4x")), "catch-all");
    let h = || {
        SimpleRequest::new("/h?q=abcd")
            .with_method("POST")
            .with_header("x-version", "beta")
    };
    assert_eq!(name(h()), "headers");
    assert_eq!(
        name(h().with_header("x-debug", "1")),
        "catch-all",
        "without header"
    );
    assert_eq!(name(h().with_method("GET")), "catch-all", ":method");
    assert_eq!(
        name(
            SimpleRequest::new("/h?q=zz")
                .with_method("POST")
                .with_header("x-version", "beta")
        ),
        "catch-all",
        "query"
    );
    // The service port is part of every match.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/exact")));
    assert_eq!(r.matches[0].port, Some(8080));
    assert_eq!(r.matches[0].uri, Some(StringMatch::Exact("/exact".into())));
}

#[test]
fn rules_retries_timeouts_rewrites() {
    let t = load("rules.json");
    let s = &t.snapshot;
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/CI/a")));
    assert_eq!(r.timeout, Some(Duration::from_secs(3)));
    assert_eq!(r.retries.attempts, 4);
    assert_eq!(r.retries.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(
        r.retries.retry_on,
        vec![RetryOn::FiveXx, RetryOn::GatewayError]
    );
    assert_eq!(r.retries.retriable_status_codes, vec![503]);
    assert_eq!(r.retries.backoff, Some(Duration::from_millis(100)));
    assert!(!r.retries.retry_ignore_previous_hosts);
    // No retry_policy at all: Envoy does not retry.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/exact")));
    assert_eq!(r.retries.attempts, 0);
    assert_eq!(r.timeout, None, "0s = no timeout");
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/items/9")));
    let rw = r.rewrite.as_ref().unwrap();
    assert_eq!(rw.uri, Some(UriRewrite::Prefix("/v2/".into())));
    assert_eq!(r.authority_rewrite(None), Some("backend.internal"));
}

#[test]
fn rules_redirect_direct_response_headers_fault_mirror() {
    let t = load("rules.json");
    let s = &t.snapshot;
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/old/page")));
    let RouteAction::Redirect(rd) = &r.action else {
        panic!("{:?}", r.action)
    };
    assert_eq!(rd.code, 302);
    assert_eq!(rd.path, Some(RedirectPath::Prefix("/new".into())));
    assert_eq!(rd.port, Some(RedirectPort::Port(8443)));
    assert_eq!(rd.scheme.as_deref(), Some("https"));
    assert_eq!(rd.authority.as_deref(), Some("new.example.com"));
    assert_eq!(r.retries.attempts, 0);
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/health")));
    let RouteAction::DirectResponse(d) = &r.action else {
        panic!("{:?}", r.action)
    };
    assert_eq!((d.status, d.body_str()), (418, Some("teapot")));
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/ops")));
    let mut headers = vec![
        ("x-drop".to_string(), "a".to_string()),
        ("x-set".to_string(), "0".to_string()),
    ];
    r.apply_request_headers(r.destinations.first(), &mut headers);
    assert_eq!(
        headers,
        vec![
            ("x-set".to_string(), "1".to_string()),
            ("x-add".to_string(), "2".to_string())
        ]
    );
    assert_eq!(r.headers.response.ops[0].kind, HeaderOpKind::Set);
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/fault")));
    let f = r.fault.as_ref().unwrap();
    let delay = f.delay.as_ref().unwrap();
    assert_eq!(delay.fixed_delay, Duration::from_secs(2));
    assert_eq!(delay.percentage.per_million(), 500_000);
    let abort = f.abort.as_ref().unwrap();
    assert_eq!(abort.abort, Abort::Http(503));
    assert_eq!(abort.percentage.per_million(), 250_000);
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/mirror")));
    assert_eq!(r.mirrors[0].subset.as_deref(), Some("canary"));
    assert_eq!(r.mirrors[0].percentage.per_million(), 200_000);
    // The filter-level fault (empty HTTPFault, as istiod installs it) adds nothing.
    assert!(routed(route_of(s, WEB, &SimpleRequest::new("/exact")))
        .fault
        .is_none());
}

#[test]
fn rules_cluster_policies() {
    let t = load("rules.json");
    let s = &t.snapshot;
    let c = s.cluster(WEB_HOST, 8080, None).unwrap();
    assert_eq!(c.lb, LbPolicy::RoundRobin);
    let l = c.limits();
    assert_eq!(
        (
            l.max_connections,
            l.max_pending_requests,
            l.max_requests,
            l.max_retries
        ),
        (10, 5, 100, 3)
    );
    assert_eq!(c.policy.connect_timeout(), Some(Duration::from_secs(2)));
    assert_eq!(c.policy.idle_timeout(), Some(Duration::from_secs(60)));
    assert_eq!(c.policy.max_requests_per_connection(), Some(7));
    let w = c.policy.warmup().unwrap();
    assert_eq!(
        (w.duration, w.minimum_percent, w.aggression),
        (Duration::from_secs(30), 20.0, 2.0)
    );
    let od = c.outlier_settings().unwrap();
    assert_eq!(
        (
            od.consecutive_5xx,
            od.consecutive_gateway,
            od.interval,
            od.base_ejection_time,
            od.max_ejection_percent,
            od.min_health_percent
        ),
        (3, 2, Duration::from_secs(5), Duration::from_secs(60), 50, 0)
    );
    // Target port from the endpoints, not the service port.
    assert_eq!(c.endpoints[0].target().port(), 8081);
    // Subset cluster: its own policy (ring hash keyed by the route's hash_policy).
    let canary = s.cluster(WEB_HOST, 8080, Some("canary")).unwrap();
    assert_eq!(canary.lb, LbPolicy::RingHash);
    let ch = canary.consistent_hash().unwrap();
    assert_eq!(ch.key, Some(HashKey::Header("x-user".into())));
    assert_eq!(canary.endpoints.len(), 1);
    assert_eq!(
        canary.limits().max_connections,
        u32::MAX,
        "subset policy replaces the port's"
    );
}

#[test]
fn rules_tcp_proxy() {
    let t = load("rules.json");
    let s = &t.snapshot;
    let Some(Destination::Service { service, port }) =
        s.resolve_destination(addr("10.96.1.2:5432"))
    else {
        panic!()
    };
    assert_eq!(port.protocol, Protocol::Tcp);
    let route = s
        .tcp_route(service, 5432, &routing::TcpConnection::default())
        .expect("tcp route");
    let split: Vec<(Option<&str>, u32)> = route
        .destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, vec![(Some("primary"), 3), (Some("replica"), 1)]);
    let primary = s
        .cluster("db.default.svc.cluster.local", 5432, Some("primary"))
        .unwrap();
    assert_eq!(
        &*primary.name,
        "inbound-vip|5432|tcp/primary|db.default.svc.cluster.local"
    );
    assert_eq!(primary.endpoints.len(), 1);
}

#[test]
fn unsupported_things_are_warnings() {
    let t = load("unsupported.json");
    let s = &t.snapshot;
    let text: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
    let has = |needle: &str| text.iter().any(|w| w.contains(needle));
    assert!(
        has("range_match is not supported; route left out"),
        "{text:#?}"
    );
    assert!(has("rate_limits is not supported"), "{text:#?}");
    assert!(has("acme.filters.Special"), "{text:#?}");
    // The (empty) RBAC filter is translated; nothing says "not enforced" any more.
    assert!(!has("not enforced"), "{text:#?}");
    // A Wasm filter the proxy does not run makes the chain deny (never fail open).
    assert!(
        has("filter acme.wasm (type.googleapis.com/udpa.type.v1.TypedStruct wrapping x) is not run by this proxy: all traffic of this chain is denied"),
        "{text:#?}"
    );
    assert!(has("active health checks"), "{text:#?}");
    assert!(has("Listener something_else"), "{text:#?}");
    assert!(
        !has("stats.PluginConfig"),
        "telemetry filters are not noise: {text:#?}"
    );
    assert_eq!(s.warnings().len(), t.warnings.len());
    let d = s
        .authorization()
        .for_service(Some("shop.default.svc.cluster.local"), true)
        .evaluate(&AuthzReq::get("/r"));
    assert!(
        matches!(&d.verdict, Verdict::Denied { rule, .. } if rule == "unenforced-filter[acme.wasm]"),
        "{d:?}"
    );
    // The route with the unsupported header condition is gone; the rest works.
    let r = routed(route_of(s, "10.96.2.1:9080", &SimpleRequest::new("/r")));
    assert_eq!(&*r.name, "ok");
}

#[test]
fn invalid_resources_are_rejections() {
    let all: serde_json::Value = serde_json::from_str(&fixture("invalid.json")).unwrap();
    let cases = [
        ("bad_regex", "Listener", "main_internal", "invalid regex"),
        (
            "bad_weights",
            "Listener",
            "main_internal",
            "sum to 90, total_weight is 100",
        ),
        (
            "unknown_cluster",
            "Listener",
            "main_internal",
            "unknown cluster",
        ),
        (
            "bad_endpoint",
            "ClusterLoadAssignment",
            "inbound-vip|9080|http|bad.default.svc.cluster.local",
            "not ip:port",
        ),
    ];
    for (case, kind, name, reason) in cases {
        let res = load_resources(&all[case].to_string()).unwrap_or_else(|e| panic!("{case}: {e}"));
        let errs = xds::translate(&res, &TranslateOptions::default()).expect_err(case);
        assert!(
            errs.iter()
                .any(|r| r.type_url.ends_with(kind) && r.name == name && r.reason.contains(reason)),
            "{case}: {errs:?}"
        );
    }
}

#[test]
fn any_round_trip_and_bad_bytes() {
    use prost::Message;
    let res = load_resources(&fixture("rules.json")).unwrap();
    let anys: Vec<envoy_types::pb::google::protobuf::Any> = res
        .clusters
        .iter()
        .map(|c| envoy_types::pb::google::protobuf::Any {
            type_url: xds::CLUSTER_TYPE.into(),
            value: c.encode_to_vec(),
        })
        .collect();
    let back = Resources::from_any(&anys).unwrap();
    assert_eq!(back.clusters, res.clusters);
}

/// Stable stand-in for the fuzz target: the fixtures' resources, encoded,
/// with bytes flipped, cut and spliced, must translate or be rejected —
/// never panic.
#[test]
fn mutated_resources_never_panic() {
    use prost::Message;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for f in [
        "bookinfo.json",
        "rules.json",
        "unsupported.json",
        "authz.json",
        "locality_1_24.json",
    ] {
        let r = load_resources(&fixture(f)).unwrap();
        seeds.extend(
            r.listeners
                .iter()
                .map(|x| (xds::LISTENER_TYPE, x.encode_to_vec())),
        );
        seeds.extend(
            r.clusters
                .iter()
                .map(|x| (xds::CLUSTER_TYPE, x.encode_to_vec())),
        );
        seeds.extend(
            r.endpoints
                .iter()
                .map(|x| (xds::ENDPOINT_TYPE, x.encode_to_vec())),
        );
    }
    for _ in 0..1500 {
        let mut anys = Vec::new();
        for (t, bytes) in &seeds {
            let mut b = bytes.clone();
            if rng.gen_bool(0.3) && !b.is_empty() {
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                }
            }
            if rng.gen_bool(0.05) {
                let cut = rng.gen_range(0..=b.len());
                b.truncate(cut);
            }
            anys.push(envoy_types::pb::google::protobuf::Any {
                type_url: t.to_string(),
                value: b,
            });
        }
        let mut res = Resources::default();
        for a in &anys {
            let _ = res.push_any(a);
        }
        if let Ok(t) = xds::translate(&res, &TranslateOptions::default()) {
            let _ = t.snapshot.to_json();
            for svc in t.snapshot.services() {
                for p in &svc.ports {
                    let _ = t.snapshot.route(svc, p.number, &SimpleRequest::new("/x"));
                }
                for req in [AuthzReq::get("/admin").from(BAD), AuthzReq::tcp(8080)] {
                    let d = decide(&t, Some(&svc.hostname), &req);
                    assert_eq!(
                        d.verdict.allowed(),
                        d.verdict.response_code_details().is_none()
                    );
                }
            }
        }
    }
}
