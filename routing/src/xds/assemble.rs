//! Cross-resource assembly: services from chains and clusters, endpoints
//! from assignments, one DestinationRule and one VirtualService per service,
//! then [`SnapshotBuilder`].

use super::access;
use super::chain::{ChainPiece, ChainRole, ClusterNames, Named, RoutesKind};
use super::cluster::{EndpointSource, ServiceCluster};
use super::endpoint::{self, PodEndpoint};
use super::listener::{self, ListenerMemo, ShallowListener};
use super::names::ClusterName;
use super::outbound;
use super::pieces::{AssignmentPiece, ClusterPiece, ClusterRole};
use super::{
    At, Diag, FastHash, Rejection, TranslateOptions, Translation, CLUSTER_TYPE, ENDPOINT_TYPE,
    LISTENER_TYPE, ROUTE_TYPE, SUBSET_LABEL_PREFIX,
};
use crate::builder::SnapshotBuilder;
use crate::model::StringMatch;
use crate::model::{
    DestinationRule, Endpoint, HttpRoute, Protocol, Service, ServicePort, Subset, VirtualService,
};
use crate::path::PathPolicy;
use crate::policy::{ClusterPolicy, HashKey, PortTrafficPolicy, TrafficPolicy};
use crate::snapshot::{PortMap, Snapshot};
use crate::tcp::TcpRoute;
use crate::upstream::{SanMatcher, Transport};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use litemap::LiteMap;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
mod aligned;
pub(super) mod eds;
mod key;
pub(super) mod routes;
pub(super) mod service;
pub(super) mod services;
use key::{key_view, Remembered, ServiceKey};
pub use service::ANY_SERVICE_ACCOUNT;
use service::{bound_workloads, build_service, waypoint_namespace, ServiceOut};

#[derive(Debug, Default, Clone)]
struct PortAcc {
    chains: LiteMap<String, ()>,
    http2: bool,
    /// The HTTP chain's path handling.
    path: Option<PathPolicy>,
    /// The retry policy of the HTTP chain's default route.
    default_retries: Option<Arc<crate::actions::RetryPolicy>>,
}

/// The last translation's services, by host, each with what it was built from: a service whose
/// inputs are the same is not built again. Once a snapshot is published, each service also keeps
/// the clusters that snapshot holds for it, so that the next snapshot shares them.
#[derive(Debug, Default)]
pub(crate) struct ServiceMemo {
    services: HashMap<String, Box<Remembered>, FastHash>,
    /// The version of the last translation's snapshot.
    version: u64,
    /// The services whose clusters that snapshot built (none was remembered).
    clusters_built: Vec<String>,
    /// Services reused and built by the last translation, and of the reused those whose
    /// clusters it shared.
    pub(crate) reused: usize,
    pub(crate) built: usize,
    pub(crate) shared: usize,
    /// The last full translation's `main_internal` listener, with what reading it reported and
    /// the RDS names it asked for (what a route patch compares against, see [`routes`]).
    main: Option<routes::MainState>,
}

impl ServiceMemo {
    /// Keep `r` for the next translation; its service and the clusters a published snapshot
    /// holds for it, if any (else they are built, and taken from the snapshot once published).
    fn remember(
        &mut self,
        host: String,
        r: Box<Remembered>,
    ) -> (Arc<ServiceOut>, Option<Arc<PortMap>>) {
        let shared = (r.out.clone(), r.clusters.clone());
        match &shared.1 {
            Some(_) => self.shared += 1,
            None => self.clusters_built.push(host.clone()),
        }
        self.services.insert(host, r);
        shared
    }

    /// A patch made snapshot `version` with the services of `rebuilt` built again (with what
    /// they were built from) and every other one reused, its clusters shared.
    fn rebuilt(&mut self, version: u64, rebuilt: Vec<(String, ServiceKey, Arc<ServiceOut>)>) {
        self.version = version;
        self.clusters_built.clear();
        self.built = rebuilt.len();
        for (host, _, _) in &rebuilt {
            self.services.remove(host);
        }
        self.reused = self.services.len();
        self.shared = self.reused;
        for (host, key, out) in rebuilt {
            self.clusters_built.push(host.clone());
            let clusters = None;
            self.services
                .insert(host, Box::new(Remembered { key, out, clusters }));
        }
    }

    /// `published` (carried over and live) came from the last translation: remember the
    /// clusters it built, for the next snapshot to share. Any other snapshot is ignored (its
    /// clusters are built again next time).
    pub(crate) fn published(&mut self, published: &Snapshot) {
        if published.version() != self.version {
            return;
        }
        for host in std::mem::take(&mut self.clusters_built) {
            if let Some(r) = self.services.get_mut(&host) {
                r.clusters = published.clusters.get(host.as_str()).cloned();
            }
        }
    }
}

#[derive(Debug, Default)]
struct ServiceAcc {
    namespace: Option<Box<str>>,
    /// Sorted vectors, not B-trees: one or two entries each, copied into the service's memo.
    vips: LiteMap<IpAddr, ()>,
    ports: LiteMap<u16, PortAcc>,
    http: Vec<Arc<HttpRoute>>,
    tcp: Vec<TcpRoute>,
    virtual_service: Option<(String, String)>,
    /// The chains its routes came from.
    chains: Vec<Arc<ChainPiece>>,
}

impl ServiceAcc {
    /// The matcher sends (VIP, port) to `chain`, one of this service's.
    fn add_vip(&mut self, ip: IpAddr, port: u16, chain: &str) {
        self.vips.insert(ip, ());
        self.ports
            .entry(port)
            .or_default()
            .chains
            .insert(chain.to_string(), ());
    }

    /// A copy of what the service is built from (its namespace, VIPs, ports and chains), for
    /// its memo; the routes, which only its VirtualService takes, are left out.
    fn without_routes(&self) -> ServiceAcc {
        ServiceAcc {
            namespace: self.namespace.clone(),
            vips: self.vips.clone(),
            ports: self.ports.clone(),
            http: Vec::new(),
            tcp: Vec::new(),
            virtual_service: None,
            chains: self.chains.clone(),
        }
    }
}

pub(crate) fn index<'a, T>(
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
    pub(crate) listeners: &'a [ShallowListener],
    pub(crate) routes: &'a [RouteConfiguration],
    pub(crate) clusters: &'a [Arc<ClusterPiece>],
    pub(crate) assignments: &'a [Arc<AssignmentPiece>],
}

/// The endpoints of each service cluster, by cluster name: an assignment's pods as its piece
/// holds them, or computed for this translation.
type Pods<'a> = BTreeMap<&'a str, Cow<'a, [Arc<PodEndpoint>]>>;

/// Pods read at assembly (inline, DNS) as an assignment piece holds them.
fn shared(pods: Vec<PodEndpoint>) -> Vec<Arc<PodEndpoint>> {
    pods.into_iter().map(Arc::new).collect()
}

pub(crate) fn translate(
    res: &Input<'_>,
    opts: &TranslateOptions,
    memo: &mut ListenerMemo,
    services_memo: &mut ServiceMemo,
) -> Result<Translation, Vec<Rejection>> {
    let mut diag = Diag::default();
    services_memo.main = None;
    let clusters = index(res.clusters, |c| &*c.name, CLUSTER_TYPE, &mut diag);
    let clas = index(res.assignments, |c| &*c.name, ENDPOINT_TYPE, &mut diag);
    let rcs = index(res.routes, |r| &*r.name, ROUTE_TYPE, &mut diag);
    let known: ClusterNames<'_> = clusters.values().map(|c| Named(&c.name)).collect();

    // Clusters.
    let mut hbone_peer_sans = None;
    let mut svc_clusters: BTreeMap<&str, Cow<'_, ServiceCluster>> = BTreeMap::new();
    // `outbound|…` clusters' transport socket matches (see [`outbound`]).
    let mut socket_matches: BTreeMap<&str, &[outbound::SocketMatch]> = BTreeMap::new();
    let mut subscriptions = super::Subscriptions::default();
    for (name, piece) in &clusters {
        diag.replay(&piece.diag);
        subscriptions.endpoints.extend(piece.eds.clone());
        match &piece.role {
            ClusterRole::Service { cluster, matches } => {
                svc_clusters.insert(name, Cow::Borrowed(cluster));
                if let Some(m) = matches {
                    socket_matches.insert(name, m);
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
        let list = match &sc.source {
            EndpointSource::Eds(eds) => match clas.get(&**eds) {
                Some(cla) => {
                    used_clas.insert(&**eds);
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
            EndpointSource::Inline(inline) => match inline.as_deref() {
                Some(cla) => Cow::Owned(shared(endpoint::pods(
                    cla,
                    At {
                        type_url: CLUSTER_TYPE,
                        name,
                    },
                    &mut diag,
                ))),
                None => Cow::Borrowed(&[][..]),
            },
            EndpointSource::Dns(d) => Cow::Owned(shared(super::dns::endpoints(
                d.load_assignment.as_ref(),
                &d.settings,
                &opts.dns,
                &mut dns_targets,
                At {
                    type_url: CLUSTER_TYPE,
                    name,
                },
                &mut diag,
            ))),
            EndpointSource::None => Cow::Borrowed(&[][..]),
        };
        pods.insert(name, list);
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
    let warned = diag.warnings.len();
    let main = listener::translate(
        res.listeners,
        &rcs,
        &known,
        (false, &[]),
        memo,
        &mut subscriptions.routes,
        &mut diag,
    );
    let listener_warnings = diag.warnings[warned..].to_vec();
    let mut services: BTreeMap<String, ServiceAcc> = BTreeMap::new();
    for ((ip, port), chains) in &main.matched.vips {
        for chain in chains {
            let Some(cn) = ClusterName::parse(chain) else {
                continue;
            };
            service_acc(&mut services, cn.host()).add_vip(*ip, *port, chain);
        }
    }
    for sc in svc_clusters.values() {
        let acc = service_acc(&mut services, sc.name.host());
        if acc.namespace.is_none() {
            acc.namespace.clone_from(&sc.namespace);
        }
        acc.ports.entry(sc.name.port).or_default();
    }
    let mut hash_keys: Vec<(String, HashKey)> = Vec::new();
    for (chain, piece) in &main.chains {
        if let Some(cn) = routed_chain(piece) {
            let acc = service_acc(&mut services, cn.host());
            add_chain(acc, chain, piece, &mut diag, &mut hash_keys);
        }
    }

    // Hash keys from the routes onto consistent-hash clusters.
    for (cluster, key) in hash_keys {
        if let Some(sc) = svc_clusters.get_mut(cluster.as_str()) {
            take_hash_key(sc, key);
        }
    }

    // Each service's clusters, grouped once (a scan per service was quadratic in services).
    let mut by_host: BTreeMap<&str, Vec<(&str, &ServiceCluster)>> = BTreeMap::new();
    for (name, sc) in &svc_clusters {
        let sc: &ServiceCluster = sc;
        by_host.entry(sc.name.host()).or_default().push((name, sc));
    }
    let mut builder = SnapshotBuilder::new();
    builder.authorization(access::authorization(&main.authz));
    if let Some(p) = main.direct_path {
        builder.pod_path(p);
    }
    if let Some(t) = &main.telemetry {
        builder.telemetry(t.clone());
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
    let mut last = std::mem::take(&mut services_memo.services);
    services_memo.reused = 0;
    services_memo.built = 0;
    services_memo.shared = 0;
    services_memo.clusters_built.clear();
    for (host, acc) in services {
        let mine = by_host.get(host.as_str()).map_or(&[][..], Vec::as_slice);
        if is_route_only(&acc, mine, &socket_matches) {
            builder.route_only(&host);
        }
        let view = key_view(&acc, mine, &clusters, &clas, opts);
        // The last translation's service while what it was built from holds (kept under its
        // host's name as remembered), else built again.
        let kept = view
            .as_ref()
            .and_then(|v| last.remove_entry(&host).filter(|(_, r)| v.matches(&r.key)));
        let (out, clusters) = match kept {
            Some((name, r)) => {
                services_memo.reused += 1;
                services_memo.remember(name, r)
            }
            None => {
                services_memo.built += 1;
                let out = Arc::new(build_service(&host, &acc, mine, &pods, opts));
                match view {
                    Some(v) => services_memo.remember(
                        host.clone(),
                        Box::new(Remembered {
                            key: v.owned(),
                            out,
                            clusters: None,
                        }),
                    ),
                    None => (out, None),
                }
            }
        };
        diag.replay(&out.diag);
        out.emit(acc, clusters, &mut builder);
        for ep in &out.endpoints {
            known_pods.entry(ep.address).or_insert_with(|| ep.clone());
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
    for ((host, port), chains) in &main.matched.authorities {
        let other = chains
            .iter()
            .filter(|c| {
                ClusterName::parse(c)
                    .is_none_or(|cn| cn.host() != host.as_str() || cn.port != *port)
            })
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
    let snapshot = builder.build();
    services_memo.version = snapshot.version();
    services_memo.main = Some(routes::MainState {
        main,
        warnings: listener_warnings,
        rds: subscriptions.routes.clone(),
    });
    Ok(Translation {
        snapshot,
        warnings: diag.warnings,
        dns: dns_targets.into_values().collect(),
        subscriptions: Arc::new(subscriptions),
    })
}

/// The service of `piece` when it is a service chain with routes (one its service is built
/// from).
fn routed_chain(piece: &ChainPiece) -> Option<&ClusterName> {
    match &piece.role {
        ChainRole::Service {
            cluster,
            routes: Some(_),
            ..
        } => Some(cluster),
        _ => None,
    }
}

/// Service chain `chain` (with routes, see [`routed_chain`]) added to its service's
/// accumulator: its port, protocol, path handling and routes; the hash keys its routes ask of
/// their clusters go in `hash_keys`, what it reports in `diag`.
fn add_chain(
    acc: &mut ServiceAcc,
    chain: &str,
    piece: &Arc<ChainPiece>,
    diag: &mut Diag,
    hash_keys: &mut Vec<(String, HashKey)>,
) {
    let ChainRole::Service {
        cluster: cn,
        routes: Some(routes),
        ..
    } = &piece.role
    else {
        return;
    };
    acc.chains.push(piece.clone());
    let port_acc = acc.ports.entry(cn.port).or_default();
    port_acc.chains.insert(chain.to_string(), ());
    hash_keys.extend(routes.hash_keys.iter().cloned());
    match &routes.kind {
        RoutesKind::Http {
            http2, path, table, ..
        } => {
            port_acc.http2 |= *http2;
            // Its path warning, then what its routes found.
            set_path(port_acc, chain, *path, diag);
            diag.replay(&routes.diag);
            if let Some(table) = table {
                if acc.virtual_service.is_none() {
                    acc.virtual_service.clone_from(&table.virtual_service);
                }
                acc.http.extend(table.routes.iter().cloned());
                if let (Some(d), Some(p)) = (&table.default_retries, acc.ports.get_mut(&cn.port)) {
                    p.default_retries = Some(d.clone());
                }
            }
        }
        RoutesKind::Tcp(route) => {
            diag.replay(&routes.diag);
            acc.tcp.extend(route.iter().cloned());
        }
    }
}

/// A consistent-hash cluster without a key takes `key` (its route's); copied from its piece
/// only then. A cluster with a key keeps it (the first route's).
fn take_hash_key(sc: &mut Cow<'_, ServiceCluster>, key: HashKey) {
    let unset = sc
        .policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
        .is_some_and(|ch| ch.key.is_none());
    if unset {
        if let Some(ch) = Arc::make_mut(&mut sc.to_mut().policy)
            .load_balancer
            .as_mut()
            .and_then(|lb| lb.consistent_hash.as_mut())
        {
            ch.key = Some(key);
        }
    }
}

/// The accumulator of service `host` (its name copied only when it is new).
fn service_acc<'m>(
    services: &'m mut BTreeMap<String, ServiceAcc>,
    host: &str,
) -> &'m mut ServiceAcc {
    if !services.contains_key(host) {
        services.insert(host.to_string(), ServiceAcc::default());
    }
    services.get_mut(host).expect("inserted")
}

/// A service known only from `outbound|…` clusters (no VIP, no `inbound-vip` cluster of it):
/// this waypoint routes to it but does not serve it.
fn is_route_only(
    acc: &ServiceAcc,
    mine: &[(&str, &ServiceCluster)],
    outbound: &BTreeMap<&str, &[outbound::SocketMatch]>,
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
