//! Loading tests on the bookinfo set.

use crate::{
    load_dir, load_str, Destination, LbPolicy, Protocol, RouteDecision, SimpleRequest, Snapshot,
};
use std::net::SocketAddr;

mod dump_and_dirs;

pub(super) const SERVICE_ENTRY: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts: [reviews]
  addresses: [10.0.0.10]
  ports:
  - number: 9080
    name: http
  resolution: STATIC
  workloadSelector:
    labels: {app: reviews}
";

pub(super) const WORKLOADS: &str = "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.10.1, serviceAccount: bookinfo-reviews, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.10.2, serviceAccount: bookinfo-reviews, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3}
spec: {address: 127.0.10.3, serviceAccount: bookinfo-reviews, labels: {app: reviews, version: v3}}
";

pub(super) const DESTINATION_RULE: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
";

/// The VirtualService from the Istio docs, unchanged.
pub(super) const VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
";

pub(super) fn files(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("services.yaml", SERVICE_ENTRY),
        ("workloads.yaml", WORKLOADS),
        ("reviews-dr.yaml", DESTINATION_RULE),
        ("reviews.yaml", VIRTUAL_SERVICE),
    ]
    .iter()
    .chain(extra)
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    v.sort_by_key(|(n, _)| extra.iter().any(|(e, _)| e == n));
    v
}

fn load(extra: &[(&str, &str)]) -> Snapshot {
    match load_str(&files(extra), "cluster.local") {
        Ok(s) => s,
        Err(e) => panic!("load failed:\n{e}"),
    }
}

const FQDN: &str = "reviews.default.svc.cluster.local";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn bookinfo_loads_and_resolves_vip() {
    let s = load(&[]);
    assert!(s.version() > 0);
    assert_eq!(s.services().count(), 1);
    match s.resolve_destination(addr("10.0.0.10:9080")) {
        Some(Destination::Service { service, port }) => {
            assert_eq!(service.hostname, FQDN);
            assert_eq!(&*service.namespace, "default");
            assert_eq!(port.number, 9080);
            assert_eq!(&*port.name, "http");
            assert_eq!(port.protocol, Protocol::Http);
            assert_eq!(port.target_port, 9080);
        }
        other => panic!("{other:?}"),
    }
    assert!(s.resolve_destination(addr("10.0.0.10:9081")).is_none());
    assert!(s.resolve_destination(addr("10.9.9.9:9080")).is_none());
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
}

#[test]
fn bookinfo_resolves_pod() {
    let s = load(&[]);
    match s.resolve_destination(addr("127.0.10.2:9080")) {
        Some(Destination::Pod {
            endpoint,
            port,
            services,
            bound: None,
        }) => {
            assert_eq!(&*endpoint.workload.name, "reviews-v2");
            assert_eq!(
                &*endpoint.workload.identity,
                "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            );
            assert_eq!(&*endpoint.workload.service_account, "bookinfo-reviews");
            assert_eq!(port, 9080);
            assert_eq!(services.len(), 1);
            assert_eq!(services[0].hostname, FQDN);
        }
        other => panic!("{other:?}"),
    }
    assert!(s.resolve_destination(addr("127.0.10.2:1234")).is_none());
}

#[test]
fn bookinfo_route_is_90_10() {
    let s = load(&[]);
    let svc = s.service_by_host("reviews").unwrap();
    match s.route(svc, 9080, &SimpleRequest::new("/reviews/0")) {
        RouteDecision::Route {
            virtual_service,
            route_index,
            route,
        } => {
            assert_eq!(virtual_service, "default/reviews");
            assert_eq!(route_index, 0);
            assert_eq!(&*route.name, "reviews.0");
            assert!(route.matches.is_empty());
            let d: Vec<(&str, Option<&str>, u32)> = route
                .destinations
                .iter()
                .map(|d| (d.host.as_str(), d.subset.as_deref(), d.weight))
                .collect();
            assert_eq!(d, vec![(FQDN, Some("v1"), 90), (FQDN, Some("v2"), 10)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bookinfo_clusters() {
    let s = load(&[]);
    let all = s.cluster(FQDN, 9080, None).unwrap();
    assert_eq!(
        &*all.name,
        "inbound-vip|9080|http|reviews.default.svc.cluster.local"
    );
    assert_eq!(all.endpoints.len(), 3);
    assert_eq!(all.lb, LbPolicy::Random);
    let v1 = s.cluster(FQDN, 9080, Some("v1")).unwrap();
    assert_eq!(
        &*v1.name,
        "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(v1.subset.as_deref(), Some("v1"));
    assert_eq!(v1.lb, LbPolicy::Random);
    let targets: Vec<SocketAddr> = v1.endpoints.iter().map(|e| e.target()).collect();
    assert_eq!(targets, vec![addr("127.0.10.1:9080")]);
    assert_eq!(&*v1.endpoints[0].endpoint.workload.name, "reviews-v1");
    assert!(s.cluster(FQDN, 9080, Some("v4")).is_none());
    assert!(s.cluster(FQDN, 9081, None).is_none());
    assert_eq!(s.clusters().len(), 4);
}

#[test]
fn service_by_host_forms() {
    let s = load(&[]);
    for h in [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        FQDN,
        "reviews:9080",
        "reviews.default.svc.cluster.local:9080",
        "Reviews.Default:9080",
    ] {
        assert_eq!(
            s.service_by_host(h).map(|s| s.hostname.as_str()),
            Some(FQDN),
            "{h}"
        );
    }
    assert!(s.service_by_host("ratings").is_none());
    assert!(s.service_by_host("reviews.other").is_none());
}

const MATCH_VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-match}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - uri: {exact: /exact}
    - uri: {prefix: /api/}
      name: api
    route:
    - destination: {host: reviews, subset: v3}
";

fn matching_snapshot() -> Snapshot {
    // only the matching VS, so routes without a match fall through to NoRoute
    let mut f = files(&[("match.yaml", MATCH_VS)]);
    f.retain(|(n, _)| n != "reviews.yaml");
    load_str(&f, "cluster.local").unwrap_or_else(|e| panic!("{e}"))
}

fn decided(s: &Snapshot, req: SimpleRequest) -> Option<(String, usize)> {
    let svc = s.service_by_host("reviews").unwrap();
    match s.route(svc, 9080, &req) {
        RouteDecision::Route {
            route, route_index, ..
        } => Some((route.name.clone(), route_index)),
        RouteDecision::NoRoute => None,
        RouteDecision::Default => Some(("DEFAULT".into(), 0)),
    }
}

#[test]
fn matching_first_match_wins_and_no_route() {
    let s = matching_snapshot();
    let r = |p: &str| SimpleRequest::new(p);
    assert_eq!(
        decided(&s, r("/exact").with_header("end-user", "jason")),
        Some(("jason".into(), 0))
    );
    assert_eq!(
        decided(&s, r("/exact")),
        Some(("reviews-match.1".into(), 1))
    );
    assert_eq!(
        decided(&s, r("/exact?q=1")),
        Some(("reviews-match.1".into(), 1))
    );
    assert_eq!(decided(&s, r("/exact/more")), None);
    assert_eq!(
        decided(&s, r("/api/x")),
        Some(("reviews-match.1".into(), 1))
    );
    assert_eq!(
        decided(&s, r("/other").with_header("end-user", "jason2")),
        None
    );
}

#[test]
fn no_virtual_service_is_default() {
    let mut f = files(&[]);
    f.retain(|(n, _)| n != "reviews.yaml");
    let s = load_str(&f, "cluster.local").unwrap();
    assert_eq!(
        decided(&s, SimpleRequest::new("/")),
        Some(("DEFAULT".into(), 0))
    );
}

#[test]
fn first_virtual_service_for_a_host_wins() {
    let s = load(&[("z-match.yaml", MATCH_VS)]);
    // reviews.yaml comes first (file order); reviews-match is not merged in
    assert_eq!(
        decided(
            &s,
            SimpleRequest::new("/exact").with_header("end-user", "jason")
        ),
        Some(("reviews.0".into(), 0))
    );
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.contains("default/reviews-match")
                && w.contains("already has VirtualService default/reviews")),
        "{:?}",
        s.warnings()
    );
}

#[test]
fn unsupported_fields_are_warnings() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  gateways: [mesh]
  exportTo: ['.']
  http:
  - timeout: 5s
    retries: {attempts: 3}
    match:
    - uri: {regex: '/x.*'}
      method: {exact: GET}
      statPrefix: x
    route:
    - destination: {host: reviews, subset: v1}
  - redirect: {uri: /elsewhere}
  tls:
  - match: [{sniHosts: [reviews]}]
    route: [{destination: {host: reviews}}]
  tcp:
  - route: [{destination: {host: reviews}}]
";
    let mut f = files(&[]);
    f.retain(|(n, _)| n != "reviews.yaml");
    f.push(("reviews.yaml".into(), vs.into()));
    let s = load_str(&f, "cluster.local").unwrap_or_else(|e| panic!("{e}"));
    let w = s.warnings().join("\n");
    for needle in [
        "reviews.yaml doc 0 VirtualService default/reviews: spec.exportTo is not supported yet; ignored",
        "spec.tls is not supported yet",
        "spec.http[0].match[0].statPrefix is not supported yet",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in\n{w}");
    }
    for parsed in ["timeout", "retries", "redirect", "spec.tcp"] {
        assert!(
            !w.lines()
                .any(|l| l.contains(parsed) && l.contains("not supported")),
            "{parsed} warned in\n{w}"
        );
    }
    let vs = &s.virtual_services()[0];
    assert_eq!(vs.http.len(), 2);
    assert_eq!(vs.tcp.len(), 1);
    assert_eq!(vs.http[0].matches.len(), 1);
    assert_eq!(vs.http[0].timeout, Some(std::time::Duration::from_secs(5)));
    assert_eq!(vs.http[0].retries.attempts, 3);
    assert!(matches!(vs.http[1].action, crate::RouteAction::Redirect(_)));
    let m = &vs.http[0].matches[0];
    assert_eq!(
        m.uri.as_ref().map(|u| u.to_string()),
        Some("regex \"/x.*\"".into())
    );
    assert_eq!(m.method, Some(crate::StringMatch::Exact("GET".into())));
}

#[test]
fn destination_rule_policies_and_warnings() {
    let dr = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
  - name: v3
    labels: {version: v3}
    trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}
";
    let mut f = files(&[]);
    f.retain(|(n, _)| n != "reviews-dr.yaml");
    f.insert(0, ("reviews-dr.yaml".into(), dr.into()));
    let s = load_str(&f, "cluster.local").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.cluster(FQDN, 9080, None).unwrap().lb,
        LbPolicy::LeastRequest
    );
    assert_eq!(
        s.cluster(FQDN, 9080, Some("v1")).unwrap().lb,
        LbPolicy::RoundRobin
    );
    assert_eq!(
        s.cluster(FQDN, 9080, Some("v2")).unwrap().lb,
        LbPolicy::Passthrough
    );
    assert!(s.cluster(FQDN, 9080, Some("v2")).unwrap().passthrough());
    assert_eq!(
        s.cluster(FQDN, 9080, Some("v3")).unwrap().lb,
        LbPolicy::LeastRequest
    );
    // the top-level connectionPool applies to every subset (subsets set only loadBalancer)
    for subset in [None, Some("v1"), Some("v2"), Some("v3")] {
        let c = s.cluster(FQDN, 9080, subset).unwrap();
        assert_eq!(c.limits().max_connections, 10, "{subset:?}");
    }
    // maxConnections is enforced on the tunnels: no warning.
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
}

#[test]
fn unknown_kinds_and_empty_docs_skipped() {
    let other = "---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 9080}]}\n---\n# only a comment\n";
    let s = load(&[("k8s.yaml", other)]);
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.starts_with("k8s.yaml doc 1 Service default/reviews")
                || w.starts_with("k8s.yaml doc 1 Service")),
        "{:?}",
        s.warnings()
    );
    assert_eq!(s.services().count(), 1);
}

#[test]
fn inline_endpoints_target_port_and_tcp() {
    let se = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: db}
spec:
  hosts: [mongodb]
  addresses: [10.0.0.30]
  ports:
  - {number: 27017, name: tcp-mongo, targetPort: 27018}
  endpoints:
  - {address: 127.0.10.5, labels: {app: mongo}, serviceAccount: mongo}
  - {address: '::1'}
";
    let s = load(&[("mongo.yaml", se)]);
    let c = s
        .cluster("mongodb.db.svc.cluster.local", 27017, None)
        .unwrap();
    assert_eq!(
        &*c.name,
        "inbound-vip|27017|tcp|mongodb.db.svc.cluster.local"
    );
    let t: Vec<String> = c.endpoints.iter().map(|e| e.target().to_string()).collect();
    assert_eq!(t, vec!["127.0.10.5:27018", "[::1]:27018"]);
    assert_eq!(
        &*c.endpoints[1].endpoint.workload.identity,
        "spiffe://cluster.local/ns/db/sa/default"
    );
    assert_eq!(c.lb, LbPolicy::LeastRequest);
    match s.resolve_destination(addr("127.0.10.5:27018")) {
        Some(Destination::Pod { services, .. }) => {
            assert_eq!(services[0].hostname, "mongodb.db.svc.cluster.local")
        }
        other => panic!("{other:?}"),
    }
    match s.resolve_destination(addr("10.0.0.30:27017")) {
        Some(Destination::Service { port, .. }) => assert_eq!(port.protocol, Protocol::Tcp),
        other => panic!("{other:?}"),
    }
}
