//! Priority levels and localities: how Envoy narrows the endpoints a pick may use.

use super::pick::weighted_index;
use super::{Cluster, ClusterEndpoint};
use crate::model::Locality;
use crate::outlier::in_panic;
use rand::Rng;
use std::net::SocketAddr;
use std::time::Instant;

/// Envoy's default overprovisioning factor (istiod sends no
/// `policy.overprovisioning_factor`), in percent.
pub const OVERPROVISIONING_FACTOR: u64 = 140;

/// The endpoints of a cluster by priority level (ascending) and, within a
/// level, by locality: indices into [`Cluster::endpoints`], computed once.
#[derive(Debug)]
pub(super) struct Levels {
    /// `locality_weighted_lb_config`: pick a locality by weight first.
    pub(super) weighted: bool,
    pub(super) levels: Vec<Level>,
}

#[derive(Debug)]
pub(super) struct Level {
    hosts: Vec<usize>,
    /// (weight, hosts) per locality.
    localities: Vec<(u32, Vec<usize>)>,
}

impl Levels {
    /// `None` when there is nothing to choose: one level and no locality weighting.
    pub(super) fn new(endpoints: &[ClusterEndpoint], weighted: bool) -> Option<Self> {
        use std::collections::BTreeMap;
        // The common case, without grouping by locality (a string comparison per endpoint).
        let one_level = |first: &ClusterEndpoint| {
            endpoints
                .iter()
                .all(|e| e.placement.priority == first.placement.priority)
        };
        if !weighted && endpoints.first().is_none_or(one_level) {
            return None;
        }
        let mut by: BTreeMap<u32, BTreeMap<&Locality, (u32, Vec<usize>)>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            by.entry(e.placement.priority)
                .or_default()
                .entry(&e.placement.locality)
                .or_insert((e.placement.locality_weight, Vec::new()))
                .1
                .push(i);
        }
        if by.len() <= 1 && !weighted {
            return None;
        }
        let levels = by
            .into_values()
            .map(|locs| {
                let localities: Vec<(u32, Vec<usize>)> = locs.into_values().collect();
                Level {
                    hosts: localities.iter().flat_map(|(_, h)| h.clone()).collect(),
                    localities,
                }
            })
            .collect();
        Some(Levels { weighted, levels })
    }
}

/// Load per priority level (percent, summing to 100, or all 0 when nothing
/// can take load) and whether each level is in panic, from each level's
/// `(healthy, hosts)`, as Envoy computes them (`LoadBalancerBase`
/// `recalculatePerPriorityState` / `recalculatePerPriorityPanic`):
///
/// - a level's health is `min(100, 1.4 × healthy %)`;
/// - load fills P0 up to its health, the rest spills to P1, and so on; when the
///   healths add up to less than 100 they are scaled up to 100 (rounding
///   remainder to the first level with health);
/// - a level is in panic when its healthy % is below `panic_threshold` (then
///   it balances over all its hosts); when every level is, the load follows
///   the host counts instead.
pub fn priority_loads(levels: &[(usize, usize)], panic_threshold: u8) -> (Vec<u32>, Vec<bool>) {
    let n = levels.len();
    let mut load = vec![0u32; n];
    let health: Vec<u64> = levels
        .iter()
        .map(|&(healthy, hosts)| {
            if hosts == 0 {
                0
            } else {
                (OVERPROVISIONING_FACTOR * healthy as u64 / hosts as u64).min(100)
            }
        })
        .collect();
    let total: u64 = health.iter().sum::<u64>().min(100);
    let threshold = panic_threshold.min(100);
    if total == 0 && threshold == 0 {
        // Panic disabled and nothing healthy: no host at all.
        return (load, vec![false; n]);
    }
    let panic: Vec<bool> = levels
        .iter()
        .map(|&(healthy, hosts)| total == 0 || in_panic(healthy, hosts, threshold))
        .collect();
    if panic.iter().all(|p| *p) {
        let all: usize = levels.iter().map(|l| l.1).sum();
        if all == 0 {
            return (load, panic);
        }
        let mut left = 100u32;
        for (i, &(_, hosts)) in levels.iter().enumerate() {
            load[i] = (100 * hosts / all) as u32;
            left -= load[i];
        }
        if let Some(first) = levels.iter().position(|l| l.1 > 0) {
            load[first] += left;
        }
        return (load, panic);
    }
    let mut left = 100u64;
    for (i, h) in health.iter().enumerate() {
        let share = (h * 100 / total).min(left);
        load[i] = share as u32;
        left -= share;
    }
    if let Some(first) = health.iter().position(|h| *h > 0) {
        load[first] += left as u32;
    }
    (load, panic)
}

impl Cluster {
    /// The endpoints this pick may use, as Envoy narrows them: a priority level
    /// by the health-based spill ([`priority_loads`]), then, unless the level is
    /// in panic, its healthy endpoints — of one locality picked by
    /// `weight × min(1, 1.4 × healthy share)` when locality-weighted. When the
    /// request's `exclude` leaves nothing there, the level's other usable
    /// endpoints, then those of every level with load. `None`: no level
    /// can take load.
    pub(super) fn level_candidates<R: Rng + ?Sized>(
        &self,
        levels: &Levels,
        exclude: &[SocketAddr],
        now: Instant,
        rng: &mut R,
    ) -> Option<Vec<bool>> {
        let healthy: Vec<bool> = match self.outlier.as_ref() {
            Some(s) => self
                .endpoints
                .iter()
                .map(|e| !e.ejected_at(now, self.runtime.origin, s))
                .collect(),
            None => vec![true; self.endpoints.len()],
        };
        let count = |hosts: &[usize]| hosts.iter().filter(|&&i| healthy[i]).count();
        let per_level: Vec<(usize, usize)> = levels
            .levels
            .iter()
            .map(|l| (count(&l.hosts), l.hosts.len()))
            .collect();
        let threshold = self.outlier.as_ref().map_or(0, |s| s.min_health_percent);
        let (load, panic) = priority_loads(&per_level, threshold);
        let mut x = rng.gen_range(0..100u32);
        let chosen = load.iter().position(|&l| {
            if x < l {
                true
            } else {
                x -= l;
                false
            }
        })?;
        let usable_in = |p: usize, i: usize| panic[p] || healthy[i];
        let open = |i: &usize| !exclude.contains(&self.endpoints[*i].target());
        let level = &levels.levels[chosen];
        let mut mask = vec![false; self.endpoints.len()];
        if levels.weighted && !panic[chosen] {
            let weights: Vec<f64> = level
                .localities
                .iter()
                .map(|(w, hosts)| {
                    let share = count(hosts) as f64 / hosts.len() as f64;
                    f64::from(*w) * (OVERPROVISIONING_FACTOR as f64 / 100.0 * share).min(1.0)
                })
                .collect();
            if let Some(k) = weighted_index(&weights, rng.gen()) {
                let hosts = &level.localities[k].1;
                if hosts.iter().any(|i| healthy[*i] && open(i)) {
                    for &i in hosts.iter().filter(|i| healthy[**i]) {
                        mask[i] = true;
                    }
                    return Some(mask);
                }
            }
        }
        if level.hosts.iter().any(|i| usable_in(chosen, *i) && open(i)) {
            for &i in level.hosts.iter().filter(|i| usable_in(chosen, **i)) {
                mask[i] = true;
            }
            return Some(mask);
        }
        for (p, l) in levels
            .levels
            .iter()
            .enumerate()
            .filter(|(p, _)| load[*p] > 0)
        {
            for &i in l.hosts.iter().filter(|i| usable_in(p, **i)) {
                mask[i] = true;
            }
        }
        Some(mask)
    }
}
