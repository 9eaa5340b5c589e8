//! Istio's `http[].match` kinds enforced on live traffic through the waypoint, and `waypoint
//! explain` agreeing with what the live data path does.

use std::path::PathBuf;

use waypoint::commands::explain::{explain, ExplainArgs, Output};
use waypoint_tests::{reviews_yaml, Mesh, TRUST_DOMAIN};

/// Each route is told apart by one kind of condition; the subset it routes to names it.
const ROUTES: &str = "  - name: by-method
    match:
    - method: {exact: POST}
    route:
    - destination: {host: reviews, subset: v2}
  - name: by-query-regex
    match:
    - queryParams:
        id: {regex: '[0-9]+'}
    route:
    - destination: {host: reviews, subset: v3}
  - name: by-header-presence-without-other
    match:
    - headers:
        x-canary: {}
      withoutHeaders:
        x-opt-out: {exact: 'yes'}
    route:
    - destination: {host: reviews, subset: v2}
  - name: by-uri-ignore-case
    match:
    - uri: {prefix: /Beta}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v3}
  - name: by-source-namespace
    match:
    - sourceNamespace: other
    route:
    - destination: {host: reviews, subset: v2}
  - name: rest
    route:
    - destination: {host: reviews, subset: v1}
";

/// (method, path, headers, pod expected to serve it)
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

async fn served_by(mesh: &Mesh, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let (parts, _) = mesh.reviews_request(method, path, headers).await;
    assert_eq!(parts.status, 200, "{method} {path} {headers:?}");
    parts.headers["x-pod"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_match_kind_routes_live_traffic() {
    let mesh = Mesh::start(&reviews_yaml("ROUND_ROBIN", ROUTES)).await;
    let cases: [Case; 7] = [
        ("POST", "/reviews/1", &[], "reviews-v2"),
        ("GET", "/reviews?id=42", &[], "reviews-v3"),
        ("GET", "/reviews?id=42x", &[], "reviews-v1"),
        ("GET", "/reviews/1", &[("x-canary", "")], "reviews-v2"),
        (
            "GET",
            "/reviews/1",
            &[("x-canary", "1"), ("x-opt-out", "yes")],
            "reviews-v1",
        ),
        ("GET", "/BETA/page", &[], "reviews-v3"),
        ("GET", "/reviews/1", &[], "reviews-v1"),
    ];
    for (method, path, headers, pod) in cases {
        assert_eq!(
            served_by(&mesh, method, path, headers).await,
            pod,
            "{method} {path} {headers:?}"
        );
    }
    // sourceNamespace comes from the tunnel's SPIFFE id.
    let other = mesh
        .bench
        .client(&waypoint::control::identity::SpiffeId::new(
            TRUST_DOMAIN,
            "other",
            "client",
        ))
        .unwrap();
    let mut send = other
        .http1("10.0.0.10:9080".parse().unwrap())
        .await
        .unwrap();
    let (parts, _) = waypoint::commands::sim::get(&mut send, "reviews:9080", "/reviews/1", &[])
        .await
        .unwrap();
    assert_eq!(
        parts.headers["x-pod"], "reviews-v2",
        "sourceNamespace: other"
    );
    // One line per case plus the sourceNamespace request (logging runs after each response).
    let log = mesh.wait_for_log_lines(cases.len() + 1).await;
    // Lines are written when each request's processing ends, so compare them as a multiset.
    let mut names: Vec<&str> = log
        .iter()
        .map(|l| l["route_name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut expected = [
        "by-method",
        "by-query-regex",
        "rest",
        "by-header-presence-without-other",
        "rest",
        "by-uri-ignore-case",
        "rest",
        "by-source-namespace",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_data_path() {
    let yaml = reviews_yaml("ROUND_ROBIN", ROUTES);
    let mesh = Mesh::start(&yaml).await;
    let snapshot = mesh.bench.app.snapshot.load_full();
    let args = |method: &str, url: &str, headers: &[(&str, &str)]| ExplainArgs {
        config: Some(PathBuf::from("(in-process)")),
        xds_dump: None,
        trust_domain: TRUST_DOMAIN.into(),
        waypoint: Default::default(),
        source: Some(waypoint_tests::spiffe("productpage")),
        source_ip: None,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        output: Output::Json,
        method: method.into(),
        url: url.into(),
    };
    for (method, path, headers) in [
        ("POST", "/reviews/1", &[][..]),
        ("GET", "/reviews?id=7", &[][..]),
        ("GET", "/reviews/1", &[("x-canary", "on")][..]),
        ("GET", "/other", &[][..]),
    ] {
        let e = explain(
            &snapshot,
            &args(method, &format!("http://reviews:9080{path}"), headers),
        )
        .unwrap();
        assert_eq!(e.destinations.len(), 1);
        let subset = e.destinations[0].subset.clone().unwrap();
        let endpoints = e.destinations[0].cluster.as_ref().unwrap()["endpoints"].clone();
        assert_eq!(endpoints.as_array().unwrap().len(), 1);
        let pod = endpoints[0]["name"].as_str().unwrap().to_string();
        assert_eq!(pod, format!("reviews-{subset}"));
        assert_eq!(
            served_by(&mesh, method, path, headers).await,
            pod,
            "{method} {path}"
        );
    }

    // The text form says which route matched and why the earlier ones did not.
    let e = explain(&snapshot, &args("GET", "http://reviews:9080/other", &[])).unwrap();
    let text = e.render_text();
    assert!(
        text.contains("decision: route default/reviews http[5] rest"),
        "{text}"
    );
    assert!(
        text.contains(r#"method exact "POST" does not match "GET""#),
        "{text}"
    );
    assert!(text.contains("endpoint reviews-v1"), "{text}");
    assert!(text.contains("lb ROUND_ROBIN"), "{text}");

    // Bad input names itself.
    let err = explain(&snapshot, &args("GET", "http://nosuch:9080/", &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no service \"nosuch\""), "{err}");
    let err = explain(&snapshot, &args("GET", "http://reviews:1234/", &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no port 1234"), "{err}");
}
