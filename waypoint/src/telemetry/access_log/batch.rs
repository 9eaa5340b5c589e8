//! The stdout side of the access log: requests append lines to one buffer and never wake
//! anyone; a writer thread takes the whole buffer every [`FLUSH_INTERVAL`] and writes it in one
//! call. Only an idle writer (nothing written for a whole interval) or a buffer past
//! [`FLUSH_BYTES`] is woken by a request.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// The longest a line waits in the buffer before it is written (while the writer keeps up).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Buffered bytes that wake the writer before its interval is up.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Lines buffered at most; beyond this, lines are dropped (and counted) rather than blocking
/// requests on a stalled log reader.
pub const QUEUE_LINES: usize = 16 * 1024;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    lines: usize,
    /// The writer found nothing last time and sleeps until a line arrives.
    idle: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while a batch is taken and written, so that batches reach the output in order.
    out: Mutex<Box<dyn Write + Send>>,
    stop: AtomicBool,
    writes: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    /// Takes what is buffered and writes it. A closed stdout must not take the proxy down:
    /// lines are then lost, not requests.
    fn write_pending(&self, spare: &mut Vec<u8>) -> bool {
        let mut out = self.out.lock();
        {
            let mut p = self.pending.lock();
            if p.buf.is_empty() {
                return false;
            }
            std::mem::swap(&mut p.buf, spare);
            p.lines = 0;
        }
        let _lost_if_closed = out.write_all(spare).and_then(|()| out.flush());
        self.writes.fetch_add(1, Ordering::Relaxed);
        spare.clear();
        true
    }
}

/// The handle requests push lines through.
pub struct Batcher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Batcher {
    /// Starts the writer thread for `out`.
    pub fn spawn(out: impl Write + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            out: Mutex::new(Box::new(out)),
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(&s));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("cannot start the access log writer thread: {e}");
                None
            }
        };
        Self { shared, thread }
    }

    /// Appends one line (a newline is added).
    #[cfg(test)]
    pub fn push(&self, line: &str) {
        self.push_with(|buf| buf.extend_from_slice(line.as_bytes()));
    }

    /// Appends the line `render` writes (a newline is added), rendered straight into the shared
    /// buffer under its lock: no copy and no allocation once the buffer has grown. Not called
    /// when the buffer is full.
    pub fn push_with(&self, render: impl FnOnce(&mut Vec<u8>)) {
        let wake = {
            let mut p = self.shared.pending.lock();
            if p.lines >= QUEUE_LINES {
                drop(p);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let before = p.buf.len();
            render(&mut p.buf);
            p.buf.push(b'\n');
            p.lines += 1;
            let was_idle = std::mem::take(&mut p.idle);
            was_idle || p.buf.len() >= FLUSH_BYTES && before < FLUSH_BYTES
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Writes what is buffered now, on the caller's thread.
    pub fn flush(&self) {
        self.shared.write_pending(&mut Vec::new());
    }

    /// `write` calls made so far.
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Batcher {
    /// No line is lost: the writer writes what is left, then ends.
    fn drop(&mut self) {
        {
            // Under the lock: the writer cannot be between its check and its wait.
            let _p = self.shared.pending.lock();
            self.shared.stop.store(true, Ordering::Release);
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.flush();
    }
}

fn writer(s: &Shared) {
    let mut spare = Vec::new();
    loop {
        {
            let mut p = s.pending.lock();
            if p.buf.is_empty() && !s.stop.load(Ordering::Acquire) {
                // Nothing came in for a whole interval: sleep until the next line.
                p.idle = true;
                s.wake.wait(&mut p);
            }
        }
        if s.stop.load(Ordering::Acquire) {
            s.write_pending(&mut spare);
            return;
        }
        // Lines arrive: let them gather for an interval (or until FLUSH_BYTES wakes us early).
        {
            let mut p = s.pending.lock();
            if p.buf.len() < FLUSH_BYTES && !s.stop.load(Ordering::Acquire) {
                s.wake.wait_for(&mut p, FLUSH_INTERVAL);
            }
        }
        s.write_pending(&mut spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the `write` calls that reach the output, and keeps what they wrote.
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<(u64, Vec<u8>)>>);

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut c = self.0.lock();
            c.0 += 1;
            c.1.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// N lines pushed in a burst reach the output in order, in far fewer than N writes, within
    /// the flush interval (waited for with a bounded deadline), and none is lost at drop.
    #[test]
    fn lines_are_written_in_batches() {
        let out = Counting::default();
        let b = Batcher::spawn(out.clone());
        const N: usize = 5_000;
        for i in 0..N {
            b.push(&format!("line {i}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().1.iter().filter(|c| **c == b'\n').count() < N {
            assert!(std::time::Instant::now() < deadline, "lines not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let writes = out.0.lock().0;
        assert!(writes < (N / 10) as u64, "{writes} writes for {N} lines");
        assert_eq!(b.writes(), writes);
        let text = String::from_utf8(out.0.lock().1.clone()).unwrap();
        let want: String = (0..N).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);

        // Lines still buffered when the log goes away are written, not lost.
        b.push("last");
        drop(b);
        assert!(String::from_utf8(out.0.lock().1.clone())
            .unwrap()
            .ends_with("line 4999\nlast\n"));
    }

    /// A reader that stopped reading costs lines, never a blocked request.
    #[test]
    fn full_buffer_drops_and_counts() {
        type Gate = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;
        struct Stalled(Gate);
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let _open = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate: Gate = Default::default();
        let b = Batcher::spawn(Stalled(gate.clone()));
        // The writer takes the first line and blocks in `write`; the rest pile up.
        b.push("first");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.shared.pending.lock().lines > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "writer never took a batch"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..QUEUE_LINES + 10 {
            b.push("x");
        }
        assert_eq!(b.dropped(), 10);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(b);
    }
}
