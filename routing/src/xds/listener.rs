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
//! http chain). One more range lists the pod IPs of workloads bound to the
//! waypoint, with an application-protocol tree on `direct-http` /
//! `direct-tcp` (any port). With multi-network on, an authority (filter
//! state `io.istio.connect_authority`) map `"<host>:<port>"` is the IP tree's
//! `on_no_match` (1.25–1.28) or the root with the IP tree as its
//! `on_no_match` (1.29+); both are read. Chain names are istiod's cluster
//! names (1.24+) or, in 1.22/1.23, `inbound-vip|<port>||<host>-http` /
//! `-tcp`, read as the same cluster names. Classic `filter_chain_match`
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
use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::FilterStateInput;
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
const APP_PROTOCOL_INPUT: &str =
    "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput";
const FILTER_STATE_INPUT: &str =
    "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.FilterStateInput";
/// The filter state `connect_terminate` fills with the CONNECT authority (1.25+).
const AUTHORITY_KEY: &str = "io.istio.connect_authority";
/// Pod-addressed chains (`buildWaypointInternal` "Direct pod access chain").
pub(crate) const DIRECT_HTTP: &str = "direct-http";
pub(crate) const DIRECT_TCP: &str = "direct-tcp";
/// Application protocols `http_inspector` reports (the keys carry the quotes).
const HTTP_PROTOCOLS: &[&str] = &["'h2c'", "'http/1.1'", "'http/1.0'"];

/// istiod 1.22/1.23 name a service port's chains `inbound-vip|<port>||<host>-http` / `-tcp`
/// (`model.BuildSubsetKey` with no subset, plus a suffix); 1.24+ name them after their cluster,
/// `inbound-vip|<port>|http|<host>`. The older names are read as the newer ones, so both
/// releases translate through the same path.
pub(crate) fn chain_name(name: &str) -> std::borrow::Cow<'_, str> {
    let legacy = name.strip_prefix("inbound-vip|").and_then(|rest| {
        let (port, rest) = rest.split_once('|')?;
        let hosted = rest.strip_prefix('|')?;
        let (host, proto) = hosted
            .strip_suffix("-http")
            .map(|h| (h, "http"))
            .or_else(|| hosted.strip_suffix("-tcp").map(|h| (h, "tcp")))?;
        (!host.is_empty() && !host.contains('|') && port.parse::<u16>().is_ok())
            .then(|| format!("inbound-vip|{port}|{proto}|{host}"))
    });
    match legacy {
        Some(n) => std::borrow::Cow::Owned(n),
        None => std::borrow::Cow::Borrowed(name),
    }
}

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
    /// Pod IPs of workloads bound to the waypoint → the direct chains the
    /// application-protocol matcher selects for them (any port).
    pub(crate) pods: BTreeMap<IpAddr, ProtocolChains>,
    /// Multi-network authority map: (`hostname`, port) → chain names.
    pub(crate) authorities: BTreeMap<(String, u16), BTreeSet<String>>,
}

/// What an application-protocol matcher selects: the chain for HTTP
/// (`'h2c'`, `'http/1.1'`, `'http/1.0'`) and the one for anything else.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolChains {
    pub(crate) http: Option<String>,
    pub(crate) tcp: Option<String>,
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
        tree(m, at, diag, out, 0);
    }
    let mut seen = BTreeSet::new();
    for chain in &l.filter_chains {
        let name = chain_name(&chain.name);
        if !name.is_empty() && !seen.insert(name.to_string()) {
            at.reject(diag, format!("duplicate filter chain {}", chain.name));
            continue;
        }
        if l.filter_chain_matcher.is_none() {
            classic_match(chain, &name, at, diag, out);
        }
        if name == DIRECT_TCP || name == DIRECT_HTTP {
            // Pod-IP access: the pods come from the matcher's workload range;
            // the chain's policies are the waypoint-wide ones.
            out.authz
                .insert(name.to_string(), access::chain(chain, at, diag));
            if name == DIRECT_HTTP {
                out.direct_path =
                    chain_hcm(chain).and_then(|hcm| path_policy(&name, &hcm, at, diag));
            }
            continue;
        }
        if super::names::ClusterName::parse(&name).is_none() {
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
            out.chains.insert(name.to_string(), kind);
        }
        out.authz
            .insert(name.to_string(), access::chain(chain, at, diag));
    }
    for (ip, pc) in &out.pods {
        for c in pc.http.iter().chain(&pc.tcp) {
            if !seen.contains(c) {
                at.warn(
                    diag,
                    format!(
                        "pod {ip}: the matcher selects chain {c}, which is not in the listener"
                    ),
                );
            }
        }
    }
    if l.default_filter_chain.is_some() {
        at.warn(diag, "default_filter_chain is not supported; ignored");
    }
}

/// The input type URL of a matcher tree, or `None` with a warning when the
/// matcher is no tree.
fn tree_input<'m>(m: &'m Matcher, what: &str, at: At<'_>, diag: &mut Diag) -> Option<&'m str> {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        at.warn(
            diag,
            format!("{what}: matcher_list is not supported; ignored"),
        );
        return None;
    };
    Some(
        tree.input
            .as_ref()
            .and_then(|i| i.typed_config.as_ref())
            .map_or("", |a| a.type_url.as_str()),
    )
}

/// The listener's matcher: the IP tree, and (multi-network) the authority
/// map, whichever is the root; each one's `on_no_match` leads to the other.
fn tree(m: &Matcher, at: At<'_>, diag: &mut Diag, out: &mut MainListener, depth: usize) {
    if depth > 8 {
        at.warn(diag, "filter_chain_matcher nested too deep; rest ignored");
        return;
    }
    let Some(input) = tree_input(m, "filter_chain_matcher", at, diag) else {
        return;
    };
    match input {
        IP_INPUT => ip_tree(m, at, diag, out),
        FILTER_STATE_INPUT => authority_tree(m, at, diag, out),
        other => at.warn(
            diag,
            format!("filter_chain_matcher on input {other:?} is not supported; ignored"),
        ),
    }
    match m.on_no_match.as_ref().and_then(|o| o.on_match.as_ref()) {
        Some(OnMatchKind::Matcher(next)) => tree(next, at, diag, out, depth + 1),
        Some(OnMatchKind::Action(a)) => at.warn(
            diag,
            format!(
                "filter_chain_matcher on_no_match action {:?} is not supported; ignored",
                action_name(a)
            ),
        ),
        None => {}
    }
}

/// The IP level: the IPMatcher's ranges, each a service's VIPs with a port
/// tree, or bound pods' IPs with an application-protocol tree.
fn ip_tree(m: &Matcher, at: At<'_>, diag: &mut Diag, out: &mut MainListener) {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return;
    };
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
        match rm.on_match.as_ref().and_then(|o| o.on_match.as_ref()) {
            Some(OnMatchKind::Matcher(next)) => match tree_input(next, "IP range", at, diag) {
                Some(PORT_INPUT) => {
                    for (port, chains) in port_tree(next, at, diag) {
                        for ip in &ips {
                            out.vips
                                .entry((*ip, port))
                                .or_default()
                                .extend(chains.iter().cloned());
                        }
                    }
                }
                Some(APP_PROTOCOL_INPUT) => {
                    if let Some(pc) = app_protocol(next, at, diag) {
                        bind_pods(&ips, pc, at, diag, out);
                    }
                }
                Some(other) => at.warn(
                    diag,
                    format!("matcher on input {other:?} under an IP range; ignored"),
                ),
                None => {}
            },
            Some(OnMatchKind::Action(a)) => {
                // No port or protocol level: one chain for every port and protocol.
                let name = chain_name(&action_name(a)).into_owned();
                let pc = ProtocolChains {
                    http: (name != DIRECT_TCP).then(|| name.clone()),
                    tcp: (name != DIRECT_HTTP).then_some(name),
                };
                bind_pods(&ips, pc, at, diag, out);
            }
            None => at.warn(diag, format!("IP range {ips:?} without on_match; ignored")),
        }
        if rm.exclusive {
            at.warn(diag, "IP range `exclusive` is not supported; ignored");
        }
    }
}

/// Pod IPs (any port) → the direct chains; other chains there are not pod chains.
fn bind_pods(
    ips: &[IpAddr],
    pc: ProtocolChains,
    at: At<'_>,
    diag: &mut Diag,
    out: &mut MainListener,
) {
    let direct = |c: &Option<String>| {
        c.as_deref()
            .is_none_or(|c| c == DIRECT_HTTP || c == DIRECT_TCP)
    };
    if !direct(&pc.http) || !direct(&pc.tcp) {
        at.warn(
            diag,
            format!(
                "IP range {ips:?} selects chains {pc:?} for every port; only {DIRECT_HTTP} and {DIRECT_TCP} serve every port; ignored"
            ),
        );
        return;
    }
    for ip in ips {
        out.pods.insert(*ip, pc.clone());
    }
}

/// `ApplicationProtocolInput` exact map: HTTP keys → the HTTP chain,
/// `on_no_match` → the TCP chain (`match.NewAppProtocol`).
fn app_protocol(m: &Matcher, at: At<'_>, diag: &mut Diag) -> Option<ProtocolChains> {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return None;
    };
    let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else {
        at.warn(
            diag,
            "application-protocol matcher without exact_match_map; ignored",
        );
        return None;
    };
    let leaf = |o: &OnMatch, diag: &mut Diag| match &o.on_match {
        Some(OnMatchKind::Action(a)) => Some(chain_name(&action_name(a)).into_owned()),
        _ => {
            at.warn(
                diag,
                "application-protocol matcher: a nested matcher is not supported; ignored",
            );
            None
        }
    };
    let mut out = ProtocolChains::default();
    for (key, o) in &map.map {
        if !HTTP_PROTOCOLS.contains(&key.as_str()) {
            at.warn(
                diag,
                format!("application protocol {key} is not detected by this proxy; ignored"),
            );
            continue;
        }
        let Some(chain) = leaf(o, diag) else { continue };
        match &out.http {
            Some(c) if *c != chain => at.warn(
                diag,
                format!("application protocols lead to {c} and {chain}; {c} serves HTTP"),
            ),
            Some(_) => {}
            None => out.http = Some(chain),
        }
    }
    if let Some(o) = &m.on_no_match {
        out.tcp = leaf(o, diag);
    }
    Some(out)
}

/// The multi-network authority map: `"<hostname>:<port>"` → chain(s).
fn authority_tree(m: &Matcher, at: At<'_>, diag: &mut Diag, out: &mut MainListener) {
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return;
    };
    let key = tree
        .input
        .as_ref()
        .and_then(|i| i.typed_config.as_ref())
        .and_then(decode_any::<FilterStateInput>)
        .and_then(Result::ok)
        .map(|f| f.key);
    if key.as_deref() != Some(AUTHORITY_KEY) {
        at.warn(
            diag,
            format!(
                "filter state matcher on {key:?} is not supported (only {AUTHORITY_KEY}); ignored"
            ),
        );
        return;
    }
    let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else {
        at.warn(diag, "authority matcher without exact_match_map; ignored");
        return;
    };
    for (authority, o) in &map.map {
        let parsed = authority
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty());
        let Some((host, port)) = parsed else {
            at.reject(
                diag,
                format!("authority matcher key {authority:?} is not <hostname>:<port>"),
            );
            continue;
        };
        let mut names = BTreeSet::new();
        actions(o, &mut names, at, diag, 0);
        out.authorities
            .entry((host.to_ascii_lowercase(), port))
            .or_default()
            .extend(names);
    }
}

/// The chain an action names: its `StringValue`, else the action's name.
fn action_name(a: &envoy_types::pb::xds::core::v3::TypedExtensionConfig) -> String {
    match a.typed_config.as_ref().map(decode_any::<StringValue>) {
        Some(Some(Ok(v))) => v.value,
        _ => a.name.clone(),
    }
}

/// The port level: port → chain names.
fn port_tree(m: &Matcher, at: At<'_>, diag: &mut Diag) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return out;
    };
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
    if m.on_no_match.is_some() {
        at.warn(
            diag,
            "port matcher on_no_match (other ports) is not supported; ignored",
        );
    }
    out
}

/// Every chain name a port's `OnMatch` can lead to: a chain, or an
/// application-protocol matcher over an HTTP and a TCP chain (a sniffed port).
fn actions(o: &OnMatch, names: &mut BTreeSet<String>, at: At<'_>, diag: &mut Diag, depth: usize) {
    if depth > 8 {
        at.warn(diag, "port matcher nested too deep; rest ignored");
        return;
    }
    match &o.on_match {
        Some(OnMatchKind::Action(a)) => {
            if let Some(Some(Err(e))) = a.typed_config.as_ref().map(decode_any::<StringValue>) {
                at.reject(diag, e);
                return;
            }
            names.insert(chain_name(&action_name(a)).into_owned());
        }
        Some(OnMatchKind::Matcher(m)) => match tree_input(m, "port matcher", at, diag) {
            Some(APP_PROTOCOL_INPUT) => {
                if let Some(pc) = app_protocol(m, at, diag) {
                    names.extend(pc.http.into_iter().chain(pc.tcp));
                }
            }
            Some(other) => at.warn(
                diag,
                format!("matcher on input {other:?} under a port; ignored"),
            ),
            None => {}
        },
        None => {}
    }
}

/// Classic `filter_chain_match`: `prefix_ranges` × `destination_port`.
fn classic_match(
    chain: &FilterChain,
    name: &str,
    at: At<'_>,
    diag: &mut Diag,
    out: &mut MainListener,
) {
    let Some(m) = &chain.filter_chain_match else {
        return;
    };
    let Some(port) = m.destination_port.as_ref().map(|p| p.value) else {
        at.warn(
            diag,
            format!("chain {name}: filter_chain_match without destination_port; ignored"),
        );
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
                    .insert(name.to_string());
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
    } else if !harmless(&access::effective_type(any)) && !harmless(&f.name) {
        at.warn(
            diag,
            format!(
                "chain {chain}: filter {} ({}) is not supported; ignored",
                f.name,
                access::type_label(any)
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
        } else if !harmless(&access::effective_type(any)) && !harmless(&hf.name) {
            at.warn(
                diag,
                format!(
                    "chain {chain}: http filter {} ({}) is not supported; ignored",
                    hf.name,
                    access::type_label(any)
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

#[cfg(test)]
mod tests;
