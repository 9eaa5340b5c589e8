//! A total deadline for HTTP/1.1 request headers inside a tunnel (Envoy's
//! `request_headers_timeout`): pingora's read timeout restarts on every byte, so a client that
//! trickles a header a byte at a time would hold the tunnel forever.
//!
//! [`HeaderDeadline`] wraps the tunnel pingora reads requests from. The clock starts at the first
//! byte read while the connection waits for a request's headers; the proxy says when they are
//! complete ([`HeaderClock::headers_done`], from its first hook) and when the exchange is over
//! ([`HeaderClock::await_next`], from its logging hook), so an idle keep-alive connection is not
//! on the clock. When the deadline passes first, the read fails with `TimedOut` and pingora
//! closes the tunnel (a 408 would need a parsed request).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Whether the tunnel's connection is waiting for request headers; shared between the tunnel
/// ([`HeaderDeadline`]) and the requests the proxy serves on it.
#[derive(Debug)]
pub struct HeaderClock {
    awaiting: AtomicBool,
    /// Requests whose headers completed: a change stops the running clock.
    done: AtomicU64,
}

impl Default for HeaderClock {
    fn default() -> Self {
        Self {
            awaiting: AtomicBool::new(true),
            done: AtomicU64::new(0),
        }
    }
}

impl HeaderClock {
    /// The request's headers are complete: stop the clock.
    pub fn headers_done(&self) {
        self.awaiting.store(false, Ordering::Release);
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// The exchange is over: the next byte starts the clock for the next request's headers.
    pub fn await_next(&self) {
        self.awaiting.store(true, Ordering::Release);
    }
}

/// Tunnels closed because request headers did not complete in time (process-wide, for metrics).
pub static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

pub struct HeaderDeadline<S> {
    inner: S,
    clock: Arc<HeaderClock>,
    limit: Duration,
    /// The running deadline, and the `done` count it belongs to.
    running: Option<(Pin<Box<Sleep>>, u64)>,
}

impl<S> HeaderDeadline<S> {
    pub fn new(inner: S, clock: Arc<HeaderClock>, limit: Duration) -> Self {
        Self {
            inner,
            clock,
            limit,
            running: None,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let done = self.clock.done.load(Ordering::Acquire);
        match &mut self.running {
            Some((_, gen)) if *gen != done => {
                self.running = None;
                false
            }
            Some((sleep, _)) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired(cx) {
            TIMED_OUT.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("request headers not complete within {:?}", this.limit),
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && this.running.is_none()
            && this.clock.awaiting.load(Ordering::Acquire)
        {
            let done = this.clock.done.load(Ordering::Acquire);
            let mut sleep = Box::pin(tokio::time::sleep(this.limit));
            // Registered now, so the deadline wakes a read that finds nothing more.
            let _ = sleep.as_mut().poll(cx);
            this.running = Some((sleep, done));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: VirtualSocket> VirtualSocket for HeaderDeadline<S> {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        self.inner.set_socket_option(opt)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for HeaderDeadline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_trickled_header_times_out_but_a_completed_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let clock = Arc::new(HeaderClock::default());
        let mut s = HeaderDeadline::new(server, clock.clone(), Duration::from_secs(10));
        let mut client = client;
        let mut buf = [0u8; 16];
        // Headers complete within the deadline: reads go on past it.
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        clock.headers_done();
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"body").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        // The next request trickles: the read fails at the deadline, whatever arrives.
        clock.await_next();
        client.write_all(b"G").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(4)).await;
            client.write_all(b"E").await.unwrap();
            assert!(s.read(&mut buf).await.is_ok());
        }
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
