//! Istio's standard metrics (reporter `waypoint`) and the proxy's own health metrics, in one
//! prometheus-client registry served on `/stats/prometheus`.
//!
//! Label names, their order and their values follow Istio's Envoy waypoint (istio/proxy
//! `istio_stats.cc`, reporter `SERVER_GATEWAY`; see `labels.rs` and the conformance test against
//! `waypoint/tests/fixtures/istio_standard_metrics_1_27.json`): `unknown` when a value cannot be
//! known, `latest` for a known workload's unset canonical revision, `-` for no response flags. No
//! label carries a request id, a path or any other per-request value, so cardinality is bounded
//! by workloads × codes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use routing::Endpoint;

use crate::dataplane::tunnel::TunnelInfo;

mod handles;
mod histogram;
mod labels;
pub mod process;

use handles::{key_hash, CachedKey, RequestHandles, HANDLES};
pub use handles::{RequestKey, HANDLE_CACHE_ENTRIES};
pub use histogram::AtomicHistogram;
pub(crate) use labels::label;
use labels::{flags_label, grpc_status_label};
pub use labels::{DestinationLabels, RequestLabels, SourceLabels, TcpLabels};

/// Envoy's default histogram buckets (`HistogramSettingsImpl::defaultBuckets`), which Istio's
/// bootstrap leaves on every `istio_*` histogram (`histogram_bucket_settings` is only written
/// for a `sidecar.istio.io/statsHistogramBuckets` annotation).
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

pub const UNKNOWN: &str = "unknown";

/// One finished HTTP request, as the metrics see it.
pub struct RequestRecord<'a> {
    pub source: SourceLabels,
    pub destination: DestinationLabels,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_status: Option<&'a str>,
    pub response_flags: &'a str,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct IstioMetrics {
    /// Tells the instances apart in the per-thread handle cache.
    id: u64,
    /// Label sets built on a handle-cache miss (for tests and the measurements).
    label_builds: AtomicU64,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, AtomicHistogram>,
    request_bytes: Family<RequestLabels, AtomicHistogram>,
    response_bytes: Family<RequestLabels, AtomicHistogram>,
    request_messages: Family<RequestLabels, Counter>,
    response_messages: Family<RequestLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
}

fn istio_histogram() -> AtomicHistogram {
    AtomicHistogram::new(ISTIO_BUCKETS)
}

pub const REPORTER: &str = "waypoint";
pub const MUTUAL_TLS: &str = "mutual_tls";

impl Default for IstioMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IstioMetrics {
    pub fn new() -> Self {
        Self {
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            label_builds: AtomicU64::new(0),
            requests: Family::default(),
            duration: Family::new_with_constructor(istio_histogram),
            request_bytes: Family::new_with_constructor(istio_histogram),
            response_bytes: Family::new_with_constructor(istio_histogram),
            request_messages: Family::default(),
            response_messages: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_requests",
            "Requests handled by the waypoint",
            self.requests.clone(),
        );
        let histograms = [
            (
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds",
                &self.duration,
            ),
            (
                "istio_request_bytes",
                "Request body size in bytes",
                &self.request_bytes,
            ),
            (
                "istio_response_bytes",
                "Response body size in bytes",
                &self.response_bytes,
            ),
        ];
        for (name, help, family) in histograms {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "istio_request_messages",
            "gRPC messages the client sent (Istio's, as Envoy's gRPC frame counting feeds it)",
            self.request_messages.clone(),
        );
        registry.register(
            "istio_response_messages",
            "gRPC messages the server sent",
            self.response_messages.clone(),
        );
        let tcp = [
            (
                "istio_tcp_connections_opened",
                "TCP connections opened through the waypoint",
                &self.tcp_opened,
            ),
            (
                "istio_tcp_connections_closed",
                "TCP connections closed through the waypoint",
                &self.tcp_closed,
            ),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent to the client on TCP connections",
                &self.tcp_sent,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the client on TCP connections",
                &self.tcp_received,
            ),
        ];
        for (name, help, family) in tcp {
            registry.register(name, help, family.clone());
        }
    }

    pub fn record_request(&self, r: RequestRecord<'_>) {
        let labels = RequestLabels {
            reporter: REPORTER,
            source: r.source,
            destination: r.destination,
            request_protocol: if r.grpc { "grpc" } else { "http" },
            response_code: label(&r.response_code.to_string()),
            grpc_response_status: grpc_status_label(r.grpc, r.grpc_status, r.response_code),
            response_flags: flags_label(r.response_flags),
            connection_security_policy: MUTUAL_TLS,
        };
        self.handles(&labels)
            .record(r.duration_ms, r.request_bytes, r.response_bytes, None);
    }

    fn handles(&self, labels: &RequestLabels) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
            messages: (labels.request_protocol == "grpc").then(|| {
                (
                    self.request_messages.get_or_create(labels).clone(),
                    self.response_messages.get_or_create(labels).clone(),
                )
            }),
        }
    }

    /// Records one finished request, like [`Self::record_request`], but builds its label set
    /// (and looks up its four series) only the first time this thread sees `key`: after that,
    /// one hash of a few fields, a comparison, and four atomic updates. No lock is taken.
    pub fn record_request_key(
        &self,
        key: RequestKey<'_>,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
        grpc_messages: Option<(u64, u64)>,
    ) {
        let hash = key_hash(self.id, &key);
        let hit = HANDLES.with(|cache| {
            let cache = cache.borrow();
            let found = cache
                .get(&hash)?
                .iter()
                .find(|(k, _)| k.matches(self.id, &key))?;
            found
                .1
                .record(duration_ms, request_bytes, response_bytes, grpc_messages);
            Some(())
        });
        if hit.is_some() {
            return;
        }
        self.label_builds.fetch_add(1, Ordering::Relaxed);
        let mut destination =
            DestinationLabels::new(key.service, key.endpoint.map(|e| &**e), key.cluster_id);
        if let Some(p) = key.principal.filter(|p| !p.is_empty()) {
            destination.destination_principal = label(p);
        }
        let labels = RequestLabels {
            reporter: REPORTER,
            source: key.tunnel.map_or_else(SourceLabels::unknown, |t| {
                // Set by the caller with the request's snapshot (`TunnelInfo::source_labels`).
                t.metric_labels
                    .get()
                    .cloned()
                    .unwrap_or_else(|| SourceLabels::from_tunnel(Some(t), None))
            }),
            destination,
            request_protocol: if key.grpc { "grpc" } else { "http" },
            response_code: label(&key.response_code.to_string()),
            grpc_response_status: grpc_status_label(key.grpc, key.grpc_status, key.response_code),
            response_flags: flags_label(key.response_flags),
            connection_security_policy: MUTUAL_TLS,
        };
        let handles = self.handles(&labels);
        handles.record(duration_ms, request_bytes, response_bytes, grpc_messages);
        HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= HANDLE_CACHE_ENTRIES {
                cache.clear();
            }
            cache
                .entry(hash)
                .or_default()
                .push((CachedKey::new(self.id, &key), handles));
        });
    }

    /// Label sets built so far on handle-cache misses.
    pub fn label_builds(&self) -> u64 {
        self.label_builds.load(Ordering::Relaxed)
    }

    pub fn tcp_labels(
        source: SourceLabels,
        destination: DestinationLabels,
        flags: &str,
    ) -> TcpLabels {
        TcpLabels {
            reporter: REPORTER,
            source,
            destination,
            request_protocol: "tcp",
            response_flags: flags_label(flags),
            connection_security_policy: MUTUAL_TLS,
        }
    }

    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// A TCP connection ended: `sent` bytes went to the client, `received` came from it.
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }
}

/// The registry and everything registered in it.
pub struct Metrics {
    pub istio: IstioMetrics,
    pub authz: AuthzMetrics,
    registry: Registry,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `allow`, `deny` or `custom_deny` (a CUSTOM rule matched; the authorizer is not called).
    pub action: &'static str,
    /// `NS/NAME` of the deciding policy, `none` (no ALLOW matched) or `-`.
    pub policy: String,
    /// `http` or `tcp`.
    pub protocol: &'static str,
}

/// Authorization decisions: enforced ones, and what dry-run policies would have decided.
#[derive(Debug, Default)]
pub struct AuthzMetrics {
    pub decisions: Family<AuthzLabels, Counter>,
    pub dry_run: Family<AuthzLabels, Counter>,
}

impl AuthzMetrics {
    /// Count `decision` (made for a destination that has policies).
    pub fn record(&self, decision: &routing::authz::Decision, http: bool) {
        let protocol = if http { "http" } else { "tcp" };
        let labels = |v: &routing::authz::Verdict| AuthzLabels {
            action: v.action(),
            policy: v.policy().to_string(),
            protocol,
        };
        self.decisions
            .get_or_create(&labels(&decision.verdict))
            .inc();
        if let Some(v) = &decision.dry_run {
            self.dry_run.get_or_create(&labels(v)).inc();
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "waypoint_authz_decisions",
            "Authorization decisions by action and deciding policy",
            self.decisions.clone(),
        );
        registry.register(
            "waypoint_authz_dry_run_decisions",
            "What dry-run (istio.io/dry-run) policies would have decided",
            self.dry_run.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Metrics {
    /// `collectors` add metrics computed at scrape time (proxy health, split audit).
    pub fn new(collectors: Vec<Box<dyn prometheus_client::collector::Collector>>) -> Self {
        let mut registry = Registry::default();
        let istio = IstioMetrics::new();
        istio.register(&mut registry);
        let authz = AuthzMetrics::default();
        authz.register(&mut registry);
        for c in collectors {
            registry.register_collector(c);
        }
        Self {
            istio,
            authz,
            registry,
        }
    }

    /// The text exposition (OpenMetrics text, which Prometheus scrapes natively).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod istio_conformance;
#[cfg(test)]
mod tests;
