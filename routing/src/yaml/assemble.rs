//! Cross-document resolution: workload selection, host/subset references,
//! duplicates; feeds a [`SnapshotBuilder`].

use super::destination_rule::DestinationRuleIr;
use super::diag::Diag;
use super::service_entry::ServiceEntryIr;
use super::virtual_service::VirtualServiceIr;
use super::workload_entry::WorkloadEntryIr;
use super::{LoadOptions, Parsed};
use crate::builder::SnapshotBuilder;
use crate::error::DocRef;
use crate::hosts::{hosts_overlap, kube_aliases};
use crate::model::{labels_superset, DestinationRule, Endpoint, Service};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Host name (any SE host or Kubernetes short form) → canonical service FQDN,
/// plus the services' port numbers and namespaces.
struct Hosts {
    exact: HashMap<String, String>,
    alias: HashMap<String, String>,
    ports: HashMap<String, Vec<u16>>,
    namespaces: HashMap<String, String>,
    /// Services with at least one endpoint reached over HBONE.
    hbone: std::collections::HashSet<String>,
}

impl Hosts {
    fn resolve(&self, host: &str) -> Option<&str> {
        self.exact
            .get(host)
            .or_else(|| self.alias.get(host))
            .map(String::as_str)
    }

    /// The services a VirtualService host applies to: the one it names, or
    /// every service with an overlapping (wildcard) host, as istiod's
    /// `host.Name.Matches` (sorted, deduplicated canonical FQDNs).
    fn resolve_all(&self, host: &str) -> Vec<&str> {
        if let Some(h) = self.resolve(host) {
            return vec![h];
        }
        let mut v: Vec<&str> = self
            .exact
            .iter()
            .filter(|(name, _)| hosts_overlap(host, name))
            .map(|(_, canonical)| canonical.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

pub(super) fn assemble(mut p: Parsed, options: &LoadOptions, diag: &mut Diag) -> SnapshotBuilder {
    let waypoint = &options.waypoint;
    let mut b = SnapshotBuilder::new();
    b.telemetry(super::telemetry::resolve(
        std::mem::take(&mut p.telemetries),
        waypoint,
        &options.mesh,
        diag,
    ));
    // `namespace/name` and first host of every ServiceEntry (duplicates too), for
    // AuthorizationPolicy `targetRefs`; taken before the entries are moved into the builder.
    let se_names: Vec<(String, String)> = p
        .service_entries
        .iter()
        .filter_map(|se| Some((se.at.name.clone()?, se.hosts.first()?.clone())))
        .collect();
    let hosts = add_services(
        std::mem::take(&mut p.service_entries),
        std::mem::take(&mut p.workload_entries),
        &mut b,
        diag,
    );
    let service_entries: HashMap<String, Vec<String>> = se_names
        .into_iter()
        .filter_map(|(name, host)| {
            let canonical = hosts.resolve(&host)?;
            Some((name, vec![canonical.to_string()]))
        })
        .collect();
    let resolve_service = |name: &str, ns: &str| {
        hosts
            .resolve(&format!("{name}.{ns}.svc.{}", crate::hosts::CLUSTER_DOMAIN))
            .map(str::to_string)
    };
    b.authorization(super::authorization_policy::attach(
        p.authorization_policies,
        waypoint,
        &resolve_service,
        &service_entries,
        diag,
    ));
    let rules = add_destination_rules(p.destination_rules, &hosts, &mut b, diag);
    let vs_owner = add_virtual_services(p.virtual_services, &hosts, &rules, &mut b, diag);
    let resolve = |h: &str| hosts.resolve(h).map(str::to_string);
    for vs in super::http_route::resolve(p.http_routes, &resolve, &vs_owner, diag) {
        b.virtual_service(vs);
    }
    b
}

/// Adds the services, moving their endpoints (and the workloads) into the builder: the parsed
/// entries are not held beside their copies (peak memory of a large config).
fn add_services(
    service_entries: Vec<ServiceEntryIr>,
    workload_entries: Vec<WorkloadEntryIr>,
    b: &mut SnapshotBuilder,
    diag: &mut Diag,
) -> Hosts {
    let mut hosts = Hosts {
        exact: HashMap::new(),
        alias: HashMap::new(),
        ports: HashMap::new(),
        namespaces: HashMap::new(),
        hbone: Default::default(),
    };
    let mut owner: HashMap<String, DocRef> = HashMap::new();
    let mut vip_owner: HashMap<SocketAddr, DocRef> = HashMap::new();
    let workloads: Vec<Arc<Endpoint>> = workload_entries
        .into_iter()
        .map(|w| Arc::new(w.endpoint))
        .collect();
    for w in &workloads {
        b.known_workload(w.clone());
    }
    for se in service_entries {
        let at = &se.at;
        let mut duplicate = false;
        for (i, h) in se.hosts.iter().enumerate() {
            if let Some(prev) = owner.get(h) {
                diag.error(
                    at,
                    Some(&format!("spec.hosts[{i}]")),
                    format!("duplicate host {h} (already defined by {prev})"),
                );
                duplicate = true;
            }
        }
        for (k, vip) in se.vips.iter().enumerate() {
            for port in &se.ports {
                let sa = SocketAddr::new(*vip, port.number);
                if let Some(prev) = vip_owner.get(&sa) {
                    diag.error(
                        at,
                        Some(&format!("spec.addresses[{k}]")),
                        format!("duplicate VIP:port {sa} (already defined by {prev})"),
                    );
                    duplicate = true;
                }
            }
        }
        if duplicate {
            continue;
        }
        let hostname = se.hosts[0].clone();
        for h in &se.hosts {
            owner.insert(h.clone(), at.clone());
            hosts.exact.insert(h.clone(), hostname.clone());
            b.alias(h, &hostname);
            for a in kube_aliases(h) {
                hosts.alias.entry(a).or_insert_with(|| hostname.clone());
            }
        }
        for vip in &se.vips {
            for port in &se.ports {
                vip_owner.insert(SocketAddr::new(*vip, port.number), at.clone());
            }
        }
        hosts.ports.insert(
            hostname.clone(),
            se.ports.iter().map(|p| p.number).collect(),
        );
        hosts
            .namespaces
            .insert(hostname.clone(), se.namespace.clone());
        let endpoints: Vec<Arc<Endpoint>> = match &se.selector {
            Some(sel) => workloads
                .iter()
                .filter(|w| {
                    *w.workload.namespace == *se.namespace && labels_superset(&w.labels, sel)
                })
                .cloned()
                .collect(),
            None => se.endpoints.into_iter().map(Arc::new).collect(),
        };
        if endpoints
            .iter()
            .any(|e| e.transport == crate::upstream::Transport::Hbone)
        {
            hosts.hbone.insert(hostname.clone());
        }
        let no_dns = se.dns_targets.is_empty();
        for t in se.dns_targets {
            b.dns_target(t);
        }
        if endpoints.is_empty() && no_dns {
            diag.warn(at, None, format!("service {hostname} has no endpoints"));
        }
        b.service(
            Service {
                hostname,
                namespace: se.namespace,
                vips: se.vips,
                ports: se.ports,
            },
            endpoints,
        );
    }
    hosts
}

fn add_destination_rules(
    drs: Vec<DestinationRuleIr>,
    hosts: &Hosts,
    b: &mut SnapshotBuilder,
    diag: &mut Diag,
) -> HashMap<String, DestinationRule> {
    let mut rules: HashMap<String, (DocRef, DestinationRule)> = HashMap::new();
    for DestinationRuleIr { at, mut dr } in drs {
        let Some(host) = hosts.resolve(&dr.host) else {
            diag.warn(
                &at,
                Some("spec.host"),
                format!("{} is not a known service; rule ignored", dr.host),
            );
            continue;
        };
        if let Some((prev, _)) = rules.get(host) {
            diag.error(
                &at,
                Some("spec.host"),
                format!("duplicate DestinationRule for host {host} (already defined by {prev})"),
            );
            continue;
        }
        dr.host = host.to_string();
        let ports = hosts.ports.get(host).map_or(&[][..], Vec::as_slice);
        super::destination_rule::check_ports(&at, &dr, ports, diag);
        if hosts.hbone.contains(host) {
            super::destination_rule::warn_tls_on_hbone(&at, &dr, diag);
        }
        b.destination_rule(dr.clone());
        rules.insert(dr.host.clone(), (at, dr));
    }
    rules.into_iter().map(|(h, (_, dr))| (h, dr)).collect()
}

fn add_virtual_services(
    mut vss: Vec<VirtualServiceIr>,
    hosts: &Hosts,
    rules: &HashMap<String, DestinationRule>,
    b: &mut SnapshotBuilder,
    diag: &mut Diag,
) -> HashMap<String, String> {
    // Precedence as istiod's: creation time, then name, then namespace
    // (pilot/pkg/model/config.go, configCompareByCreationTime). Files carry no
    // creation time unless dumped from a cluster: documents with
    // metadata.creationTimestamp come first in that order, the others after them
    // in load order (file name, then document), i.e. as if created in that order.
    vss.sort_by(|a, b| match (&a.created, &b.created) {
        (Some(x), Some(y)) => x
            .cmp(y)
            .then_with(|| a.vs.name.cmp(&b.vs.name))
            .then_with(|| a.vs.namespace.cmp(&b.vs.namespace)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    // Service FQDN → the VirtualService that applies to it.
    let mut owner: HashMap<String, String> = HashMap::new();
    for VirtualServiceIr {
        at,
        mut vs,
        source_index,
        mirror_fields,
        created: _,
    } in vss
    {
        let mut resolved: Vec<String> = Vec::new();
        for (j, h) in vs.hosts.iter().enumerate() {
            let found = hosts.resolve_all(h);
            if found.is_empty() {
                let what = if h.starts_with('*') {
                    "matches no known service"
                } else {
                    "is not a known service"
                };
                diag.warn(
                    &at,
                    Some(&format!("spec.hosts[{j}]")),
                    format!("{h} {what}; ignored"),
                );
            }
            for s in found {
                if resolved.iter().any(|r| r == s) {
                    continue;
                }
                if let Some(ns) = hosts.namespaces.get(s).filter(|ns| **ns != vs.namespace) {
                    diag.warn(
                        &at,
                        Some(&format!("spec.hosts[{j}]")),
                        format!("service {s} is in namespace {ns}: istiod applies a VirtualService at a waypoint only from the service's namespace or the waypoint's own"),
                    );
                }
                resolved.push(s.to_string());
            }
        }
        // A destination's host, subset and port must exist.
        let mut check = |f: &str, host: &mut String, subset: &Option<String>, port: Option<u16>| {
            let Some(h) = hosts.resolve(host) else {
                diag.error(
                    &at,
                    Some(&format!("{f}.host")),
                    format!("host {host} is not a known service"),
                );
                return;
            };
            *host = h.to_string();
            if let Some(subset) = subset {
                if rules.get(h).and_then(|r| r.subset(subset)).is_none() {
                    diag.error(
                        &at,
                        Some(&format!("{f}.subset")),
                        format!(
                            "unknown subset {subset} for host {h} (no DestinationRule defines it)"
                        ),
                    );
                }
            }
            if let Some(port) = port {
                if !hosts.ports.get(h).is_some_and(|ps| ps.contains(&port)) {
                    diag.error(
                        &at,
                        Some(&format!("{f}.port.number")),
                        format!("port {port} is not a port of {h}"),
                    );
                }
            }
        };
        for ((route, &i), fields) in vs.http.iter_mut().zip(&source_index).zip(&mirror_fields) {
            let route = Arc::make_mut(route);
            for (j, d) in route.destinations.iter_mut().enumerate() {
                let f = format!("spec.http[{i}].route[{j}].destination");
                check(&f, &mut d.host, &d.subset, d.port);
            }
            // istiod leaves zero-weight destinations out of the weighted clusters
            // (route.go); a lone destination always has weight 100 here.
            route.destinations.retain(|d| d.weight > 0);
            for (m, f) in route.mirrors.iter_mut().zip(fields) {
                check(f, &mut m.host, &m.subset, m.port);
            }
        }
        for (i, route) in vs.tcp.iter_mut().enumerate() {
            for (j, d) in route.destinations.iter_mut().enumerate() {
                let f = format!("spec.tcp[{i}].route[{j}].destination");
                check(&f, &mut d.host, &d.subset, d.port);
            }
            route.destinations.retain(|d| d.weight > 0);
        }
        if resolved.is_empty() {
            continue;
        }
        if vs.http.is_empty() && vs.tcp.is_empty() {
            diag.warn(
                &at,
                Some("spec.http"),
                "no HTTP or TCP routes; VirtualService has no effect",
            );
            continue;
        }
        // A waypoint uses only the first VirtualService (with HTTP routes) whose
        // hosts match the service; routes are not merged (istiod,
        // pilot/pkg/networking/core/listener_waypoint.go:
        // buildWaypointInboundHTTPRouteConfig takes the first of
        // getVirtualServiceForWaypoint's matches). Merging of several
        // VirtualServices for one host exists only for gateways.
        let id = vs.id();
        for s in resolved.iter().filter(|_| !vs.http.is_empty()) {
            match owner.get(s) {
                Some(prev) => diag.warn(
                    &at,
                    None,
                    format!(
                        "service {s} already has VirtualService {prev}; only the first VirtualService for a host applies at a waypoint (routes are not merged), so this one is ignored for it{}",
                        if vs.tcp.is_empty() { "" } else { " (its tcp routes still apply, after those of earlier VirtualServices)" }
                    ),
                ),
                None => {
                    owner.insert(s.clone(), id.clone());
                }
            }
        }
        vs.hosts = resolved;
        b.virtual_service(vs);
    }
    owner
}
