//! Rate-limited logging for events a peer can repeat at will (failed handshakes, accept errors):
//! at most one line per reason per interval, and that line says how many were left out since
//! the previous one. The counters in the metrics stay exact; only the log lines are thinned.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often one reason may log a line when peers repeat it.
pub const PEER_EVENT_INTERVAL: Duration = Duration::from_secs(10);

/// One line per reason per interval; the keys are a fixed set of `&'static str` reasons, so the
/// map stays small whatever the peers do.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    reasons: Mutex<HashMap<&'static str, Slot>>,
}

#[derive(Debug)]
struct Slot {
    last: Instant,
    suppressed: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(PEER_EVENT_INTERVAL)
    }
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            reasons: Mutex::new(HashMap::new()),
        }
    }

    /// An event of `reason` happened. `Some(n)` when it should be logged now, `n` being how many
    /// events of that reason were not logged since the previous line; `None` to stay quiet.
    pub fn allow(&self, reason: &'static str) -> Option<u64> {
        self.allow_at(reason, Instant::now())
    }

    fn allow_at(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock();
        match reasons.get_mut(reason) {
            None => {
                reasons.insert(
                    reason,
                    Slot {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            Some(slot) if now.saturating_duration_since(slot.last) >= self.interval => {
                let suppressed = std::mem::take(&mut slot.suppressed);
                slot.last = now;
                Some(suppressed)
            }
            Some(slot) => {
                slot.suppressed += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_with_the_count_left_out() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow_at("tls", start), Some(0));
        for i in 1..=99 {
            assert_eq!(t.allow_at("tls", start + Duration::from_millis(i)), None);
        }
        // Another reason has its own budget.
        assert_eq!(t.allow_at("alpn", start), Some(0));
        assert_eq!(t.allow_at("tls", start + Duration::from_secs(10)), Some(99));
        assert_eq!(t.allow_at("tls", start + Duration::from_secs(11)), None);
        assert_eq!(t.allow_at("tls", start + Duration::from_secs(21)), Some(1));
    }
}
