//! One HBONE tunnel: an HTTP/2 CONNECT stream seen as a byte stream (AsyncRead + AsyncWrite), usable
//! as a pingora virtual socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::recv::Inbox;

/// Largest DATA frame payload we queue per write; h2 splits by the peer's max frame size.
const WRITE_CHUNK: usize = 256 * 1024;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: Inbox,
    write_closed: bool,
    /// Set at drop when the peer reset the stream before it was sent a byte (see
    /// [`H2Stream::watch_remote_reset`]).
    reset_watch: Option<Arc<AtomicBool>>,
    /// A byte was sent on this stream.
    wrote: bool,
    /// How long a write may wait for the peer to open its flow-control window.
    send_timeout: Option<Duration>,
    /// Running while a write waits for window.
    stalled: Option<Pin<Box<Sleep>>>,
}

/// Writes that failed because the peer kept its window shut past the send timeout
/// (process-wide, for metrics).
pub static SEND_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv: Inbox::new(recv),
            write_closed: false,
            reset_watch: None,
            wrote: false,
            send_timeout: None,
            stalled: None,
        }
    }

    /// A write that waits longer than `timeout` for the peer's flow-control window (a client
    /// that stopped reading) fails with `TimedOut`, so the tunnel and what it holds upstream are
    /// released instead of waiting forever.
    pub fn with_send_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// When the tunnel ends, `flag` tells whether the peer reset the stream (RST_STREAM) before
    /// any byte was sent to it: it gave up without an answer. (A client that resets once it has
    /// its answer, as an h2 client dropping a finished tunnel does, is not flagged.)
    pub fn watch_remote_reset(&mut self, flag: Arc<AtomicBool>) {
        self.reset_watch = Some(flag);
    }

    /// True when the tunnel is idle and open: nothing buffered, peer has not ended or reset it.
    /// Polls without waiting (used before reusing a pooled tunnel).
    pub fn is_reusable(&mut self) -> bool {
        if self.write_closed || !self.recv.is_idle() {
            return false;
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        matches!(self.send.poll_reset(&mut cx), Poll::Pending)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Frames the reader leaves wait in the inbox, not in h2 (see `recv.rs`).
        self.recv.poll_read(cx, buf).map_err(h2_to_io)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_to_io)?;
                this.wrote = true;
                this.stalled = None;
                return Poll::Ready(Ok(n));
            }
            if let Some(limit) = this.send_timeout {
                let stalled = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stalled.as_mut().poll(cx).is_ready() {
                    SEND_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("peer kept its flow-control window shut for {limit:?}"),
                    )));
                }
            }
            this.send.reserve_capacity(buf.len().min(WRITE_CHUNK));
            if let Poll::Ready(reason) = this.send.poll_reset(cx) {
                let reason = reason.map_err(h2_to_io)?;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("tunnel reset by peer: {reason}"),
                )));
            }
            match ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                Some(Ok(_)) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Stream {
    /// End our half with END_STREAM instead of letting h2 reset the stream: bytes already queued
    /// (an error response written just before the proxy lets go of the tunnel) still arrive.
    fn drop(&mut self) {
        if let Some(flag) = self.reset_watch.as_ref().filter(|_| !self.wrote) {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            if let Poll::Ready(Ok(_)) = self.send.poll_reset(&mut cx) {
                flag.store(true, Ordering::Release);
            }
        }
        if !self.write_closed {
            self.write_closed = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}

impl VirtualSocket for H2Stream {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}
