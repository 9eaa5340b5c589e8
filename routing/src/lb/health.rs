//! Outlier detection on a cluster: reports of attempt outcomes, ejections, what is ejected now.

use super::{lock, Cluster, ClusterEndpoint};
use crate::outlier::{may_eject, Ejection, EjectionKind, Outcome};
use crate::policy::OutlierSettings;
use std::net::SocketAddr;
use std::time::Instant;

impl ClusterEndpoint {
    /// Ejected at `now` (after replaying the interval ticks up to `now`).
    pub(super) fn ejected_at(&self, now: Instant, origin: Instant, s: &OutlierSettings) -> bool {
        let mut h = lock(self.runtime.outlier());
        h.catch_up(now, origin, s);
        h.is_ejected()
    }
}

impl Cluster {
    /// Outlier detection in force (defaults applied), if configured.
    pub fn outlier_settings(&self) -> Option<&OutlierSettings> {
        self.outlier.as_deref()
    }

    /// Whether `target` is ejected at `now`.
    pub fn is_ejected(&self, target: SocketAddr, now: Instant) -> bool {
        match (self.outlier.as_ref(), self.endpoint(target)) {
            (Some(s), Some(e)) => e.ejected_at(now, self.runtime.origin, s),
            _ => false,
        }
    }

    /// What Envoy's cluster statistics count, since start (they survive reloads with the
    /// cluster's runtime state).
    pub fn stats(&self, now: Instant) -> ClusterStats {
        use crate::pool::PoolResource::*;
        let pool = &self.runtime.pool;
        ClusterStats {
            upstream_rq_retry: pool.retries(),
            upstream_rq_retry_overflow: pool.overflows(Retry),
            upstream_cx_overflow: pool.overflows(Connection),
            upstream_rq_pending_overflow: pool.overflows(PendingRequest) + pool.overflows(Request),
            ejections_enforced_total: self
                .runtime
                .ejections
                .load(std::sync::atomic::Ordering::Relaxed),
            ejections_active: self.ejected(now).len() as u64,
        }
    }

    /// Targets ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let Some(s) = self.outlier.as_ref() else {
            return Vec::new();
        };
        self.endpoints
            .iter()
            .filter(|e| e.ejected_at(now, self.runtime.origin, s))
            .map(|e| e.target())
            .collect()
    }

    /// Feed outlier detection with the outcome of one attempt on `target`.
    /// Report only what the upstream caused (not local 503s such as `UO`).
    /// Returns the ejection this outcome caused, if any. A no-op without
    /// `outlierDetection` or for an unknown target.
    pub fn report(&self, target: SocketAddr, outcome: Outcome, now: Instant) -> Option<Ejection> {
        let s = self.outlier.as_ref()?;
        let origin = self.runtime.origin;
        let e = self.endpoint(target)?;
        let fired = {
            let mut h = lock(e.runtime.outlier());
            h.catch_up(now, origin, s);
            h.record(outcome.status(), s)
        };
        let kinds = [
            (fired.gateway, EjectionKind::ConsecutiveGatewayErrors),
            (fired.five_xx, EjectionKind::Consecutive5xx),
        ];
        let mut result = None;
        for (_, kind) in kinds.into_iter().filter(|(f, _)| *f) {
            let _decision = lock(&self.runtime.eject_lock);
            let ejected = self
                .endpoints
                .iter()
                .filter(|o| o.ejected_at(now, origin, s))
                .count();
            let mut h = lock(e.runtime.outlier());
            if h.is_ejected() {
                continue; // Envoy ignores detections on an ejected host
            }
            if may_eject(ejected, self.endpoints.len(), s.max_ejection_percent) {
                let duration = h.eject(now, s);
                self.runtime
                    .ejections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                result = Some(Ejection {
                    target,
                    kind,
                    ejections: h.num_ejections(),
                    duration,
                });
            }
            h.reset(kind);
        }
        result
    }
}

impl ClusterStats {
    /// Each figure with its Envoy stat name (`cluster.<name>.<stat>`) and what it counts.
    pub fn named(&self) -> [(&'static str, &'static str, u64); 6] {
        [
            ("upstream_rq_retry", "Retries made", self.upstream_rq_retry),
            (
                "upstream_rq_retry_overflow",
                "Retries not made: the DestinationRule's http.maxRetries was reached",
                self.upstream_rq_retry_overflow,
            ),
            (
                "upstream_cx_overflow",
                "Connections refused by the DestinationRule's tcp.maxConnections",
                self.upstream_cx_overflow,
            ),
            (
                "upstream_rq_pending_overflow",
                "Requests refused by http.http1MaxPendingRequests or http.http2MaxRequests",
                self.upstream_rq_pending_overflow,
            ),
            (
                "outlier_detection.ejections_enforced_total",
                "Outlier ejections made",
                self.ejections_enforced_total,
            ),
            (
                "outlier_detection.ejections_active",
                "Endpoints ejected now",
                self.ejections_active,
            ),
        ]
    }
}

/// One cluster's statistics under Envoy's names (`envoy_cluster_<name>{cluster_name}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Retries made.
    pub upstream_rq_retry: u64,
    /// Retries not made: `http.maxRetries` was reached.
    pub upstream_rq_retry_overflow: u64,
    /// `tcp.maxConnections` refused a connection.
    pub upstream_cx_overflow: u64,
    /// `http.http1MaxPendingRequests` or `http.http2MaxRequests` refused a request.
    pub upstream_rq_pending_overflow: u64,
    /// Outlier ejections made.
    pub ejections_enforced_total: u64,
    /// Endpoints ejected now.
    pub ejections_active: u64,
}
