//! The drain after SIGTERM and its deadline: one per [`crate::app::App`].
//!
//! Two moments. *Start* (SIGTERM): the HBONE listener closes, every connection sends GOAWAY,
//! HTTP/1.1 inside tunnels stops being kept alive. *Cut* ([`cut_margin`] before the drain time
//! is up): what is still in flight is ended on purpose. The cut fires through what is already
//! tracked per connection, never per request: every upstream HBONE connection drops (so pingora
//! sees the upstream fail and answers `503` when no response header was sent yet), every TCP
//! splice and every tunnel whose response had started is reset (RST_STREAM), and an inbound
//! connection still open a moment later is closed with GOAWAY `INTERNAL_ERROR`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How long before the end of the drain the cut fires: `min(1 s, drain / 4)`. The 503s and
/// resets must be written and reach the client (through its ztunnel) before the process exits;
/// a second is ample on a node, and a quarter keeps most of a short drain for the requests.
pub fn cut_margin(drain: Duration) -> Duration {
    (drain / 4).min(Duration::from_secs(1))
}

/// After the cut, inbound connections still open this long are closed with GOAWAY (the requests
/// the cut did not reach through their upstream: a direct endpoint, a wait before the upstream).
pub fn force_close_after(drain: Duration) -> Duration {
    cut_margin(drain) / 2
}

/// What became of the requests and TCP connections in flight during a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Ended on their own after SIGTERM, before the cut.
    Completed,
    /// Answered `503` (flag `LR`) by the waypoint at the cut: no response header had been sent.
    Responded503,
    /// Tunnel reset (RST_STREAM) at the cut: the response had started, or a TCP splice.
    Reset,
}

#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    cut: AtomicBool,
    cut_tx: watch::Sender<bool>,
    /// Milliseconds after the cut at which inbound connections still open are closed.
    force_close_ms: AtomicU64,
    completed: AtomicU64,
    responded_503: AtomicU64,
    reset: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            cut_tx: watch::channel(false).0,
            force_close_ms: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            responded_503: AtomicU64::new(0),
            reset: AtomicU64::new(0),
        }
    }
}

impl Drain {
    /// SIGTERM arrived: from now on responses close their HTTP/1.1 connection.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The deadline: end everything still in flight; inbound connections still open
    /// `force_close_after` later are closed.
    pub fn cut(&self, force_close_after: Duration) {
        self.start();
        self.force_close_ms
            .store(force_close_after.as_millis() as u64, Ordering::Release);
        self.cut.store(true, Ordering::Release);
        self.cut_tx.send_replace(true);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// How long after the cut inbound connections still open are closed.
    pub fn force_close_after(&self) -> Duration {
        Duration::from_millis(self.force_close_ms.load(Ordering::Acquire))
    }

    /// Resolves once [`Drain::cut`] was called (at once if it was). One per connection or
    /// splice, never per request.
    pub fn cut_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.cut_tx.subscribe();
        async move {
            // An error means the `Drain` is gone (a client dropped while its connections live
            // on): there will be no cut.
            if rx.wait_for(|cut| *cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Responded503 => &self.responded_503,
            Outcome::Reset => &self.reset,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (completed, responded 503, reset) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.completed.load(Ordering::Relaxed),
            self.responded_503.load(Ordering::Relaxed),
            self.reset.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_leaves_a_margin_of_at_most_a_second() {
        assert_eq!(cut_margin(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(
            cut_margin(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(cut_margin(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_cut_signal_fires_for_waiters_before_and_after_it() {
        let drain = Drain::default();
        let early = tokio::spawn(drain.cut_signal());
        assert!(!drain.is_cut());
        drain.cut(Duration::ZERO);
        assert!(drain.is_cut() && drain.is_draining());
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("a waiter from before the cut wakes")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), drain.cut_signal())
            .await
            .expect("a waiter from after the cut returns at once");
    }

    #[tokio::test]
    async fn a_dropped_drain_never_cuts() {
        let drain = Drain::default();
        let signal = drain.cut_signal();
        drop(drain);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), signal)
                .await
                .is_err(),
            "connections outliving their client's Drain must not be cut"
        );
    }
}
