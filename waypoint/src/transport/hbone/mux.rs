//! h2c (and gRPC) upstreams multiplexed on pooled tunnels.
//!
//! pingora cannot reuse an HTTP/2 upstream connection that runs over a virtual stream: before
//! putting a new stream on a pooled connection it compares the connection's file descriptor with
//! the peer address (`Peer::matches_fd`), and a tunnel has none. So pingora gets a fresh in-memory
//! HTTP/2 connection per request ([`super::bridge`]), and the request's one stream is forwarded
//! onto an h2c connection of this pool: one tunnel carries one h2c connection to the app, which
//! carries up to [`MAX_STREAMS`] streams (fewer when the app's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! says so) before another tunnel is opened. Opening a connection to one (endpoint, identity) is
//! done one at a time, so a burst to a cold endpoint shares the first connection.
//!
//! A connection without streams for the cluster's `http.idleTimeout` (else the upstream idle
//! timeout) is closed by the pool's sweeper, whether or not its endpoint is still in the config;
//! so is one the app has closed or sent GOAWAY on. `http.maxRequestsPerConnection` and
//! `tcp.maxConnectionDuration` retire a connection (no new streams; it closes after its last).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use parking_lot::Mutex;
use tracing::debug;

use super::client::{ConnectError, Peer};
use super::pool::{Lease, TunnelHold, TunnelPolicy, TunnelPool};
use crate::control::identity::PeerCheck;

/// Streams on one upstream h2c connection at most (ztunnel's and the 100 per connection).
pub const MAX_STREAMS: usize = 100;
/// Receive windows of the h2c connection to the app: those of the HBONE tunnel it rides on.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Writes of the h2c connection gathered into one HBONE DATA frame, at most.
const WRITE_BUFFER: usize = 16 * 1024;

type Key = (SocketAddr, PeerCheck);

#[derive(Debug, Default)]
pub struct MuxStats {
    /// h2c connections (each on its own tunnel) opened to apps.
    pub connections_opened: AtomicU64,
    /// Streams put on an h2c connection that already carried one.
    pub streams_reused: AtomicU64,
    /// h2c connections closed by the sweeper after their idle timeout.
    pub closed_idle: AtomicU64,
    /// Requests moved to another connection because theirs had closed or sent GOAWAY before
    /// the request went out.
    pub retried_unsent: AtomicU64,
}

/// One h2c connection to an app, on one tunnel.
pub struct MuxConn {
    send: SendRequest<Bytes>,
    active: AtomicUsize,
    /// Streams started on it, in all.
    served: AtomicU32,
    /// Milliseconds after `opened` when its last stream ended.
    idle_since_ms: AtomicU64,
    opened: Instant,
    /// The driver ended (the app or the tunnel closed it), or a request found it unusable.
    closed: Arc<AtomicBool>,
    peer: Option<Peer>,
    generation: u64,
    idle_timeout: Duration,
    max_requests: Option<u32>,
    max_duration: Option<Duration>,
    /// The tunnel's HTTP/2 stream slot and cluster connection slot, released with the connection.
    _hold: TunnelHold,
}

impl MuxConn {
    fn usable(&self, generation: u64) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.generation == generation
            && !self.retired()
            && !is_closed(&self.send)
    }

    fn retired(&self) -> bool {
        self.max_requests
            .is_some_and(|max| max > 0 && self.served.load(Ordering::Acquire) >= max)
            || self
                .max_duration
                .is_some_and(|max| self.opened.elapsed() >= max)
    }

    /// Streams it takes at most: ours, or fewer when the app says so.
    fn limit(&self) -> usize {
        MAX_STREAMS.min(self.send.current_max_send_streams())
    }

    fn try_reserve(self: &Arc<Self>) -> Option<MuxSlot> {
        let limit = self.limit();
        let mut active = self.active.load(Ordering::Acquire);
        loop {
            if active >= limit {
                return None;
            }
            match self.active.compare_exchange(
                active,
                active + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.served.fetch_add(1, Ordering::AcqRel);
                    return Some(MuxSlot(self.clone()));
                }
                Err(now) => active = now,
            }
        }
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
    }

    /// The app's identity, as its node proved it.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }
}

/// One stream's place on a [`MuxConn`]; released when dropped.
pub struct MuxSlot(Arc<MuxConn>);

impl MuxSlot {
    pub fn conn(&self) -> &Arc<MuxConn> {
        &self.0
    }

    /// A handle to start the stream on (the connection's).
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.0.send.clone()
    }

    /// The connection turned out unusable (closed, GOAWAY): no new stream goes on it.
    pub fn mark_closed(&self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

impl Drop for MuxSlot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.0.opened.elapsed().as_millis() as u64;
            self.0.idle_since_ms.store(ms, Ordering::Release);
        }
    }
}

/// The h2c connections to apps, per (endpoint, identity).
#[derive(Default)]
pub struct MuxPool {
    conns: Mutex<HashMap<Key, Vec<Arc<MuxConn>>>>,
    /// One open at a time per key.
    opening: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    pub stats: MuxStats,
}

impl MuxPool {
    fn pooled(&self, key: &Key, generation: u64) -> Option<MuxSlot> {
        let mut conns = self.conns.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| c.usable(generation));
        let slot = list.iter().find_map(MuxConn::try_reserve)?;
        self.stats.streams_reused.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    /// A stream slot on an h2c connection to `target` with room, else on a new one over a new
    /// tunnel (within `policy`'s limits). The request's `lease` learns the peer's identity.
    pub async fn checkout(
        &self,
        tunnels: &Arc<TunnelPool>,
        target: SocketAddr,
        identity: &PeerCheck,
        lease: &Arc<Lease>,
        policy: &TunnelPolicy,
    ) -> Result<MuxSlot, ConnectError> {
        let key = (target, identity.clone());
        let generation = tunnels.client().generation();
        if let Some(slot) = self.pooled(&key, generation) {
            lease.set_peer(slot.conn().peer().cloned());
            return Ok(slot);
        }
        let gate = self.opening.lock().entry(key.clone()).or_default().clone();
        let _open = gate.lock().await;
        if let Some(slot) = self.pooled(&key, generation) {
            lease.set_peer(slot.conn().peer().cloned());
            return Ok(slot);
        }
        // Boxed: opening is rare, and its future would otherwise make every checkout's (and
        // every request's connect) as large as a new connection's handshake.
        let conn = Arc::new(Box::pin(self.open(tunnels, target, identity, lease, policy)).await?);
        let slot = conn.try_reserve().ok_or_else(|| ConnectError::Overflow {
            target,
            reason: "the app allows no concurrent streams".into(),
        })?;
        if generation == tunnels.client().generation() {
            self.conns.lock().entry(key).or_default().push(conn);
        }
        Ok(slot)
    }

    async fn open(
        &self,
        tunnels: &Arc<TunnelPool>,
        target: SocketAddr,
        identity: &PeerCheck,
        lease: &Arc<Lease>,
        policy: &TunnelPolicy,
    ) -> Result<MuxConn, ConnectError> {
        // A fresh tunnel: an idle one from the HTTP/1 pool leads to an app connection that has
        // already spoken HTTP/1.
        let tunnel = tunnels
            .checkout_new(target, identity, lease.clone(), policy)
            .await?;
        let (stream, hold) = tunnel.into_inner();
        let peer = lease.peer();
        let limits = tunnels.client().limits();
        let timeout = policy.connect_timeout.unwrap_or(limits.connect_timeout);
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(64 * 1024)
            .enable_push(false)
            // h2 writes a frame's 9-byte header and its payload separately on a non-vectored
            // stream: unbuffered, each would be its own DATA frame on the HBONE connection, and a
            // node's h2 server closes a connection flooded with tiny frames (ENHANCE_YOUR_CALM,
            // "too_many_data_frames"). Buffered, each flush is one frame.
            .handshake::<_, Bytes>(tokio::io::BufWriter::with_capacity(WRITE_BUFFER, stream));
        let node = tunnels.node_for(target);
        let (send, conn) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: node,
                timeout,
            })?
            .map_err(|source| ConnectError::H2 { addr: node, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%target, error = %e, "upstream h2c connection ended");
            }
            ended.store(true, Ordering::Release);
        });
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(MuxConn {
            send,
            active: AtomicUsize::new(0),
            served: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            closed,
            peer,
            generation: tunnels.client().generation(),
            idle_timeout: policy.idle_timeout.unwrap_or(limits.idle_timeout),
            max_requests: policy.max_requests_per_tunnel,
            max_duration: policy.max_duration,
            _hold: hold,
        })
    }

    /// Close connections idle past their timeout, closed or retired ones without streams, and
    /// forget unused open gates. (A retired connection still carrying streams closes once they
    /// end: h2 closes a client connection without handles or streams.)
    pub fn sweep(&self, generation: u64) {
        let mut closed_idle = 0;
        let mut conns = self.conns.lock();
        for list in conns.values_mut() {
            list.retain(|c| {
                let idle = c.idle_for().is_some_and(|d| d >= c.idle_timeout);
                closed_idle += u64::from(idle && c.usable(generation));
                !idle && c.usable(generation)
            });
        }
        conns.retain(|_, list| !list.is_empty());
        drop(conns);
        self.stats
            .closed_idle
            .fetch_add(closed_idle, Ordering::Relaxed);
        self.opening
            .lock()
            .retain(|_, gate| Arc::strong_count(gate) > 1 || gate.try_lock().is_err());
    }

    /// Forget every connection (a certificate rotation): streams on them finish.
    pub fn clear(&self) {
        self.conns.lock().clear();
    }

    /// (h2c connections pooled, streams open on them).
    pub fn open_counts(&self) -> (usize, usize) {
        let conns = self.conns.lock();
        let all = conns.values().flatten();
        all.fold((0, 0), |(c, s), conn| {
            (c + 1, s + conn.active.load(Ordering::Relaxed))
        })
    }
}

/// A connection whose driver has gone away, or that received GOAWAY, fails `poll_ready` at once.
fn is_closed(send: &SendRequest<Bytes>) -> bool {
    let mut probe = send.clone();
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    matches!(probe.poll_ready(&mut cx), std::task::Poll::Ready(Err(_)))
}
