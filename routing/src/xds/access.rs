//! Authorization of each `main_internal` filter chain, and the per-service
//! [`Authorization`] built from them.
//!
//! Per chain, in filter order (istiod `listener_waypoint.go`
//! `buildWaypointHTTPFilters` / `networkfilter.go`
//! `buildCompleteNetworkFilters`): CUSTOM (a shadow `rbac` whose
//! `shadow_rules_stat_prefix` is `istio_ext_authz_`, then `ext_authz`),
//! `jwt_authn`, then one `rbac` filter each for LOG, DENY and ALLOW.
//!
//! - `rules` → enforced policies with the filter's action; `shadow_rules` →
//!   dry-run policies; `rules` with no policy on an ALLOW filter → an ALLOW
//!   policy without rules (denies everything, istiod's "every ALLOW rule
//!   dropped" shape); no `rules` → nothing enforced.
//! - Envoy runs each RBAC filter on its own, so two enforced ALLOW filters
//!   both have to allow; the model ORs ALLOW policies, so every ALLOW filter
//!   after the first becomes a DENY policy "none of this filter's rules
//!   matched" (exact, and strict on unknowns).
//! - CUSTOM: the waypoint does not call external authorizers, so the shadow
//!   rules before an `ext_authz` filter become enforced
//!   [`Action::Custom`] policies, which the evaluator denies on match. An
//!   `ext_authz` filter without them (or without `filter_enabled_metadata`,
//!   i.e. called for every request) is a CUSTOM policy matching everything.
//!
//! **Never fail open.** A filter this proxy does not run and that can deny or
//! rewrite what authorization sees — Wasm, Lua, ext_proc and other
//! access-control extensions anywhere in the chain, filters delivered through
//! ECDS (istiod's WasmPlugins), an RBAC `matcher` tree, and any other unknown
//! filter placed before the chain's last authorization filter — makes the
//! chain deny all its traffic (a DENY policy matching everything, with a
//! warning). Rejecting the listener instead would NACK every service's update
//! and keep serving the previous, possibly more permissive, configuration.

use super::listener::harmless;
use super::names::ClusterName;
use super::rbac::{self, Cx};
use super::{decode_any, At, Diag};
use crate::authz::{
    Action, Attr, Authorization, Expr, Matcher, Policy, PolicySet, Rule, ServicePolicies,
};
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::rbac::v3::Rbac as EnvoyRbac;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz::Services;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz as HttpExtAuthz;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetRbac;
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
mod walk;
use walk::grpc_provider;

/// `shadow_rules_stat_prefix` of istiod's CUSTOM shadow filter
/// (`RBACExtAuthzShadowRulesStatPrefix`).
pub(crate) const EXT_AUTHZ_SHADOW_PREFIX: &str = "istio_ext_authz_";
/// Namespace-less name of the policies this translator makes up.
const SYNTHETIC: &str = "waypoint";

/// One chain's authorization.
#[derive(Debug, Default)]
pub(crate) struct ChainAuthz {
    /// An HCM chain (else a TCP one).
    pub(crate) http: bool,
    pub(crate) policies: Vec<Policy>,
    /// The chain's `jwt_authn` providers, when the waypoint verifies its tokens itself.
    pub(crate) jwt: Vec<crate::authz::jwt::JwtProvider>,
    /// External authorizers of the chain's `ext_authz` filters, by provider name.
    pub(crate) ext_authz: Vec<crate::authz::ext::ExtAuthzProvider>,
}

/// Filters that can deny or rewrite a request and that this proxy does not
/// run (those it translates are recognised by type before this is asked).
pub(crate) fn access_control(name: &str, type_url: &str) -> bool {
    const PARTS: &[&str] = &[
        "wasm",
        "lua",
        "ext_proc",
        "golang",
        "dynamic_modules",
        "rbac",
        "authz",
        "authn",
        "jwt",
        "oauth",
        "basic_auth",
        "api_key_auth",
    ];
    let (name, type_url) = (name.to_ascii_lowercase(), type_url.to_ascii_lowercase());
    PARTS
        .iter()
        .any(|p| type_url.contains(p) || name.contains(p))
}

fn is_authz_type(type_url: &str) -> bool {
    [
        "filters.http.rbac.",
        "filters.network.rbac.",
        "filters.http.ext_authz.",
        "filters.network.ext_authz.",
        "filters.http.jwt_authn.",
    ]
    .iter()
    .any(|p| type_url.contains(p))
}

/// Known filters that neither decide access nor change what it sees (by
/// type, or by istiod's name for its TypedStruct-wrapped telemetry filters,
/// e.g. `istio.metadata_exchange` before the network RBAC filters).
fn known_inert(name: &str, type_url: &str) -> bool {
    harmless(type_url)
        || harmless(name)
        || type_url.ends_with(".HttpConnectionManager")
        || type_url.ends_with(".TcpProxy")
        || type_url.ends_with(".HTTPFault")
}

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` (not among
/// envoy-types' generated types): field 1 is the wrapped config's type URL.
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
}

/// A filter config's type for messages: its type URL, and the wrapped one of a TypedStruct.
pub(crate) fn type_label(any: &Any) -> String {
    let inner = effective_type(any);
    if inner == any.type_url {
        inner
    } else {
        format!("{} wrapping {inner}", any.type_url)
    }
}

/// The type URL of a filter's config, looking inside a TypedStruct.
pub(crate) fn effective_type(any: &Any) -> String {
    if any.type_url.ends_with(".TypedStruct") {
        if let Ok(ts) = <TypedStruct as prost::Message>::decode(any.value.as_slice()) {
            if !ts.type_url.is_empty() {
                return ts.type_url;
            }
        }
    }
    any.type_url.clone()
}

struct Walk<'a> {
    chain: &'a str,
    at: At<'a>,
    out: ChainAuthz,
    /// CUSTOM shadow policies waiting for their ext_authz filter.
    pending_custom: Option<Vec<Policy>>,
    allow_filters: usize,
    jwt: bool,
}

/// The authorization of one `main_internal` chain.
pub(crate) fn chain(chain: &FilterChain, at: At<'_>, diag: &mut Diag) -> ChainAuthz {
    let mut w = Walk {
        chain: &chain.name,
        at,
        out: ChainAuthz::default(),
        pending_custom: None,
        allow_filters: 0,
        jwt: false,
    };
    let type_of = |c: &Option<ConfigType>| match c {
        Some(ConfigType::TypedConfig(a)) => Some(a.type_url.clone()),
        _ => None,
    };
    // The last network filter that authorizes: an RBAC / ext_authz one, or
    // the HCM when its HTTP filters do.
    let authorizes = |f: &envoy_types::pb::envoy::config::listener::v3::Filter| {
        if type_of(&f.config_type).is_some_and(|t| is_authz_type(&t)) {
            return true;
        }
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            return false;
        };
        matches!(decode_any::<HttpConnectionManager>(any), Some(Ok(hcm))
            if hcm.http_filters.iter().any(|hf| matches!(&hf.config_type,
                Some(http_filter::ConfigType::TypedConfig(a)) if is_authz_type(&a.type_url))))
    };
    let last_authz = chain.filters.iter().rposition(authorizes);
    for (i, f) in chain.filters.iter().enumerate() {
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => a,
            Some(ConfigType::ConfigDiscovery(_)) => {
                w.deny_all(&f.name, "is delivered through ECDS", diag);
                continue;
            }
            None => continue, // rejected by the listener translation
        };
        if let Some(hcm) = decode_any::<HttpConnectionManager>(any) {
            w.out.http = true;
            if let Ok(hcm) = hcm {
                w.http_filters(&hcm, diag);
            }
        } else if let Some(r) = decode_any::<NetRbac>(any) {
            match r {
                Ok(r) => w.rbac(
                    &f.name,
                    r.rules.as_ref(),
                    r.shadow_rules.as_ref(),
                    &r.shadow_rules_stat_prefix,
                    r.matcher.is_some(),
                    diag,
                ),
                Err(e) => at.reject(diag, format!("chain {}: {e}", w.chain)),
            }
        } else if let Some(x) = decode_any::<NetExtAuthz>(any) {
            match x {
                Ok(x) => w.ext_authz(
                    &f.name,
                    x.grpc_service.as_ref().map(grpc_provider),
                    x.filter_enabled_metadata.is_some(),
                    false,
                    diag,
                ),
                Err(e) => at.reject(diag, format!("chain {}: {e}", w.chain)),
            }
        } else {
            let before_authz = last_authz.is_some_and(|l| i < l);
            w.other(&f.name, any, before_authz, diag);
        }
    }
    w.finish()
}

/// The [`Authorization`] of the translated chains: per service FQDN its HTTP
/// chains' policies and its TCP chains' (a service with chains of one kind
/// only uses them for both: the other kind of traffic cannot reach it);
/// `direct-http` / `direct-tcp` give the waypoint-wide set.
pub(crate) fn authorization(
    chains: &BTreeMap<String, std::sync::Arc<ChainAuthz>>,
) -> Authorization {
    let mut services: BTreeMap<String, Vec<(u16, &ChainAuthz)>> = BTreeMap::new();
    let mut direct: Vec<(u16, &ChainAuthz)> = Vec::new();
    let mut ext_authz: HashMap<String, Arc<crate::authz::ext::ExtAuthzProvider>> = HashMap::new();
    for (name, c) in chains {
        for p in &c.ext_authz {
            ext_authz
                .entry(p.name.clone())
                .or_insert_with(|| Arc::new(p.clone()));
        }
        // Parsed once: at 10 000 services this runs for every chain whenever one comes or goes.
        match (name.as_str(), ClusterName::parse(name)) {
            ("direct-http" | "direct-tcp", _) => direct.push((0, c)),
            (_, Some(cn)) => services
                .entry(cn.host().to_string())
                .or_default()
                .push((cn.port, c)),
            (_, None) => {}
        }
    }
    let by_service: HashMap<String, ServicePolicies> = services
        .into_iter()
        .map(|(host, chains)| (host, service_policies(&chains)))
        .collect();
    Authorization::new(service_policies(&direct), by_service).with_providers(ext_authz)
}

/// [`authorization`] of `now` made from `old`, the authorization of `was`: only the services
/// whose chains differ (`same` tells which are the same) are made again, from all their chains
/// in `now`. `None` when more than those services' policies can differ: a pod-addressed chain
/// (the waypoint-wide set) or one naming an external authorizer (the providers) changed.
pub(crate) fn authorization_patched(
    old: &Authorization,
    was: &BTreeMap<String, Arc<ChainAuthz>>,
    now: &BTreeMap<String, Arc<ChainAuthz>>,
    same: impl Fn(&Arc<ChainAuthz>, &Arc<ChainAuthz>) -> bool,
) -> Option<Authorization> {
    use std::cmp::Ordering;
    let mut hosts: std::collections::BTreeSet<String> = Default::default();
    let mut touch = |name: &str, c: &ChainAuthz| -> Option<()> {
        if name == "direct-http" || name == "direct-tcp" || !c.ext_authz.is_empty() {
            return None;
        }
        hosts.extend(ClusterName::parse(name).map(|cn| cn.host().to_string()));
        Some(())
    };
    let (mut a, mut b) = (was.iter().peekable(), now.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((an, _)), Some((bn, _))) => an.cmp(bn),
        };
        match order {
            Ordering::Less => {
                let (n, c) = a.next()?;
                touch(n, c)?;
            }
            Ordering::Greater => {
                let (n, c) = b.next()?;
                touch(n, c)?;
            }
            Ordering::Equal => {
                let ((n, was), (_, now)) = (a.next()?, b.next()?);
                if !same(was, now) {
                    touch(n, was)?;
                    touch(n, now)?;
                }
            }
        }
    }
    let changed = hosts
        .into_iter()
        .map(|host| {
            let suffix = format!("|{host}");
            let chains: Vec<(u16, &ChainAuthz)> = now
                .iter()
                .filter(|(n, _)| n.ends_with(&suffix))
                .filter_map(|(n, c)| {
                    let cn = ClusterName::parse(n)?;
                    (cn.host() == host).then_some((cn.port, &**c))
                })
                .collect();
            let set = (!chains.is_empty()).then(|| service_policies(&chains));
            (host, set)
        })
        .collect();
    Some(old.with_services_replaced(changed))
}

/// One destination's policies from its chains `(port, chain)` in chain-name order: its HTTP
/// chains' set, with the JWT providers of all its chains, and its TCP chains' set (a
/// destination with chains of one kind uses them for both).
fn service_policies(chains: &[(u16, &ChainAuthz)]) -> ServicePolicies {
    type PerPort<'a> = Vec<(u16, &'a [Policy])>;
    let (mut http, mut tcp): (PerPort<'_>, PerPort<'_>) = Default::default();
    // JWT providers of a service's HTTP chains (the same for each, as istiod builds them).
    let mut providers: Vec<Arc<crate::authz::jwt::JwtProvider>> = Vec::new();
    for (port, c) in chains {
        for p in &c.jwt {
            if !providers.iter().any(|q| **q == *p) {
                providers.push(Arc::new(p.clone()));
            }
        }
        if c.http {
            http.push((*port, &c.policies));
        } else {
            tcp.push((*port, &c.policies));
        }
    }
    let mut http = combine(&http);
    if let Some(set) = http.as_mut() {
        set.jwt = providers;
    }
    let tcp = combine(&tcp);
    match (http, tcp) {
        (Some(h), Some(t)) => ServicePolicies {
            http: Arc::new(h),
            tcp: Arc::new(t),
        },
        (Some(s), None) | (None, Some(s)) => ServicePolicies::both(s),
        (None, None) => ServicePolicies::default(),
    }
}

/// One set from the chains of one kind. istiod builds a service's policies
/// per service, so its chains normally carry the same set; when they differ
/// (a port with an unenforceable filter, …) each chain's policies are scoped
/// to its port, and a port without ALLOW policies next to ports with some
/// gets an ALLOW policy for any request on it, so no port's set leaks into
/// another's.
fn combine(chains: &[(u16, &[Policy])]) -> Option<PolicySet> {
    let (first, rest) = chains.split_first()?;
    let key = |p: &[Policy]| serde_json::to_string(p).unwrap_or_default();
    let first_key = key(first.1);
    if rest.iter().all(|(_, p)| key(p) == first_key) {
        return Some(PolicySet::new(
            first.1.iter().cloned().map(Arc::new).collect(),
        ));
    }
    let has_allow = |ps: &[Policy], dry: bool| {
        ps.iter()
            .any(|p| p.action == Action::Allow && p.dry_run == dry)
    };
    let mut out = Vec::new();
    for (port, policies) in chains {
        let on_port = Expr::Test(Attr::DestinationPort, Matcher::Port(*port));
        for p in policies.iter() {
            let mut p = p.clone();
            for r in &mut p.rules {
                r.permission = Expr::and(vec![on_port.clone(), r.permission.clone()]);
            }
            out.push(Arc::new(p));
        }
        for dry in [false, true] {
            if !has_allow(policies, dry) && chains.iter().any(|(_, ps)| has_allow(ps, dry)) {
                out.push(Arc::new(Policy {
                    namespace: String::new(),
                    name: SYNTHETIC.into(),
                    action: Action::Allow,
                    rules: vec![Rule {
                        name: format!("port[{port}]-has-no-allow-policy"),
                        principal: Expr::Any,
                        permission: on_port.clone(),
                    }],
                    dry_run: dry,
                }));
            }
        }
    }
    Some(PolicySet::new(out))
}

#[cfg(test)]
mod tests;
