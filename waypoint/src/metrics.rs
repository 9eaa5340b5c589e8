//! Istio's standard metrics (reporter `waypoint`) and the proxy's own health metrics, in one
//! prometheus-client registry served on `/stats/prometheus`.
//!
//! Label values follow Istio's conventions: `unknown` when a value cannot be known, `latest` for
//! a canonical revision that is not set, `-` for no response flags. No label carries a request
//! id, a path or any other per-request value, so cardinality is bounded by workloads × codes.

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

use crate::tunnel::TunnelInfo;

/// Istio's histogram buckets (its bootstrap applies them to every `istio_*` histogram).
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

pub const UNKNOWN: &str = "unknown";

type Label = Arc<str>;

pub(crate) fn label(v: &str) -> Label {
    Arc::from(v)
}

fn or_unknown(v: Option<&str>) -> Label {
    match v {
        Some(v) if !v.is_empty() => label(v),
        _ => label(UNKNOWN),
    }
}

/// Who sent the request: the tunnel's SPIFFE id and the `baggage` ztunnel attaches.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source_workload: Label,
    pub source_workload_namespace: Label,
    pub source_principal: Label,
    pub source_app: Label,
    pub source_version: Label,
    pub source_cluster: Label,
    pub source_canonical_service: Label,
    pub source_canonical_revision: Label,
}

impl SourceLabels {
    pub fn unknown() -> Self {
        Self::from_tunnel(None)
    }

    pub fn from_tunnel(tunnel: Option<&TunnelInfo>) -> Self {
        let bag = |k: &str| tunnel.and_then(|t| t.baggage_value(k));
        // ztunnel names the workload by its kind: k8s.deployment.name, k8s.statefulset.name, …
        let workload = [
            "k8s.deployment.name",
            "k8s.statefulset.name",
            "k8s.daemonset.name",
            "k8s.job.name",
            "k8s.cronjob.name",
            "k8s.replicaset.name",
            "k8s.pod.name",
            "k8s.workload.name",
        ]
        .iter()
        .find_map(|k| bag(k));
        let id = tunnel.map(|t| &t.source_identity);
        let app = bag("service.name").or(bag("app.kubernetes.io/name"));
        let version = bag("service.version");
        Self {
            source_workload: or_unknown(workload),
            source_workload_namespace: or_unknown(
                bag("k8s.namespace.name").or(id.map(|i| i.namespace.as_str())),
            ),
            source_principal: or_unknown(id.map(|i| i.to_string()).as_deref()),
            source_app: or_unknown(app),
            source_version: or_unknown(version),
            source_cluster: or_unknown(bag("k8s.cluster.name")),
            source_canonical_service: or_unknown(app.or(workload)),
            source_canonical_revision: label(version.unwrap_or("latest")),
        }
    }
}

/// Where the request went: the service it addressed and the endpoint that served it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination_workload: Label,
    pub destination_workload_namespace: Label,
    pub destination_principal: Label,
    pub destination_app: Label,
    pub destination_version: Label,
    pub destination_service: Label,
    pub destination_service_name: Label,
    pub destination_service_namespace: Label,
    pub destination_cluster: Label,
    pub destination_canonical_service: Label,
    pub destination_canonical_revision: Label,
}

impl DestinationLabels {
    /// `service` is (hostname, namespace) of the addressed service.
    pub fn new(
        service: Option<(&str, &str)>,
        endpoint: Option<&Endpoint>,
        cluster_id: &str,
    ) -> Self {
        let l = |k: &str| endpoint.and_then(|e| e.labels.get(k)).map(String::as_str);
        let workload = l("service.istio.io/workload-name")
            .or(endpoint.map(|e| e.name.as_str()))
            .filter(|w| !w.is_empty());
        let app = l("app").or(l("app.kubernetes.io/name"));
        let version = l("version").or(l("app.kubernetes.io/version"));
        let canonical = l("service.istio.io/canonical-name").or(app).or(workload);
        let revision = l("service.istio.io/canonical-revision")
            .or(version)
            .unwrap_or("latest");
        Self {
            destination_workload: or_unknown(workload),
            destination_workload_namespace: or_unknown(endpoint.map(|e| e.namespace.as_str())),
            destination_principal: or_unknown(endpoint.map(|e| e.identity.as_str())),
            destination_app: or_unknown(app),
            destination_version: or_unknown(version),
            destination_service: or_unknown(service.map(|(host, _)| host)),
            destination_service_name: or_unknown(
                service.and_then(|(host, _)| host.split('.').next()),
            ),
            destination_service_namespace: or_unknown(service.map(|(_, ns)| ns)),
            destination_cluster: if endpoint.is_some() {
                label(cluster_id)
            } else {
                label(UNKNOWN)
            },
            destination_canonical_service: or_unknown(canonical),
            destination_canonical_revision: label(if endpoint.is_some() {
                revision
            } else {
                "latest"
            }),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    #[prometheus(flatten)]
    pub source: SourceLabels,
    #[prometheus(flatten)]
    pub destination: DestinationLabels,
    pub request_protocol: &'static str,
    pub response_code: Label,
    pub grpc_response_status: Label,
    pub response_flags: Label,
    pub connection_security_policy: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    #[prometheus(flatten)]
    pub source: SourceLabels,
    #[prometheus(flatten)]
    pub destination: DestinationLabels,
    pub request_protocol: &'static str,
    pub response_flags: Label,
    pub connection_security_policy: &'static str,
}

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

/// A classic histogram whose observations take no lock: one atomic add on the bucket hit and
/// one compare-and-swap on the sum (prometheus-client's `Histogram` takes a mutex per observe).
/// Encodes exactly as prometheus-client's histogram does (same buckets, same `+Inf`). The
/// count is the sum of the buckets, so a scrape never shows a count the buckets disagree with.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds, ascending, the last one `+Inf`.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// `f64` bits of the sum of observations.
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// Non-finite bounds are dropped and `+Inf` is added, as prometheus-client does.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramCells {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, v: f64) {
        let cells = &*self.0;
        let last = cells.bounds.len() - 1;
        let i = if v.is_nan() {
            last
        } else {
            cells.bounds.iter().position(|b| *b >= v).unwrap_or(last)
        };
        cells.counts[i].fetch_add(1, Ordering::Relaxed);
        let _always_some = cells
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// (sum, count, per-bucket counts).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let cells = &*self.0;
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .zip(cells.counts.iter())
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(cells.sum.load(Ordering::Relaxed));
        (sum, count, buckets)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The four series one request updates, looked up once per label set.
#[derive(Debug, Clone)]
struct RequestHandles {
    requests: Counter,
    duration: AtomicHistogram,
    request_bytes: AtomicHistogram,
    response_bytes: AtomicHistogram,
}

impl RequestHandles {
    fn record(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

/// What a request's label set is made of, by reference: the tunnel (its source labels), the
/// service and endpoint (the destination labels), and the per-response values.
#[derive(Debug, Clone, Copy)]
pub struct RequestKey<'a> {
    pub tunnel: Option<&'a Arc<TunnelInfo>>,
    /// (hostname, namespace) of the addressed service.
    pub service: Option<(&'a str, &'a str)>,
    pub endpoint: Option<&'a Arc<Endpoint>>,
    /// The identity the upstream proved, when known (beats the endpoint's known identity).
    pub principal: Option<&'a str>,
    pub cluster_id: &'a str,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_status: Option<&'a str>,
    pub response_flags: &'a str,
}

/// A [`RequestKey`] kept in the per-thread cache. The tunnel and the endpoint are compared by
/// address; the `Weak`s keep their allocations, so an address is never reused for another
/// tunnel or endpoint while its entry lives.
struct CachedKey {
    metrics: u64,
    tunnel: Option<Weak<TunnelInfo>>,
    endpoint: Option<Weak<Endpoint>>,
    service: Option<(Box<str>, Box<str>)>,
    principal: Option<Box<str>>,
    cluster_id: Box<str>,
    grpc: bool,
    response_code: u16,
    grpc_status: Option<Box<str>>,
    response_flags: Box<str>,
}

impl CachedKey {
    fn new(metrics: u64, k: &RequestKey<'_>) -> Self {
        Self {
            metrics,
            tunnel: k.tunnel.map(Arc::downgrade),
            endpoint: k.endpoint.map(Arc::downgrade),
            service: k.service.map(|(h, n)| (h.into(), n.into())),
            principal: k.principal.map(Into::into),
            cluster_id: k.cluster_id.into(),
            grpc: k.grpc,
            response_code: k.response_code,
            grpc_status: k.grpc_status.map(Into::into),
            response_flags: k.response_flags.into(),
        }
    }

    fn matches(&self, metrics: u64, k: &RequestKey<'_>) -> bool {
        fn same<T>(weak: &Option<Weak<T>>, arc: Option<&Arc<T>>) -> bool {
            match (weak, arc) {
                (None, None) => true,
                (Some(w), Some(a)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(a)),
                _ => false,
            }
        }
        self.metrics == metrics
            && self.response_code == k.response_code
            && self.grpc == k.grpc
            && same(&self.tunnel, k.tunnel)
            && same(&self.endpoint, k.endpoint)
            && *self.response_flags == *k.response_flags
            && self.grpc_status.as_deref() == k.grpc_status
            && self.principal.as_deref() == k.principal
            && self.service.as_ref().map(|(h, n)| (&**h, &**n)) == k.service
            && *self.cluster_id == *k.cluster_id
    }
}

fn key_hash(metrics: u64, k: &RequestKey<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    metrics.hash(&mut h);
    k.tunnel.map(Arc::as_ptr).hash(&mut h);
    k.endpoint.map(Arc::as_ptr).hash(&mut h);
    k.response_code.hash(&mut h);
    k.response_flags.hash(&mut h);
    k.grpc_status.hash(&mut h);
    k.service.hash(&mut h);
    h.finish()
}

/// Label sets a thread remembers before it starts over (each entry: a few hundred bytes).
pub const HANDLE_CACHE_ENTRIES: usize = 4096;

type HandleCache = HashMap<u64, Vec<(CachedKey, RequestHandles)>>;

thread_local! {
    static HANDLES: RefCell<HandleCache> = RefCell::new(HashMap::new());
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
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
}

fn istio_histogram() -> AtomicHistogram {
    AtomicHistogram::new(ISTIO_BUCKETS)
}

fn flags_label(flags: &str) -> Label {
    label(if flags.is_empty() { "-" } else { flags })
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
            grpc_response_status: label(r.grpc_status.unwrap_or("")),
            response_flags: flags_label(r.response_flags),
            connection_security_policy: MUTUAL_TLS,
        };
        self.handles(&labels)
            .record(r.duration_ms, r.request_bytes, r.response_bytes);
    }

    fn handles(&self, labels: &RequestLabels) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
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
    ) {
        let hash = key_hash(self.id, &key);
        let hit = HANDLES.with(|cache| {
            let cache = cache.borrow();
            let found = cache
                .get(&hash)?
                .iter()
                .find(|(k, _)| k.matches(self.id, &key))?;
            found.1.record(duration_ms, request_bytes, response_bytes);
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
            source: key
                .tunnel
                .map_or_else(SourceLabels::unknown, |t| t.source_labels().clone()),
            destination,
            request_protocol: if key.grpc { "grpc" } else { "http" },
            response_code: label(&key.response_code.to_string()),
            grpc_response_status: label(key.grpc_status.unwrap_or("")),
            response_flags: flags_label(key.response_flags),
            connection_security_policy: MUTUAL_TLS,
        };
        let handles = self.handles(&labels);
        handles.record(duration_ms, request_bytes, response_bytes);
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
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tunnel(baggage: Option<&str>) -> TunnelInfo {
        TunnelInfo {
            peer: "10.0.0.1:1234".parse().unwrap(),
            source_addr: "10.0.0.2:4000".parse().unwrap(),
            claimed_source: None,
            source_identity: "spiffe://cluster.local/ns/shop/sa/frontend"
                .parse()
                .unwrap(),
            original_dst: "10.0.0.10:9080".parse().unwrap(),
            local: "10.0.0.3:15008".parse().unwrap(),
            forwarded_host: None,
            baggage: baggage.map(String::from),
            traceparent: None,
            metric_labels: Default::default(),
            principal: Default::default(),
        }
    }

    #[test]
    fn source_labels_come_from_identity_and_baggage() {
        let t = tunnel(Some(
            "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=frontend-v2,service.name=frontend,service.version=v2",
        ));
        let s = SourceLabels::from_tunnel(Some(&t));
        assert_eq!(&*s.source_workload, "frontend-v2");
        assert_eq!(&*s.source_workload_namespace, "shop");
        assert_eq!(
            &*s.source_principal,
            "spiffe://cluster.local/ns/shop/sa/frontend"
        );
        assert_eq!(&*s.source_app, "frontend");
        assert_eq!(&*s.source_version, "v2");
        assert_eq!(&*s.source_cluster, "east");
        assert_eq!(&*s.source_canonical_revision, "v2");

        let bare = SourceLabels::from_tunnel(Some(&tunnel(None)));
        assert_eq!(&*bare.source_workload, "unknown");
        assert_eq!(
            &*bare.source_workload_namespace, "shop",
            "from the SPIFFE id"
        );
        assert_eq!(&*bare.source_canonical_revision, "latest");
        assert_eq!(&*SourceLabels::unknown().source_principal, "unknown");
    }

    #[test]
    fn destination_labels_from_endpoint_labels() {
        let svc = ("reviews.bookinfo.svc.cluster.local", "bookinfo");
        let ep = Endpoint {
            address: "10.1.0.1".parse().unwrap(),
            labels: BTreeMap::from([
                ("app".to_string(), "reviews".to_string()),
                ("version".to_string(), "v2".to_string()),
            ]),
            service_account: "bookinfo-reviews".into(),
            namespace: "bookinfo".into(),
            identity: "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews".into(),
            transport: Default::default(),
            name: "reviews-v2".into(),
        };
        let d = DestinationLabels::new(Some(svc), Some(&ep), "Kubernetes");
        assert_eq!(&*d.destination_workload, "reviews-v2");
        assert_eq!(&*d.destination_service_name, "reviews");
        assert_eq!(&*d.destination_canonical_service, "reviews");
        assert_eq!(&*d.destination_canonical_revision, "v2");
        assert_eq!(&*d.destination_cluster, "Kubernetes");
        let none = DestinationLabels::new(Some(svc), None, "Kubernetes");
        assert_eq!(&*none.destination_workload, "unknown");
        assert_eq!(
            &*none.destination_service,
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(&*none.destination_cluster, "unknown");
    }

    #[test]
    fn exposition_has_istio_names_and_buckets() {
        let m = Metrics::default();
        m.istio.record_request(RequestRecord {
            source: SourceLabels::unknown(),
            destination: DestinationLabels::new(None, None, "Kubernetes"),
            grpc: false,
            response_code: 503,
            grpc_status: None,
            response_flags: "UF",
            duration_ms: 7.0,
            request_bytes: 0,
            response_bytes: 19,
        });
        let text = m.render();
        assert!(text.contains("# TYPE istio_requests counter"), "{text}");
        assert!(
            text.contains("istio_requests_total{reporter=\"waypoint\""),
            "{text}"
        );
        assert!(text.contains("response_code=\"503\""), "{text}");
        assert!(text.contains("response_flags=\"UF\""), "{text}");
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "istio_request_duration_milliseconds_bucket{{le=\"{le}\","
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(String::from)
        };
        assert_eq!(bucket("5.0").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("10.0").as_deref(), Some("1"), "{text}");
    }

    /// The lock-free histogram encodes byte for byte as prometheus-client's own, and counts
    /// every observation under concurrency.
    #[test]
    fn atomic_histogram_matches_prometheus_client() {
        use prometheus_client::metrics::histogram::Histogram;
        let ours = AtomicHistogram::new(ISTIO_BUCKETS);
        let theirs = Histogram::new(ISTIO_BUCKETS);
        for v in [0.0, 0.5, 0.7, 3.0, 25.0, 1e9, f64::NAN, -1.0, 4000.25] {
            ours.observe(v);
            theirs.observe(v);
        }
        let encode = |register: &dyn Fn(&mut Registry)| {
            let mut r = Registry::default();
            register(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        let a = encode(&|r| r.register("h", "help", ours.clone()));
        let b = encode(&|r| r.register("h", "help", theirs.clone()));
        assert_eq!(a, b);

        let h = AtomicHistogram::new([1.0, 10.0]);
        const THREADS: u64 = 8;
        const EACH: u64 = 25_000;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let h = &h;
                s.spawn(move || {
                    for i in 0..EACH {
                        // 0.5, 5 and 50 in turn: every bucket is hit concurrently.
                        h.observe([0.5, 5.0, 50.0][((i + t) % 3) as usize]);
                    }
                });
            }
        });
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, THREADS * EACH);
        let per: Vec<u64> = buckets.iter().map(|(_, c)| *c).collect();
        assert_eq!(per.iter().sum::<u64>(), THREADS * EACH);
        let expect_sum: f64 = (0..THREADS)
            .flat_map(|t| (0..EACH).map(move |i| [0.5, 5.0, 50.0][((i + t) % 3) as usize]))
            .sum();
        assert_eq!(sum, expect_sum, "halves and integers add exactly");
    }

    fn ep(name: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            address: "10.1.0.1".parse().unwrap(),
            labels: BTreeMap::from([("app".to_string(), "reviews".to_string())]),
            service_account: "reviews".into(),
            namespace: "bookinfo".into(),
            identity: "spiffe://cluster.local/ns/bookinfo/sa/reviews".into(),
            transport: Default::default(),
            name: name.into(),
        })
    }

    /// Per (tunnel, endpoint, code, flags …) the label set is built once; the exposition is the
    /// one the uncached path writes.
    #[test]
    fn handles_are_cached_per_key_and_expose_the_same_series() {
        let t = Arc::new(tunnel(Some("k8s.deployment.name=frontend")));
        let (e1, e2) = (ep("reviews-v1"), ep("reviews-v2"));
        fn key<'a>(
            t: &'a Arc<TunnelInfo>,
            endpoint: &'a Arc<Endpoint>,
            code: u16,
            flags: &'a str,
        ) -> RequestKey<'a> {
            RequestKey {
                tunnel: Some(t),
                service: Some(("reviews.bookinfo.svc.cluster.local", "bookinfo")),
                endpoint: Some(endpoint),
                principal: None,
                cluster_id: "Kubernetes",
                grpc: false,
                response_code: code,
                grpc_status: None,
                response_flags: flags,
            }
        }
        let cached = Metrics::default();
        for _ in 0..100 {
            cached
                .istio
                .record_request_key(key(&t, &e1, 200, ""), 3.0, 10, 20);
        }
        assert_eq!(
            cached.istio.label_builds(),
            1,
            "one label set for 100 requests"
        );
        cached
            .istio
            .record_request_key(key(&t, &e2, 200, ""), 3.0, 10, 20);
        cached
            .istio
            .record_request_key(key(&t, &e1, 503, "UF"), 3.0, 10, 20);
        cached
            .istio
            .record_request_key(key(&t, &e1, 503, "UF"), 3.0, 10, 20);
        assert_eq!(cached.istio.label_builds(), 3);
        // Another instance on the same thread does not share handles.
        let other = Metrics::default();
        other
            .istio
            .record_request_key(key(&t, &e1, 200, ""), 3.0, 10, 20);
        assert_eq!(other.istio.label_builds(), 1);
        let text = other.render();
        let total = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"));
        assert!(total.is_some_and(|l| l.ends_with(" 1")), "{text}");

        let plain = Metrics::default();
        let record = |endpoint: &Arc<Endpoint>, code: u16, flags: &str| {
            plain.istio.record_request(RequestRecord {
                source: t.source_labels().clone(),
                destination: DestinationLabels::new(
                    Some(("reviews.bookinfo.svc.cluster.local", "bookinfo")),
                    Some(endpoint),
                    "Kubernetes",
                ),
                grpc: false,
                response_code: code,
                grpc_status: None,
                response_flags: flags,
                duration_ms: 3.0,
                request_bytes: 10,
                response_bytes: 20,
            })
        };
        for _ in 0..100 {
            record(&e1, 200, "");
        }
        record(&e2, 200, "");
        record(&e1, 503, "UF");
        record(&e1, 503, "UF");
        // Series order within a family is a hash map's: compare the sorted lines.
        let sorted = |m: &Metrics| {
            let text = m.render();
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&cached), sorted(&plain));
    }
}
