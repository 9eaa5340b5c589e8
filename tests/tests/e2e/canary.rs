//! Routing through the waypoint: weighted splits, round robin, upstream tunnel reuse and the
//! access log line of a known request.

use std::collections::BTreeMap;

use waypoint_tests::{reviews_yaml as reviews, sim, weighted_routes as weighted, Mesh};

const VIP: &str = "10.0.0.10:9080";

/// Send `n` requests over `tunnels` keep-alive tunnels; count responses per pod.
async fn count_by_pod(mesh: &Mesh, n: usize, tunnels: usize) -> BTreeMap<String, u64> {
    let report = waypoint::commands::demo::drive(
        &mesh.client(),
        VIP.parse().unwrap(),
        "reviews:9080",
        n,
        tunnels,
    )
    .await
    .expect("drive");
    assert_eq!(report.failures, 0, "every request must succeed");
    report.by_pod
}

/// |observed - expected| within 5 standard deviations of a binomial(n, p): a correct split fails
/// this with probability < 1e-6.
fn assert_share(counts: &BTreeMap<String, u64>, pod: &str, n: u64, weight: f64) {
    let observed = counts.get(pod).copied().unwrap_or(0) as f64;
    let expected = n as f64 * weight;
    let sd = (n as f64 * weight * (1.0 - weight)).sqrt();
    assert!(
        (observed - expected).abs() <= 5.0 * sd,
        "{pod}: observed {observed}, expected {expected} ± {:.0} (5σ); all: {counts:?}",
        5.0 * sd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_90_10_converges() {
    let mesh = Mesh::start(&reviews("RANDOM", &weighted(&[("v1", 90), ("v2", 10)]))).await;
    let n = 2000;
    let counts = count_by_pod(&mesh, n, 4).await;
    assert_share(&counts, "reviews-v1", n as u64, 0.9);
    assert_share(&counts, "reviews-v2", n as u64, 0.1);
    assert!(
        !counts.contains_key("reviews-v3"),
        "v3 has weight 0 here: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_way_split_50_30_20() {
    let mesh = Mesh::start(&reviews(
        "RANDOM",
        &weighted(&[("v1", 50), ("v2", 30), ("v3", 20)]),
    ))
    .await;
    let n = 2000;
    let counts = count_by_pod(&mesh, n, 4).await;
    assert_share(&counts, "reviews-v1", n as u64, 0.5);
    assert_share(&counts, "reviews-v2", n as u64, 0.3);
    assert_share(&counts, "reviews-v3", n as u64, 0.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exactly_fair_without_virtual_service() {
    // No VirtualService: all endpoints of the service, ROUND_ROBIN from the DestinationRule.
    let mesh = Mesh::start(&reviews("ROUND_ROBIN", "")).await;
    let counts = count_by_pod(&mesh, 300, 1).await;
    for pod in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert_eq!(counts.get(pod), Some(&100), "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_inbound_tunnel_reuses_one_upstream_tunnel() {
    let mesh = Mesh::start(&reviews("RANDOM", &weighted(&[("v1", 100)]))).await;
    let client = mesh.client();
    let mut send = client.http1(VIP.parse().unwrap()).await.unwrap();
    for i in 0..200 {
        let (parts, _) = sim::get(&mut send, "reviews:9080", &format!("/r/{i}"), &[])
            .await
            .unwrap();
        assert_eq!(parts.status, 200);
    }
    assert_eq!(
        mesh.tunnels_opened(),
        1,
        "200 sequential requests must share one upstream tunnel"
    );
    assert_eq!(
        mesh.bench
            .app
            .pool
            .stats
            .returned_late
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every tunnel came back at pingora's reuse test, none through pingora's own pool"
    );
    let app = mesh.app("reviews-v1");
    assert_eq!(
        app.stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "and one TCP connection to the app"
    );
    assert_eq!(
        app.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_of_a_known_request() {
    // The client pod (the harness's `forwarded: for=` address) is a workload of the client's
    // identity, so its address is believed.
    let yaml = reviews("RANDOM", &weighted(&[("v1", 100)]))
        + "---\n"
        + &waypoint_tests::workload_yaml(
            "productpage-v1",
            "10.244.1.5",
            "productpage",
            "v1",
            "productpage",
        );
    let mesh = Mesh::start(&yaml).await;
    let client = mesh.client();
    let mut send = client.http1(VIP.parse().unwrap()).await.unwrap();
    let (parts, body) = sim::get(
        &mut send,
        "reviews:9080",
        "/reviews/7?x=1",
        &[
            ("user-agent", "e2e-agent/1.0"),
            ("x-request-id", "req-123"),
            ("x-forwarded-for", "192.0.2.7"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200);
    let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echo.headers.get("x-request-id").map(String::as_str),
        Some("req-123"),
        "request id forwarded"
    );
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log.len(), 1, "one line per request: {log:?}");
    let l = &log[0];
    let ip1 = mesh.net.ip(1);
    assert!(l["start_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/reviews/7?x=1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["response_code"], 200);
    assert_eq!(l["response_flags"], "-");
    assert_eq!(l["response_code_details"], "via_upstream");
    assert_eq!(
        l["upstream_transport_failure_reason"],
        serde_json::Value::Null
    );
    assert_eq!(l["bytes_received"], 0);
    assert_eq!(l["bytes_sent"], body.len() as u64);
    // Istio's JSON keys: `duration` a number, `upstream_service_time` a header's text.
    let duration = l["duration"].as_u64().unwrap();
    let service_time: u64 = l["upstream_service_time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(service_time <= duration);
    assert_eq!(l["requested_server_name"], serde_json::Value::Null);
    assert_eq!(l["connection_termination_details"], serde_json::Value::Null);
    assert_eq!(l["x_forwarded_for"], "192.0.2.7");
    assert_eq!(l["user_agent"], "e2e-agent/1.0");
    assert_eq!(l["request_id"], "req-123");
    assert_eq!(l["authority"], "reviews:9080");
    assert_eq!(l["upstream_host"], format!("{ip1}:9080"));
    assert_eq!(
        l["upstream_cluster"],
        "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(l["downstream_local_address"], VIP);
    assert_eq!(
        l["downstream_remote_address"], "10.244.1.5:40280",
        "from the forwarded header, verified against the workload's identity"
    );
    assert_eq!(
        l["source_principal"],
        "spiffe://cluster.local/ns/default/sa/productpage"
    );
    assert_eq!(l["route_name"], "reviews.0");

    // Without x-request-id the waypoint generates one: the same in the log and upstream.
    let (_, body) = sim::get(&mut send, "reviews:9080", "/", &[]).await.unwrap();
    let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
    let generated = echo
        .headers
        .get("x-request-id")
        .expect("generated request id")
        .clone();
    assert_eq!(generated.len(), 36, "uuid: {generated}");
    let log = mesh.wait_for_log_lines(2).await;
    assert_eq!(log[1]["request_id"], generated.as_str());
}
