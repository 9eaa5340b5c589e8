//! Picking an endpoint: round robin, least request, random, consistent hash, each with
//! outlier ejections, warmup and the request's exclusions applied.

use super::{Cluster, ClusterEndpoint};
use crate::model::LbPolicy;
use crate::outlier::in_panic;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Index into `weights` for `u ∈ [0, 1)`, proportional to the weights.
pub(super) fn weighted_index(weights: &[f64], u: f64) -> Option<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = u * total;
    let mut last = None;
    for (i, w) in weights.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        if x < *w {
            return Some(i);
        }
        x -= w;
        last = Some(i);
    }
    last
}

/// Weyl sequence with the golden ratio: evenly spread points in [0, 1).
pub(super) fn golden(n: usize) -> f64 {
    (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as f64 / 18_446_744_073_709_551_616.0
}

impl Cluster {
    /// Pick an endpoint by the LB policy, skipping those whose `target` is in
    /// `exclude` (retries on another endpoint) and ejected ones. `None` if
    /// nothing is left. Consistent-hash clusters pick at random here (as
    /// Envoy does for a request without hash key); use [`Cluster::pick_hashed`].
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<&ClusterEndpoint> {
        self.pick_at(None, exclude, Instant::now(), &mut rand::thread_rng())
    }

    /// [`Cluster::pick`] with the request's hash ([`Cluster::request_hash`]):
    /// the same hash maps to the same endpoint while it is available; when it
    /// is excluded or ejected, to the next one on the ring / table. Non-hash
    /// policies ignore the hash.
    pub fn pick_hashed(&self, hash: u64, exclude: &[SocketAddr]) -> Option<&ClusterEndpoint> {
        self.pick_at(Some(hash), exclude, Instant::now(), &mut rand::thread_rng())
    }

    /// The pick for an attempt of a request that already `tried` these
    /// endpoints. With `avoid_tried` (Envoy's `previous_hosts` retry
    /// predicate) the tried ones are skipped while another is usable;
    /// otherwise — or when every usable endpoint was tried — any may be
    /// picked again, as Envoy's load balancer falls back to the last host it
    /// picked. So a retry to a one-endpoint cluster goes to that endpoint.
    /// (Envoy re-picks at most `host_selection_retry_max_attempts` times and
    /// may, rarely, return to a tried host while another exists; skipping
    /// them outright is that loop's likely outcome without the chance.)
    pub fn pick_attempt(
        &self,
        hash: Option<u64>,
        tried: &[SocketAddr],
        avoid_tried: bool,
    ) -> Option<&ClusterEndpoint> {
        let (now, rng) = (Instant::now(), &mut rand::thread_rng());
        if avoid_tried && !tried.is_empty() {
            if let Some(e) = self.pick_at(hash, tried, now, rng) {
                return Some(e);
            }
        }
        self.pick_at(hash, &[], now, rng)
    }

    /// The general pick: explicit hash, time (outlier un-ejection, warmup)
    /// and randomness (RANDOM, LEAST_REQUEST, missing hash).
    pub fn pick_at<R: Rng + ?Sized>(
        &self,
        hash: Option<u64>,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut R,
    ) -> Option<&ClusterEndpoint> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let mask = match &self.levels {
            None => self.usable(now),
            Some(levels) => Some(self.level_candidates(levels, exclude, now, rng)?),
        };
        let allowed = |i: usize| {
            mask.as_ref().is_none_or(|u| u[i]) && !exclude.contains(&self.endpoints[i].target())
        };
        if !(0..n).any(allowed) {
            return None;
        }
        let i = match self.lb {
            LbPolicy::RingHash | LbPolicy::Maglev => {
                let h = hash.unwrap_or_else(|| rng.gen());
                self.table.as_ref()?.lookup(h, allowed)
            }
            LbPolicy::Random => {
                let cands: Vec<usize> = (0..n).filter(|&i| allowed(i)).collect();
                Some(cands[rng.gen_range(0..cands.len())])
            }
            LbPolicy::RoundRobin => self.pick_round_robin(&allowed, now),
            LbPolicy::LeastRequest | LbPolicy::Passthrough => {
                self.pick_least_request(&allowed, now, rng)
            }
        }?;
        Some(&self.endpoints[i])
    }

    /// Plain rotation; while endpoints warm up, a weighted rotation (an evenly
    /// spread sequence over the cumulative weights).
    fn pick_round_robin(&self, allowed: &dyn Fn(usize) -> bool, now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        let tick = self.runtime.rr.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = self.warm_weights(allowed, now) {
            return weighted_index(&w, golden(tick));
        }
        if self.levels.is_none() {
            return (0..n).map(|k| (tick + k) % n).find(|&i| allowed(i));
        }
        // A level or locality is a subset: rotate over it alone, so skipped
        // endpoints do not hand their turn to the next allowed one.
        let cands: Vec<usize> = (0..n).filter(|&i| allowed(i)).collect();
        (!cands.is_empty()).then(|| cands[tick % cands.len()])
    }

    /// Power of two choices on active requests (Istio's default). While
    /// endpoints warm up: a weighted random choice by
    /// `weight / (active + 1)`, Envoy's effective weight for unequal weights.
    fn pick_least_request<R: Rng + ?Sized>(
        &self,
        allowed: &dyn Fn(usize) -> bool,
        now: Instant,
        rng: &mut R,
    ) -> Option<usize> {
        if let Some(w) = self.warm_weights(allowed, now) {
            let eff: Vec<f64> = w
                .iter()
                .zip(&self.endpoints)
                .map(|(w, e)| w / (e.active() as f64 + 1.0))
                .collect();
            return weighted_index(&eff, rng.gen());
        }
        let cands: Vec<usize> = (0..self.endpoints.len()).filter(|&i| allowed(i)).collect();
        match cands.len() {
            0 => None,
            1 => Some(cands[0]),
            len => {
                let a = rng.gen_range(0..len);
                let mut b = rng.gen_range(0..len - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (cands[a], cands[b]);
                Some(
                    if self.endpoints[eb].active() < self.endpoints[ea].active() {
                        eb
                    } else {
                        ea
                    },
                )
            }
        }
    }

    /// Slow-start weights of the allowed endpoints (0 for the others), or
    /// `None` when there is no warmup or all allowed weights are equal.
    fn warm_weights(&self, allowed: &dyn Fn(usize) -> bool, now: Instant) -> Option<Vec<f64>> {
        let warmup = *self.warmup.as_deref()?;
        let w: Vec<f64> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if allowed(i) {
                    warmup.weight(now.saturating_duration_since(e.added()))
                } else {
                    0.0
                }
            })
            .collect();
        let mut live = w.iter().filter(|x| **x > 0.0);
        let first = *live.next()?;
        live.any(|x| (x - first).abs() > 1e-9).then_some(w)
    }

    /// Slow-start weight factor of `target` at `now` (1 without warmup or
    /// once warm); `None` if `target` is not in the cluster.
    pub fn weight(&self, target: SocketAddr, now: Instant) -> Option<f64> {
        let e = self.endpoint(target)?;
        Some(
            self.warmup
                .as_deref()
                .map_or(1.0, |w| w.weight(now.saturating_duration_since(e.added()))),
        )
    }

    /// `Some(mask)` of endpoints not ejected; `None` = all usable (no
    /// detector, nothing ejected, or below the panic threshold).
    fn usable(&self, now: Instant) -> Option<Vec<bool>> {
        let s = self.outlier.as_ref()?;
        let origin = self.runtime.origin;
        let mask: Vec<bool> = self
            .endpoints
            .iter()
            .map(|e| !e.ejected_at(now, origin, s))
            .collect();
        let healthy = mask.iter().filter(|u| **u).count();
        if healthy == mask.len() || in_panic(healthy, mask.len(), s.min_health_percent) {
            return None;
        }
        Some(mask)
    }
}
