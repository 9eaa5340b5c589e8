//! The collectors decode what the real exporters send.
use super::*;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SERVICE: &str = "ratings.bookinfo";
const WAIT: Duration = Duration::from_secs(10);

fn provider_with(
    build: impl FnOnce(
        opentelemetry_sdk::trace::TracerProviderBuilder,
    ) -> opentelemetry_sdk::trace::TracerProviderBuilder,
) -> SdkTracerProvider {
    let resource = Resource::builder_empty().with_service_name(SERVICE).build();
    build(SdkTracerProvider::builder().with_resource(resource)).build()
}

/// Ends one SERVER span (child of the remote TRACE/PARENT, an attribute, status ERROR) on
/// `provider`; returns its span id. Blocking: a simple processor exports inside `end`.
fn emit(provider: &SdkTracerProvider) -> String {
    let tracer = provider.tracer("collector-test");
    let parent = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex(PARENT).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = Context::new().with_remote_span_context(parent);
    let mut span = tracer
        .span_builder("ratings.bookinfo.svc.cluster.local:9080/*")
        .with_kind(SpanKind::Server)
        .with_attributes([
            opentelemetry::KeyValue::new("http.method", "GET"),
            opentelemetry::KeyValue::new("http.status_code", 503i64),
        ])
        .start_with_context(&tracer, &cx);
    span.set_status(Status::error("upstream reset"));
    let id = span.span_context().span_id().to_string();
    span.end();
    id
}

fn assert_span(span: &RecordedSpan, span_id: &str, zipkin: bool) {
    assert_eq!(span.trace_id, TRACE);
    assert_eq!(span.span_id, span_id);
    assert_eq!(span.parent_span_id.as_deref(), Some(PARENT));
    assert_eq!(span.name, "ratings.bookinfo.svc.cluster.local:9080/*");
    assert_eq!(span.kind, "SERVER");
    assert_eq!(span.attributes["http.method"], "GET");
    assert_eq!(span.attributes["http.status_code"], "503");
    assert!(span.status_error, "{span:?}");
    assert!(span.start_unix_nanos > 0 && span.end_unix_nanos >= span.start_unix_nanos);
    if zipkin {
        // opentelemetry-zipkin 0.33 sends no serviceName at all: its localEndpoint carries
        // only the optional `with_service_address`, and it ignores the provider's resource.
        assert_eq!(span.service_name, "", "{span:?}");
        assert_eq!(span.attributes["error"], "upstream reset");
        assert_eq!(span.attributes["otel.status_code"], "ERROR");
        assert_eq!(span.attributes["otel.library.name"], "collector-test");
    } else {
        assert_eq!(span.service_name, SERVICE);
        assert_eq!(span.resource["service.name"], SERVICE);
    }
}

/// Emits one span through `provider` (its exporter's blocking calls off the runtime's
/// workers), checks the collector recorded it alone, and returns the export request.
async fn one_span_through(collector: &Collector, provider: SdkTracerProvider) -> RecordedRequest {
    let span_id = tokio::task::spawn_blocking(move || {
        let id = emit(&provider);
        provider.force_flush().unwrap();
        provider.shutdown().unwrap();
        id
    })
    .await
    .unwrap();
    let spans = collector.spans(1, WAIT).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_span(&spans[0], &span_id, false);
    assert_eq!((collector.requests(), collector.bad_requests()), (1, 0));
    collector.request_log().remove(0)
}

/// The SDK's default batch processor on its own thread drives the tonic exporter: the
/// channel's worker was spawned on this runtime when the exporter was built, and the export
/// future only needs that worker. `force_flush` blocks, so it runs off the runtime's workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_collector_decodes_the_tonic_exporter() {
    let collector = Collector::start(CollectorKind::OtlpGrpc).await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        .build()
        .unwrap();
    let provider = provider_with(|b| b.with_batch_exporter(exporter));
    let request = &one_span_through(&collector, provider).await;
    assert_eq!(request.path, OTLP_GRPC_PATH);
    assert_eq!(request.content_type, "application/grpc");
    assert_eq!(request.spans, 1);
    assert!(request.headers["user-agent"].starts_with("OTel-OTLP-Exporter-Rust/"));
}

/// reqwest's async client needs a tokio context: a simple processor exports inside
/// `span.end()` (futures' `block_on`), so the span ends on a blocking thread of the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_collector_decodes_the_http_exporter() {
    let collector = Collector::start(CollectorKind::OtlpHttp).await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(collector.endpoint())
        .build()
        .unwrap();
    let provider = provider_with(|b| b.with_simple_exporter(exporter));
    let request = &one_span_through(&collector, provider).await;
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", OTLP_HTTP_PATH)
    );
    assert_eq!(request.content_type, "application/x-protobuf");
    assert_eq!(request.status, 200);
}

/// The OTLP/HTTP exporter takes a programmatic endpoint verbatim (no `/v1/traces` added):
/// `http://addr` posts to `/`, which the collector answers 404 and counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_endpoint_without_the_path_is_a_counted_bad_request() {
    let collector = Collector::start(CollectorKind::OtlpHttp).await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("http://{}", collector.addr))
        .build()
        .unwrap();
    let provider = provider_with(|b| b.with_simple_exporter(exporter));
    tokio::task::spawn_blocking(move || {
        emit(&provider);
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();

    assert!(collector
        .spans(1, Duration::from_millis(200))
        .await
        .is_empty());
    // 404 is not retryable: one request.
    assert_eq!((collector.requests(), collector.bad_requests()), (1, 1));
    let request = &collector.request_log()[0];
    assert_eq!((request.path.as_str(), request.status), ("/", 404));
}

/// POST `body` to `path` on `addr` with `content_type`; returns the status.
async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &'static str) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    sender
        .send_request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Zipkin clients with 64-bit trace ids (B3 single-header propagation from old tracers),
/// a root span, a serviceName, and requests the collector refuses.
#[tokio::test]
async fn zipkin_collector_pads_64_bit_ids_and_rejects_bad_requests() {
    let collector = Collector::start(CollectorKind::Zipkin).await;
    let body = r#"[{"traceId":"A3CE929D0E0E4736","id":"00f067aa0ba902b7","kind":"CLIENT",
        "name":"get","timestamp":1000,"duration":5,"localEndpoint":{"serviceName":"front"},
        "tags":{"http.path":"/x"}}]"#;
    assert_eq!(
        post(collector.addr, ZIPKIN_PATH, "application/json", body).await,
        202
    );
    assert_eq!(
        post(collector.addr, "/api/v1/spans", "application/json", body).await,
        404
    );
    assert_eq!(
        post(collector.addr, ZIPKIN_PATH, "application/x-thrift", body).await,
        415
    );
    assert_eq!(
        post(collector.addr, ZIPKIN_PATH, "application/json", "{").await,
        400
    );

    let spans = collector.spans(1, WAIT).await;
    assert_eq!(
        spans,
        [RecordedSpan {
            trace_id: "0000000000000000a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            parent_span_id: None,
            name: "get".into(),
            kind: "CLIENT".into(),
            start_unix_nanos: 1_000_000,
            end_unix_nanos: 1_005_000,
            attributes: [("http.path".to_string(), "/x".to_string())].into(),
            service_name: "front".into(),
            resource: BTreeMap::new(),
            status_error: false,
        }]
    );
    assert_eq!((collector.requests(), collector.bad_requests()), (4, 3));
}
