//! What the Telemetry API asks of the data path, resolved: the access-log sinks with their
//! formats and filters, and tracing with its collector, sampling and custom tags.
//!
//! Two front-ends fill it: on files, `telemetry.istio.io` Telemetry resources bound to meshConfig
//! `extensionProviders` ([`crate::yaml`]); under istiod, the connection manager's `access_log`
//! and `tracing` as istiod writes them ([`crate::xds`]). The waypoint compiles it (filters,
//! exporters) when a snapshot carrying a different one is published.

use std::time::Duration;

/// The telemetry a snapshot's config declares.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TelemetryConfig {
    /// `None`: the config says nothing about access logs, and the process default (the
    /// `--access-log-*` flags) applies. `Some(empty)`: access logging is switched off.
    pub access_logs: Option<Vec<AccessLogSink>>,
    /// `None`: no spans are made (trace headers pass through unchanged).
    pub tracing: Option<Tracing>,
    /// Where it came from, for `explain` and logs: the Telemetry resources applied (most
    /// general first), or the istiod listener.
    pub sources: Vec<String>,
}

impl TelemetryConfig {
    /// Nothing declared: the process defaults, no tracing.
    pub fn is_default(&self) -> bool {
        self.access_logs.is_none() && self.tracing.is_none()
    }
}

/// One access log: every request the filter accepts gets one line in this format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessLogSink {
    /// The provider's name (meshConfig `extensionProviders[].name`, `envoy` for the built-in
    /// one), or the access logger's name under istiod.
    pub provider: String,
    pub format: LogFormat,
    /// A CEL expression over Envoy's request attributes (`response.code >= 400`); the line is
    /// written when it evaluates to `true`.
    pub filter: Option<String>,
    pub path: LogPath,
}

/// Where lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LogPath {
    Stdout,
    Stderr,
}

impl LogPath {
    /// `/dev/stdout` or `/dev/stderr`; any other path is not a place this proxy writes to.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/dev/stdout" => Some(Self::Stdout),
            "/dev/stderr" => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// An access log's line format.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub enum LogFormat {
    /// Istio's default text line (meshConfig `accessLogFormat` unset).
    #[default]
    IstioText,
    /// Istio's default JSON object (`accessLogEncoding: JSON`, no format).
    IstioJson,
    /// An Envoy format string (`logFormat.text`, `text_format_source`).
    Text(String),
    /// An Envoy `json_format` object, as JSON text (`logFormat.labels`, `json_format`).
    Json(String),
}

/// Spans for the requests the waypoint serves.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tracing {
    /// The provider's name (meshConfig `extensionProviders[].name`).
    pub provider: String,
    pub collector: Collector,
    /// The spans' `service.name`.
    pub service_name: String,
    /// Of the requests that arrive without a sampling decision, the percentage traced
    /// (0..=100). A decision in the request's trace headers is followed.
    pub sampling_percent: f64,
    pub custom_tags: Vec<CustomTag>,
    /// Longest value of a tag before it is cut (Istio's `maxTagLength`, default 256).
    pub max_tag_length: usize,
}

/// Istio's default `maxTagLength`.
pub const DEFAULT_MAX_TAG_LENGTH: usize = 256;

/// Where spans are sent, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Collector {
    pub protocol: CollectorProtocol,
    /// Hostname or IP address.
    pub host: String,
    pub port: u16,
    /// OTLP/HTTP: the traces path (`/v1/traces`); Zipkin: the spans path (`/api/v2/spans`);
    /// OTLP/gRPC: unused.
    pub path: String,
    pub timeout: Duration,
    /// Extra request headers (OTLP `headers`).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CollectorProtocol {
    OtlpGrpc,
    OtlpHttp,
    Zipkin,
}

/// A tag added to every span.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CustomTag {
    pub name: String,
    pub value: TagValue,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum TagValue {
    Literal(String),
    /// The waypoint process's environment variable, or `default` when unset.
    Environment {
        name: String,
        default: Option<String>,
    },
    /// The request header (lowercase name), or `default` when absent.
    RequestHeader {
        name: String,
        default: Option<String>,
    },
}
