//! Golden tests of the xDS front-end: fixtures under `tests/fixtures/xds/`
//! (written after istiod's waypoint output, see `routing::xds` docs) are
//! loaded as Envoy JSON, translated, and checked through the Snapshot's
//! public lookups — where useful against the YAML front-end given the
//! equivalent Istio config.

use routing::xds::{self, json::load_resources, Resources, TranslateOptions, Translation};
use routing::{
    Abort, Destination, HashKey, HeaderOpKind, LbPolicy, Protocol, RedirectPath, RedirectPort,
    RetryFailure, RetryOn, RouteAction, RouteDecision, SimpleRequest, Snapshot, StringMatch,
    UnmatchedPreflights, UriRewrite,
};
use std::net::SocketAddr;
use std::time::Duration;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/xds/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn translate(res: &Resources) -> Translation {
    match xds::translate(res, &TranslateOptions::default()) {
        Ok(t) => t,
        Err(r) => panic!("rejected: {r:?}"),
    }
}

fn load(name: &str) -> Translation {
    translate(&load_resources(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// The route a request to `vip` takes.
fn route_of<'s>(s: &'s Snapshot, vip: &str, req: &SimpleRequest) -> RouteDecision<'s> {
    let Some(Destination::Service { service, port }) = s.resolve_destination(addr(vip)) else {
        panic!("{vip} is not a service VIP");
    };
    s.route(service, port.number, req)
}

fn routed(d: RouteDecision<'_>) -> &routing::HttpRoute {
    match d {
        RouteDecision::Route { route, .. } => route,
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn bookinfo_services_by_vip_and_port() {
    let t = load("bookinfo.json");
    let s = &t.snapshot;
    // The only thing istiod's waypoint config does not say: service accounts.
    assert!(
        t.warnings
            .iter()
            .all(|w| w.message.contains("without a known identity")),
        "{:?}",
        t.warnings
    );
    assert_eq!(s.services().count(), 3);
    for (vip, host) in [
        ("10.96.0.10:9080", "productpage.default.svc.cluster.local"),
        ("10.96.0.11:9080", "ratings.default.svc.cluster.local"),
        ("10.96.0.12:9080", REVIEWS),
    ] {
        match s.resolve_destination(addr(vip)) {
            Some(Destination::Service { service, port }) => {
                assert_eq!(service.hostname, host);
                assert_eq!(service.namespace, "default");
                assert_eq!(port.protocol, Protocol::Http);
                assert_eq!(port.target_port, 9080);
            }
            other => panic!("{vip}: {other:?}"),
        }
    }
    assert!(s.resolve_destination(addr("10.96.0.12:9081")).is_none());
    assert!(
        s.service_by_host("reviews").is_some(),
        "short names resolve"
    );
    // Pod IPs resolve through the endpoints (direct pod access).
    assert!(matches!(
        s.resolve_destination(addr("10.244.1.8:9080")),
        Some(Destination::Pod { .. })
    ));
    // productpage has only istiod's default route: no VirtualService.
    assert!(matches!(
        route_of(s, "10.96.0.10:9080", &SimpleRequest::new("/")),
        RouteDecision::Default
    ));
}

#[test]
fn bookinfo_reviews_split_subsets_and_identity() {
    let t = load("bookinfo.json");
    let s = &t.snapshot;
    let decision = route_of(s, "10.96.0.12:9080", &SimpleRequest::new("/reviews/1"));
    let RouteDecision::Route {
        virtual_service, ..
    } = decision.clone()
    else {
        panic!("{decision:?}");
    };
    assert_eq!(
        virtual_service, "default/reviews",
        "from the route's istio metadata"
    );
    let r = routed(decision);
    let split: Vec<(Option<&str>, u32)> = r
        .destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, vec![(Some("v1"), 90), (Some("v2"), 10)]);
    assert!(r.retries.is_default);
    assert_eq!(r.timeout, None);
    for (subset, ip) in [
        ("v1", "10.244.1.7"),
        ("v2", "10.244.1.8"),
        ("v3", "10.244.1.9"),
    ] {
        let c = s.cluster(REVIEWS, 9080, Some(subset)).expect(subset);
        let ips: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| e.target.ip().to_string())
            .collect();
        assert_eq!(ips, vec![ip.to_string()], "{subset}");
        assert_eq!(c.lb, LbPolicy::Random);
        assert_eq!(c.name, format!("inbound-vip|9080|http/{subset}|{REVIEWS}"));
    }
    assert_eq!(s.cluster(REVIEWS, 9080, None).unwrap().endpoints.len(), 3);
    // Identity: xDS names no service account, so it is unknown until the handshake; the peer is
    // verified against connect_originate's SAN matchers, all of them.
    let ep = &s.endpoints(REVIEWS)[0];
    assert_eq!(ep.identity, "");
    assert_eq!(ep.transport, routing::Transport::Hbone);
    let sans: Vec<String> = s
        .hbone_peer_sans()
        .expect("xDS verifies by SAN matchers")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(!sans.is_empty(), "{sans:?}");
    assert_eq!(ep.service_account, "unknown");
    assert_eq!(ep.name, "reviews-v1");
    assert_eq!(ep.labels["service.istio.io/canonical-revision"], "v1");
    // ... and from the caller when it knows it.
    let mut opts = TranslateOptions::default();
    opts.identities.insert(
        "10.244.1.7".parse().unwrap(),
        "spiffe://example.org/ns/default/sa/bookinfo-reviews".into(),
    );
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let t2 = xds::translate(&res, &opts).unwrap();
    let ep = &t2.snapshot.endpoints(REVIEWS)[0];
    assert_eq!(ep.service_account, "bookinfo-reviews");
    assert_eq!(
        ep.identity,
        "spiffe://example.org/ns/default/sa/bookinfo-reviews"
    );
}

const BOOKINFO_YAML: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.96.0.12]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 10.244.1.7, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 10.244.1.8, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3, namespace: default}
spec: {address: 10.244.1.9, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
";

#[test]
fn bookinfo_matches_the_yaml_front_end() {
    let x = load("bookinfo.json").snapshot;
    let y = routing::load_str(&[("b.yaml".into(), BOOKINFO_YAML.into())], "example.org")
        .unwrap_or_else(|e| panic!("{e}"));
    for path in ["/", "/reviews/7", "/x?y=1"] {
        let req = SimpleRequest::new(path);
        let (xr, yr) = (
            routed(route_of(&x, "10.96.0.12:9080", &req)),
            routed(route_of(&y, "10.96.0.12:9080", &req)),
        );
        let strip = |r: &routing::HttpRoute| {
            r.destinations
                .iter()
                .map(|d| (d.host.clone(), d.subset.clone(), d.weight))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(xr), strip(yr), "{path}");
        assert_eq!(xr.retries, yr.retries);
        assert_eq!(xr.timeout, yr.timeout);
    }
    for subset in [None, Some("v1"), Some("v2"), Some("v3")] {
        let (xc, yc) = (
            x.cluster(REVIEWS, 9080, subset).unwrap(),
            y.cluster(REVIEWS, 9080, subset).unwrap(),
        );
        assert_eq!(xc.name, yc.name);
        assert_eq!(xc.lb, yc.lb);
        assert_eq!(xc.limits(), yc.limits());
        let ips = |c: &routing::Cluster| {
            let mut v: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.target).collect();
            v.sort();
            v
        };
        assert_eq!(ips(xc), ips(yc), "{subset:?}");
    }
}

#[test]
fn config_dump_shape_loads_the_same() {
    let a = load("bookinfo.json");
    let b = load("bookinfo_config_dump.json");
    assert_eq!(a.snapshot.services().count(), b.snapshot.services().count());
    assert_eq!(
        a.snapshot
            .clusters()
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>(),
        b.snapshot
            .clusters()
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn subscriptions_list_eds_names() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let s = xds::required_resources(&res.listeners, &res.clusters);
    assert_eq!(s.endpoints.len(), 6);
    assert!(s
        .endpoints
        .contains(&format!("inbound-vip|9080|http/v2|{REVIEWS}")));
    assert!(s.routes.is_empty(), "istiod inlines waypoint routes");
}

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
    assert_eq!(c.endpoints[0].target.port(), 8081);
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
        primary.name,
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
    assert_eq!(r.name, "ok");
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

// ---- Authorization: istiod's RBAC / ext_authz / jwt_authn filters (fixture authz.json) ----

use routing::authz::{AuthzView, Decision, Verdict};
use std::net::IpAddr;

/// A request (or a TCP connection) as authorization sees it.
#[derive(Clone)]
struct AuthzReq {
    http: bool,
    principal: Option<&'static str>,
    port: u16,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    /// Claims of a token verified before authorization.
    claims: Option<serde_json::Value>,
}

impl AuthzReq {
    fn get(path: &'static str) -> AuthzReq {
        AuthzReq {
            http: true,
            principal: Some(SLEEP),
            port: 8000,
            method: "GET",
            host: "svc:8000",
            path,
            claims: None,
        }
    }
    fn claims(mut self, c: serde_json::Value) -> AuthzReq {
        self.claims = Some(c);
        self
    }
    fn tcp(port: u16) -> AuthzReq {
        AuthzReq {
            http: false,
            port,
            ..AuthzReq::get("")
        }
    }
    fn from(mut self, p: &'static str) -> AuthzReq {
        self.principal = Some(p);
        self
    }
    fn method(mut self, m: &'static str) -> AuthzReq {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> AuthzReq {
        self.host = h;
        self
    }
}

impl AuthzView for AuthzReq {
    fn is_http(&self) -> bool {
        self.http
    }
    fn principal(&self) -> Option<&str> {
        self.principal
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some("10.244.0.9".parse().unwrap())
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_port(&self) -> u16 {
        self.port
    }
    fn method(&self) -> &str {
        self.method
    }
    fn host(&self) -> Option<&str> {
        Some(self.host)
    }
    fn path(&self) -> &str {
        self.path
    }
    fn jwt(&self) -> routing::authz::Jwt<'_> {
        self.claims
            .as_ref()
            .map_or(routing::authz::Jwt::None, routing::authz::Jwt::Claims)
    }
}

const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const BAD: &str = "spiffe://cluster.local/ns/bad/sa/x";

fn authz_fixture() -> Translation {
    load("authz.json")
}

fn svc(name: &str) -> String {
    format!("{name}.foo.svc.cluster.local")
}

fn decide(t: &Translation, service: Option<&str>, req: &AuthzReq) -> Decision {
    t.snapshot
        .authorization()
        .for_service(service, req.http)
        .evaluate(req)
}

fn verdict(t: &Translation, service: &str, req: &AuthzReq) -> Verdict {
    decide(t, Some(&svc(service)), req).verdict
}

fn denied_by(rule: &str) -> Verdict {
    Verdict::Denied {
        policy: policy_of(rule),
        rule: rule.to_string(),
    }
}

fn allowed_by(rule: &str) -> Verdict {
    Verdict::Allowed {
        policy: policy_of(rule),
        rule: rule.to_string(),
    }
}

/// `ns[NS]-policy[NAME]-rule[I]` → `NS/NAME`.
fn policy_of(rule: &str) -> String {
    let ns = rule.split("ns[").nth(1).unwrap().split(']').next().unwrap();
    let name = rule
        .split("policy[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    format!("{ns}/{name}")
}

#[test]
fn authz_f1_allow_principal_method_path() {
    let t = authz_fixture();
    let rule = "ns[foo]-policy[allow-sleep]-rule[0]";
    assert_eq!(
        verdict(&t, "f1", &AuthzReq::get("/info/x?q=1")),
        allowed_by(rule)
    );
    for req in [
        AuthzReq::get("/info").method("POST"),
        AuthzReq::get("/other"),
        AuthzReq::get("/info").from("spiffe://cluster.local/ns/foo/sa/other"),
        AuthzReq::get("/info").from("cluster.local/ns/foo/sa/sleep"),
    ] {
        let v = verdict(&t, "f1", &req);
        assert_eq!(v, Verdict::NoAllowMatched, "{} {}", req.method, req.path);
        assert_eq!(
            v.response_code_details().as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
    }
}

#[test]
fn authz_f2_allow_all_and_f3_allow_nothing() {
    let t = authz_fixture();
    let all = "ns[foo]-policy[allow-all]-rule[0]";
    assert_eq!(verdict(&t, "f2", &AuthzReq::get("/")), allowed_by(all));
    assert_eq!(
        verdict(&t, "f2", &AuthzReq::get("/x").from(BAD).method("DELETE")),
        allowed_by(all)
    );
    for req in [AuthzReq::get("/"), AuthzReq::get("/info").from(BAD)] {
        assert_eq!(verdict(&t, "f3", &req), Verdict::NoAllowMatched);
    }
}

#[test]
fn authz_f4_deny_other_namespaces_except_healthz() {
    let t = authz_fixture();
    let rule = "ns[foo]-policy[deny-other-ns]-rule[0]";
    let v = verdict(&t, "f4", &AuthzReq::get("/data").from(BAD));
    assert_eq!(v, denied_by(rule));
    assert_eq!(
        v.response_code_details().unwrap(),
        format!("rbac_access_denied_matched_policy[{rule}]")
    );
    assert_eq!(
        verdict(&t, "f4", &AuthzReq::get("/healthz").from(BAD)),
        Verdict::AllowedNoAllowPolicy
    );
    assert_eq!(
        verdict(&t, "f4", &AuthzReq::get("/data")),
        Verdict::AllowedNoAllowPolicy
    );
}

#[test]
fn authz_f5_dry_run_is_not_enforced() {
    let t = authz_fixture();
    let d = decide(&t, Some(&svc("f5")), &AuthzReq::get("/").host("evil.test"));
    assert!(d.verdict.allowed(), "{d:?}");
    assert_eq!(d.dry_run, Some(Verdict::NoAllowMatched));
    let d = decide(
        &t,
        Some(&svc("f5")),
        &AuthzReq::get("/").host("API.Example.COM"),
    );
    assert_eq!(
        d.dry_run,
        Some(allowed_by("ns[foo]-policy[try-it]-rule[0]")),
        "hosts ignore case"
    );
}

#[test]
fn authz_f6_jwt_authn_providers_and_exact_claims() {
    let t = authz_fixture();
    // istiod's jwt_authn (requires_any[provider, allow_missing], payload in metadata) becomes
    // the providers the waypoint verifies tokens for…
    let set = t
        .snapshot
        .authorization()
        .for_service(Some(&svc("f6")), true);
    assert_eq!(set.jwt.len(), 1);
    assert_eq!(set.jwt[0].issuer, "https://issuer.example");
    assert!(set.jwt[0].forward_original_token);
    // …and the RBAC filter's claim tests are exact: alice in group admin is allowed, without a
    // token or with another subject or group nothing matches.
    let alice = |groups: serde_json::Value| serde_json::json!({"iss": "https://issuer.example", "sub": "alice", "groups": groups});
    assert_eq!(
        verdict(
            &t,
            "f6",
            &AuthzReq::get("/api/v1/items/7").claims(alice(serde_json::json!(["admin"])))
        ),
        allowed_by("ns[foo]-policy[jwt]-rule[0]")
    );
    assert_eq!(
        verdict(
            &t,
            "f6",
            &AuthzReq::get("/api/v1/items/7").claims(alice(serde_json::json!("admin")))
        ),
        allowed_by("ns[foo]-policy[jwt]-rule[0]")
    );
    for claims in [
        None,
        Some(alice(serde_json::json!(["dev"]))),
        Some(
            serde_json::json!({"iss": "https://issuer.example", "sub": "bob", "groups": ["admin"]}),
        ),
    ] {
        let mut req = AuthzReq::get("/api/v1/items/7");
        req.claims = claims;
        assert_eq!(verdict(&t, "f6", &req), Verdict::NoAllowMatched);
    }
    // Rules without claims still decide, with the {*}/{**} template.
    assert_eq!(
        verdict(&t, "f6", &AuthzReq::get("/public/v1/items/a/b?x=1")),
        allowed_by("ns[foo]-policy[public-items]-rule[0]")
    );
    assert_eq!(
        verdict(&t, "f6", &AuthzReq::get("/public/v1/v2/items/a")),
        Verdict::NoAllowMatched
    );
}

#[test]
fn authz_f7_audit_deny_allow() {
    let t = authz_fixture();
    let d = decide(&t, Some(&svc("f7")), &AuthzReq::get("/"));
    assert_eq!(d.verdict, allowed_by("ns[foo]-policy[allow-get]-rule[0]"));
    assert_eq!(
        d.audited,
        vec!["foo/audit-all ns[foo]-policy[audit-all]-rule[0]".to_string()]
    );
    assert_eq!(
        verdict(&t, "f7", &AuthzReq::get("/").method("POST")),
        denied_by("ns[foo]-policy[deny-post]-rule[0]")
    );
    assert_eq!(
        verdict(&t, "f7", &AuthzReq::get("/").method("PUT")),
        Verdict::NoAllowMatched
    );
}

#[test]
fn authz_f8_network_rbac_on_tcp_chains() {
    let t = authz_fixture();
    // ALLOW whose HTTP-only rule istiod dropped: `rules: {}` denies every connection.
    assert_eq!(
        verdict(&t, "f8a", &AuthzReq::tcp(5432)),
        Verdict::NoAllowMatched
    );
    // DENY namespaces [bad] ports [8080].
    assert_eq!(
        verdict(&t, "f8b", &AuthzReq::tcp(8080).from(BAD)),
        denied_by("ns[foo]-policy[d]-rule[0]")
    );
    assert_eq!(
        verdict(&t, "f8b", &AuthzReq::tcp(8080)),
        Verdict::AllowedNoAllowPolicy
    );
    // A service with TCP chains only uses the same set for HTTP.
    assert_eq!(
        verdict(&t, "f8b", &AuthzReq::get("/").from(BAD).method("GET")),
        Verdict::AllowedNoAllowPolicy,
        "port 8000 is not 8080"
    );
    // An HTTP-only service's TCP set is its HTTP set: F1's ALLOW on a TCP connection is unknown.
    assert_eq!(
        verdict(&t, "f1", &AuthzReq::tcp(8000)),
        Verdict::NoAllowMatched
    );
}

#[test]
fn authz_f10_custom_denies_matching_requests_only() {
    let t = authz_fixture();
    let v = verdict(&t, "f10", &AuthzReq::get("/admin/users"));
    assert_eq!(
        v,
        Verdict::CustomUnavailable {
            policy: "foo/ext".into(),
            rule: "istio-ext-authz-ext-authz-http-ns[foo]-policy[ext]-rule[0]".into(),
            provider: "outbound|8000||ext-authz.foo.svc.cluster.local".into(),
        }
    );
    assert!(!v.allowed());
    assert_eq!(
        verdict(&t, "f10", &AuthzReq::get("/public")),
        Verdict::AllowedNoAllowPolicy
    );
    // The ext_authz filter's service is what the waypoint calls for those requests: the
    // cluster's host and port, istiod's timeout, failOpen as failure_mode_allow.
    let p = t
        .snapshot
        .authorization()
        .provider("outbound|8000||ext-authz.foo.svc.cluster.local")
        .expect("the authorizer is translated");
    assert_eq!(p.address, "ext-authz.foo.svc.cluster.local:8000");
    assert_eq!(p.timeout, std::time::Duration::from_secs(600));
    assert!(p.fail_open);
    assert_eq!(p.status_on_error, 403);
    assert!(matches!(
        p.kind,
        routing::authz::ext::ExtAuthzKind::Http { .. }
    ));
    // includeRequestBodyInCheck (istiod's `withRequestBody`): the body buffer.
    assert_eq!(
        p.body,
        Some(routing::authz::ext::BodyBuffer {
            max_bytes: 4096,
            allow_partial: true,
            pack_as_bytes: false,
        })
    );
}

#[test]
fn authz_unknown_principal_kinds_never_fail_open() {
    let t = authz_fixture();
    // DENY on a principal kind the waypoint cannot evaluate: denies what the rest matches…
    assert_eq!(
        verdict(&t, "unk", &AuthzReq::get("/admin")),
        denied_by("ns[foo]-policy[deny-admin-by-tag]-rule[0]")
    );
    // …and ALLOW on one never allows: only rule 1 (path /public) can.
    assert_eq!(
        verdict(&t, "unk", &AuthzReq::get("/private")),
        Verdict::NoAllowMatched
    );
    assert_eq!(
        verdict(&t, "unk", &AuthzReq::get("/public/x")),
        allowed_by("ns[foo]-policy[allow-local]-rule[1]")
    );
    let text: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
    for (key, construct) in [
        (
            "ns[foo]-policy[deny-admin-by-tag]-rule[0]",
            "sourced_metadata",
        ),
        (
            "ns[foo]-policy[allow-local]-rule[0]",
            "io.istio.local_principal",
        ),
    ] {
        assert!(
            text.iter()
                .any(|w| w.contains(&svc("unk")) && w.contains(key) && w.contains(construct)),
            "{key}: {text:#?}"
        );
    }
}

#[test]
fn authz_direct_chain_is_the_waypoint_wide_set() {
    let t = authz_fixture();
    let rule = "ns[foo]-policy[deny-bad-ns]-rule[0]";
    assert_eq!(
        decide(&t, None, &AuthzReq::get("/").from(BAD)).verdict,
        denied_by(rule)
    );
    assert_eq!(
        decide(&t, None, &AuthzReq::tcp(80).from(BAD)).verdict,
        denied_by(rule)
    );
    assert_eq!(
        decide(&t, None, &AuthzReq::get("/")).verdict,
        Verdict::AllowedNoAllowPolicy
    );
    // Services have their own chains' sets, not the waypoint's.
    assert_eq!(
        verdict(&t, "f2", &AuthzReq::get("/").from(BAD)),
        allowed_by("ns[foo]-policy[allow-all]-rule[0]")
    );
    // Only the expected warnings: unknown constructs and endpoint identities.
    for w in &t.warnings {
        assert!(
            w.message.contains("without a known identity")
                || w.message.contains("treated as unknown"),
            "{w}"
        );
    }
}

/// authz.json with `edit` applied to the `httpFilters` of `service`'s HTTP chain.
fn authz_edited(service: &str, edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Translation {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("authz.json")).unwrap();
    let chain = format!("inbound-vip|8000|http|{}", svc(service));
    let chains = doc["resources"][0]["filterChains"].as_array_mut().unwrap();
    let c = chains
        .iter_mut()
        .find(|c| c["name"] == chain.as_str())
        .unwrap();
    let filters = c["filters"][0]["typedConfig"]["httpFilters"]
        .as_array_mut()
        .unwrap();
    edit(filters);
    translate(&load_resources(&doc.to_string()).unwrap())
}

fn warned(t: &Translation, needle: &str) -> bool {
    t.warnings.iter().any(|w| w.to_string().contains(needle))
}

#[test]
fn authz_ext_authz_without_shadow_rules_denies_everything() {
    let t = authz_edited("f10", |f| {
        f.remove(0);
    });
    let v = verdict(&t, "f10", &AuthzReq::get("/public"));
    assert!(
        matches!(&v, Verdict::CustomUnavailable { provider, .. } if provider == "outbound|8000||ext-authz.foo.svc.cluster.local"),
        "{v:?}"
    );
    assert!(warned(&t, "applies to every request"));
}

/// F10's ext_authz filter with `edit` applied.
fn f10_ext_authz_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Translation {
    authz_edited("f10", |f| {
        let x = f
            .iter_mut()
            .find(|x| x["name"] == "envoy.filters.http.ext_authz")
            .unwrap();
        edit(&mut x["typedConfig"]);
    })
}

#[test]
fn authz_ext_authz_request_body_grpc_and_limits() {
    use routing::authz::ext::{BodyBuffer, ExtAuthzKind};
    // istiod's generateGRPCConfig shape, with includeRequestBodyInCheck packAsBytes.
    let grpc = "outbound|9000||ext-authz-grpc.foo.svc.cluster.local";
    let t = f10_ext_authz_edited(|x| {
        x.as_object_mut().unwrap().remove("httpService");
        x["grpcService"] = serde_json::json!({
            "envoyGrpc": {"clusterName": grpc,
                          "authority": "outbound_.9000_._.ext-authz-grpc.foo.svc.cluster.local"},
            "timeout": "600s"});
        x["withRequestBody"] = serde_json::json!({"maxRequestBytes": 1024, "packAsBytes": true});
    });
    let p = t
        .snapshot
        .authorization()
        .provider(grpc)
        .expect("translated");
    assert_eq!(p.kind, ExtAuthzKind::Grpc);
    assert_eq!(p.body, Some(BodyBuffer::new(1024, false, true).unwrap()));

    // More than the waypoint can buffer and replay (64 KiB), or zero (Envoy's `gt: 0`): no
    // authorizer, so the CUSTOM rules deny; a warning says why.
    let http = "outbound|8000||ext-authz.foo.svc.cluster.local";
    for (max, why) in [
        (serde_json::json!(65537), "more than this proxy can buffer"),
        (serde_json::json!(0), "at least 1"),
    ] {
        let t = f10_ext_authz_edited(|x| x["withRequestBody"]["maxRequestBytes"] = max);
        assert!(t.snapshot.authorization().provider(http).is_none());
        assert!(
            matches!(
                verdict(&t, "f10", &AuthzReq::get("/admin")),
                Verdict::CustomUnavailable { .. }
            ),
            "{why}"
        );
        assert!(
            warned(&t, why) && warned(&t, "with_request_body"),
            "{why}: {:?}",
            t.warnings
        );
    }
    // Exactly the limit is fine.
    let t = f10_ext_authz_edited(|x| x["withRequestBody"]["maxRequestBytes"] = 65536.into());
    assert_eq!(
        t.snapshot.authorization().provider(http).unwrap().body,
        Some(BodyBuffer::new(65536, true, false).unwrap())
    );
}

#[test]
fn authz_second_allow_filter_must_also_allow() {
    // F7 plus a second ALLOW filter for path /ok: Envoy runs both, so GET must also be /ok.
    let t = authz_edited("f7", |f| {
        f.insert(
            3,
            serde_json::json!({"name": "envoy.filters.http.rbac", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"policies": {"ns[foo]-policy[allow-ok]-rule[0]": {
                    "permissions": [{"urlPath": {"path": {"exact": "/ok"}}}],
                    "principals": [{"any": true}]}}}}}),
        );
    });
    assert_eq!(
        verdict(&t, "f7", &AuthzReq::get("/ok")),
        allowed_by("ns[foo]-policy[allow-get]-rule[0]")
    );
    assert!(matches!(
        verdict(&t, "f7", &AuthzReq::get("/other")),
        Verdict::Denied { rule, .. } if rule == "allow-filter[2]-none-matched"
    ));
}

#[test]
fn authz_unrunnable_filters_deny_the_chain() {
    let wasm = serde_json::json!({"name": "istio.acme_plugin", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"}});
    let ecds = serde_json::json!({"name": "istio.ecds_plugin", "configDiscovery": {
        "configSource": {"ads": {}}, "typeUrls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]}});
    let unknown_first = serde_json::json!({"name": "acme.rewrite", "typedConfig": {
        "@type": "type.googleapis.com/acme.Rewrite"}});
    for (name, filter, at) in [
        ("istio.acme_plugin", wasm, 5),
        ("istio.ecds_plugin", ecds, 0),
        ("acme.rewrite", unknown_first, 0),
    ] {
        let t = authz_edited("f2", |f| f.insert(at, filter));
        let rule = format!("unenforced-filter[{name}]");
        assert!(
            matches!(verdict(&t, "f2", &AuthzReq::get("/")), Verdict::Denied { rule: r, .. } if r == rule),
            "{name}"
        );
        assert!(warned(&t, "all traffic of this chain is denied"), "{name}");
    }
    // An unknown filter after the authorization filters only warns.
    let t = authz_edited("f2", |f| {
        f.insert(
            3,
            serde_json::json!({"name": "acme.compress", "typedConfig": {"@type": "type.googleapis.com/acme.Compress"}}),
        )
    });
    assert!(verdict(&t, "f2", &AuthzReq::get("/")).allowed());
    assert!(warned(&t, "acme.Compress) is not supported; ignored"));
}

#[test]
fn authz_rbac_matcher_tree_denies_the_chain() {
    let t = authz_edited("f2", |f| {
        f[0]["typedConfig"] = serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "matcher": {"onNoMatch": {"action": {"name": "allow", "typedConfig": {
                "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "allow"}}}}});
    });
    assert!(!verdict(&t, "f2", &AuthzReq::get("/")).allowed());
}

#[test]
fn authz_per_route_rbac_override_answers_403() {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("authz.json")).unwrap();
    let chain = format!("inbound-vip|8000|http|{}", svc("f2"));
    let chains = doc["resources"][0]["filterChains"].as_array_mut().unwrap();
    let c = chains
        .iter_mut()
        .find(|c| c["name"] == chain.as_str())
        .unwrap();
    c["filters"][0]["typedConfig"]["routeConfig"]["virtualHosts"][0]["routes"][0]
        ["typedPerFilterConfig"] = serde_json::json!({"envoy.filters.http.rbac": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            "rbac": {"rules": {"policies": {}}}}});
    let t = translate(&load_resources(&doc.to_string()).unwrap());
    let r = routed(route_of(
        &t.snapshot,
        "10.96.3.2:8000",
        &SimpleRequest::new("/"),
    ));
    match &r.action {
        RouteAction::DirectResponse(d) => {
            assert_eq!(d.status, 403);
            assert_eq!(d.body.as_deref(), Some(&b"RBAC: access denied"[..]));
        }
        other => panic!("{other:?}"),
    }
    assert!(warned(&t, "the route answers 403"));
}

#[test]
fn authz_unknown_network_filter_before_the_hcm_denies() {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("authz.json")).unwrap();
    let chain = format!("inbound-vip|8000|http|{}", svc("f2"));
    let chains = doc["resources"][0]["filterChains"].as_array_mut().unwrap();
    let c = chains
        .iter_mut()
        .find(|c| c["name"] == chain.as_str())
        .unwrap();
    c["filters"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"name": "acme.sni_rewrite", "typedConfig": {"@type": "type.googleapis.com/acme.SniRewrite"}}),
    );
    let t = translate(&load_resources(&doc.to_string()).unwrap());
    assert!(matches!(
        verdict(&t, "f2", &AuthzReq::get("/")),
        Verdict::Denied { rule, .. } if rule == "unenforced-filter[acme.sni_rewrite]"
    ));
}

/// Each chain's HCM path fields (istiod `buildHTTPConnectionManager`, per meshConfig
/// `pathNormalization`) become its service port's path handling, and authorization meets the
/// path as that handling leaves it.
#[test]
fn hcm_path_fields_are_per_service() {
    use routing::path::{apply, EscapedSlashes::*, PathOutcome, PathPolicy};
    let t = load("path_normalization.json");
    assert!(
        t.warnings.iter().all(|w| !w.message.contains("path")),
        "{:?}",
        t.warnings
    );
    let policy = |n: u8| -> PathPolicy {
        let vip = format!("10.96.4.{n}:9080");
        let Some(Destination::Service { port, .. }) = t.snapshot.resolve_destination(addr(&vip))
        else {
            panic!("{vip} is not a service VIP");
        };
        port.path.expect("the chain's HCM sets the path handling")
    };
    let p = |normalize_path, merge_slashes, escaped_slashes| PathPolicy {
        normalize_path,
        merge_slashes,
        escaped_slashes,
    };
    assert_eq!(policy(1), p(true, false, KeepUnchanged), "BASE");
    assert_eq!(policy(2), p(false, false, KeepUnchanged), "NONE");
    assert_eq!(policy(3), p(true, true, KeepUnchanged), "MERGE_SLASHES");
    assert_eq!(
        policy(4),
        p(true, true, UnescapeAndForward),
        "DECODE_AND_MERGE"
    );
    assert_eq!(policy(5), p(true, true, RejectRequest));
    assert_eq!(policy(6), p(true, true, UnescapeAndRedirect));
    // The meshConfig modes are what istiod writes for them.
    for (mode, n) in [("BASE", 1), ("NONE", 2), ("MERGE_SLASHES", 3)] {
        let m: routing::path::PathNormalization = mode.parse().unwrap();
        assert_eq!(PathPolicy::from(m), policy(n), "{mode}");
    }
    let m: routing::path::PathNormalization = "DECODE_AND_MERGE_SLASHES".parse().unwrap();
    assert_eq!(PathPolicy::from(m), policy(4));

    // What the DENY on /admin decides for the path as each service's HCM leaves it.
    let rule = "ns[default]-policy[deny-admin]-rule[0]";
    let decide_at = |n: u8, raw: &str| -> String {
        match apply(raw, &policy(n)) {
            PathOutcome::Reject => "400".to_string(),
            PathOutcome::Redirect(to) => format!("307 {to}"),
            outcome => {
                let path = match outcome {
                    PathOutcome::Rewrite(p) => p,
                    _ => raw.to_string(),
                };
                let req = AuthzReq::get(Box::leak(path.into_boxed_str()));
                let host = format!("p{n}.default.svc.cluster.local");
                match decide(&t, Some(&host), &req).verdict {
                    v if v == denied_by(rule) => "403".to_string(),
                    v if v.allowed() => "allowed".to_string(),
                    v => format!("{v:?}"),
                }
            }
        }
    };
    for (raw, expect) in [
        ("/admin", ["403", "403", "403", "403", "403", "403"]),
        (
            "/x/../admin",
            ["403", "allowed", "403", "403", "403", "403"],
        ),
        (
            "//admin",
            ["allowed", "allowed", "403", "403", "403", "403"],
        ),
        (
            "/x%2F..%2Fadmin",
            ["allowed", "allowed", "allowed", "403", "400", "307 /admin"],
        ),
        (
            "/ok",
            [
                "allowed", "allowed", "allowed", "allowed", "allowed", "allowed",
            ],
        ),
    ] {
        for (i, want) in expect.iter().enumerate() {
            assert_eq!(decide_at(i as u8 + 1, raw), *want, "p{} {raw}", i + 1);
        }
    }

    // `/config_dump` shows each port's handling.
    let dump = t.snapshot.to_json();
    let p3 = dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"]["hostname"] == "p3.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        p3["service"]["ports"][0]["path"],
        serde_json::json!({"normalize_path": true, "merge_slashes": true, "escaped_slashes": "KEEP_UNCHANGED"})
    );

    // An HCM without the fields (not istiod's: it always sets normalize_path) is Envoy's
    // defaults: no normalization, escaped slashes kept.
    let b = load("bookinfo.json");
    let Some(Destination::Service { port, .. }) =
        b.snapshot.resolve_destination(addr("10.96.0.12:9080"))
    else {
        panic!("reviews VIP");
    };
    assert_eq!(port.path, Some(PathPolicy::default()));
}

/// bookinfo.json with the fixture `overlay` laid over it: its clusters and EDS assignments
/// replace bookinfo's of the same name.
fn bookinfo_with_overlay(overlay: &str) -> Translation {
    bookinfo_with_overlay_text(&fixture(overlay)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// [`bookinfo_with_overlay`] with the overlay's text; the rejections when there are any.
fn bookinfo_with_overlay_text(overlay: &str) -> Result<Translation, Vec<xds::Rejection>> {
    let mut res = load_resources(&fixture("bookinfo.json")).unwrap();
    let over = load_resources(overlay).unwrap();
    res.clusters
        .retain(|c| !over.clusters.iter().any(|o| o.name == c.name));
    res.endpoints.retain(|e| {
        !over
            .endpoints
            .iter()
            .any(|o| o.cluster_name == e.cluster_name)
    });
    res.clusters.extend(over.clusters);
    res.endpoints.extend(over.endpoints);
    xds::translate(&res, &TranslateOptions::default())
}

/// bookinfo.json with upstreams.json laid over it.
fn bookinfo_with_upstreams() -> Translation {
    bookinfo_with_overlay("upstreams.json")
}

#[test]
fn cross_namespace_waypoint_verifies_by_every_san_matcher() {
    let t = bookinfo_with_upstreams();
    let sans = t.snapshot.hbone_peer_sans().expect("SAN matchers").clone();
    assert_eq!(sans.len(), 2, "{sans:?}");
    let pod = |id: &str| vec![(routing::SanKind::Uri, id.to_string())];
    // The backend in `default` passes on the trust-domain prefix, as with Envoy (any-of); the
    // namespace matcher alone (what was kept before) would refuse it.
    assert!(routing::SanMatcher::any_matches(
        &sans,
        &pod("spiffe://example.org/ns/default/sa/bookinfo-ratings")
    ));
    assert!(!sans[1].matches(&pod("spiffe://example.org/ns/default/sa/bookinfo-ratings")));
    assert!(!routing::SanMatcher::any_matches(
        &sans,
        &pod("spiffe://evil.org/ns/istio-waypoint/sa/x")
    ));
}

#[test]
fn mixed_cluster_dials_plain_endpoints_directly_with_dr_tls() {
    let t = bookinfo_with_upstreams();
    let s = &t.snapshot;
    let c = s
        .cluster("ratings.default.svc.cluster.local", 9080, None)
        .unwrap();
    let mut eps: Vec<(String, routing::Transport)> = c
        .endpoints
        .iter()
        .map(|e| (e.target.to_string(), e.endpoint.transport))
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![
            ("10.0.0.5:9080".to_string(), routing::Transport::Direct),
            ("10.244.1.6:9080".to_string(), routing::Transport::Hbone),
        ]
    );
    let tls = c
        .policy
        .originate_tls()
        .expect("DestinationRule tls SIMPLE");
    assert_eq!(tls.mode, routing::TlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("ratings.example.com"));
    assert_eq!(
        tls.ca_certificates.as_deref(),
        Some("/etc/certs/ratings-ca.pem")
    );
    assert_eq!(tls.subject_alt_names.len(), 1);
    assert!(tls.subject_alt_names[0]
        .matches(&[(routing::SanKind::Dns, "ratings.example.com".to_string())]));
    assert!(!tls.alpn_h2);
    // raw_buffer inside internal_upstream: no TLS.
    let plain = s
        .cluster("productpage.default.svc.cluster.local", 9080, None)
        .unwrap();
    assert!(plain.policy.tls.is_none());
}

/// Files-mode parity: the DestinationRule istiod 1.30.3 turned into upstreams.json's ratings
/// cluster (`tls: {mode: SIMPLE, sni, subjectAltNames, caCertificates}`), loaded from YAML with
/// the same endpoints, gives the same cluster TLS and the same transports.
#[test]
fn files_destination_rule_tls_matches_what_istiods_cluster_translates_to() {
    let t = bookinfo_with_upstreams();
    let host = "ratings.default.svc.cluster.local";
    let from_xds = t.snapshot.cluster(host, 9080, None).unwrap();
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: [10.96.0.11]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.5, labels: {istio.io/dataplane-mode: none}}
  - {address: 10.244.1.6}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: SIMPLE
      sni: ratings.example.com
      subjectAltNames: [ratings.example.com]
      caCertificates: /etc/certs/ratings-ca.pem
";
    let files = routing::load_str(&[("r.yaml".into(), yaml.into())], "cluster.local").unwrap();
    let from_files = files.cluster(host, 9080, None).unwrap();
    assert!(from_xds.policy.tls.is_some());
    assert_eq!(from_files.policy.tls, from_xds.policy.tls);
    let transports = |c: &routing::Cluster| {
        let mut v: Vec<(String, routing::Transport)> = c
            .endpoints
            .iter()
            .map(|e| (e.target.to_string(), e.endpoint.transport))
            .collect();
        v.sort();
        v
    };
    assert_eq!(transports(from_files), transports(from_xds));
}

/// A DestinationRule `credentialName` (istiod: SDS `kubernetes://…` secrets) or `caCrl` on the
/// waypoint's cluster cannot be honoured: the cluster is refused, never dialled with the system
/// roots, without the client certificate or without the revocation check.
#[test]
fn credential_name_and_crl_refuse_the_cluster() {
    let ratings = "inbound-vip|9080|http|ratings.default.svc.cluster.local";
    let text = fixture("upstreams.json");
    let cases = [
        (
            text.replace("file-root:/etc/certs/ratings-ca.pem", "kubernetes://ratings-cacert"),
            "validation secret \"kubernetes://ratings-cacert\" (a DestinationRule credentialName)",
        ),
        (
            text.replace(
                r#""match_subject_alt_names""#,
                r#""crl": {"filename": "/etc/certs/ratings.crl"}, "match_subject_alt_names""#,
            ),
            "certificate revocation list (DestinationRule caCrl)",
        ),
        (
            text.replace(
                r#""combined_validation_context""#,
                r#""tls_certificate_sds_secret_configs": [{"name": "kubernetes://ratings-cred"}], "combined_validation_context""#,
            ),
            "client certificate secret \"kubernetes://ratings-cred\"",
        ),
    ];
    for (overlay, reason) in cases {
        assert_ne!(overlay, text, "{reason}: the fixture changed");
        let errs = bookinfo_with_overlay_text(&overlay).expect_err(reason);
        assert!(
            errs.iter()
                .any(|r| r.name == ratings && r.reason.contains(reason)),
            "{reason}: {errs:?}"
        );
    }
}

/// route_fields.json (istiod 1.24.6): the default route's retry policy and a VirtualService's
/// retries, CORS and fault exactly as istiod writes them.
#[test]
fn route_fields_are_taken_as_written() {
    let t = load("route_fields.json");
    let s = &t.snapshot;
    assert!(
        t.warnings
            .iter()
            .all(|w| w.message.contains("without a known identity")),
        "{:?}",
        t.warnings
    );
    // No VirtualService: the default route, with its own retry policy (not Istio's default).
    for vip in ["10.96.6.1:9080", "10.96.6.2:9080"] {
        let Some(Destination::Service { service, port }) = s.resolve_destination(addr(vip)) else {
            panic!("{vip}");
        };
        assert!(matches!(
            s.route(service, port.number, &SimpleRequest::new("/")),
            RouteDecision::Default
        ));
        let p = port.default_retry_policy();
        assert_eq!(p.attempts, 2, "{vip}");
        assert_eq!(p.retry_on, vec![RetryOn::ResetBeforeRequest]);
        assert!(!p.is_default && !p.avoids_tried_endpoints());
        assert!(p.should_retry(None, RetryFailure::ConnectFailure, None));
        assert!(!p.should_retry(Some(503), RetryFailure::Response, None));
    }
    const WEB: &str = "10.96.6.3:9080";
    // retries {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,503,gateway-error"} + corsPolicy.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/api/x")));
    assert_eq!(r.name, "api");
    assert_eq!(r.retries.attempts, 3);
    assert_eq!(r.retries.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        r.retries.retry_on,
        vec![
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::RetriableStatusCodes
        ]
    );
    assert_eq!(r.retries.retriable_status_codes, vec![503]);
    assert!(r.retries.retry_ignore_previous_hosts);
    assert_eq!(r.retries.host_selection_retry_max_attempts, 5);
    let cors = r.cors.as_ref().expect("CORS from typed_per_filter_config");
    assert_eq!(
        cors.allow_origins,
        vec![
            StringMatch::Exact("https://app.example".into()),
            StringMatch::Prefix("https://dev.".into())
        ]
    );
    assert_eq!(cors.allow_methods, vec!["GET", "POST"]);
    assert_eq!(cors.allow_headers, vec!["x-token", "content-type"]);
    assert_eq!(cors.expose_headers, vec!["x-trace"]);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert!(cors.allow_credentials);
    assert_eq!(cors.unmatched_preflights, UnmatchedPreflights::Forward);
    assert!(r.fault.is_none());
    // fault {abort: {httpStatus: 418, percentage: 100}}, no retries: the mesh default.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/teapot")));
    let abort = r.fault.as_ref().and_then(|f| f.abort.as_ref()).unwrap();
    assert_eq!(abort.abort, Abort::Http(418));
    assert_eq!(abort.percentage.per_million(), 1_000_000);
    assert!(r.retries.is_default, "{:?}", r.retries);
    assert!(r.cors.is_none());
    // retries {attempts: 1, retryOn: "reset,retriable-4xx", retryRemoteLocalities: true}.
    let r = routed(route_of(s, WEB, &SimpleRequest::new("/other")));
    assert_eq!(r.name, "rest");
    assert_eq!(r.retries.attempts, 1);
    assert_eq!(
        r.retries.retry_on,
        vec![RetryOn::Reset, RetryOn::Retriable4xx]
    );
    assert!(r.retries.retry_remote_localities);
    assert!(r
        .retries
        .should_retry(Some(409), RetryFailure::Response, None));
}

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
        *m.entry(c.pick_at(None, &[], now, &mut rng).unwrap().target)
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
        .map(|e| (e.target.to_string(), e.priority, e.locality.to_string()))
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
    assert!(c.endpoints.iter().all(|e| e.priority == 0));
}

const RATINGS_EXT: &str = "ratings-ext.external.svc.cluster.local";
const RATINGS_EXT_CLUSTER: &str = "outbound|9080||ratings-ext.external.svc.cluster.local";

/// bookinfo.json with outbound_1_24.json (istiod 1.24.6): its resources added (after `edit`)
/// and the reviews-split route's weighted clusters replaced by the fixture's 80 / 20 split.
fn bookinfo_with_outbound(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Resources {
    use serde_json::Value;
    fn walk(v: &mut Value, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
        match v {
            Value::Object(m) => {
                f(m);
                m.values_mut().for_each(|c| walk(c, f));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, f)),
            _ => {}
        }
    }
    let over: Value = serde_json::from_str(&fixture("outbound_1_24.json")).unwrap();
    let mut doc: Value = serde_json::from_str(&fixture("bookinfo.json")).unwrap();
    let mut replaced = 0;
    walk(&mut doc, &mut |o| {
        if o.get("name").and_then(Value::as_str) == Some("reviews-split") {
            o["route"]["weighted_clusters"]["clusters"] = over["reviews_split"].clone();
            replaced += 1;
        }
    });
    assert_eq!(replaced, 1, "bookinfo.json has the reviews-split route");
    let mut added = over["resources"].as_array().unwrap().clone();
    edit(&mut added);
    doc.as_array_mut().unwrap().extend(added);
    load_resources(&doc.to_string()).unwrap()
}

#[test]
fn outbound_cluster_is_a_route_destination_with_hbone_and_direct_endpoints() {
    let res = bookinfo_with_outbound(|_| {});
    // The client subscribes to the outbound cluster's EDS assignment.
    let subs = xds::required_resources(&res.listeners, &res.clusters);
    assert!(subs.endpoints.contains(RATINGS_EXT_CLUSTER), "{subs:?}");
    let t = translate(&res);
    assert!(
        !t.warnings
            .iter()
            .any(|w| w.name == RATINGS_EXT_CLUSTER || w.message.contains("outbound")),
        "{:?}",
        t.warnings
    );
    let s = &t.snapshot;
    let r = routed(route_of(s, "10.96.0.12:9080", &SimpleRequest::new("/")));
    let split: Vec<(&str, Option<&str>, Option<u16>, u32)> = r
        .destinations
        .iter()
        .map(|d| (d.host.as_str(), d.subset.as_deref(), d.port, d.weight))
        .collect();
    assert_eq!(
        split,
        vec![
            (REVIEWS, Some("v1"), Some(9080), 80),
            (RATINGS_EXT, None, Some(9080), 20)
        ]
    );
    let c = s
        .cluster(RATINGS_EXT, 9080, None)
        .expect("outbound cluster");
    let mut eps: Vec<(String, routing::Transport, String)> = c
        .endpoints
        .iter()
        .map(|e| {
            (
                e.target.to_string(),
                e.endpoint.transport,
                e.endpoint.namespace.clone(),
            )
        })
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![
            (
                "10.0.1.20:9080".to_string(),
                routing::Transport::Direct,
                "external".to_string()
            ),
            (
                "10.244.2.10:9080".to_string(),
                routing::Transport::Hbone,
                "external".to_string()
            ),
        ]
    );
    // tlsMode-disabled is raw_buffer: the direct endpoint gets no TLS.
    assert!(c.policy.tls.is_none());
    // Not served by this waypoint: no VIP of it resolves to a service.
    assert!(s.resolve_destination(addr("10.0.1.20:9080")).is_none());
}

#[test]
fn outbound_sidecar_endpoint_is_istio_mutual_and_odd_ones_left_out() {
    let res = bookinfo_with_outbound(|added| {
        let cla = added
            .iter_mut()
            .find(|r| r.get("cluster_name").is_some())
            .unwrap();
        let eps = cla["endpoints"][0]["lb_endpoints"].as_array_mut().unwrap();
        let ep = |ip: &str, keys: serde_json::Value| {
            serde_json::json!({
                "endpoint": {"address": {"socket_address": {"address": ip, "port_value": 9080}}},
                "metadata": {"filter_metadata": {"envoy.transport_socket_match": keys}},
                "load_balancing_weight": 1, "health_status": "HEALTHY"})
        };
        // A sidecar pod (tlsMode-istio).
        eps.push(ep("10.0.1.21", serde_json::json!({"tlsMode": "istio"})));
        // Tunnel metadata on a socket address: the hbone socket cannot reach it.
        eps.push(ep("10.0.1.22", serde_json::json!({"tunnel": "http"})));
    });
    let t = translate(&res);
    let warned: Vec<&str> = t
        .warnings
        .iter()
        .filter(|w| w.name == RATINGS_EXT_CLUSTER)
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("10.0.1.22:9080") && warned[0].contains("\"hbone\""),
        "{warned:?}"
    );
    let c = t.snapshot.cluster(RATINGS_EXT, 9080, None).unwrap();
    let mut eps: Vec<(String, routing::Transport)> = c
        .endpoints
        .iter()
        .map(|e| (e.target.to_string(), e.endpoint.transport))
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![
            ("10.0.1.20:9080".to_string(), routing::Transport::Direct),
            (
                "10.0.1.21:9080".to_string(),
                routing::Transport::IstioMutual
            ),
            ("10.244.2.10:9080".to_string(), routing::Transport::Hbone),
        ]
    );
}

/// bookinfo.json with a DNS ServiceEntry overlay (`dns_serviceentry_<release>.json`): the
/// overlay's clusters replace bookinfo's of the same name, their EDS assignments dropped.
fn bookinfo_with_dns(fixture_name: &str, answers: routing::dns::DnsAnswers) -> Translation {
    let mut res = load_resources(&fixture("bookinfo.json")).unwrap();
    let over = load_resources(&fixture(fixture_name)).unwrap();
    res.clusters
        .retain(|c| !over.clusters.iter().any(|o| o.name == c.name));
    res.endpoints
        .retain(|e| !over.clusters.iter().any(|o| o.name == e.cluster_name));
    res.clusters.extend(over.clusters);
    let opts = TranslateOptions {
        dns: answers,
        ..TranslateOptions::default()
    };
    xds::translate(&res, &opts).unwrap_or_else(|r| panic!("rejected: {r:?}"))
}

fn dns_endpoints(t: &Translation, host: &str) -> Vec<(String, routing::Transport)> {
    let c = t.snapshot.cluster(host, 9080, None).unwrap();
    let mut eps: Vec<_> = c
        .endpoints
        .iter()
        .map(|e| (e.target.to_string(), e.endpoint.transport))
        .collect();
    eps.sort();
    eps
}

/// A ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN` bound to the waypoint (istiod 1.24.6 and
/// 1.30.3 shapes): the hostnames are listed to resolve, and the endpoints are the answers given,
/// dialled directly; STRICT_DNS takes every address of every hostname, LOGICAL_DNS the first.
#[test]
fn dns_service_entry_clusters_resolve_through_the_answers_given() {
    use routing::dns::{DnsFamily, DnsQuery};
    const RATINGS: &str = "ratings.default.svc.cluster.local";
    const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";
    for (fixture_name, logical_family) in [
        ("dns_serviceentry_1_24.json", DnsFamily::V4),
        ("dns_serviceentry_1_30.json", DnsFamily::All),
    ] {
        let q = |h: &str, family| DnsQuery {
            hostname: h.to_string(),
            family,
        };
        // Nothing resolved yet: no endpoints, a warning, the targets listed.
        let t = bookinfo_with_dns(fixture_name, Default::default());
        assert!(dns_endpoints(&t, RATINGS).is_empty());
        let mut targets: Vec<_> = t.dns.iter().map(|d| d.query.clone()).collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                q("productpage.example.com", logical_family),
                q("ratings-a.example.com", DnsFamily::V4),
                q("ratings-b.example.com", DnsFamily::V4),
            ],
            "{fixture_name}"
        );
        let ratings_a = t
            .dns
            .iter()
            .find(|d| d.query.hostname == "ratings-a.example.com");
        let ratings_a = ratings_a.unwrap();
        assert_eq!(ratings_a.refresh, Duration::from_secs(60));
        assert_eq!(t.snapshot.dns_targets(), &t.dns[..]);
        assert!(ratings_a.respect_ttl);
        assert!(
            t.warnings
                .iter()
                .any(|w| w.message.contains("not resolved yet")),
            "{:?}",
            t.warnings
        );
        // c-ares is accepted without a warning (its settings only tune c-ares).
        assert!(
            !t.warnings.iter().any(|w| w.message.contains("resolver")),
            "{:?}",
            t.warnings
        );
        // Answered.
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let answers = [
            (
                q("ratings-a.example.com", DnsFamily::V4),
                vec![ip("192.0.2.1"), ip("192.0.2.2")],
            ),
            (
                q("ratings-b.example.com", DnsFamily::V4),
                vec![ip("192.0.2.3")],
            ),
            (
                q("productpage.example.com", logical_family),
                vec![ip("198.51.100.7"), ip("198.51.100.8")],
            ),
        ]
        .into_iter()
        .collect();
        let t = bookinfo_with_dns(fixture_name, answers);
        let direct = routing::Transport::Direct;
        assert_eq!(
            dns_endpoints(&t, RATINGS),
            vec![
                ("192.0.2.1:9080".to_string(), direct),
                ("192.0.2.2:9080".to_string(), direct),
                ("192.0.2.3:9080".to_string(), direct),
            ],
            "{fixture_name}: STRICT_DNS"
        );
        assert_eq!(
            dns_endpoints(&t, PRODUCTPAGE),
            vec![("198.51.100.7:9080".to_string(), direct)],
            "{fixture_name}: LOGICAL_DNS"
        );
        // Still served on its VIP.
        assert!(matches!(
            t.snapshot.resolve_destination(addr("10.96.0.11:9080")),
            Some(Destination::Service { service, .. }) if service.hostname == RATINGS
        ));
    }
}
