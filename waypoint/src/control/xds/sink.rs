//! Where translated snapshots go: held until the data path exists, and incomplete states held
//! back until they are complete or have waited [`WARM_TIMEOUT`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use routing::Snapshot;
use tracing::warn;
use xds_client::ResourceState;

use crate::app::App;

/// How long an incomplete state waits for what it lacks before it is published anyway (Envoy's
/// default `initial_fetch_timeout`).
pub const WARM_TIMEOUT: Duration = Duration::from_secs(15);

/// Where translated snapshots go: held until the data path exists, then published to it.
pub struct SnapshotSink {
    state: Mutex<SinkState>,
    arrived: tokio::sync::Notify,
    /// The newest incomplete state, published by [`SnapshotSink::warm_timeouts`] when it has
    /// waited [`WARM_TIMEOUT`] and nothing complete came.
    incomplete: Mutex<Option<Incomplete>>,
    /// Counts what was offered: a deferred state translated at its warm timeout is published
    /// only if nothing was offered meanwhile.
    offers: AtomicU64,
    warm_timeout: Duration,
}

struct Incomplete {
    pending: Pending,
    /// What it lacks, for the warning.
    missing: String,
    /// When the first of a run of incomplete states arrived plus the warm timeout: a stream of
    /// incomplete pushes does not postpone it.
    deadline: Instant,
}

/// An incomplete state as the handler left it: translated, or not (then translated only if it
/// is still the newest when the warm timeout comes).
// One is held at a time: no box.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Translated(Snapshot),
    Deferred(ResourceState),
}

/// Translates a deferred state when its warm timeout comes (`None`: it no longer translates;
/// the current snapshot keeps serving).
pub type TranslateDeferred = Box<dyn FnMut(&ResourceState) -> Option<Snapshot> + Send>;

impl Default for SnapshotSink {
    fn default() -> Self {
        Self::with_warm_timeout(WARM_TIMEOUT)
    }
}

#[derive(Default)]
enum SinkState {
    #[default]
    Waiting,
    Held(Box<Snapshot>),
    Live(Arc<App>),
    /// Tests: published as to a running data path (carried over), without one.
    #[cfg(test)]
    Serving(Arc<arc_swap::ArcSwap<Snapshot>>),
}

impl SnapshotSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn with_warm_timeout(warm_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(SinkState::Waiting),
            arrived: tokio::sync::Notify::new(),
            incomplete: Mutex::new(None),
            offers: AtomicU64::new(0),
            warm_timeout,
        }
    }

    /// A state that still lacks `missing`: kept, and published by [`Self::warm_timeouts`] if
    /// nothing complete replaces it within the warm timeout.
    pub fn offer_incomplete(&self, snapshot: Snapshot, missing: String) {
        self.hold_incomplete(Pending::Translated(snapshot), missing);
    }

    /// A state that still lacks `missing`, not translated: kept as [`Self::offer_incomplete`]
    /// keeps a translated one, and translated by [`Self::warm_timeouts`] if it is still the
    /// newest when the warm timeout comes.
    pub fn defer_incomplete(&self, state: ResourceState, missing: String) {
        self.hold_incomplete(Pending::Deferred(state), missing);
    }

    /// Whether the newest state offered is a deferred one, still held.
    pub fn is_deferred(&self) -> bool {
        matches!(
            &*self.incomplete.lock(),
            Some(Incomplete {
                pending: Pending::Deferred(_),
                ..
            })
        )
    }

    fn hold_incomplete(&self, pending: Pending, missing: String) {
        self.offers.fetch_add(1, Ordering::Relaxed);
        let mut incomplete = self.incomplete.lock();
        let deadline = incomplete
            .as_ref()
            .map_or_else(|| Instant::now() + self.warm_timeout, |i| i.deadline);
        let replaced = incomplete.replace(Incomplete {
            pending,
            missing,
            deadline,
        });
        // Freed off the config thread, like a replaced live snapshot.
        if let Some(Incomplete {
            pending: Pending::Translated(old),
            ..
        }) = replaced
        {
            crate::control::retired::retire(Arc::new(old));
        }
    }

    /// Publish an incomplete state that has waited long enough (run for the client's lifetime);
    /// a deferred one is translated by `translate` first.
    pub async fn warm_timeouts(self: Arc<Self>, mut translate: TranslateDeferred) {
        let tick = (self.warm_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let due = {
                let mut incomplete = self.incomplete.lock();
                match &*incomplete {
                    Some(i) if Instant::now() >= i.deadline => incomplete
                        .take()
                        .map(|i| (i, self.offers.load(Ordering::Relaxed))),
                    _ => None,
                }
            };
            let Some((i, offers)) = due else { continue };
            let snapshot = match i.pending {
                Pending::Translated(s) => s,
                Pending::Deferred(state) => match translate(&state) {
                    // Not if something newer was offered while it translated.
                    Some(s) if self.offers.load(Ordering::Relaxed) == offers => s,
                    Some(s) => {
                        crate::control::retired::retire(Arc::new(s));
                        continue;
                    }
                    None => continue,
                },
            };
            warn!(
                missing = %i.missing,
                "xDS: published without what istiod has not sent within {:?} (as Envoy's \
                 initial_fetch_timeout); those clusters have no endpoints",
                self.warm_timeout
            );
            self.publish(snapshot);
        }
    }

    /// A new complete snapshot: published at once when the data path runs, else held (the
    /// newest one wins). It replaces any incomplete one waiting.
    pub fn offer(&self, snapshot: Snapshot) {
        self.offers.fetch_add(1, Ordering::Relaxed);
        if let Some(Incomplete {
            pending: Pending::Translated(old),
            ..
        }) = self.incomplete.lock().take()
        {
            crate::control::retired::retire(Arc::new(old));
        }
        self.publish(snapshot);
    }

    fn publish(&self, snapshot: Snapshot) {
        let mut state = self.state.lock();
        match &*state {
            SinkState::Live(app) => app.publish(snapshot, "xds"),
            #[cfg(test)]
            SinkState::Serving(live) => {
                let mut snapshot = snapshot;
                snapshot.carry_over_state(&live.load());
                live.store(Arc::new(snapshot));
            }
            _ => {
                *state = SinkState::Held(Box::new(snapshot));
                self.arrived.notify_waiters();
            }
        }
    }

    /// The snapshot the data path serves (carried over), once it runs.
    pub fn live(&self) -> Option<Arc<Snapshot>> {
        match &*self.state.lock() {
            SinkState::Live(app) => Some(app.snapshot.load_full()),
            #[cfg(test)]
            SinkState::Serving(live) => Some(live.load_full()),
            _ => None,
        }
    }

    /// The held snapshot, if one arrived (for starting the data path).
    pub fn take(&self) -> Option<Snapshot> {
        let mut state = self.state.lock();
        match std::mem::take(&mut *state) {
            SinkState::Held(s) => Some(*s),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Wait at most `timeout` for a snapshot to be held.
    pub async fn wait(&self, timeout: Duration) {
        let arrived = self.arrived.notified();
        if matches!(&*self.state.lock(), SinkState::Held(_)) {
            return;
        }
        let _ = tokio::time::timeout(timeout, arrived).await;
    }

    /// Tests: serve the held snapshot as a running data path would, and publish from now on.
    #[cfg(test)]
    pub(crate) fn serve_for_tests(&self) {
        let held = self.take().unwrap_or_else(Snapshot::empty);
        *self.state.lock() = SinkState::Serving(Arc::new(arc_swap::ArcSwap::from_pointee(held)));
    }

    /// The data path runs: publish from now on (and what arrived since it was started).
    pub fn attach(&self, app: Arc<App>) {
        let mut state = self.state.lock();
        if let SinkState::Held(s) = std::mem::take(&mut *state) {
            app.publish(*s, "xds");
        }
        *state = SinkState::Live(app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        routing::SnapshotBuilder::new().build()
    }

    #[tokio::test]
    async fn an_incomplete_state_is_published_after_the_warm_timeout() {
        let sink = Arc::new(SnapshotSink::with_warm_timeout(Duration::from_millis(200)));
        let timer = tokio::spawn(sink.clone().warm_timeouts(Box::new(|_| None)));
        sink.offer_incomplete(snapshot(), "EDS a".into());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A newer incomplete state keeps the first one's deadline.
        let newer = snapshot();
        let newer_version = newer.version();
        sink.offer_incomplete(newer, "EDS a, b".into());
        assert!(sink.take().is_none(), "not before the timeout");
        sink.wait(Duration::from_secs(2)).await;
        let published = sink.take().expect("published at the timeout");
        assert_eq!(
            published.version(),
            newer_version,
            "the newest incomplete state"
        );
        timer.abort();
    }

    #[tokio::test]
    async fn a_complete_state_cancels_the_incomplete_one() {
        let sink = Arc::new(SnapshotSink::with_warm_timeout(Duration::from_millis(100)));
        let timer = tokio::spawn(sink.clone().warm_timeouts(Box::new(|_| None)));
        sink.offer_incomplete(snapshot(), "EDS a".into());
        let complete = snapshot();
        let version = complete.version();
        sink.offer(complete);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sink.take().map(|s| s.version()), Some(version));
        assert!(
            sink.take().is_none(),
            "nothing published after the complete state"
        );
        timer.abort();
    }
}
