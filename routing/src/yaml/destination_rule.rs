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
        .map(|tp| Fields { at, diag }.traffic_policy("spec.trafficPolicy", tp));
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, s) in spec.subsets.unwrap_or_default().into_iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        diag.unsupported(at, &format!("{f}."), &s.extra, schema::SUBSET, &[]);
        let traffic_policy = s
            .traffic_policy
            .map(|tp| Fields { at, diag }.traffic_policy(&format!("{f}.trafficPolicy"), tp));
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
            labels: s.labels.unwrap_or_default(),
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
        let refused = Some(TrafficPolicy {
            tls: Some(ClientTls::Refused(reason)),
            ..Default::default()
        });
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

    fn load_balancer(&mut self, f: &str, lb: LoadBalancerY) -> LoadBalancer {
        self.unsupported(f, &lb.extra, schema::LOAD_BALANCER_SETTINGS);
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            self.error(f, "simple and consistentHash are mutually exclusive");
        }
        let simple = match lb.simple.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("UNSPECIFIED") => LbPolicy::LeastRequest,
            Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
            Some("RANDOM") => LbPolicy::Random,
            Some("LEAST_REQUEST" | "LEAST_CONN") => LbPolicy::LeastRequest,
            Some("PASSTHROUGH") => LbPolicy::Passthrough,
            Some(_) => {
                let v = lb.simple.unwrap_or_default();
                self.error(
                    &format!("{f}.simple"),
                    format!("unknown value {v:?} (expected ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH or UNSPECIFIED)"),
                );
                LbPolicy::LeastRequest
            }
        };
        let consistent_hash = lb
            .consistent_hash
            .map(|ch| self.consistent_hash(&format!("{f}.consistentHash"), ch));
        let legacy = self.duration(
            &format!("{f}.warmupDurationSecs"),
            lb.warmup_duration_secs.clone(),
            DurationRule::NonNegative,
        );
        let warmup = match lb.warmup {
            Some(w) => {
                if present(lb.warmup_duration_secs).is_some() {
                    self.warn(&format!("{f}.warmupDurationSecs"), "ignored: warmup is set");
                }
                self.warmup(&format!("{f}.warmup"), w)
            }
            None => legacy.map(Warmup::linear),
        };
        let out = LoadBalancer {
            simple,
            consistent_hash,
            warmup,
            locality: None,
        };
        if out.warmup.is_some()
            && !matches!(out.policy(), LbPolicy::RoundRobin | LbPolicy::LeastRequest)
        {
            self.warn(
                &format!("{f}.warmup"),
                format!(
                    "applies only to ROUND_ROBIN and LEAST_REQUEST, not {:?}; ignored",
                    out.policy()
                ),
            );
        }
        out
    }

    fn warmup(&mut self, f: &str, w: WarmupY) -> Option<Warmup> {
        self.unsupported(f, &w.extra, schema::WARMUP_CONFIGURATION);
        let duration = if present(w.duration.clone()).is_none() {
            self.error(&format!("{f}.duration"), "missing required field");
            None
        } else {
            self.duration(
                &format!("{f}.duration"),
                w.duration,
                DurationRule::NonNegative,
            )
        };
        let minimum_percent = self
            .float(
                &format!("{f}.minimumPercent"),
                w.minimum_percent,
                0.0,
                100.0,
                true,
            )
            .unwrap_or(Warmup::DEFAULT_MINIMUM_PERCENT);
        let aggression = self
            .float(
                &format!("{f}.aggression"),
                w.aggression,
                0.0,
                f64::MAX,
                false,
            )
            .unwrap_or(Warmup::DEFAULT_AGGRESSION);
        Some(Warmup {
            duration: duration?,
            minimum_percent,
            aggression,
        })
    }

    fn consistent_hash(&mut self, f: &str, ch: ConsistentHashY) -> ConsistentHash {
        self.unsupported(f, &ch.extra, schema::CONSISTENT_HASH_LB);
        let mut keys: Vec<HashKey> = Vec::new();
        if let Some(h) = ch.http_header_name.filter(|h| !h.is_empty()) {
            keys.push(HashKey::Header(h.to_ascii_lowercase()));
        }
        if let Some(c) = ch.http_cookie {
            let cf = format!("{f}.httpCookie");
            self.unsupported(&cf, &c.extra, schema::HTTP_COOKIE);
            let name = c.name.filter(|n| !n.is_empty());
            if name.is_none() {
                self.error(&format!("{cf}.name"), "missing required field");
            }
            let ttl = if present(c.ttl.clone()).is_none() {
                self.error(
                    &format!("{cf}.ttl"),
                    "missing required field (Istio requires it; 0s = session cookie)",
                );
                None
            } else {
                self.duration(&format!("{cf}.ttl"), c.ttl, DurationRule::NonNegative)
            };
            keys.push(HashKey::Cookie(HttpCookie {
                name: name.unwrap_or_default(),
                path: c.path.filter(|p| !p.is_empty()),
                ttl,
            }));
        }
        if self.boolean(&format!("{f}.useSourceIp"), ch.use_source_ip) == Some(true) {
            keys.push(HashKey::SourceIp);
        }
        if let Some(q) = ch.http_query_parameter_name.filter(|q| !q.is_empty()) {
            keys.push(HashKey::QueryParameter(q));
        }
        if keys.len() > 1 {
            self.error(
                f,
                "only one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName may be set",
            );
        }
        if keys.is_empty() {
            self.warn(
                f,
                "no hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName); requests are spread at random",
            );
        }
        let legacy_f = format!("{f}.minimumRingSize");
        let legacy = self.uint(&legacy_f, ch.minimum_ring_size, MAX_RING_SIZE);
        let explicit = ch.ring_hash.is_some() || ch.maglev.is_some();
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.error(f, "ringHash and maglev are mutually exclusive");
        }
        let algorithm = if let Some(m) = ch.maglev {
            let mf = format!("{f}.maglev");
            self.unsupported(&mf, &m.extra, schema::MAGLEV);
            let tf = format!("{mf}.tableSize");
            let size = match self.uint(&tf, m.table_size, u64::MAX) {
                None | Some(0) => DEFAULT_MAGLEV_TABLE_SIZE,
                Some(n) if n >= MAGLEV_TABLE_SIZE_LIMIT => {
                    self.error(
                        &tf,
                        format!("must be less than {MAGLEV_TABLE_SIZE_LIMIT}, got {n}"),
                    );
                    DEFAULT_MAGLEV_TABLE_SIZE
                }
                Some(n) if !is_prime(n) => {
                    self.error(&tf, format!("must be a prime number, got {n}"));
                    DEFAULT_MAGLEV_TABLE_SIZE
                }
                Some(n) => n,
            };
            HashAlgorithm::Maglev { table_size: size }
        } else if let Some(r) = ch.ring_hash {
            let rf = format!("{f}.ringHash");
            self.unsupported(&rf, &r.extra, schema::RING_HASH);
            let size = self
                .uint(
                    &format!("{rf}.minimumRingSize"),
                    r.minimum_ring_size,
                    MAX_RING_SIZE,
                )
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
            HashAlgorithm::RingHash {
                minimum_ring_size: size,
            }
        } else {
            HashAlgorithm::RingHash {
                minimum_ring_size: legacy
                    .filter(|n| *n > 0)
                    .unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
            }
        };
        if legacy.is_some_and(|n| n > 0) && explicit {
            self.warn(
                &legacy_f,
                "deprecated field ignored: ringHash or maglev is set",
            );
        }
        ConsistentHash {
            key: keys.into_iter().next(),
            algorithm,
        }
    }

    fn connection_pool(&mut self, f: &str, cp: ConnectionPoolY) -> ConnectionPool {
        self.unsupported(f, &cp.extra, schema::CONNECTION_POOL_SETTINGS);
        if cp.tcp.is_none() && cp.http.is_none() {
            self.error(f, "must set tcp or http");
        }
        let tcp = cp.tcp.map(|t| {
            let tf = format!("{f}.tcp");
            self.unsupported(&tf, &t.extra, schema::TCP_SETTINGS);
            TcpSettings {
                max_connections: self.int32(&format!("{tf}.maxConnections"), t.max_connections),
                connect_timeout: self.duration(
                    &format!("{tf}.connectTimeout"),
                    t.connect_timeout,
                    DurationRule::AtLeastMillis,
                ),
                max_connection_duration: self.duration(
                    &format!("{tf}.maxConnectionDuration"),
                    t.max_connection_duration,
                    DurationRule::AtLeastMillis,
                ),
                idle_timeout: self.duration(
                    &format!("{tf}.idleTimeout"),
                    t.idle_timeout,
                    DurationRule::NonNegative,
                ),
            }
        });
        let http = cp.http.map(|h| {
            let hf = format!("{f}.http");
            self.unsupported(&hf, &h.extra, schema::HTTP_SETTINGS);
            HttpSettings {
                http1_max_pending_requests: self.int32(
                    &format!("{hf}.http1MaxPendingRequests"),
                    h.http1_max_pending_requests,
                ),
                http2_max_requests: self
                    .int32(&format!("{hf}.http2MaxRequests"), h.http2_max_requests),
                max_requests_per_connection: self.int32(
                    &format!("{hf}.maxRequestsPerConnection"),
                    h.max_requests_per_connection,
                ),
                max_retries: self.int32(&format!("{hf}.maxRetries"), h.max_retries),
                idle_timeout: self.duration(
                    &format!("{hf}.idleTimeout"),
                    h.idle_timeout,
                    DurationRule::AtLeastMillis,
                ),
                max_concurrent_streams: self.int32(
                    &format!("{hf}.maxConcurrentStreams"),
                    h.max_concurrent_streams,
                ),
            }
        });
        ConnectionPool { tcp, http }
    }

    fn outlier_detection(&mut self, f: &str, od: OutlierDetectionY) -> OutlierDetection {
        self.unsupported(f, &od.extra, schema::OUTLIER_DETECTION);
        OutlierDetection {
            consecutive_5xx_errors: self.uint32(
                &format!("{f}.consecutive5xxErrors"),
                od.consecutive_5xx_errors,
            ),
            consecutive_gateway_errors: self.uint32(
                &format!("{f}.consecutiveGatewayErrors"),
                od.consecutive_gateway_errors,
            ),
            interval: self.duration(
                &format!("{f}.interval"),
                od.interval,
                DurationRule::AtLeastMillis,
            ),
            base_ejection_time: self.duration(
                &format!("{f}.baseEjectionTime"),
                od.base_ejection_time,
                DurationRule::AtLeastMillis,
            ),
            max_ejection_percent: self
                .percent(&format!("{f}.maxEjectionPercent"), od.max_ejection_percent),
            min_health_percent: self
                .percent(&format!("{f}.minHealthPercent"), od.min_health_percent),
        }
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
mod tests {
    use super::*;
    use crate::yaml::fields::parse_duration;
    use crate::yaml::tests::files;
    use crate::{load_str, HashKey, LbPolicy, PoolResource, Snapshot};
    use std::time::Duration;

    const FQDN: &str = "reviews.default.svc.cluster.local";

    fn dr(body: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n{body}"
        )
    }

    fn with_dr(body: &str) -> Vec<(String, String)> {
        // without the VirtualService (it names subsets most rules here lack)
        let mut f = files(&[]);
        f.retain(|(n, _)| n != "reviews-dr.yaml" && n != "reviews.yaml");
        f.push(("reviews-dr.yaml".into(), dr(body)));
        f
    }

    fn load(body: &str) -> Snapshot {
        load_str(&with_dr(body), "cluster.local").unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(body: &str) -> String {
        match load_str(&with_dr(body), "cluster.local") {
            Ok(_) => panic!("loaded:\n{body}"),
            Err(e) => e.to_string(),
        }
    }

    const FULL: &str = "  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: affinity, path: /, ttl: 1h}
        maglev: {tableSize: 1009}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, maxConnectionDuration: 1h, idleTimeout: 0s}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxRetries: 3
        idleTimeout: 1m30s
        maxConcurrentStreams: 50
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
      minHealthPercent: 30
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 60s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 5}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
        warmup: {duration: 2m, minimumPercent: 20, aggression: 2}
  - name: v3
    labels: {version: v3}
";

    #[test]
    fn full_policy_parses_and_merges() {
        let s = load(FULL);
        let d = &s.destination_rules()[0];
        let tp = d.traffic_policy.as_ref().unwrap();
        let ch = tp
            .load_balancer
            .as_ref()
            .unwrap()
            .consistent_hash
            .as_ref()
            .unwrap();
        assert_eq!(ch.algorithm, HashAlgorithm::Maglev { table_size: 1009 });
        assert_eq!(
            ch.key,
            Some(HashKey::Cookie(HttpCookie {
                name: "affinity".into(),
                path: Some("/".into()),
                ttl: Some(Duration::from_secs(3600)),
            }))
        );
        let cp = tp.connection_pool.as_ref().unwrap();
        let tcp = cp.tcp.as_ref().unwrap();
        assert_eq!(tcp.max_connections, Some(100));
        assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(30)));
        assert_eq!(tcp.max_connection_duration, Some(Duration::from_secs(3600)));
        assert_eq!(tcp.idle_timeout, Some(Duration::ZERO));
        let http = cp.http.as_ref().unwrap();
        assert_eq!(
            (
                http.http1_max_pending_requests,
                http.http2_max_requests,
                http.max_requests_per_connection,
                http.max_retries,
                http.max_concurrent_streams
            ),
            (Some(10), Some(1000), Some(10), Some(3), Some(50))
        );
        assert_eq!(http.idle_timeout, Some(Duration::from_secs(90)));
        let od = tp.outlier_detection.as_ref().unwrap();
        assert_eq!(
            od,
            &OutlierDetection {
                consecutive_5xx_errors: Some(7),
                consecutive_gateway_errors: Some(3),
                interval: Some(Duration::from_secs(300)),
                base_ejection_time: Some(Duration::from_secs(900)),
                max_ejection_percent: Some(50),
                min_health_percent: Some(30),
            }
        );
        assert_eq!(tp.port_level_settings.len(), 1);

        // the service has only port 9080: its port-level entry replaces the whole top level
        let all = s.cluster(FQDN, 9080, None).unwrap();
        assert_eq!(all.lb, LbPolicy::RoundRobin);
        assert!(all.policy.connection_pool.is_none());
        assert!(all.outlier_settings().is_none());
        assert_eq!(
            all.policy.warmup(),
            Some(Warmup::linear(Duration::from_secs(60)))
        );
        // v1: its connectionPool over the port-level policy
        let v1 = s.cluster(FQDN, 9080, Some("v1")).unwrap();
        assert_eq!(v1.lb, LbPolicy::RoundRobin);
        assert_eq!(v1.limits().max_requests, 5);
        assert_eq!(v1.limits().max_connections, u32::MAX);
        let _g = v1.try_acquire(PoolResource::Request).unwrap();
        // v2: its loadBalancer with the full warmup config
        let v2 = s.cluster(FQDN, 9080, Some("v2")).unwrap();
        assert_eq!(v2.lb, LbPolicy::LeastRequest);
        let w = v2.policy.warmup().unwrap();
        assert_eq!(
            (w.duration, w.minimum_percent, w.aggression),
            (Duration::from_secs(120), 20.0, 2.0)
        );
        assert!(v2.policy.connection_pool.is_none());
        // v3: no policy of its own
        assert_eq!(
            s.cluster(FQDN, 9080, Some("v3")).unwrap().lb,
            LbPolicy::RoundRobin
        );
        // the dump carries the policy
        let j = s.to_json();
        assert_eq!(
            j["destination_rules"][0]["traffic_policy"]["outlier_detection"]["interval"],
            "5m"
        );
        assert_eq!(
            j["clusters"][0]["policy"]["load_balancer"]["simple"],
            "ROUND_ROBIN"
        );
    }

    #[test]
    fn top_level_policy_without_port_level() {
        let s = load(
            "  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 4096}}\n    outlierDetection: {consecutive5xxErrors: 2}\n",
        );
        let c = s.cluster(FQDN, 9080, None).unwrap();
        assert_eq!(c.lb, LbPolicy::RingHash);
        assert_eq!(
            c.consistent_hash().unwrap().key,
            Some(HashKey::Header("x-user".into()))
        );
        let o = c.outlier_settings().unwrap();
        assert_eq!((o.consecutive_5xx, o.max_ejection_percent), (2, 10));
        // deprecated minimumRingSize alone sets the ring size
        let s = load("  trafficPolicy:\n    loadBalancer:\n      consistentHash: {useSourceIp: true, minimumRingSize: 2048}\n");
        let ch = s
            .cluster(FQDN, 9080, None)
            .unwrap()
            .consistent_hash()
            .unwrap()
            .clone();
        assert_eq!(ch.key, Some(HashKey::SourceIp));
        assert_eq!(
            ch.algorithm,
            HashAlgorithm::RingHash {
                minimum_ring_size: 2048
            }
        );
        let s = load("  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpQueryParameterName: u}\n");
        let ch = s
            .cluster(FQDN, 9080, None)
            .unwrap()
            .consistent_hash()
            .unwrap()
            .clone();
        assert_eq!(ch.key, Some(HashKey::QueryParameter("u".into())));
        assert_eq!(
            ch.algorithm,
            HashAlgorithm::RingHash {
                minimum_ring_size: 1024
            }
        );
        // zero limits mean default; numeric strings are accepted
        let s = load("  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 0, maxRetries: \"4\"}}\n");
        let l = s.cluster(FQDN, 9080, None).unwrap().limits();
        assert_eq!((l.max_requests, l.max_retries), (u32::MAX, 4));
    }

    #[test]
    fn error_paths() {
        let tp = |p: &str| format!("  trafficPolicy: {p}\n");
        let at = "reviews-dr.yaml doc 0 DestinationRule default/reviews: spec.trafficPolicy";
        let cases: &[(&str, &str)] = &[
            ("{connectionPool: {http: {http2MaxRequests: -1}}}", ".connectionPool.http.http2MaxRequests: must be ≥ 0, got -1"),
            ("{connectionPool: {http: {http1MaxPendingRequests: 3000000000}}}", ".connectionPool.http.http1MaxPendingRequests: must be ≤ 2147483647"),
            ("{connectionPool: {http: {maxRetries: many}}}", ".connectionPool.http.maxRetries: must be an integer, got \"many\""),
            ("{connectionPool: {tcp: {maxConnections: 1.5}}}", ".connectionPool.tcp.maxConnections: must be an integer"),
            ("{connectionPool: {tcp: {connectTimeout: 0s}}}", ".connectionPool.tcp.connectTimeout: must be ≥ 1ms"),
            ("{connectionPool: {tcp: {connectTimeout: 10}}}", ".connectionPool.tcp.connectTimeout: invalid duration \"10\": missing unit"),
            ("{connectionPool: {tcp: {connectTimeout: 1.5ms}}}", ".connectionPool.tcp.connectTimeout: only millisecond precision"),
            ("{connectionPool: {http: {idleTimeout: 5 minutes}}}", ".connectionPool.http.idleTimeout: invalid duration \"5 minutes\""),
            ("{connectionPool: {}}", ".connectionPool: must set tcp or http"),
            ("{outlierDetection: {interval: 10}}", ".outlierDetection.interval: invalid duration \"10\": missing unit"),
            ("{outlierDetection: {baseEjectionTime: -1s}}", ".outlierDetection.baseEjectionTime: invalid duration \"-1s\": must not be negative"),
            ("{outlierDetection: {maxEjectionPercent: 101}}", ".outlierDetection.maxEjectionPercent: must be a percentage in 0..=100, got 101"),
            ("{outlierDetection: {minHealthPercent: -5}}", ".outlierDetection.minHealthPercent: must be a percentage in 0..=100, got -5"),
            ("{outlierDetection: {consecutive5xxErrors: -1}}", ".outlierDetection.consecutive5xxErrors: must be ≥ 0"),
            ("{outlierDetection: {consecutiveGatewayErrors: x}}", ".outlierDetection.consecutiveGatewayErrors: must be an integer"),
            ("{loadBalancer: {simple: FASTEST}}", ".loadBalancer.simple: unknown value \"FASTEST\""),
            ("{loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}", ".loadBalancer: simple and consistentHash are mutually exclusive"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x}}}", ".loadBalancer.consistentHash: only one of httpHeaderName"),
            ("{loadBalancer: {consistentHash: {useSourceIp: yes please}}}", ".loadBalancer.consistentHash.useSourceIp: must be true or false"),
            ("{loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}}", ".loadBalancer.consistentHash.httpCookie.name: missing required field"),
            ("{loadBalancer: {consistentHash: {httpCookie: {name: c}}}}", ".loadBalancer.consistentHash.httpCookie.ttl: missing required field"),
            ("{loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: soon}}}}", ".loadBalancer.consistentHash.httpCookie.ttl: invalid duration \"soon\""),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}}", ".loadBalancer.consistentHash: ringHash and maglev are mutually exclusive"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}}}", ".loadBalancer.consistentHash.maglev.tableSize: must be a prime number, got 65536"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}}", ".loadBalancer.consistentHash.maglev.tableSize: must be less than 5000011"),
            ("{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 9000000}}}}", ".loadBalancer.consistentHash.ringHash.minimumRingSize: must be ≤ 8388608"),
            ("{loadBalancer: {warmupDurationSecs: 1x}}", ".loadBalancer.warmupDurationSecs: invalid duration \"1x\": unknown unit \"x\""),
            ("{loadBalancer: {warmup: {minimumPercent: 10}}}", ".loadBalancer.warmup.duration: missing required field"),
            ("{loadBalancer: {warmup: {duration: 1m, minimumPercent: 120}}}", ".loadBalancer.warmup.minimumPercent: must be ≥ 0 and ≤ 100"),
            ("{loadBalancer: {warmup: {duration: 1m, aggression: 0}}}", ".loadBalancer.warmup.aggression: must be > 0, got 0"),
            ("{}", ": must set at least one of loadBalancer"),
            ("{portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port: missing required field"),
            ("{portLevelSettings: [{port: {}, loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port.number: missing required field"),
            ("{portLevelSettings: [{port: {number: 0}, loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port.number: port 0 out of range"),
            ("{portLevelSettings: [{port: {number: 70000}, loadBalancer: {simple: RANDOM}}]}", ".portLevelSettings[0].port.number: must be ≤ 65535"),
            ("{portLevelSettings: [{port: {number: 9080}}]}", ".portLevelSettings[0]: must set at least one of loadBalancer, connectionPool"),
            ("{portLevelSettings: [{port: {number: 9080}, connectionPool: {http: {maxRetries: -2}}}]}", ".portLevelSettings[0].connectionPool.http.maxRetries: must be ≥ 0, got -2"),
        ];
        for (policy, want) in cases {
            let e = error(&tp(policy));
            let want = format!("{at}{want}");
            assert!(e.contains(&want), "{policy}\n  want: {want}\n  got:  {e}");
        }
        // subset policies are checked the same way
        let e = error("  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {outlierDetection: {interval: 0s}}\n");
        assert!(
            e.contains("spec.subsets[0].trafficPolicy.outlierDetection.interval: must be ≥ 1ms"),
            "{e}"
        );
    }

    #[test]
    fn warnings() {
        let s = load(
            "  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer:
      simple: RANDOM
      warmupDurationSecs: 30s
      localityLbSetting: {enabled: true}
    connectionPool:
      tcp: {tcpKeepalive: {time: 7200s}}
      http: {h2UpgradePolicy: UPGRADE}
    outlierDetection: {consecutiveErrors: 5}
    portLevelSettings:
    - port: {number: 9080}
      tls: {mode: DISABLE}
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
    - port: {number: 8080}
      loadBalancer: {consistentHash: {}}
",
        );
        let w = s.warnings().join("\n");
        let at = "reviews-dr.yaml doc 0 DestinationRule default/reviews: spec.trafficPolicy";
        for want in [
            ".loadBalancer.localityLbSetting is not supported yet; ignored",
            ".loadBalancer.warmup: applies only to ROUND_ROBIN and LEAST_REQUEST, not Random; ignored",
            ".connectionPool.tcp.tcpKeepalive is not supported yet; ignored",
            ".connectionPool.http.h2UpgradePolicy is not supported yet; ignored",
            ".outlierDetection.consecutiveErrors is not supported yet; ignored",
            ".portLevelSettings[1].port.number: duplicate port 9080; the first entry applies",
            ".portLevelSettings[2].loadBalancer.consistentHash: no hash key",
            ".portLevelSettings[2].port.number: port 8080 is not a port of reviews.default.svc.cluster.local; ignored",
        ] {
            assert!(w.contains(&format!("{at}{want}")), "missing {want}\nin:\n{w}");
        }
        // the tls-only port-level entry still replaces the top-level policy for 9080
        let c = s.cluster(FQDN, 9080, None).unwrap();
        assert_eq!(c.lb, LbPolicy::LeastRequest);
        assert!(c.policy.connection_pool.is_none());
        let s = load("  trafficPolicy:\n    loadBalancer:\n      consistentHash: {useSourceIp: true, minimumRingSize: 10, maglev: {}}\n      warmup: {duration: 1m}\n      warmupDurationSecs: 10s\n");
        let w = s.warnings().join("\n");
        assert!(
            w.contains("consistentHash.minimumRingSize: deprecated field ignored"),
            "{w}"
        );
        assert!(
            w.contains("loadBalancer.warmupDurationSecs: ignored: warmup is set"),
            "{w}"
        );
    }

    #[test]
    fn durations() {
        let ok = |s: &str, d: Duration| assert_eq!(parse_duration(s), Ok(d), "{s}");
        ok("1s", Duration::from_secs(1));
        ok("100ms", Duration::from_millis(100));
        ok("1m", Duration::from_secs(60));
        ok("1h30m", Duration::from_secs(5400));
        ok("1.5s", Duration::from_millis(1500));
        ok(".5s", Duration::from_millis(500));
        ok("250us", Duration::from_micros(250));
        ok("250µs", Duration::from_micros(250));
        ok("7ns", Duration::from_nanos(7));
        ok("0", Duration::ZERO);
        ok("0s", Duration::ZERO);
        ok("+2s", Duration::from_secs(2));
        for bad in ["", "1", "s", "1d", "-1s", "1.s5", "abc", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
