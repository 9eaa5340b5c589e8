//! Files mode: the services of the config as the `main_internal` listener istiod builds for a
//! waypoint, so that `istioctl proxy-config listener` lists a chain per service port.
//!
//! Shape followed: istio/istio 1.27 (1.27.9; 1.26 is the same),
//! `pilot/pkg/networking/core/listener_waypoint.go` `buildWaypointInternal`:
//! - one internal listener `main_internal` (inbound, listener filters `original_dst` and
//!   `http_inspector`);
//! - per service port a filter chain named after its cluster: `inbound-vip|<port>|http|<host>`
//!   holding an HTTP connection manager, `inbound-vip|<port>|tcp|<host>` holding a `tcp_proxy`
//!   (a port of undeclared protocol has both and is sniffed, as istiod's `IsUnsupported` ports);
//! - the chains selected by `filter_chain_matcher` (`pilot/pkg/networking/core/match/match.go`):
//!   a tree on `DestinationIPInput` whose custom `xds.type.matcher.v3.IPMatcher` lists each
//!   service's VIPs with a tree on `DestinationPortInput` (exact map `"<port>"` → action
//!   `StringValue{chain}`, or an `ApplicationProtocolInput` tree for a sniffed port);
//! - the TCP chain's `tcp_proxy` goes to the port's cluster, or to the clusters of the first
//!   VirtualService `tcp` route for the port (`buildWaypointNetworkFilters`,
//!   `getWaypointTCPRoutes`).
//!
//! One deliberate difference: istiod inlines each chain's route configuration in its HTTP
//! connection manager (`rds: "" // no RDS for inbound traffic`); here the connection manager
//! names it through RDS (`route_config_name` = the chain's name, the name istiod gives the
//! inline one) and the route configurations are in the `RoutesConfigDump`, where
//! `istioctl proxy-config route` reads them ([`super::routes`]).

use envoy_types::pb::envoy::config::core::v3::{
    config_source, AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions,
    TrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener, listener_filter, Filter, FilterChain, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::{
    ApplicationProtocolInput, DestinationIpInput, DestinationPortInput,
};
use envoy_types::pb::google::protobuf::{Any, StringValue, UInt32Value};
use envoy_types::pb::xds::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{
    matcher_tree, on_match, MatcherTree, MatcherType, OnMatch,
};
use envoy_types::pb::xds::r#type::matcher::v3::Matcher;
use std::collections::HashMap;

use routing::{Protocol, RouteDestination, Service, ServicePort, Snapshot, VirtualService};

use super::any;

/// istiod's name of the waypoint's internal listener (`MainInternalName`).
pub(super) const MAIN_INTERNAL: &str = "main_internal";

/// The type of istiod's destination-IP matcher (cncf/xds `xds/type/matcher/v3/ip.proto`; not
/// among envoy-types' generated types, its descriptor is among the ones JSON is rendered with).
const IP_MATCHER: &str = "type.googleapis.com/xds.type.matcher.v3.IPMatcher";

/// `xds.type.matcher.v3.IPMatcher`, with the field numbers of cncf/xds `ip.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct IpMatcher {
    #[prost(message, repeated, tag = "1")]
    range_matchers: Vec<IpRangeMatcher>,
}

/// `xds.type.matcher.v3.IPMatcher.IPRangeMatcher`.
#[derive(Clone, PartialEq, prost::Message)]
struct IpRangeMatcher {
    #[prost(message, repeated, tag = "1")]
    ranges: Vec<CidrRange>,
    #[prost(message, optional, tag = "2")]
    on_match: Option<OnMatch>,
    #[prost(bool, tag = "3")]
    exclusive: bool,
}

/// One service port and the chains that serve it.
pub(super) struct PortChains<'s> {
    pub(super) service: &'s Service,
    pub(super) port: &'s ServicePort,
    /// `inbound-vip|<port>|http|<host>`, also its route configuration's name; `None` for a TCP
    /// port.
    pub(super) http: Option<String>,
    /// `inbound-vip|<port>|tcp|<host>`; `None` for an HTTP port.
    pub(super) tcp: Option<String>,
    /// The VirtualServices naming the service, in precedence order.
    pub(super) virtual_services: &'s [&'s VirtualService],
}

/// Every service port of `snapshot`, in the order of its services and their ports, and the
/// VirtualServices by the hosts they name (`index`, filled here).
pub(super) fn service_ports<'s>(
    snapshot: &'s Snapshot,
    index: &'s mut HashMap<&'s str, Vec<&'s VirtualService>>,
) -> Vec<PortChains<'s>> {
    for vs in snapshot.virtual_services().iter().map(|v| &**v) {
        for host in &vs.hosts {
            let list = index.entry(host.as_str()).or_default();
            // A VirtualService naming a host twice counts once.
            if !list.last().is_some_and(|last| std::ptr::eq(*last, vs)) {
                list.push(vs);
            }
        }
    }
    let index: &'s HashMap<&'s str, Vec<&'s VirtualService>> = index;
    let mut out = Vec::new();
    for service in snapshot.services() {
        let virtual_services = index
            .get(service.hostname.as_str())
            .map_or(&[][..], Vec::as_slice);
        for port in &service.ports {
            let name = |proto| routing::cluster_name(&service.hostname, port.number, proto, None);
            let (http, tcp) = match port.protocol {
                Protocol::Tcp => (false, true),
                Protocol::Unknown => (true, true),
                _ => (true, false),
            };
            out.push(PortChains {
                service,
                port,
                http: http.then(|| name("http")),
                tcp: tcp.then(|| name("tcp")),
                virtual_services,
            });
        }
    }
    out
}

/// The cluster of a destination as this waypoint resolves it: `port` (the request's service
/// port when the route names none) and `subset` of the service `host`, named as the
/// `ClustersConfigDump` names it. A cluster the config does not have gets the name istiod would
/// give it (`getWaypointDestinationCluster`): `inbound-vip|…` for a service of the config,
/// `outbound|<port>|<subset>|<host>` for any other host.
pub(super) fn destination_cluster(
    snapshot: &Snapshot,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> String {
    if let Some(c) = snapshot.cluster(host, port, subset) {
        return c.name.to_string();
    }
    match snapshot.service_by_host(host) {
        Some(service) => {
            let proto = match service.port(port) {
                Some(p) if p.protocol == Protocol::Tcp => "tcp",
                _ => "http",
            };
            routing::cluster_name(&service.hostname, port, proto, subset)
        }
        None => format!("outbound|{port}|{}|{host}", subset.unwrap_or_default()),
    }
}

/// [`destination_cluster`] of a route's destination; `port` when it names none.
pub(super) fn route_cluster(snapshot: &Snapshot, d: &RouteDestination, port: u16) -> String {
    destination_cluster(
        snapshot,
        &d.host,
        d.port.unwrap_or(port),
        d.subset.as_deref(),
    )
}

fn typed<M: prost::Message + prost::Name>(name: &str, m: &M) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(any(m)),
    }
}

/// `match.ToChain`: the action selecting the chain `name`.
fn to_chain(name: &str) -> OnMatch {
    OnMatch {
        on_match: Some(on_match::OnMatch::Action(typed(
            name,
            &StringValue {
                value: name.to_string(),
            },
        ))),
        ..Default::default()
    }
}

/// An exact-match tree on `input` (`match.newMapper`), `on_no_match` as given.
fn exact_tree(
    input: TypedExtensionConfig,
    map: HashMap<String, OnMatch>,
    on_no_match: Option<OnMatch>,
) -> Matcher {
    Matcher {
        on_no_match: on_no_match.map(Box::new),
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(input),
            tree_type: Some(matcher_tree::TreeType::ExactMatchMap(
                matcher_tree::MatchMap { map },
            )),
        })),
    }
}

fn to_matcher(m: Matcher) -> OnMatch {
    OnMatch {
        on_match: Some(on_match::OnMatch::Matcher(Box::new(m))),
        ..Default::default()
    }
}

/// The chain (or, for a sniffed port, the application-protocol tree) of one port.
fn port_target(p: &PortChains<'_>) -> Option<OnMatch> {
    match (&p.http, &p.tcp) {
        (Some(http), Some(tcp)) => {
            // `match.NewAppProtocol`: HTTP as `http_inspector` reports it, anything else TCP.
            let map = ["'h2c'", "'http/1.1'"]
                .into_iter()
                .map(|k| (k.to_string(), to_chain(http)))
                .collect();
            let input = typed("application-protocol", &ApplicationProtocolInput {});
            Some(to_matcher(exact_tree(input, map, Some(to_chain(tcp)))))
        }
        (Some(only), None) | (None, Some(only)) => Some(to_chain(only)),
        (None, None) => None,
    }
}

fn cidr(ip: std::net::IpAddr) -> CidrRange {
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value {
            value: if ip.is_ipv4() { 32 } else { 128 },
        }),
    }
}

/// The `filter_chain_matcher`: destination IP (each service's VIPs) → destination port → chain.
fn chain_matcher(ports: &[PortChains<'_>]) -> Matcher {
    let mut ip = IpMatcher::default();
    let mut i = 0;
    while i < ports.len() {
        let service = ports[i].service;
        let mut map = HashMap::new();
        while i < ports.len() && std::ptr::eq(ports[i].service, service) {
            if let Some(target) = port_target(&ports[i]) {
                map.insert(ports[i].port.number.to_string(), target);
            }
            i += 1;
        }
        if service.vips.is_empty() || map.is_empty() {
            continue;
        }
        let input = typed("port", &DestinationPortInput {});
        ip.range_matchers.push(IpRangeMatcher {
            ranges: service.vips.iter().copied().map(cidr).collect(),
            on_match: Some(to_matcher(exact_tree(input, map, None))),
            exclusive: false,
        });
    }
    Matcher {
        on_no_match: None,
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(typed("ip", &DestinationIpInput {})),
            tree_type: Some(matcher_tree::TreeType::CustomMatch(TypedExtensionConfig {
                name: "ip".into(),
                typed_config: Some(Any {
                    type_url: IP_MATCHER.into(),
                    value: prost::Message::encode_to_vec(&ip),
                }),
            })),
        })),
    }
}

fn network_filter<M: prost::Message + prost::Name>(name: &str, m: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(m))),
    }
}

/// An HTTP chain's connection manager: its routes through RDS under the chain's name.
fn http_chain(p: &PortChains<'_>, name: &str) -> FilterChain {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("inbound_0.0.0.0_{}", p.port.number),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
            route_config_name: name.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        http2_protocol_options: matches!(p.port.protocol, Protocol::Http2 | Protocol::Grpc)
            .then(Http2ProtocolOptions::default),
        ..Default::default()
    };
    FilterChain {
        name: name.to_string(),
        filters: vec![network_filter(
            "envoy.filters.network.http_connection_manager",
            &hcm,
        )],
        ..Default::default()
    }
}

/// The destinations of the first VirtualService `tcp` route of the service that exists for its
/// port (no match blocks, or one whose `port` and `gateways` allow it; istiod does not look at
/// the source here), in the order the config lists them.
fn tcp_destinations<'s>(p: &PortChains<'s>) -> Option<&'s [RouteDestination]> {
    let port = p.port.number;
    let applies = |m: &routing::TcpMatch| {
        m.port.is_none_or(|n| n == port)
            && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
    };
    p.virtual_services
        .iter()
        .flat_map(|vs| vs.tcp.iter())
        .find(|r| r.matches.is_empty() || r.matches.iter().any(applies))
        .map(|r| r.destinations.as_slice())
}

/// A TCP chain's `tcp_proxy`: the port's own cluster, or the route's (weighted) clusters.
fn tcp_chain(snapshot: &Snapshot, p: &PortChains<'_>, name: &str) -> FilterChain {
    let port = p.port.number;
    let own = destination_cluster(snapshot, &p.service.hostname, port, None);
    let cluster = |d: &RouteDestination| route_cluster(snapshot, d, port);
    let specifier = match tcp_destinations(p) {
        Some([one]) => tcp_proxy::ClusterSpecifier::Cluster(cluster(one)),
        Some(many) if !many.is_empty() => {
            tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                clusters: many
                    .iter()
                    .filter(|d| d.weight > 0)
                    .map(|d| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: cluster(d),
                        weight: d.weight,
                        ..Default::default()
                    })
                    .collect(),
            })
        }
        _ => tcp_proxy::ClusterSpecifier::Cluster(own),
    };
    let proxy = TcpProxy {
        stat_prefix: name.to_string(),
        cluster_specifier: Some(specifier),
        ..Default::default()
    };
    FilterChain {
        name: name.to_string(),
        filters: vec![network_filter("envoy.filters.network.tcp_proxy", &proxy)],
        ..Default::default()
    }
}

fn listener_filter<M: prost::Message + prost::Name>(name: &str, m: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(m))),
        ..Default::default()
    }
}

/// `main_internal` for the service ports `ports` of `snapshot`.
pub(super) fn main_internal(snapshot: &Snapshot, ports: &[PortChains<'_>]) -> Listener {
    let mut chains = Vec::new();
    for p in ports {
        if let Some(tcp) = &p.tcp {
            chains.push(tcp_chain(snapshot, p, tcp));
        }
        if let Some(http) = &p.http {
            chains.push(http_chain(p, http));
        }
    }
    Listener {
        name: MAIN_INTERNAL.into(),
        listener_specifier: Some(listener::ListenerSpecifier::InternalListener(
            listener::InternalListenerConfig {},
        )),
        listener_filters: vec![
            listener_filter(
                "envoy.filters.listener.original_dst",
                &OriginalDst::default(),
            ),
            listener_filter(
                "envoy.filters.listener.http_inspector",
                &HttpInspector::default(),
            ),
        ],
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: chains,
        filter_chain_matcher: Some(chain_matcher(ports)),
        ..Default::default()
    }
}
