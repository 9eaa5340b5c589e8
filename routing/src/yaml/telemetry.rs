//! `Telemetry` documents (telemetry.istio.io): which of them reach this waypoint, and the access
//! logging and tracing they add up to, bound to meshConfig's providers ([`MeshTelemetry`]).
//!
//! Levels, most general first, as istiod's `pilot/pkg/model/telemetry.go` (1.26) orders them:
//! meshConfig's defaults, the root namespace's Telemetry without a selector, this waypoint's
//! namespace's one, and those whose `targetRefs` name this waypoint's Gateway (or the
//! `istio-waypoint` GatewayClass, from the root namespace). A more specific level's providers
//! replace the inherited ones; its sampling and span-reporting switch override; custom tags
//! merge by name. Entries whose `match.mode` is `CLIENT` are not applied: istiod builds a
//! waypoint's connection manager as the server side of the tunnel.
//!
//! Telemetry is not access policy: a Telemetry that cannot be applied is left out with a
//! warning naming it, and the others still apply.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::diag::Diag;
use super::mesh_config::{MeshTelemetry, Provider};
use super::{DocCtx, WaypointRef};
use crate::authz::istio::TargetRef;
use crate::error::DocRef;
use crate::telemetry::{AccessLogSink, CustomTag, TagValue, TelemetryConfig, Tracing};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Spec {
    selector: Option<serde_json::Value>,
    target_ref: Option<TargetRef>,
    target_refs: Option<Vec<TargetRef>>,
    #[serde(default)]
    tracing: Vec<TracingY>,
    #[serde(default)]
    access_logging: Vec<AccessLoggingY>,
    /// Metric overrides: not applied (warned).
    metrics: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderRef {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchY {
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TracingY {
    #[serde(rename = "match")]
    matches: Option<MatchY>,
    #[serde(default)]
    providers: Vec<ProviderRef>,
    random_sampling_percentage: Option<f64>,
    disable_span_reporting: Option<bool>,
    #[serde(default)]
    custom_tags: BTreeMap<String, CustomTagY>,
    use_request_id_for_trace_sampling: Option<bool>,
    enable_istio_tags: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CustomTagY {
    literal: Option<LiteralY>,
    environment: Option<FromY>,
    header: Option<FromY>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteralY {
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FromY {
    name: String,
    default_value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessLoggingY {
    #[serde(rename = "match")]
    matches: Option<MatchY>,
    #[serde(default)]
    providers: Vec<ProviderRef>,
    disabled: Option<bool>,
    filter: Option<FilterY>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterY {
    expression: String,
}

#[derive(Debug)]
pub(crate) struct TelemetryIr {
    at: DocRef,
    namespace: String,
    spec: Spec,
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<TelemetryIr> {
    let spec: Spec = super::parse_optional_spec(ctx, diag)
        .ok()?
        .unwrap_or_default();
    // Shapes checked here so that `waypoint validate` reports them; they are errors of the
    // document (as any field of the wrong shape).
    for (i, t) in spec.tracing.iter().enumerate() {
        if let Some(p) = t.random_sampling_percentage {
            if !(0.0..=100.0).contains(&p) {
                diag.error(
                    &ctx.at,
                    Some(&format!("spec.tracing[{i}].randomSamplingPercentage")),
                    format!("{p} is not a percentage (0 to 100)"),
                );
                return None;
            }
        }
        for (name, tag) in &t.custom_tags {
            if custom_tag(name, tag).is_none() {
                diag.error(
                    &ctx.at,
                    Some(&format!("spec.tracing[{i}].customTags.{name}")),
                    "needs exactly one of literal, environment or header",
                );
                return None;
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        if let Some(f) = &a.filter {
            if let Err(e) = cel::Program::compile(&f.expression) {
                diag.error(
                    &ctx.at,
                    Some(&format!("spec.accessLogging[{i}].filter.expression")),
                    format!("{:?} is not a CEL expression: {e}", f.expression),
                );
                return None;
            }
        }
    }
    if spec.metrics.is_some() {
        diag.warn(
            &ctx.at,
            Some("spec.metrics"),
            "metric overrides are not supported yet; the standard Istio metrics are kept",
        );
    }
    Some(TelemetryIr {
        at: ctx.at.clone(),
        namespace: ctx.namespace.clone(),
        spec,
    })
}

fn custom_tag(name: &str, t: &CustomTagY) -> Option<CustomTag> {
    let value = match (&t.literal, &t.environment, &t.header) {
        (Some(l), None, None) => TagValue::Literal(l.value.clone()),
        (None, Some(e), None) => TagValue::Environment {
            name: e.name.clone(),
            default: e.default_value.clone(),
        },
        (None, None, Some(h)) => TagValue::RequestHeader {
            name: h.name.to_ascii_lowercase(),
            default: h.default_value.clone(),
        },
        _ => return None,
    };
    Some(CustomTag {
        name: name.to_string(),
        value,
    })
}

/// Why a Telemetry does not apply to this waypoint (warned, and the Telemetry left out).
#[derive(Debug, thiserror::Error)]
enum NotForThisWaypoint {
    #[error(
        "selects workloads (sidecars); a waypoint takes a Telemetry of its namespace, of the \
         root namespace, or one whose targetRefs name it"
    )]
    Selector,
    #[error("applies to namespace {namespace}, not this waypoint's ({waypoint})")]
    OtherNamespace { namespace: String, waypoint: String },
    #[error(
        "its targetRefs do not name this waypoint (Gateway {namespace}/{name}); a Telemetry for \
         services is not supported yet"
    )]
    NotTargeted { namespace: String, name: String },
}

/// Where a Telemetry applies, from the most general level (0) to this waypoint's own (2).
fn level(ir: &TelemetryIr, waypoint: &WaypointRef) -> Result<usize, NotForThisWaypoint> {
    if ir.spec.selector.is_some() {
        return Err(NotForThisWaypoint::Selector);
    }
    let targets: Vec<&TargetRef> = ir
        .spec
        .target_refs
        .iter()
        .flatten()
        .chain(&ir.spec.target_ref)
        .collect();
    if targets.is_empty() {
        return if ir.namespace == waypoint.root_namespace {
            Ok(0)
        } else if ir.namespace == waypoint.namespace {
            Ok(1)
        } else {
            Err(NotForThisWaypoint::OtherNamespace {
                namespace: ir.namespace.clone(),
                waypoint: waypoint.namespace.clone(),
            })
        };
    }
    for t in targets {
        let ns = t.namespace.as_deref().unwrap_or(&ir.namespace);
        match (t.group.as_str(), t.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway")
                if t.name == waypoint.name
                    && ns == waypoint.namespace
                    && ir.namespace == waypoint.namespace =>
            {
                return Ok(2)
            }
            ("gateway.networking.k8s.io", "GatewayClass")
                if t.name == "istio-waypoint" && ir.namespace == waypoint.root_namespace =>
            {
                return Ok(2)
            }
            _ => {}
        }
    }
    Err(NotForThisWaypoint::NotTargeted {
        namespace: waypoint.namespace.clone(),
        name: waypoint.name.clone(),
    })
}

fn server_side(m: &Option<MatchY>) -> bool {
    !matches!(m.as_ref().and_then(|m| m.mode.as_deref()), Some("CLIENT"))
}

/// The access logging and tracing the Telemetry documents and meshConfig add up to for this
/// waypoint.
pub(crate) fn resolve(
    items: Vec<TelemetryIr>,
    waypoint: &WaypointRef,
    mesh: &MeshTelemetry,
    diag: &mut Diag,
) -> TelemetryConfig {
    let mut levels: [Option<TelemetryIr>; 3] = [None, None, None];
    for ir in items {
        match level(&ir, waypoint) {
            Ok(l) => match &levels[l] {
                Some(first) => diag.warn(
                    &ir.at,
                    None,
                    format!(
                        "{} already applies at this level; istiod keeps one (the oldest); \
                         not applied here",
                        first.at.name.as_deref().unwrap_or("another Telemetry")
                    ),
                ),
                None => levels[l] = Some(ir),
            },
            Err(why) => diag.warn(&ir.at, None, format!("{why}; not applied here")),
        }
    }
    let mut out = TelemetryConfig::default();
    // Access logging: provider name → filter, for the providers on.
    let mut logs: Option<Vec<(String, Option<String>)>> = if !mesh.default_access_logging.is_empty()
    {
        Some(
            mesh.default_access_logging
                .iter()
                .map(|p| (p.clone(), None))
                .collect(),
        )
    } else {
        mesh.access_log_file
            .as_ref()
            .map(|_| vec![("envoy".to_string(), None)])
    };
    let mut trace_providers = mesh.default_tracing.clone();
    let mut sampling = None;
    let mut disabled = false;
    let mut tags: BTreeMap<String, CustomTag> = BTreeMap::new();
    let mut trace_at: Option<DocRef> = None;
    for ir in levels.into_iter().flatten() {
        out.sources.push(
            ir.at
                .name
                .clone()
                .map_or_else(|| ir.at.to_string(), |n| format!("Telemetry {n}")),
        );
        let entries: Vec<&AccessLoggingY> = ir
            .spec
            .access_logging
            .iter()
            .filter(|a| server_side(&a.matches))
            .collect();
        if !entries.is_empty() {
            let before = logs.take().unwrap_or_default();
            let mut now: Vec<(String, Option<String>)> = Vec::new();
            for a in entries {
                let names: Vec<String> = if a.providers.is_empty() {
                    default_log_providers(mesh)
                } else {
                    a.providers.iter().map(|p| p.name.clone()).collect()
                };
                for name in names {
                    now.retain(|(n, _)| *n != name);
                    if a.disabled == Some(true) {
                        continue;
                    }
                    let filter = a.filter.as_ref().map(|f| f.expression.clone()).or_else(|| {
                        before
                            .iter()
                            .find(|(n, _)| *n == name)
                            .and_then(|(_, f)| f.clone())
                    });
                    now.push((name, filter));
                }
            }
            logs = Some(now);
        }
        if let Some(t) = ir.spec.tracing.iter().find(|t| server_side(&t.matches)) {
            if !t.providers.is_empty() {
                trace_providers = t.providers.iter().map(|p| p.name.clone()).collect();
            }
            if t.random_sampling_percentage.is_some() {
                sampling = t.random_sampling_percentage;
            }
            if let Some(d) = t.disable_span_reporting {
                disabled = d;
            }
            for (name, tag) in &t.custom_tags {
                if let Some(tag) = custom_tag(name, tag) {
                    tags.insert(name.clone(), tag);
                }
            }
            if t.use_request_id_for_trace_sampling.is_some() || t.enable_istio_tags.is_some() {
                diag.warn(
                    &ir.at,
                    Some("spec.tracing"),
                    "useRequestIdForTraceSampling and enableIstioTags are not supported yet; \
                     ignored",
                );
            }
            trace_at = Some(ir.at.clone());
        }
    }
    let warn_at = |diag: &mut Diag, at: &Option<DocRef>, msg: String| match at {
        Some(at) => diag.warn(at, None, msg),
        None => diag.warn(&DocRef::default(), None, format!("meshConfig: {msg}")),
    };
    out.access_logs = logs.map(|logs| {
        logs.into_iter()
            .filter_map(|(name, filter)| {
                let sink = if name == "envoy" {
                    mesh.envoy_sink()
                } else {
                    match mesh.providers.get(&name) {
                        Some(Provider::AccessLog { path, format }) => AccessLogSink {
                            provider: name.clone(),
                            format: format.clone(),
                            filter: None,
                            path: *path,
                        },
                        other => {
                            let why = provider_problem(mesh, &name, other, "access-log");
                            diag.warn(&DocRef::default(), None, why);
                            return None;
                        }
                    }
                };
                Some(AccessLogSink { filter, ..sink })
            })
            .collect()
    });
    if disabled {
        return out;
    }
    let Some(first) = trace_providers.first() else {
        return out;
    };
    if trace_providers.len() > 1 {
        warn_at(
            diag,
            &trace_at,
            format!(
                "tracing names {} providers; only the first, {first}, is used (as istiod does)",
                trace_providers.len()
            ),
        );
    }
    match mesh.providers.get(first) {
        Some(Provider::Tracing {
            collector,
            max_tag_length,
        }) => {
            out.tracing = Some(Tracing {
                provider: first.clone(),
                collector: collector.clone(),
                service_name: format!("{}.{}", waypoint.name, waypoint.namespace),
                sampling_percent: sampling.unwrap_or(mesh.default_sampling_percent),
                custom_tags: tags.into_values().collect(),
                max_tag_length: *max_tag_length,
            });
        }
        other => {
            let why = provider_problem(mesh, first, other, "tracing");
            warn_at(diag, &trace_at, format!("{why}; no spans are made"));
        }
    }
    out
}

/// Istio: an entry without providers uses meshConfig's default ones, else `envoy`.
fn default_log_providers(mesh: &MeshTelemetry) -> Vec<String> {
    if mesh.default_access_logging.is_empty() {
        vec!["envoy".to_string()]
    } else {
        mesh.default_access_logging.clone()
    }
}

fn provider_problem(
    mesh: &MeshTelemetry,
    name: &str,
    found: Option<&Provider>,
    wanted: &str,
) -> String {
    match (found, mesh.other_providers.get(name)) {
        (Some(_), _) => format!("provider {name} is not a {wanted} provider"),
        (None, Some(kind)) => format!(
            "provider {name} is a {kind} provider, which this waypoint does not apply as \
             {wanted}"
        ),
        (None, None) => {
            format!("provider {name} is not in meshConfig extensionProviders (--mesh-config)")
        }
    }
}
