//! The connection manager's `access_log` and `tracing` → [`crate::telemetry::TelemetryConfig`].
//!
//! What istiod writes (istio/istio 1.27.9, the same in 1.26.x; see each function for the file):
//! - `listener_builder.go` `buildHTTPConnectionManager`: every HTTP chain of `main_internal`
//!   (`buildWaypointInboundHTTPFilters`, the service chains and `direct-http`) gets
//!   `access_log` from `accesslog.go` `setHTTPAccessLog` and `tracing` from `tracing.go`
//!   `configureTracing`, both asked with the chain's service (`policySvc`): the same for every
//!   chain unless a Telemetry resource is attached to a service (`targetRefs`), and for
//!   `direct-http` (no service) the waypoint-wide one.
//! - Access logs (`model/telemetry_logging.go`): `envoy.access_loggers.file` with a
//!   `FileAccessLog{path, log_format: SubstitutionFormatString{text_format_source.inline_string
//!   | json_format, omit_empty_values}}` (meshConfig `accessLogFile` / `accessLogFormat` /
//!   `accessLogEncoding`, or an `envoyFileAccessLog` provider); a Telemetry `filter` becomes
//!   `AccessLog.filter.extension_filter{envoy.access_loggers.extension_filters.cel,
//!   ExpressionFilter{expression}}` (`accesslog.go` `buildAccessLogFilterFromTelemetry`).
//!   gRPC and OpenTelemetry access-log services are other logger types.
//! - Tracing (`networking/core/tracing.go`): `provider{envoy.tracers.opentelemetry,
//!   OpenTelemetryConfig{grpc_service{envoy_grpc{cluster_name, authority}, timeout,
//!   initial_metadata} | http_service{http_uri{uri: "<host>/<path>", cluster, timeout},
//!   request_headers_to_add}, service_name}}` or `{envoy.tracers.zipkin, ZipkinConfig{
//!   collector_cluster, collector_endpoint, collector_hostname, collector_endpoint_version:
//!   HTTP_JSON}}` (1.29+: `collector_service{http_uri{uri: "http://<host><path>"}}` instead),
//!   `random_sampling` (client and overall sampling 100), `custom_tags` sorted by name, and
//!   `max_path_tag_length` when the provider's `maxTagLength` is set. Collector clusters are
//!   `outbound|<port>||<host>` (`model.LookupCluster`): host and port come from that name.
//!
//! Translation rules:
//! - The waypoint has one telemetry: the `direct-http` chain's (istiod's waypoint-wide one),
//!   else the first HTTP chain's in listener order. Another HTTP chain whose access logs or
//!   tracing translate differently (a Telemetry attached to its service) is named in a warning;
//!   the chosen chain's apply to every request.
//! - No `access_log` → `access_logs: None` (the process default). A logger that cannot be
//!   expressed (another logger type, a path other than `/dev/stdout` / `/dev/stderr`, a format
//!   from a file, a filter that is neither CEL, `and` / `or` of them nor a status-code
//!   comparison) is left out with a warning; the others are kept (telemetry is not access
//!   policy). A logger's typed config that does not decode is a rejection (Envoy NACKs it).
//! - `json_format` → [`LogFormat::Json`], the `Struct` as JSON text with its keys sorted (the
//!   wire order is istiod's Go map order, and Envoy keeps none without `sort_properties`);
//!   integral numbers are written as integers, as YAML labels give them.
//! - No `tracing`, or one without `provider` (istiod's meshConfig `enableTracing` without a
//!   Telemetry provider, whose tracer would come from the Envoy bootstrap): `tracing: None`.
//!   A provider of another kind (Datadog, SkyWalking, …) or one that cannot be dialled: `None`
//!   with a warning. See [`tracer`] for the fields.

use super::{decode_any, At, Diag};
use crate::recent::Recent;
use crate::telemetry::{AccessLogSink, LogFormat, LogPath, TelemetryConfig, Tracing};
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as LogConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::comparison_filter::Op;
use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, AccessLogFilter};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use std::cell::RefCell;
use std::sync::Arc;

mod tracer;

/// Envoy's format when a file logger names none (envoyproxy/envoy
/// `docs/root/configuration/observability/access_log/usage.rst`, "Default Format String").
/// istiod always names one (`EnvoyTextLogFormat` by default).
const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
    %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
    %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
    \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \
    \"%UPSTREAM_HOST%\"\n";

/// `name` of the CEL access-log filter istiod writes.
const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";

/// What one connection manager declares, translated on its own (kept with its chain piece).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HcmTelemetry {
    pub(crate) access_logs: Option<Vec<AccessLogSink>>,
    pub(crate) tracing: Option<Tracing>,
    /// What could not be expressed: reported when this chain's telemetry is the one used.
    pub(crate) diag: Diag,
}

impl HcmTelemetry {
    fn same(&self, other: &HcmTelemetry) -> bool {
        self.access_logs == other.access_logs && self.tracing == other.tracing
    }

    /// `telemetry`, shared with the chains translated with an equal one: istiod gives every
    /// chain of a waypoint the same `access_log` and `tracing` (256 bytes a chain, 5 000 chains
    /// at 5 000 services). A chain whose telemetry has its own warnings (they name the chain)
    /// keeps its own. Found as [`crate::ClusterPolicy::shared`] finds policies.
    fn shared(telemetry: HcmTelemetry) -> Arc<HcmTelemetry> {
        thread_local! {
            static RECENT: RefCell<Recent<HcmTelemetry>> =
                const { RefCell::new(Recent::new(SHARED_TELEMETRY)) };
        }
        RECENT.with_borrow_mut(|recent| recent.shared(telemetry))
    }
}

/// How many distinct chain telemetries [`HcmTelemetry::shared`] looks among.
const SHARED_TELEMETRY: usize = 4;

/// The `access_log` and `tracing` of chain `chain`'s connection manager. Warnings go in the
/// result; a logger whose typed config does not decode is rejected in `rejections` (reported
/// whichever chain is used).
pub(crate) fn from_hcm(
    chain: &str,
    hcm: &HttpConnectionManager,
    at: At<'_>,
    rejections: &mut Diag,
) -> Arc<HcmTelemetry> {
    let mut diag = Diag::default();
    let access_logs = (!hcm.access_log.is_empty()).then(|| {
        hcm.access_log
            .iter()
            .filter_map(|al| sink(chain, al, at, &mut diag, rejections))
            .collect()
    });
    let tracing = hcm
        .tracing
        .as_ref()
        .and_then(|t| tracer::translate(chain, t, at, &mut diag, rejections));
    HcmTelemetry::shared(HcmTelemetry {
        access_logs,
        tracing,
        diag,
    })
}

/// The waypoint's telemetry from its HTTP chains (name, telemetry; listener order): the
/// `direct-http` chain's, else the first one's, with a warning for each chain that differs.
pub(crate) fn choose(
    chains: &[(&str, &HcmTelemetry)],
    at: At<'_>,
    diag: &mut Diag,
) -> Option<TelemetryConfig> {
    let (name, used) = chains
        .iter()
        .find(|(n, _)| *n == super::listener::DIRECT_HTTP)
        .or_else(|| chains.first())?;
    diag.replay(&used.diag);
    for (other, t) in chains {
        if other != name && !t.same(used) {
            at.warn(
                diag,
                format!(
                    "chain {other}: its access_log / tracing differ from chain {name}'s (a \
                     Telemetry attached to its service?); the waypoint has one telemetry, \
                     {name}'s, used for every request"
                ),
            );
        }
    }
    Some(TelemetryConfig {
        access_logs: used.access_logs.clone(),
        tracing: used.tracing.clone(),
        sources: vec![format!("istiod listener {} chain {name}", at.name)],
    })
}

/// One access logger, or `None` (warned or rejected) when it cannot be expressed.
fn sink(
    chain: &str,
    al: &AccessLog,
    at: At<'_>,
    diag: &mut Diag,
    rejections: &mut Diag,
) -> Option<AccessLogSink> {
    let name = &al.name;
    let skip = |diag: &mut Diag, why: String| {
        at.warn(
            diag,
            format!("chain {chain}: access log {name}: {why}; this logger is left out"),
        );
        None
    };
    let any = match &al.config_type {
        Some(LogConfigType::TypedConfig(any)) => any,
        None => return skip(diag, "no typed_config".into()),
    };
    let file = match decode_any::<FileAccessLog>(any) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            at.reject(rejections, format!("chain {chain}: access log {name}: {e}"));
            return None;
        }
        None => {
            return skip(
                diag,
                format!(
                "logger type {} is not supported (file loggers to /dev/stdout or /dev/stderr are)",
                super::access::type_label(any)
            ),
            )
        }
    };
    let Some(path) = LogPath::from_path(&file.path) else {
        return skip(
            diag,
            format!(
                "path {:?} is not supported (/dev/stdout and /dev/stderr are)",
                file.path
            ),
        );
    };
    let format = match file_format(file.access_log_format.as_ref()) {
        Ok((format, omit_empty)) => {
            if omit_empty {
                at.warn(
                    diag,
                    format!(
                        "chain {chain}: access log {name}: omit_empty_values is not supported; \
                         empty values are written"
                    ),
                );
            }
            format
        }
        Err(why) => return skip(diag, why.to_string()),
    };
    let filter = match al
        .filter
        .as_ref()
        .map(|f| cel_filter(f, rejections, at, chain))
    {
        None => None,
        Some(Ok(expr)) => Some(expr),
        Some(Err(Some(why))) => return skip(diag, why),
        // Rejected.
        Some(Err(None)) => return None,
    };
    Some(AccessLogSink {
        provider: name.clone(),
        format,
        filter,
        path,
    })
}

/// Why a file logger's format cannot be expressed (the logger is left out).
#[derive(Debug, thiserror::Error)]
enum FormatError {
    #[error("text_format_source.inline_bytes is not UTF-8")]
    NotUtf8,
    #[error("a format read from file {0:?} is not supported")]
    FromFile(String),
    #[error("a format read from environment variable {0} is not supported")]
    FromEnv(String),
    #[error("text_format_source without a source")]
    NoSource,
    #[error("log_format without a format")]
    NoFormat,
}

/// A file logger's format and its `omit_empty_values`.
fn file_format(f: Option<&AccessLogFormat>) -> Result<(LogFormat, bool), FormatError> {
    #[allow(deprecated)]
    let format = match f {
        None => LogFormat::Text(ENVOY_DEFAULT_FORMAT.into()),
        Some(AccessLogFormat::Format(s)) if s.is_empty() => {
            LogFormat::Text(ENVOY_DEFAULT_FORMAT.into())
        }
        Some(AccessLogFormat::Format(s)) => LogFormat::Text(s.clone()),
        Some(AccessLogFormat::JsonFormat(s) | AccessLogFormat::TypedJsonFormat(s)) => {
            LogFormat::Json(struct_json(s))
        }
        Some(AccessLogFormat::LogFormat(sfs)) => return substitution_format(sfs),
    };
    Ok((format, false))
}

/// `SubstitutionFormatString`: an inline text or a JSON object (`formatters` enable command
/// operators inside them and need nothing here; `content_type` is for local replies).
fn substitution_format(sfs: &SubstitutionFormatString) -> Result<(LogFormat, bool), FormatError> {
    #[allow(deprecated)]
    let format = match &sfs.format {
        Some(Format::TextFormat(s)) => LogFormat::Text(s.clone()),
        Some(Format::JsonFormat(s)) => LogFormat::Json(struct_json(s)),
        Some(Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(Specifier::InlineString(s)) => LogFormat::Text(s.clone()),
            Some(Specifier::InlineBytes(b)) => match String::from_utf8(b.clone()) {
                Ok(s) => LogFormat::Text(s),
                Err(_) => return Err(FormatError::NotUtf8),
            },
            Some(Specifier::Filename(f)) => return Err(FormatError::FromFile(f.clone())),
            Some(Specifier::EnvironmentVariable(v)) => return Err(FormatError::FromEnv(v.clone())),
            None => return Err(FormatError::NoSource),
        },
        None => return Err(FormatError::NoFormat),
    };
    Ok((format, sfs.omit_empty_values))
}

/// A `google.protobuf.Struct` as JSON object text, keys sorted.
fn struct_json(s: &Struct) -> String {
    serde_json::Value::Object(struct_map(s)).to_string()
}

fn struct_map(s: &Struct) -> serde_json::Map<String, serde_json::Value> {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| (k.clone(), json_value(&s.fields[k])))
        .collect()
}

fn json_value(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                J::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(J::Null, J::Number)
            }
        }
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StructValue(s)) => J::Object(struct_map(s)),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(json_value).collect()),
    }
}

/// An access-log filter as one CEL expression over Envoy's attributes. `Err(Some(why))`: it
/// cannot be expressed; `Err(None)`: a typed config that does not decode (rejected).
fn cel_filter(
    f: &AccessLogFilter,
    rejections: &mut Diag,
    at: At<'_>,
    chain: &str,
) -> Result<String, Option<String>> {
    let all = |fs: &[AccessLogFilter], op: &str, rejections: &mut Diag| {
        let parts = fs
            .iter()
            .map(|f| cel_filter(f, rejections, at, chain).map(|e| format!("({e})")))
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() {
            return Err(Some(format!("an empty {op} filter")));
        }
        Ok(parts.join(&format!(" {op} ")))
    };
    match &f.filter_specifier {
        Some(FilterSpecifier::ExtensionFilter(ext)) => {
            let any = match &ext.config_type {
                Some(FilterConfigType::TypedConfig(any)) => any,
                None => return Err(Some(format!("filter {} has no typed_config", ext.name))),
            };
            match decode_any::<ExpressionFilter>(any) {
                Some(Ok(e)) if !e.expression.is_empty() => Ok(e.expression),
                Some(Ok(_)) => Err(Some(format!("filter {} has no expression", ext.name))),
                Some(Err(e)) => {
                    at.reject(rejections, format!("chain {chain}: access log filter: {e}"));
                    Err(None)
                }
                None => Err(Some(format!(
                    "filter {} ({}) is not supported (CEL filters, {CEL_FILTER}, are)",
                    ext.name,
                    super::access::type_label(any)
                ))),
            }
        }
        Some(FilterSpecifier::AndFilter(a)) => all(&a.filters, "&&", rejections),
        Some(FilterSpecifier::OrFilter(o)) => all(&o.filters, "||", rejections),
        Some(FilterSpecifier::StatusCodeFilter(s)) => {
            let c = s.comparison.as_ref();
            let op = match c.map(|c| Op::try_from(c.op)) {
                None | Some(Ok(Op::Eq)) => "==",
                Some(Ok(Op::Ge)) => ">=",
                Some(Ok(Op::Le)) => "<=",
                Some(Ok(Op::Ne)) => "!=",
                Some(Err(_)) => return Err(Some("a status_code_filter with an unknown op".into())),
            };
            let value = c
                .and_then(|c| c.value.as_ref())
                .map_or(0, |v| v.default_value);
            Ok(format!("response.code {op} {value}"))
        }
        Some(other) => Err(Some(format!(
            "filter {} is not supported (CEL filters, and / or of them and status_code_filter are)",
            filter_kind(other)
        ))),
        None => Err(Some("a filter without a kind".into())),
    }
}

fn filter_kind(f: &FilterSpecifier) -> &'static str {
    match f {
        FilterSpecifier::StatusCodeFilter(_) => "status_code_filter",
        FilterSpecifier::DurationFilter(_) => "duration_filter",
        FilterSpecifier::NotHealthCheckFilter(_) => "not_health_check_filter",
        FilterSpecifier::TraceableFilter(_) => "traceable_filter",
        FilterSpecifier::RuntimeFilter(_) => "runtime_filter",
        FilterSpecifier::AndFilter(_) => "and_filter",
        FilterSpecifier::OrFilter(_) => "or_filter",
        FilterSpecifier::HeaderFilter(_) => "header_filter",
        FilterSpecifier::ResponseFlagFilter(_) => "response_flag_filter",
        FilterSpecifier::GrpcStatusFilter(_) => "grpc_status_filter",
        FilterSpecifier::ExtensionFilter(_) => "extension_filter",
        FilterSpecifier::MetadataFilter(_) => "metadata_filter",
        FilterSpecifier::LogTypeFilter(_) => "log_type_filter",
    }
}

#[cfg(test)]
mod tests;
