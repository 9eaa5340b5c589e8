//! The telemetry part of meshConfig (the `mesh` key of istiod's `istio` ConfigMap, given to the
//! waypoint as `--mesh-config FILE`): `extensionProviders` of the access-log and tracing kinds,
//! `defaultProviders`, the built-in `envoy` log provider (`accessLogFile`, `accessLogEncoding`,
//! `accessLogFormat`) and the default sampling (`defaultConfig.tracing.sampling`). Field names
//! and defaults as istio/api `mesh/v1alpha1/config.proto` (1.26) and istiod's
//! `pilot/pkg/model/telemetry.go` read them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;

use crate::telemetry::{
    AccessLogSink, Collector, CollectorProtocol, LogFormat, LogPath, DEFAULT_MAX_TAG_LENGTH,
};

/// Istio's default sampling when neither meshConfig nor a Telemetry sets one
/// (`defaultConfig.tracing.sampling` default: 1 %).
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// The providers the Telemetry API can name, and the mesh-wide defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshTelemetry {
    /// `extensionProviders` of the kinds the waypoint applies, by name.
    pub providers: HashMap<String, Provider>,
    /// Names of the other providers (metrics, ext_authz, remote loggers), for clearer warnings.
    pub other_providers: HashMap<String, &'static str>,
    pub default_access_logging: Vec<String>,
    pub default_tracing: Vec<String>,
    /// meshConfig `accessLogFile`: when set, every proxy logs there with the `envoy` provider.
    pub access_log_file: Option<String>,
    /// The built-in `envoy` provider's format (`accessLogFormat` / `accessLogEncoding`).
    pub envoy_format: LogFormat,
    pub default_sampling_percent: f64,
}

/// Why a meshConfig's telemetry part cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MeshTelemetryError {
    /// Not YAML, or not a meshConfig's shape (boxed: the parser's error is large).
    #[error(transparent)]
    Yaml(Box<serde_saphyr::Error>),
    #[error("accessLogEncoding {0:?}: expected TEXT or JSON")]
    Encoding(String),
    #[error("defaultConfig.tracing.sampling {0}: a percentage, 0 to 100")]
    Sampling(f64),
    #[error("extensionProviders {name}: {source}")]
    Provider { name: String, source: ProviderError },
}

/// What is wrong with one extension provider of a kind the waypoint applies.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no provider kind")]
    NoKind,
    #[error("has two kinds, {0} and {1}")]
    TwoKinds(String, String),
    /// The kind's fields do not deserialize.
    #[error(transparent)]
    Fields(#[from] serde_json::Error),
    #[error("path {0:?}: this waypoint writes access logs to /dev/stdout or /dev/stderr")]
    LogPath(String),
    #[error("logFormat: either text or labels, not both")]
    TextAndLabels,
    #[error("either http or grpc, not both")]
    HttpAndGrpc,
    #[error("service is required")]
    NoService,
    #[error("port is required")]
    NoPort,
    #[error("timeout {value:?}: {source}")]
    Timeout {
        value: String,
        source: super::fields::DurationError,
    },
}

/// An extension provider the waypoint can apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    AccessLog {
        path: LogPath,
        format: LogFormat,
    },
    Tracing {
        collector: Collector,
        max_tag_length: usize,
    },
}

impl MeshTelemetry {
    /// Without a meshConfig: only the built-in `envoy` provider, Istio's text format.
    pub fn builtin() -> Self {
        Self {
            envoy_format: LogFormat::IstioText,
            default_sampling_percent: DEFAULT_SAMPLING_PERCENT,
            ..Self::default()
        }
    }

    /// The `envoy` provider's sink (Istio: `accessLogFile`, else `/dev/stdout`).
    pub fn envoy_sink(&self) -> AccessLogSink {
        let path = self
            .access_log_file
            .as_deref()
            .and_then(LogPath::from_path)
            .unwrap_or(LogPath::Stdout);
        AccessLogSink {
            provider: "envoy".into(),
            format: self.envoy_format.clone(),
            filter: None,
            path,
        }
    }

    /// Reads the telemetry part of a meshConfig YAML document. A provider of a kind the waypoint
    /// applies but written wrong is an error naming it; the warnings are what is left out.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), MeshTelemetryError> {
        let mesh: MeshY =
            serde_saphyr::from_str(text).map_err(|e| MeshTelemetryError::Yaml(Box::new(e)))?;
        let mut warnings = Vec::new();
        let mut out = Self::builtin();
        out.envoy_format = match (mesh.access_log_encoding.as_deref(), mesh.access_log_format) {
            (None | Some("TEXT"), None) => LogFormat::IstioText,
            (None | Some("TEXT"), Some(f)) => LogFormat::Text(f),
            (Some("JSON"), None) => LogFormat::IstioJson,
            (Some("JSON"), Some(f)) => LogFormat::Json(f),
            (Some(other), _) => return Err(MeshTelemetryError::Encoding(other.to_string())),
        };
        if let Some(file) = mesh.access_log_file.filter(|f| !f.is_empty()) {
            if LogPath::from_path(&file).is_none() {
                warnings.push(format!(
                    "accessLogFile {file:?}: this waypoint writes access logs to /dev/stdout or \
                     /dev/stderr only; /dev/stdout is used"
                ));
            }
            out.access_log_file = Some(file);
        }
        if let Some(s) = mesh
            .default_config
            .and_then(|c| c.tracing)
            .and_then(|t| t.sampling)
        {
            if !(0.0..=100.0).contains(&s) {
                return Err(MeshTelemetryError::Sampling(s));
            }
            out.default_sampling_percent = s;
        }
        if let Some(d) = mesh.default_providers {
            out.default_access_logging = d.access_logging;
            out.default_tracing = d.tracing;
        }
        for p in mesh.extension_providers {
            let at = |source| MeshTelemetryError::Provider {
                name: p.name.clone(),
                source,
            };
            let mut kinds = p.kinds.into_iter();
            let Some((kind, value)) = kinds.next() else {
                return Err(at(ProviderError::NoKind));
            };
            if let Some((extra, _)) = kinds.next() {
                return Err(at(ProviderError::TwoKinds(kind, extra)));
            }
            let provider = match kind.as_str() {
                "envoyFileAccessLog" => {
                    let f: FileLogY = from_value(value).map_err(at)?;
                    let path = LogPath::from_path(&f.path)
                        .ok_or_else(|| at(ProviderError::LogPath(f.path.clone())))?;
                    let format = match f.log_format {
                        None => LogFormat::IstioText,
                        Some(LogFormatY {
                            text: Some(t),
                            labels: None,
                            ..
                        }) => LogFormat::Text(t),
                        Some(LogFormatY {
                            text: None,
                            labels: Some(l),
                            ..
                        }) => LogFormat::Json(labels_json(&l)),
                        Some(LogFormatY {
                            text: None,
                            labels: None,
                            ..
                        }) => LogFormat::IstioText,
                        Some(_) => return Err(at(ProviderError::TextAndLabels)),
                    };
                    Provider::AccessLog { path, format }
                }
                "opentelemetry" => {
                    let o: OtelY = from_value(value).map_err(at)?;
                    let (protocol, path, timeout, headers) = match (o.http, o.grpc) {
                        (Some(h), None) => (
                            CollectorProtocol::OtlpHttp,
                            h.path.unwrap_or_else(|| "/v1/traces".into()),
                            h.timeout,
                            h.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                        ),
                        (None, g) => {
                            let g = g.unwrap_or_default();
                            (
                                CollectorProtocol::OtlpGrpc,
                                String::new(),
                                g.timeout,
                                g.initial_metadata
                                    .into_iter()
                                    .map(|h| (h.name, h.value))
                                    .collect(),
                            )
                        }
                        (Some(_), Some(_)) => return Err(at(ProviderError::HttpAndGrpc)),
                    };
                    tracing(o.service, o.port, path, timeout, headers, protocol)
                        .map(|collector| Provider::Tracing {
                            collector,
                            max_tag_length: tag_length(o.max_tag_length),
                        })
                        .map_err(at)?
                }
                "zipkin" => {
                    let z: ZipkinY = from_value(value).map_err(at)?;
                    let headers = z.headers.into_iter().map(|h| (h.name, h.value)).collect();
                    let path = z.path.unwrap_or_else(|| "/api/v2/spans".into());
                    tracing(
                        z.service,
                        z.port,
                        path,
                        z.timeout,
                        headers,
                        CollectorProtocol::Zipkin,
                    )
                    .map(|collector| Provider::Tracing {
                        collector,
                        max_tag_length: tag_length(z.max_tag_length),
                    })
                    .map_err(at)?
                }
                other => {
                    let what = match other {
                        "prometheus" | "stackdriver" => "metrics",
                        "envoyExtAuthzHttp" | "envoyExtAuthzGrpc" => "external authorization",
                        "envoyOtelAls" | "envoyHttpAls" | "envoyTcpAls" => {
                            "remote access-log service"
                        }
                        "skywalking" | "datadog" | "lightstep" | "sds" => "tracing",
                        _ => "unknown",
                    };
                    out.other_providers.insert(p.name.clone(), what);
                    continue;
                }
            };
            out.providers.insert(p.name, provider);
        }
        Ok((out, warnings))
    }
}

fn tag_length(v: Option<u32>) -> usize {
    v.filter(|&n| n > 0)
        .map_or(DEFAULT_MAX_TAG_LENGTH, |n| n as usize)
}

fn tracing(
    service: String,
    port: u16,
    path: String,
    timeout: Option<String>,
    headers: Vec<(String, String)>,
    protocol: CollectorProtocol,
) -> Result<Collector, ProviderError> {
    if service.is_empty() {
        return Err(ProviderError::NoService);
    }
    if port == 0 {
        return Err(ProviderError::NoPort);
    }
    // A service is `[namespace/]hostname`; the host is what is dialled.
    let host = service
        .split_once('/')
        .map_or(service.as_str(), |(_, h)| h)
        .to_string();
    let timeout = match timeout {
        None => Duration::from_secs(10),
        Some(t) => super::fields::parse_duration(&t)
            .map_err(|source| ProviderError::Timeout { value: t, source })?,
    };
    Ok(Collector {
        protocol,
        host,
        port,
        path: if path.is_empty() || path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        },
        timeout,
        headers,
    })
}

/// `logFormat.labels` as a JSON object text (keys sorted, as protobuf `Struct` keeps them).
fn labels_json(labels: &BTreeMap<String, serde_json::Value>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ProviderError> {
    Ok(serde_json::from_value(v)?)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshY {
    access_log_file: Option<String>,
    access_log_encoding: Option<String>,
    access_log_format: Option<String>,
    default_config: Option<DefaultConfigY>,
    default_providers: Option<DefaultProvidersY>,
    #[serde(default)]
    extension_providers: Vec<ProviderY>,
    /// Every other meshConfig field: not telemetry.
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultConfigY {
    tracing: Option<TracingY>,
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TracingY {
    sampling: Option<f64>,
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultProvidersY {
    #[serde(default)]
    access_logging: Vec<String>,
    #[serde(default)]
    tracing: Vec<String>,
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ProviderY {
    name: String,
    #[serde(flatten)]
    kinds: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileLogY {
    path: String,
    log_format: Option<LogFormatY>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogFormatY {
    text: Option<String>,
    labels: Option<BTreeMap<String, serde_json::Value>>,
    /// Envoy's `omit_empty_values`: not applied (empty values are written as Envoy's `-`).
    #[serde(default)]
    #[allow(dead_code)]
    omit_empty_values: bool,
}

#[derive(Deserialize)]
struct HeaderY {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelY {
    service: String,
    port: u16,
    max_tag_length: Option<u32>,
    http: Option<OtelHttpY>,
    grpc: Option<OtelGrpcY>,
    /// `resourceDetectors`, `dynatraceSampler`: not applied.
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelHttpY {
    path: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderY>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelGrpcY {
    timeout: Option<String>,
    #[serde(default)]
    initial_metadata: Vec<HeaderY>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinY {
    service: String,
    port: u16,
    max_tag_length: Option<u32>,
    path: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderY>,
    /// `enable64bitTraceId`, `traceContextOption`: not applied (128-bit ids, B3 and W3C both).
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}
