//! Envoy `Route` → model [`HttpRoute`] (one Envoy route per Istio match
//! block, as istiod's `route/route.go` `TranslateRoute` emits them).

use super::matchers::{self, Issue};
use super::names::ClusterName;
use super::{decode_any, duration, At, Diag};
use crate::actions::{
    Abort, Cors, DirectResponse, Fault, FaultAbort, FaultDelay, HeaderOps, Headers, Mirror,
    Percent, Redirect, RedirectPath, RedirectPort, RegexRewrite, RetryOn, RetryPolicy, Rewrite,
    RouteAction, UnmatchedPreflights, UriRewrite, GRPC_STATUS_CODES,
};
use crate::model::{HttpRoute, RouteDestination};
use crate::policy::{HashKey, HttpCookie};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, FilterConfig, RedirectAction, RetryPolicy as EnvoyRetryPolicy, Route,
    RouteAction as EnvoyRouteAction,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::Any;
use std::collections::HashMap;
use std::time::Duration;
mod actions;
pub(crate) use actions::fault;
use actions::{cors, direct_response, headers, redirect_action, runtime_fraction, CorsTranslated};
mod forward;
use forward::{hash_key, retry_policy, route_action};

/// Envoy's route timeout when `timeout` is not set.
const ENVOY_DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the route translation needs to know about clusters.
pub(crate) struct RouteCtx<'a> {
    /// Every cluster name of the CDS state.
    pub(crate) known_clusters: &'a super::chain::Known<'a>,
    /// Unknown clusters are errors (`validate_clusters`).
    pub(crate) validate_clusters: bool,
    /// The service port the route table belongs to.
    pub(crate) port: u16,
    /// The HCM's fault filter defaults (filter-level config).
    pub(crate) default_fault: Option<&'a Fault>,
    /// The virtual host's retry policy (used when a route has none).
    pub(crate) vhost_retry: Option<&'a EnvoyRetryPolicy>,
    /// The virtual host's `typed_per_filter_config` (authorization overrides
    /// in it make every route answer 403, see [`authz_override`]).
    pub(crate) vhost_filters: Option<&'a HashMap<String, Any>>,
}

/// One translated route.
pub(crate) struct Translated {
    pub(crate) route: HttpRoute,
    /// `(namespace, name)` of the VirtualService (route metadata).
    pub(crate) virtual_service: Option<(String, String)>,
    /// Hash keys the route asks of its destination clusters.
    pub(crate) hash_keys: Vec<(String, HashKey)>,
}

/// Translate one route. `None`: left out (a warning or rejection says why).
pub(crate) fn translate(
    r: &Route,
    fallback_name: &str,
    ctx: &RouteCtx<'_>,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<Translated> {
    let name = if r.name.is_empty() {
        fallback_name.to_string()
    } else {
        r.name.clone()
    };
    let skip = |diag: &mut Diag, issue: Issue| {
        match issue {
            Issue::Unsupported(what) => at.warn(
                diag,
                format!("route {name}: {what} is not supported; route left out"),
            ),
            Issue::Invalid(why) => at.reject(diag, format!("route {name}: {why}")),
        }
        None
    };
    let mut block = match r.r#match.as_ref().map(matchers::route_match) {
        Some(Ok(m)) => m,
        Some(Err(issue)) => return skip(diag, issue),
        None => return skip(diag, Issue::Invalid("route without match".into())),
    };
    // Each route table belongs to one service port.
    block.port = Some(ctx.port);
    let mut route = HttpRoute::new(name.clone(), vec![block], Vec::new());
    let mut hash_keys = Vec::new();
    route.headers = match headers(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
    ) {
        Ok(h) => h,
        Err(issue) => return skip(diag, issue),
    };
    match &r.action {
        Some(Action::Route(action)) => {
            if let Err(issue) =
                route_action(action, &name, ctx, &mut route, &mut hash_keys, at, diag)
            {
                return skip(diag, issue);
            }
        }
        Some(Action::Redirect(redirect)) => match redirect_action(redirect) {
            Ok(rd) => {
                route.action = RouteAction::Redirect(Box::new(rd));
                route.retries = RetryPolicy::disabled().shared();
            }
            Err(issue) => return skip(diag, issue),
        },
        Some(Action::DirectResponse(dr)) => match direct_response(dr) {
            Ok(d) => {
                route.action = RouteAction::DirectResponse(Box::new(d));
                route.retries = RetryPolicy::disabled().shared();
            }
            Err(issue) => return skip(diag, issue),
        },
        Some(Action::FilterAction(_)) => {
            return skip(diag, Issue::Unsupported("filter_action".into()))
        }
        Some(Action::NonForwardingAction(_)) => {
            return skip(diag, Issue::Unsupported("non_forwarding_action".into()))
        }
        None => return skip(diag, Issue::Invalid("route without action".into())),
    }
    let mut overrides = Vec::new();
    for (filter, any) in ctx.vhost_filters.map(sorted).unwrap_or_default() {
        if let Some(what) = authz_override(filter, any) {
            overrides.push(format!("virtual host {what}"));
        }
    }
    for (filter, any) in sorted(&r.typed_per_filter_config) {
        if let Some(what) = authz_override(filter, any) {
            overrides.push(what);
            continue;
        }
        match per_filter(any) {
            Ok(PerFilter::Fault(f)) => route.fault = f.map(Box::new),
            Ok(PerFilter::Cors(c)) => {
                for note in &c.ignored {
                    at.warn(
                        diag,
                        format!("route {name}: CORS {note} is not supported; ignored"),
                    );
                }
                route.cors = c.policy.map(Box::new);
            }
            Ok(PerFilter::Ignored(what)) => at.warn(
                diag,
                format!(
                    "route {name}: per-route config of {filter} ({what}) is not supported; ignored"
                ),
            ),
            Ok(PerFilter::Disabled) => {}
            Err(issue) => return skip(diag, issue),
        }
    }
    if route.fault.is_none() && r.typed_per_filter_config.is_empty() {
        route.fault = ctx.default_fault.cloned().map(Box::new);
    }
    if !overrides.is_empty() {
        deny_route(&mut route, &name, &overrides.join(", "), at, diag);
    }
    if !r.route_specifiers.is_empty() {
        at.warn(
            diag,
            format!("route {name}: route_specifiers are not supported; ignored"),
        );
    }
    // Kept as long as the snapshot: without the room pushes left (one destination had four
    // slots of ~128 bytes).
    route.destinations.shrink_to_fit();
    Some(Translated {
        route,
        virtual_service: virtual_service_of(r),
        hash_keys,
    })
}

/// A per-route (or per-virtual-host) config of an access-control filter
/// (`RBACPerRoute`, `ExtAuthzPerRoute`, jwt_authn's `PerRouteConfig`, Wasm,
/// …) that is not just `disabled`: it can replace the filter's policies for
/// this route, which this proxy cannot do. `Some(what)` names it.
pub(crate) fn authz_override(filter: &str, any: &Any) -> Option<String> {
    if !super::access::access_control(filter, &any.type_url) {
        return None;
    }
    if let Some(Ok(fc)) = decode_any::<FilterConfig>(any) {
        if fc.disabled {
            // Disabling authorization for a route: enforcing it anyway is stricter.
            return None;
        }
    }
    Some(format!("per-filter config of {filter} ({})", any.type_url))
}

/// Never fail open: a route whose authorization this proxy cannot reproduce
/// answers as an Envoy RBAC denial does (403 `RBAC: access denied`).
fn deny_route(route: &mut HttpRoute, name: &str, what: &str, at: At<'_>, diag: &mut Diag) {
    at.warn(
        diag,
        format!("route {name}: {what} cannot be enforced by this proxy; the route answers 403 (never fail open)"),
    );
    route.action = RouteAction::DirectResponse(Box::new(DirectResponse {
        status: 403,
        body: Some(b"RBAC: access denied".to_vec()),
    }));
    route.retries = RetryPolicy::disabled().shared();
    route.fault = None;
}

fn sorted(map: &HashMap<String, Any>) -> Vec<(&String, &Any)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// `filter_metadata.istio.config` = `/apis/<group>/<version>/namespaces/<ns>/<kind>/<name>`.
fn virtual_service_of(r: &Route) -> Option<(String, String)> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let istio = r.metadata.as_ref()?.filter_metadata.get("istio")?;
    let Some(Kind::StringValue(path)) = istio.fields.get("config")?.kind.as_ref() else {
        return None;
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis", _, _, "namespaces", ns, _, name] => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

enum PerFilter {
    Fault(Option<Fault>),
    Cors(CorsTranslated),
    Disabled,
    Ignored(String),
}

fn per_filter(any: &Any) -> Result<PerFilter, Issue> {
    if let Some(fc) = decode_any::<FilterConfig>(any) {
        let fc = fc.map_err(|e| Issue::Invalid(e.to_string()))?;
        if fc.disabled {
            return Ok(PerFilter::Disabled);
        }
        return match &fc.config {
            Some(inner) => per_filter(inner),
            None => Ok(PerFilter::Disabled),
        };
    }
    if let Some(f) = decode_any::<HttpFault>(any) {
        return Ok(PerFilter::Fault(fault(
            &f.map_err(|e| Issue::Invalid(e.to_string()))?,
        )?));
    }
    if let Some(c) = decode_any::<CorsPolicy>(any) {
        return Ok(PerFilter::Cors(cors(
            &c.map_err(|e| Issue::Invalid(e.to_string()))?,
        )?));
    }
    Ok(PerFilter::Ignored(any.type_url.clone()))
}

/// The default route istiod builds when no VirtualService applies
/// (`route.BuildDefaultHTTPOutboundRoute`): name `default`, prefix `/`, to
/// the chain's own cluster, no VirtualService metadata.
pub(crate) fn is_default_route(r: &Route, own_cluster: &str) -> bool {
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    let Some(m) = &r.r#match else { return false };
    let plain = matches!(&m.path_specifier, Some(PathSpecifier::Prefix(p)) if p == "/")
        && m.headers.is_empty()
        && m.query_parameters.is_empty();
    let to_own = matches!(&r.action, Some(Action::Route(a))
        if matches!(&a.cluster_specifier, Some(ClusterSpecifier::Cluster(c)) if c == own_cluster)
            && a.prefix_rewrite.is_empty()
            && a.regex_rewrite.is_none()
            && a.host_rewrite_specifier.is_none()
            && a.request_mirror_policies.is_empty());
    plain
        && to_own
        && virtual_service_of(r).is_none()
        && r.request_headers_to_add.is_empty()
        && r.request_headers_to_remove.is_empty()
        && r.response_headers_to_add.is_empty()
        && r.response_headers_to_remove.is_empty()
        && r.typed_per_filter_config.is_empty()
}

/// Only for the default route: its retry policy as written (istiod 1.24 …
/// 1.30.2: `reset-before-request`, 2 retries; 1.22/1.23: none; 1.30.3+: the
/// mesh default). `None` for a route that forwards nowhere.
pub(crate) fn default_route_retries(
    r: &Route,
    ctx: &RouteCtx<'_>,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<RetryPolicy> {
    let Some(Action::Route(a)) = &r.action else {
        return None;
    };
    match a.retry_policy.as_ref().or(ctx.vhost_retry) {
        None => Some(RetryPolicy::disabled()),
        Some(p) => Some(retry_policy(p, "default", at, diag)),
    }
}

/// Only for the default route: its hash policy (a DestinationRule
/// `consistentHash` applied to the service's own cluster).
pub(crate) fn default_route_hash(r: &Route) -> Option<HashKey> {
    match &r.action {
        Some(Action::Route(a)) => a.hash_policy.first().and_then(|h| hash_key(h).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
