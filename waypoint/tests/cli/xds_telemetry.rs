//! `waypoint run --xds` takes access logs and tracing from istiod's connection managers: the
//! bookinfo fixture's HCMs given the `access_log` (a file logger with istiod's CEL filter) and
//! `tracing` (OpenTelemetry over gRPC, 100 %) that istiod 1.27 writes for a Telemetry resource
//! (`pilot/pkg/model/telemetry_logging.go`, `pilot/pkg/networking/core/tracing.go`; the shapes
//! of routing/tests/fixtures/xds/telemetry_1_27.json). Spans reach an in-test OTLP collector;
//! the filter decides the lines; a push without `tracing` stops the spans.

use std::time::Duration;

use crate::common::collector::{Collector, CollectorKind};
use crate::common::*;
use crate::xds::{bookinfo, objects_mut, serve, tunnel, wait_ack};
use serde_json::{json, Value};
use waypoint_tests::{sim, xds_run_command, Net};

const TOKEN: &str = "istio-token-for-the-telemetry-test";
const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Every connection manager of `doc` gets istiod's file logger with a CEL filter and, with
/// `collector`, its OpenTelemetry tracer to `outbound|<port>||127.0.0.1`.
fn with_telemetry(mut doc: Value, collector: Option<std::net::SocketAddr>) -> Value {
    let log = json!({
        "name": "envoy.access_loggers.file",
        "filter": {"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": "response.code >= 400 || request.headers['x-debug'] == 'on'"
            }
        }},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/stdout",
            "log_format": {"text_format_source": {"inline_string": "xds-log %RESPONSE_CODE% %REQ(X-REQUEST-ID)%\n"}}
        }
    });
    let tracing = collector.map(|c| {
        json!({
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {
                        "envoy_grpc": {
                            "cluster_name": format!("outbound|{}||127.0.0.1", c.port()),
                            "authority": "127.0.0.1"
                        },
                        "timeout": "5s"
                    },
                    "service_name": "waypoint.default"
                }
            },
            "random_sampling": {"value": 100.0},
            "custom_tags": [{"tag": "team", "literal": {"value": "reviews-team"}}]
        })
    });
    let mut n = 0;
    objects_mut(&mut doc, &mut |o| {
        if o.get("@type").and_then(Value::as_str) == Some(HCM) {
            o.insert("access_log".into(), json!([log.clone()]));
            match &tracing {
                Some(t) => o.insert("tracing".into(), t.clone()),
                None => o.remove("tracing"),
            };
            n += 1;
        }
    });
    assert!(n > 0, "the fixture has connection managers");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_access_log_filter_and_tracer_apply() {
    let grpc = Collector::start(CollectorKind::OtlpGrpc).await;
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds telemetry test mesh", "xds-telemetry", TOKEN).await;
    let _v1 = Pod::start_as(&net, &ca, 7, "reviews-v1", "bookinfo-reviews").await;
    let _v2 = Pod::start_as(&net, &ca, 8, "reviews-v2", "bookinfo-reviews").await;
    let _v3 = Pod::start_as(&net, &ca, 9, "reviews-v3", "bookinfo-reviews").await;
    let versions = serve(&server, &with_telemetry(bookinfo(&net), Some(grpc.addr)));
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-telemetry-x");
    let (mut child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let stdout = collect(child.0.stdout.take().unwrap());
    let _logs = collect(stderr);
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &versions).await;

    let mut send = tunnel(&ca, addrs["hbone"], "10.96.0.12:9080").await;
    let get = |id: &'static str, debug: bool| {
        let headers: Vec<(&str, &str)> = if debug {
            vec![("x-request-id", id), ("x-debug", "on")]
        } else {
            vec![("x-request-id", id)]
        };
        headers
    };
    for (id, debug) in [("quiet", false), ("loud", true)] {
        let (parts, _) = sim::get(&mut send, "reviews:9080", "/reviews/1", &get(id, debug))
            .await
            .unwrap();
        assert_eq!(parts.status, 200);
    }
    let spans = grpc.spans(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    for s in &spans {
        assert_eq!(s.name, "reviews.default.svc.cluster.local:9080/*");
        assert_eq!(s.service_name, "waypoint.default");
        assert_eq!(s.attributes["team"], "reviews-team");
        assert_eq!(s.parent_span_id, None);
    }
    let ids: Vec<&str> = spans
        .iter()
        .map(|s| s.attributes["guid:x-request-id"].as_str())
        .collect();
    assert_eq!(ids, ["quiet", "loud"]);
    // istiod's filter: only the x-debug request is logged, in istiod's format.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<String> = stdout
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("xds-log"))
            .cloned()
            .collect();
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines, ["xds-log 200 loud"], "{:?}", stdout.lock().unwrap());

    // A push without `tracing`: no more spans (the tracer is gone once the push is ACKed).
    let versions = serve(&server, &with_telemetry(bookinfo(&net), None));
    wait_ack(&server, &versions).await;
    let (parts, _) = sim::get(&mut send, "reviews:9080", "/reviews/1", &get("after", true))
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stdout
        .lock()
        .unwrap()
        .iter()
        .any(|l| l == "xds-log 200 after")
    {
        assert!(std::time::Instant::now() < deadline, "no line for `after`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its span would have been queued before its line was written.
    assert_eq!(grpc.spans(3, Duration::from_secs(1)).await.len(), 2);
    sigterm_and_wait(child).await;
}
