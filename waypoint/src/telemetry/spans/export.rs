//! Spans leave the process on one thread of their own: requests append finished spans to a
//! shared, bounded buffer ([`QUEUE_SPANS`]; beyond it spans are dropped and counted, never
//! waited for) without waking anyone, and the export thread takes the whole buffer every
//! [`FLUSH_INTERVAL`] and sends it in batches of up to [`BATCH_SPANS`] (as the access log's
//! writer does: a wake-up per span cost more than the span).
//!
//! OTLP (gRPC and HTTP/protobuf) goes through `opentelemetry-otlp`'s exporters, awaited on
//! this thread's tokio runtime (the SDK's own batch processor cannot drive the async HTTP
//! client). Zipkin v2 JSON is written here: `opentelemetry-zipkin` 0.33 is deprecated and sends
//! no `localEndpoint.serviceName`, so every span would land under "unknown".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use parking_lot::Mutex;
use routing::telemetry::{Collector, CollectorProtocol};

/// Spans waiting for export; more are dropped (and counted).
pub const QUEUE_SPANS: usize = 4096;
/// Spans per export call.
pub const BATCH_SPANS: usize = 512;
/// How often the export thread takes what requests left.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// What requests and the export thread share.
#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<SpanData>>,
    /// Set when the last [`Exporter`] is dropped: the thread sends what is left and ends.
    closed: std::sync::atomic::AtomicBool,
}

/// Export counters, shared with the metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// The handle requests send spans through. Dropping the last one ends the thread after it sent
/// what it holds.
pub struct Exporter {
    shared: Arc<Shared>,
    pub stats: Arc<ExportStats>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl Exporter {
    /// Starts the export thread for `collector`, spans named as coming from `service_name`.
    pub fn start(
        collector: &Collector,
        service_name: &str,
        stats: Arc<ExportStats>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let rx = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let collector = collector.clone();
        let service = service_name.to_string();
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || runtime.block_on(run(collector, service, rx, thread_stats)))?;
        Ok(Self { shared, stats })
    }

    /// Queues a finished span; a full buffer drops it.
    pub fn send(&self, span: SpanData) {
        let mut spans = self.shared.spans.lock();
        if spans.len() >= QUEUE_SPANS {
            drop(spans);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            spans.push(span);
        }
    }
}

/// Why spans cannot leave: the exporter does not build, or a batch is not delivered.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("header {name}: {source}")]
    HeaderName {
        name: String,
        source: tonic::metadata::errors::InvalidMetadataKey,
    },
    #[error("header {name}: {source}")]
    HeaderValue {
        name: String,
        source: tonic::metadata::errors::InvalidMetadataValue,
    },
    #[error(transparent)]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error(transparent)]
    Otlp(#[from] opentelemetry_sdk::error::OTelSdkError),
    /// The Zipkin JSON body does not serialize.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The Zipkin request is not sent or not answered.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("collector answered {0}")]
    Status(reqwest::StatusCode),
}

enum Sender {
    Otlp(Box<opentelemetry_otlp::SpanExporter>),
    Zipkin(Zipkin),
}

async fn run(collector: Collector, service: String, shared: Arc<Shared>, stats: Arc<ExportStats>) {
    let take = |shared: &Shared| std::mem::take(&mut *shared.spans.lock());
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sender = match build(&collector, &service) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                collector = %format!("{}:{}", collector.host, collector.port),
                error = %e,
                "cannot build the span exporter; spans are dropped"
            );
            loop {
                tick.tick().await;
                let closed = shared.closed.load(Ordering::Acquire);
                let n = take(&shared).len() as u64;
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                if closed {
                    return;
                }
            }
        }
    };
    let log = crate::telemetry::throttle::LogThrottle::new(Duration::from_secs(30));
    loop {
        tick.tick().await;
        // Read before taking: what a closing exporter left is in this take.
        let closed = shared.closed.load(Ordering::Acquire);
        let mut spans = take(&shared);
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(BATCH_SPANS));
            let batch = std::mem::replace(&mut spans, rest);
            export(&sender, batch, &collector, &stats, &log).await;
        }
        if closed {
            return;
        }
    }
}

async fn export(
    sender: &Sender,
    batch: Vec<SpanData>,
    collector: &Collector,
    stats: &ExportStats,
    log: &crate::telemetry::throttle::LogThrottle,
) {
    let n = batch.len() as u64;
    let result = match &sender {
        Sender::Otlp(e) => e.export(batch).await.map_err(ExportError::from),
        Sender::Zipkin(z) => z.export(batch).await,
    };
    match result {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            if let Some(left_out) = log.allow("span export failed") {
                tracing::warn!(
                    collector = %format!("{}:{}", collector.host, collector.port),
                    spans = n,
                    failures_not_logged = left_out,
                    error = %e,
                    "span export failed; the spans are dropped"
                );
            }
        }
    }
}

fn authority(c: &Collector) -> String {
    match c.host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{}]:{}", c.host, c.port),
        Err(_) => format!("{}:{}", c.host, c.port),
    }
}

fn build(c: &Collector, service: &str) -> Result<Sender, ExportError> {
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service.to_string())
        .build();
    let mut exporter = match c.protocol {
        CollectorProtocol::Zipkin => {
            return Ok(Sender::Zipkin(Zipkin {
                url: format!("http://{}{}", authority(c), c.path),
                service: service.to_string(),
                timeout: c.timeout,
                headers: c.headers.clone(),
                client: reqwest::Client::new(),
            }))
        }
        CollectorProtocol::OtlpGrpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &c.headers {
                let key =
                    tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(|source| {
                        ExportError::HeaderName {
                            name: k.clone(),
                            source,
                        }
                    })?;
                let value = v.parse().map_err(|source| ExportError::HeaderValue {
                    name: k.clone(),
                    source,
                })?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://{}", authority(c)))
                .with_timeout(c.timeout)
                .with_metadata(metadata)
                .build()
        }
        CollectorProtocol::OtlpHttp => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://{}{}", authority(c), c.path))
            .with_timeout(c.timeout)
            .with_headers(c.headers.iter().cloned().collect())
            .build(),
    }?;
    exporter.set_resource(&resource);
    Ok(Sender::Otlp(Box::new(exporter)))
}

/// Zipkin API v2: a JSON array of spans, POSTed to the collector's spans path.
struct Zipkin {
    url: String,
    service: String,
    timeout: Duration,
    headers: Vec<(String, String)>,
    client: reqwest::Client,
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Zipkin {
    /// The span as Zipkin's v2 model (`zipkin2/zipkin-api` `zipkin2-api.yaml`): 128-bit trace id,
    /// kind, microsecond timestamp and duration, the waypoint as the local endpoint, attributes
    /// as string tags; `error` tagged on an error status.
    fn span(&self, s: &SpanData) -> serde_json::Value {
        let mut tags = serde_json::Map::new();
        for kv in &s.attributes {
            tags.insert(kv.key.to_string(), kv.value.to_string().into());
        }
        if let opentelemetry::trace::Status::Error { description } = &s.status {
            tags.insert("error".into(), description.to_string().into());
        }
        let kind = match s.span_kind {
            opentelemetry::trace::SpanKind::Server => Some("SERVER"),
            opentelemetry::trace::SpanKind::Client => Some("CLIENT"),
            opentelemetry::trace::SpanKind::Producer => Some("PRODUCER"),
            opentelemetry::trace::SpanKind::Consumer => Some("CONSUMER"),
            opentelemetry::trace::SpanKind::Internal => None,
        };
        let mut span = serde_json::json!({
            "traceId": s.span_context.trace_id().to_string(),
            "id": s.span_context.span_id().to_string(),
            "name": s.name,
            "timestamp": micros(s.start_time),
            "duration": micros(s.end_time).saturating_sub(micros(s.start_time)).max(1),
            "localEndpoint": {"serviceName": self.service},
            "tags": tags,
        });
        if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
            span["parentId"] = s.parent_span_id.to_string().into();
        }
        if let Some(kind) = kind {
            span["kind"] = kind.into();
        }
        span
    }

    async fn export(&self, batch: Vec<SpanData>) -> Result<(), ExportError> {
        let body: Vec<serde_json::Value> = batch.iter().map(|s| self.span(s)).collect();
        let body = serde_json::to_vec(&body)?;
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ExportError::Status(resp.status()))
        }
    }
}
