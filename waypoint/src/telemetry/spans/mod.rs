//! Tracing as the Telemetry API configures it: one span per request the waypoint serves,
//! child of the caller's span (W3C or B3 headers), parent of the upstream's (both formats are
//! written to the upstream request), exported to the provider's collector ([`export`]).
//!
//! Sampling as Envoy decides it: a decision in the request's trace headers is followed;
//! otherwise the provider's random percentage. A request not sampled gets no span and its
//! trace headers pass through unchanged. Nothing is done per request when tracing is off
//! beyond reading one pointer.
//!
//! Span content, as Envoy's HTTP tracer writes its downstream span
//! (`source/common/tracing/http_tracer_impl.cc`, 1.34): the operation name is the route's
//! decorator istiod sets, `<service host>:<port>/*`; kind SERVER; the tags `http.url`,
//! `http.method`, `http.protocol`, `http.status_code`, `guid:x-request-id`, `user_agent`,
//! `peer.address`, `request_size`, `response_size`, `response_flags`, `upstream_cluster`,
//! `upstream_cluster.name`, `upstream_address`, `component`, `node_id`, `istio.namespace`, the
//! custom tags, and `error` with an ERROR status for 5xx answers.

pub mod apply;
pub mod context;
pub mod export;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use pingora_http::RequestHeader;
use routing::telemetry::{TagValue, Tracing};

use crate::telemetry::access_log::{Field, Line};
pub use apply::TelemetryApi;
pub use context::Incoming;
pub use export::{ExportStats, Exporter};

/// The tracer of one Telemetry configuration.
pub struct Tracer {
    /// As the config declared it (compared on publish).
    declared: Tracing,
    /// With the service name filled in.
    config: Tracing,
    exporter: Exporter,
    /// `environment` custom tags, read once.
    fixed_tags: Vec<KeyValue>,
    /// The waypoint's namespace (from its service name `name.namespace`).
    namespace: String,
    scope: opentelemetry::InstrumentationScope,
}

/// A sampled request's span, from its start to [`ActiveSpan::finish`].
pub struct ActiveSpan {
    tracer: Arc<Tracer>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    /// `header` custom tags, read from the request as it arrived.
    header_tags: Vec<KeyValue>,
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Tracer {
    pub fn new(declared: &Tracing, stats: Arc<ExportStats>) -> std::io::Result<Self> {
        let mut config = declared.clone();
        if config.service_name.is_empty() {
            // istiod's Zipkin config carries no service name and its Istio tags may be off.
            config.service_name = "waypoint".into();
        }
        let config = &config;
        let exporter = Exporter::start(&config.collector, &config.service_name, stats)?;
        let fixed_tags = config
            .custom_tags
            .iter()
            .filter_map(|t| {
                let v = match &t.value {
                    TagValue::Literal(v) => Some(v.clone()),
                    TagValue::Environment { name, default } => {
                        std::env::var(name).ok().or_else(|| default.clone())
                    }
                    TagValue::RequestHeader { .. } => None,
                }?;
                Some(KeyValue::new(t.name.clone(), cut(v, config.max_tag_length)))
            })
            .collect();
        let namespace = config
            .service_name
            .rsplit_once('.')
            .map_or("", |(_, ns)| ns)
            .to_string();
        Ok(Self {
            declared: declared.clone(),
            config: config.clone(),
            exporter,
            fixed_tags,
            namespace,
            scope: opentelemetry::InstrumentationScope::builder("waypoint")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// The tracing config as declared (before defaults were filled in).
    pub fn declared(&self) -> &Tracing {
        &self.declared
    }

    pub fn stats(&self) -> &ExportStats {
        &self.exporter.stats
    }

    /// The request's span when it is sampled.
    pub fn start(self: &Arc<Self>, req: &RequestHeader) -> Option<ActiveSpan> {
        let incoming = Incoming::read(req);
        let sampled = incoming.sampled.unwrap_or_else(|| {
            let p = self.config.sampling_percent;
            p >= 100.0 || (p > 0.0 && rand::random::<f64>() * 100.0 < p)
        });
        if !sampled {
            return None;
        }
        let header_tags = self
            .config
            .custom_tags
            .iter()
            .filter_map(|t| match &t.value {
                TagValue::RequestHeader { name, default } => {
                    let v = req
                        .headers
                        .get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .or_else(|| default.clone())?;
                    Some(KeyValue::new(
                        t.name.clone(),
                        cut(v, self.config.max_tag_length),
                    ))
                }
                _ => None,
            })
            .collect();
        Some(ActiveSpan {
            tracer: self.clone(),
            trace_id: incoming.parent.map_or_else(random_id, |p| p.trace_id),
            span_id: random_id(),
            parent: incoming.parent.map(|p| p.span_id),
            header_tags,
        })
    }
}

fn text(f: &Field<'_>) -> String {
    let mut out = Vec::new();
    f.write(&mut out);
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `<service host>:<port>/*` from an Istio cluster name `outbound|<port>|<subset>|<host>`, as
/// istiod's route decorator names the operation; else the authority.
fn operation(cluster: &str, authority: &str) -> String {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(port), Some(_), Some(host)) if !host.is_empty() => {
            format!("{host}:{port}/*")
        }
        _ if !authority.is_empty() => format!("{authority}/*"),
        _ => "waypoint".to_string(),
    }
}

impl ActiveSpan {
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// Makes this span the upstream request's parent.
    pub fn inject(&self, upstream: &mut RequestHeader) {
        context::inject(upstream, self.trace_id, self.span_id, self.parent);
    }

    /// Ends the span with what the request's access-log line says, and queues it for export.
    pub fn finish(self, line: &Line<'_>, start: SystemTime, duration: Duration) {
        let t = &self.tracer;
        let max = t.config.max_tag_length;
        let cluster = text(&line.upstream_cluster);
        let authority = text(&line.authority);
        let code = line.response_code;
        let mut attributes = Vec::with_capacity(20 + t.fixed_tags.len());
        let mut tag = |k: &'static str, v: String| {
            if !v.is_empty() {
                attributes.push(KeyValue::new(k, cut(v, max)));
            }
        };
        let protocol = text(&line.protocol);
        let scheme = if protocol.is_empty() { "" } else { "http" };
        tag(
            "http.url",
            format!("{scheme}://{authority}{}", text(&line.path)),
        );
        tag("http.method", text(&line.method));
        tag("http.protocol", protocol);
        tag("http.status_code", code.to_string());
        tag("guid:x-request-id", text(&line.request_id));
        tag("user_agent", text(&line.user_agent));
        tag("peer.address", text(&line.downstream_remote_address));
        tag("request_size", line.bytes_received.to_string());
        tag("response_size", line.bytes_sent.to_string());
        let flags = text(&line.response_flags);
        tag(
            "response_flags",
            if flags.is_empty() { "-".into() } else { flags },
        );
        tag("upstream_cluster", cluster.clone());
        tag("upstream_cluster.name", cluster.clone());
        tag("upstream_address", text(&line.upstream_host));
        tag("component", "proxy".into());
        tag("node_id", t.config.service_name.clone());
        tag("istio.namespace", t.namespace.clone());
        attributes.extend(t.fixed_tags.iter().cloned());
        attributes.extend(self.header_tags);
        let status = if code >= 500 || code == 0 {
            attributes.push(KeyValue::new("error", "true"));
            Status::error(format!("response code {code}"))
        } else {
            Status::Unset
        };
        let span = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name: operation(&cluster, &authority).into(),
            start_time: start,
            end_time: start + duration,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: t.scope.clone(),
        };
        t.exporter.send(span);
    }
}
