//! The immutable, indexed routing snapshot and its lookups.

use crate::hosts::normalize_authority;
use crate::lb::Cluster;
use crate::matching::RequestView;
use crate::model::{
    DestinationRule, Endpoint, HttpRoute, Protocol, RouteMatch, Service, ServicePort,
    VirtualService,
};
use crate::runtime::Registry;
use crate::shards::Shards;
use crate::tcp::{TcpConnection, TcpRoute};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
mod json;
mod patch;
mod splice;
pub(crate) use patch::EndpointsPatch;
pub(crate) use splice::{ServiceSplice, SplicedService};

/// What the CONNECT authority of an inbound tunnel addresses.
#[derive(Debug, Clone)]
pub enum Destination<'s> {
    /// A service VIP:port.
    Service {
        service: &'s Service,
        port: &'s ServicePort,
    },
    /// A pod (endpoint) IP:port; `services` are the services that contain this
    /// endpoint and expose `port` (as target port or service port).
    Pod {
        endpoint: &'s Endpoint,
        port: u16,
        services: Vec<&'s Service>,
        /// `Some` when the pod's workload uses this waypoint (xDS `direct-http` /
        /// `direct-tcp`): served on any port and forwarded to the pod whatever the Host, the
        /// protocol detected (`Unknown`) or fixed when only one of the chains exists.
        /// `None`: an endpoint of `services` addressed on one of their ports.
        bound: Option<Protocol>,
    },
}

/// Result of [`Snapshot::route`].
#[derive(Debug, Clone)]
pub enum RouteDecision<'s> {
    /// A VirtualService route matched. `route_index` is the index of the route
    /// in that VirtualService's own `http` list.
    Route {
        /// `"namespace/name"`
        virtual_service: &'s str,
        route_index: usize,
        route: &'s Arc<HttpRoute>,
    },
    /// No VirtualService for this service, or none of its routes exists for
    /// this port: route to all endpoints (cluster without subset).
    Default,
    /// A VirtualService exists but no route matched → 404, flag NR.
    NoRoute,
}

#[derive(Debug)]
pub(crate) struct RouteEntry {
    pub(crate) virtual_service: String,
    pub(crate) index: usize,
    /// Shared so that a request can keep its route past the lookup without copying it.
    pub(crate) route: Arc<HttpRoute>,
}

#[derive(Debug)]
pub(crate) struct TcpRouteEntry {
    pub(crate) virtual_service: String,
    pub(crate) route: TcpRoute,
}

#[derive(Debug)]
pub(crate) struct PortClusters {
    pub(crate) all: Cluster,
    /// Sorted by subset name, each name once. A slice, not a `BTreeMap`: a map's node has room
    /// for eleven `Cluster`s (~8 KiB) where a service has two or three subsets.
    pub(crate) subsets: Box<[Cluster]>,
}

impl PortClusters {
    /// The cluster of subset `name`.
    pub(crate) fn subset(&self, name: &str) -> Option<&Cluster> {
        let i = self
            .subsets
            .binary_search_by(|c| c.subset.as_deref().unwrap_or("").cmp(name))
            .ok()?;
        self.subsets.get(i)
    }
}

/// One service's clusters by service port. Boxed: a `PortClusters` is large and a one-entry map
/// has room for four (8 000 services held 18 MiB of empty slots).
pub(crate) type PortMap = HashMap<u16, Box<PortClusters>>;

/// The services (by FQDN, a key of `by_host`) that hold a pod, each with its endpoint, in
/// service order. By name rather than index: a service added or removed (a splice, see
/// [`Snapshot::with_services`]) moves the indexes of the services after it, not their names.
/// Most pods back one service: that one is inline, where a shared list would be an allocation
/// per pod.
#[derive(Debug, Clone)]
pub(crate) enum PodServices {
    One(PodService),
    Many(Arc<[PodService]>),
}

impl std::ops::Deref for PodServices {
    type Target = [PodService];

    fn deref(&self) -> &[PodService] {
        match self {
            PodServices::One(one) => std::slice::from_ref(one),
            PodServices::Many(many) => many,
        }
    }
}

impl From<Vec<PodService>> for PodServices {
    fn from(mut list: Vec<PodService>) -> Self {
        match list.pop() {
            Some(one) if list.is_empty() => PodServices::One(one),
            Some(last) => {
                list.push(last);
                PodServices::Many(list.into())
            }
            None => PodServices::Many(Arc::new([])),
        }
    }
}

/// A service (by FQDN) that holds a pod, and its endpoint there.
pub(crate) type PodService = (Arc<str>, Arc<Endpoint>);

/// FQDNs and their short names → service index. The names shared (`Arc<str>`): a splice
/// copies the table and moves its indexes without making 50 000 strings again.
pub(crate) type ByHost = HashMap<Arc<str>, usize, crate::xds::FastHash>;

/// VIP:port → (service index, port index).
pub(crate) type ByVip = HashMap<SocketAddr, (usize, usize), crate::xds::FastHash>;

/// Immutable routing state. `Send + Sync`; share it behind an `Arc`. Its tables are `Arc`s of
/// their own, so that a snapshot made from it by a patch (see [`Snapshot::patched`], the xDS
/// translator's EDS push) shares every table the patch leaves alone.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) services: Arc<Vec<Service>>,
    /// Endpoints per service (same index as `services`), each list shared with the snapshots
    /// that did not change it, in chunks shared likewise (an EDS push copies one).
    pub(crate) endpoints: crate::chunked::Chunked<Arc<[Arc<Endpoint>]>>,
    /// FQDNs and aliases → service index.
    pub(crate) by_host: Arc<ByHost>,
    pub(crate) by_vip: Arc<ByVip>,
    pub(crate) by_pod_ip: Shards<IpAddr, PodServices>,
    /// Service FQDN → routes of all its VirtualServices, in load order.
    pub(crate) routes: Shards<Arc<str>, Arc<[RouteEntry]>>,
    /// Service FQDN → `tcp` routes of every VirtualService naming it, in
    /// precedence order.
    pub(crate) tcp_routes: Arc<HashMap<String, Vec<TcpRouteEntry>>>,
    pub(crate) virtual_services: Arc<Vec<Arc<VirtualService>>>,
    /// Shared with the front-end's memo (xDS: a service's rule lives as long as the service).
    pub(crate) destination_rules: Arc<Vec<Arc<DestinationRule>>>,
    /// Per service, its ports' clusters; shared with the next snapshot when the service did not
    /// change (see [`Snapshot::carry_over_state`]).
    pub(crate) clusters: Shards<Arc<str>, Arc<PortMap>>,
    pub(crate) warnings: Arc<Vec<String>>,
    pub(crate) authorization: Arc<crate::authz::Authorization>,
    /// Path handling for pod-addressed requests; `None` = the process default.
    pub(crate) pod_path: Option<crate::path::PathPolicy>,
    /// Pods whose workloads use this waypoint, with the protocol their chains allow.
    pub(crate) workloads: Arc<HashMap<IpAddr, (Arc<Endpoint>, Protocol)>>,
    /// Every workload the config declares (files mode: each WorkloadEntry, selected or not), for
    /// recognising a request's source.
    pub(crate) known_workloads: Arc<HashMap<IpAddr, Arc<Endpoint>>>,
    /// CONNECT authority `(hostname, port)` → the service VIP:port it stands for.
    pub(crate) by_authority: Arc<HashMap<(String, u16), SocketAddr>>,
    /// What an HBONE peer's certificate must show: `None` = the endpoint's own identity (files);
    /// `Some(matchers)` = istiod's `connect_originate` SAN matchers, any of them (empty: the
    /// chain only).
    pub(crate) hbone_peer_sans: Option<Arc<Vec<crate::upstream::SanMatcher>>>,
    /// Hostnames whose answers this snapshot's endpoints were built from (files mode:
    /// ServiceEntries with `resolution: DNS`); the loader's caller keeps them resolved.
    pub(crate) dns_targets: Arc<Vec<crate::dns::DnsTarget>>,
    /// What the Telemetry API declares; shared so that a publish can tell whether it changed.
    pub(crate) telemetry: Arc<crate::telemetry::TelemetryConfig>,
    /// The clusters' runtime state by name (see [`Snapshot::runtime`]).
    pub(crate) runtime: OnceLock<Registry>,
}

impl Snapshot {
    /// A snapshot with nothing in it (version 0).
    pub fn empty() -> Self {
        Snapshot::default()
    }

    /// Unique per build (process-wide counter starting at 1).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter()
    }

    /// Endpoints of a service (by FQDN or alias); empty if unknown.
    pub fn endpoints(&self, host: &str) -> &[Arc<Endpoint>] {
        self.service_index(host)
            .map(|i| &*self.endpoints[i])
            .unwrap_or(&[])
    }

    /// Path handling of pod-addressed requests outside any service port (xDS: `direct-http`);
    /// `None` = the process default.
    pub fn pod_path(&self) -> Option<crate::path::PathPolicy> {
        self.pod_path
    }

    /// The SAN matchers HBONE peers are verified against (xDS: `connect_originate`'s), or
    /// `None` when each endpoint's own identity is required (files).
    pub fn hbone_peer_sans(&self) -> Option<&Arc<Vec<crate::upstream::SanMatcher>>> {
        self.hbone_peer_sans.as_ref()
    }

    /// Hostnames to keep resolved for this config (see [`crate::dns`]).
    pub fn dns_targets(&self) -> &[crate::dns::DnsTarget] {
        &self.dns_targets
    }

    /// Access logs and tracing as the config declares them (default: nothing declared).
    pub fn telemetry(&self) -> &Arc<crate::telemetry::TelemetryConfig> {
        &self.telemetry
    }

    /// The authorization policies in force.
    pub fn authorization(&self) -> &crate::authz::Authorization {
        &self.authorization
    }

    pub fn virtual_services(&self) -> &[Arc<VirtualService>] {
        &self.virtual_services
    }

    pub fn destination_rules(&self) -> &[Arc<DestinationRule>] {
        &self.destination_rules
    }

    /// Non-fatal notes from loading (unsupported fields, skipped kinds, …).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Service VIP:port first, then a pod bound to this waypoint (any port), then endpoint IP
    /// with a target port (or service port) of a service containing it. `None`: the waypoint
    /// does not serve it.
    pub fn resolve_destination(&self, dst: SocketAddr) -> Option<Destination<'_>> {
        if let Some(&(si, pi)) = self.by_vip.get(&dst) {
            let service = &self.services[si];
            return Some(Destination::Service {
                service,
                port: &service.ports[pi],
            });
        }
        let port = dst.port();
        if let Some((endpoint, protocol)) = self.workloads.get(&dst.ip()) {
            let mut services: Vec<&Service> = Vec::new();
            for (host, _) in self
                .by_pod_ip
                .get(&dst.ip())
                .into_iter()
                .flat_map(|l| l.iter())
            {
                let Some(svc) = self.service_named(host) else {
                    continue;
                };
                if !services.iter().any(|s| std::ptr::eq(*s, svc)) {
                    services.push(svc);
                }
            }
            return Some(Destination::Pod {
                endpoint,
                port,
                services,
                bound: Some(*protocol),
            });
        }
        let entries = self.by_pod_ip.get(&dst.ip())?;
        let mut endpoint = None;
        let mut services: Vec<&Service> = Vec::new();
        for (host, ep) in entries.iter() {
            let Some(svc) = self.service_named(host) else {
                continue;
            };
            if svc
                .ports
                .iter()
                .any(|p| p.target_port == port || p.number == port)
            {
                endpoint.get_or_insert(ep.as_ref());
                if !services.iter().any(|s| std::ptr::eq(*s, svc)) {
                    services.push(svc);
                }
            }
        }
        Some(Destination::Pod {
            endpoint: endpoint?,
            port,
            services,
            bound: None,
        })
    }

    /// The service of FQDN `host` (no alias).
    fn service_named(&self, host: &str) -> Option<&Service> {
        let s = &self.services[*self.by_host.get(host)?];
        (s.hostname == host).then_some(s)
    }

    /// The service VIP:port a CONNECT authority `<hostname>:<port>` stands for (xDS
    /// multi-network authority map); `None` when the waypoint serves no such authority.
    pub fn resolve_authority(&self, hostname: &str, port: u16) -> Option<SocketAddr> {
        self.by_authority
            .get(&(hostname.to_ascii_lowercase(), port))
            .copied()
    }

    /// The workload at `ip` (e.g. a request's source pod), if the config knows it.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.by_pod_ip.get(&ip)?.first().map(|(_, ep)| ep.as_ref())
    }

    /// The workload at `ip` as a request's source: a service's pod, a pod bound to this waypoint,
    /// or any other workload the config declares. Its `identity` says who may claim the address.
    pub fn source_workload(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoint_by_ip(ip)
            .or_else(|| self.workloads.get(&ip).map(|(ep, _)| ep.as_ref()))
            .or_else(|| self.known_workloads.get(&ip).map(|ep| ep.as_ref()))
    }

    fn service_index(&self, host: &str) -> Option<usize> {
        self.by_host
            .get(normalize_authority(host).as_str())
            .copied()
    }

    /// Look a service up by FQDN or by the short forms Istio accepts for
    /// Kubernetes-style hosts (`reviews`, `reviews.default`,
    /// `reviews.default.svc`), or any extra ServiceEntry host. A `:port` suffix
    /// is ignored; matching is case-insensitive. An ambiguous short name
    /// resolves to the service loaded first.
    pub fn service_by_host(&self, host: &str) -> Option<&Service> {
        self.service_index(host).map(|i| &self.services[i])
    }

    /// Route a request for `service` that arrived on service port `port`: the
    /// first route (of the one VirtualService that applies, see
    /// `SnapshotBuilder::virtual_service`) with a matching block. Routes whose
    /// every block has another `port` (or `gateways` without `mesh`) do not
    /// exist for this port; when none is left, the service's default route is
    /// used, as istiod does when it builds a waypoint port's routes
    /// (`listener_waypoint.go`: `waypointInboundRoute` fails with "no routes
    /// matched" and `buildSidecarInboundHTTPRouteConfig` is used instead).
    /// Allocation-free; see [`Snapshot::explain_route`] for the reasons.
    pub fn route(&self, service: &Service, port: u16, req: &dyn RequestView) -> RouteDecision<'_> {
        self.route_with_match(service, port, req).0
    }

    /// [`Snapshot::route`], plus the match block that matched: `None` for a
    /// route without match blocks (and for `Default` / `NoRoute`). The block
    /// gives the matched prefix a `rewrite.uri` or `redirect.prefixRewrite`
    /// replaces ([`crate::Rewrite::matched_prefix`]). Allocation-free.
    pub fn route_with_match(
        &self,
        service: &Service,
        port: u16,
        req: &dyn RequestView,
    ) -> (RouteDecision<'_>, Option<&RouteMatch>) {
        let Some(entries) = self.routes.get(service.hostname.as_str()) else {
            return (RouteDecision::Default, None);
        };
        for e in entries.iter() {
            let matched = if e.route.matches.is_empty() {
                Some(None)
            } else {
                e.route
                    .matches
                    .iter()
                    .find(|m| m.matches_on_port(req, port))
                    .map(Some)
            };
            if let Some(block) = matched {
                let decision = RouteDecision::Route {
                    virtual_service: &e.virtual_service,
                    route_index: e.index,
                    route: &e.route,
                };
                return (decision, block);
            }
        }
        if entries.iter().any(|e| e.route.applies_to_port(port)) {
            (RouteDecision::NoRoute, None)
        } else {
            (RouteDecision::Default, None)
        }
    }

    /// The `tcp` route for a connection to `service` on service port
    /// `port`: the first (VirtualServices in precedence order, routes in
    /// order) without match blocks or with a matching block; `None` = no
    /// VirtualService routes it (use the service's own endpoints).
    pub fn tcp_route(
        &self,
        service: &Service,
        port: u16,
        conn: &TcpConnection<'_>,
    ) -> Option<&TcpRoute> {
        self.tcp_routes
            .get(&service.hostname)?
            .iter()
            .map(|e| &e.route)
            .find(|r| r.matches(port, conn))
    }

    /// `"namespace/name"` of the VirtualService a TCP route of this
    /// snapshot came from.
    pub fn tcp_route_virtual_service(&self, service: &Service, route: &TcpRoute) -> Option<&str> {
        self.tcp_routes
            .get(&service.hostname)?
            .iter()
            .find(|e| std::ptr::eq(&e.route, route))
            .map(|e| e.virtual_service.as_str())
    }

    /// The cluster for (service FQDN, service port, subset).
    pub fn cluster(
        &self,
        service_hostname: &str,
        port: u16,
        subset: Option<&str>,
    ) -> Option<&Cluster> {
        let pc = self.clusters.get(service_hostname)?.get(&port)?;
        match subset {
            None => Some(&pc.all),
            Some(s) => pc.subset(s),
        }
    }

    /// All clusters, sorted by name.
    pub fn clusters(&self) -> Vec<&Cluster> {
        let mut v: Vec<&Cluster> = self.all_clusters().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Carry the live cluster state of `previous` (the snapshot this one
    /// replaces) into this one, before publishing it: for every cluster of the
    /// same name, the round-robin position, the circuit-breaker counters and
    /// the outlier interval grid, and per endpoint with the same `ip:port` and
    /// identity, the active-request counter, the warmup start and the outlier
    /// state (ejections survive a reload). Endpoints new to a cluster keep
    /// their build time and warm up; clusters new to the snapshot start fresh;
    /// state of clusters and endpoints no longer named is left behind with
    /// `previous`.
    ///
    /// A service whose clusters this snapshot shares with another (the xDS translator reuses
    /// an unchanged service's clusters from the snapshot it last published) keeps the state
    /// they hold: they are the clusters that served, so nothing is looked up for them. Each
    /// cluster built for this snapshot is looked up in `previous` by service, port and subset
    /// (and must have the same name) and adopts its state: O(its endpoints and the previous
    /// cluster's).
    pub fn carry_over_state(&mut self, previous: &Snapshot) {
        for ports in self.clusters.unshared_values_mut().filter_map(Arc::get_mut) {
            for pc in ports.values_mut() {
                for c in std::iter::once(&mut pc.all).chain(pc.subsets.iter_mut()) {
                    let prev = previous
                        .cluster(&c.service_hostname, c.port, c.subset.as_deref())
                        .filter(|p| p.name == c.name);
                    if let Some(p) = prev {
                        c.carry_over(p);
                    }
                }
            }
        }
        // Indexed again on first use, should it have been before the adoption.
        self.runtime = OnceLock::new();
    }

    /// The runtime state of this snapshot's clusters, by cluster name (see
    /// [`crate::runtime`]), indexed on first use: for tests and dumps, the carry-over does
    /// not need it.
    pub fn runtime(&self) -> &Registry {
        self.runtime
            .get_or_init(|| Registry::index(self.all_clusters()))
    }

    /// Every cluster, unordered.
    fn all_clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters
            .values()
            .flat_map(|m| m.values())
            .flat_map(|pc| std::iter::once(&pc.all).chain(pc.subsets.iter()))
    }
}

/// The route table of a VirtualService's HTTP routes, each entry naming it.
pub(crate) fn route_table(vs: &crate::model::VirtualService) -> Arc<[RouteEntry]> {
    let id = vs.id();
    vs.http
        .iter()
        .enumerate()
        .map(|(index, route)| RouteEntry {
            virtual_service: id.clone(),
            index,
            route: route.clone(),
        })
        .collect()
}
