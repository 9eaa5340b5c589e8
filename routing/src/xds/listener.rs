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
mod matcher;
use matcher::{classic_match, tree};
mod chains;
pub(crate) use chains::harmless;
use chains::{chain_hcm, chain_kind, path_policy};

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

#[cfg(test)]
mod tests;
