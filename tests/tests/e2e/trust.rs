//! What a client can claim and what the waypoint believes: ztunnel's `forwarded: for=` only for
//! the identity of the workload at that address.

use std::net::SocketAddr;

use waypoint_tests::{reviews_yaml, scrape, service_yaml, spiffe, workload_yaml, Mesh};

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
    let (parts, _) = waypoint::sim::get(&mut send, host, "/", &[])
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

    let log = mesh.wait_for_log_lines(4).await;
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
        assert_eq!(l["downstream_claimed_address"], reviews_v1.to_string());
    }
    for l in by_principal("bookinfo-reviews") {
        assert_eq!(l["downstream_remote_address"], reviews_v1.to_string());
        assert!(l.get("downstream_claimed_address").is_none(), "{l}");
    }
    assert_eq!(by_principal("sleep").len(), 2);
    assert_eq!(by_principal("bookinfo-reviews").len(), 2);

    let admin = mesh.admin().await;
    let m = scrape(admin.addr).await;
    let unverified = |reason: &str| m.value("waypoint_source_unverified", &[("reason", reason)]);
    assert_eq!(unverified("identity_mismatch"), 2.0);
}
