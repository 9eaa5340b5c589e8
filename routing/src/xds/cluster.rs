//! Envoy `Cluster` → the effective [`ClusterPolicy`] of one (service, port,
//! subset), undoing what istiod's `cluster_traffic_policy.go` does with a
//! DestinationRule:
//!
//! | Envoy | DestinationRule |
//! | --- | --- |
//! | `lb_policy` ROUND_ROBIN / RANDOM / LEAST_REQUEST (default) | `simple` |
//! | RING_HASH + `ring_hash_lb_config.minimum_ring_size` / MAGLEV + `table_size` | `consistentHash` (key from the routes' `hash_policy`) |
//! | ORIGINAL_DST + CLUSTER_PROVIDED | `PASSTHROUGH` |
//! | `slow_start_config` in round-robin / least-request config | `warmup` |
//! | `circuit_breakers.thresholds[0]` `max_connections` / `max_pending_requests` / `max_requests` / `max_retries` (2^32-1 = unset) | `tcp.maxConnections`, `http.http1MaxPendingRequests` / `http2MaxRequests` / `maxRetries` |
//! | `connect_timeout` (10 s = mesh default, unset) | `tcp.connectTimeout` |
//! | `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` `common_http_protocol_options` `idle_timeout` / `max_requests_per_connection` / `max_connection_duration` | `http.idleTimeout`, `http.maxRequestsPerConnection`, `tcp.maxConnectionDuration` |
//! | `transport_socket` `internal_upstream` wrapping `tls` (SNI, SAN matchers, `file-root:` / `file-cert:` secrets) or `raw_buffer` | `tls` SIMPLE / MUTUAL (ISTIO_MUTUAL, DISABLE: none) |
//! | `outlier_detection` `consecutive_5xx` (+ enforcing), `consecutive_gateway_failure`, `interval`, `base_ejection_time`, `max_ejection_percent`; `common_lb_config.healthy_panic_threshold` | `outlierDetection` (`minHealthPercent`) |

use super::names::ClusterName;
use super::{decode_any, duration, At, Diag};
use crate::model::LbPolicy;
use crate::model::StringMatch;
use crate::policy::{
    ClusterPolicy, ConnectionPool, ConsistentHash, HashAlgorithm, HttpSettings, LoadBalancer,
    OutlierDetection, TcpSettings, Warmup, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE,
};
use crate::upstream::{SanKind, SanMatcher, TlsMode, UpstreamTls};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, LbConfig, SlowStartConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use std::sync::Arc;
use std::time::Duration;
mod tls;
pub(crate) use tls::connect_originate_sans;
use tls::upstream_tls;

/// istiod's mesh default `connectTimeout`.
const MESH_DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// Cluster.DiscoveryType
const STATIC: i32 = 0;
const STRICT_DNS: i32 = 1;
const LOGICAL_DNS: i32 = 2;
const EDS: i32 = 3;
const ORIGINAL_DST: i32 = 4;
// Cluster.LbPolicy
const ROUND_ROBIN: i32 = 0;
const LEAST_REQUEST: i32 = 1;
const RING_HASH: i32 = 2;
const RANDOM: i32 = 3;
const MAGLEV: i32 = 5;
const CLUSTER_PROVIDED: i32 = 6;

/// The EDS assignment name of an EDS cluster (`service_name`, else the cluster name).
pub(crate) fn eds_service(c: &Cluster) -> Option<&str> {
    match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(EDS)) => Some(
            c.eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name),
        ),
        _ => None,
    }
}

/// [`eds_service`], `held` itself when that is the name (istiod names an assignment after its
/// cluster, and `held` is the cluster's name as the xDS client holds it).
pub(crate) fn eds_name(c: &Cluster, held: &Arc<str>) -> Option<Arc<str>> {
    eds_service(c).map(|name| held_as(held, name))
}

/// `shared` when it is `name` (the xDS client's string for the resource), else `name`'s own.
pub(crate) fn held_as(shared: &Arc<str>, name: &str) -> Arc<str> {
    if **shared == *name {
        shared.clone()
    } else {
        name.into()
    }
}

/// How a service cluster gets its endpoints.
#[derive(Debug, Clone)]
pub(crate) enum EndpointSource {
    /// From the named EDS assignment (one string with its piece's [`eds`](super::pieces::ClusterPiece::eds)).
    Eds(Arc<str>),
    /// Inline `load_assignment` (STATIC), boxed: most clusters are EDS, and inline it would make
    /// each cluster's piece 152 bytes larger.
    Inline(Option<Box<ClusterLoadAssignment>>),
    /// Inline `load_assignment` of hostnames, resolved by the caller (STRICT_DNS / LOGICAL_DNS)
    /// (boxed with its settings: a source is 24 bytes where the settings inline made it 40).
    Dns(Box<DnsSource>),
    /// ORIGINAL_DST (passthrough): none.
    None,
}

/// A DNS cluster's resolution settings and the hostnames it resolves.
#[derive(Debug, Clone)]
pub(crate) struct DnsSource {
    pub(crate) settings: super::dns::DnsCluster,
    pub(crate) load_assignment: Option<ClusterLoadAssignment>,
}

/// A translated `inbound-vip` cluster.
#[derive(Debug, Clone)]
pub(crate) struct ServiceCluster {
    pub(crate) name: ClusterName,
    /// Shared with the pieces of clusters that have an equal one ([`ClusterPolicy::shared`]:
    /// istiod gives a waypoint's clusters one policy, 448 bytes each inline).
    pub(crate) policy: Arc<ClusterPolicy>,
    pub(crate) source: EndpointSource,
    /// The protocol options ask for HTTP/2 upstream.
    pub(crate) http2: bool,
    /// `istio.services[0].namespace` of the cluster metadata.
    pub(crate) namespace: Option<Box<str>>,
    /// `common_lb_config.locality_weighted_lb_config` is set (locality weights count).
    pub(crate) locality_weighted: bool,
}

/// Translate an `inbound-vip` cluster; `None` when rejected.
pub(crate) fn service_cluster(
    c: &Cluster,
    name: ClusterName,
    diag: &mut Diag,
) -> Option<ServiceCluster> {
    let at = At {
        type_url: super::CLUSTER_TYPE,
        name: &c.name,
    };
    let before = diag.rejections.len();
    let source = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(EDS)) => {
            EndpointSource::Eds(eds_name(c, name.name()).unwrap_or_else(|| name.name().clone()))
        }
        Some(ClusterDiscoveryType::Type(STATIC)) => inline(c),
        Some(ClusterDiscoveryType::Type(t @ (STRICT_DNS | LOGICAL_DNS))) => {
            EndpointSource::Dns(Box::new(DnsSource {
                settings: super::dns::settings(c, *t == LOGICAL_DNS, at, diag),
                load_assignment: c.load_assignment.clone(),
            }))
        }
        Some(ClusterDiscoveryType::Type(ORIGINAL_DST)) => EndpointSource::None,
        Some(ClusterDiscoveryType::Type(t)) => {
            at.warn(
                diag,
                format!("discovery type {t} is not supported; no endpoints"),
            );
            EndpointSource::None
        }
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            at.warn(
                diag,
                format!(
                    "custom cluster type {} is not supported; no endpoints",
                    t.name
                ),
            );
            EndpointSource::None
        }
        None => inline(c),
    };
    let passthrough = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(ORIGINAL_DST))
    );
    let load_balancer = load_balancer(c, passthrough, at, diag);
    let connection_pool = connection_pool(c, at, diag);
    let outlier_detection = outlier_detection(c, at, diag);
    let tls = upstream_tls(c, at, diag);
    if c.load_balancing_policy.is_some() {
        at.warn(
            diag,
            "load_balancing_policy (typed LB extensions) is not supported; lb_policy used",
        );
    }
    if c.lb_subset_config.is_some() {
        at.warn(diag, "lb_subset_config is not supported; ignored");
    }
    if !c.health_checks.is_empty() {
        at.warn(diag, "active health checks are not supported; ignored");
    }
    if diag.rejections.len() > before {
        return None;
    }
    Some(ServiceCluster {
        name,
        policy: ClusterPolicy::shared(ClusterPolicy {
            load_balancer,
            connection_pool,
            outlier_detection,
            tls: tls.map(crate::upstream::ClientTls::Originate),
        }),
        http2: explicit_http2(c),
        source,
        namespace: service_namespace(c),
        locality_weighted: locality_weighted(c),
    })
}

/// istiod sets it with a locality setting in effect (always in 1.22/1.23; from 1.24 only with
/// `distribute`, or failover with outlier detection; `cluster_traffic_policy.go`
/// `applyLocalityLoadBalancer`).
fn locality_weighted(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
    matches!(
        c.common_lb_config
            .as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref()),
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    )
}

/// A STATIC cluster's source: its inline assignment.
fn inline(c: &Cluster) -> EndpointSource {
    EndpointSource::Inline(c.load_assignment.clone().map(Box::new))
}

fn service_namespace(c: &Cluster) -> Option<Box<str>> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let istio = c.metadata.as_ref()?.filter_metadata.get("istio")?;
    let Some(Kind::ListValue(list)) = istio.fields.get("services")?.kind.as_ref() else {
        return None;
    };
    let Some(Kind::StructValue(svc)) = list.values.first()?.kind.as_ref() else {
        return None;
    };
    match svc.fields.get("namespace")?.kind.as_ref()? {
        Kind::StringValue(ns) => Some(ns.as_str().into()),
        _ => None,
    }
}

fn warmup(s: &Option<SlowStartConfig>) -> Option<Warmup> {
    let s = s.as_ref()?;
    let d = s.slow_start_window.as_ref().and_then(duration)?;
    Some(Warmup {
        duration: d,
        minimum_percent: s
            .min_weight_percent
            .as_ref()
            .map_or(Warmup::DEFAULT_MINIMUM_PERCENT, |p| p.value),
        aggression: s
            .aggression
            .as_ref()
            .map_or(Warmup::DEFAULT_AGGRESSION, |a| a.default_value),
    })
}

fn load_balancer(
    c: &Cluster,
    passthrough: bool,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<LoadBalancer> {
    if passthrough {
        return Some(LoadBalancer::simple(LbPolicy::Passthrough));
    }
    let mut lb = LoadBalancer::default();
    match c.lb_policy {
        ROUND_ROBIN => lb.simple = LbPolicy::RoundRobin,
        LEAST_REQUEST => lb.simple = LbPolicy::LeastRequest,
        RANDOM => lb.simple = LbPolicy::Random,
        RING_HASH => {
            let size = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => r
                    .minimum_ring_size
                    .as_ref()
                    .map_or(DEFAULT_MINIMUM_RING_SIZE, |v| v.value),
                _ => DEFAULT_MINIMUM_RING_SIZE,
            };
            lb.consistent_hash = Some(ConsistentHash {
                key: None,
                algorithm: HashAlgorithm::RingHash {
                    minimum_ring_size: size.clamp(1, crate::policy::MAX_RING_SIZE),
                },
            });
        }
        MAGLEV => {
            let size = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m
                    .table_size
                    .as_ref()
                    .map_or(DEFAULT_MAGLEV_TABLE_SIZE, |v| v.value),
                _ => DEFAULT_MAGLEV_TABLE_SIZE,
            };
            if size == 0 || size >= crate::policy::MAGLEV_TABLE_SIZE_LIMIT {
                at.reject(diag, format!("maglev table_size {size} out of range"));
                return None;
            }
            lb.consistent_hash = Some(ConsistentHash {
                key: None,
                algorithm: HashAlgorithm::Maglev { table_size: size },
            });
        }
        CLUSTER_PROVIDED => lb.simple = LbPolicy::Passthrough,
        other => {
            at.warn(
                diag,
                format!("lb_policy {other} is not supported; LEAST_REQUEST used"),
            );
        }
    }
    lb.warmup = match &c.lb_config {
        Some(LbConfig::RoundRobinLbConfig(r)) => warmup(&r.slow_start_config),
        Some(LbConfig::LeastRequestLbConfig(l)) => {
            if l.choice_count.as_ref().is_some_and(|n| n.value != 2)
                || l.active_request_bias.is_some()
            {
                at.warn(
                    diag,
                    "least_request choice_count / active_request_bias are not supported; ignored",
                );
            }
            warmup(&l.slow_start_config)
        }
        _ => None,
    };
    // Istio's default (LEAST_REQUEST, nothing else) = no loadBalancer setting.
    (lb != LoadBalancer::default()).then_some(lb)
}

fn limit(v: &Option<envoy_types::pb::google::protobuf::UInt32Value>) -> Option<u32> {
    v.as_ref().map(|v| v.value).filter(|v| *v != u32::MAX)
}

fn connection_pool(c: &Cluster, at: At<'_>, diag: &mut Diag) -> Option<ConnectionPool> {
    let mut tcp = TcpSettings::default();
    let mut http = HttpSettings::default();
    if let Some(cb) = &c.circuit_breakers {
        // Default priority (0) only; istiod sets exactly one threshold.
        if let Some(t) = cb.thresholds.iter().find(|t| t.priority == 0) {
            tcp.max_connections = limit(&t.max_connections);
            http.http1_max_pending_requests = limit(&t.max_pending_requests);
            http.http2_max_requests = limit(&t.max_requests);
            http.max_retries = limit(&t.max_retries);
            if t.retry_budget.is_some() {
                at.warn(
                    diag,
                    "circuit breaker retry_budget is not supported; ignored",
                );
            }
        }
        if !cb.per_host_thresholds.is_empty() {
            at.warn(diag, "per_host_thresholds are not supported; ignored");
        }
    }
    tcp.connect_timeout = c
        .connect_timeout
        .as_ref()
        .and_then(duration)
        .filter(|d| *d != MESH_DEFAULT_CONNECT_TIMEOUT);
    for (key, any) in &c.typed_extension_protocol_options {
        match decode_any::<HttpProtocolOptions>(any) {
            Some(Ok(o)) => {
                if let Some(common) = &o.common_http_protocol_options {
                    http.idle_timeout = common.idle_timeout.as_ref().and_then(duration);
                    http.max_requests_per_connection =
                        common.max_requests_per_connection.as_ref().map(|v| v.value);
                    tcp.max_connection_duration =
                        common.max_connection_duration.as_ref().and_then(duration);
                }
            }
            Some(Err(e)) => at.reject(diag, format!("typed_extension_protocol_options {key}: {e}")),
            None => at.warn(
                diag,
                format!(
                    "typed_extension_protocol_options {key} ({}) is not supported; ignored",
                    any.type_url
                ),
            ),
        }
    }
    let tcp = (tcp != TcpSettings::default()).then_some(tcp);
    let http = (http != HttpSettings::default()).then_some(http);
    (tcp.is_some() || http.is_some()).then_some(ConnectionPool { tcp, http })
}

fn outlier_detection(c: &Cluster, at: At<'_>, diag: &mut Diag) -> Option<OutlierDetection> {
    let od = c.outlier_detection.as_ref()?;
    let v =
        |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>| x.as_ref().map(|v| v.value);
    // Envoy: consecutive 5xx enforced at 100 % unless enforcing says 0;
    // gateway failures enforced only when enforcing > 0 (default 0).
    let c5 = match v(&od.enforcing_consecutive_5xx) {
        Some(0) => Some(0),
        _ => v(&od.consecutive_5xx),
    };
    let gw = match v(&od.enforcing_consecutive_gateway_failure) {
        Some(e) if e > 0 => Some(v(&od.consecutive_gateway_failure).unwrap_or(5)),
        _ => None,
    };
    // Envoy enforces success-rate ejection at 100 % unless told 0 (istiod does).
    if v(&od.enforcing_success_rate).unwrap_or(100) > 0 {
        at.warn(
            diag,
            "success-rate outlier detection (Envoy default when not disabled) is not supported",
        );
    }
    if v(&od.enforcing_failure_percentage).unwrap_or(0) > 0 || od.split_external_local_origin_errors
    {
        at.warn(
            diag,
            "failure-percentage / local-origin outlier detection is not supported; ignored",
        );
    }
    let min_health = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map(|p| p.value.clamp(0.0, 100.0) as u8);
    Some(OutlierDetection {
        consecutive_5xx_errors: c5,
        consecutive_gateway_errors: gw,
        interval: od.interval.as_ref().and_then(duration),
        base_ejection_time: od.base_ejection_time.as_ref().and_then(duration),
        max_ejection_percent: v(&od.max_ejection_percent).map(|p| p.min(100) as u8),
        // Envoy's default panic threshold is 50 %; istiod always sets it.
        min_health_percent: Some(min_health.unwrap_or(50)),
    })
}

/// True when the cluster's protocol options ask for HTTP/2 upstream (`explicit_http_config`
/// `http2_protocol_options`, istiod's `setUpstreamProtocol` / `h2UpgradePolicy: UPGRADE`).
pub(crate) fn explicit_http2(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
    };
    c.typed_extension_protocol_options.values().any(|any| {
        matches!(
            decode_any::<HttpProtocolOptions>(any),
            Some(Ok(HttpProtocolOptions {
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)),
                ..
            })) if matches!(e.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
        )
    })
}
