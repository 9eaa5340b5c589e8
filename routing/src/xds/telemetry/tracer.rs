//! The connection manager's `tracing` → [`Tracing`] (istio/istio 1.27.9
//! `pilot/pkg/networking/core/tracing.go`: `configureTracingFromTelemetry`,
//! `configureFromProviderConfig`, `otelConfig`, `zipkinConfig`, `configureSampling`,
//! `configureCustomTags`; 1.29+ `zipkinConfig` for `collector_service`).
//!
//! - `provider` `OpenTelemetryConfig`: `grpc_service.envoy_grpc` → OTLP/gRPC, else
//!   `http_service.http_uri` → OTLP/HTTP (Envoy's order). The collector's host and port come
//!   from the cluster name (`outbound|4317||otel-collector.observability.svc.cluster.local`),
//!   else from the URI; OTLP/HTTP's path from the URI (istiod writes `<host>/<path>`, no
//!   scheme; no path is `/`, as Envoy posts it). Timeout: the gRPC service's or the URI's, else
//!   10 s (the YAML front-end's default). Headers: `initial_metadata` /
//!   `request_headers_to_add`. `service_name` as written (empty: Envoy's
//!   `unknown_service:envoy`). Resource detectors and samplers are warned about and ignored.
//! - `ZipkinConfig`: `collector_service` (1.29+) or `collector_cluster` + `collector_endpoint`.
//!   Zipkin carries no service name (Envoy uses its node's cluster, `<name>.<namespace>`): it is
//!   made from istiod's `istio.canonical_service` and `istio.namespace` literal tags when both
//!   are there, else left empty.
//! - `random_sampling` → `sampling_percent` (unset: Envoy's 100). `client_sampling` /
//!   `overall_sampling` other than 100 (istiod always writes 100) are warned about.
//! - `custom_tags`: literal, environment and request header (with `default_value`, empty = none)
//!   in their order; `value` without `%` as a literal. Metadata tags (istiod's
//!   `istio.authorization.dry_run.*`, written whenever Istio tags are on) and format-string
//!   values cannot be expressed: left out, named in one warning.
//! - `max_path_tag_length` → `max_tag_length` (unset or 0: 256). `verbose`,
//!   `spawn_upstream_span` and `operation` names are not read.

use super::super::names::ClusterName;
use super::super::{decode_any, duration, At, Diag};
use crate::telemetry::{
    Collector, CollectorProtocol, CustomTag, TagValue, Tracing, DEFAULT_MAX_TAG_LENGTH,
};
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HttpService};
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
use envoy_types::pb::envoy::config::trace::v3::zipkin_config::{
    CollectorEndpointVersion, TraceContextOption,
};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Type as TagType;
use envoy_types::pb::envoy::r#type::v3::Percent;
use std::time::Duration;

/// Timeout when the config names none (as the YAML front-end).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's OpenTelemetry `service_name` when unset.
const OTEL_DEFAULT_SERVICE: &str = "unknown_service:envoy";

/// Where a warning about chain `chain`'s tracing goes.
struct Ctx<'a> {
    chain: &'a str,
    at: At<'a>,
}

impl Ctx<'_> {
    fn warn(&self, diag: &mut Diag, msg: impl std::fmt::Display) {
        self.at
            .warn(diag, format!("chain {}: tracing: {msg}", self.chain));
    }
}

/// A connection manager's tracing; `None` when it makes no spans (no provider) or the provider
/// cannot be expressed (warned) or does not decode (rejected in `rejections`).
pub(crate) fn translate(
    chain: &str,
    t: &HcmTracing,
    at: At<'_>,
    diag: &mut Diag,
    rejections: &mut Diag,
) -> Option<Tracing> {
    let cx = Ctx { chain, at };
    // No provider: the Envoy bootstrap's tracer, which this proxy does not have.
    let provider = t.provider.as_ref()?;
    let name = &provider.name;
    let Some(ConfigType::TypedConfig(any)) = &provider.config_type else {
        cx.warn(
            diag,
            format!("provider {name} has no typed_config; no spans are made"),
        );
        return None;
    };
    // Reported only when spans are made.
    let mut tag_diag = Diag::default();
    let tags = custom_tags(&cx, t, &mut tag_diag);
    let exporter = if let Some(otel) = decode_any::<OpenTelemetryConfig>(any) {
        otel.map(|o| otel_collector(&cx, &o, diag))
    } else if let Some(zipkin) = decode_any::<ZipkinConfig>(any) {
        zipkin.map(|z| zipkin_collector(&cx, &z, &tags, diag))
    } else {
        cx.warn(
            diag,
            format!(
                "provider {name} ({}) is not supported (OpenTelemetry and Zipkin are); no spans \
                 are made",
                super::super::access::type_label(any)
            ),
        );
        return None;
    };
    let (collector, service_name) = match exporter {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            at.reject(
                rejections,
                format!("chain {chain}: tracing provider {name}: {e}"),
            );
            return None;
        }
    };
    diag.replay(&tag_diag);
    let percent = |p: &Option<Percent>| p.as_ref().map_or(100.0, |p| p.value);
    let random = percent(&t.random_sampling);
    let sampling_percent = if random.is_finite() {
        random.clamp(0.0, 100.0)
    } else {
        100.0
    };
    for (field, p) in [
        ("client_sampling", &t.client_sampling),
        ("overall_sampling", &t.overall_sampling),
    ] {
        let v = percent(p);
        if v != 100.0 {
            cx.warn(
                diag,
                format!("{field} {v}% is not supported; random_sampling alone decides"),
            );
        }
    }
    Some(Tracing {
        provider: name.clone(),
        collector,
        service_name,
        sampling_percent,
        custom_tags: tags,
        max_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map(|v| v.value as usize)
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_TAG_LENGTH),
    })
}

/// OTLP over gRPC (`envoy_grpc`) or HTTP, and the service name; `None` when not expressible.
fn otel_collector(
    cx: &Ctx<'_>,
    o: &OpenTelemetryConfig,
    diag: &mut Diag,
) -> Option<(Collector, String)> {
    for d in &o.resource_detectors {
        cx.warn(
            diag,
            format!("resource detector {} is not supported; ignored", d.name),
        );
    }
    if let Some(s) = &o.sampler {
        cx.warn(
            diag,
            format!(
                "sampler {} is not supported; random_sampling decides (istiod writes 100% with a \
                 sampler)",
                s.name
            ),
        );
    }
    let collector = if let Some(g) = &o.grpc_service {
        let eg = match &g.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(eg)) => eg,
            Some(TargetSpecifier::GoogleGrpc(_)) | None => {
                cx.warn(
                    diag,
                    "an OpenTelemetry grpc_service without envoy_grpc is not supported; no spans \
                     are made",
                );
                return None;
            }
        };
        let (host, port) = dial(cx, &eg.cluster_name, None, diag)?;
        Collector {
            protocol: CollectorProtocol::OtlpGrpc,
            host,
            port,
            path: String::new(),
            timeout: g
                .timeout
                .as_ref()
                .and_then(duration)
                .unwrap_or(DEFAULT_TIMEOUT),
            headers: g.initial_metadata.iter().map(header).collect(),
        }
    } else if let Some(h) = &o.http_service {
        http_collector(cx, CollectorProtocol::OtlpHttp, h, diag)?
    } else {
        let what = o.exporter.as_ref().map_or("no exporter".to_string(), |e| {
            format!("exporter {} is not supported", e.name)
        });
        cx.warn(
            diag,
            format!("OpenTelemetry provider with {what}; no spans are made"),
        );
        return None;
    };
    let service = if o.service_name.is_empty() {
        OTEL_DEFAULT_SERVICE.to_string()
    } else {
        o.service_name.clone()
    };
    Some((collector, service))
}

/// Zipkin (JSON v2 over HTTP), and the service name istiod's tags imply.
fn zipkin_collector(
    cx: &Ctx<'_>,
    z: &ZipkinConfig,
    tags: &[CustomTag],
    diag: &mut Diag,
) -> Option<(Collector, String)> {
    match CollectorEndpointVersion::try_from(z.collector_endpoint_version) {
        Ok(CollectorEndpointVersion::HttpJson) => {}
        other => cx.warn(
            diag,
            format!(
                "Zipkin collector_endpoint_version {} is not supported; spans are sent as JSON (v2)",
                other.map_or_else(|_| z.collector_endpoint_version.to_string(), |v| {
                    v.as_str_name().to_string()
                })
            ),
        ),
    }
    if z.trace_context_option == TraceContextOption::UseB3WithW3cPropagation as i32 {
        cx.warn(
            diag,
            "Zipkin trace_context_option USE_B3_WITH_W3C_PROPAGATION is not supported; ignored",
        );
    }
    let collector = match &z.collector_service {
        Some(h) => http_collector(cx, CollectorProtocol::Zipkin, h, diag)?,
        None => {
            let (host, port) = dial(cx, &z.collector_cluster, None, diag)?;
            let path = if z.collector_endpoint.is_empty() {
                "/".to_string()
            } else {
                z.collector_endpoint.clone()
            };
            Collector {
                protocol: CollectorProtocol::Zipkin,
                host,
                port,
                path,
                timeout: DEFAULT_TIMEOUT,
                headers: Vec::new(),
            }
        }
    };
    let literal = |name: &str| {
        tags.iter().find_map(|t| match &t.value {
            TagValue::Literal(v) if t.name == name && !v.is_empty() && v != "unknown" => {
                Some(v.as_str())
            }
            _ => None,
        })
    };
    let service = match (
        literal("istio.canonical_service"),
        literal("istio.namespace"),
    ) {
        (Some(s), Some(ns)) => format!("{s}.{ns}"),
        _ => String::new(),
    };
    Some((collector, service))
}

/// An `HttpService` (OTLP/HTTP, Zipkin 1.29+): cluster, URI, timeout, headers.
fn http_collector(
    cx: &Ctx<'_>,
    protocol: CollectorProtocol,
    h: &HttpService,
    diag: &mut Diag,
) -> Option<Collector> {
    let Some(uri) = &h.http_uri else {
        cx.warn(diag, "http_service without http_uri; no spans are made");
        return None;
    };
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) => c.as_str(),
        None => "",
    };
    let (authority, path) = split_uri(&uri.uri);
    let (host, port) = dial(cx, cluster, Some(authority), diag)?;
    Some(Collector {
        protocol,
        host,
        port,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        timeout: uri
            .timeout
            .as_ref()
            .and_then(duration)
            .unwrap_or(DEFAULT_TIMEOUT),
        headers: h
            .request_headers_to_add
            .iter()
            .filter_map(|o| o.header.as_ref().map(header))
            .collect(),
    })
}

/// A URI's authority and path (`http://h:1/p`, `h/p`: istiod writes both shapes).
fn split_uri(uri: &str) -> (&str, &str) {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .unwrap_or(uri);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// Host and port of a collector: from its istiod cluster name, else from the URI's authority.
fn dial(
    cx: &Ctx<'_>,
    cluster: &str,
    authority: Option<&str>,
    diag: &mut Diag,
) -> Option<(String, u16)> {
    if let Some(cn) = ClusterName::parse(cluster) {
        return Some((cn.host().to_string(), cn.port));
    }
    let from_uri = authority.and_then(|a| {
        let (host, port) = a.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then(|| (host.to_string(), port.parse::<u16>().ok()))
    });
    match from_uri {
        Some((host, Some(port))) => Some((host, port)),
        _ => {
            cx.warn(
                diag,
                format!(
                    "collector cluster {cluster:?} is not an istiod service cluster \
                     (outbound|<port>||<host>) and no URI names a port; no spans are made"
                ),
            );
            None
        }
    }
}

fn header(h: &HeaderValue) -> (String, String) {
    let value = if h.value.is_empty() && !h.raw_value.is_empty() {
        String::from_utf8_lossy(&h.raw_value).into_owned()
    } else {
        h.value.clone()
    };
    (h.key.clone(), value)
}

/// The tags that can be expressed, in their order; the others named in one warning.
fn custom_tags(cx: &Ctx<'_>, t: &HcmTracing, diag: &mut Diag) -> Vec<CustomTag> {
    let mut out = Vec::with_capacity(t.custom_tags.len());
    let mut left_out = Vec::new();
    let default = |d: &str| (!d.is_empty()).then(|| d.to_string());
    for tag in &t.custom_tags {
        let value = match &tag.r#type {
            Some(TagType::Literal(l)) => TagValue::Literal(l.value.clone()),
            Some(TagType::Environment(e)) => TagValue::Environment {
                name: e.name.clone(),
                default: default(&e.default_value),
            },
            Some(TagType::RequestHeader(h)) => TagValue::RequestHeader {
                name: h.name.to_ascii_lowercase(),
                default: default(&h.default_value),
            },
            Some(TagType::Value(v)) if !v.contains('%') => TagValue::Literal(v.clone()),
            Some(TagType::Metadata(_) | TagType::Value(_)) | None => {
                left_out.push(tag.tag.as_str());
                continue;
            }
        };
        out.push(CustomTag {
            name: tag.tag.clone(),
            value,
        });
    }
    if !left_out.is_empty() {
        cx.warn(
            diag,
            format!(
                "custom tags {left_out:?} read request metadata (istiod's authorization dry-run \
                 tags) or a format string, which are not supported; left out"
            ),
        );
    }
    out
}
