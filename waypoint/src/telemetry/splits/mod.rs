//! The canary audit: for every route with weighted destinations, the configured weight next to
//! the share of requests that route actually sent to each destination — since start and over a
//! sliding window. Served on the admin port at `/splits` and as metrics.
//!
//! A request is counted when the route picks its destination (before endpoint selection), so
//! the audit shows the split decision itself, independent of endpoint health.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use routing::RouteDestination;
use serde::Serialize;

pub mod outcome;
pub use outcome::SplitTicket;

/// Buckets the window is cut into; the window slides by one bucket width.
const BUCKETS: u32 = 30;
/// Ring slots per destination: the window's buckets and the current one.
const SLOTS: usize = BUCKETS as usize + 1;

/// A ring of per-bucket counts: slot `b % SLOTS` holds bucket `b`, its index (low 32 bits) in
/// the high half and its count in the low half, swapped in one compare-and-swap when a newer
/// bucket reuses the slot.
type Ring = [AtomicU64; SLOTS];

fn ring() -> Ring {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Count one in `bucket`.
fn bump(ring: &Ring, bucket: u64) {
    let slot = &ring[(bucket % SLOTS as u64) as usize];
    let tag = (bucket as u32 as u64) << 32;
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let next = if cur & !0xffff_ffff == tag {
            cur.wrapping_add(1) & 0xffff_ffff | tag
        } else if ((cur >> 32) as u32).wrapping_sub(bucket as u32) as i32 > 0 {
            // This thread stalled for a whole ring: the slot holds a newer bucket already, and
            // this bucket has left the window.
            return;
        } else {
            tag | 1
        };
        match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// The count of `bucket` (0 once its slot holds another bucket).
fn count(ring: &Ring, bucket: u64) -> u64 {
    let v = ring[(bucket % SLOTS as u64) as usize].load(Ordering::Relaxed);
    if v >> 32 == u64::from(bucket as u32) {
        v & 0xffff_ffff
    } else {
        0
    }
}

/// One destination's counters: atomics, so that requests never wait on each other.
#[derive(Debug)]
struct DestCount {
    host: String,
    subset: Option<String>,
    port: Option<u16>,
    total: AtomicU64,
    /// Requests the route sent here, per bucket.
    ring: Ring,
    /// Of those that finished, the failed ones (5xx or no response) and their latencies by
    /// Istio's duration buckets, per bucket of their end (see [`outcome`]).
    errors: Ring,
    latency: Box<[Ring; outcome::LATENCY_SLOTS]>,
}

impl DestCount {
    fn new(d: &RouteDestination) -> Self {
        Self {
            host: d.host.clone(),
            subset: d.subset.clone(),
            port: d.port,
            total: AtomicU64::new(0),
            ring: ring(),
            errors: ring(),
            latency: Box::new(std::array::from_fn(|_| ring())),
        }
    }

    fn same(&self, d: &RouteDestination) -> bool {
        self.host == d.host && self.subset == d.subset && self.port == d.port
    }

    fn hit(&self, bucket: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        bump(&self.ring, bucket);
    }

    /// Requests in buckets `oldest..=newest`.
    fn in_window(&self, oldest: u64, newest: u64) -> u64 {
        (oldest..=newest).map(|b| count(&self.ring, b)).sum()
    }
}

/// A route's destinations as last configured: changes only when the configuration does.
#[derive(Debug, Default)]
struct Layout {
    /// Every destination the route has had, first seen first, with its weight (0 once removed:
    /// its history is still part of the observed split).
    dests: Vec<(Arc<DestCount>, u32)>,
    /// Per configured destination, in configuration order: its index in `dests`.
    config: Vec<usize>,
}

impl Layout {
    fn matches(&self, destinations: &[RouteDestination]) -> bool {
        self.config.len() == destinations.len()
            && self.config.iter().zip(destinations).all(|(&i, d)| {
                let (c, w) = &self.dests[i];
                *w == d.weight && c.same(d)
            })
    }

    /// Follows the configuration: new destinations appear, weights update, removed ones stay.
    fn follow(&self, destinations: &[RouteDestination]) -> Layout {
        let mut dests: Vec<(Arc<DestCount>, u32)> = self
            .dests
            .iter()
            .map(|(c, _)| {
                let w = destinations
                    .iter()
                    .find(|d| c.same(d))
                    .map_or(0, |d| d.weight);
                (c.clone(), w)
            })
            .collect();
        for d in destinations {
            if !dests.iter().any(|(c, _)| c.same(d)) {
                dests.push((Arc::new(DestCount::new(d)), d.weight));
            }
        }
        let config = destinations
            .iter()
            .map(|d| dests.iter().position(|(c, _)| c.same(d)).unwrap_or(0))
            .collect();
        Layout { dests, config }
    }
}

#[derive(Debug, Default)]
struct RouteCounts {
    layout: ArcSwap<Layout>,
    /// Serializes layout changes (configuration changes, not requests).
    change: Mutex<()>,
}

type Routes = BTreeMap<String, BTreeMap<String, Arc<RouteCounts>>>;

pub struct SplitAudit {
    started: Instant,
    window: Duration,
    /// service → route → counters. Read without a lock; copied on write when a route is first
    /// seen.
    routes: ArcSwap<Routes>,
    /// Serializes adding routes.
    insert: Mutex<()>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SplitReport {
    pub window_seconds: u64,
    pub routes: Vec<RouteReport>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RouteReport {
    pub service: String,
    pub route: String,
    pub requests: u64,
    pub requests_in_window: u64,
    pub destinations: Vec<DestinationReport>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DestinationReport {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub weight: u32,
    /// weight / sum of weights.
    pub configured_share: f64,
    pub requests: u64,
    pub observed_share: Option<f64>,
    pub requests_in_window: u64,
    pub observed_share_in_window: Option<f64>,
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl SplitAudit {
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            window: window.max(Duration::from_secs(1)),
            routes: ArcSwap::default(),
            insert: Mutex::new(()),
        })
    }

    fn bucket_width(&self) -> Duration {
        self.window / BUCKETS
    }

    fn bucket(&self, now: Instant) -> u64 {
        let width = self.bucket_width().as_nanos().max(1);
        (now.saturating_duration_since(self.started).as_nanos() / width) as u64
    }

    /// Whether a route is audited: it splits over more than one destination.
    pub fn audits(destinations: &[RouteDestination]) -> bool {
        destinations.len() > 1
    }

    /// `picked` is the destination the route chose among `destinations`. The ticket records
    /// the request's outcome when it ends ([`SplitTicket::finish`]).
    pub fn record(
        &self,
        service: &str,
        route: &str,
        destinations: &[RouteDestination],
        picked: &RouteDestination,
    ) -> Option<SplitTicket> {
        self.record_at(service, route, destinations, picked, Instant::now())
    }

    fn counts(&self, service: &str, route: &str) -> Arc<RouteCounts> {
        if let Some(c) = self.routes.load().get(service).and_then(|r| r.get(route)) {
            return c.clone();
        }
        let _only_writer = self.insert.lock();
        let mut routes = Routes::clone(&self.routes.load());
        let counts = routes
            .entry(service.to_string())
            .or_default()
            .entry(route.to_string())
            .or_default()
            .clone();
        self.routes.store(Arc::new(routes));
        counts
    }

    /// Counts one request: two atomic adds once the route has been seen with this
    /// configuration (no lock is taken).
    pub fn record_at(
        &self,
        service: &str,
        route: &str,
        destinations: &[RouteDestination],
        picked: &RouteDestination,
        now: Instant,
    ) -> Option<SplitTicket> {
        let bucket = self.bucket(now);
        let counts = self.counts(service, route);
        let mut layout = counts.layout.load_full();
        if !layout.matches(destinations) {
            let _only_writer = counts.change.lock();
            let next = Arc::new(counts.layout.load().follow(destinations));
            counts.layout.store(next.clone());
            layout = next;
        }
        let index = destinations
            .iter()
            .position(|d| std::ptr::eq(d, picked))
            .and_then(|i| layout.config.get(i).copied())
            .or_else(|| layout.dests.iter().position(|(c, _)| c.same(picked)));
        let (c, _) = index.and_then(|i| layout.dests.get(i))?;
        c.hit(bucket);
        Some(SplitTicket {
            dest: c.clone(),
            started: self.started,
            width: self.bucket_width(),
        })
    }

    pub fn report(&self) -> SplitReport {
        self.report_at(Instant::now())
    }

    /// `f` of every audited route (service, route, counters), in order.
    fn each_route<T>(&self, f: impl Fn(&String, &String, &RouteCounts) -> T) -> Vec<T> {
        let routes = self.routes.load();
        routes
            .iter()
            .flat_map(|(service, routes)| routes.iter().map(move |(r, c)| (service, r, c)))
            .map(|(service, route, counts)| f(service, route, counts))
            .collect()
    }

    pub fn report_at(&self, now: Instant) -> SplitReport {
        let newest = self.bucket(now);
        let oldest = newest.saturating_sub(u64::from(BUCKETS));
        let routes = self.each_route(|service, route, counts| {
            let layout = counts.layout.load();
            let counted: Vec<(&DestCount, u32, u64, u64)> = layout
                .dests
                .iter()
                .map(|(c, w)| {
                    let total = c.total.load(Ordering::Relaxed);
                    (&**c, *w, total, c.in_window(oldest, newest))
                })
                .collect();
            let requests: u64 = counted.iter().map(|c| c.2).sum();
            let in_window: u64 = counted.iter().map(|c| c.3).sum();
            let weights: u64 = counted.iter().map(|c| u64::from(c.1)).sum();
            RouteReport {
                service: service.clone(),
                route: route.clone(),
                requests,
                requests_in_window: in_window,
                destinations: counted
                    .iter()
                    .map(|&(c, weight, total, w)| DestinationReport {
                        host: c.host.clone(),
                        subset: c.subset.clone(),
                        port: c.port,
                        weight,
                        configured_share: share(u64::from(weight), weights).unwrap_or(0.0),
                        requests: total,
                        observed_share: share(total, requests),
                        requests_in_window: w,
                        observed_share_in_window: share(w, in_window),
                    })
                    .collect(),
            }
        });
        SplitReport {
            window_seconds: self.window.as_secs(),
            routes,
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

impl SplitReport {
    /// A table for people: one line per destination.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if self.routes.is_empty() {
            out.push_str("no weighted route has served a request yet\n");
            return out;
        }
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:<44} {:>7} {:>9} {:>10} {:>9} {:>10}",
            "SERVICE",
            "ROUTE",
            "DESTINATION",
            "WEIGHT",
            "CONFIGURED",
            "OBSERVED",
            "REQUESTS",
            format!("LAST {}s", self.window_seconds),
        );
        for r in &self.routes {
            for d in &r.destinations {
                let mut dest = d.host.clone();
                if let Some(s) = &d.subset {
                    let _ = write!(dest, " subset={s}");
                }
                if let Some(p) = d.port {
                    let _ = write!(dest, " port={p}");
                }
                let _ = writeln!(
                    out,
                    "{:<40} {:<16} {:<44} {:>7} {:>9} {:>10} {:>9} {:>10}",
                    r.service,
                    r.route,
                    dest,
                    d.weight,
                    pct(Some(d.configured_share)),
                    pct(d.observed_share),
                    d.requests,
                    pct(d.observed_share_in_window),
                );
            }
        }
        out
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SplitLabels {
    destination_service: String,
    route_name: String,
    destination_host: String,
    destination_subset: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    #[prometheus(flatten)]
    split: SplitLabels,
    window: String,
}

/// Scrape-time metrics: requests per destination, configured weight share, observed share.
#[derive(Debug)]
pub struct SplitCollector(pub Arc<SplitAudit>);

impl std::fmt::Debug for SplitAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitAudit")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Collector for SplitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.0.report();
        let window = format!("{}s", report.window_seconds);
        let mut samples = Vec::new();
        for r in &report.routes {
            for d in &r.destinations {
                let labels = SplitLabels {
                    destination_service: r.service.clone(),
                    route_name: r.route.clone(),
                    destination_host: d.host.clone(),
                    destination_subset: d.subset.clone().unwrap_or_default(),
                };
                samples.push((labels, d));
            }
        }
        if samples.is_empty() {
            // No weighted route has served yet: no families rather than empty ones.
            return Ok(());
        }
        let mut enc = encoder.encode_descriptor(
            "waypoint_route_split_requests",
            "Requests a weighted route sent to each destination",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (labels, d) in &samples {
            let m = enc.encode_family(labels)?;
            ConstCounter::new(d.requests).encode(m)?;
        }
        let mut enc = encoder.encode_descriptor(
            "waypoint_route_split_configured_ratio",
            "Configured share of a weighted route's destination (weight / sum of weights)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, d) in &samples {
            let m = enc.encode_family(labels)?;
            ConstGauge::new(d.configured_share).encode(m)?;
        }
        let mut enc = encoder.encode_descriptor(
            "waypoint_route_split_observed_ratio",
            "Observed share of a weighted route's requests per destination",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, d) in &samples {
            for (w, v) in [
                ("since_start", d.observed_share),
                (window.as_str(), d.observed_share_in_window),
            ] {
                if let Some(v) = v {
                    let l = WindowLabels {
                        split: labels.clone(),
                        window: w.to_string(),
                    };
                    let m = enc.encode_family(&l)?;
                    ConstGauge::new(v).encode(m)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
