//! What a client can claim and what the waypoint believes: ztunnel's `forwarded: for=` only for
//! the identity of the workload at that address, no client-written identity or Envoy-control
//! headers reach the app, a request without Host is refused, and a pod-addressed request goes to
//! that pod whatever its Host.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::commands::explain::{explain, ExplainArgs, Output};
use waypoint_tests::{
    reviews_yaml, scrape, service_yaml, spiffe, workload_yaml, Mesh, TRUST_DOMAIN,
};

/// reviews (v1..v3 at @1..@3, service account `bookinfo-reviews`): requests from a workload
/// labelled app=reviews go to v2, the rest to v1. ratings (@4) admits only the reviews-v1 pod's
/// address.
fn yaml() -> String {
    let mut y = reviews_yaml(
        "ROUND_ROBIN",
        "  - name: from-reviews
    match:
    - sourceLabels: {app: reviews}
    route:
    - destination: {host: reviews, subset: v2}
  - name: rest
    route:
    - destination: {host: reviews, subset: v1}
",
    );
    y += "---\n";
    y += &service_yaml("ratings", "10.0.0.11", 9080, "http");
    y += &workload_yaml("ratings-v1", "@4", "ratings", "v1", "bookinfo-ratings");
    y += "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-reviews-v1, namespace: default}
spec:
  targetRefs: [{kind: Service, group: \"\", name: ratings}]
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: [\"@1/32\"]}}]
---
";
    // details (@5) refuses the reviews-v1 pod's address.
    y += &service_yaml("details", "10.0.0.12", 9080, "http");
    y += &workload_yaml("details-v1", "@5", "details", "v1", "bookinfo-details");
    y += "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-reviews-v1, namespace: default}
spec:
  targetRefs: [{kind: Service, group: \"\", name: details}]
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [\"@1/32\"]}}]
---
";
    y
}

/// One GET through a tunnel opened with `sa`'s certificate, claiming `claim` in `forwarded`.
async fn get_as(
    mesh: &Mesh,
    sa: &str,
    claim: SocketAddr,
    vip: &str,
    host: &str,
) -> http::response::Parts {
    let mut client = mesh.bench.client(&spiffe(sa)).expect("client cert");
    client.source = claim;
    let mut send = client.http1(vip.parse().unwrap()).await.expect("tunnel");
    let (parts, _) = waypoint::commands::sim::get(&mut send, host, "/", &[])
        .await
        .expect("response");
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_address_counts_only_for_the_identity_of_its_workload() {
    let mesh = Mesh::start(&yaml()).await;
    let reviews_v1 = SocketAddr::new(mesh.net.ip(1), 40000);

    // `sleep` claims the reviews-v1 pod's address: no reviews labels, no ALLOW on its IP.
    let forged = get_as(&mesh, "sleep", reviews_v1, "10.0.0.10:9080", "reviews:9080").await;
    assert_eq!(forged.status, 200);
    assert_eq!(
        forged.headers["x-pod"], "reviews-v1",
        "sourceLabels not matched"
    );
    let forged = get_as(&mesh, "sleep", reviews_v1, "10.0.0.11:9080", "ratings:9080").await;
    assert_eq!(
        forged.status, 403,
        "ipBlocks ALLOW not satisfied by a forged address"
    );

    // The reviews identity at its own pod's address is believed.
    let honest = get_as(
        &mesh,
        "bookinfo-reviews",
        reviews_v1,
        "10.0.0.10:9080",
        "reviews:9080",
    )
    .await;
    assert_eq!(
        honest.headers["x-pod"], "reviews-v2",
        "sourceLabels app=reviews"
    );
    let honest = get_as(
        &mesh,
        "bookinfo-reviews",
        reviews_v1,
        "10.0.0.11:9080",
        "ratings:9080",
    )
    .await;
    assert_eq!(honest.status, 200, "ipBlocks ALLOW on the verified address");

    // A DENY on the claimed address still denies (the claim may be true); a claim elsewhere
    // does not.
    let denied = get_as(&mesh, "sleep", reviews_v1, "10.0.0.12:9080", "details:9080").await;
    assert_eq!(
        denied.status, 403,
        "DENY ipBlocks matches the claimed address"
    );
    let elsewhere = SocketAddr::new(mesh.net.ip(9), 40000);
    let passed = get_as(&mesh, "sleep", elsewhere, "10.0.0.12:9080", "details:9080").await;
    assert_eq!(passed.status, 200);

    let log = mesh.wait_for_log_lines(6).await;
    let by_principal = |sa: &str| -> Vec<&serde_json::Value> {
        log.iter()
            .filter(|l| l["source_principal"] == spiffe(sa).to_string())
            .collect()
    };
    for l in by_principal("sleep") {
        // The HBONE peer's own address, the claim beside it.
        let remote: SocketAddr = l["downstream_remote_address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            remote.ip().is_loopback() && remote.ip() != mesh.net.ip(1),
            "{l}"
        );
        let claimed = l["downstream_claimed_address"].as_str().unwrap();
        assert!(
            claimed == reviews_v1.to_string() || claimed == elsewhere.to_string(),
            "{l}"
        );
    }
    for l in by_principal("bookinfo-reviews") {
        assert_eq!(l["downstream_remote_address"], reviews_v1.to_string());
        assert!(l.get("downstream_claimed_address").is_none(), "{l}");
    }
    assert_eq!(by_principal("sleep").len(), 4);
    assert_eq!(by_principal("bookinfo-reviews").len(), 2);

    let admin = mesh.admin().await;
    let m = scrape(admin.addr).await;
    let unverified = |reason: &str| m.value("waypoint_source_unverified", &[("reason", reason)]);
    assert_eq!(unverified("identity_mismatch"), 3.0);
    assert_eq!(unverified("unknown_workload"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_written_identity_and_envoy_control_headers_do_not_reach_the_app() {
    let mesh = Mesh::start(&reviews_yaml("ROUND_ROBIN", "")).await;
    let (parts, _) = mesh
        .reviews_request(
            "GET",
            "/",
            &[
                (
                    "x-forwarded-client-cert",
                    "By=spiffe://evil;URI=spiffe://evil",
                ),
                ("x-envoy-foo", "bar"),
                ("x-envoy-internal", "true"),
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
            ],
        )
        .await;
    assert_eq!(parts.status, 200);
    let pod = parts.headers["x-pod"].to_str().unwrap().to_string();
    let seen = mesh
        .app(&pod)
        .last_headers
        .lock()
        .clone()
        .expect("request seen");
    // What Envoy's connection manager forwards for a waypoint (XFCC sanitized, the x-envoy
    // headers that steer Envoy removed, others passed).
    assert!(seen.get("x-forwarded-client-cert").is_none(), "{seen:?}");
    assert!(seen.get("x-envoy-internal").is_none(), "{seen:?}");
    assert!(seen.get("x-envoy-retry-on").is_none(), "{seen:?}");
    assert!(
        seen.get("x-envoy-upstream-rq-timeout-ms").is_none(),
        "{seen:?}"
    );
    assert_eq!(seen["x-envoy-foo"], "bar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_is_refused() {
    let mesh = Mesh::start(&reviews_yaml("ROUND_ROBIN", "")).await;
    let mut tunnel = mesh
        .client()
        .tunnel("10.0.0.10:9080".parse().unwrap())
        .await
        .expect("tunnel");
    tunnel
        .write_all(b"GET /reviews/1 HTTP/1.1\r\nuser-agent: no-host\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["response_code_details"], "missing_host_header");
    let served: u64 = ["reviews-v1", "reviews-v2", "reviews-v3"]
        .iter()
        .map(|p| {
            mesh.app(p)
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(served, 0, "no app saw the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_addressed_request_goes_to_that_pod_whatever_its_host() {
    // The VirtualService sends reviews traffic to v2 only.
    let mesh = Mesh::start(&reviews_yaml(
        "ROUND_ROBIN",
        "  - route:\n    - destination: {host: reviews, subset: v2}\n",
    ))
    .await;
    let mut send = mesh
        .client()
        .http1(SocketAddr::new(mesh.net.ip(1), 9080))
        .await
        .expect("tunnel to the reviews-v1 pod");
    for _ in 0..5 {
        let (parts, _) = waypoint::commands::sim::get(&mut send, "reviews:9080", "/", &[])
            .await
            .unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers["x-pod"], "reviews-v1",
            "not re-routed by Host"
        );
    }
    let log = mesh.wait_for_log_lines(5).await;
    let cluster = format!("inbound-pod|9080||{}", mesh.net.ip(1));
    assert_eq!(log[0]["upstream_cluster"], cluster);
    // explain agrees: no route applies, the addressed pod is the destination.
    let snapshot = mesh.bench.app.snapshot.load_full();
    let args = ExplainArgs {
        config: Some(PathBuf::from("(in-process)")),
        xds_dump: None,
        trust_domain: TRUST_DOMAIN.into(),
        waypoint: Default::default(),
        source: Some(spiffe("productpage")),
        source_ip: None,
        headers: vec![("host".into(), "reviews:9080".into())],
        output: Output::Json,
        method: "GET".into(),
        url: format!("http://{}:9080/", mesh.net.ip(1)),
    };
    let e = explain(&snapshot, &args).unwrap();
    assert_eq!(e.destinations.len(), 1);
    let c = e.destinations[0].cluster.as_ref().unwrap();
    assert_eq!(c["name"], cluster);
    assert_eq!(c["endpoints"][0]["name"], "reviews-v1");
    assert!(
        e.render_text().contains("endpoint reviews-v1"),
        "{}",
        e.render_text()
    );
}
