//! STRICT_DNS / LOGICAL_DNS clusters: what istiod (1.23+) sends a waypoint for a ServiceEntry
//! with `resolution: DNS` / `DNS_ROUND_ROBIN` (`cluster_waypoint.go`
//! `buildWaypointInboundVIPCluster` → `convertResolution`, `cluster_builder.go` `buildCluster`):
//! an `inbound-vip` cluster with an inline `load_assignment` of hostname `socket_address`es,
//! `dns_lookup_family`, `dns_refresh_rate`, `respect_dns_ttl`, and from 1.25 `dns_jitter` and a
//! c-ares `typed_dns_resolver_config`.
//!
//! Envoy resolves these itself; here each hostname becomes a [`DnsTarget`] of the translation,
//! and the endpoints are built from the [`DnsAnswers`] the caller passes in
//! ([`super::TranslateOptions::dns`]): STRICT_DNS, every address of every hostname; LOGICAL_DNS,
//! the first address of its one hostname. They are dialled directly (not HBONE), with the
//! cluster's transport socket.

use super::endpoint::PodEndpoint;
use super::{duration, At, Diag};
use crate::dns::{normalize_hostname, DnsAnswers, DnsFamily, DnsQuery, DnsTarget};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The resolver istiod configures from 1.25 (`PILOT_DNS_CARES_UDP_MAX_QUERIES`): its settings
/// tune c-ares only, so it is accepted as is and the waypoint's own resolver used.
const CARES: &str =
    "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";

// Cluster.DnsLookupFamily: AUTO = 0, V4_ONLY = 1, V6_ONLY = 2, V4_PREFERRED = 3, ALL = 4.
const V6_ONLY: i32 = 2;
const ALL: i32 = 4;

/// How a DNS cluster resolves.
#[derive(Debug, Clone)]
pub(crate) struct DnsCluster {
    /// LOGICAL_DNS: one host, the first address of the latest answer.
    pub(crate) logical: bool,
    family: DnsFamily,
    refresh: Duration,
    respect_ttl: bool,
    jitter: Duration,
}

/// The resolution settings of a STRICT_DNS (`logical` false) or LOGICAL_DNS cluster.
// istiod still writes the legacy `Cluster` DNS fields (deprecated in favour of
// `envoy.clusters.dns`), so they are the ones read.
#[allow(deprecated)]
pub(crate) fn settings(c: &Cluster, logical: bool, at: At<'_>, diag: &mut Diag) -> DnsCluster {
    let family = match c.dns_lookup_family {
        V6_ONLY => DnsFamily::V6,
        ALL => DnsFamily::All,
        _ => DnsFamily::V4,
    };
    if let Some(t) = &c.typed_dns_resolver_config {
        let type_url = t.typed_config.as_ref().map_or("", |a| a.type_url.as_str());
        if type_url != CARES {
            at.warn(
                diag,
                format!(
                    "DNS resolver {} ({type_url}) is not supported; the waypoint's resolver is used",
                    t.name
                ),
            );
        }
    }
    if !c.dns_resolvers.is_empty() || c.dns_resolution_config.is_some() {
        at.warn(
            diag,
            "dns_resolvers / dns_resolution_config are not supported; the waypoint's resolver is used",
        );
    }
    let refresh = c
        .dns_refresh_rate
        .as_ref()
        .and_then(duration)
        .filter(|d| !d.is_zero())
        .unwrap_or(DnsTarget::DEFAULT_REFRESH);
    if c.dns_failure_refresh_rate.is_some() {
        at.warn(
            diag,
            "dns_failure_refresh_rate is not supported; dns_refresh_rate is used after a failure",
        );
    }
    DnsCluster {
        logical,
        family,
        refresh,
        respect_ttl: c.respect_dns_ttl,
        jitter: c.dns_jitter.as_ref().and_then(duration).unwrap_or_default(),
    }
}

/// The endpoints of a DNS cluster from the answers known so far; each hostname is added to
/// `targets` (to be resolved). An endpoint that is an IP is used as it is.
pub(crate) fn endpoints(
    cla: Option<&ClusterLoadAssignment>,
    d: &DnsCluster,
    answers: &DnsAnswers,
    targets: &mut BTreeMap<DnsQuery, DnsTarget>,
    at: At<'_>,
    diag: &mut Diag,
) -> Vec<PodEndpoint> {
    let mut hosts: Vec<(String, u16)> = Vec::new();
    for ep in cla.into_iter().flat_map(|c| &c.endpoints) {
        for lb in &ep.lb_endpoints {
            // HealthStatus UNHEALTHY = 2, DRAINING = 3, TIMEOUT = 4.
            if matches!(lb.health_status, 2..=4) {
                continue;
            }
            let socket = match &lb.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => {
                    match e.address.as_ref().and_then(|a| a.address.as_ref()) {
                        Some(AddressKind::SocketAddress(s)) => s,
                        _ => {
                            at.reject(diag, "a DNS cluster's endpoints must be socket addresses");
                            continue;
                        }
                    }
                }
                _ => {
                    at.reject(diag, "a DNS cluster's endpoints must be socket addresses");
                    continue;
                }
            };
            let port = match socket.port_specifier {
                Some(PortSpecifier::PortValue(p)) => match u16::try_from(p) {
                    Ok(p) => p,
                    Err(_) => {
                        at.reject(diag, format!("endpoint port {p} out of range"));
                        continue;
                    }
                },
                _ => {
                    at.reject(diag, "endpoint without a port value");
                    continue;
                }
            };
            if socket.address.is_empty() {
                at.reject(diag, "endpoint without address");
                continue;
            }
            hosts.push((socket.address.clone(), port));
        }
    }
    if d.logical && hosts.len() > 1 {
        // Envoy rejects this; istiod's validation refuses DNS_ROUND_ROBIN with several endpoints.
        at.reject(
            diag,
            format!(
                "LOGICAL_DNS cluster must have exactly one endpoint, has {}",
                hosts.len()
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut unresolved = Vec::new();
    for (host, port) in hosts {
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let query = DnsQuery {
                    hostname: normalize_hostname(&host),
                    family: d.family,
                };
                let target = DnsTarget {
                    query: query.clone(),
                    refresh: d.refresh,
                    respect_ttl: d.respect_ttl,
                    jitter: d.jitter,
                };
                targets
                    .entry(query.clone())
                    .and_modify(|t| t.merge(&target))
                    .or_insert(target);
                match answers.get(&query) {
                    Some(a) => a.clone(),
                    None => {
                        unresolved.push(query.hostname);
                        Vec::new()
                    }
                }
            }
        };
        let take = if d.logical {
            1
        } else {
            crate::dns::MAX_ADDRESSES_PER_HOST
        };
        for ip in addrs.into_iter().take(take) {
            let addr = SocketAddr::new(ip, port);
            if out.iter().any(|p: &PodEndpoint| p.addr() == addr) {
                continue;
            }
            out.push(PodEndpoint {
                ip,
                port,
                who: None,
                labels: Default::default(),
                tunnel: false,
                istio_mtls: false,
                placement: crate::policy::Placement::shared_default(),
            });
        }
    }
    if !unresolved.is_empty() {
        at.warn(
            diag,
            format!(
                "{} not resolved yet; no endpoints until answered",
                unresolved.join(", ")
            ),
        );
    }
    out
}
