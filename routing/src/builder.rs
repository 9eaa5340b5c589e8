//! Builds an indexed [`Snapshot`] from model objects.
//!
//! The builder trusts its input (validation with good messages is the job of
//! the front-end, e.g. [`crate::yaml`]); conflicting input is resolved
//! "first wins" with a warning.

use crate::authz::Authorization;
use crate::hosts::kube_aliases;
use crate::lb::{cluster_name, Cluster, ClusterEndpoint};
use crate::model::{DestinationRule, Endpoint, Protocol, Service, ServicePort, VirtualService};
use crate::policy::{ClusterPolicy, TrafficPolicy};
use crate::shards::Shards;
use crate::snapshot::{PodService, PortClusters, PortMap, RouteEntry, Snapshot, TcpRouteEntry};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A service, its endpoints, and its clusters when the caller has them from an earlier snapshot.
type ServiceInput = (Service, Vec<Arc<Endpoint>>, Option<Arc<PortMap>>);

/// Collects services, routing rules and warnings, then [`build`](Self::build)s.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    services: Vec<ServiceInput>,
    aliases: Vec<(String, String)>,
    virtual_services: Vec<VirtualService>,
    destination_rules: Vec<Arc<DestinationRule>>,
    warnings: Vec<String>,
    authorization: Authorization,
    pod_path: Option<crate::path::PathPolicy>,
    workloads: Vec<(Arc<Endpoint>, Protocol)>,
    known_workloads: Vec<Arc<Endpoint>>,
    authorities: Vec<(String, u16)>,
    hbone_peer_sans: Option<Vec<crate::upstream::SanMatcher>>,
    route_only: std::collections::HashSet<String>,
    dns_targets: Vec<crate::dns::DnsTarget>,
    telemetry: Option<crate::telemetry::TelemetryConfig>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn service(&mut self, service: Service, endpoints: Vec<Arc<Endpoint>>) -> &mut Self {
        self.services.push((service, endpoints, None));
        self
    }

    /// A service with the clusters an earlier snapshot built for it from the same service,
    /// endpoints and DestinationRule: shared, not built again, and they keep their runtime
    /// state (see [`Snapshot::carry_over_state`]). Its endpoints are taken as they are (the
    /// earlier build shared their label maps).
    pub(crate) fn service_with_clusters(
        &mut self,
        service: Service,
        endpoints: Vec<Arc<Endpoint>>,
        clusters: Arc<PortMap>,
    ) -> &mut Self {
        self.services.push((service, endpoints, Some(clusters)));
        self
    }

    /// The service `hostname` is only a route destination (istiod's `outbound|…` clusters on a
    /// waypoint): its endpoints are not addressable through this waypoint as pods.
    pub fn route_only(&mut self, hostname: &str) -> &mut Self {
        self.route_only.insert(hostname.to_string());
        self
    }

    /// Make `service_by_host(alias)` find the service `hostname`.
    pub fn alias(&mut self, alias: &str, hostname: &str) -> &mut Self {
        self.aliases
            .push((alias.to_ascii_lowercase(), hostname.to_string()));
        self
    }

    /// Add in precedence order (istiod: creation time). Only the first
    /// VirtualService with HTTP routes that names a host applies to it; later
    /// ones for the same host are kept (config dump, explain) but not routed by.
    pub fn virtual_service(&mut self, vs: VirtualService) -> &mut Self {
        self.virtual_services.push(vs);
        self
    }

    /// At most one per host is used (the first).
    pub fn destination_rule(&mut self, dr: impl Into<Arc<DestinationRule>>) -> &mut Self {
        self.destination_rules.push(dr.into());
        self
    }

    /// The authorization policies in force (per service, HTTP and TCP).
    pub fn authorization(&mut self, authorization: Authorization) -> &mut Self {
        self.authorization = authorization;
        self
    }

    /// Path handling for pod-addressed requests (xDS: the `direct-http` chain's).
    pub fn pod_path(&mut self, policy: crate::path::PathPolicy) -> &mut Self {
        self.pod_path = Some(policy);
        self
    }

    /// A pod whose workload uses this waypoint (xDS: the `direct-http` / `direct-tcp` range):
    /// served on every port and forwarded to the pod whatever the request's Host. `protocol`:
    /// `Unknown` = detected per connection, `Http`/`Tcp` = only that chain exists. First wins.
    pub fn workload(&mut self, endpoint: Arc<Endpoint>, protocol: Protocol) -> &mut Self {
        self.workloads.push((endpoint, protocol));
        self
    }

    /// A workload the config declares (whether or not a service selects it): what a request
    /// coming from its address may be recognised as (its labels, its identity). First wins.
    pub fn known_workload(&mut self, endpoint: Arc<Endpoint>) -> &mut Self {
        self.known_workloads.push(endpoint);
        self
    }

    /// A CONNECT authority `<hostname>:<port>` this waypoint serves (xDS multi-network authority
    /// map): it resolves to the service's VIP on that port.
    pub fn authority(&mut self, hostname: &str, port: u16) -> &mut Self {
        self.authorities.push((hostname.to_ascii_lowercase(), port));
        self
    }

    /// Verify HBONE peers against these SAN matchers (any of them; empty: the chain only)
    /// instead of each endpoint's identity.
    pub fn hbone_peer_sans(&mut self, matchers: Vec<crate::upstream::SanMatcher>) -> &mut Self {
        self.hbone_peer_sans = Some(matchers);
        self
    }

    /// A hostname the caller must keep resolved (its answers are an input of the next load).
    pub fn dns_target(&mut self, target: crate::dns::DnsTarget) -> &mut Self {
        match self
            .dns_targets
            .iter_mut()
            .find(|t| t.query == target.query)
        {
            Some(t) => t.merge(&target),
            None => self.dns_targets.push(target),
        }
        self
    }

    pub fn warning(&mut self, warning: impl Into<String>) -> &mut Self {
        self.warnings.push(warning.into());
        self
    }

    /// What the Telemetry API declares (see [`crate::telemetry`]).
    pub fn telemetry(&mut self, telemetry: crate::telemetry::TelemetryConfig) -> &mut Self {
        self.telemetry = Some(telemetry);
        self
    }

    pub fn build(self) -> Snapshot {
        self.build_at(Instant::now())
    }

    /// [`build`](Self::build) with an explicit clock: `now` is when the
    /// clusters' endpoints joined (warmup start, unless carried over from the
    /// previous snapshot) and the start of their outlier-detection intervals.
    pub fn build_at(self, now: Instant) -> Snapshot {
        let mut warnings = self.warnings;
        let mut interner = Interner::default();
        let mut services: Vec<Service> = Vec::with_capacity(self.services.len());
        let mut service_endpoints: Vec<Arc<[Arc<Endpoint>]>> =
            Vec::with_capacity(self.services.len());
        let mut by_host = crate::snapshot::ByHost::default();
        let mut by_vip = crate::snapshot::ByVip::default();
        let mut by_pod_ip: HashMap<std::net::IpAddr, Vec<PodService>> = HashMap::new();
        // Per service (same index), the clusters it came with.
        let mut prebuilt: Vec<Option<Arc<PortMap>>> = Vec::with_capacity(self.services.len());
        // Per service (same index), its hostname: one string for the indexes' keys and its
        // clusters.
        let mut hosts: Vec<Arc<str>> = Vec::with_capacity(self.services.len());
        for (service, endpoints, clusters) in self.services {
            let endpoints: Vec<Arc<Endpoint>> = match clusters {
                Some(_) => endpoints,
                None => endpoints.iter().map(|e| interner.endpoint(e)).collect(),
            };
            if by_host.contains_key(service.hostname.as_str()) {
                warnings.push(format!("duplicate service {}; ignored", service.hostname));
                continue;
            }
            let si = services.len();
            let host: Arc<str> = Arc::from(service.hostname.as_str());
            by_host.insert(host.clone(), si);
            for (pi, port) in service.ports.iter().enumerate() {
                for vip in &service.vips {
                    by_vip
                        .entry(SocketAddr::new(*vip, port.number))
                        .or_insert((si, pi));
                }
            }
            let addressable = !self.route_only.contains(&service.hostname);
            for ep in endpoints.iter().filter(|_| addressable) {
                by_pod_ip
                    .entry(ep.address)
                    .or_default()
                    .push((host.clone(), ep.clone()));
            }
            services.push(service);
            service_endpoints.push(endpoints.into());
            prebuilt.push(clusters);
            hosts.push(host);
        }
        let mut workloads = HashMap::new();
        for (ep, protocol) in self.workloads {
            workloads
                .entry(ep.address)
                .or_insert_with(|| (interner.endpoint(&ep), protocol));
        }
        let mut known_workloads = HashMap::new();
        for ep in self.known_workloads {
            known_workloads
                .entry(ep.address)
                .or_insert_with(|| interner.endpoint(&ep));
        }
        drop(interner);
        let mut by_authority = HashMap::new();
        for (host, port) in self.authorities {
            let vip = by_host.get(host.as_str()).and_then(|&si| {
                let s = &services[si];
                let vip = s.vips.first()?;
                s.ports
                    .iter()
                    .any(|p| p.number == port)
                    .then(|| SocketAddr::new(*vip, port))
            });
            match vip {
                Some(vip) => {
                    by_authority.insert((host, port), vip);
                }
                None => warnings.push(format!(
                    "authority {host}:{port} names no service port with an address; ignored"
                )),
            }
        }
        let mut aliases = self.aliases;
        for s in &services {
            aliases.extend(
                kube_aliases(&s.hostname)
                    .into_iter()
                    .map(|a| (a, s.hostname.clone())),
            );
        }
        for (alias, host) in aliases {
            if let Some(&si) = by_host.get(host.as_str()) {
                by_host.entry(Arc::from(alias)).or_insert(si);
            }
        }
        // A waypoint uses the first VirtualService with HTTP routes for a service
        // (istiod, pilot/pkg/networking/core/listener_waypoint.go:
        // buildWaypointInboundHTTPRouteConfig); routes are never merged across them.
        let mut routes: Shards<Arc<str>, Arc<[RouteEntry]>> = Shards::default();
        for vs in self
            .virtual_services
            .iter()
            .filter(|vs| !vs.http.is_empty())
        {
            for host in &vs.hosts {
                if !routes.contains_key(host.as_str()) {
                    // Keyed by the host index's string for the same name (a service's own
                    // hostname is one string).
                    let key = by_host
                        .get_key_value(host.as_str())
                        .map_or_else(|| Arc::from(host.as_str()), |(k, _)| k.clone());
                    routes.insert(key, crate::snapshot::route_table(vs));
                }
            }
        }
        // TCP routes: every VirtualService naming the service, in precedence
        // order (istiod, listener_waypoint.go: getWaypointTCPRoutes).
        let mut tcp_routes: HashMap<String, Vec<TcpRouteEntry>> = HashMap::new();
        for vs in &self.virtual_services {
            let id = vs.id();
            for host in &vs.hosts {
                tcp_routes
                    .entry(host.clone())
                    .or_default()
                    .extend(vs.tcp.iter().map(|route| TcpRouteEntry {
                        virtual_service: id.clone(),
                        route: route.clone(),
                    }));
            }
        }
        tcp_routes.retain(|_, v| !v.is_empty());
        let mut rules: HashMap<&str, &DestinationRule> = HashMap::new();
        for dr in &self.destination_rules {
            rules.entry(dr.host.as_str()).or_insert(dr);
        }
        let clusters: Shards<Arc<str>, Arc<PortMap>> = services
            .iter()
            .zip(&service_endpoints)
            .zip(prebuilt)
            .zip(&hosts)
            .map(|(((service, endpoints), built), host)| {
                let per_port = built.unwrap_or_else(|| {
                    let dr = rules.get(service.hostname.as_str()).copied();
                    Arc::new(service_clusters(service, host, endpoints, dr, now))
                });
                (host.clone(), per_port)
            })
            .collect();
        drop(rules);
        // Kept for explain and the config dump as long as the snapshot: without the spare
        // capacity the front-ends' pushes left (an `http` list of one route had room for four).
        let mut virtual_services = self.virtual_services;
        for vs in &mut virtual_services {
            vs.hosts.shrink_to_fit();
            vs.http.shrink_to_fit();
            vs.tcp.shrink_to_fit();
        }
        let virtual_services: Vec<Arc<VirtualService>> =
            virtual_services.into_iter().map(Arc::new).collect();
        let mut destination_rules = self.destination_rules;
        // A rule the front-end shares was made to measure by it (`shrink_rule`).
        for dr in destination_rules.iter_mut().filter_map(Arc::get_mut) {
            shrink_rule(dr);
        }
        destination_rules.shrink_to_fit();
        Snapshot {
            version: next_version(),
            services: Arc::new(services),
            endpoints: service_endpoints.into_iter().collect(),
            by_host: Arc::new(by_host),
            by_vip: Arc::new(by_vip),
            by_pod_ip: by_pod_ip
                .into_iter()
                .map(|(ip, list)| (ip, list.into()))
                .collect(),
            routes,
            tcp_routes: Arc::new(tcp_routes),
            virtual_services: Arc::new(virtual_services),
            destination_rules: Arc::new(destination_rules),
            clusters,
            warnings: Arc::new(warnings),
            authorization: Arc::new(self.authorization),
            pod_path: self.pod_path,
            workloads: Arc::new(workloads),
            known_workloads: Arc::new(known_workloads),
            by_authority: Arc::new(by_authority),
            hbone_peer_sans: self.hbone_peer_sans.map(Arc::new),
            dns_targets: Arc::new(self.dns_targets),
            telemetry: Arc::new(self.telemetry.unwrap_or_default()),
            runtime: std::sync::OnceLock::new(),
        }
    }
}

/// A new snapshot's version: unique per process, counting from 1.
pub(crate) fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed)
}

/// The clusters of each port of `service`, built over `endpoints` with its rule `dr`.
/// `host` is `service.hostname`, the one string its clusters share.
pub(crate) fn service_clusters(
    service: &Service,
    host: &Arc<str>,
    endpoints: &[Arc<Endpoint>],
    dr: Option<&DestinationRule>,
    now: Instant,
) -> PortMap {
    service
        .ports
        .iter()
        .map(|port| {
            (
                port.number,
                Box::new(port_clusters(service, host, port, endpoints, dr, now)),
            )
        })
        .collect()
}

/// `dr` without spare capacity, to be kept as long as a snapshot.
pub(crate) fn shrink_rule(dr: &mut DestinationRule) {
    dr.subsets.shrink_to_fit();
    let policies = dr.traffic_policy.iter_mut().chain(
        dr.subsets
            .iter_mut()
            .filter_map(|s| s.traffic_policy.as_mut()),
    );
    // A shared policy was shrunk before it was shared ([`TrafficPolicy::shared`]).
    for tp in policies.filter_map(Arc::get_mut) {
        tp.port_level_settings.shrink_to_fit();
    }
}

/// Gives endpoints with equal labels one label map (the pods of a subset carry the same labels:
/// ten endpoints, two maps), while an endpoint `Arc` the front-end shared stays shared: each
/// input endpoint maps to one output endpoint.
#[derive(Default)]
struct Interner {
    labels: crate::labels::LabelMaps,
    /// Input endpoint (by address) → (the input, kept so that its address is not reused while
    /// the map lives; its output).
    endpoints: HashMap<*const Endpoint, (Arc<Endpoint>, Arc<Endpoint>)>,
}

impl Interner {
    fn endpoint(&mut self, e: &Arc<Endpoint>) -> Arc<Endpoint> {
        if let Some((_, out)) = self.endpoints.get(&Arc::as_ptr(e)) {
            return out.clone();
        }
        let mut labels = e.labels.clone();
        let out = if self.labels.share(&mut labels) {
            Arc::new(Endpoint {
                labels,
                ..(**e).clone()
            })
        } else {
            e.clone()
        };
        self.endpoints
            .insert(Arc::as_ptr(e), (e.clone(), out.clone()));
        out
    }
}

fn port_clusters(
    service: &Service,
    host: &Arc<str>,
    port: &ServicePort,
    endpoints: &[Arc<Endpoint>],
    dr: Option<&DestinationRule>,
    now: Instant,
) -> PortClusters {
    let proto = if port.protocol == Protocol::Tcp {
        "tcp"
    } else {
        "http"
    };
    let top = dr.and_then(|d| d.traffic_policy.as_deref());
    let make = |subset: Option<&str>,
                subset_policy: Option<&TrafficPolicy>,
                labels: Option<&BTreeMap<String, String>>| {
        let mut policy = ClusterPolicy::merge(top, subset_policy, port.number);
        if let Some(crate::upstream::ClientTls::Originate(tls)) = &mut policy.tls {
            // istiod advertises h2 on an HTTP/2 cluster's TLS (`cluster_tls.go`
            // `isHttp2Cluster` → `ALPNH2Only`).
            tls.alpn_h2 |= matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
        }
        let eps = endpoints
            .iter()
            .filter(|e| labels.is_none_or(|l| e.matches_labels(l)))
            .filter_map(|e| direct_transport(e, policy.tls.as_ref()))
            .map(|e| ClusterEndpoint::new_at(e, port.target_port, now))
            .collect();
        Cluster::with_policy(
            cluster_name(&service.hostname, port.number, proto, subset),
            host.clone(),
            port.number,
            subset.map(str::to_string),
            policy,
            eps,
            now,
        )
    };
    // Sorted by name; of a repeated name the last is kept, as a map collected in order would.
    let mut subsets: Vec<Cluster> = Vec::new();
    for s in dr.map_or(&[][..], |d| d.subsets.as_slice()) {
        let cluster = make(Some(&s.name), s.traffic_policy.as_deref(), Some(&s.labels));
        match subsets.binary_search_by(|c| c.subset.as_deref().unwrap_or("").cmp(&s.name)) {
            Ok(i) => subsets[i] = cluster,
            Err(i) => subsets.insert(i, cluster),
        }
    }
    PortClusters {
        all: make(None, None, None),
        subsets: subsets.into_boxed_slice(),
    }
}

/// An endpoint as one cluster dials it, by the cluster's DestinationRule `tls`. Only endpoints
/// dialled directly are affected: `ISTIO_MUTUAL` makes them [`Transport::IstioMutual`] (the
/// waypoint's own certificate, the peer checked against the endpoint's identity, as the xDS
/// path does for a sidecar pod of an outbound cluster); a refused `tls` leaves them out, so
/// they are never reached in plaintext. HBONE endpoints are kept as they are.
fn direct_transport(
    e: &Arc<Endpoint>,
    tls: Option<&crate::upstream::ClientTls>,
) -> Option<Arc<Endpoint>> {
    use crate::upstream::{ClientTls, Transport};
    if e.transport != Transport::Direct {
        return Some(e.clone());
    }
    match tls {
        Some(ClientTls::IstioMutual) => Some(Arc::new(Endpoint {
            transport: Transport::IstioMutual,
            ..(**e).clone()
        })),
        Some(ClientTls::Refused(_)) => None,
        _ => Some(e.clone()),
    }
}

#[cfg(test)]
mod tests;
