//! What became of the requests each weighted destination received: failures and latency per
//! bucket of the audit's window (atomics, as the counts), and the canary page's report — per
//! destination the configured and observed share, the observed share bucket by bucket, the
//! request rate, the error rate and the p99 over the window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{bump, count, share, DestCount, SplitAudit, BUCKETS};

/// Istio's `istio_request_duration_milliseconds` bucket bounds; one slot more for beyond.
const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
pub(super) const LATENCY_SLOTS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A request a weighted route sent to one destination, to be finished when it ends.
#[derive(Debug)]
pub struct SplitTicket {
    pub(super) dest: Arc<DestCount>,
    pub(super) started: Instant,
    pub(super) width: Duration,
}

impl SplitTicket {
    /// The request ended with `status` (0: no response) after `latency`.
    pub fn finish(&self, status: u16, latency: Duration) {
        let width = self.width.as_nanos().max(1);
        let bucket = (Instant::now()
            .saturating_duration_since(self.started)
            .as_nanos()
            / width) as u64;
        if status == 0 || status >= 500 {
            bump(&self.dest.errors, bucket);
        }
        let ms = latency.as_secs_f64() * 1000.0;
        let slot = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        bump(&self.dest.latency[slot], bucket);
    }
}

/// The canary page's view of the weighted routes.
#[derive(Debug, Serialize)]
pub struct CanaryReport {
    pub window_seconds: f64,
    pub bucket_seconds: f64,
    pub routes: Vec<CanaryRoute>,
}

#[derive(Debug, Serialize)]
pub struct CanaryRoute {
    pub service: String,
    pub route: String,
    pub destinations: Vec<CanaryDestination>,
}

#[derive(Debug, Serialize)]
pub struct CanaryDestination {
    /// The subset, else the host (and port when the route names one).
    pub name: String,
    pub configured_share: f64,
    pub observed_share: Option<f64>,
    /// Requests per second over the window.
    pub rate: f64,
    /// Failed (5xx or no response) ÷ finished, over the window.
    pub error_rate: Option<f64>,
    /// The upper bound of the latency bucket holding the 99th percentile (Istio's buckets; the
    /// last bound, an hour, when beyond it); `None` without finished requests.
    pub p99_ms: Option<f64>,
    /// The observed share in each bucket, oldest first (`None`: the route had no request).
    pub series: Vec<Option<f64>>,
}

impl DestCount {
    fn name(&self) -> String {
        match (&self.subset, self.port) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => format!("{}:{p}", self.host),
            (None, None) => self.host.clone(),
        }
    }

    fn finished(&self, oldest: u64, newest: u64) -> [u64; LATENCY_SLOTS] {
        std::array::from_fn(|i| (oldest..=newest).map(|b| count(&self.latency[i], b)).sum())
    }
}

/// The bound of the bucket where the 99th percentile of `counts` falls.
fn p99(counts: &[u64; LATENCY_SLOTS]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let last = LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1];
            return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(last));
        }
    }
    None
}

impl SplitAudit {
    pub fn canary_report(&self) -> CanaryReport {
        self.canary_report_at(Instant::now())
    }

    pub fn canary_report_at(&self, now: Instant) -> CanaryReport {
        let newest = self.bucket(now);
        // The window's figures cover the buckets of the window and the current one (as
        // `/splits`); the series, one point per bucket, ends with the last complete bucket
        // (the current one is still filling) and is `None` before the process started.
        let first = newest.saturating_sub(u64::from(BUCKETS));
        let series_bucket = |i: u32| newest.checked_sub(u64::from(BUCKETS - i));
        let window = self.window.as_secs_f64();
        let routes = self.each_route(|service, route, counts| {
            let layout = counts.layout.load();
            let weights: u64 = layout.dests.iter().map(|(_, w)| u64::from(*w)).sum();
            let per_bucket =
                |b: u64| -> u64 { layout.dests.iter().map(|(c, _)| count(&c.ring, b)).sum() };
            let route_total: u64 = (first..=newest).map(per_bucket).sum();
            let destinations = layout
                .dests
                .iter()
                .map(|(c, weight)| {
                    let sent = c.in_window(first, newest);
                    let finished = c.finished(first, newest);
                    let done: u64 = finished.iter().sum();
                    let errors: u64 = (first..=newest).map(|b| count(&c.errors, b)).sum();
                    CanaryDestination {
                        name: c.name(),
                        configured_share: share(u64::from(*weight), weights).unwrap_or(0.0),
                        observed_share: share(sent, route_total),
                        rate: sent as f64 / window,
                        error_rate: share(errors, done),
                        p99_ms: p99(&finished),
                        series: (0..BUCKETS)
                            .map(|i| {
                                series_bucket(i)
                                    .and_then(|b| share(count(&c.ring, b), per_bucket(b)))
                            })
                            .collect(),
                    }
                })
                .collect();
            CanaryRoute {
                service: service.clone(),
                route: route.clone(),
                destinations,
            }
        });
        CanaryReport {
            window_seconds: window,
            bucket_seconds: self.bucket_width().as_secs_f64(),
            routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::dest;
    use super::*;

    #[test]
    fn outcomes_give_rates_errors_p99_and_a_series() {
        let audit = SplitAudit::new(Duration::from_secs(30));
        let dests = [dest("v1", 90), dest("v2", 10)];
        let t0 = audit.started;
        // 9 to v1, 1 to v2 in each of 10 one-second buckets; v2 fails one in two and is slow.
        for s in 0..10u64 {
            let at = t0 + Duration::from_secs(s) + Duration::from_millis(10);
            for i in 0..10 {
                let picked = if i == 0 { &dests[1] } else { &dests[0] };
                let t = audit
                    .record_at("reviews", "r.0", &dests, picked, at)
                    .expect("a weighted route");
                let (status, ms) = if i == 0 {
                    (if s % 2 == 0 { 503 } else { 200 }, 400)
                } else {
                    (200, 3)
                };
                t.finish(status, Duration::from_millis(ms));
            }
        }
        let r = audit.canary_report_at(t0 + Duration::from_secs(10) + Duration::from_millis(10));
        let route = &r.routes[0];
        let v1 = &route.destinations[0];
        let v2 = &route.destinations[1];
        assert_eq!((v1.name.as_str(), v2.name.as_str()), ("v1", "v2"));
        assert!((v1.observed_share.unwrap() - 0.9).abs() < 1e-9);
        assert!((v1.rate - 90.0 / 30.0).abs() < 1e-9);
        assert_eq!(v1.error_rate, Some(0.0));
        assert_eq!(v2.error_rate, Some(0.5));
        assert_eq!(v1.p99_ms, Some(5.0));
        assert_eq!(v2.p99_ms, Some(500.0));
        // The finished buckets of the window, oldest first: the last ten hold the traffic.
        let shares: Vec<Option<f64>> = v2.series.iter().rev().take(10).copied().collect();
        assert!(
            shares.iter().all(|s| (s.unwrap() - 0.1).abs() < 1e-9),
            "{shares:?}"
        );
        assert_eq!(v2.series.len(), BUCKETS as usize);
        assert_eq!(v2.series[0], None);
    }
}
