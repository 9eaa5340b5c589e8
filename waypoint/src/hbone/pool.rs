//! Reuse of upstream tunnels across requests.
//!
//! Pingora keeps idle upstream sessions in its own pool but refuses to reuse a virtual stream: its
//! reuse check compares the stream's file descriptor with the peer address, and a tunnel has no fd.
//! So every request would open a new CONNECT stream (and a new TCP connection to the app).
//!
//! The way around it, with public pingora APIs only: the L4 connector we hand pingora
//! ([`TunnelConnector`], via `PeerOptions::custom_l4`) returns a [`PooledTunnel`] that carries a
//! [`Lease`]. When the proxy has finished a request cleanly over HTTP/1.1 it marks the lease clean
//! (in the `logging` hook, which runs after pingora decided about reuse). When pingora later drops
//! the stream — at once if it judged the session not reusable (before `logging`, so never clean),
//! or from its idle pool on the next lookup — the tunnel goes back to *our* idle list, keyed by
//! (endpoint, identity), still holding the app's keep-alive HTTP/1.1 session. The next
//! `connect()` for that endpoint takes it from there.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::{ConnectError, HboneClient, StreamSlot};
use super::stream::H2Stream;
use crate::identity::SpiffeId;

/// Idle tunnels older than this are closed instead of reused.
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many idle tunnels are kept per (endpoint, identity).
const MAX_IDLE_PER_KEY: usize = 256;

type TunnelKey = (SocketAddr, SpiffeId);

struct IdleTunnel {
    stream: H2Stream,
    slot: StreamSlot,
    since: Instant,
}

#[derive(Debug, Default)]
pub struct PoolStats {
    pub tunnels_reused: AtomicU64,
    pub tunnels_returned: AtomicU64,
}

pub struct TunnelPool {
    client: Arc<HboneClient>,
    hbone_port: u16,
    idle: Mutex<HashMap<TunnelKey, Vec<IdleTunnel>>>,
    pub stats: PoolStats,
}

/// Shared between one request's context and the tunnel it was served on.
#[derive(Debug, Default)]
pub struct Lease {
    clean: AtomicBool,
}

impl Lease {
    /// The HTTP/1.1 exchange on this tunnel completed; it may carry the next request.
    pub fn mark_clean(&self) {
        self.clean.store(true, Ordering::Release);
    }
}

impl TunnelPool {
    pub fn new(client: Arc<HboneClient>, hbone_port: u16) -> Arc<Self> {
        Arc::new(Self {
            client,
            hbone_port,
            idle: Mutex::new(HashMap::new()),
            stats: PoolStats::default(),
        })
    }

    /// A new own certificate: recycle pooled connections and idle tunnels (see
    /// [`HboneClient::rotate`]).
    pub fn rotate(&self, tls: Arc<crate::identity::ClientConfigs>) {
        self.client.rotate(tls);
        self.idle.lock().clear();
    }

    pub fn client(&self) -> &HboneClient {
        &self.client
    }

    /// The node-side HBONE address for an endpoint: its IP on the HBONE port.
    pub fn node_for(&self, target: SocketAddr) -> SocketAddr {
        SocketAddr::new(target.ip(), self.hbone_port)
    }

    fn take_idle(&self, key: &TunnelKey) -> Option<IdleTunnel> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(key)?;
        let generation = self.client.generation();
        while let Some(mut t) = list.pop() {
            if t.since.elapsed() < TUNNEL_IDLE_TIMEOUT
                && t.slot.generation() == generation
                && t.stream.is_reusable()
            {
                return Some(t);
            }
        }
        None
    }

    fn put_idle(&self, key: TunnelKey, stream: H2Stream, slot: StreamSlot) {
        // A tunnel on a connection from before a certificate rotation is not kept: it would keep
        // that connection (and its old certificate) alive.
        if slot.generation() != self.client.generation() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(key).or_default();
        list.retain(|t| t.since.elapsed() < TUNNEL_IDLE_TIMEOUT);
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(IdleTunnel {
                stream,
                slot,
                since: Instant::now(),
            });
            self.stats.tunnels_returned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An idle tunnel to `target` if one is open, else a new CONNECT stream.
    pub async fn checkout(
        self: &Arc<Self>,
        target: SocketAddr,
        identity: &SpiffeId,
        lease: Arc<Lease>,
    ) -> std::result::Result<PooledTunnel, ConnectError> {
        let key = (target, identity.clone());
        let (stream, slot) = match self.take_idle(&key) {
            Some(t) => {
                self.stats.tunnels_reused.fetch_add(1, Ordering::Relaxed);
                (t.stream, t.slot)
            }
            None => {
                self.client
                    .open(self.node_for(target), identity, target, &[])
                    .await?
            }
        };
        Ok(PooledTunnel {
            inner: Some((stream, slot)),
            key,
            pool: self.clone(),
            lease,
        })
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}

/// A tunnel on loan to one pingora upstream session.
pub struct PooledTunnel {
    inner: Option<(H2Stream, StreamSlot)>,
    key: TunnelKey,
    pool: Arc<TunnelPool>,
    lease: Arc<Lease>,
}

impl std::fmt::Debug for PooledTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledTunnel")
            .field("target", &self.key.0)
            .field("identity", &self.key.1.to_string())
            .finish()
    }
}

impl PooledTunnel {
    fn stream(&mut self) -> &mut H2Stream {
        &mut self.inner.as_mut().expect("tunnel present until drop").0
    }

    pub fn into_inner(mut self) -> (H2Stream, StreamSlot) {
        self.inner.take().expect("tunnel present until drop")
    }
}

impl Drop for PooledTunnel {
    fn drop(&mut self) {
        if let Some((mut stream, slot)) = self.inner.take() {
            if self.lease.clean.load(Ordering::Acquire) && stream.is_reusable() {
                self.pool.put_idle(self.key.clone(), stream, slot);
            }
        }
    }
}

impl AsyncRead for PooledTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(self.stream()).poll_read(cx, buf);
        if result.is_ready() {
            // Anything arriving after the exchange finished (data, EOF, error) makes the
            // tunnel unfit for reuse: the app's HTTP/1.1 session is no longer idle.
            self.lease.clean.store(false, Ordering::Release);
        }
        result
    }
}

impl AsyncWrite for PooledTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lease.clean.store(false, Ordering::Release);
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

impl VirtualSocket for PooledTunnel {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

/// The `custom_l4` connector of one upstream attempt: dials over HBONE instead of TCP.
#[derive(Clone)]
pub struct TunnelConnector {
    pub pool: Arc<TunnelPool>,
    pub identity: SpiffeId,
    pub lease: Arc<Lease>,
    /// Why the last connect failed, for the access log and the status mapping.
    pub failure: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for TunnelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConnector")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, addr: &PingoraAddr) -> Result<Stream> {
        let target = match addr {
            PingoraAddr::Inet(a) => *a,
            other => {
                return Error::e_explain(
                    ErrorType::ConnectError,
                    format!("HBONE needs an IP endpoint, got {other}"),
                )
            }
        };
        match self
            .pool
            .checkout(target, &self.identity, self.lease.clone())
            .await
        {
            Ok(tunnel) => Ok(Stream::from(VirtualSocketStream::new(Box::new(tunnel)))),
            Err(e) => {
                *self.failure.lock() = Some(e.short_reason().to_string());
                let etype = match e {
                    ConnectError::Timeout { .. } => ErrorType::ConnectTimedout,
                    ConnectError::Tcp { .. } => ErrorType::ConnectRefused,
                    ConnectError::Tls { .. } => ErrorType::TLSHandshakeFailure,
                    _ => ErrorType::ConnectError,
                };
                Error::e_explain(etype, e.to_string())
            }
        }
    }
}
