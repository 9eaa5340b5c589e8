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
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Envoy's route timeout when `timeout` is not set.
const ENVOY_DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the route translation needs to know about clusters.
pub(crate) struct RouteCtx<'a> {
    /// Every cluster name of the CDS state.
    pub(crate) known_clusters: &'a BTreeSet<String>,
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
                route.action = RouteAction::Redirect(rd);
                route.retries = RetryPolicy::disabled();
            }
            Err(issue) => return skip(diag, issue),
        },
        Some(Action::DirectResponse(dr)) => match direct_response(dr) {
            Ok(d) => {
                route.action = RouteAction::DirectResponse(d);
                route.retries = RetryPolicy::disabled();
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
            Ok(PerFilter::Fault(f)) => route.fault = f,
            Ok(PerFilter::Cors(c)) => {
                for note in &c.ignored {
                    at.warn(
                        diag,
                        format!("route {name}: CORS {note} is not supported; ignored"),
                    );
                }
                route.cors = c.policy;
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
        route.fault = ctx.default_fault.cloned();
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
    route.action = RouteAction::DirectResponse(DirectResponse {
        status: 403,
        body: Some(b"RBAC: access denied".to_vec()),
    });
    route.retries = RetryPolicy::disabled();
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
        let fc = fc.map_err(Issue::Invalid)?;
        if fc.disabled {
            return Ok(PerFilter::Disabled);
        }
        return match &fc.config {
            Some(inner) => per_filter(inner),
            None => Ok(PerFilter::Disabled),
        };
    }
    if let Some(f) = decode_any::<HttpFault>(any) {
        return Ok(PerFilter::Fault(fault(&f.map_err(Issue::Invalid)?)?));
    }
    if let Some(c) = decode_any::<CorsPolicy>(any) {
        return Ok(PerFilter::Cors(cors(&c.map_err(Issue::Invalid)?)?));
    }
    Ok(PerFilter::Ignored(any.type_url.clone()))
}

/// A per-route `CorsPolicy` translated: the policy (`None`: the filter is
/// off for this route) and the fields that had to be left out.
struct CorsTranslated {
    policy: Option<Cors>,
    ignored: Vec<&'static str>,
}

/// The CORS filter's per-route `CorsPolicy` (istiod `TranslateCORSPolicy`
/// writes it under `envoy.filters.http.cors`) → [`Cors`]. Envoy's list
/// fields are comma-joined strings; `max_age` is whole seconds; an unset
/// `forward_not_matching_preflights` forwards (Envoy's default).
fn cors(c: &CorsPolicy) -> Result<CorsTranslated, Issue> {
    let mut ignored = Vec::new();
    let enabled = match &c.filter_enabled {
        None => Percent::HUNDRED,
        Some(f) => {
            if !f.runtime_key.is_empty() {
                ignored.push("filter_enabled runtime_key");
            }
            fraction(f.default_value.as_ref()).min(Percent::HUNDRED)
        }
    };
    // shadow_enabled only evaluates without enforcing: nothing to do here.
    if enabled.is_zero() {
        return Ok(CorsTranslated {
            policy: None,
            ignored,
        });
    }
    if enabled != Percent::HUNDRED {
        return Err(Issue::Unsupported(format!(
            "CORS enabled for {enabled} of requests"
        )));
    }
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    let max_age = match c.max_age.trim() {
        "" => None,
        secs => match secs.parse::<u64>() {
            Ok(n) => Some(Duration::from_secs(n)),
            Err(_) => {
                ignored.push("max_age that is not whole seconds");
                None
            }
        },
    };
    if c.allow_private_network_access
        .as_ref()
        .is_some_and(|b| b.value)
    {
        ignored.push("allow_private_network_access");
    }
    let policy = Cors {
        allow_origins: c
            .allow_origin_string_match
            .iter()
            .map(matchers::string_matcher)
            .collect::<Result<_, _>>()?,
        allow_methods: list(&c.allow_methods),
        allow_headers: list(&c.allow_headers),
        expose_headers: list(&c.expose_headers),
        max_age,
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
        unmatched_preflights: match &c.forward_not_matching_preflights {
            Some(b) if !b.value => UnmatchedPreflights::Ignore,
            _ => UnmatchedPreflights::Forward,
        },
    };
    Ok(CorsTranslated {
        policy: Some(policy),
        ignored,
    })
}

/// An `HTTPFault` (route or filter level) → [`Fault`]; `None` when it has
/// neither delay nor abort.
pub(crate) fn fault(f: &HttpFault) -> Result<Option<Fault>, Issue> {
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fd)) => Some(FaultDelay {
                fixed_delay: duration(fd)
                    .ok_or_else(|| Issue::Invalid("negative fault delay".into()))?,
                percentage: fraction(d.percentage.as_ref()),
            }),
            Some(FaultDelaySecifier::HeaderDelay(_)) => {
                return Err(Issue::Unsupported("header-controlled fault delay".into()))
            }
            None => return Err(Issue::Invalid("fault delay without fixed_delay".into())),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let abort = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) if (200..600).contains(s) => Abort::Http(*s as u16),
                Some(ErrorType::HttpStatus(s)) => {
                    return Err(Issue::Invalid(format!(
                        "fault abort status {s} not in 200..600"
                    )))
                }
                Some(ErrorType::GrpcStatus(code)) => GRPC_STATUS_CODES
                    .iter()
                    .find(|(_, c)| u32::from(*c) == *code)
                    .and_then(|(n, _)| Abort::grpc(n))
                    .ok_or_else(|| Issue::Unsupported(format!("gRPC fault status {code}")))?,
                Some(ErrorType::HeaderAbort(_)) => {
                    return Err(Issue::Unsupported("header-controlled fault abort".into()))
                }
                None => return Err(Issue::Invalid("fault abort without error type".into())),
            };
            Some(FaultAbort {
                abort,
                percentage: fraction(a.percentage.as_ref()),
            })
        }
    };
    if f.max_active_faults.is_some()
        || !f.headers.is_empty()
        || !f.downstream_nodes.is_empty()
        || f.response_rate_limit.is_some()
    {
        return Err(Issue::Unsupported(
            "fault max_active_faults / headers / downstream_nodes / response_rate_limit".into(),
        ));
    }
    if delay.is_none() && abort.is_none() {
        return Ok(None);
    }
    Ok(Some(Fault { delay, abort }))
}

/// A `FractionalPercent` as a [`Percent`]; unset = 100 % (Envoy's default
/// for faults and mirrors).
fn fraction(p: Option<&FractionalPercent>) -> Percent {
    let Some(p) = p else {
        return Percent::HUNDRED;
    };
    // DenominatorType: HUNDRED = 0, TEN_THOUSAND = 1, MILLION = 2.
    let scale: u64 = match p.denominator {
        0 => 10_000,
        1 => 100,
        _ => 1,
    };
    let per_million = (u64::from(p.numerator) * scale).min(1_000_000) as u32;
    Percent::from_per_million(per_million)
}

fn runtime_fraction(p: Option<&RuntimeFractionalPercent>) -> Percent {
    match p {
        None => Percent::HUNDRED,
        Some(r) => fraction(r.default_value.as_ref()),
    }
}

/// Route or per-destination header operations.
fn headers(
    req_add: &[HeaderValueOption],
    req_remove: &[String],
    resp_add: &[HeaderValueOption],
    resp_remove: &[String],
) -> Result<Headers, Issue> {
    let mut out = Headers::default();
    let (set, add, authority) = split_ops(req_add)?;
    out.authority = authority;
    out.request = HeaderOps::new(set, add, req_remove.iter().cloned());
    let (set, add, host) = split_ops(resp_add)?;
    if host.is_some() {
        return Err(Issue::Unsupported("response host header".into()));
    }
    out.response = HeaderOps::new(set, add, resp_remove.iter().cloned());
    Ok(out)
}

type Ops = Vec<(String, String)>;

// `append` is deprecated but still sent by older control planes.
#[allow(deprecated)]
fn split_ops(list: &[HeaderValueOption]) -> Result<(Ops, Ops, Option<String>), Issue> {
    let (mut set, mut add, mut authority) = (Vec::new(), Vec::new(), None);
    for o in list {
        let Some(h) = &o.header else {
            return Err(Issue::Invalid("header option without header".into()));
        };
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| Issue::Unsupported(format!("non-UTF-8 value of header {}", h.key)))?
        };
        // `append` (deprecated) wins when set; else append_action
        // (APPEND_IF_EXISTS_OR_ADD = 0, ADD_IF_ABSENT = 1,
        // OVERWRITE_IF_EXISTS_OR_ADD = 2, OVERWRITE_IF_EXISTS = 3).
        let overwrite = match o.append.as_ref().map(|b| b.value) {
            Some(append) => !append,
            None => match o.append_action {
                0 => false,
                2 => true,
                other => {
                    return Err(Issue::Unsupported(format!(
                        "append_action {other} on header {}",
                        h.key
                    )))
                }
            },
        };
        let key = h.key.to_ascii_lowercase();
        if key == "host" || key == ":authority" {
            if overwrite || authority.is_none() {
                authority = Some(value);
            }
            continue;
        }
        if overwrite {
            set.push((key, value));
        } else {
            add.push((key, value));
        }
    }
    Ok((set, add, authority))
}

/// A cluster name → destination (`weight` to be filled in).
fn destination(
    cluster: &str,
    ctx: &RouteCtx<'_>,
    route: &str,
    at: At<'_>,
    diag: &mut Diag,
) -> Result<RouteDestination, Issue> {
    if !ctx.known_clusters.contains(cluster) {
        if ctx.validate_clusters {
            return Err(Issue::Invalid(format!("unknown cluster {cluster}")));
        }
        at.warn(
            diag,
            format!("route {route}: cluster {cluster} is not (yet) known; requests to it fail"),
        );
    }
    let (host, subset, port) = match ClusterName::parse(cluster) {
        // `outbound|…` (a service this waypoint does not serve) is routable like its own.
        Some(c) => (c.host, c.subset, Some(c.port)),
        None => {
            at.warn(
                diag,
                format!("route {route}: cluster {cluster} is not an istiod service cluster"),
            );
            (cluster.to_string(), None, None)
        }
    };
    Ok(RouteDestination {
        host,
        subset,
        port,
        weight: 100,
        headers: Headers::default(),
    })
}

// `total_weight` and `cors` are deprecated but still sent by older control planes.
#[allow(deprecated)]
fn route_action(
    a: &EnvoyRouteAction,
    name: &str,
    ctx: &RouteCtx<'_>,
    route: &mut HttpRoute,
    hash_keys: &mut Vec<(String, HashKey)>,
    at: At<'_>,
    diag: &mut Diag,
) -> Result<(), Issue> {
    let mut clusters = Vec::new();
    match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => {
            route
                .destinations
                .push(destination(c, ctx, name, at, diag)?);
            clusters.push(c.clone());
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut sum: u64 = 0;
            for cw in &w.clusters {
                let weight = cw.weight.as_ref().map_or(0, |v| v.value);
                sum += u64::from(weight);
                if weight == 0 {
                    continue;
                }
                let mut d = destination(&cw.name, ctx, name, at, diag)?;
                d.weight = weight;
                d.headers = headers(
                    &cw.request_headers_to_add,
                    &cw.request_headers_to_remove,
                    &cw.response_headers_to_add,
                    &cw.response_headers_to_remove,
                )?;
                if let Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)) =
                    &cw.host_rewrite_specifier
                {
                    d.headers.authority = Some(h.clone());
                }
                if !cw.typed_per_filter_config.is_empty() || !cw.cluster_header.is_empty() {
                    return Err(Issue::Unsupported(
                        "per-cluster filter config / cluster_header in weighted_clusters".into(),
                    ));
                }
                route.destinations.push(d);
                clusters.push(cw.name.clone());
            }
            if sum == 0 {
                return Err(Issue::Invalid("weighted_clusters weights sum to 0".into()));
            }
            if let Some(total) = &w.total_weight {
                if u64::from(total.value) != sum {
                    return Err(Issue::Invalid(format!(
                        "weighted_clusters weights sum to {sum}, total_weight is {}",
                        total.value
                    )));
                }
            }
            if sum > u64::from(u32::MAX) {
                return Err(Issue::Invalid("weighted_clusters weights overflow".into()));
            }
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(Issue::Unsupported("cluster_header".into()))
        }
        Some(_) => return Err(Issue::Unsupported("cluster specifier plugin".into())),
        None => return Err(Issue::Invalid("route action without cluster".into())),
    }
    route.timeout = match &a.timeout {
        None => Some(ENVOY_DEFAULT_ROUTE_TIMEOUT),
        Some(t) => match duration(t) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => return Err(Issue::Invalid("negative timeout".into())),
        },
    };
    route.retries = match a.retry_policy.as_ref().or(ctx.vhost_retry) {
        None => RetryPolicy::disabled(),
        Some(p) => retry_policy(p, name, at, diag),
    };
    let mut rewrite = Rewrite {
        uri: None,
        authority: None,
    };
    if !a.prefix_rewrite.is_empty() {
        rewrite.uri = Some(UriRewrite::Prefix(a.prefix_rewrite.clone()));
    }
    if let Some(rr) = &a.regex_rewrite {
        let pattern = rr.pattern.as_ref().map_or("", |p| p.regex.as_str());
        let r = RegexRewrite::new(pattern, &rr.substitution)
            .map_err(|e| Issue::Invalid(format!("invalid regex_rewrite {pattern:?}: {e}")))?;
        rewrite.uri = Some(UriRewrite::Regex(r));
    }
    match &a.host_rewrite_specifier {
        None => {}
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => rewrite.authority = Some(h.clone()),
        Some(_) => {
            return Err(Issue::Unsupported(
                "host rewrite other than a literal".into(),
            ))
        }
    }
    if a.path_rewrite_policy.is_some() {
        return Err(Issue::Unsupported("path_rewrite_policy".into()));
    }
    if rewrite.uri.is_some() || rewrite.authority.is_some() {
        route.rewrite = Some(rewrite);
    }
    for m in &a.request_mirror_policies {
        let d = destination(&m.cluster, ctx, name, at, diag)?;
        route.mirrors.push(Mirror {
            host: d.host,
            subset: d.subset,
            port: d.port,
            percentage: runtime_fraction(m.runtime_fraction.as_ref()),
        });
    }
    route.mirrors.retain(|m| !m.percentage.is_zero());
    for (i, h) in a.hash_policy.iter().enumerate() {
        match hash_key(h) {
            Ok(key) if i == 0 => {
                hash_keys.extend(clusters.iter().map(|c| (c.clone(), key.clone())));
            }
            Ok(_) => at.warn(
                diag,
                format!("route {name}: only the first hash_policy is used"),
            ),
            Err(what) => at.warn(diag, format!("route {name}: {what}; not used")),
        }
    }
    let unsupported: [(&str, bool); 8] = [
        ("rate_limits", !a.rate_limits.is_empty()),
        ("hedge_policy", a.hedge_policy.is_some()),
        (
            "internal_redirect_policy",
            a.internal_redirect_policy.is_some(),
        ),
        ("metadata_match", a.metadata_match.is_some()),
        ("idle_timeout", a.idle_timeout.is_some()),
        ("upgrade_configs", !a.upgrade_configs.is_empty()),
        ("cors (route action)", a.cors.is_some()),
        (
            "retry_policy_typed_config",
            a.retry_policy_typed_config.is_some(),
        ),
    ];
    for (field, set) in unsupported {
        if set {
            at.warn(
                diag,
                format!("route {name}: {field} is not supported; ignored"),
            );
        }
    }
    Ok(())
}

fn hash_key(h: &HashPolicy) -> Result<HashKey, String> {
    match &h.policy_specifier {
        Some(PolicySpecifier::Header(hd)) => {
            if hd.regex_rewrite.is_some() {
                return Err("hash_policy header regex_rewrite is not supported".into());
            }
            Ok(HashKey::Header(hd.header_name.to_ascii_lowercase()))
        }
        Some(PolicySpecifier::Cookie(c)) => {
            if !c.attributes.is_empty() {
                return Err("hash_policy cookie attributes are not supported".into());
            }
            Ok(HashKey::Cookie(HttpCookie {
                name: c.name.clone(),
                path: (!c.path.is_empty()).then(|| c.path.clone()),
                ttl: c.ttl.as_ref().and_then(duration),
            }))
        }
        Some(PolicySpecifier::ConnectionProperties(cp)) if cp.source_ip => Ok(HashKey::SourceIp),
        Some(PolicySpecifier::QueryParameter(q)) => Ok(HashKey::QueryParameter(q.name.clone())),
        Some(PolicySpecifier::FilterState(_)) => {
            Err("hash_policy filter_state is not supported".into())
        }
        _ => Err("empty hash_policy".into()),
    }
}

/// Envoy's retry host predicate that avoids hosts already tried.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
/// Envoy's retry priority that moves retries to other priorities (localities).
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// The route's `retry_policy` as written (the virtual host's when the route
/// has none); neither → no retries. Envoy's `retry_on` words, `num_retries`
/// (default 1), `per_try_timeout`, `retriable_status_codes`, the
/// `previous_hosts` predicate and `host_selection_retry_max_attempts`.
fn retry_policy(p: &EnvoyRetryPolicy, name: &str, at: At<'_>, diag: &mut Diag) -> RetryPolicy {
    let mut out = RetryPolicy {
        attempts: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: p.per_try_timeout.as_ref().and_then(duration),
        retry_on: Vec::new(),
        retriable_status_codes: Vec::new(),
        retry_remote_localities: p
            .retry_priority
            .as_ref()
            .is_some_and(|r| r.name == PREVIOUS_PRIORITIES),
        retry_ignore_previous_hosts: p
            .retry_host_predicate
            .iter()
            .any(|h| h.name == PREVIOUS_HOSTS),
        host_selection_retry_max_attempts: u32::try_from(
            p.host_selection_retry_max_attempts.max(0),
        )
        .unwrap_or(u32::MAX),
        backoff: p
            .retry_back_off
            .as_ref()
            .and_then(|b| b.base_interval.as_ref())
            .and_then(duration),
        is_default: false,
    };
    for word in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match RetryOn::parse(word) {
            Some(c) if !out.retry_on.contains(&c) => out.retry_on.push(c),
            Some(_) => {}
            None => at.warn(
                diag,
                format!("route {name}: retry_on {word:?} is not supported; ignored"),
            ),
        }
    }
    for code in &p.retriable_status_codes {
        match u16::try_from(*code) {
            Ok(c) if (100..=599).contains(&c) => out.retriable_status_codes.push(c),
            _ => at.warn(
                diag,
                format!("route {name}: retriable status code {code} ignored"),
            ),
        }
    }
    if !p.retriable_headers.is_empty()
        || !p.retriable_request_headers.is_empty()
        || p.rate_limited_retry_back_off.is_some()
        || p.per_try_idle_timeout.is_some()
    {
        at.warn(
            diag,
            format!(
                "route {name}: retriable headers / rate-limited backoff / per-try idle timeout \
                 are not supported; ignored"
            ),
        );
    }
    for h in &p.retry_host_predicate {
        if h.name != PREVIOUS_HOSTS {
            at.warn(
                diag,
                format!(
                    "route {name}: retry host predicate {} is not supported; ignored",
                    h.name
                ),
            );
        }
    }
    if let Some(r) = p
        .retry_priority
        .as_ref()
        .filter(|r| r.name != PREVIOUS_PRIORITIES)
    {
        at.warn(
            diag,
            format!(
                "route {name}: retry priority {} is not supported; ignored",
                r.name
            ),
        );
    }
    let default = RetryPolicy::istio_default();
    out.is_default = RetryPolicy {
        is_default: true,
        ..out.clone()
    } == default;
    out
}

fn redirect_action(r: &RedirectAction) -> Result<Redirect, Issue> {
    let code = match r.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        other => return Err(Issue::Invalid(format!("redirect response_code {other}"))),
    };
    let scheme = match &r.scheme_rewrite_specifier {
        None | Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
    };
    let path = match &r.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(p)) => Some(RedirectPath::Uri(p.clone())),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => Some(RedirectPath::Prefix(p.clone())),
        Some(_) => return Err(Issue::Unsupported("redirect regex / path rewrite".into())),
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(RedirectPort::Port(u16::try_from(p).map_err(|_| {
            Issue::Invalid(format!("redirect port {p} out of range"))
        })?)),
    };
    if r.strip_query {
        return Err(Issue::Unsupported("redirect strip_query".into()));
    }
    Ok(Redirect {
        path,
        authority: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        scheme,
        port,
        code,
    })
}

fn direct_response(d: &DirectResponseAction) -> Result<DirectResponse, Issue> {
    if !(200..600).contains(&d.status) {
        return Err(Issue::Invalid(format!(
            "direct response status {} not in 200..600",
            d.status
        )));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(s.clone().into_bytes()),
        Some(Specifier::InlineBytes(b)) => Some(b.clone()),
        Some(_) => {
            return Err(Issue::Unsupported(
                "direct response body from a file or environment variable".into(),
            ))
        }
    };
    if d.body_format.is_some() {
        return Err(Issue::Unsupported("direct response body_format".into()));
    }
    Ok(DirectResponse {
        status: d.status as u16,
        body,
    })
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
