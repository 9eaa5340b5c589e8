//! The receiving half of a tunnel: DATA frames leave h2's buffers as they arrive, even while the
//! tunnel's reader (pingora) is busy elsewhere.
//!
//! Why: h2 (0.4.16 and later) charges every received DATA frame under 256 bytes that the
//! application has not taken yet against a per-connection budget, and closes the whole connection
//! (GOAWAY `ENHANCE_YOUR_CALM`) when it runs out. An HBONE connection carries many tunnels, so one
//! chatty peer (an SSE stream in tiny frames) whose reader stopped, held back by a slow client,
//! would take down every other tunnel on the connection.
//!
//! How: frames the reader does not take itself are pulled out of h2 into an [`Inbox`]. Small ones
//! are copied into one contiguous buffer (their read buffers and h2 slab slots are freed at once),
//! large ones are kept as they are. Flow-control capacity is released only as the reader takes
//! bytes, so what an inbox holds stays within the stream window the peer was given, with no
//! per-frame overhead. The pulling is done by a small task per tunnel, the pump, that h2 wakes
//! only while the reader is not waiting for data itself: a reader that keeps up is woken by h2
//! directly and the pump never runs (one extra non-blocking h2 poll per read re-arms it).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use h2::RecvStream;
use parking_lot::Mutex;
use tokio::io::ReadBuf;

/// h2's threshold: DATA frames with fewer payload bytes than this cost it bookkeeping budget
/// while buffered. Below it we copy (cheap for so few bytes) instead of holding the frame.
pub const SMALL_FRAME: usize = 256;

/// Small DATA frames copied into an inbox while the tunnel's reader was not reading
/// (process-wide, for metrics).
pub static SMALL_FRAMES_COALESCED: AtomicU64 = AtomicU64::new(0);

/// How the peer's half of the stream ended.
enum End {
    Open,
    Eof,
    /// The error, until the reader was told.
    Failed(Option<h2::Error>),
}

struct Shared {
    /// `None` once the reader let go: h2 then drops what it still buffers for the stream.
    recv: Option<RecvStream>,
    /// Large frames (and the unread rest of a frame the reader took), oldest first…
    frames: VecDeque<Bytes>,
    /// …followed by small frames that arrived after them, copied together.
    small: BytesMut,
    end: End,
    /// The reader's waker while it waits on an empty inbox.
    reader: Option<Waker>,
    /// The pump's waker (see [`Pump`]).
    pump: Option<Waker>,
}

impl Shared {
    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.small.is_empty()
    }

    /// Append a frame; `busy`: the reader is not the one taking it (counted in the metric).
    fn push(&mut self, data: Bytes, busy: bool) {
        if data.len() < SMALL_FRAME {
            if busy {
                SMALL_FRAMES_COALESCED.fetch_add(1, Ordering::Relaxed);
            }
            self.small.extend_from_slice(&data);
        } else {
            if !self.small.is_empty() {
                let small = self.small.split().freeze();
                self.frames.push_back(small);
            }
            self.frames.push_back(data);
        }
    }

    /// Take every frame h2 has ready for this stream; on `Pending`, h2 wakes `cx` when more
    /// arrives. `coalesce` false: the reader itself takes them, and the first frame into an empty
    /// inbox is kept whole.
    fn drain(&mut self, cx: &mut Context<'_>, coalesce: bool) {
        while matches!(self.end, End::Open) {
            let Some(recv) = self.recv.as_mut() else {
                return;
            };
            match recv.poll_data(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => self.end = End::Eof,
                Poll::Ready(Some(Err(e))) => self.end = End::Failed(Some(e)),
                Poll::Ready(Some(Ok(data))) if data.is_empty() => continue,
                Poll::Ready(Some(Ok(data))) if !coalesce && self.is_empty() => {
                    self.frames.push_back(data)
                }
                Poll::Ready(Some(Ok(data))) => self.push(data, coalesce),
            }
        }
    }

    /// Copy what fits into `buf`, oldest bytes first; returns the count.
    fn take(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while buf.remaining() > 0 {
            let chunk: &mut dyn Buf = match self.frames.front_mut() {
                Some(f) => f,
                None if !self.small.is_empty() => &mut self.small,
                None => break,
            };
            let k = chunk.remaining().min(buf.remaining());
            buf.put_slice(&chunk.chunk()[..k]);
            chunk.advance(k);
            n += k;
            if self.frames.front().is_some_and(Bytes::is_empty) {
                self.frames.pop_front();
            }
        }
        n
    }
}

/// The reader's side. Dropping it drops the h2 stream and stops the pump.
pub struct Inbox {
    shared: Arc<Mutex<Shared>>,
}

impl Inbox {
    /// Wraps `recv` and spawns its pump (call inside a tokio runtime).
    pub fn new(recv: RecvStream) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            recv: Some(recv),
            frames: VecDeque::new(),
            small: BytesMut::new(),
            end: End::Open,
            reader: None,
            pump: None,
        }));
        tokio::spawn(Pump(shared.clone()));
        Self { shared }
    }

    /// Read into `buf`: `Ready(Ok)` with nothing put is the end of the peer's data.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), h2::Error>> {
        let mut s = self.shared.lock();
        if s.is_empty() {
            // The reader waits on h2 itself: h2 wakes it, not the pump, while it keeps up.
            s.drain(cx, false);
        }
        if !s.is_empty() {
            let n = s.take(buf);
            s.reader = None;
            if let Some(recv) = s.recv.as_mut() {
                // The window reopens by what the reader took, not by what arrived: a slow
                // reader keeps the peer's window shut instead of letting bytes pile up here.
                let _ = recv.flow_control().release_capacity(n);
            }
            // The reader may now be busy elsewhere for a while: h2 wakes the pump for what
            // arrives meanwhile.
            if let Some(pump) = s.pump.clone() {
                s.drain(&mut Context::from_waker(&pump), true);
            }
            return Poll::Ready(Ok(()));
        }
        match &mut s.end {
            End::Open => {
                if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            End::Eof => Poll::Ready(Ok(())),
            End::Failed(e) => {
                Poll::Ready(Err(e.take().unwrap_or_else(|| h2::Reason::CANCEL.into())))
            }
        }
    }

    /// Nothing buffered, and the peer has neither sent more nor ended or failed the stream.
    /// Does not wait.
    pub fn is_idle(&self) -> bool {
        let mut s = self.shared.lock();
        // Whoever h2 would wake next stays the one it wakes.
        let waker = (s.reader.clone())
            .or_else(|| s.pump.clone())
            .unwrap_or_else(futures::task::noop_waker);
        s.drain(&mut Context::from_waker(&waker), true);
        s.is_empty() && matches!(s.end, End::Open)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        let recv = s.recv.take();
        let pump = s.pump.take();
        s.reader = None;
        s.frames.clear();
        s.small = BytesMut::new();
        drop(s);
        drop(recv);
        if let Some(pump) = pump {
            pump.wake();
        }
    }
}

/// Moves frames out of h2 while the reader does not. h2 holds the pump's waker only between a
/// read that returned data and the reader's next wait, so a reader that keeps up never has it
/// polled (beyond once at the start). Ends with the stream or with the [`Inbox`].
struct Pump(Arc<Mutex<Shared>>);

impl Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.lock();
        if s.recv.is_none() || !matches!(s.end, End::Open) {
            s.pump = None;
            return Poll::Ready(());
        }
        if !s.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.pump = Some(cx.waker().clone());
        }
        // A waiting reader has its own waker in h2; polling here would only take it over.
        if s.reader.is_some() {
            return Poll::Pending;
        }
        s.drain(cx, true);
        if !matches!(s.end, End::Open) {
            s.pump = None;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::transport::hbone::H2Stream;

    /// With a 16 MiB connection window (the inbound one) h2's small-frame budget is ~33,000
    /// one-byte frames. 40,000 of them left unread would close the connection; taken out by the
    /// pump between bursts, they all arrive in order, with a large frame among them, and the
    /// connection serves on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiny_frames_left_unread_are_held_in_order_without_closing_the_connection() {
        const TINY: usize = 40_000;
        const BURST: usize = 1_000;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::Builder::new()
                .initial_connection_window_size(16 << 20)
                .handshake::<_, Bytes>(tcp)
                .await
                .unwrap();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    let _ = tx.send(H2Stream::new(send, req.into_body()));
                }
            });
            rx
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
        let mut ping = conn.ping_pong().unwrap();
        let driver = tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let mut tunnels = server.await.unwrap();
        let open = |send: &mut h2::client::SendRequest<Bytes>| {
            let req = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri("10.0.0.1:80")
                .body(())
                .unwrap();
            send.send_request(req, false).unwrap().1
        };

        let before = SMALL_FRAMES_COALESCED.load(Ordering::Relaxed);
        let mut stream = open(&mut send);
        let mut sent = Vec::new();
        for i in 0..TINY {
            let b = [b'a' + (i % 26) as u8];
            sent.extend_from_slice(&b);
            stream.send_data(Bytes::copy_from_slice(&b), false).unwrap();
            if i % BURST == BURST - 1 {
                // A pause between bursts: h2 handles a whole burst before any task runs.
                ping.ping(h2::Ping::opaque())
                    .await
                    .expect("the connection is still up (no GOAWAY)");
            }
            if i == TINY / 2 {
                let big = Bytes::from(vec![b'Z'; 1000]);
                sent.extend_from_slice(&big);
                stream.send_data(big, false).unwrap();
            }
        }
        stream.send_data(Bytes::new(), true).unwrap();
        let mut tunnel = tunnels.recv().await.unwrap();
        // Other tests count too: at least ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        while SMALL_FRAMES_COALESCED.load(Ordering::Relaxed) - before < TINY as u64 - 1 {
            assert!(Instant::now() < deadline, "frames not taken out of h2");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
        // The connection is still up: another tunnel carries data.
        let mut again = open(&mut send);
        again.send_data(Bytes::from_static(b"ok"), true).unwrap();
        let mut tunnel = tunnels.recv().await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
        assert!(!driver.is_finished());
    }
}
