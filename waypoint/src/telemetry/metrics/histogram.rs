//! A histogram whose observations take no lock.

use super::*;

/// A classic histogram whose observations take no lock: one atomic add on the bucket hit and
/// one compare-and-swap on the sum (prometheus-client's `Histogram` takes a mutex per observe).
/// Encodes exactly as prometheus-client's histogram does (same buckets, same `+Inf`). The
/// count is the sum of the buckets, so a scrape never shows a count the buckets disagree with.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug)]
pub(super) struct HistogramCells {
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
