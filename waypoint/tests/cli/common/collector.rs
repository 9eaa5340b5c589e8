//! In-test trace collectors: OTLP over gRPC, OTLP over HTTP (protobuf) and Zipkin v2 JSON, each
//! decoding exactly what the `opentelemetry-otlp` / `opentelemetry-zipkin` exporters send into
//! one [`RecordedSpan`] shape, so a tracing test can assert on spans whatever the provider.
//!
//! A collector listens on 127.0.0.1 (an OS-chosen port) from the moment [`Collector::start`]
//! returns, serves every connection on the test's runtime, and stops when dropped. Requests it
//! cannot take (wrong path, method, content type, undecodable body) are answered with an error
//! (404 for a wrong path: what a misconfigured exporter endpoint looks like) and counted in
//! [`Collector::bad_requests`]; their spans are not recorded.
//!
//! Exporter endpoints ([`Collector::endpoint`]): OTLP/gRPC takes `http://host:port` (the gRPC
//! method is the path); OTLP/HTTP's programmatic endpoint is used verbatim, so it must carry
//! `/v1/traces` itself; Zipkin takes the full `http://host:port/api/v2/spans`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use parking_lot::Mutex;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;

/// The gRPC method the OTLP trace exporter calls.
pub const OTLP_GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The OTLP/HTTP trace path (the exporter's default; a programmatic endpoint must include it).
pub const OTLP_HTTP_PATH: &str = "/v1/traces";
/// Zipkin's v2 span intake.
pub const ZIPKIN_PATH: &str = "/api/v2/spans";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorKind {
    /// `opentelemetry.proto.collector.trace.v1.TraceService/Export` over h2c.
    OtlpGrpc,
    /// `POST /v1/traces`, `application/x-protobuf` (HTTP/1.1 or h2c).
    OtlpHttp,
    /// `POST /api/v2/spans`, a JSON array of Zipkin v2 spans.
    Zipkin,
}

/// One span as a collector received it, the same shape for every protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSpan {
    /// Lowercase hex, 32 characters (Zipkin 64-bit ids are left-padded with zeros).
    pub trace_id: String,
    /// Lowercase hex, 16 characters.
    pub span_id: String,
    /// `None` for a root span (OTLP: empty; Zipkin: absent or all zeros).
    pub parent_span_id: Option<String>,
    pub name: String,
    /// "SERVER", "CLIENT", "INTERNAL", ... (OTLP's enum name without `SPAN_KIND_`); Zipkin's
    /// `kind`, or "" when absent (the Zipkin exporter omits it for INTERNAL spans).
    pub kind: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// OTLP span attributes (any value in its string form: arrays as `[1,2]` / `["a","b"]`, as
    /// the OpenTelemetry API prints them) / Zipkin tags (including the exporter's own
    /// `otel.library.name`, `otel.status_code`, `error`).
    pub attributes: BTreeMap<String, String>,
    /// OTLP resource `service.name` / Zipkin `localEndpoint.serviceName` ("" when absent).
    pub service_name: String,
    /// OTLP resource attributes (empty for Zipkin, which has no resource).
    pub resource: BTreeMap<String, String>,
    /// OTLP status code ERROR / Zipkin tag `error` present.
    pub status_error: bool,
}

/// One request as a collector received it (export calls and rejected requests alike).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// `content-type` ("" when absent): `application/grpc`, `application/x-protobuf`,
    /// `application/json`.
    pub content_type: String,
    /// Every request header (lowercase names; gRPC metadata included).
    pub headers: BTreeMap<String, String>,
    /// Whether the collector took it (its spans are recorded) or rejected it.
    pub accepted: bool,
    /// The HTTP status answered (gRPC: 200, with the rejection in `grpc-status`).
    pub status: u16,
    /// Spans it carried (0 for a rejected request).
    pub spans: usize,
}

#[derive(Default)]
struct Recorded {
    spans: Vec<RecordedSpan>,
    requests: Vec<RecordedRequest>,
}

struct State {
    recorded: Mutex<Recorded>,
    /// Spans recorded so far (waiters watch it).
    span_count: watch::Sender<usize>,
}

impl State {
    fn record(&self, request: RecordedRequest, spans: Vec<RecordedSpan>) {
        let count = {
            let mut recorded = self.recorded.lock();
            recorded.requests.push(request);
            recorded.spans.extend(spans);
            recorded.spans.len()
        };
        self.span_count.send_replace(count);
    }
}

/// A running collector; dropping it stops it (listener and connections).
pub struct Collector {
    pub addr: SocketAddr,
    pub kind: CollectorKind,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Binds 127.0.0.1:0 and serves `kind`; the socket is listening when this returns.
    pub async fn start(kind: CollectorKind) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            recorded: Mutex::new(Recorded::default()),
            span_count: watch::channel(0).0,
        });
        let task = tokio::spawn(accept_loop(listener, kind, state.clone()));
        Collector {
            addr,
            kind,
            state,
            task,
        }
    }

    /// The endpoint string the matching exporter wants: `http://addr` (OTLP/gRPC),
    /// `http://addr/v1/traces` (OTLP/HTTP, whose programmatic endpoint is taken verbatim) or
    /// `http://addr/api/v2/spans` (Zipkin).
    pub fn endpoint(&self) -> String {
        match self.kind {
            CollectorKind::OtlpGrpc => format!("http://{}", self.addr),
            CollectorKind::OtlpHttp => format!("http://{}{OTLP_HTTP_PATH}", self.addr),
            CollectorKind::Zipkin => format!("http://{}{ZIPKIN_PATH}", self.addr),
        }
    }

    /// The spans received so far, waiting up to `deadline` for there to be at least `n`; returns
    /// what it has then (fewer than `n` on timeout, possibly more than `n`).
    pub async fn spans(&self, n: usize, deadline: Duration) -> Vec<RecordedSpan> {
        let mut count = self.state.span_count.subscribe();
        let _ = tokio::time::timeout(deadline, count.wait_for(|c| *c >= n)).await;
        self.state.recorded.lock().spans.clone()
    }

    /// Requests received, accepted or not (one per export call of a working exporter).
    pub fn requests(&self) -> usize {
        self.state.recorded.lock().requests.len()
    }

    /// Requests rejected (wrong path, method, content type or body): their spans are lost.
    pub fn bad_requests(&self) -> usize {
        let recorded = self.state.recorded.lock();
        recorded.requests.iter().filter(|r| !r.accepted).count()
    }

    /// Every request received, in arrival order.
    pub fn request_log(&self) -> Vec<RecordedRequest> {
        self.state.recorded.lock().requests.clone()
    }
}

async fn accept_loop(listener: TcpListener, kind: CollectorKind, state: Arc<State>) {
    // Dropped with this task (the collector dropped): aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(serve_connection(tcp, kind, state.clone()));
                }
                Err(e) => {
                    tracing::debug!("test collector accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// HTTP/1.1 or h2c (prior knowledge), as the client speaks: tonic dials h2c, reqwest HTTP/1.1.
async fn serve_connection(tcp: TcpStream, kind: CollectorKind, state: Arc<State>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let io = TokioIo::new(tcp);
    let result = match kind {
        CollectorKind::OtlpGrpc => {
            let grpc = TraceServiceServer::new(Otlp {
                state: state.clone(),
            });
            let service =
                hyper::service::service_fn(move |req| serve_grpc(grpc.clone(), state.clone(), req));
            builder.serve_connection(io, service).await
        }
        CollectorKind::OtlpHttp | CollectorKind::Zipkin => {
            let service =
                hyper::service::service_fn(move |req| serve_http(kind, state.clone(), req));
            builder.serve_connection(io, service).await
        }
    };
    if let Err(e) = result {
        tracing::debug!("test collector connection ended: {e}");
    }
}

fn request_meta(req: &http::Request<Incoming>) -> RecordedRequest {
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        headers,
        accepted: false,
        status: 0,
        spans: 0,
    }
}

/// Index of the request log entry for this call (the export handler fills in its spans).
#[derive(Clone, Copy)]
struct GrpcCall(usize);

async fn serve_grpc(
    mut grpc: TraceServiceServer<Otlp>,
    state: Arc<State>,
    mut req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut meta = request_meta(&req);
    meta.status = 200;
    let index = {
        let mut recorded = state.recorded.lock();
        recorded.requests.push(meta);
        recorded.requests.len() - 1
    };
    req.extensions_mut().insert(GrpcCall(index));
    let response = grpc.call(req).await?;
    // A rejected call (unknown method, undecodable message) is trailers-only: its grpc-status
    // is in the headers. A served one has its status in the trailers.
    let rejected = response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() != b"0");
    let mut recorded = state.recorded.lock();
    let entry = &mut recorded.requests[index];
    entry.status = response.status().as_u16();
    if rejected {
        entry.accepted = false;
    }
    Ok(response)
}

struct Otlp {
    state: Arc<State>,
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let call = request.extensions().get::<GrpcCall>().copied();
        let spans = otlp_spans(request.into_inner());
        let count = {
            let mut recorded = self.state.recorded.lock();
            if let Some(GrpcCall(index)) = call {
                let entry = &mut recorded.requests[index];
                entry.accepted = true;
                entry.spans = spans.len();
            }
            recorded.spans.extend(spans);
            recorded.spans.len()
        };
        self.state.span_count.send_replace(count);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn serve_http(
    kind: CollectorKind,
    state: Arc<State>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let mut meta = request_meta(&req);
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let (path, media_type) = match kind {
        CollectorKind::OtlpHttp => (OTLP_HTTP_PATH, "application/x-protobuf"),
        _ => (ZIPKIN_PATH, "application/json"),
    };
    let encoding = meta
        .headers
        .get("content-encoding")
        .map(String::as_str)
        .unwrap_or("identity");
    let decoded = if meta.path != path {
        Err((404, format!("no route for {}", meta.path)))
    } else if meta.method != "POST" {
        Err((405, format!("{} not allowed", meta.method)))
    } else if !meta.content_type.starts_with(media_type) {
        Err((415, format!("content-type {:?}", meta.content_type)))
    } else if encoding != "identity" {
        Err((415, format!("content-encoding {encoding:?}")))
    } else {
        match body {
            Err(e) => Err((400, format!("body: {e}"))),
            Ok(body) => match kind {
                CollectorKind::OtlpHttp => ExportTraceServiceRequest::decode(body)
                    .map(otlp_spans)
                    .map_err(|e| (400, format!("protobuf: {e}"))),
                _ => zipkin_spans(&body).map_err(|e| (400, e)),
            },
        }
    };
    let (status, response, spans) = match decoded {
        Ok(spans) => {
            let response = match kind {
                CollectorKind::OtlpHttp => http::Response::builder()
                    .status(200)
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(Bytes::from(
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    ))),
                // As Zipkin's own server answers.
                _ => http::Response::builder()
                    .status(202)
                    .body(Full::new(Bytes::new())),
            };
            (
                response.as_ref().unwrap().status().as_u16(),
                response,
                spans,
            )
        }
        Err((status, message)) => {
            let response = http::Response::builder()
                .status(status)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(message)));
            (status, response, Vec::new())
        }
    };
    meta.status = status;
    meta.accepted = status < 300;
    meta.spans = spans.len();
    state.record(meta, spans);
    Ok(response.unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP value in the form the OpenTelemetry API prints it (what Zipkin tags carry).
fn any_value_string(value: Option<&AnyValue>) -> String {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return String::new();
    };
    match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::ArrayValue(array) => {
            let items: Vec<String> = array
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => format!("\"{s}\""),
                    _ => any_value_string(Some(v)),
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        any_value::Value::KvlistValue(list) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, any_value_string(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        any_value::Value::BytesValue(bytes) => hex(bytes),
        other => format!("{other:?}"),
    }
}

fn attribute_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), any_value_string(kv.value.as_ref())))
        .collect()
}

fn otlp_spans(request: ExportTraceServiceRequest) -> Vec<RecordedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attribute_map(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let kind = SpanKind::try_from(span.kind)
                    .map(|k| k.as_str_name().trim_start_matches("SPAN_KIND_"))
                    .unwrap_or("UNSPECIFIED");
                out.push(RecordedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind: kind.to_string(),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: attribute_map(&span.attributes),
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    status_error: span
                        .status
                        .is_some_and(|s| s.code == StatusCode::Error as i32),
                });
            }
        }
    }
    out
}

/// A Zipkin v2 id: lowercase hex, left-padded with zeros to `width`.
fn zipkin_id(value: Option<&serde_json::Value>, width: usize) -> Result<Option<String>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let id = value
        .as_str()
        .ok_or_else(|| format!("id {value} is not a string"))?
        .to_ascii_lowercase();
    if id.is_empty() || id.len() > width || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad id {id:?}"));
    }
    Ok(Some(format!("{id:0>width$}")))
}

fn zipkin_spans(body: &[u8]) -> Result<Vec<RecordedSpan>, String> {
    let spans: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("json: {e}"))?;
    let mut out = Vec::new();
    for span in spans {
        let trace_id = zipkin_id(span.get("traceId"), 32)?.ok_or("span without traceId")?;
        let span_id = zipkin_id(span.get("id"), 16)?.ok_or("span without id")?;
        let parent_span_id =
            zipkin_id(span.get("parentId"), 16)?.filter(|id| id.bytes().any(|b| b != b'0'));
        let text = |key: &str| {
            span.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let micros = |key: &str| span.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        let attributes: BTreeMap<String, String> = span
            .get("tags")
            .and_then(|t| t.as_object())
            .map(|tags| {
                tags.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let start = micros("timestamp");
        out.push(RecordedSpan {
            trace_id,
            span_id,
            parent_span_id,
            name: text("name"),
            kind: text("kind"),
            start_unix_nanos: start * 1000,
            end_unix_nanos: (start + micros("duration")) * 1000,
            status_error: attributes.contains_key("error"),
            attributes,
            service_name: span
                .pointer("/localEndpoint/serviceName")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            resource: BTreeMap::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        let request = &collector.request_log()[0];
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
        let request = &collector.request_log()[0];
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
}
