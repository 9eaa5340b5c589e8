//! Cross-resource assembly: services from chains and clusters, endpoints
//! from assignments, one DestinationRule and one VirtualService per service,
//! then [`SnapshotBuilder`].

use super::access;
use super::cluster::{EndpointSource, ServiceCluster};
use super::endpoint::{self, PodEndpoint};
use super::listener::{self, ChainKind};
use super::names::ClusterName;
use super::outbound;
use super::pieces::{AssignmentPiece, ClusterPiece, ClusterRole};
use super::route::{self, RouteCtx};
use super::{
    At, Diag, Rejection, TranslateOptions, Translation, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE,
    ROUTE_TYPE, SUBSET_LABEL_PREFIX,
};
use crate::builder::SnapshotBuilder;
use crate::model::StringMatch;
use crate::model::{
    DestinationRule, Endpoint, HttpRoute, Protocol, RouteDestination, Service, ServicePort, Subset,
    VirtualService,
};
use crate::path::PathPolicy;
use crate::policy::{ClusterPolicy, HashKey, PortTrafficPolicy, TrafficPolicy};
use crate::tcp::{TcpMatch, TcpRoute};
use crate::upstream::{SanMatcher, Transport};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpSpecifier;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
mod service;
pub use service::ANY_SERVICE_ACCOUNT;
use service::{bound_workloads, build_service, tcp_destination, waypoint_namespace};

#[derive(Default)]
struct PortAcc {
    chains: BTreeSet<String>,
    http2: bool,
    /// The HTTP chain's path handling.
    path: Option<PathPolicy>,
    /// The retry policy of the HTTP chain's default route.
    default_retries: Option<Arc<crate::actions::RetryPolicy>>,
}

#[derive(Default)]
struct ServiceAcc {
    namespace: Option<String>,
    vips: BTreeSet<IpAddr>,
    ports: BTreeMap<u16, PortAcc>,
    http: Vec<HttpRoute>,
    tcp: Vec<TcpRoute>,
    virtual_service: Option<(String, String)>,
}

fn index<'a, T>(
    items: &'a [T],
    name: impl Fn(&T) -> &str,
    type_url: &str,
    diag: &mut Diag,
) -> BTreeMap<&'a str, &'a T> {
    let mut out = BTreeMap::new();
    for item in items {
        let n = name(item);
        if out.insert(n, item).is_some() {
            diag.reject(type_url, n, "duplicate resource name");
        }
    }
    out
}

/// One state of the world: listeners and route configurations decoded, clusters and
/// assignments as their pieces (in the order they came: of a repeated name, the last is used
/// and the repetition rejected).
pub(crate) struct Input<'a> {
    pub(crate) listeners: &'a [Listener],
    pub(crate) routes: &'a [RouteConfiguration],
    pub(crate) clusters: &'a [Arc<ClusterPiece>],
    pub(crate) assignments: &'a [Arc<AssignmentPiece>],
}

/// The endpoints of each service cluster, by cluster name: an assignment's pods as its piece
/// holds them, or computed for this translation.
type Pods<'a> = BTreeMap<String, Cow<'a, [PodEndpoint]>>;

pub(crate) fn translate(
    res: &Input<'_>,
    opts: &TranslateOptions,
) -> Result<Translation, Vec<Rejection>> {
    let mut diag = Diag::default();
    let clusters = index(res.clusters, |c| c.name.as_str(), CLUSTER_TYPE, &mut diag);
    let clas = index(
        res.assignments,
        |c| c.name.as_str(),
        ENDPOINT_TYPE,
        &mut diag,
    );
    let rcs = index(res.routes, |r| r.name.as_str(), ROUTE_TYPE, &mut diag);
    let known: BTreeSet<String> = clusters.keys().map(|k| k.to_string()).collect();

    // Clusters.
    let mut hbone_peer_sans = None;
    let mut svc_clusters: BTreeMap<String, Cow<'_, ServiceCluster>> = BTreeMap::new();
    // `outbound|…` clusters' transport socket matches (see [`outbound`]).
    let mut socket_matches: BTreeMap<String, &[outbound::SocketMatch]> = BTreeMap::new();
    let mut subscriptions = super::Subscriptions::default();
    for (name, piece) in &clusters {
        diag.replay(&piece.diag);
        subscriptions.endpoints.extend(piece.eds.clone());
        match &piece.role {
            ClusterRole::Service { cluster, matches } => {
                svc_clusters.insert(name.to_string(), Cow::Borrowed(cluster));
                if let Some(m) = matches {
                    socket_matches.insert(name.to_string(), m);
                }
            }
            ClusterRole::ConnectOriginate(sans) => hbone_peer_sans = Some(sans.clone()),
            ClusterRole::Other => {}
        }
    }

    // Endpoints of each service cluster.
    let mut used_clas = BTreeSet::new();
    let mut pods: Pods<'_> = BTreeMap::new();
    let mut dns_targets = BTreeMap::new();
    for (name, sc) in &svc_clusters {
        let inline = || {
            clusters
                .get(name.as_str())
                .and_then(|c| c.load_assignment.as_ref())
        };
        let list = match &sc.source {
            EndpointSource::Eds(eds) => match clas.get(eds.as_str()) {
                Some(cla) => {
                    used_clas.insert(eds.clone());
                    let at = At {
                        type_url: ENDPOINT_TYPE,
                        name: eds,
                    };
                    diag.replay(&cla.diag);
                    match socket_matches.get(name) {
                        Some(m) => Cow::Owned(outbound::reachable(
                            cla.pods.clone(),
                            cla.socket_meta.as_ref(),
                            m,
                            at,
                            &mut diag,
                        )),
                        None => Cow::Borrowed(cla.pods.as_slice()),
                    }
                }
                None => {
                    diag.warn(
                        CLUSTER_TYPE,
                        name,
                        format!("endpoints {eds} not received yet"),
                    );
                    Cow::Borrowed(&[][..])
                }
            },
            EndpointSource::Inline => match inline() {
                Some(cla) => Cow::Owned(endpoint::pods(
                    cla,
                    At {
                        type_url: CLUSTER_TYPE,
                        name,
                    },
                    &mut diag,
                )),
                None => Cow::Borrowed(&[][..]),
            },
            EndpointSource::Dns(d) => Cow::Owned(super::dns::endpoints(
                inline(),
                d,
                &opts.dns,
                &mut dns_targets,
                At {
                    type_url: CLUSTER_TYPE,
                    name,
                },
                &mut diag,
            )),
            EndpointSource::None => Cow::Borrowed(&[][..]),
        };
        pods.insert(name.clone(), list);
    }
    for name in clas.keys() {
        if !used_clas.contains(*name) {
            diag.warn(
                ENDPOINT_TYPE,
                name,
                "no service cluster uses this assignment; ignored",
            );
        }
    }

    // Listeners and routes.
    let main = listener::translate(res.listeners, &rcs, &mut diag);
    for l in res.listeners {
        subscriptions.routes.extend(listener::rds_names(l));
    }
    let mut services: BTreeMap<String, ServiceAcc> = BTreeMap::new();
    for ((ip, port), chains) in &main.vips {
        for chain in chains {
            let Some(cn) = ClusterName::parse(chain) else {
                continue;
            };
            let acc = services.entry(cn.host.clone()).or_default();
            acc.vips.insert(*ip);
            acc.ports
                .entry(*port)
                .or_default()
                .chains
                .insert(chain.clone());
        }
    }
    for sc in svc_clusters.values() {
        let acc = services.entry(sc.name.host.clone()).or_default();
        if acc.namespace.is_none() {
            acc.namespace.clone_from(&sc.namespace);
        }
        acc.ports.entry(sc.name.port).or_default();
    }
    let mut hash_keys: Vec<(String, HashKey)> = Vec::new();
    for (chain, kind) in &main.chains {
        let Some(cn) = ClusterName::parse(chain) else {
            continue;
        };
        let acc = services.entry(cn.host.clone()).or_default();
        let port_acc = acc.ports.entry(cn.port).or_default();
        port_acc.chains.insert(chain.clone());
        match kind {
            ChainKind::Http {
                routes: Some(rc),
                rds,
                http2,
                default_fault,
                path,
            } => {
                port_acc.http2 |= *http2;
                set_path(port_acc, chain, *path, &mut diag);
                let at = if *rds {
                    At {
                        type_url: ROUTE_TYPE,
                        name: &rc.name,
                    }
                } else {
                    At {
                        type_url: LISTENER_TYPE,
                        name: listener::MAIN_INTERNAL,
                    }
                };
                if rc.virtual_hosts.len() > 1 {
                    at.warn(
                        &mut diag,
                        format!("chain {chain}: only the first virtual host is used"),
                    );
                }
                let Some(vh) = rc.virtual_hosts.first() else {
                    at.warn(
                        &mut diag,
                        format!("chain {chain}: no virtual host; no routes"),
                    );
                    continue;
                };
                let ctx = RouteCtx {
                    known_clusters: &known,
                    // Envoy: true for inline route configs unless set; istiod sets false.
                    validate_clusters: rc.validate_clusters.as_ref().map_or(!*rds, |v| v.value),
                    port: cn.port,
                    default_fault: default_fault.as_ref(),
                    vhost_retry: vh.retry_policy.as_ref(),
                    vhost_filters: Some(&vh.typed_per_filter_config),
                };
                let vhost_authz = vh
                    .typed_per_filter_config
                    .iter()
                    .any(|(f, any)| route::authz_override(f, any).is_some());
                let mut default_retries = None;
                for (i, r) in vh.routes.iter().enumerate() {
                    if route::is_default_route(r, chain) && vh.routes.len() == 1 && !vhost_authz {
                        if let Some(key) = route::default_route_hash(r) {
                            hash_keys.push((chain.clone(), key));
                        }
                        // Its retry policy as written (istiod 1.24+: reset-before-request).
                        default_retries =
                            route::default_route_retries(r, &ctx, at, &mut diag).map(Arc::new);
                        continue;
                    }
                    let fallback = format!("{chain}.{i}");
                    if let Some(t) = route::translate(r, &fallback, &ctx, at, &mut diag) {
                        if acc.virtual_service.is_none() {
                            acc.virtual_service = t.virtual_service;
                        }
                        hash_keys.extend(t.hash_keys);
                        acc.http.push(t.route);
                    }
                }
                if let (Some(d), Some(p)) = (default_retries, acc.ports.get_mut(&cn.port)) {
                    p.default_retries = Some(d);
                }
            }
            ChainKind::Http {
                routes: None, path, ..
            } => set_path(port_acc, chain, *path, &mut diag),
            ChainKind::Tcp(tcp) => {
                let at = At {
                    type_url: LISTENER_TYPE,
                    name: listener::MAIN_INTERNAL,
                };
                let mut dests = Vec::new();
                match &tcp.cluster_specifier {
                    Some(TcpSpecifier::Cluster(c)) if c == chain => {}
                    Some(TcpSpecifier::Cluster(c)) => {
                        dests.push(tcp_destination(c, 100, &known, at, &mut diag))
                    }
                    Some(TcpSpecifier::WeightedClusters(w)) => {
                        let sum: u64 = w.clusters.iter().map(|c| u64::from(c.weight)).sum();
                        if sum == 0 || sum > u64::from(u32::MAX) {
                            at.reject(
                                &mut diag,
                                format!("chain {chain}: tcp_proxy weights sum to {sum}"),
                            );
                        }
                        for c in w.clusters.iter().filter(|c| c.weight > 0) {
                            dests.push(tcp_destination(&c.name, c.weight, &known, at, &mut diag));
                        }
                    }
                    None => at.reject(
                        &mut diag,
                        format!("chain {chain}: tcp_proxy without cluster"),
                    ),
                }
                if let Some(key) = tcp.hash_policy.first().and_then(|h| {
                    use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
                    matches!(h.policy_specifier, Some(PolicySpecifier::SourceIp(_)))
                        .then_some(HashKey::SourceIp)
                }) {
                    hash_keys.push((chain.clone(), key));
                }
                if !dests.is_empty() {
                    acc.tcp.push(TcpRoute {
                        name: format!("{chain}.tcp"),
                        matches: vec![TcpMatch {
                            port: Some(cn.port),
                            ..TcpMatch::default()
                        }],
                        destinations: dests,
                    });
                }
            }
        }
    }

    // Hash keys from the routes onto consistent-hash clusters.
    for (cluster, key) in hash_keys {
        let unset = svc_clusters.get(&cluster).is_some_and(|sc| {
            sc.policy
                .load_balancer
                .as_ref()
                .and_then(|lb| lb.consistent_hash.as_ref())
                .is_some_and(|ch| ch.key.is_none())
        });
        if let Some(ch) = svc_clusters
            .get_mut(&cluster)
            .filter(|_| unset)
            .and_then(|sc| sc.to_mut().policy.load_balancer.as_mut())
            .and_then(|lb| lb.consistent_hash.as_mut())
        {
            ch.key = Some(key);
        }
    }

    // Each service's clusters, grouped once (a scan per service was quadratic in services).
    let mut by_host: BTreeMap<&str, Vec<(&String, &ServiceCluster)>> = BTreeMap::new();
    for (name, sc) in &svc_clusters {
        let sc: &ServiceCluster = sc;
        by_host
            .entry(sc.name.host.as_str())
            .or_default()
            .push((name, sc));
    }
    let mut builder = SnapshotBuilder::new();
    builder.authorization(access::authorization(&main.authz));
    if let Some(p) = main.direct_path {
        builder.pod_path(p);
    }
    // Without a `connect_originate` cluster, what istiod writes by default: the trust domain.
    let hbone_peer_sans = hbone_peer_sans.unwrap_or_else(|| {
        vec![SanMatcher::uri(StringMatch::Prefix(format!(
            "spiffe://{}/",
            opts.trust_domain
        )))]
    });
    let waypoint_namespace = waypoint_namespace(&hbone_peer_sans);
    builder.hbone_peer_sans(hbone_peer_sans);
    let mut known_pods: BTreeMap<IpAddr, Arc<Endpoint>> = BTreeMap::new();
    for (host, acc) in services {
        let mine = by_host.get(host.as_str()).map_or(&[][..], Vec::as_slice);
        if is_route_only(&acc, mine, &socket_matches) {
            builder.route_only(&host);
        }
        let eps = build_service(&host, acc, mine, &pods, opts, &mut diag, &mut builder);
        for ep in eps {
            known_pods.entry(ep.address).or_insert(ep);
        }
    }
    bound_workloads(
        &main,
        &known_pods,
        waypoint_namespace.as_deref(),
        opts,
        &mut diag,
        &mut builder,
    );
    for ((host, port), chains) in &main.authorities {
        let other = chains
            .iter()
            .filter(|c| ClusterName::parse(c).is_none_or(|cn| cn.host != *host || cn.port != *port))
            .collect::<Vec<_>>();
        if !other.is_empty() {
            diag.warn(
                LISTENER_TYPE,
                listener::MAIN_INTERNAL,
                format!("authority {host}:{port} leads to chains of another service port {other:?}; the authority is served as {host}:{port}"),
            );
        }
        builder.authority(host, *port);
    }
    if !diag.rejections.is_empty() {
        return Err(diag.rejections);
    }
    for w in &diag.warnings {
        builder.warning(w.to_string());
    }
    for t in dns_targets.values() {
        builder.dns_target(t.clone());
    }
    Ok(Translation {
        snapshot: builder.build(),
        warnings: diag.warnings,
        dns: dns_targets.into_values().collect(),
        subscriptions,
    })
}

/// A service known only from `outbound|…` clusters (no VIP, no `inbound-vip` cluster of it):
/// this waypoint routes to it but does not serve it.
fn is_route_only(
    acc: &ServiceAcc,
    mine: &[(&String, &ServiceCluster)],
    outbound: &BTreeMap<String, &[outbound::SocketMatch]>,
) -> bool {
    acc.vips.is_empty() && !mine.is_empty() && mine.iter().all(|(n, _)| outbound.contains_key(*n))
}

/// One path handling per service port: two HTTP chains that disagree get the stricter of each
/// setting (escaped slashes that differ: rejected), so no path passes less normalized.
fn set_path(acc: &mut PortAcc, chain: &str, path: PathPolicy, diag: &mut Diag) {
    match acc.path {
        None => acc.path = Some(path),
        Some(p) if p == path => {}
        Some(p) => {
            diag.warn(
                LISTENER_TYPE,
                listener::MAIN_INTERNAL,
                format!("chain {chain}: path handling differs from another chain of its port; the stricter of each is used"),
            );
            acc.path = Some(PathPolicy {
                normalize_path: p.normalize_path || path.normalize_path,
                merge_slashes: p.merge_slashes || path.merge_slashes,
                escaped_slashes: if p.escaped_slashes == path.escaped_slashes {
                    p.escaped_slashes
                } else {
                    crate::path::EscapedSlashes::RejectRequest
                },
            });
        }
    }
}
