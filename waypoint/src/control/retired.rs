//! Replaced snapshots are freed on a thread of their own, never on a data-path worker.
//!
//! Freeing a snapshot of a large mesh takes tens of milliseconds (every name, map and route of
//! every service), and even the part a patched snapshot does not share with the next one (an EDS
//! push's pod-index shard, its service's clusters) is hundreds of microseconds. The config
//! thread hands the replaced snapshot here and goes on. A request in flight may still hold it,
//! and whoever drops the last reference frees it: so this thread keeps a snapshot until it holds
//! the only reference, then drops it. Before, it dropped its reference at once, and under
//! endpoint churn (50 pushes a second, requests always in flight) the data-path worker that
//! finished the last request on the old snapshot freed it between two requests, which moved the
//! churn run's p99.
//!
//! Once no snapshot has come or been freed for [`memory::QUIET`], the same thread returns the
//! freed pages to the kernel ([`memory`]).

use super::memory;
use routing::Snapshot;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How soon a snapshot still held elsewhere is looked at again; doubled while nothing held is
/// let go (a long-lived tunnel may hold one for hours), up to [`HELD_POLL_MAX`].
const HELD_POLL: Duration = Duration::from_millis(5);
const HELD_POLL_MAX: Duration = Duration::from_secs(1);

/// Free `old` on the retiring thread once nothing else holds it.
pub(crate) fn retire(old: Arc<Snapshot>) {
    send(Some(old));
}

/// A config was installed without replacing one (the first): trim once it has settled, as after
/// a [`retire`].
pub(crate) fn settled_later() {
    send(None);
}

fn send(old: Option<Arc<Snapshot>>) {
    static RETIRED: OnceLock<Option<mpsc::Sender<Option<Arc<Snapshot>>>>> = OnceLock::new();
    let tx = RETIRED.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("retired snapshots".into())
            .spawn(move || {
                use super::priority::{lower_this_thread, CONFIG_THREAD_NICE};
                // Freeing is never urgent; a failure leaves it at the process's priority.
                let _ = lower_this_thread(CONFIG_THREAD_NICE);
                retire_and_trim(&rx, memory::trim)
            })
            .ok()
            .map(|_| tx)
    });
    // Without the thread (it could not be started) it is freed here, as before.
    if let Some(tx) = tx {
        let _ = tx.send(old);
    }
}

/// Keep each `T` sent until this thread holds its only reference, then drop it; `trim` once
/// nothing has come or been dropped for [`memory::QUIET`] after something did. Returns when
/// every sender is gone (what is still held is dropped then, wherever the last holder is).
fn retire_and_trim<T>(rx: &Receiver<Option<Arc<T>>>, mut trim: impl FnMut()) {
    let mut held: Vec<Arc<T>> = Vec::new();
    let mut poll = HELD_POLL;
    // When something last came or was dropped, while a trim is owed.
    let mut owed: Option<Instant> = None;
    loop {
        let until_trim = owed.map(|at| memory::QUIET.saturating_sub(at.elapsed()));
        let wait = match (held.is_empty(), until_trim) {
            (false, Some(t)) => Some(poll.min(t)),
            (false, None) => Some(poll),
            (true, t) => t,
        };
        let next = match wait {
            Some(d) => rx.recv_timeout(d),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(old) => {
                held.extend(old);
                owed = Some(Instant::now());
                poll = HELD_POLL;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let before = held.len();
        held.retain(|s| Arc::strong_count(s) > 1);
        if held.len() < before {
            owed = Some(Instant::now());
            poll = HELD_POLL;
        } else if !held.is_empty() {
            poll = (poll * 2).min(HELD_POLL_MAX);
        }
        if owed.is_some_and(|at| at.elapsed() >= memory::QUIET) {
            trim();
            owed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::ThreadId;

    /// Sends the id of the thread that drops it.
    struct Tell(mpsc::Sender<ThreadId>);

    impl Drop for Tell {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    /// A value still held by a "request" when it is retired is freed on the retiring thread
    /// after the request lets it go, not by the request's last drop; one held by nobody else
    /// is freed at once; the trim follows both, once.
    #[test]
    fn the_last_reference_is_dropped_on_the_retiring_thread() {
        let (tx, rx) = mpsc::channel::<Option<Arc<Tell>>>();
        let (trims_tx, trims) = mpsc::channel::<()>();
        let retirer = std::thread::spawn(move || {
            retire_and_trim(&rx, || {
                let _ = trims_tx.send(());
            })
        });
        let retirer_id = retirer.thread().id();
        let (told_tx, told) = mpsc::channel();

        let snapshot = Arc::new(Tell(told_tx.clone()));
        let in_flight = snapshot.clone();
        tx.send(Some(snapshot)).unwrap();
        // The retiring thread holds it, a request too: nobody frees it yet.
        assert!(told.recv_timeout(HELD_POLL * 20).is_err());
        drop(in_flight);
        assert_eq!(told.recv_timeout(Duration::from_secs(10)), Ok(retirer_id));

        tx.send(Some(Arc::new(Tell(told_tx)))).unwrap();
        assert_eq!(told.recv_timeout(Duration::from_secs(10)), Ok(retirer_id));
        trims.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(trims.recv_timeout(memory::QUIET * 2).is_err(), "one trim");
        drop(tx);
        retirer.join().unwrap();
    }
}
