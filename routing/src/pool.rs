//! Connection-pool circuit breakers (Envoy cluster thresholds, from Istio's
//! `connectionPool`): counters per cluster, RAII guards.
//!
//! Counters live in an `Arc` shared by the cluster and every guard, so a
//! guard may outlive the snapshot it came from. Across a config reload the
//! counters are carried over to the new snapshot's cluster of the same name
//! (see [`crate::Snapshot::carry_over_state`]): requests still in flight on
//! the old snapshot keep counting against the limits, which the new
//! snapshot's policy sets. Without the carry-over a reload would start every
//! count at zero and briefly allow up to twice the limit.

use crate::policy::PoolLimits;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A limited resource of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolResource {
    /// An open upstream connection (HBONE tunnel): `tcp.maxConnections`.
    Connection,
    /// A request waiting for a connection (connection attempt in progress):
    /// `http.http1MaxPendingRequests`.
    PendingRequest,
    /// A request in flight: `http.http2MaxRequests`.
    Request,
    /// A retry in flight: `http.maxRetries`.
    Retry,
}

impl PoolResource {
    pub const ALL: [PoolResource; 4] = [
        PoolResource::Connection,
        PoolResource::PendingRequest,
        PoolResource::Request,
        PoolResource::Retry,
    ];

    fn index(self) -> usize {
        match self {
            PoolResource::Connection => 0,
            PoolResource::PendingRequest => 1,
            PoolResource::Request => 2,
            PoolResource::Retry => 3,
        }
    }

    /// The limit of this resource.
    pub fn limit(self, l: &PoolLimits) -> u32 {
        match self {
            PoolResource::Connection => l.max_connections,
            PoolResource::PendingRequest => l.max_pending_requests,
            PoolResource::Request => l.max_requests,
            PoolResource::Retry => l.max_retries,
        }
    }

    /// The Istio field that sets the limit.
    pub fn field(self) -> &'static str {
        match self {
            PoolResource::Connection => "tcp.maxConnections",
            PoolResource::PendingRequest => "http.http1MaxPendingRequests",
            PoolResource::Request => "http.http2MaxRequests",
            PoolResource::Retry => "http.maxRetries",
        }
    }
}

/// A circuit breaker is open: the proxy answers 503 with response flag `UO`
/// (for [`PoolResource::Retry`]: do not retry, keep the previous failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub resource: PoolResource,
    pub limit: u32,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} limit {} reached", self.resource.field(), self.limit)
    }
}

impl std::error::Error for Overflow {}

/// Counters of one cluster: units in use, and since start the overflows of each resource and
/// the retries let through (Envoy's `upstream_rq_retry`).
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    counts: [AtomicU64; 4],
    overflows: [AtomicU64; 4],
    retries: AtomicU64,
}

impl PoolCounters {
    pub(crate) fn in_use(&self, r: PoolResource) -> u64 {
        self.counts[r.index()].load(Ordering::Relaxed)
    }

    /// Times `r`'s limit refused a unit.
    pub(crate) fn overflows(&self, r: PoolResource) -> u64 {
        self.overflows[r.index()].load(Ordering::Relaxed)
    }

    /// Retries the retry budget let through.
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Take one unit of `r` if fewer than `limit` are in use.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        r: PoolResource,
        limit: u32,
    ) -> Result<PoolGuard, Overflow> {
        self.counts[r.index()]
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < u64::from(limit)).then_some(n + 1)
            })
            .map(|_| {
                if r == PoolResource::Retry {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                PoolGuard {
                    counters: Some(self.clone()),
                    resource: r,
                }
            })
            .map_err(|_| {
                self.overflows[r.index()].fetch_add(1, Ordering::Relaxed);
                Overflow { resource: r, limit }
            })
    }
}

/// A cluster's circuit breakers apart from its snapshot, cheap to clone: for a resource taken
/// after the request that chose the cluster (a tunnel opened later, under `tcp.maxConnections`).
/// Like the cluster's own counters, it counts across config reloads.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    counters: Arc<PoolCounters>,
    limits: PoolLimits,
}

impl PoolHandle {
    pub(crate) fn new(counters: Arc<PoolCounters>, limits: PoolLimits) -> Self {
        PoolHandle { counters, limits }
    }

    /// Take one unit of `resource`, or [`Overflow`] at the limit.
    pub fn try_acquire(&self, resource: PoolResource) -> Result<PoolGuard, Overflow> {
        self.counters
            .try_acquire(resource, resource.limit(&self.limits))
    }

    /// Whether both count for the same cluster.
    pub fn same_cluster(&self, other: &PoolHandle) -> bool {
        Arc::ptr_eq(&self.counters, &other.counters)
    }
}

/// Holds one unit of a cluster resource until dropped.
#[derive(Debug)]
#[must_use = "the resource is held only while the guard lives"]
pub struct PoolGuard {
    counters: Option<Arc<PoolCounters>>,
    resource: PoolResource,
}

impl PoolGuard {
    pub fn resource(&self) -> PoolResource {
        self.resource
    }

    /// A guard that holds nothing (e.g. no cluster).
    pub fn detached(resource: PoolResource) -> Self {
        PoolGuard {
            counters: None,
            resource,
        }
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Some(c) = self.counters.take() {
            c.counts[self.resource.index()].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_at_limit_and_release_on_drop() {
        let c = Arc::new(PoolCounters::default());
        let r = PoolResource::Request;
        let g1 = c.try_acquire(r, 2).unwrap();
        let g2 = c.try_acquire(r, 2).unwrap();
        let e = c.try_acquire(r, 2).unwrap_err();
        assert_eq!(
            e,
            Overflow {
                resource: r,
                limit: 2
            }
        );
        assert_eq!(e.to_string(), "http.http2MaxRequests limit 2 reached");
        assert_eq!(c.in_use(r), 2);
        assert_eq!(c.in_use(PoolResource::Retry), 0);
        drop(g1);
        assert_eq!(c.in_use(r), 1);
        let g3 = c.try_acquire(r, 2).unwrap();
        drop((g2, g3));
        assert_eq!(c.in_use(r), 0);
        assert!(c.try_acquire(PoolResource::Retry, 0).is_err());
        drop(PoolGuard::detached(r));
        assert_eq!(c.in_use(r), 0);
    }

    #[test]
    fn concurrent_acquire_never_exceeds_limit() {
        let c = Arc::new(PoolCounters::default());
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, peak) = (c.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(g) = c.try_acquire(PoolResource::Connection, 3) {
                            peak.fetch_max(c.in_use(PoolResource::Connection), Ordering::Relaxed);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(c.in_use(PoolResource::Connection), 0);
    }
}
