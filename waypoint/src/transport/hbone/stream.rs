//! One HBONE tunnel: an HTTP/2 CONNECT stream seen as a byte stream (AsyncRead + AsyncWrite), usable
//! as a pingora virtual socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::recv::Inbox;
use crate::dataplane::overload::{Overload, RESET_MIN_STALL};

/// Largest DATA frame payload we queue per write; h2 splits by the peer's max frame size.
const WRITE_CHUNK: usize = 256 * 1024;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: Inbox,
    write_closed: bool,
    /// Shared with whoever must learn how the tunnel ended, or end it with a reset (see
    /// [`H2Stream::track_end`]).
    end: Option<Arc<TunnelEnd>>,
    /// A byte was sent on this stream.
    wrote: bool,
    /// How long a write may wait for the peer to open its flow-control window.
    send_timeout: Option<Duration>,
    /// Running while a write waits for window.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The overload manager, when it is on: a write stalled long enough is reset under pressure.
    shed: Option<Box<Shed>>,
}

/// What a stalled write needs to be reset by the overload manager.
struct Shed {
    overload: Arc<Overload>,
    signal: Arc<Notify>,
    /// Since when a write waits for window.
    stalled_at: Option<Instant>,
    /// Polled while stalled: woken at each overload sample that resets streams.
    wait: Option<Pin<Box<OwnedNotified>>>,
}

/// How an inbound tunnel ends, shared between its [`H2Stream`] and the HTTP layer.
#[derive(Debug, Default)]
pub struct TunnelEnd {
    /// Set when the stream ends if the peer reset it before it was sent a byte.
    reset_by_peer: AtomicBool,
    /// End the stream with RST_STREAM instead of END_STREAM.
    reset_on_close: AtomicBool,
}

impl TunnelEnd {
    /// The peer reset the tunnel before it was sent a byte: it gave up without an answer. (A
    /// client that resets once it has its answer, as an h2 client dropping a finished tunnel
    /// does, is not counted.)
    pub fn reset_by_peer(&self) -> bool {
        self.reset_by_peer.load(Ordering::Acquire)
    }

    /// Reset the tunnel instead of ending it cleanly: what was sent is incomplete (a response
    /// cut at the drain deadline), and a clean END_STREAM would pass for a complete one.
    pub fn reset_on_close(&self) {
        self.reset_on_close.store(true, Ordering::Release);
    }
}

/// The reason of a tunnel reset by the waypoint: it abandoned what the tunnel carried.
pub const RESET_REASON: h2::Reason = h2::Reason::INTERNAL_ERROR;

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
            end: None,
            wrote: false,
            send_timeout: None,
            stalled: None,
            shed: None,
        }
    }

    /// Under memory pressure (the overload manager's `reset_high_memory_streams`), a write that
    /// has waited [`RESET_MIN_STALL`] for the peer's window resets the stream (RST_STREAM), so
    /// that what it holds here and upstream is freed. Nothing when the manager is off.
    pub fn with_overload(mut self, overload: &Arc<Overload>) -> Self {
        self.shed = overload.reset_signal().map(|signal| {
            Box::new(Shed {
                overload: overload.clone(),
                signal,
                stalled_at: None,
                wait: None,
            })
        });
        self
    }

    /// Stalled long enough while the overload manager resets streams: reset this one.
    fn shed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let shed = self.shed.as_mut()?;
        let stalled_at = *shed.stalled_at.get_or_insert_with(Instant::now);
        loop {
            let signal = &shed.signal;
            let wait = shed
                .wait
                .get_or_insert_with(|| Box::pin(signal.clone().notified_owned()));
            if wait.as_mut().poll(cx).is_pending() {
                return None;
            }
            shed.wait = None;
            let stalled_for = stalled_at.elapsed();
            if shed.overload.resetting() && stalled_for >= RESET_MIN_STALL {
                shed.overload.count_reset();
                self.send.send_reset(h2::Reason::INTERNAL_ERROR);
                self.write_closed = true;
                return Some(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!(
                        "tunnel reset: process memory over the overload threshold while the \
                         peer kept its window shut for {stalled_for:?}"
                    ),
                ));
            }
        }
    }

    /// A write that waits longer than `timeout` for the peer's flow-control window (a client
    /// that stopped reading) fails with `TimedOut`, so the tunnel and what it holds upstream are
    /// released instead of waiting forever.
    pub fn with_send_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// `end` learns whether the peer reset the stream before it was sent a byte, and can ask
    /// for the stream to be reset instead of ended cleanly.
    pub fn track_end(&mut self, end: Arc<TunnelEnd>) {
        self.end = Some(end);
    }

    /// The tunnel's [`TunnelEnd`], when one is tracked.
    pub fn end(&self) -> Option<&Arc<TunnelEnd>> {
        self.end.as_ref()
    }

    /// End the stream now with RST_STREAM ([`RESET_REASON`]) instead of END_STREAM.
    pub fn reset(&mut self) {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_reset(RESET_REASON);
        }
    }

    /// END_STREAM, or RST_STREAM when [`TunnelEnd::reset_on_close`] was asked for.
    fn close(&mut self) -> io::Result<()> {
        if self
            .end
            .as_ref()
            .is_some_and(|e| e.reset_on_close.load(Ordering::Acquire))
        {
            self.reset();
            return Ok(());
        }
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Ok(())
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
                if let Some(shed) = this.shed.as_mut() {
                    shed.stalled_at = None;
                    shed.wait = None;
                }
                return Poll::Ready(Ok(n));
            }
            if let Some(e) = this.shed(cx) {
                return Poll::Ready(Err(e));
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
        Poll::Ready(self.close())
    }
}

impl Drop for H2Stream {
    /// End our half with END_STREAM instead of letting h2 reset the stream: bytes already queued
    /// (an error response written just before the proxy lets go of the tunnel) still arrive.
    /// Unless a reset was asked for ([`TunnelEnd::reset_on_close`]).
    fn drop(&mut self) {
        if let Some(end) = self.end.as_ref().filter(|_| !self.wrote) {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            if let Poll::Ready(Ok(_)) = self.send.poll_reset(&mut cx) {
                end.reset_by_peer.store(true, Ordering::Release);
            }
        }
        let _ = self.close();
    }
}

impl VirtualSocket for H2Stream {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}
