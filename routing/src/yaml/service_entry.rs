//! `ServiceEntry` documents.

use super::diag::{Diag, Extra};
use super::schema;
use super::{parse_spec, DocCtx};
use crate::error::DocRef;
use crate::hosts::expand_host;
use crate::model::{spiffe_identity, Endpoint, Protocol, ServicePort};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::dns::{normalize_hostname, DnsFamily, DnsQuery, DnsTarget, MAX_ADDRESSES_PER_HOST};

/// Mesh `dnsRefreshRate` default (istiod's `dns_refresh_rate` for DNS clusters).
const MESH_DNS_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    hosts: Option<Vec<String>>,
    addresses: Option<Vec<String>>,
    ports: Option<Vec<PortY>>,
    workload_selector: Option<SelectorY>,
    endpoints: Option<Vec<EndpointY>>,
    resolution: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortY {
    number: Option<i64>,
    name: Option<String>,
    protocol: Option<String>,
    target_port: Option<i64>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct SelectorY {
    labels: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointY {
    address: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    service_account: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

/// A checked ServiceEntry.
#[derive(Debug)]
pub(crate) struct ServiceEntryIr {
    pub at: DocRef,
    pub namespace: String,
    /// Expanded, lowercased; the first is the service hostname.
    pub hosts: Vec<String>,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub selector: Option<BTreeMap<String, String>>,
    pub endpoints: Vec<Endpoint>,
    /// `resolution: DNS` / `DNS_ROUND_ROBIN`: the hostnames resolved for `endpoints`.
    pub dns_targets: Vec<DnsTarget>,
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<ServiceEntryIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    let errors_before = diag.errors.len();
    // `location` is informational.
    diag.unsupported(
        at,
        "spec.",
        &spec.extra,
        schema::SERVICE_ENTRY,
        &["location"],
    );
    // DNS: hostname endpoints (or, without endpoints, the hosts) are resolved; DNS_ROUND_ROBIN
    // uses the first address (Envoy LOGICAL_DNS). NONE / STATIC: addresses as written.
    let dns = match spec.resolution.as_deref() {
        Some("DNS") => Some(false),
        Some("DNS_ROUND_ROBIN") => Some(true),
        _ => None,
    };

    let hosts: Vec<String> = spec.hosts.unwrap_or_default();
    if hosts.is_empty() {
        diag.error(at, Some("spec.hosts"), "at least one host is required");
    }
    let hosts: Vec<String> = hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let h = expand_host(h, &ctx.namespace);
            if h.contains('*') || h.is_empty() {
                diag.error(
                    at,
                    Some(&format!("spec.hosts[{i}]")),
                    format!("host {h:?} is not supported (wildcard or empty)"),
                );
                None
            } else if !is_dns_name(&h) {
                diag.error(
                    at,
                    Some(&format!("spec.hosts[{i}]")),
                    format!("host {h:?} is not a valid DNS name (RFC 1123 labels of letters, digits and '-', separated by single dots)"),
                );
                None
            } else {
                Some(h)
            }
        })
        .collect();

    let vips = spec
        .addresses
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, a)| diag.ip(at, &format!("spec.addresses[{i}]"), a))
        .collect();

    let ports = parse_ports(at, spec.ports.unwrap_or_default(), diag);

    if spec.workload_selector.is_some() && spec.endpoints.is_some() {
        diag.error(
            at,
            Some("spec.workloadSelector"),
            "only one of workloadSelector or endpoints may be set",
        );
    }
    let selector = spec.workload_selector.map(|s| {
        diag.unsupported(
            at,
            "spec.workloadSelector.",
            &s.extra,
            schema::WORKLOAD_SELECTOR,
            &[],
        );
        s.labels.unwrap_or_default()
    });

    let mut dns_targets = Vec::new();
    let mut endpoints_y = spec.endpoints.unwrap_or_default();
    if dns.is_some() && endpoints_y.is_empty() && selector.is_none() {
        // istiod (`convertServiceEntryToInstances`): one endpoint per host, its address the host.
        endpoints_y = hosts
            .iter()
            .map(|h| EndpointY {
                address: Some(h.clone()),
                labels: None,
                service_account: None,
                extra: Extra::default(),
            })
            .collect();
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, e) in endpoints_y.into_iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        diag.unsupported(at, &format!("{f}."), &e.extra, schema::WORKLOAD_ENTRY, &[]);
        let Some(addr) = diag.required(at, &format!("{f}.address"), e.address) else {
            continue;
        };
        if let (Some(logical), Err(_)) = (dns, addr.parse::<IpAddr>()) {
            let query = DnsQuery {
                hostname: normalize_hostname(&addr),
                family: DnsFamily::V4,
            };
            let answers = ctx.dns.get(&query).cloned().unwrap_or_default();
            dns_targets.push(DnsTarget {
                query,
                refresh: MESH_DNS_REFRESH,
                respect_ttl: true,
                jitter: std::time::Duration::ZERO,
            });
            let labels = e.labels.unwrap_or_default();
            let take = if logical { 1 } else { MAX_ADDRESSES_PER_HOST };
            for (k, ip) in answers.into_iter().take(take).enumerate() {
                endpoints.push(Endpoint {
                    address: ip,
                    workload: Arc::new(crate::model::Workload::new(
                        format!("{}-ep{i}-{k}", ctx.name).into(),
                        ctx.namespace.as_str().into(),
                        crate::model::UNKNOWN_ACCOUNT.into(),
                        "".into(),
                    )),
                    // Hostnames are reached directly (istiod: no tunnel, TLSMode disabled).
                    transport: crate::upstream::Transport::Direct,
                    labels: Arc::new(labels.clone().into()),
                });
            }
            continue;
        }
        let endpoint = (|| {
            let address = diag.ip(at, &format!("{f}.address"), &addr)?;
            let sa = e.service_account.unwrap_or_else(|| "default".to_string());
            let labels = e.labels.unwrap_or_default();
            Some(Endpoint {
                address,
                workload: Arc::new(crate::model::Workload::new(
                    format!("{}-ep{i}", ctx.name).into(),
                    ctx.namespace.as_str().into(),
                    sa.as_str().into(),
                    spiffe_identity(ctx.trust_domain, &ctx.namespace, &sa).into(),
                )),
                transport: crate::model::transport_of(&labels),
                labels: Arc::new(labels.into()),
            })
        })();
        endpoints.extend(endpoint);
    }

    if diag.errors.len() > errors_before {
        return None;
    }
    Some(ServiceEntryIr {
        at: at.clone(),
        namespace: ctx.namespace.clone(),
        hosts,
        vips,
        ports,
        selector,
        endpoints,
        dns_targets,
    })
}

fn parse_ports(at: &DocRef, ports: Vec<PortY>, diag: &mut Diag) -> Vec<ServicePort> {
    if ports.is_empty() {
        diag.error(at, Some("spec.ports"), "at least one port is required");
    }
    // Exact capacity: the vector is moved into the snapshot's `Service`.
    let mut out: Vec<ServicePort> = Vec::with_capacity(ports.len());
    for (i, p) in ports.into_iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        diag.unsupported(at, &format!("{f}."), &p.extra, schema::SERVICE_PORT, &[]);
        let number = diag
            .required(at, &format!("{f}.number"), p.number)
            .and_then(|n| diag.port(at, &format!("{f}.number"), n));
        let name = diag.required(at, &format!("{f}.name"), p.name);
        let target = match p.target_port {
            Some(t) => diag.port(at, &format!("{f}.targetPort"), t),
            None => number,
        };
        let (Some(number), Some(name), Some(target_port)) = (number, name, target) else {
            continue;
        };
        if out.iter().any(|o| o.number == number) {
            diag.error(
                at,
                Some(&format!("{f}.number")),
                format!("duplicate port {number}"),
            );
            continue;
        }
        out.push(ServicePort {
            number,
            protocol: Protocol::from_port(&name, p.protocol.as_deref()),
            name,
            target_port,
            path: None,
            default_retries: None,
        });
    }
    out
}

/// An RFC 1123 DNS name: labels of 1..=63 letters, digits or '-', not starting or ending with
/// '-', separated by single dots, 253 characters at most, no trailing dot.
fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod host_tests {
    use super::is_dns_name;

    #[test]
    fn dns_names() {
        for ok in ["reviews.default.svc.cluster.local", "a", "x-1.example.com"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["b.", "a:80", "c d", "x..y", "-", "@", "-a.b", "a-.b"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
