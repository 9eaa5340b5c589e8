//! An inbound HBONE connection read in slices.
//!
//! h2's connection task decodes every frame its socket has ready in one poll. h2 charges each
//! small DATA frame a tunnel has not taken yet against a per-connection budget, and closes the
//! whole connection (GOAWAY `ENHANCE_YOUR_CALM`) when the budget runs out ([`super::recv`]).
//! The tunnels' pumps take those frames out, but they are tasks on the same worker thread. So on
//! a worker that fell behind (a saturated machine), a burst of tiny frames waiting in the socket
//! was decoded whole before any pump ran: 40 000 one-byte frames closed the connection, and
//! every other tunnel on it, in CI.
//!
//! [`Fair`] ends the connection task's poll after [`READ_SLICE`] bytes: it wakes the task and
//! answers `Pending`, so the pumps the slice woke run before more is decoded. A slice of tiny
//! frames (6 500 of 10 bytes) is a fifth of h2's budget at the inbound connection window.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read before the connection task lets the worker's other tasks run.
pub const READ_SLICE: usize = 64 * 1024;

/// `inner`, whose reads end a poll after [`READ_SLICE`] bytes; writes pass through.
pub struct Fair<S> {
    inner: S,
    slice: usize,
    /// Read since the task last yielded (a `Pending`, its own or the socket's).
    read: usize,
}

impl<S> Fair<S> {
    pub fn new(inner: S) -> Self {
        Self::with_slice(inner, READ_SLICE)
    }

    fn with_slice(inner: S, slice: usize) -> Self {
        Fair {
            inner,
            slice,
            read: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fair<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read >= self.slice {
            self.read = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read = match polled {
            Poll::Ready(_) => self.read + (buf.filled().len() - before),
            Poll::Pending => 0,
        };
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fair<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::task::AtomicWaker;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::transport::hbone::H2Stream;

    /// One end of the in-memory connection: its reads wait while `open` is false, its writes
    /// are counted in `written`.
    struct End {
        io: DuplexStream,
        open: Arc<AtomicBool>,
        waker: Arc<AtomicWaker>,
        written: Arc<AtomicUsize>,
    }

    impl End {
        fn new(io: DuplexStream) -> Self {
            End {
                io,
                open: Arc::new(AtomicBool::new(true)),
                waker: Arc::default(),
                written: Arc::default(),
            }
        }
    }

    impl AsyncRead for End {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.waker.register(cx.waker());
            if !self.open.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for End {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
            self.written.fetch_add(n, Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// 40 000 one-byte DATA frames that reach the server while it is not reading (a worker that
    /// fell behind), on one thread as a worker runs its connections; then a PING. `Ok(bytes)`:
    /// the tunnel's bytes, the connection still up; `Err`: the connection was closed.
    async fn burst(slice: usize) -> Result<usize, h2::Error> {
        const TINY: usize = 40_000;
        let (client_io, server_io) = tokio::io::duplex(16 << 20);
        let (client_end, server_end) = (End::new(client_io), End::new(server_io));
        let written = client_end.written.clone();
        let (open, waker) = (server_end.open.clone(), server_end.waker.clone());
        // The inbound server's connection window (server.rs), so h2's budget is the same.
        let (client, server) = tokio::join!(
            h2::client::handshake(client_end),
            h2::server::Builder::new()
                .initial_connection_window_size(super::super::server::CONNECTION_WINDOW)
                .handshake::<_, Bytes>(Fair::with_slice(server_end, slice))
        );
        let (send, mut conn) = client.unwrap();
        let mut server = server.unwrap();
        let mut ping = conn.ping_pong().unwrap();
        let driver = tokio::spawn(conn);
        let (tx, mut tunnels) = tokio::sync::mpsc::unbounded_channel();
        // Ends with the error that closed the connection, if one did.
        let accepting = tokio::spawn(async move {
            loop {
                match server.accept().await {
                    Some(Ok((req, mut respond))) => {
                        let send = respond
                            .send_response(http::Response::new(()), false)
                            .unwrap();
                        let _ = tx.send(H2Stream::new(send, req.into_body()));
                    }
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
        });
        let mut send = send.ready().await.unwrap();
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let mut stream = send.send_request(req, false).unwrap().1;
        stream.send_data(Bytes::from_static(b"x"), false).unwrap();
        let mut tunnel = tunnels.recv().await.unwrap();

        open.store(false, Ordering::Release);
        let before = written.load(Ordering::Relaxed);
        for _ in 0..TINY {
            stream.send_data(Bytes::from_static(b"x"), false).unwrap();
        }
        stream.send_data(Bytes::new(), true).unwrap();
        // Until the client's connection task wrote them all (9 + 1 bytes a frame).
        while written.load(Ordering::Relaxed) - before < TINY * 10 {
            tokio::task::yield_now().await;
        }
        open.store(true, Ordering::Release);
        waker.wake();

        if let Err(e) = ping.ping(h2::Ping::opaque()).await {
            // Why the server closed it.
            return Err(accepting.await.unwrap().unwrap_or(e));
        }
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.map_err(|e| {
            e.into_inner()
                .and_then(|e| e.downcast::<h2::Error>().ok())
                .map(|e| *e)
                .unwrap_or_else(|| h2::Error::from(h2::Reason::INTERNAL_ERROR))
        })?;
        assert!(!driver.is_finished());
        Ok(got.len())
    }

    #[tokio::test]
    async fn a_burst_of_tiny_frames_read_at_once_is_taken_out_slice_by_slice() {
        assert_eq!(burst(READ_SLICE).await.unwrap(), 40_001);
    }

    /// The premise: read whole, the same burst closes the connection.
    #[tokio::test]
    async fn read_whole_the_burst_closes_the_connection() {
        let err = burst(usize::MAX).await.unwrap_err();
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    }
}
