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
mod tests;
