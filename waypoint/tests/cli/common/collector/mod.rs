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
mod tests;
