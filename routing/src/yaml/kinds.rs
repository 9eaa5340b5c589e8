//! What the loader does with a document of a given kind: enforce it, skip it
//! with a warning, or refuse the whole configuration (an error).
//!
//! A kind the waypoint would have to enforce but cannot yet (an
//! `AuthorizationPolicy`, an `EnvoyFilter`, a `GRPCRoute`, …) is an error:
//! running without it would silently serve traffic the config says to treat
//! otherwise (for the security kinds: fail open). A kind the waypoint does
//! not apply by design, or that is not mesh config at all, is skipped.

use super::{schema, GATEWAY_GROUP};

/// The kinds the loader turns into routing state.
pub(super) const ENFORCED: &[&str] = &[
    "ServiceEntry",
    "WorkloadEntry",
    "VirtualService",
    "DestinationRule",
    "HTTPRoute",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Telemetry",
];

/// Istio kinds a waypoint does not apply by design, and why.
const BY_DESIGN: &[(&str, &str)] = &[
    ("PeerAuthentication", "ztunnel enforces it in ambient mode"),
    ("Sidecar", "it configures sidecar proxies only"),
    (
        "WorkloadGroup",
        "it is the template istiod creates WorkloadEntries from; give the WorkloadEntries instead",
    ),
];

/// Kinds a waypoint would have to apply but this one cannot yet.
const NOT_YET: &[&str] = &[
    // networking.istio.io (`Gateway` only under an Istio group: see `lookup`)
    "EnvoyFilter",
    "ProxyConfig",
    // extensions.istio.io
    "WasmPlugin",
    // gateway.networking.k8s.io
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
    "BackendTLSPolicy",
    "BackendLBPolicy",
];

/// Kinds of the Istio and Gateway API groups that are not mesh routing
/// config (they configure ingress gateways or the installation).
const NOT_MESH: &[&str] = &["GatewayClass", "ReferenceGrant", "IstioOperator"];

/// Every kind named above, for "did you mean …?".
const ALL: &[&str] = &[
    "ServiceEntry",
    "WorkloadEntry",
    "VirtualService",
    "DestinationRule",
    "HTTPRoute",
    "PeerAuthentication",
    "Sidecar",
    "WorkloadGroup",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Gateway",
    "EnvoyFilter",
    "ProxyConfig",
    "Telemetry",
    "WasmPlugin",
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
    "BackendTLSPolicy",
    "BackendLBPolicy",
    "GatewayClass",
    "ReferenceGrant",
    "IstioOperator",
];

/// What to do with a document.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Parse and apply it.
    Enforced,
    /// Skip it with this warning.
    Skip(String),
    /// Refuse the configuration with this error; `kind_field` when the
    /// `kind` value itself is wrong.
    Refuse { message: String, kind_field: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `*.istio.io`
    Istio,
    /// `gateway.networking.k8s.io`
    GatewayApi,
    /// Kubernetes core or another project's group.
    Other,
    /// No `apiVersion`: could be any.
    Unknown,
}

fn family(api_version: Option<&str>) -> Family {
    match api_version.map(|v| v.split_once('/').map_or("", |(g, _)| g)) {
        None => Family::Unknown,
        Some(g) if g == "istio.io" || g.ends_with(".istio.io") => Family::Istio,
        Some(GATEWAY_GROUP) => Family::GatewayApi,
        Some(_) => Family::Other,
    }
}

fn skipped(kind: &str) -> Class {
    Class::Skip(format!("kind {kind} is not supported; document skipped"))
}

fn refuse(message: String) -> Class {
    Class::Refuse {
        message,
        kind_field: false,
    }
}

/// A kind of the lists above, under an Istio, Gateway API or no group.
fn lookup(kind: &str, family: Family) -> Option<Class> {
    if kind == "Gateway" {
        return Some(if family == Family::Istio {
            refuse(format!("kind {kind} is not supported by this waypoint yet"))
        } else {
            skipped(kind)
        });
    }
    if let Some((_, why)) = BY_DESIGN.iter().find(|(k, _)| *k == kind) {
        return Some(Class::Skip(format!(
            "kind {kind} is not applied by a waypoint ({why}); document skipped"
        )));
    }
    if NOT_YET.contains(&kind) {
        return Some(refuse(format!(
            "kind {kind} is not supported by this waypoint yet"
        )));
    }
    NOT_MESH.contains(&kind).then(|| skipped(kind))
}

/// Classify a document by its `apiVersion` group and `kind`. Enforced kinds
/// are enforced whatever the group (their `apiVersion` is checked later).
pub(super) fn classify(api_version: Option<&str>, kind: &str) -> Class {
    if ENFORCED.contains(&kind) {
        return Class::Enforced;
    }
    let family = family(api_version);
    if family != Family::Other {
        if let Some(class) = lookup(kind, family) {
            return class;
        }
    }
    if let Some(near) = schema::suggest(kind, ALL).filter(|k| *k != kind) {
        return Class::Refuse {
            message: format!("unknown kind {kind} (did you mean {near}?)"),
            kind_field: true,
        };
    }
    match family {
        Family::Istio | Family::GatewayApi => Class::Refuse {
            message: format!("unknown kind {kind}"),
            kind_field: true,
        },
        Family::Other | Family::Unknown => skipped(kind),
    }
}
