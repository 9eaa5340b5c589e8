//! `tcp` routes: parsing, errors, order across VirtualServices.

use super::*;

const TCP_VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo}
spec:
  hosts: [mongo]
  tcp:
  - match:
    - port: 27017
      sourceNamespace: batch
    route:
    - destination: {host: mongo, port: {number: 27018}}
  - match:
    - destinationSubnets: [10.0.0.30/32]
      port: 27017
    route:
    - destination: {host: mongo}
      weight: 75
    - destination: {host: ratings, port: {number: 9080}}
      weight: 25
    - destination: {host: reviews}
      weight: 0
  - route:
    - destination: {host: mongo}
";

fn load_tcp(extra: &[(&str, &str)]) -> Result<Snapshot, String> {
    let mut f = files(&[("more.yaml", MORE_SERVICES), ("mongo-vs.yaml", TCP_VS)]);
    f.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    load_str(&f, "cluster.local").map_err(|e| e.to_string())
}

#[test]
fn tcp_routes_parse_and_route() {
    let s = load_tcp(&[]).unwrap_or_else(|e| panic!("{e}"));
    let vs = s
        .virtual_services()
        .iter()
        .find(|v| v.name == "mongo")
        .unwrap();
    assert!(vs.http.is_empty());
    assert_eq!(vs.tcp.len(), 3);
    assert_eq!(vs.tcp[0].name, "mongo.tcp.0");
    assert_eq!(
        vs.tcp[1].matches[0].destination_subnets,
        [Cidr::parse("10.0.0.30").unwrap()]
    );
    // zero weights dropped, hosts resolved
    let hosts: Vec<(&str, u32)> = vs.tcp[1]
        .destinations
        .iter()
        .map(|d| (d.host.as_str(), d.weight))
        .collect();
    assert_eq!(
        hosts,
        [
            ("mongo.default.svc.cluster.local", 75),
            ("ratings.default.svc.cluster.local", 25)
        ]
    );
    let svc = s.service_by_host("mongo").unwrap();
    let batch = TcpConnection {
        destination: Some("10.0.0.30".parse().unwrap()),
        source_namespace: Some("batch"),
        source_labels: None,
    };
    assert_eq!(s.tcp_route(svc, 27017, &batch).unwrap().name, "mongo.tcp.0");
    let other = TcpConnection {
        source_namespace: Some("default"),
        ..batch
    };
    assert_eq!(s.tcp_route(svc, 27017, &other).unwrap().name, "mongo.tcp.1");
    let pod = TcpConnection {
        destination: Some("127.0.10.5".parse().unwrap()),
        ..other
    };
    assert_eq!(s.tcp_route(svc, 27017, &pod).unwrap().name, "mongo.tcp.2");
    assert_eq!(s.tcp_route(svc, 27018, &other).unwrap().name, "mongo.tcp.2");
    let r = s.tcp_route(svc, 27018, &other).unwrap();
    assert_eq!(s.tcp_route_virtual_service(svc, r), Some("default/mongo"));
    // a service without tcp routes
    let reviews = s.service_by_host(FQDN).unwrap();
    assert!(s.tcp_route(reviews, 9080, &other).is_none());
    // tcp-only VirtualServices neither warn "no effect" nor claim http routing
    assert!(
        !s.warnings()
            .iter()
            .any(|w| w.contains("mongo-vs.yaml") && w.contains("no effect")),
        "{:?}",
        s.warnings()
    );
    let req = SimpleRequest::new("/");
    assert!(matches!(s.route(svc, 27017, &req), RouteDecision::Default));
    for w in [
        "mongo-vs.yaml doc 0 VirtualService default/mongo: spec.tcp[0].match[0]: istiod never matches tcp blocks with sourceLabels or sourceNamespace at waypoints",
        "spec.tcp[1].match[0].destinationSubnets: istiod ignores destinationSubnets at waypoints",
    ] {
        assert!(s.warnings().iter().any(|x| x.contains(w)), "{w}\n{:?}", s.warnings());
    }
}

#[test]
fn tcp_routes_of_several_virtual_services_in_order() {
    let second = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo-b}
spec:
  hosts: [mongo]
  tcp:
  - match: [{port: 27018}]
    route: [{destination: {host: ratings, port: {number: 9080}}}]
";
    let s = load_tcp(&[("z.yaml", second)]).unwrap_or_else(|e| panic!("{e}"));
    let svc = s.service_by_host("mongo").unwrap();
    let conn = TcpConnection::default();
    // mongo's catch-all tcp[2] comes first (load order)
    assert_eq!(s.tcp_route(svc, 27018, &conn).unwrap().name, "mongo.tcp.2");
    let labels = crate::Labels::default();
    let conn = TcpConnection {
        source_labels: Some(&labels),
        ..conn
    };
    assert_eq!(s.tcp_route(svc, 27017, &conn).unwrap().name, "mongo.tcp.2");
}

#[test]
fn tcp_errors() {
    let cases: &[(&str, &str)] = &[
        ("  - match: [{port: 27017}]\n", "spec.tcp[0].route: TCP route is required"),
        ("  - match: [{destinationSubnets: [10.0.0.0/40]}]\n    route: [{destination: {host: mongo}}]\n", "spec.tcp[0].match[0].destinationSubnets[0]: 10.0.0.0/40 is not a valid CIDR block"),
        ("  - match: [{port: 0}]\n    route: [{destination: {host: mongo}}]\n", "spec.tcp[0].match[0].port: port 0 out of range"),
        ("  - route: [{destination: {host: nowhere}}]\n", "spec.tcp[0].route[0].destination.host: host nowhere.default.svc.cluster.local is not a known service"),
        ("  - route: [{destination: {host: mongo}, weight: 0}, {destination: {host: mongo}, weight: 0}]\n", "spec.tcp[0].route: all weights are zero"),
    ];
    for (tcp, want) in cases {
        let vs = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: mongo}}\nspec:\n  hosts: [mongo]\n  tcp:\n{tcp}");
        let mut f = files(&[("more.yaml", MORE_SERVICES), ("mongo-vs.yaml", &vs)]);
        f.sort_by_key(|(n, _)| n == "mongo-vs.yaml");
        let e = load_str(&f, "cluster.local")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        let want = format!("mongo-vs.yaml doc 0 VirtualService default/mongo: {want}");
        assert!(e.contains(&want), "want: {want}\n  got: {e}");
    }
    // headers on a tcp destination: warned and ignored
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: mongo}\nspec:\n  hosts: [mongo]\n  tcp:\n  - route: [{destination: {host: mongo}, headers: {request: {set: {a: b}}}}]\n";
    let s = load_str(
        &files(&[("more.yaml", MORE_SERVICES), ("mongo-vs.yaml", vs)]),
        "cluster.local",
    )
    .unwrap();
    assert!(s.warnings().iter().any(
        |w| w.contains("spec.tcp[0].route[0].headers: is not supported on tcp routes; ignored")
    ));
}
