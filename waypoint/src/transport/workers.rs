//! The data path's worker threads.
//!
//! Each worker is a thread with its own single-threaded tokio runtime. An accepted HBONE
//! connection goes to the worker that holds the fewest open connections (the first of equals), and
//! what the connection starts stays on that thread: its tunnels' tasks, pingora's session on each,
//! the reads and writes of their upstream tunnels. So the wake-ups one request makes (the
//! connection's task hands a frame to the stream's task, which writes into an upstream tunnel,
//! whose answer wakes it again) are calls within one thread, not cross-thread unparks. Envoy's
//! workers own the connections they accept in the same way.
//!
//! The cost: one HBONE connection is served by one core, however busy it is. ztunnel opens a new
//! connection to the waypoint for every 100 concurrent streams of a source identity, so a waypoint
//! usually holds many. `--work-stealing` gives back tokio's multi-thread scheduler, where an idle
//! worker takes tasks from a busy one; `docs/benchmarks.md` has the figures of both.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::warn;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker this thread is, if it is one.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

struct Worker {
    handle: Handle,
    /// HBONE connections it serves now.
    connections: Arc<AtomicUsize>,
    /// Dropped with the pool: the worker's runtime stops (dropping its tasks) and its thread ends.
    _stop: oneshot::Sender<()>,
}

pub struct Workers {
    workers: Box<[Worker]>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("connections", &self.connections())
            .finish()
    }
}

impl Workers {
    /// `n` worker threads (at least one), named `worker-<index>`.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let workers = (0..n.max(1))
            .map(|index| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("worker-{index}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(Some(index)));
                        // Ends when the pool is dropped (the sender with it).
                        let _ = runtime.block_on(stopped);
                    })?;
                Ok(Worker {
                    handle,
                    connections: Arc::default(),
                    _stop: stop,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { workers })
    }

    /// Serve `connection` on the worker with the fewest open connections, counted there until
    /// the future ends (or is dropped).
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.connections.load(Ordering::Relaxed))
            .expect("a pool has at least one worker");
        let open = Open::new(worker.connections.clone());
        worker.handle.spawn(async move {
            let _open = open;
            connection.await
        });
    }

    /// Serve the accepted `tcp` with `serve` on the least loaded worker. The socket is registered
    /// again with that worker's reactor: left on the accepting runtime's, each of its readiness
    /// events would wake that runtime first, and it the worker.
    pub fn spawn_connection<F, Fut>(&self, tcp: TcpStream, serve: F) -> std::io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tcp = tcp.into_std()?;
        self.spawn(async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => warn!(error = %e, "a worker cannot register a connection's socket"),
            }
        });
        Ok(())
    }

    /// Open connections per worker, by index.
    pub fn connections(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.connections.load(Ordering::Relaxed))
            .collect()
    }
}

/// One connection counted on its worker while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection that reports where it and a task it spawns run, then waits for `done`.
    async fn connection(
        report: std::sync::mpsc::Sender<(Option<usize>, Option<usize>)>,
        done: oneshot::Receiver<()>,
    ) {
        let outer = current();
        let inner = tokio::spawn(async { current() }).await.unwrap();
        report.send((outer, inner)).unwrap();
        let _ = done.await;
    }

    #[test]
    fn a_connection_goes_to_the_least_loaded_worker_and_its_tasks_stay_there() {
        let workers = Workers::start(2).unwrap();
        let (report, reports) = std::sync::mpsc::channel();
        let wait = Duration::from_secs(10);
        let (end_a, a) = oneshot::channel();
        workers.spawn(connection(report.clone(), a));
        assert_eq!(reports.recv_timeout(wait).unwrap(), (Some(0), Some(0)));
        let (_end_b, b) = oneshot::channel();
        workers.spawn(connection(report.clone(), b));
        assert_eq!(reports.recv_timeout(wait).unwrap(), (Some(1), Some(1)));
        assert_eq!(workers.connections(), [1, 1]);

        // The first one ends: worker 0 is the least loaded again.
        end_a.send(()).unwrap();
        let deadline = std::time::Instant::now() + wait;
        while workers.connections() != [0, 1] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                workers.connections()
            );
            std::thread::yield_now();
        }
        let (_end_c, c) = oneshot::channel();
        workers.spawn(connection(report, c));
        assert_eq!(reports.recv_timeout(wait).unwrap(), (Some(0), Some(0)));
        assert_eq!(workers.connections(), [1, 1]);
        assert_eq!(current(), None, "the test's own thread is no worker");
    }

    #[test]
    fn a_handed_over_socket_is_served_without_the_accepting_runtime() {
        use std::io::{Read, Write};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let workers = Workers::start(1).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let accepting = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tcp = accepting.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            listener.accept().await.unwrap().0
        });
        workers
            .spawn_connection(tcp, |mut tcp| async move {
                let mut hello = [0; 5];
                tcp.read_exact(&mut hello).await.unwrap();
                tcp.write_all(&hello).await.unwrap();
            })
            .unwrap();
        // Gone with its reactor: a socket still registered there could not be read.
        drop(accepting);
        client.write_all(b"hello").unwrap();
        let mut echoed = [0; 5];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"hello");
    }

    #[test]
    fn dropping_the_pool_stops_its_workers_and_drops_their_connections() {
        let workers = Workers::start(1).unwrap();
        let (report, reports) = std::sync::mpsc::channel();
        let (held, released) = oneshot::channel::<()>();
        let (_never, never) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _held = held;
            report.send(()).unwrap();
            let _ = never.await;
        });
        reports.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(workers);
        // The connection's future was dropped with its runtime: its sender went with it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let closed =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), released).await });
        assert!(matches!(closed, Ok(Err(_))), "{closed:?}");
    }
}
