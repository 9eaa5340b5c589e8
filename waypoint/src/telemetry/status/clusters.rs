//! Envoy's per-cluster statistics under the names Envoy-based dashboards read
//! (`envoy_cluster_upstream_rq_retry{cluster_name="…"}`, …), from the live snapshot's clusters
//! at scrape time. A cluster appears once one of its figures is not zero, so a mesh of
//! thousands of quiet clusters adds nothing to a scrape. Counters keep Envoy's exact names
//! (exposed as `unknown`, as OpenMetrics would otherwise add `_total`).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::Status;

#[derive(Debug)]
pub struct ClusterCollector(pub Arc<Status>);

type Stat = fn(&routing::ClusterStats) -> u64;

const STATS: [(&str, &str, MetricType, Stat); 6] = [
    (
        "envoy_cluster_upstream_rq_retry",
        "Retries made (Envoy's cluster.upstream_rq_retry)",
        MetricType::Unknown,
        |s| s.upstream_rq_retry,
    ),
    (
        "envoy_cluster_upstream_rq_retry_overflow",
        "Retries not made: the DestinationRule's http.maxRetries was reached",
        MetricType::Unknown,
        |s| s.upstream_rq_retry_overflow,
    ),
    (
        "envoy_cluster_upstream_cx_overflow",
        "Connections refused by the DestinationRule's tcp.maxConnections",
        MetricType::Unknown,
        |s| s.upstream_cx_overflow,
    ),
    (
        "envoy_cluster_upstream_rq_pending_overflow",
        "Requests refused by http.http1MaxPendingRequests or http.http2MaxRequests",
        MetricType::Unknown,
        |s| s.upstream_rq_pending_overflow,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_enforced_total",
        "Outlier ejections made",
        MetricType::Unknown,
        |s| s.ejections_enforced_total,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_active",
        "Endpoints ejected now",
        MetricType::Gauge,
        |s| s.ejections_active,
    ),
];

impl Collector for ClusterCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(dp) = self.0.dataplane() else {
            return Ok(());
        };
        let snapshot = dp.snapshot.load_full();
        let now = std::time::Instant::now();
        let busy: Vec<(&str, routing::ClusterStats)> = snapshot
            .clusters()
            .into_iter()
            .map(|c| (c.name.as_str(), c.stats(now)))
            .filter(|(_, s)| *s != routing::ClusterStats::default())
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        for (name, help, kind, stat) in STATS {
            let mut enc = e.encode_descriptor(name, help, None, kind)?;
            for (cluster_name, s) in &busy {
                ConstGauge::new(stat(s) as i64)
                    .encode(enc.encode_family(&[("cluster_name", *cluster_name)])?)?;
            }
        }
        Ok(())
    }
}
