//! The tunnel a pingora upstream session borrows from the pool, as the socket pingora reads and
//! writes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::client::StreamSlot;
use super::super::stream::H2Stream;
use super::{ConnectionSlot, Loan};

/// Keeps a tunnel's resources (HTTP/2 stream slot, cluster connection slot) until dropped.
pub struct TunnelHold {
    _slot: StreamSlot,
    _connection: Option<Arc<ConnectionSlot>>,
}

/// A tunnel on loan to one pingora upstream session. Once the request's lease has given it back,
/// what pingora still holds is an empty husk that never reads and refuses writes.
pub struct PooledTunnel {
    pub(super) loan: Arc<Loan>,
}

impl std::fmt::Debug for PooledTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledTunnel")
            .field("target", &self.loan.key.0)
            .field("identity", &self.loan.key.1.to_string())
            .finish()
    }
}

fn given_back() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "tunnel returned to the pool")
}

impl PooledTunnel {
    /// Run `f` on the stream, or fail when the tunnel was given back.
    fn with_stream<T>(
        &self,
        f: impl FnOnce(Pin<&mut H2Stream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.loan.tunnel.lock().as_mut() {
            Some((stream, _, _)) => f(Pin::new(stream)),
            None => Poll::Ready(Err(given_back())),
        }
    }

    /// The tunnel for a caller that keeps it to the end (a TCP splice, a mirror copy); the
    /// returned hold keeps its HTTP/2 stream slot and its cluster connection slot.
    pub fn into_inner(self) -> (H2Stream, TunnelHold) {
        let (stream, slot, terms) = self
            .loan
            .tunnel
            .lock()
            .take()
            .expect("a tunnel is only given back through a lease, after its exchange");
        let hold = TunnelHold {
            _slot: slot,
            _connection: terms._connection,
        };
        (stream, hold)
    }
}

impl AsyncRead for PooledTunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.loan.complete.load(Ordering::Acquire) {
            // pingora's reuse test of a finished keep-alive session: the tunnel goes back to our
            // pool and pingora sees a closed stream, which it drops rather than pools.
            self.loan.give_back();
            return Poll::Ready(Ok(()));
        }
        match self.loan.tunnel.lock().as_mut() {
            Some((stream, _, _)) => Pin::new(stream).poll_read(cx, buf),
            // Only pingora's idle watch reads a husk: it stays quiet, as the idle tunnel did
            // before it was given back, so the husk leaves pingora's pool by one path (the next
            // lookup, or the idle timeout) rather than racing an "idle connection closed".
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for PooledTunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with_stream(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_stream(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut tunnel = self.loan.tunnel.lock();
        let Some((stream, _, _)) = tunnel.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = Pin::new(stream).poll_shutdown(cx);
        if result.is_ready() {
            tunnel.take(); // a shut-down tunnel is never given back
        }
        result
    }
}

impl VirtualSocket for PooledTunnel {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}
