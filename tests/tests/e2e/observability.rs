//! What operators see: Istio's standard metrics after known traffic, the proxy's health metrics,
//! the canary split audit, trace headers passing through and the access log's templates.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::telemetry::access_log::Format;
use waypoint_tests::{
    http_request, reviews_yaml, scrape, service_yaml, sim, weighted_routes, workload_yaml, Mesh,
};

const SOURCE: &[(&str, &str)] = &[
    ("reporter", "waypoint"),
    ("source_workload", "productpage-v1"),
    ("source_workload_namespace", "default"),
    (
        "source_principal",
        "spiffe://cluster.local/ns/default/sa/productpage",
    ),
    ("source_app", "productpage"),
    ("source_version", "v1"),
    ("source_cluster", "unknown"),
    ("source_canonical_service", "productpage"),
    ("source_canonical_revision", "v1"),
    ("connection_security_policy", "mutual_tls"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    SOURCE
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_metrics_after_known_traffic() {
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings")
        + &service_yaml("details", "10.0.0.21", 9080, "http")
        + &workload_yaml("details-v1", "@2", "details", "v1", "bookinfo-details")
        + &service_yaml("mongodb", "10.0.0.30", 27017, "tcp-mongo")
        + &workload_yaml("mongodb-v1", "@3", "mongodb", "v1", "mongodb");
    let mesh = Mesh::start_with(&yaml, |net, opts| {
        opts.down.insert(net.ip(2));
    })
    .await;
    let admin = mesh.admin().await;
    let client = mesh.client();

    // 3 × 200 from ratings.
    let mut send = client
        .http1("10.0.0.20:9080".parse().unwrap())
        .await
        .unwrap();
    let mut response_bytes = 0;
    for i in 0..3 {
        let (parts, body) = sim::get(&mut send, "ratings:9080", &format!("/ratings/{i}"), &[])
            .await
            .unwrap();
        assert_eq!(parts.status, 200);
        // Envoy's wire bytes (istio/proxy `istio_stats.cc`): the headers as `HeaderMap::byteSize`
        // counts them (`:status` and its digits, each name and value) and the body.
        let headers: usize = parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        response_bytes += ":status".len() + 3 + headers + body.len();
    }
    // 1 × 503: the only details pod is down.
    let mut send = client
        .http1("10.0.0.21:9080".parse().unwrap())
        .await
        .unwrap();
    let (parts, _) = sim::get(&mut send, "details:9080", "/details/0", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 503);
    // 1 TCP connection to mongodb.
    let mut tcp = client
        .tunnel("10.0.0.30:27017".parse().unwrap())
        .await
        .unwrap();
    let payload = b"\x01\x02mongo-bytes";
    tcp.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tcp.read_exact(&mut back).await.unwrap();
    tcp.shutdown().await.unwrap();
    let _ = tcp.read_to_end(&mut Vec::new()).await;
    let log = mesh.wait_for_log_lines(5).await;
    let failed_flags = log
        .iter()
        .find(|l| l["response_code"] == 503)
        .map(|l| l["response_flags"].as_str().unwrap().to_string())
        .expect("a 503 line");
    assert!(failed_flags.contains("UF"), "{failed_flags}");

    let s = scrape(admin.addr).await;
    let ok = with(&[
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "default"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings",
        ),
        ("destination_app", "ratings"),
        ("destination_version", "v1"),
        ("destination_service", "ratings.default.svc.cluster.local"),
        ("destination_service_name", "ratings"),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "Kubernetes"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
    ]);
    assert_eq!(s.value("istio_requests", &ok), 3.0);
    let (count, _, buckets) = s.histogram("istio_request_duration_milliseconds", &ok);
    assert_eq!(count, 3);
    assert_eq!(buckets, 20, "Istio's 19 bounds plus +Inf");
    assert_eq!(
        s.histogram("istio_response_bytes", &ok),
        (3, response_bytes as f64, 20)
    );
    // No body: the request's headers only, the pseudo headers included (at least `:method GET`,
    // `:path /ratings/N`, `:authority ratings:9080`, `:scheme http`), the same for the three.
    let (count, request_bytes, _) = s.histogram("istio_request_bytes", &ok);
    assert_eq!(count, 3);
    let least =
        (":method".len() + 3 + ":path".len() + 10 + ":authority".len() + 12 + ":scheme".len() + 4)
            as f64;
    assert!(
        request_bytes >= 3.0 * least && request_bytes % 3.0 == 0.0,
        "{request_bytes}"
    );

    let failed = with(&[
        ("destination_service", "details.default.svc.cluster.local"),
        ("destination_service_name", "details"),
        ("destination_workload", "details-v1"),
        ("response_code", "503"),
        ("response_flags", &failed_flags),
    ]);
    assert_eq!(s.value("istio_requests", &failed), 1.0);
    assert_eq!(
        s.samples("istio_requests", &[]).len(),
        2,
        "one series per outcome"
    );

    let tcp_labels = with(&[
        ("destination_workload", "mongodb-v1"),
        ("destination_service", "mongodb.default.svc.cluster.local"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
    ]);
    assert_eq!(s.value("istio_tcp_connections_opened", &tcp_labels), 1.0);
    assert_eq!(s.value("istio_tcp_connections_closed", &tcp_labels), 1.0);
    assert_eq!(
        s.value("istio_tcp_received_bytes", &tcp_labels),
        payload.len() as f64
    );
    assert_eq!(
        s.value("istio_tcp_sent_bytes", &tcp_labels),
        payload.len() as f64
    );

    // Proxy health: one HBONE connection from the client carrying 3 tunnels.
    let inbound = [("direction", "inbound")];
    assert_eq!(s.value("waypoint_hbone_connections_opened", &inbound), 1.0);
    assert_eq!(s.value("waypoint_hbone_streams_opened", &inbound), 3.0);
    let outbound = [("direction", "outbound")];
    assert_eq!(
        s.value("waypoint_hbone_connections_opened", &outbound),
        2.0,
        "ratings and mongodb nodes (details is down)"
    );
    assert_eq!(s.value("waypoint_ready", &[]), 1.0);
    assert!(s.value("waypoint_certificate_expiry_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(s.value("waypoint_config_info", &[("source", "files")]), 1.0);
    // Cardinality: nothing per request or per path.
    for (family, k, v) in s.labels() {
        assert!(
            !k.contains("path") && !k.contains("request_id") && !v.starts_with("/ratings"),
            "unbounded label {k}={v} on {family}"
        );
    }
}

/// |observed − expected| within 5σ of a binomial(n, p).
fn within_5_sigma(observed: f64, n: f64, p: f64) -> bool {
    (observed - n * p).abs() <= 5.0 * (n * p * (1.0 - p)).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_audit_reports_the_canary() {
    let mesh = Mesh::start(&reviews_yaml(
        "ROUND_ROBIN",
        &weighted_routes(&[("v1", 90), ("v2", 10)]),
    ))
    .await;
    let admin = mesh.admin().await;
    let n = 1000;
    let report = waypoint::commands::demo::drive(
        &mesh.client(),
        "10.0.0.10:9080".parse().unwrap(),
        "reviews:9080",
        n,
        4,
    )
    .await
    .unwrap();
    assert_eq!(report.failures, 0);

    let (status, body) = http_request(admin.addr, "GET", "/splits?format=json").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = json["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{json:#}");
    let route = &routes[0];
    assert_eq!(route["service"], "reviews.default.svc.cluster.local");
    assert_eq!(route["route"], "reviews.0");
    assert_eq!(route["requests"], n);
    assert_eq!(route["requests_in_window"], n);
    let mut seen = BTreeMap::new();
    for d in route["destinations"].as_array().unwrap() {
        let subset = d["subset"].as_str().unwrap().to_string();
        let requests = d["requests"].as_u64().unwrap();
        let configured = d["configured_share"].as_f64().unwrap();
        let observed = d["observed_share"].as_f64().unwrap();
        assert!(within_5_sigma(requests as f64, n as f64, configured), "{d}");
        assert_eq!(observed, requests as f64 / n as f64);
        // The audit counts exactly what the pods served.
        let served = report
            .by_pod
            .get(&format!("reviews-{subset}"))
            .copied()
            .unwrap_or(0);
        assert_eq!(requests, served, "{subset}: {:?}", report.by_pod);
        seen.insert(subset, configured);
    }
    assert_eq!(
        seen,
        BTreeMap::from([("v1".to_string(), 0.9), ("v2".to_string(), 0.1)])
    );

    let (_, table) = http_request(admin.addr, "GET", "/splits").await;
    assert!(
        table.contains("reviews.0") && table.contains("subset=v2"),
        "{table}"
    );

    let s = scrape(admin.addr).await;
    let v2 = [("route_name", "reviews.0"), ("destination_subset", "v2")];
    assert_eq!(
        s.value("waypoint_route_split_requests", &v2),
        report.by_pod["reviews-v2"] as f64
    );
    assert_eq!(s.value("waypoint_route_split_configured_ratio", &v2), 0.1);
    let since_start = [
        ("route_name", "reviews.0"),
        ("destination_subset", "v2"),
        ("window", "since_start"),
    ];
    assert_eq!(
        s.value("waypoint_route_split_observed_ratio", &since_start),
        report.by_pod["reviews-v2"] as f64 / n as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_reach_the_app_unchanged() {
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings");
    let mesh = Mesh::start(&yaml).await;
    let mut send = mesh
        .client()
        .http1("10.0.0.20:9080".parse().unwrap())
        .await
        .unwrap();
    let trace = [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ];
    let (parts, body) = sim::get(&mut send, "ratings:9080", "/ratings/1", &trace)
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
    for (k, v) in trace {
        assert_eq!(echo.headers.get(k).map(String::as_str), Some(v), "{k}");
    }
    // No x-request-id was sent: one is generated, forwarded, and logged.
    let generated = echo.headers.get("x-request-id").expect("generated id");
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["request_id"], generated.as_str());
    // The request is linked to its HBONE tunnel's trace context.
    assert_eq!(
        log[0]["tunnel_traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_access_log_template_renders_live_requests() {
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings")
        // The client pod the harness claims to be, with the client's identity.
        + &workload_yaml("productpage-v1", "10.244.1.5", "productpage", "v1", "productpage");
    let template = "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% \
        [%RESPONSE_FLAGS%] %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% \
        %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_PEER_URI_SAN% %ROUTE_NAME% %REQ(X-TENANT):4% \
        %REQ(X-ABSENT)% %RESP(X-POD)% %REQ(:AUTHORITY)% %UPSTREAM_REQUEST_ATTEMPT_COUNT% 100%%";
    let mesh = Mesh::start_with(&yaml, |_, opts| {
        opts.format = Format::Text;
        opts.access_log_template = Some(template.to_string());
    })
    .await;
    let mut send = mesh
        .client()
        .http1("10.0.0.20:9080".parse().unwrap())
        .await
        .unwrap();
    let (parts, body) = sim::get(
        &mut send,
        "ratings:9080",
        "/ratings/7?q=1",
        &[("x-tenant", "acme-corp")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200);
    for _ in 0..200 {
        if !mesh.bench.access_lines.lock().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let line = mesh.bench.access_lines.lock()[0].clone();
    let ip1 = mesh.net.ip(1);
    let expected = format!(
        "GET /ratings/7?q=1 HTTP/1.1 200 [-] 0 {} {ip1}:9080 \
         inbound-vip|9080|http|ratings.default.svc.cluster.local 10.244.1.5:40280 \
         spiffe://cluster.local/ns/default/sa/productpage default acme - ratings-v1 ratings:9080 1 100%",
        body.len()
    );
    assert_eq!(line, expected);
}
