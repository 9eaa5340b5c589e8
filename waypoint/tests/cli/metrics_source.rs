//! A client whose tunnel carries no `baggage` (a sidecar or a gateway opens HBONE without it) is
//! still named in the `source_*` labels: the waypoint takes the config's workload at the
//! client's address when it carries the certificate's identity, as Istio's waypoint finds its
//! peer by address.

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{spiffe, workload_yaml, Net};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_baggage_is_named_by_its_address() {
    let net = Net::new();
    let ca = Ca::new("metrics source test mesh").unwrap();
    let config = temp_dir("metrics-source-config");
    write_ratings_config(&net, &config);
    // The test's client connects from 127.0.0.1 with productpage's certificate.
    std::fs::write(
        config.join("productpage.yaml"),
        workload_yaml(
            "productpage-v1",
            "127.0.0.1",
            "productpage",
            "v1",
            "productpage",
        ),
    )
    .unwrap();
    let certs = temp_dir("metrics-source-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let _ratings = Pod::start(&net, &ca).await;
    let (child, addrs, stderr) = spawn_run(&config, &certs);
    let _logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;

    // A bare CONNECT: no baggage, no forwarded.
    let h2 = hbone_connection(&ca, addrs["hbone"], &spiffe("waypoint"), 65_535).await;
    let (response, mut send) = open_tunnel(&h2, "10.0.0.20:9080", None).await;
    assert_eq!(response.status(), 200);
    send.send_data(
        bytes::Bytes::from_static(
            b"GET /ratings/1 HTTP/1.1\r\nhost: ratings:9080\r\nconnection: close\r\n\r\n",
        ),
        false,
    )
    .unwrap();
    let body = h2_body(response.into_body()).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");

    let labels = [
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_workload_namespace", "default"),
        ("destination_workload", "ratings-v1"),
    ];
    // Recorded as the request ends, which may be just after the client read the response.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sample(addrs["stats"], "istio_requests", &labels).await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus")
                .await
                .1
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sigterm_and_wait(child).await;
}

/// The tunnel's bytes until the app closes it, as text.
async fn h2_body(mut body: h2::RecvStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}
