//! Outlier detection (Envoy's consecutive-5xx and consecutive-gateway-error
//! detectors, as Istio configures them), per endpoint of a cluster.
//!
//! Semantics follow Envoy's `outlier_detection_impl.cc`:
//! - every 5xx increments the 5xx counter, every 502/503/504 the gateway
//!   counter, anything else resets both; a non-gateway 5xx resets the gateway
//!   counter. Connect failures and resets count as 503, timeouts as 504
//!   (Envoy without `split_external_local_origin_errors`).
//! - a detector fires when its counter *reaches* its threshold; the host is
//!   ejected at once if that keeps the ejected share ≤ `maxEjectionPercent`
//!   (`100·(ejected+1)/hosts ≤ max`; Envoy's `always_eject_one_host` is off in
//!   Istio). The fired counter is reset either way.
//! - ejection lasts `min(base · backoff, max_ejection_time)`; `backoff` grows
//!   by one per ejection and shrinks by one per `interval` tick the host
//!   spends healthy after its last un-ejection.
//! - un-ejection happens only on `interval` ticks (a grid starting when the
//!   cluster's detector was created); here the ticks are replayed lazily, in
//!   closed form, whenever the host is looked at with a `now`.
//! - counters of an ejected host keep counting but cannot eject it again; all
//!   counters reset on un-ejection.

use crate::policy::OutlierSettings;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What happened to one attempt on an endpoint, as the proxy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// Dialing the endpoint (HBONE tunnel included) failed: counts as 503.
    ConnectFailure,
    /// The stream was reset / the connection broke after connecting: 503.
    Reset,
    /// The attempt timed out: 504.
    Timeout,
}

impl Outcome {
    /// The HTTP status this outcome counts as.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Status(s) => s,
            Outcome::ConnectFailure | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        }
    }
}

/// Which detector ejected a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectionKind {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
}

/// An ejection that just happened (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub target: SocketAddr,
    pub kind: EjectionKind,
    /// How many times this endpoint has been ejected so far.
    pub ejections: u32,
    /// How long this ejection lasts at least (un-ejection waits for the next
    /// `interval` tick after it).
    pub duration: Duration,
}

/// Detectors that reached their threshold on one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fired {
    pub gateway: bool,
    pub five_xx: bool,
}

/// Outlier state of one endpoint in one cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostOutlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_at: Option<Instant>,
    /// Envoy's `ejectTimeBackoff`.
    backoff: u32,
    num_ejections: u32,
    last_uneject: Option<Instant>,
    /// Time of the last interval tick already replayed.
    swept: Option<Instant>,
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

/// Index of the last tick at or before `t` (ticks are `origin + j·iv`, j ≥ 1).
fn tick_floor(origin: Instant, t: Instant, iv: Duration) -> u64 {
    (nanos(t.saturating_duration_since(origin)) / nanos(iv)) as u64
}

/// Index of the first tick at or after `t`.
fn tick_ceil(origin: Instant, t: Instant, iv: Duration) -> u64 {
    nanos(t.saturating_duration_since(origin)).div_ceil(nanos(iv)) as u64
}

fn tick_time(origin: Instant, j: u64, iv: Duration) -> Instant {
    let n = nanos(iv).saturating_mul(u128::from(j));
    origin + Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

impl HostOutlier {
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_at.is_some()
    }

    pub(crate) fn num_ejections(&self) -> u32 {
        self.num_ejections
    }

    /// How long the current (or next) ejection lasts.
    pub(crate) fn ejection_duration(&self, s: &OutlierSettings) -> Duration {
        s.base_ejection_time
            .checked_mul(self.backoff)
            .unwrap_or(Duration::MAX)
            .min(s.max_ejection_time)
    }

    /// Replay the interval ticks in `(swept, now]`: un-eject when due, then
    /// decrement the backoff once per later tick the host stays healthy.
    pub(crate) fn catch_up(&mut self, now: Instant, origin: Instant, s: &OutlierSettings) {
        let iv = s.interval.max(Duration::from_millis(1));
        let k_now = tick_floor(origin, now, iv);
        let k_done = self.swept.map_or(0, |t| tick_floor(origin, t, iv));
        if k_now <= k_done {
            return;
        }
        let mut from = k_done + 1;
        if let Some(at) = self.ejected_at {
            let due = at + self.ejection_duration(s);
            let j = tick_ceil(origin, due, iv).max(from);
            if j > k_now {
                self.swept = Some(tick_time(origin, k_now, iv));
                return;
            }
            self.uneject(tick_time(origin, j, iv));
            from = j + 1;
        }
        if let (Some(u), true) = (self.last_uneject, self.backoff > 0) {
            // healthy ticks at least one interval after the last un-ejection
            let j_min = tick_ceil(origin, u + iv, iv).max(from);
            if j_min <= k_now {
                let n = u32::try_from(k_now - j_min + 1).unwrap_or(u32::MAX);
                self.backoff = self.backoff.saturating_sub(n);
            }
        }
        self.swept = Some(tick_time(origin, k_now, iv));
    }

    fn uneject(&mut self, at: Instant) {
        self.ejected_at = None;
        self.last_uneject = Some(at);
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
    }

    /// Count one outcome's status.
    pub(crate) fn record(&mut self, status: u16, s: &OutlierSettings) -> Fired {
        let mut fired = Fired::default();
        if (500..600).contains(&status) {
            if matches!(status, 502..=504) {
                self.consecutive_gateway = self.consecutive_gateway.saturating_add(1);
                fired.gateway =
                    s.consecutive_gateway > 0 && self.consecutive_gateway == s.consecutive_gateway;
            } else {
                self.consecutive_gateway = 0;
            }
            self.consecutive_5xx = self.consecutive_5xx.saturating_add(1);
            fired.five_xx = s.consecutive_5xx > 0 && self.consecutive_5xx == s.consecutive_5xx;
        } else {
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
        }
        fired
    }

    pub(crate) fn reset(&mut self, kind: EjectionKind) {
        match kind {
            EjectionKind::Consecutive5xx => self.consecutive_5xx = 0,
            EjectionKind::ConsecutiveGatewayErrors => self.consecutive_gateway = 0,
        }
    }

    /// Eject now; returns the ejection's duration.
    pub(crate) fn eject(&mut self, now: Instant, s: &OutlierSettings) -> Duration {
        self.ejected_at = Some(now);
        self.num_ejections = self.num_ejections.saturating_add(1);
        let grown = s
            .base_ejection_time
            .checked_mul(self.backoff)
            .unwrap_or(Duration::MAX);
        if grown < s.max_ejection_time.saturating_add(s.base_ejection_time) {
            self.backoff += 1;
        }
        self.ejection_duration(s)
    }
}

/// Whether ejecting one more of `hosts` keeps the ejected share within
/// `max_percent` (Envoy's `ejectHost`).
pub(crate) fn may_eject(ejected: usize, hosts: usize, max_percent: u8) -> bool {
    hosts > 0 && 100.0 * (ejected + 1) as f64 / hosts as f64 <= f64::from(max_percent)
}

/// Whether the healthy share is below the panic threshold (then ejections are
/// ignored and every endpoint is used).
pub(crate) fn in_panic(healthy: usize, hosts: usize, min_health_percent: u8) -> bool {
    hosts > 0 && 100.0 * (healthy as f64) / (hosts as f64) < f64::from(min_health_percent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OutlierDetection;

    fn settings() -> OutlierSettings {
        OutlierDetection {
            consecutive_5xx_errors: Some(3),
            interval: Some(Duration::from_secs(1)),
            base_ejection_time: Some(Duration::from_secs(10)),
            ..Default::default()
        }
        .settings()
    }

    #[test]
    fn counting() {
        let s = OutlierSettings {
            consecutive_gateway: 2,
            ..settings()
        };
        let mut h = HostOutlier::default();
        assert_eq!(h.record(500, &s), Fired::default());
        assert_eq!(h.record(502, &s), Fired::default());
        // gateway counter reached 2 and 5xx counter 3 on the same response
        assert_eq!(
            h.record(503, &s),
            Fired {
                gateway: true,
                five_xx: true
            }
        );
        assert_eq!(h.record(200, &s), Fired::default());
        assert_eq!(h.consecutive_5xx, 0);
        h.record(502, &s);
        h.record(500, &s); // non-gateway 5xx resets the gateway counter only
        assert_eq!((h.consecutive_5xx, h.consecutive_gateway), (2, 0));
        assert_eq!(Outcome::ConnectFailure.status(), 503);
        assert_eq!(Outcome::Reset.status(), 503);
        assert_eq!(Outcome::Timeout.status(), 504);
    }

    #[test]
    fn ejection_backoff_and_ticks() {
        let s = settings();
        let t0 = Instant::now();
        let mut h = HostOutlier::default();
        let at = t0 + Duration::from_millis(1500);
        h.catch_up(at, t0, &s);
        assert_eq!(h.eject(at, &s), Duration::from_secs(10));
        // due at 11.5 s, un-ejected on the 12 s tick
        h.catch_up(t0 + Duration::from_millis(11_900), t0, &s);
        assert!(h.is_ejected());
        h.catch_up(t0 + Duration::from_secs(12), t0, &s);
        assert!(!h.is_ejected());
        assert_eq!(h.last_uneject, Some(t0 + Duration::from_secs(12)));
        // ejected again before the next tick: twice as long
        let at2 = t0 + Duration::from_millis(12_500);
        h.catch_up(at2, t0, &s);
        assert_eq!(h.eject(at2, &s), Duration::from_secs(20));
        assert_eq!(h.num_ejections(), 2);
        h.catch_up(t0 + Duration::from_secs(32), t0, &s);
        assert!(h.is_ejected());
        h.catch_up(t0 + Duration::from_secs(33), t0, &s);
        assert!(!h.is_ejected());
        // healthy for 2 ticks after the tick of un-ejection: backoff 2 → 0
        h.catch_up(t0 + Duration::from_secs(35), t0, &s);
        assert_eq!(h.backoff, 0);
        assert_eq!(
            h.eject(t0 + Duration::from_secs(36), &s),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn backoff_caps_at_max_ejection_time() {
        let s = OutlierSettings {
            base_ejection_time: Duration::from_secs(100),
            max_ejection_time: Duration::from_secs(300),
            ..settings()
        };
        let mut h = HostOutlier::default();
        let t = Instant::now();
        let durations: Vec<u64> = (0..6)
            .map(|_| {
                let d = h.eject(t, &s).as_secs();
                h.ejected_at = None;
                d
            })
            .collect();
        assert_eq!(durations, vec![100, 200, 300, 300, 300, 300]);
        assert_eq!(h.backoff, 4, "stops growing once base·backoff ≥ max + base");
    }

    #[test]
    fn shares() {
        assert!(!may_eject(0, 3, 10));
        assert!(may_eject(0, 10, 10));
        assert!(!may_eject(1, 10, 10));
        assert!(may_eject(2, 3, 100));
        assert!(!may_eject(0, 0, 100));
        assert!(in_panic(1, 3, 50));
        assert!(!in_panic(2, 3, 50));
        assert!(!in_panic(0, 3, 0));
    }
}
