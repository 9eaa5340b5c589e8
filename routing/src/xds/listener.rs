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
use super::telemetry::HcmTelemetry;
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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
mod again;
mod matcher;
use matcher::{classic_match, tree};
pub(crate) mod chains;
use super::chain::{ChainPiece, ChainRole, ClusterNames, Known};
pub(crate) use chains::harmless;

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
        /// The HCM's `access_log` and `tracing` (taken by the chain piece).
        telemetry: Option<Arc<HcmTelemetry>>,
    },
    Tcp(Box<TcpProxy>),
}

/// What `main_internal`'s `filter_chain_matcher` selects.
#[derive(Debug, Default, Clone)]
pub(crate) struct Matched {
    /// (VIP, port) → chain names (two when the port is sniffed).
    pub(crate) vips: BTreeMap<(IpAddr, u16), BTreeSet<String>>,
    /// Pod IPs of workloads bound to the waypoint → the direct chains the
    /// application-protocol matcher selects for them (any port).
    pub(crate) pods: BTreeMap<IpAddr, ProtocolChains>,
    /// Multi-network authority map: (`hostname`, port) → chain names.
    pub(crate) authorities: BTreeMap<(String, u16), BTreeSet<String>>,
    /// What reading the matcher found (reported each time it is used).
    diag: Diag,
    /// The digest of the matcher's bytes it was read from (`None`: from the chains' classic
    /// matches).
    pub(crate) source: Option<u128>,
}

impl Matched {
    /// Whether `listeners`' `main_internal` has a matcher other than the one this was read
    /// from (`false` when that cannot be told: no matcher on either side).
    pub(crate) fn replaced_in(&self, listeners: &[ShallowListener]) -> bool {
        let main = listeners.iter().find(|l| l.name == MAIN_INTERNAL);
        let bytes = main.and_then(|l| l.filter_chain_matcher.as_ref());
        match (self.source, bytes) {
            (Some(d), Some(b)) => super::pieces::digest(b) != d,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The translated `main_internal` listener.
#[derive(Debug, Default)]
pub(crate) struct MainListener {
    /// What the matcher selects (or the chains' classic `filter_chain_match`es).
    pub(crate) matched: Arc<Matched>,
    /// Service chains (named like istiod's clusters) that can be used, by name.
    pub(crate) chains: BTreeMap<String, Arc<ChainPiece>>,
    /// Chain name → its authorization (service chains and `direct-*`).
    pub(crate) authz: BTreeMap<String, Arc<ChainAuthz>>,
    /// `direct-http`'s path handling (pod-addressed requests).
    pub(crate) direct_path: Option<PathPolicy>,
    /// The access logs and tracing of its HTTP chains (see [`super::telemetry::choose`]);
    /// `None` when it has no HTTP chain.
    pub(crate) telemetry: Option<crate::telemetry::TelemetryConfig>,
}

impl MainListener {
    /// Whether a service chain's routes reported a rejection (a bad regex, weights that do not
    /// add up, an unknown cluster): reported at assembly, so a state with one is judged by the
    /// translation, not answered by a question.
    pub(crate) fn routes_rejected(&self) -> bool {
        self.chains.values().any(|c| {
            matches!(&c.role, ChainRole::Service { routes: Some(r), .. } if !r.diag.rejections.is_empty())
        })
    }
}

/// A listener with its filter chains and matcher left encoded: only the chains whose bytes
/// changed since the last translation are decoded ([`ListenerMemo`]). Field numbers of
/// `envoy.config.listener.v3.Listener`.
///
/// Decoded from a [`bytes::Bytes`] (the resource's, as the xDS client holds it), the chains are
/// slices of it, not an allocation and a copy each.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ShallowListener {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub(crate) filter_chains: Vec<bytes::Bytes>,
    #[prost(bytes = "bytes", optional, tag = "25")]
    pub(crate) default_filter_chain: Option<bytes::Bytes>,
    #[prost(bytes = "bytes", optional, tag = "32")]
    pub(crate) filter_chain_matcher: Option<bytes::Bytes>,
}

/// The chain pieces and the matcher of the last translation, by a digest of their bytes.
#[derive(Debug, Default)]
pub(crate) struct ListenerMemo {
    chains: HashMap<u128, Arc<ChainPiece>, super::FastHash>,
    matcher: Option<(u128, Arc<Matched>)>,
    /// The IP matcher's ranges the last read of a changed matcher read.
    pub(crate) ranges: matcher::Ranges,
    /// Chains reused and built by the last translation.
    pub(crate) reused: usize,
    /// Chains of the last read checked against every cluster name (not known to be valid
    /// from the names added alone).
    pub(crate) checked: usize,
    pub(crate) built: usize,
    /// The last call's inputs and answer, given again for the same inputs.
    last: Option<again::LastCall>,
    /// [`again::fingerprint`] of the cluster names the chains were last read with.
    read_with: Option<u128>,
}

/// What an application-protocol matcher selects: the chain for HTTP
/// (`'h2c'`, `'http/1.1'`, `'http/1.0'`) and the one for anything else.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolChains {
    pub(crate) http: Option<String>,
    pub(crate) tcp: Option<String>,
}

/// RDS names a chain's connection managers reference.
pub(crate) fn chain_rds_names(chain: &FilterChain) -> Vec<String> {
    let mut out = Vec::new();
    for f in &chain.filters {
        if let Some(ConfigType::TypedConfig(any)) = &f.config_type {
            if let Some(Ok(hcm)) = decode_any::<HttpConnectionManager>(any) {
                if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                    out.push(rds.route_config_name);
                }
            }
        }
    }
    out
}

/// RDS names the listener's HCMs reference.
pub(crate) fn rds_names(l: &Listener) -> Vec<String> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .flat_map(chain_rds_names)
        .collect()
}

/// A chain from its bytes (as kept: a chain of a listener kept chain by chain is a block,
/// expanded here); one that does not decode rejects its listener.
fn decode_chain(bytes: &[u8], i: usize, at: At<'_>, diag: &mut Diag) -> Option<FilterChain> {
    match super::stored::decode::<FilterChain>(bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            at.reject(
                diag,
                format!("cannot decode resource: filter chain {i}: {e}"),
            );
            None
        }
    }
}

/// Check every listener, translate `main_internal`; the RDS names they reference go in `rds`.
/// `known_unchanged`: the clusters are those of the last call (its chains, remembered in `memo`,
/// are valid for them without asking again). `added`: names of `known` the caller takes to be
/// new since the clusters the memo's chains were last read with; when `known` without them is
/// that very set (by [`again::fingerprint`]), a remembered chain is valid unless it asked for
/// one of them and found it missing, and is not checked against all of `known` (a new
/// service's listener at 10 000 services). The same listeners' bytes, route configurations and
/// cluster names as the last call's give its answer again, without reading anything
/// ([`again`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn translate(
    listeners: &[ShallowListener],
    routes: &BTreeMap<&str, &RouteConfiguration>,
    known: &ClusterNames<'_>,
    (known_unchanged, added): (bool, &[&str]),
    memo: &mut ListenerMemo,
    rds: &mut super::Names,
    diag: &mut Diag,
) -> Arc<MainListener> {
    let fingerprint = again::fingerprint(known);
    // The names the memo's chains were read with, if `known` is those and `added`.
    let before = again::without(fingerprint, added);
    let grown = (memo.read_with == Some(before)).then_some(added);
    if let Some(last) = memo.last.as_ref() {
        if last.answers(listeners, routes, fingerprint) {
            rds.extend(last.rds.iter().cloned());
            diag.replay(&last.diag);
            (memo.reused, memo.built) = (last.chains, 0);
            return last.out.clone();
        }
    }
    memo.last = None;
    let (mut mine, mut found) = (super::Names::new(), Diag::default());
    let out = Arc::new(read(
        listeners,
        routes,
        (known, known_unchanged, grown),
        memo,
        &mut mine,
        &mut found,
    ));
    memo.read_with = Some(fingerprint);
    rds.extend(mine.iter().cloned());
    diag.replay(&found);
    let chains = memo.reused + memo.built;
    memo.last = Some(again::LastCall::new(
        listeners,
        routes,
        fingerprint,
        out.clone(),
        (mine, found, chains),
    ));
    out
}

/// [`translate`], reading the listeners.
fn read(
    listeners: &[ShallowListener],
    routes: &BTreeMap<&str, &RouteConfiguration>,
    known: KnownNow<'_>,
    memo: &mut ListenerMemo,
    rds: &mut super::Names,
    diag: &mut Diag,
) -> MainListener {
    let mut out = MainListener::default();
    let mut seen_main = false;
    let last = std::mem::take(&mut memo.chains);
    let last_matcher = memo.matcher.take();
    memo.reused = 0;
    memo.built = 0;
    memo.checked = 0;
    for l in listeners {
        let at = At {
            type_url: super::LISTENER_TYPE,
            name: &l.name,
        };
        if l.name == MAIN_INTERNAL && !seen_main {
            seen_main = true;
            main_internal(
                l,
                routes,
                known,
                (&last, &last_matcher),
                memo,
                rds,
                at,
                diag,
                &mut out,
            );
            continue;
        }
        // Other listeners: only the RDS names they would subscribe to.
        for (i, bytes) in l
            .filter_chains
            .iter()
            .chain(&l.default_filter_chain)
            .enumerate()
        {
            if let Some(chain) = decode_chain(bytes, i, at, diag) {
                rds.extend(chain_rds_names(&chain));
            }
        }
        if l.name == MAIN_INTERNAL {
            at.reject(diag, "duplicate listener");
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

/// `items` into `map`, a later item of a name replacing an earlier one (as inserting them in
/// turn would): built in bulk when `map` is empty.
fn into_map<V>(map: &mut BTreeMap<String, V>, items: Vec<(String, V)>) {
    if map.is_empty() {
        // `BTreeMap`'s `FromIterator` sorts stably and keeps the last of equal keys.
        *map = items.into_iter().collect();
    } else {
        map.extend(items);
    }
}

/// Count one in `n`; `true`.
fn count(n: &mut usize) -> bool {
    *n += 1;
    true
}

/// The cluster names a read is made with: all of them, whether they are the last call's, and
/// the names added since the set the memo's chains were read with (when it is known to be that
/// set and those).
type KnownNow<'a> = (&'a ClusterNames<'a>, bool, Option<&'a [&'a str]>);

type LastPieces<'a> = (
    &'a HashMap<u128, Arc<ChainPiece>, super::FastHash>,
    &'a Option<(u128, Arc<Matched>)>,
);

#[allow(clippy::too_many_arguments)]
fn main_internal(
    l: &ShallowListener,
    routes: &BTreeMap<&str, &RouteConfiguration>,
    (known, known_unchanged, grown): KnownNow<'_>,
    (last, last_matcher): LastPieces<'_>,
    memo: &mut ListenerMemo,
    rds: &mut super::Names,
    at: At<'_>,
    diag: &mut Diag,
    out: &mut MainListener,
) {
    if let Some(bytes) = &l.filter_chain_matcher {
        let d = super::pieces::digest(bytes);
        let matched = match last_matcher {
            Some((old, m)) if *old == d => Some(m.clone()),
            _ => match super::stored::decode::<Matcher>(bytes) {
                Ok(m) => {
                    let mut matched = Matched::default();
                    let mut found = Diag::default();
                    tree(&m, at, &mut found, &mut matched, (&mut memo.ranges, 0));
                    matched.diag = found;
                    matched.source = Some(d);
                    Some(Arc::new(matched))
                }
                Err(e) => {
                    at.reject(
                        diag,
                        format!("cannot decode resource: filter_chain_matcher: {e}"),
                    );
                    None
                }
            },
        };
        if let Some(m) = matched {
            diag.replay(&m.diag);
            memo.matcher = Some((d, m.clone()));
            out.matched = m;
        }
    }
    // The chains' names, by their 128-bit hashes (no copy of each of 10 000 names).
    let mut seen: std::collections::HashSet<u128, super::FastHash> = Default::default();
    seen.reserve(l.filter_chains.len());
    // Collected, then put in their maps at once (sorted and built in bulk): at 10 000 chains,
    // one insert at a time into each map was a third of reading the listener.
    let mut chains: Vec<(String, Arc<ChainPiece>)> = Vec::with_capacity(l.filter_chains.len());
    let mut authz: Vec<(String, Arc<ChainAuthz>)> = Vec::with_capacity(l.filter_chains.len());
    let mut telemetry: Vec<Arc<ChainPiece>> = Vec::new();
    for (i, bytes) in l.filter_chains.iter().enumerate() {
        let d = super::pieces::digest(bytes);
        let mut decoded = None;
        let piece = match last.get(&d) {
            Some(p)
                if known_unchanged
                    || match grown {
                        Some(added) => p.valid_grown(added),
                        None => count(&mut memo.checked) && p.valid_for(known),
                    } =>
            {
                memo.reused += 1;
                p.clone()
            }
            _ => {
                let Some(chain) = decode_chain(bytes, i, at, diag) else {
                    continue;
                };
                memo.built += 1;
                let piece = Arc::new(ChainPiece::build(&chain, routes, &Known::new(known), at));
                decoded = Some(chain);
                piece
            }
        };
        memo.chains.insert(d, piece.clone());
        rds.extend(piece.rds.iter().cloned());
        let name = &*piece.name;
        if !name.is_empty() && !seen.insert(piece.name_key) {
            at.reject(diag, format!("duplicate filter chain {}", piece.raw_name()));
            continue;
        }
        if l.filter_chain_matcher.is_none() {
            let chain = match decoded {
                Some(c) => c,
                None => match decode_chain(bytes, i, at, diag) {
                    Some(c) => c,
                    None => continue,
                },
            };
            classic_match(&chain, name, at, diag, Arc::make_mut(&mut out.matched));
        }
        diag.replay(&piece.listener_diag);
        if piece.telemetry.is_some() {
            telemetry.push(piece.clone());
        }
        match &piece.role {
            ChainRole::Direct { authz: a, path } => {
                authz.push((name.to_string(), a.clone()));
                if name == DIRECT_HTTP {
                    out.direct_path = *path;
                }
            }
            ChainRole::Service {
                authz: a, routes, ..
            } => {
                if routes.is_some() {
                    chains.push((name.to_string(), piece.clone()));
                }
                authz.push((name.to_string(), a.clone()));
            }
            ChainRole::Ignored => {}
        }
    }
    into_map(&mut out.chains, chains);
    into_map(&mut out.authz, authz);
    let http: Vec<(&str, &HcmTelemetry)> = telemetry
        .iter()
        .filter_map(|p| Some((&*p.name, p.telemetry.as_deref()?)))
        .collect();
    out.telemetry = super::telemetry::choose(&http, at, diag);
    for (ip, pc) in &out.matched.pods {
        for c in pc.http.iter().chain(&pc.tcp) {
            if !seen.contains(&super::pieces::name_key(c)) {
                at.warn(
                    diag,
                    format!(
                        "pod {ip}: the matcher selects chain {c}, which is not in the listener"
                    ),
                );
            }
        }
    }
    if let Some(bytes) = &l.default_filter_chain {
        if let Some(chain) = decode_chain(bytes, l.filter_chains.len(), at, diag) {
            rds.extend(chain_rds_names(&chain));
        }
        at.warn(diag, "default_filter_chain is not supported; ignored");
    }
}

#[cfg(test)]
mod tests;
