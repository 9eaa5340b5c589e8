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
            .map(|c| (&*c.name, c.stats(now)))
            .filter(|(_, s)| *s != routing::ClusterStats::default())
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let stats = busy.iter().map(|(_, s)| s.named()).collect::<Vec<_>>();
        for (i, (stat, help, _)) in routing::ClusterStats::default().named().iter().enumerate() {
            let name = format!("envoy_cluster_{}", stat.replace('.', "_"));
            // A gauge for what is now; the counters keep Envoy's exact name (see above).
            let kind = if stat.ends_with("_active") {
                MetricType::Gauge
            } else {
                MetricType::Unknown
            };
            let mut enc = e.encode_descriptor(&name, help, None, kind)?;
            for ((cluster_name, _), named) in busy.iter().zip(&stats) {
                ConstGauge::new(named[i].2 as i64)
                    .encode(enc.encode_family(&[("cluster_name", *cluster_name)])?)?;
            }
        }
        Ok(())
    }
}
