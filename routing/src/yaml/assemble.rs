//! Cross-document resolution: workload selection, host/subset references,
//! duplicates; feeds a [`SnapshotBuilder`].

use super::destination_rule::DestinationRuleIr;
use super::diag::Diag;
use super::virtual_service::VirtualServiceIr;
use super::Parsed;
use crate::builder::SnapshotBuilder;
use crate::error::DocRef;
use crate::hosts::kube_aliases;
use crate::model::{labels_superset, DestinationRule, Endpoint, Service};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// Host name (any SE host or Kubernetes short form) → canonical service FQDN,
/// plus the services' port numbers.
struct Hosts {
    exact: HashMap<String, String>,
    alias: HashMap<String, String>,
    ports: HashMap<String, Vec<u16>>,
}

impl Hosts {
    fn resolve(&self, host: &str) -> Option<&str> {
        self.exact
            .get(host)
            .or_else(|| self.alias.get(host))
            .map(String::as_str)
    }
}

pub(super) fn assemble(p: Parsed, diag: &mut Diag) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    let hosts = add_services(&p, &mut b, diag);
    let rules = add_destination_rules(p.destination_rules, &hosts, &mut b, diag);
    add_virtual_services(p.virtual_services, &hosts, &rules, &mut b, diag);
    b
}

fn add_services(p: &Parsed, b: &mut SnapshotBuilder, diag: &mut Diag) -> Hosts {
    let mut hosts = Hosts {
        exact: HashMap::new(),
        alias: HashMap::new(),
        ports: HashMap::new(),
    };
    let mut owner: HashMap<String, DocRef> = HashMap::new();
    let mut vip_owner: HashMap<SocketAddr, DocRef> = HashMap::new();
    let workloads: Vec<Arc<Endpoint>> = p
        .workload_entries
        .iter()
        .map(|w| Arc::new(w.endpoint.clone()))
        .collect();
    for se in &p.service_entries {
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
        let endpoints: Vec<Arc<Endpoint>> = match &se.selector {
            Some(sel) => workloads
                .iter()
                .filter(|w| w.namespace == se.namespace && labels_superset(&w.labels, sel))
                .cloned()
                .collect(),
            None => se.endpoints.iter().cloned().map(Arc::new).collect(),
        };
        if endpoints.is_empty() {
            diag.warn(at, None, format!("service {hostname} has no endpoints"));
        }
        b.service(
            Service {
                hostname,
                namespace: se.namespace.clone(),
                vips: se.vips.clone(),
                ports: se.ports.clone(),
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
        b.destination_rule(dr.clone());
        rules.insert(dr.host.clone(), (at, dr));
    }
    rules.into_iter().map(|(h, (_, dr))| (h, dr)).collect()
}

fn add_virtual_services(
    vss: Vec<VirtualServiceIr>,
    hosts: &Hosts,
    rules: &HashMap<String, DestinationRule>,
    b: &mut SnapshotBuilder,
    diag: &mut Diag,
) {
    let mut per_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first_at: HashMap<String, DocRef> = HashMap::new();
    for VirtualServiceIr {
        at,
        mut vs,
        source_index,
    } in vss
    {
        let mut resolved = Vec::new();
        for (j, h) in vs.hosts.iter().enumerate() {
            match hosts.resolve(h) {
                Some(s) => resolved.push(s.to_string()),
                None => diag.warn(
                    &at,
                    Some(&format!("spec.hosts[{j}]")),
                    format!("{h} is not a known service; ignored"),
                ),
            }
        }
        for (route, &i) in vs.http.iter_mut().zip(&source_index) {
            for (j, d) in route.destinations.iter_mut().enumerate() {
                let f = format!("spec.http[{i}].route[{j}].destination");
                let Some(host) = hosts.resolve(&d.host) else {
                    diag.error(
                        &at,
                        Some(&format!("{f}.host")),
                        format!("host {} is not a known service", d.host),
                    );
                    continue;
                };
                d.host = host.to_string();
                if let Some(subset) = &d.subset {
                    if rules.get(host).and_then(|r| r.subset(subset)).is_none() {
                        diag.error(&at, Some(&format!("{f}.subset")), format!("unknown subset {subset} for host {host} (no DestinationRule defines it)"));
                    }
                }
                if let Some(port) = d.port {
                    if !hosts.ports.get(host).is_some_and(|ps| ps.contains(&port)) {
                        diag.error(
                            &at,
                            Some(&format!("{f}.port.number")),
                            format!("port {port} is not a port of {host}"),
                        );
                    }
                }
            }
        }
        if resolved.is_empty() {
            continue;
        }
        if vs.http.is_empty() {
            diag.warn(
                &at,
                Some("spec.http"),
                "no HTTP routes; VirtualService has no effect",
            );
            continue;
        }
        resolved.dedup();
        for h in &resolved {
            per_host.entry(h.clone()).or_default().push(vs.id());
            first_at.entry(h.clone()).or_insert_with(|| at.clone());
        }
        vs.hosts = resolved;
        b.virtual_service(vs);
    }
    for (host, ids) in per_host.iter().filter(|(_, ids)| ids.len() > 1) {
        if let Some(at) = first_at.get(host) {
            diag.warn(
                at,
                None,
                format!("multiple VirtualServices for host {host} ({}): http routes concatenated in load order", ids.join(", ")),
            );
        }
    }
}
