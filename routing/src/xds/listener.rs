//! Listeners: which filter chain serves which VIP:port, and what each chain
//! does (HCM with its routes, or tcp_proxy).
//!
//! istiod's `main_internal` (`listener_waypoint.go` `buildWaypointInternal`)
//! selects chains with `filter_chain_matcher`: a tree on
//! `DestinationIPInput` whose custom `xds.type.matcher.v3.IPMatcher` lists,
//! per service, its VIPs (`/32`, `/128`) with an `on_match` tree on
//! `DestinationPortInput` (exact map `"9080"` → action
//! `google.protobuf.StringValue{chain name}`, or, for ports that must be
//! sniffed, an application-protocol tree whose actions name the tcp and the
//! http chain). With multi-network on, an authority (filter state) map comes
//! first with the IP tree as `on_no_match`. Classic `filter_chain_match`
//! (`prefix_ranges` + `destination_port`) is read as well.

use super::access::{self, ChainAuthz};
use super::matchers::Issue;
use super::route;
use super::{decode_any, At, Diag};
use crate::actions::Fault;
use crate::path::{EscapedSlashes, PathPolicy};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{PathWithEscapedSlashesAction, RouteSpecifier};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::TreeType;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::on_match::OnMatch as OnMatchKind;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherType, OnMatch};
use envoy_types::pb::xds::r#type::matcher::v3::Matcher;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The waypoint's internal listener.
pub(crate) const MAIN_INTERNAL: &str = "main_internal";
/// HBONE termination (:15008).
pub(crate) const CONNECT_TERMINATE: &str = "connect_terminate";
/// Listeners istiod sends a waypoint that the proxy implements itself.
const INFRA_LISTENERS: &[&str] = &[
    CONNECT_TERMINATE,
    "connect_originate",
    "inner_connect_originate",
    "outer_connect_originate",
    "forward_inner_connect",
];

const IP_INPUT: &str =
    "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput";
const PORT_INPUT: &str =
    "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput";
const IP_MATCHER: &str = "type.googleapis.com/xds.type.matcher.v3.IPMatcher";

/// `xds.type.matcher.v3.IPMatcher` (not among envoy-types' generated types;
/// field numbers of cncf/xds `xds/type/matcher/v3/ip.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct IpMatcher {
    #[prost(message, repeated, tag = "1")]
    pub(crate) range_matchers: Vec<IpRangeMatcher>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct IpRangeMatcher {
    #[prost(message, repeated, tag = "1")]
    pub(crate) ranges: Vec<envoy_types::pb::xds::core::v3::CidrRange>,
    #[prost(message, optional, tag = "2")]
    pub(crate) on_match: Option<OnMatch>,
    #[prost(bool, tag = "3")]
    pub(crate) exclusive: bool,
}

/// What one filter chain does.
#[derive(Debug)]
pub(crate) enum ChainKind {
    Http {
        /// Inline or found through RDS; `None` = RDS not (yet) received.
        routes: Option<Box<RouteConfiguration>>,
        /// From RDS (warnings name the route configuration).
        rds: bool,
        http2: bool,
        default_fault: Option<Fault>,
        /// The HCM's path handling.
        path: PathPolicy,
    },
    Tcp(Box<TcpProxy>),
}

/// The translated `main_internal` listener.
#[derive(Debug, Default)]
pub(crate) struct MainListener {
    /// (VIP, port) → chain names (two when the port is sniffed).
    pub(crate) vips: BTreeMap<(IpAddr, u16), BTreeSet<String>>,
    /// Chain name → content (chains named like istiod's clusters only).
    pub(crate) chains: BTreeMap<String, ChainKind>,
    /// Chain name → its authorization (service chains and `direct-*`).
    pub(crate) authz: BTreeMap<String, ChainAuthz>,
    /// `direct-http`'s path handling (pod-addressed requests).
    pub(crate) direct_path: Option<PathPolicy>,
}

/// RDS names the listener's HCMs reference.
pub(crate) fn rds_names(l: &Listener) -> Vec<String> {
    let mut out = Vec::new();
    for chain in l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
    {
        for f in &chain.filters {
            if let Some(ConfigType::TypedConfig(any)) = &f.config_type {
                if let Some(Ok(hcm)) = decode_any::<HttpConnectionManager>(any) {
                    if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                        out.push(rds.route_config_name);
                    }
                }
            }
        }
    }
    out
}

/// Check every listener, translate `main_internal`.
pub(crate) fn translate(
    listeners: &[Listener],
    routes: &BTreeMap<&str, &RouteConfiguration>,
    diag: &mut Diag,
) -> MainListener {
    let mut out = MainListener::default();
    let mut seen_main = false;
    for l in listeners {
        let at = At {
            type_url: super::LISTENER_TYPE,
            name: &l.name,
        };
        if l.name == MAIN_INTERNAL {
            if seen_main {
                at.reject(diag, "duplicate listener");
                continue;
            }
            seen_main = true;
            main_internal(l, routes, at, diag, &mut out);
        } else if !INFRA_LISTENERS.contains(&l.name.as_str()) {
            at.warn(
                diag,
                "listener is not part of istiod's waypoint set; ignored",
            );
        }
    }
    if !listeners.is_empty() && !seen_main {
        diag.warn(
            super::LISTENER_TYPE,
            MAIN_INTERNAL,
            "no main_internal listener: no service VIP is routed",
        );
    }
    out
}

fn main_internal(
    l: &Listener,
    routes: &BTreeMap<&str, &RouteConfiguration>,
    at: At<'_>,
    diag: &mut Diag,
    out: &mut MainListener,
) {
    if let Some(m) = &l.filter_chain_matcher {
        ip_tree(m, at, diag, out, 0);
    }
    for chain in &l.filter_chains {
        if !chain.name.is_empty() && out.chains.contains_key(&chain.name) {
            at.reject(diag, format!("duplicate filter chain {}", chain.name));
            continue;
        }
        if l.filter_chain_matcher.is_none() {
            classic_match(chain, at, diag, out);
        }
        if chain.name == "direct-tcp" || chain.name == "direct-http" {
            // Pod-IP access: the snapshot routes pod IPs from the endpoints;
            // the chain's policies are the waypoint-wide ones.
            out.authz
                .insert(chain.name.clone(), access::chain(chain, at, diag));
            if chain.name == "direct-http" {
                out.direct_path =
                    chain_hcm(chain).and_then(|hcm| path_policy(&chain.name, &hcm, at, diag));
            }
            continue;
        }
        if super::names::ClusterName::parse(&chain.name).is_none() {
            at.warn(
                diag,
                format!(
                    "filter chain {:?} is not a service chain; ignored",
                    chain.name
                ),
            );
            continue;
        }
        if let Some(kind) = chain_kind(chain, routes, at, diag) {
            out.chains.insert(chain.name.clone(), kind);
        }
        out.authz
            .insert(chain.name.clone(), access::chain(chain, at, diag));
    }
    if l.default_filter_chain.is_some() {
        at.warn(diag, "default_filter_chain is not supported; ignored");
    }
}

/// The IP level: an IPMatcher tree, or (multi-network) a tree on another
/// input whose `on_no_match` leads to it.
fn ip_tree(m: &Matcher, at: At<'_>, diag: &mut Diag, out: &mut MainListener, depth: usize) {
    if depth > 8 {
        at.warn(diag, "filter_chain_matcher nested too deep; rest ignored");
        return;
    }
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        at.warn(
            diag,
            "filter_chain_matcher matcher_list is not supported; ignored",
        );
        return;
    };
    let input = tree
        .input
        .as_ref()
        .and_then(|i| i.typed_config.as_ref())
        .map_or("", |a| a.type_url.as_str());
    if input == IP_INPUT {
        let Some(TreeType::CustomMatch(custom)) = &tree.tree_type else {
            at.warn(diag, "destination IP matcher without IPMatcher; ignored");
            return;
        };
        let Some(any) = &custom.typed_config else {
            at.reject(diag, "IP matcher without typed_config");
            return;
        };
        if any.type_url != IP_MATCHER {
            at.warn(
                diag,
                format!("IP matcher type {} is not supported", any.type_url),
            );
            return;
        }
        let ipm = match <IpMatcher as prost::Message>::decode(any.value.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                at.reject(diag, format!("cannot decode IPMatcher: {e}"));
                return;
            }
        };
        for rm in &ipm.range_matchers {
            let mut ips = Vec::new();
            for r in &rm.ranges {
                let Ok(ip) = r.address_prefix.parse::<IpAddr>() else {
                    at.reject(
                        diag,
                        format!("IP range {:?} is not an address", r.address_prefix),
                    );
                    continue;
                };
                let full = if ip.is_ipv4() { 32 } else { 128 };
                let len = r.prefix_len.as_ref().map_or(full, |p| p.value);
                if len != full {
                    at.warn(
                        diag,
                        format!("IP range {ip}/{len} is not one address; treated as {ip}"),
                    );
                }
                ips.push(ip);
            }
            let ports = match rm.on_match.as_ref().and_then(|o| o.on_match.as_ref()) {
                Some(OnMatchKind::Matcher(pm)) => port_tree(pm, at, diag),
                Some(OnMatchKind::Action(a)) => {
                    // No port level: the chain serves every port (a pod-IP
                    // range, handled from the endpoints).
                    let _ = a;
                    continue;
                }
                None => continue,
            };
            for ip in &ips {
                for (port, chains) in &ports {
                    out.vips
                        .entry((*ip, *port))
                        .or_default()
                        .extend(chains.iter().cloned());
                }
            }
        }
        return;
    }
    // Another input (authority filter state): follow on_no_match to the IPs.
    match m.on_no_match.as_ref().and_then(|o| o.on_match.as_ref()) {
        Some(OnMatchKind::Matcher(next)) => ip_tree(next, at, diag, out, depth + 1),
        _ => at.warn(
            diag,
            format!("filter_chain_matcher on input {input:?} is not supported; ignored"),
        ),
    }
}

/// The port level: port → chain names.
fn port_tree(m: &Matcher, at: At<'_>, diag: &mut Diag) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        at.warn(diag, "port matcher is not a matcher tree; ignored");
        return out;
    };
    let input = tree
        .input
        .as_ref()
        .and_then(|i| i.typed_config.as_ref())
        .map_or("", |a| a.type_url.as_str());
    if input != PORT_INPUT {
        at.warn(
            diag,
            format!("matcher on input {input:?} under an IP range; ignored"),
        );
        return out;
    }
    let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else {
        at.warn(diag, "port matcher without exact_match_map; ignored");
        return out;
    };
    for (port, on_match) in &map.map {
        let Ok(port) = port.parse::<u16>() else {
            at.reject(diag, format!("port matcher key {port:?} is not a port"));
            continue;
        };
        let mut names = BTreeSet::new();
        actions(on_match, &mut names, at, diag, 0);
        out.insert(port, names);
    }
    out
}

/// Every chain name an `OnMatch` can lead to.
fn actions(o: &OnMatch, names: &mut BTreeSet<String>, at: At<'_>, diag: &mut Diag, depth: usize) {
    if depth > 8 {
        return;
    }
    match &o.on_match {
        Some(OnMatchKind::Action(a)) => {
            match a.typed_config.as_ref().map(decode_any::<StringValue>) {
                Some(Some(Ok(v))) => {
                    names.insert(v.value);
                }
                Some(Some(Err(e))) => at.reject(diag, e),
                _ => {
                    names.insert(a.name.clone());
                }
            }
        }
        Some(OnMatchKind::Matcher(m)) => {
            if let Some(MatcherType::MatcherTree(t)) = &m.matcher_type {
                if let Some(TreeType::ExactMatchMap(map) | TreeType::PrefixMatchMap(map)) =
                    &t.tree_type
                {
                    for o in map.map.values() {
                        actions(o, names, at, diag, depth + 1);
                    }
                }
            }
            if let Some(o) = &m.on_no_match {
                actions(o, names, at, diag, depth + 1);
            }
        }
        None => {}
    }
}

/// Classic `filter_chain_match`: `prefix_ranges` × `destination_port`.
fn classic_match(chain: &FilterChain, at: At<'_>, diag: &mut Diag, out: &mut MainListener) {
    let Some(m) = &chain.filter_chain_match else {
        return;
    };
    let Some(port) = m.destination_port.as_ref().map(|p| p.value) else {
        return;
    };
    let Ok(port) = u16::try_from(port) else {
        at.reject(diag, format!("destination_port {port} out of range"));
        return;
    };
    for r in &m.prefix_ranges {
        match r.address_prefix.parse::<IpAddr>() {
            Ok(ip) => {
                out.vips
                    .entry((ip, port))
                    .or_default()
                    .insert(chain.name.clone());
            }
            Err(_) => at.reject(
                diag,
                format!("prefix range {:?} is not an address", r.address_prefix),
            ),
        }
    }
}

/// Filters that carry no routing meaning for this proxy (telemetry, filter
/// state plumbing), by type URL or by name (istiod wraps its own filters,
/// e.g. `istio.metadata_exchange`, in a TypedStruct).
pub(crate) fn harmless(type_url: &str) -> bool {
    const PARTS: &[&str] = &[
        "set_filter_state",
        "metadata_exchange",
        "peer_metadata",
        "stats.PluginConfig",
        "grpc_stats",
        "filters.http.router",
        "filters.http.cors",
        "alpn",
        "connect_authority",
        "header_to_metadata",
    ];
    PARTS.iter().any(|p| type_url.contains(p))
}

/// Filters whose authorization meaning [`access`] translates or enforces
/// (RBAC, ext_authz, jwt_authn, and access-control filters it makes deny):
/// no "not supported" warning here.
fn policy_filter(name: &str, type_url: &str) -> bool {
    access::access_control(name, type_url)
}

fn chain_kind(
    chain: &FilterChain,
    routes: &BTreeMap<&str, &RouteConfiguration>,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<ChainKind> {
    let mut kind = None;
    for f in &chain.filters {
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            // ECDS filters: the chain denies (see `access`).
            Some(ConfigType::ConfigDiscovery(_)) => continue,
            None => {
                at.reject(
                    diag,
                    format!("chain {}: filter {} without config", chain.name, f.name),
                );
                return None;
            }
        };
        if let Some(hcm) = decode_any::<HttpConnectionManager>(any) {
            let hcm = match hcm {
                Ok(h) => h,
                Err(e) => {
                    at.reject(diag, format!("chain {}: {e}", chain.name));
                    return None;
                }
            };
            kind = http_chain(&chain.name, &hcm, routes, at, diag);
        } else if let Some(tcp) = decode_any::<TcpProxy>(any) {
            match tcp {
                Ok(t) => kind = Some(ChainKind::Tcp(Box::new(t))),
                Err(e) => {
                    at.reject(diag, format!("chain {}: {e}", chain.name));
                    return None;
                }
            }
        } else {
            other_filter(&chain.name, f, any, at, diag);
        }
    }
    if kind.is_none() {
        at.warn(
            diag,
            format!(
                "chain {}: neither http_connection_manager nor tcp_proxy; ignored",
                chain.name
            ),
        );
    }
    kind
}

fn other_filter(chain: &str, f: &Filter, any: &Any, at: At<'_>, diag: &mut Diag) {
    if policy_filter(&f.name, &any.type_url) {
        // Translated or made to deny by `access`, which reports it.
    } else if !harmless(&any.type_url) && !harmless(&f.name) {
        at.warn(
            diag,
            format!(
                "chain {chain}: filter {} ({}) is not supported; ignored",
                f.name, any.type_url
            ),
        );
    }
}

/// The chain's connection manager, if it has one that decodes.
fn chain_hcm(chain: &FilterChain) -> Option<HttpConnectionManager> {
    chain.filters.iter().find_map(|f| match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => decode_any::<HttpConnectionManager>(any)?.ok(),
        _ => None,
    })
}

/// The HCM's `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action`.
/// `normalize_path` unset is Envoy's runtime default (`false`); istiod always sets it
/// (`buildHTTPConnectionManager`: `false` only for meshConfig `pathNormalization: NONE`).
fn path_policy(
    chain: &str,
    hcm: &HttpConnectionManager,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<PathPolicy> {
    let escaped_slashes =
        match PathWithEscapedSlashesAction::try_from(hcm.path_with_escaped_slashes_action) {
            Ok(
                PathWithEscapedSlashesAction::ImplementationSpecificDefault
                | PathWithEscapedSlashesAction::KeepUnchanged,
            ) => EscapedSlashes::KeepUnchanged,
            Ok(PathWithEscapedSlashesAction::RejectRequest) => EscapedSlashes::RejectRequest,
            Ok(PathWithEscapedSlashesAction::UnescapeAndRedirect) => {
                EscapedSlashes::UnescapeAndRedirect
            }
            Ok(PathWithEscapedSlashesAction::UnescapeAndForward) => {
                EscapedSlashes::UnescapeAndForward
            }
            Err(_) => {
                at.reject(
                    diag,
                    format!(
                        "chain {chain}: path_with_escaped_slashes_action {} is not a known action",
                        hcm.path_with_escaped_slashes_action
                    ),
                );
                return None;
            }
        };
    if hcm.typed_header_validation_config.is_some() {
        at.warn(
            diag,
            format!(
                "chain {chain}: typed_header_validation_config is not supported; the path is \
                 handled by normalize_path, merge_slashes and path_with_escaped_slashes_action"
            ),
        );
    }
    Some(PathPolicy {
        normalize_path: hcm.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: hcm.merge_slashes,
        escaped_slashes,
    })
}

fn http_chain(
    chain: &str,
    hcm: &HttpConnectionManager,
    routes: &BTreeMap<&str, &RouteConfiguration>,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<ChainKind> {
    let path = path_policy(chain, hcm, at, diag)?;
    let mut default_fault = None;
    for hf in &hcm.http_filters {
        if hf.disabled {
            continue;
        }
        let any = match &hf.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => a,
            // ECDS filters: the chain denies (see `access`).
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => continue,
            None if policy_filter(&hf.name, "") => continue,
            None => {
                at.warn(
                    diag,
                    format!(
                        "chain {chain}: http filter {} without typed_config; ignored",
                        hf.name
                    ),
                );
                continue;
            }
        };
        if let Some(f) = decode_any::<HttpFault>(any) {
            match f.map_err(Issue::Invalid).and_then(|f| route::fault(&f)) {
                Ok(f) => default_fault = f,
                Err(Issue::Invalid(e)) => {
                    at.reject(diag, format!("chain {chain}: {e}"));
                    return None;
                }
                Err(Issue::Unsupported(e)) => at.warn(
                    diag,
                    format!("chain {chain}: fault filter {e} is not supported"),
                ),
            }
        } else if policy_filter(&hf.name, &any.type_url) {
            // Translated or made to deny by `access`, which reports it.
        } else if !harmless(&any.type_url) && !harmless(&hf.name) {
            at.warn(
                diag,
                format!(
                    "chain {chain}: http filter {} ({}) is not supported; ignored",
                    hf.name, any.type_url
                ),
            );
        }
    }
    let (routes, rds) = match &hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => (Some(Box::new(rc.clone())), false),
        Some(RouteSpecifier::Rds(rds)) => match routes.get(rds.route_config_name.as_str()) {
            Some(rc) => (Some(Box::new((*rc).clone())), true),
            None => {
                at.warn(
                    diag,
                    format!(
                        "chain {chain}: route configuration {} not received yet; default route used",
                        rds.route_config_name
                    ),
                );
                (None, true)
            }
        },
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            at.warn(
                diag,
                format!("chain {chain}: scoped routes are not supported; default route used"),
            );
            (None, false)
        }
        None => {
            at.reject(
                diag,
                format!("chain {chain}: http_connection_manager without routes"),
            );
            return None;
        }
    };
    Some(ChainKind::Http {
        routes,
        rds,
        http2: hcm.http2_protocol_options.is_some(),
        default_fault,
        path,
    })
}
