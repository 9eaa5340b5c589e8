//! DestinationRule traffic policies (Istio `TrafficPolicy`) and the effective
//! policy of one cluster.
//!
//! The types mirror Istio's API one to one; `None` means "not set" so the
//! merge below can tell an omitted component from a configured one. Defaults
//! are applied only when a cluster resolves its [`ClusterPolicy`] (the
//! `*_or_default` accessors), with the values Istio and Envoy use:
//!
//! | setting | default | source |
//! | --- | --- | --- |
//! | load balancer | `LEAST_REQUEST` | istio `defaultLBAlgorithm()` |
//! | ring hash `minimumRingSize` | 1024 | istio `ApplyRingHashLoadBalancer`, Envoy |
//! | maglev `tableSize` | 65537 | Istio API doc, Envoy `MaglevLbConfig` |
//! | warmup floor / aggression | 10 % / 1.0 | Envoy `SlowStartConfig` |
//! | circuit breakers | 2^32-1 each | istio `getDefaultCircuitBreakerThresholds()` |
//! | `consecutive5xxErrors` | 5 | Envoy `DEFAULT_CONSECUTIVE_5XX` (enforced 100 %) |
//! | `consecutiveGatewayErrors` | disabled | Envoy enforcing default 0 |
//! | `interval` / `baseEjectionTime` | 10 s / 30 s | Envoy `DetectorConfig` |
//! | max ejection time | max(300 s, base) | Envoy `DEFAULT_MAX_EJECTION_TIME_MS` |
//! | `maxEjectionPercent` | 10 (also for 0) | Envoy; Istio forwards only values > 0 |
//! | `minHealthPercent` | 0 (panic threshold off) | istio `applyOutlierDetection` |

use crate::model::LbPolicy;
use serde::{Serialize, Serializer};
use std::time::Duration;

/// Serialize a duration the way Istio writes it (`"30s"`, `"100ms"`).
pub(crate) fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(crate) fn serialize_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

/// `"1h"`, `"30s"`, `"1.5s"`, `"100ms"`, `"250us"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos.checked_rem(3_600_000_000_000) == Some(0) {
        return format!("{}h", nanos / 3_600_000_000_000);
    }
    if nanos.checked_rem(60_000_000_000) == Some(0) {
        return format!("{}m", nanos / 60_000_000_000);
    }
    if nanos.checked_rem(1_000_000_000) == Some(0) {
        return format!("{}s", nanos / 1_000_000_000);
    }
    if nanos.checked_rem(1_000_000) == Some(0) {
        return format!("{}ms", nanos / 1_000_000);
    }
    if nanos.checked_rem(1_000) == Some(0) {
        return format!("{}us", nanos / 1_000);
    }
    format!("{nanos}ns")
}

/// A DestinationRule `trafficPolicy` (top level or per subset).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// `tls`: how endpoints dialled directly are reached (never HBONE ones).
    pub tls: Option<crate::upstream::ClientTls>,
    /// Per service port; an entry *replaces* this policy for its port.
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// One entry of `portLevelSettings`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PortTrafficPolicy {
    /// Service port number.
    pub port: u16,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<crate::upstream::ClientTls>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LoadBalancer {
    /// `simple` (`RoundRobin`, `Random`, `LeastRequest`, `Passthrough`); used
    /// when `consistent_hash` is `None`. Unset in YAML = `LeastRequest`.
    pub simple: LbPolicy,
    /// `consistentHash` (Istio's oneof with `simple`).
    pub consistent_hash: Option<ConsistentHash>,
    /// `warmup` / `warmupDurationSecs`: slow start for ROUND_ROBIN and
    /// LEAST_REQUEST.
    pub warmup: Option<Warmup>,
    /// Priorities and localities of the endpoints (Envoy's priority levels
    /// and locality-weighted LB); `None`: one level, one locality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityLb>,
}

/// How a cluster's endpoints are spread over priority levels and localities, as istiod wrote
/// them into the `ClusterLoadAssignment` (its `localityLbSetting` failover / `failoverPriority`
/// / `distribute` already applied relative to the waypoint's own locality).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LocalityLb {
    /// `common_lb_config.locality_weighted_lb_config` is set: within a priority a locality is
    /// picked by its weight first. Otherwise Envoy ignores locality weights.
    pub weighted: bool,
    /// Placement per endpoint address; an endpoint not listed is priority 0 in the unnamed
    /// locality with weight 1. One `Arc` per locality group of the assignment, which its
    /// cluster endpoints share.
    pub endpoints: std::collections::BTreeMap<std::net::IpAddr, std::sync::Arc<Placement>>,
}

/// One endpoint's place in its cluster's assignment (`LocalityLbEndpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// 0 = most preferred.
    pub priority: u32,
    /// Shared by the group's endpoints and the cluster endpoints placed from them.
    #[serde(serialize_with = "crate::model::serialize_arc")]
    pub locality: std::sync::Arc<crate::model::Locality>,
    /// The locality group's `load_balancing_weight` (0 = the group gets no load when
    /// locality-weighted LB is on).
    pub locality_weight: u32,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            priority: 0,
            locality: crate::model::Locality::unknown(),
            locality_weight: 0,
        }
    }
}

impl LoadBalancer {
    pub fn simple(policy: LbPolicy) -> Self {
        LoadBalancer {
            simple: policy,
            ..Default::default()
        }
    }

    /// The algorithm: `RingHash`/`Maglev` for consistent hashing, else `simple`.
    pub fn policy(&self) -> LbPolicy {
        match &self.consistent_hash {
            Some(ch) => match ch.algorithm {
                HashAlgorithm::RingHash { .. } => LbPolicy::RingHash,
                HashAlgorithm::Maglev { .. } => LbPolicy::Maglev,
            },
            None => self.simple,
        }
    }
}

/// `consistentHash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistentHash {
    /// `None`: no hash key configured (valid in Istio); every request then
    /// hashes at random.
    pub key: Option<HashKey>,
    pub algorithm: HashAlgorithm,
}

/// What a consistent-hash load balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// `httpHeaderName` (stored lowercased).
    Header(String),
    /// `httpCookie`.
    Cookie(HttpCookie),
    /// `useSourceIp: true`.
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}

/// `consistentHash.httpCookie`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    /// Lifetime of a generated cookie; `0s` = session cookie. Istio requires it.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub ttl: Option<Duration>,
}

/// `ringHash` / `maglev` (ring hash when neither is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u64 },
}

/// Envoy's and Istio's default minimum ring size.
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Envoy's `max_ring_size` default (also the upper bound of `minimum_ring_size`).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's and Istio's default Maglev table size (prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Istio: "The table size must be prime number less than 5000011".
pub const MAGLEV_TABLE_SIZE_LIMIT: u64 = 5_000_011;

impl Default for HashAlgorithm {
    fn default() -> Self {
        HashAlgorithm::RingHash {
            minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE,
        }
    }
}

/// Slow start (`warmupDurationSecs`, or `warmup {duration, minimumPercent,
/// aggression}`): Envoy's `slow_start_config`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Warmup {
    #[serde(serialize_with = "serialize_duration")]
    pub duration: Duration,
    /// Weight floor in percent of the full weight (Envoy `min_weight_percent`, 10).
    pub minimum_percent: f64,
    /// Ramp shape; 1.0 = linear (Envoy `aggression`, 1.0).
    pub aggression: f64,
}

impl Warmup {
    pub const DEFAULT_MINIMUM_PERCENT: f64 = 10.0;
    pub const DEFAULT_AGGRESSION: f64 = 1.0;

    /// Linear warmup over `duration` with Envoy's defaults.
    pub fn linear(duration: Duration) -> Self {
        Warmup {
            duration,
            minimum_percent: Self::DEFAULT_MINIMUM_PERCENT,
            aggression: Self::DEFAULT_AGGRESSION,
        }
    }

    /// Weight factor (0, 1] of an endpoint that joined `age` ago:
    /// `max(minimum_percent / 100, time_factor^(1/aggression))` with
    /// `time_factor = max(age, 1 s) / duration`, and 1 once `age ≥ duration`
    /// (Envoy's slow start formula).
    pub fn weight(&self, age: Duration) -> f64 {
        if self.duration.is_zero() || age >= self.duration {
            return 1.0;
        }
        let time_factor =
            age.max(Duration::from_secs(1)).as_secs_f64() / self.duration.as_secs_f64();
        let ramp = if self.aggression == 1.0 || self.aggression <= 0.0 {
            time_factor
        } else {
            time_factor.powf(1.0 / self.aggression)
        };
        ramp.max(self.minimum_percent / 100.0).min(1.0)
    }
}

/// `connectionPool`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`. Zero values are stored as given; Istio treats 0 as
/// "use the default" for the limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TcpSettings {
    pub max_connections: Option<u32>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub max_connection_duration: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub idle_timeout: Option<Duration>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub idle_timeout: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
}

/// `outlierDetection`, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct OutlierDetection {
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u8>,
    pub min_health_percent: Option<u8>,
}

/// Outlier detection with every default applied (what the detector runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierSettings {
    /// 0 = this detector is off.
    pub consecutive_5xx: u32,
    /// 0 = this detector is off.
    pub consecutive_gateway: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub base_ejection_time: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u8,
    /// Panic threshold: below this healthy percentage ejections are ignored.
    pub min_health_percent: u8,
}

impl OutlierSettings {
    pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 10;
}

impl OutlierDetection {
    /// Apply Istio's translation and Envoy's defaults.
    pub fn settings(&self) -> OutlierSettings {
        let base = self
            .base_ejection_time
            .unwrap_or(OutlierSettings::DEFAULT_BASE_EJECTION_TIME);
        OutlierSettings {
            consecutive_5xx: self
                .consecutive_5xx_errors
                .unwrap_or(OutlierSettings::DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: self.consecutive_gateway_errors.unwrap_or(0),
            interval: self.interval.unwrap_or(OutlierSettings::DEFAULT_INTERVAL),
            base_ejection_time: base,
            max_ejection_time: OutlierSettings::DEFAULT_MAX_EJECTION_TIME.max(base),
            max_ejection_percent: match self.max_ejection_percent {
                Some(p) if p > 0 => p.min(100),
                _ => OutlierSettings::DEFAULT_MAX_EJECTION_PERCENT,
            },
            min_health_percent: self.min_health_percent.unwrap_or(0).min(100),
        }
    }
}

/// Circuit-breaker limits of one cluster (Envoy thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolLimits {
    /// `tcp.maxConnections`: concurrent upstream connections (tunnels).
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: concurrent requests.
    pub max_requests: u32,
    /// `http.maxRetries`: concurrent retries.
    pub max_retries: u32,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

/// The effective policy of one cluster (service, port, subset): Istio's
/// merged `TrafficPolicy` without port-level settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ClusterPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// How endpoints dialled directly are reached (never inside HBONE); `None`: plaintext.
    pub tls: Option<crate::upstream::ClientTls>,
}

impl ClusterPolicy {
    /// Istio's merge (`MergeSubsetTrafficPolicy` in
    /// `pilot/pkg/networking/util/util.go`, with `GetPortLevelTrafficPolicy`
    /// and `mergeTrafficPolicy`):
    ///
    /// 1. Rule level: a `portLevelSettings` entry for `port` replaces the
    ///    top-level policy *entirely* (omitted components fall back to
    ///    defaults, they are not inherited from the top level).
    /// 2. Subset level: the same port lookup inside the subset's policy.
    /// 3. Each component (`loadBalancer`, `connectionPool`,
    ///    `outlierDetection`, `tls`) is taken as a whole from the subset when the
    ///    subset sets it — or always, when the subset has a port-level entry
    ///    for `port` — otherwise from step 1. Components are never merged
    ///    field by field.
    pub fn merge(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> Self {
        let base = top.map(|t| port_level(t, port).0).unwrap_or_default();
        let Some(subset) = subset else {
            return base;
        };
        let (sub, has_port_level) = port_level(subset, port);
        let pick = |s: bool| s || has_port_level;
        ClusterPolicy {
            load_balancer: if pick(sub.load_balancer.is_some()) {
                sub.load_balancer
            } else {
                base.load_balancer
            },
            connection_pool: if pick(sub.connection_pool.is_some()) {
                sub.connection_pool
            } else {
                base.connection_pool
            },
            outlier_detection: if pick(sub.outlier_detection.is_some()) {
                sub.outlier_detection
            } else {
                base.outlier_detection
            },
            tls: if pick(sub.tls.is_some()) {
                sub.tls
            } else {
                base.tls
            },
        }
    }

    /// The TLS to originate to endpoints dialled directly (`SIMPLE` / `MUTUAL`).
    pub fn originate_tls(&self) -> Option<&crate::upstream::UpstreamTls> {
        self.tls.as_ref()?.originate()
    }

    /// A policy with only a `simple` load balancer.
    pub fn with_lb(policy: LbPolicy) -> Self {
        ClusterPolicy {
            load_balancer: Some(LoadBalancer::simple(policy)),
            ..Default::default()
        }
    }

    /// The load-balancing algorithm (`LeastRequest` when unset).
    pub fn lb_policy(&self) -> LbPolicy {
        self.load_balancer
            .as_ref()
            .map(LoadBalancer::policy)
            .unwrap_or_default()
    }

    pub fn consistent_hash(&self) -> Option<&ConsistentHash> {
        self.load_balancer.as_ref()?.consistent_hash.as_ref()
    }

    /// Slow start, only for ROUND_ROBIN and LEAST_REQUEST (as Envoy) and only
    /// with a non-zero duration.
    pub fn warmup(&self) -> Option<Warmup> {
        let lb = self.load_balancer.as_ref()?;
        match lb.policy() {
            LbPolicy::RoundRobin | LbPolicy::LeastRequest => {
                lb.warmup.filter(|w| !w.duration.is_zero())
            }
            _ => None,
        }
    }

    /// Circuit-breaker limits; unset or 0 = 2^32-1 (Istio applies only
    /// values > 0).
    pub fn limits(&self) -> PoolLimits {
        let mut l = PoolLimits::default();
        let set = |v: Option<u32>, slot: &mut u32| {
            if let Some(v) = v.filter(|v| *v > 0) {
                *slot = v;
            }
        };
        if let Some(cp) = &self.connection_pool {
            if let Some(tcp) = &cp.tcp {
                set(tcp.max_connections, &mut l.max_connections);
            }
            if let Some(http) = &cp.http {
                set(http.http1_max_pending_requests, &mut l.max_pending_requests);
                set(http.http2_max_requests, &mut l.max_requests);
                set(http.max_retries, &mut l.max_retries);
            }
        }
        l
    }

    fn tcp(&self) -> Option<&TcpSettings> {
        self.connection_pool.as_ref()?.tcp.as_ref()
    }

    fn http(&self) -> Option<&HttpSettings> {
        self.connection_pool.as_ref()?.http.as_ref()
    }

    /// `tcp.connectTimeout`; `None` = the proxy's own default (Istio: the
    /// mesh `connectTimeout`, 10 s).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.tcp()?.connect_timeout
    }

    /// Upstream idle timeout: `http.idleTimeout`, else `tcp.idleTimeout`
    /// (Istio's `applyConnectionPool`); `None` = 1 h default. `Some(0)` from
    /// `tcp.idleTimeout: 0s` disables it.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.http()
            .and_then(|h| h.idle_timeout)
            .or_else(|| self.tcp().and_then(|t| t.idle_timeout))
    }

    /// `http.maxRequestsPerConnection` (`None` or 0 = unlimited; 1 disables
    /// keep-alive).
    pub fn max_requests_per_connection(&self) -> Option<u32> {
        self.http()?.max_requests_per_connection.filter(|v| *v > 0)
    }

    /// `tcp.maxConnectionDuration`.
    pub fn max_connection_duration(&self) -> Option<Duration> {
        self.tcp()?.max_connection_duration
    }

    /// `http.maxConcurrentStreams` (per HTTP/2 connection; 0 = default).
    pub fn max_concurrent_streams(&self) -> Option<u32> {
        self.http()?.max_concurrent_streams.filter(|v| *v > 0)
    }

    /// Outlier detection with defaults applied; `None` when not configured
    /// (Envoy has no detector then).
    pub fn outlier(&self) -> Option<OutlierSettings> {
        self.outlier_detection
            .as_ref()
            .map(OutlierDetection::settings)
    }
}

/// The policy that applies to `port` (the port-level entry, if any, replacing
/// the whole policy) and whether a port-level entry was found.
fn port_level(policy: &TrafficPolicy, port: u16) -> (ClusterPolicy, bool) {
    match policy.port_level_settings.iter().find(|p| p.port == port) {
        Some(p) => (
            ClusterPolicy {
                load_balancer: p.load_balancer.clone(),
                connection_pool: p.connection_pool.clone(),
                outlier_detection: p.outlier_detection.clone(),
                tls: p.tls.clone(),
            },
            true,
        ),
        None => (
            ClusterPolicy {
                load_balancer: policy.load_balancer.clone(),
                connection_pool: policy.connection_pool.clone(),
                outlier_detection: policy.outlier_detection.clone(),
                tls: policy.tls.clone(),
            },
            false,
        ),
    }
}

mod shared;

#[cfg(test)]
mod tests;
