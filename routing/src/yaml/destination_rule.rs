//! `DestinationRule` documents: subsets and traffic policies (load balancer,
//! consistent hash, warmup, connection pool, outlier detection, port-level
//! settings, `tls` in [`super::client_tls`]).
//!
//! Validation follows Istio's (`pkg/config/validation`) plus what Envoy
//! would reject (Maglev table sizes that are not prime, ring sizes above
//! Envoy's maximum). Zero limits mean "default" as in Istio; negative values,
//! out-of-range percentages and malformed durations are errors. Valid Istio
//! fields the waypoint does not enforce (`tcpKeepalive`,
//! `localityLbSetting`, …) are warnings.

use super::client_tls::ClientTlsY;
use super::diag::{Diag, Extra};
use super::fields::{present, DurationRule, Fields, Scalar};
use super::schema;
use super::{parse_spec, DocCtx};
use crate::error::DocRef;
use crate::hash::is_prime;
use crate::hosts::expand_host;
use crate::model::{DestinationRule, LbPolicy, Subset};
use crate::policy::{
    ConnectionPool, ConsistentHash, HashAlgorithm, HashKey, HttpCookie, HttpSettings, LoadBalancer,
    OutlierDetection, PortTrafficPolicy, TcpSettings, TrafficPolicy, Warmup,
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE, MAGLEV_TABLE_SIZE_LIMIT, MAX_RING_SIZE,
};
use crate::upstream::ClientTls;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
mod connection_pool;
mod load_balancer;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    host: Option<String>,
    traffic_policy: Option<TrafficPolicyY>,
    subsets: Option<Vec<SubsetY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicyY {
    load_balancer: Option<LoadBalancerY>,
    connection_pool: Option<ConnectionPoolY>,
    outlier_detection: Option<OutlierDetectionY>,
    tls: Option<ClientTlsY>,
    port_level_settings: Option<Vec<PortTrafficPolicyY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortTrafficPolicyY {
    port: Option<PortSelectorY>,
    load_balancer: Option<LoadBalancerY>,
    connection_pool: Option<ConnectionPoolY>,
    outlier_detection: Option<OutlierDetectionY>,
    tls: Option<ClientTlsY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct PortSelectorY {
    number: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoadBalancerY {
    simple: Option<String>,
    consistent_hash: Option<ConsistentHashY>,
    warmup_duration_secs: Scalar,
    warmup: Option<WarmupY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WarmupY {
    duration: Scalar,
    minimum_percent: Scalar,
    aggression: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsistentHashY {
    http_header_name: Option<String>,
    http_cookie: Option<HttpCookieY>,
    use_source_ip: Scalar,
    http_query_parameter_name: Option<String>,
    ring_hash: Option<RingHashY>,
    maglev: Option<MaglevY>,
    minimum_ring_size: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct HttpCookieY {
    name: Option<String>,
    path: Option<String>,
    ttl: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RingHashY {
    minimum_ring_size: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MaglevY {
    table_size: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct ConnectionPoolY {
    tcp: Option<TcpY>,
    http: Option<HttpY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcpY {
    max_connections: Scalar,
    connect_timeout: Scalar,
    max_connection_duration: Scalar,
    idle_timeout: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpY {
    http1_max_pending_requests: Scalar,
    http2_max_requests: Scalar,
    max_requests_per_connection: Scalar,
    max_retries: Scalar,
    idle_timeout: Scalar,
    max_concurrent_streams: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutlierDetectionY {
    #[serde(rename = "consecutive5xxErrors")]
    consecutive_5xx_errors: Scalar,
    consecutive_gateway_errors: Scalar,
    interval: Scalar,
    base_ejection_time: Scalar,
    max_ejection_percent: Scalar,
    min_health_percent: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubsetY {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    traffic_policy: Option<TrafficPolicyY>,
    #[serde(flatten)]
    extra: Extra,
}

/// A checked DestinationRule; the host is expanded but not yet resolved.
#[derive(Debug)]
pub(crate) struct DestinationRuleIr {
    pub at: DocRef,
    pub dr: DestinationRule,
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<DestinationRuleIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    let errors_before = diag.errors.len();
    diag.unsupported(at, "spec.", &spec.extra, schema::DESTINATION_RULE, &[]);
    let host = diag.required(at, "spec.host", spec.host);
    let traffic_policy = spec
        .traffic_policy
        .map(|tp| Fields { at, diag }.traffic_policy("spec.trafficPolicy", tp))
        .map(Arc::new);
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, s) in spec.subsets.unwrap_or_default().into_iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        diag.unsupported(at, &format!("{f}."), &s.extra, schema::SUBSET, &[]);
        let traffic_policy = s
            .traffic_policy
            .map(|tp| Fields { at, diag }.traffic_policy(&format!("{f}.trafficPolicy"), tp))
            .map(Arc::new);
        let Some(name) = diag.required(at, &format!("{f}.name"), s.name) else {
            continue;
        };
        if subsets.iter().any(|o| o.name == name) {
            diag.error(
                at,
                Some(&format!("{f}.name")),
                format!("duplicate subset {name}"),
            );
            continue;
        }
        subsets.push(Subset {
            name,
            labels: Arc::new(s.labels.unwrap_or_default()),
            traffic_policy,
        });
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    let mut dr = DestinationRule {
        namespace: ctx.namespace.clone(),
        name: ctx.name.clone(),
        host: expand_host(&host?, &ctx.namespace),
        traffic_policy,
        subsets,
    };
    if let Some(reason) = refusal(&dr) {
        // Rejected alone (the rest of the config loads), and never in plaintext: every cluster
        // of the host leaves its directly dialled endpoints out. The subsets stay defined (as
        // names and labels) so that routes naming them still resolve.
        diag.warn(
            at,
            None,
            format!(
                "rejected: {reason}; none of its traffic policies apply and the endpoints of {} outside the mesh are left out (503), never dialled in plaintext",
                dr.host
            ),
        );
        let refused = Some(Arc::new(TrafficPolicy {
            tls: Some(ClientTls::Refused(reason)),
            ..Default::default()
        }));
        dr.traffic_policy.clone_from(&refused);
        for s in &mut dr.subsets {
            s.traffic_policy.clone_from(&refused);
        }
    }
    Some(DestinationRuleIr { at: at.clone(), dr })
}

/// The first `tls` of the rule the waypoint cannot honour ([`ClientTls::Refused`]).
fn refusal(dr: &DestinationRule) -> Option<String> {
    dr.traffic_policy
        .iter()
        .chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()))
        .flat_map(|tp| {
            std::iter::once(tp.tls.as_ref())
                .chain(tp.port_level_settings.iter().map(|p| p.tls.as_ref()))
        })
        .flatten()
        .find_map(|t| match t {
            ClientTls::Refused(reason) => Some(reason.clone()),
            _ => None,
        })
}

impl Fields<'_, '_> {
    fn traffic_policy(&mut self, f: &str, tp: TrafficPolicyY) -> TrafficPolicy {
        self.unsupported(f, &tp.extra, schema::TRAFFIC_POLICY);
        let empty = tp.load_balancer.is_none()
            && tp.connection_pool.is_none()
            && tp.outlier_detection.is_none()
            && tp.port_level_settings.is_none()
            && tp.tls.is_none();
        if empty {
            self.error(
                f,
                "must set at least one of loadBalancer, connectionPool, outlierDetection, tls or portLevelSettings",
            );
        }
        let load_balancer = tp
            .load_balancer
            .map(|lb| self.load_balancer(&format!("{f}.loadBalancer"), lb));
        let connection_pool = tp
            .connection_pool
            .map(|cp| self.connection_pool(&format!("{f}.connectionPool"), cp));
        let outlier_detection = tp
            .outlier_detection
            .map(|od| self.outlier_detection(&format!("{f}.outlierDetection"), od));
        let tls = tp.tls.and_then(|t| self.client_tls(&format!("{f}.tls"), t));
        let mut port_level_settings: Vec<PortTrafficPolicy> = Vec::new();
        for (i, p) in tp
            .port_level_settings
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let pf = format!("{f}.portLevelSettings[{i}]");
            if let Some(p) = self.port_traffic_policy(&pf, p) {
                // kept (lookups take the first), so indices stay the YAML's
                if port_level_settings.iter().any(|o| o.port == p.port) {
                    self.warn(
                        &format!("{pf}.port.number"),
                        format!("duplicate port {}; the first entry applies", p.port),
                    );
                }
                port_level_settings.push(p);
            }
        }
        TrafficPolicy {
            load_balancer,
            connection_pool,
            outlier_detection,
            tls,
            port_level_settings,
        }
    }

    fn port_traffic_policy(
        &mut self,
        pf: &str,
        p: PortTrafficPolicyY,
    ) -> Option<PortTrafficPolicy> {
        self.unsupported(pf, &p.extra, schema::PORT_TRAFFIC_POLICY);
        let port = match p.port {
            None => {
                self.error(&format!("{pf}.port"), "missing required field");
                None
            }
            Some(sel) => {
                self.unsupported(&format!("{pf}.port"), &sel.extra, schema::PORT_SELECTOR);
                let nf = format!("{pf}.port.number");
                if present(sel.number.clone()).is_none() {
                    self.error(&nf, "missing required field");
                    None
                } else {
                    self.uint(&nf, sel.number, u64::from(u16::MAX))
                        .and_then(|n| self.diag.port(self.at, &nf, n as i64))
                }
            }
        };
        if p.load_balancer.is_none()
            && p.connection_pool.is_none()
            && p.outlier_detection.is_none()
            && p.tls.is_none()
        {
            self.error(
                pf,
                "must set at least one of loadBalancer, connectionPool, outlierDetection or tls",
            );
        }
        let load_balancer = p
            .load_balancer
            .map(|lb| self.load_balancer(&format!("{pf}.loadBalancer"), lb));
        let connection_pool = p
            .connection_pool
            .map(|cp| self.connection_pool(&format!("{pf}.connectionPool"), cp));
        let outlier_detection = p
            .outlier_detection
            .map(|od| self.outlier_detection(&format!("{pf}.outlierDetection"), od));
        let tls = p.tls.and_then(|t| self.client_tls(&format!("{pf}.tls"), t));
        Some(PortTrafficPolicy {
            port: port?,
            load_balancer,
            connection_pool,
            outlier_detection,
            tls,
        })
    }
}

/// Warn about `portLevelSettings` for ports the service does not have (they
/// can never apply).
pub(crate) fn check_ports(at: &DocRef, dr: &DestinationRule, ports: &[u16], diag: &mut Diag) {
    let policies = std::iter::once(("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref()))
        .chain(dr.subsets.iter().enumerate().map(|(i, s)| {
            (
                format!("spec.subsets[{i}].trafficPolicy"),
                s.traffic_policy.as_ref(),
            )
        }));
    for (f, tp) in policies {
        let Some(tp) = tp else { continue };
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            if !ports.contains(&p.port) {
                diag.warn(
                    at,
                    Some(&format!("{f}.portLevelSettings[{i}].port.number")),
                    format!("port {} is not a port of {}; ignored", p.port, dr.host),
                );
            }
        }
    }
}

/// A SIMPLE / MUTUAL `tls` on a service with HBONE endpoints: it applies only to its endpoints
/// dialled directly. istiod's waypoint would originate it inside the HBONE tunnel too
/// (`cluster_waypoint.go`: the TLS socket wrapped in `internal_upstream` for every endpoint);
/// the waypoint sends HBONE endpoints the request as received.
pub(crate) fn warn_tls_on_hbone(at: &DocRef, dr: &DestinationRule, diag: &mut Diag) {
    let policies = std::iter::once(("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref()))
        .chain(dr.subsets.iter().enumerate().map(|(i, s)| {
            (
                format!("spec.subsets[{i}].trafficPolicy"),
                s.traffic_policy.as_ref(),
            )
        }));
    for (f, tp) in policies {
        let Some(tp) = tp else { continue };
        let tls = std::iter::once((format!("{f}.tls"), tp.tls.as_ref())).chain(
            tp.port_level_settings
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("{f}.portLevelSettings[{i}].tls"), p.tls.as_ref())),
        );
        for (field, t) in tls {
            if t.and_then(ClientTls::originate).is_some() {
                diag.warn(
                    at,
                    Some(&field),
                    format!(
                        "applies only to the endpoints of {} outside the mesh; those reached over HBONE get the request inside the tunnel without this TLS",
                        dr.host
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
