//! The Telemetry API end to end on files: a `waypoint run` with a meshConfig (`--mesh-config`)
//! naming three span collectors and a Telemetry document. Spans reach in-test OTLP/gRPC,
//! OTLP/HTTP and Zipkin collectors as the child of the caller's span (W3C or B3 headers) and
//! the parent of the upstream's (both formats), with Envoy's tags, the custom tags and the
//! request's timing; the Telemetry's access-log filter decides which lines are written; a
//! changed Telemetry switches the collector without a restart.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::collector::{Collector, CollectorKind, RecordedSpan};
use crate::common::*;
use waypoint::commands::sim;
use waypoint::control::identity::Ca;
use waypoint_tests::{spiffe, Net};

const WAIT: Duration = Duration::from_secs(10);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn mesh(grpc: SocketAddr, http: SocketAddr, zipkin: SocketAddr) -> String {
    format!(
        "accessLogEncoding: JSON
extensionProviders:
- name: otel
  opentelemetry: {{service: 127.0.0.1, port: {}}}
- name: otel-http
  opentelemetry:
    service: 127.0.0.1
    port: {}
    http: {{path: /v1/traces, timeout: 5s}}
- name: zipkin
  zipkin: {{service: 127.0.0.1, port: {}}}
",
        grpc.port(),
        http.port(),
        zipkin.port()
    )
}

fn telemetry(provider: &str, sampling: u32) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {sampling}
    customTags:
      team: {{literal: {{value: payments}}}}
      tenant: {{header: {{name: x-tenant, defaultValue: none}}}}
  accessLogging:
  - providers: [{{name: envoy}}]
    filter:
      expression: \"response.code >= 400 || request.headers['x-debug'] == 'on'\"
"
    )
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn get(send: &mut sim::Http1, id: &str, headers: &[(&str, &str)]) {
    let mut all = vec![("x-request-id", id)];
    all.extend_from_slice(headers);
    let (parts, _) = sim::get(send, "ratings:9080", "/ratings/1", &all)
        .await
        .unwrap();
    assert_eq!(parts.status, 200, "{id}");
}

/// What the app received last: the trace headers the waypoint wrote.
fn upstream_headers(pod: &Pod) -> http::HeaderMap {
    pod.app.last_headers.lock().clone().expect("a request")
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The waypoint's span is the upstream's parent, in both formats.
fn assert_parent_of_upstream(span: &RecordedSpan, upstream: &http::HeaderMap) {
    assert_eq!(
        header(upstream, "traceparent"),
        format!("00-{}-{}-01", span.trace_id, span.span_id)
    );
    assert_eq!(header(upstream, "x-b3-traceid"), span.trace_id);
    assert_eq!(header(upstream, "x-b3-spanid"), span.span_id);
    assert_eq!(header(upstream, "x-b3-sampled"), "1");
    assert_eq!(
        header(upstream, "x-b3-parentspanid"),
        span.parent_span_id.clone().unwrap_or_default()
    );
}

/// Waits for the waypoint's "telemetry config applied" log lines to reach `n`.
async fn applied(logs: &std::sync::Mutex<Vec<String>>, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("telemetry config applied"))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "telemetry not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_each_collector_as_child_of_the_caller_and_parent_of_the_upstream() {
    let grpc = Collector::start(CollectorKind::OtlpGrpc).await;
    let http = Collector::start(CollectorKind::OtlpHttp).await;
    let zipkin = Collector::start(CollectorKind::Zipkin).await;
    let net = Net::new();
    let ca = Ca::new("tracing test mesh").unwrap();
    let config = temp_dir("tracing-config");
    write_ratings_config(&net, &config);
    std::fs::write(config.join("telemetry.yaml"), telemetry("otel", 0)).unwrap();
    let certs = temp_dir("tracing-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mesh_file = certs.join("mesh.yaml");
    std::fs::write(&mesh_file, mesh(grpc.addr, http.addr, zipkin.addr)).unwrap();
    let pod = Pod::start(&net, &ca).await;
    let mut args = cert_args(&certs);
    args.extend(["--mesh-config".into(), mesh_file.into()]);
    let (mut child, addrs, stderr) = spawn_run_with(&config, &args);
    let access = collect(child.0.stdout.take().unwrap());
    let logs = collect(stderr);
    applied(&logs, 1).await;
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    // The waypoint's own view names what applies and where it came from.
    let (_, dump) =
        waypoint_tests::http_request(addrs["admin"], "GET", "/config_dump?format=waypoint").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let t = &dump["config"]["snapshot"]["telemetry"];
    assert_eq!(
        t["sources"][0], "Telemetry istio-system/mesh-default",
        "{}",
        dump["config"]
    );

    assert_eq!(t["tracing"]["provider"], "otel", "{t}");
    assert_eq!(dump["config"]["telemetry_problems"], serde_json::json!([]));
    let mut send = client(&ca, addrs["hbone"]).await;

    // W3C parent, sampled by the caller although the Telemetry samples 0 %.
    let before = now_nanos();
    get(
        &mut send,
        "w3c",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=x"),
            ("x-tenant", "t1"),
        ],
    )
    .await;
    let after = now_nanos();
    let upstream = upstream_headers(&pod);
    let spans = grpc.spans(1, WAIT).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.trace_id, TRACE);
    assert_eq!(span.parent_span_id.as_deref(), Some(PARENT));
    assert_ne!(span.span_id, PARENT);
    assert_parent_of_upstream(span, &upstream);
    assert_eq!(header(&upstream, "tracestate"), "vendor=x");
    assert_eq!(span.name, "ratings.default.svc.cluster.local:9080/*");
    assert_eq!(span.kind, "SERVER");
    assert_eq!(span.service_name, "waypoint.default");
    assert!(
        before <= span.start_unix_nanos
            && span.start_unix_nanos <= span.end_unix_nanos
            && span.end_unix_nanos <= after,
        "{before} {span:?} {after}"
    );
    let a = &span.attributes;
    assert_eq!(a["http.status_code"], "200");
    assert_eq!(a["http.method"], "GET");
    assert_eq!(a["http.url"], "http://ratings:9080/ratings/1");
    assert_eq!(a["guid:x-request-id"], "w3c");
    assert_eq!(
        a["upstream_cluster"],
        "inbound-vip|9080|http|ratings.default.svc.cluster.local"
    );
    assert_eq!(a["upstream_address"], format!("{}:9080", net.ip(1)));
    assert_eq!(a["team"], "payments");
    assert_eq!(a["tenant"], "t1");
    assert!(!span.status_error);

    // No trace headers at 0 %: no span, headers untouched. Then a B3 caller (64-bit trace id),
    // sampled by x-b3-sampled, whose span comes next on the same collector.
    get(&mut send, "unsampled", &[("x-debug", "on")]).await;
    assert_eq!(header(&upstream_headers(&pod), "traceparent"), "");
    get(
        &mut send,
        "b3",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let upstream = upstream_headers(&pod);
    let spans = grpc.spans(2, WAIT).await;
    assert_eq!(
        spans.len(),
        2,
        "the unsampled request made no span: {spans:?}"
    );
    let span = &spans[1];
    assert_eq!(span.trace_id, "0000000000000000a3ce929d0e0e4736");
    assert_eq!(span.parent_span_id.as_deref(), Some("05e3ac9a4f6e3b90"));
    assert_eq!(
        span.attributes["tenant"], "none",
        "the header tag's default"
    );
    assert_parent_of_upstream(span, &upstream);

    // The filter wrote only the x-debug request's line.
    let line = access_line(&access, "ratings:9080").await;
    assert_eq!(line["request_id"], "unsampled", "{line}");
    assert_eq!(
        access.lock().unwrap().len(),
        1,
        "{:?}",
        access.lock().unwrap()
    );

    // The Telemetry switches to Zipkin, then to OTLP/HTTP, at 100 %: no restart.
    for (n, (provider, collector)) in [("zipkin", &zipkin), ("otel-http", &http)]
        .into_iter()
        .enumerate()
    {
        std::fs::write(config.join("telemetry.yaml"), telemetry(provider, 100)).unwrap();
        applied(&logs, n + 2).await;
        get(&mut send, provider, &[]).await;
        let upstream = upstream_headers(&pod);
        let spans = collector.spans(1, WAIT).await;
        assert_eq!(spans.len(), 1, "{provider}: {spans:?}");
        let span = &spans[0];
        assert_eq!(span.parent_span_id, None, "{provider}: a root span");
        assert_eq!(span.service_name, "waypoint.default", "{provider}");
        assert_eq!(span.attributes["guid:x-request-id"], provider);
        assert_parent_of_upstream(span, &upstream);
        assert_eq!(collector.bad_requests(), 0, "{provider}");
    }
    assert_eq!(
        grpc.spans(3, Duration::ZERO).await.len(),
        2,
        "gRPC got no more"
    );
    // Counted: four spans exported (counted once the collector answered, so after it recorded
    // them); the four lines the filter left out (the x-debug one was written).
    let stats = addrs["stats"];
    let counted = |family: &'static str, reason: &'static str| async move {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let v = sample(stats, family, &[("reason", reason)]).await;
            if v >= 4.0 || std::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(counted("waypoint_spans", "exported").await, 4.0);
    assert_eq!(
        counted("waypoint_access_log_lines", "filtered_out").await,
        4.0
    );
    sigterm_and_wait(child).await;
}
