//! Reuse of upstream tunnels across requests.
//!
//! Pingora keeps idle upstream sessions in its own pool but refuses to reuse a virtual stream: its
//! reuse check compares the stream's file descriptor with the peer address, and a tunnel has no fd.
//! So every request would open a new CONNECT stream (and a new TCP connection to the app).
//!
//! The way around it, with public pingora APIs only: the L4 connector we hand pingora
//! ([`TunnelConnector`], via `PeerOptions::custom_l4`) returns a [`PooledTunnel`] that carries a
//! [`Lease`]. Once pingora has read the whole upstream response (the proxy marks the lease
//! complete from its body filter, or from its header filter for a response without a body),
//! pingora's next step for a keep-alive session is to test it for reuse with a one-shot read:
//! that read gives the tunnel back to *our* idle list, keyed by (endpoint, identity), still
//! holding the app's keep-alive HTTP/1.1 session, and answers EOF, so pingora discards what it
//! holds instead of pooling it. (pingora-pool keys its LRU by file descriptor, and a virtual
//! stream's is always -1: pooled tunnels would share one LRU slot and race its length counter,
//! which panics in debug builds.) A session pingora will not reuse is shut down instead, and a
//! shut-down tunnel is never given back. Should neither happen, the `logging` hook gives a
//! cleanly finished tunnel back as a fallback.
//! The next `connect()` for that endpoint takes it from there.
//!
//! A cluster's DestinationRule `connectionPool` applies here ([`TunnelPolicy`]): `tcp.connectTimeout`
//! bounds opening a tunnel; `tcp.maxConnections` caps the cluster's open tunnels (in use or idle);
//! a request that finds the cap reached waits as one of `http.http1MaxPendingRequests` pending
//! requests until a tunnel of the cluster is returned or closed (an idle tunnel of the cluster to
//! another endpoint is closed to make room), and overflows with 503 `UO` when the pending queue is
//! full or nothing frees up within the connect timeout; `http.maxRequestsPerConnection` retires a
//! tunnel after that many requests; `http.idleTimeout` bounds how long an idle tunnel is kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use routing::{PoolGuard, PoolHandle, PoolResource};
use tokio::sync::Notify;

use super::client::{ConnectError, HboneClient, Peer, StreamSlot};
use super::stream::H2Stream;
use crate::control::identity::PeerCheck;

mod tunnel;

pub use tunnel::{PooledTunnel, TunnelHold};

/// pingora's idle bound for an upstream session on a tunnel. Idle tunnels in this pool are
/// closed after the cluster's `http.idleTimeout`, else [`super::UpstreamLimits::idle_timeout`].
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pending request waits for a tunnel slot when the cluster sets no `connectTimeout`
/// (Istio's default connect timeout).
const DEFAULT_PENDING_WAIT: Duration = Duration::from_secs(10);
/// At most this many idle tunnels are kept per (endpoint, identity).
const MAX_IDLE_PER_KEY: usize = 256;

type TunnelKey = (SocketAddr, PeerCheck);

/// A cluster's `connectionPool` settings as they apply to its tunnels. The default (no cluster,
/// e.g. a mirror copy) has no limits.
#[derive(Clone, Default)]
pub struct TunnelPolicy {
    /// `tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `http.idleTimeout` (else the client's [`super::UpstreamLimits::idle_timeout`]).
    pub idle_timeout: Option<Duration>,
    /// `http.maxRequestsPerConnection` (0 or unset: unlimited).
    pub max_requests_per_tunnel: Option<u32>,
    /// `tcp.maxConnectionDuration`: a tunnel older than this is not reused; a TCP splice ends.
    pub max_duration: Option<Duration>,
    /// `tcp.idleTimeout`: a TCP splice without a byte for this long ends.
    pub tcp_idle_timeout: Option<Duration>,
    /// `tcp.maxConnections` and `http.http1MaxPendingRequests`, when the cluster limits them;
    /// idle tunnels of the same cluster may be closed to make room.
    pub breaker: Option<PoolHandle>,
}

impl TunnelPolicy {
    /// The tunnel policy of `cluster`.
    pub fn for_cluster(cluster: &routing::Cluster) -> Self {
        let pool = cluster.policy.connection_pool.as_ref();
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        let limits = cluster.limits();
        let limited = limits.max_connections != u32::MAX || limits.max_pending_requests != u32::MAX;
        TunnelPolicy {
            connect_timeout: tcp.and_then(|t| t.connect_timeout).filter(|t| !t.is_zero()),
            idle_timeout: http.and_then(|h| h.idle_timeout).filter(|t| !t.is_zero()),
            max_requests_per_tunnel: http.and_then(|h| h.max_requests_per_connection),
            max_duration: tcp
                .and_then(|t| t.max_connection_duration)
                .filter(|t| !t.is_zero()),
            tcp_idle_timeout: tcp.and_then(|t| t.idle_timeout).filter(|t| !t.is_zero()),
            breaker: limited.then(|| cluster.pool_handle()),
        }
    }

    /// The limits of a TCP splice over a tunnel of this cluster.
    pub fn splice_limits(&self) -> crate::dataplane::splice::SpliceLimits {
        crate::dataplane::splice::SpliceLimits {
            idle_timeout: self.tcp_idle_timeout,
            max_duration: self.max_duration,
        }
    }
}

/// The limits a tunnel keeps from the request that opened it.
#[derive(Debug)]
struct TunnelTerms {
    /// The cluster's breakers, when it limits its connections (to find its idle tunnels).
    breaker: Option<PoolHandle>,
    idle_timeout: Duration,
    max_requests: Option<u32>,
    /// Requests served so far, the current one included.
    served: u32,
    opened: Instant,
    max_duration: Option<Duration>,
    /// The cluster's `tcp.maxConnections` unit, released (and waiters woken) when the tunnel closes.
    _connection: Option<Arc<ConnectionSlot>>,
}

impl TunnelTerms {
    fn retired(&self) -> bool {
        self.max_requests
            .is_some_and(|max| max > 0 && self.served >= max)
            || self
                .max_duration
                .is_some_and(|max| self.opened.elapsed() >= max)
    }
}

/// One unit of a cluster's `tcp.maxConnections`; dropping it wakes requests waiting for a slot.
#[derive(Debug)]
struct ConnectionSlot {
    _guard: PoolGuard,
    freed: Arc<Notify>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.freed.notify_waiters();
    }
}

struct IdleTunnel {
    stream: H2Stream,
    slot: StreamSlot,
    since: Instant,
    terms: TunnelTerms,
}

#[derive(Debug, Default)]
pub struct PoolStats {
    pub tunnels_reused: AtomicU64,
    pub tunnels_returned: AtomicU64,
    /// Tunnels given back only from the `logging` hook: pingora had pooled their session (the
    /// fallback; the reuse test normally gives them back first).
    pub returned_late: AtomicU64,
}

pub struct TunnelPool {
    client: Arc<HboneClient>,
    hbone_port: u16,
    /// Keyed with foldhash: the key is an endpoint and identity from our config, not a peer's
    /// choice, and std's SipHash of the identity was looked up twice per request.
    idle: Mutex<HashMap<TunnelKey, Vec<IdleTunnel>, foldhash::fast::RandomState>>,
    /// Signalled when a tunnel goes idle or a connection slot is released.
    freed: Arc<Notify>,
    /// The sweeper of idle tunnels and connections runs (started by the first checkout, on the
    /// data path's runtime).
    maintained: AtomicBool,
    pub stats: PoolStats,
    /// h2c upstreams: connections multiplexed on tunnels of this pool.
    pub mux: super::mux::MuxPool,
}

/// Shared between one request's context and the tunnel it was served on.
#[derive(Debug, Default)]
pub struct Lease {
    loan: Mutex<Weak<Loan>>,
    /// The identity the tunnel's peer proved (its certificate's SPIFFE URI SAN).
    peer: Mutex<Option<Peer>>,
}

impl Lease {
    /// The identity the upstream proved in the HBONE handshake: the request's
    /// `destination_principal`.
    pub fn peer(&self) -> Option<Peer> {
        self.peer.lock().clone()
    }

    /// The identity of the connection a request's stream was put on.
    pub fn set_peer(&self, peer: Option<Peer>) {
        *self.peer.lock() = peer;
    }

    /// The HTTP/1.1 exchange on this tunnel completed and pingora kept the session for reuse:
    /// the tunnel goes back to our idle list now (pingora would hold it in its own pool until
    /// its next lookup for that peer, which cannot reuse it; meanwhile it would count against
    /// the cluster's `maxConnections`). Called from the `logging` hook, after pingora has either
    /// dropped a session it would not reuse (then there is nothing left to give back) or put it
    /// in its pool.
    pub fn mark_clean(&self) {
        let loan = self.loan.lock().upgrade();
        if let Some(loan) = loan {
            if loan.give_back() {
                loan.pool
                    .stats
                    .returned_late
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// pingora has read the whole upstream response: its next read of the tunnel is its reuse
    /// test, which gives the tunnel back.
    pub fn mark_complete(&self) {
        let loan = self.loan.lock().upgrade();
        if let Some(loan) = loan {
            loan.complete.store(true, Ordering::Release);
        }
    }
}

/// A tunnel lent to one pingora upstream session, reachable from the request's [`Lease`].
struct Loan {
    /// The tunnel and its terms (which hold the cluster connection slot): all of it leaves the
    /// loan when it is given back, so a husk left in pingora's pool holds nothing.
    tunnel: Mutex<Option<(H2Stream, StreamSlot, TunnelTerms)>>,
    /// The response has been read to its end (see [`Lease::mark_complete`]).
    complete: AtomicBool,
    key: TunnelKey,
    pool: Arc<TunnelPool>,
}

impl Loan {
    /// Return the tunnel to the idle list if it is still lent (and fit); whether it was lent.
    fn give_back(&self) -> bool {
        let taken = self.tunnel.lock().take();
        let lent = taken.is_some();
        if let Some((mut stream, slot, terms)) = taken {
            if stream.is_reusable() {
                self.pool.put_idle(self.key.clone(), stream, slot, terms);
            }
        }
        lent
    }
}

impl TunnelPool {
    pub fn new(client: Arc<HboneClient>, hbone_port: u16) -> Arc<Self> {
        Arc::new(Self {
            client,
            hbone_port,
            idle: Mutex::new(HashMap::default()),
            freed: Arc::new(Notify::new()),
            maintained: AtomicBool::new(false),
            stats: PoolStats::default(),
            mux: super::mux::MuxPool::default(),
        })
    }

    /// Close idle tunnels past their idle timeout and let the client close connections left
    /// without streams ([`HboneClient::sweep`]), so nothing outlives the traffic that opened it.
    pub fn sweep(&self) {
        {
            let mut idle = self.idle.lock();
            for list in idle.values_mut() {
                list.retain(|t| t.since.elapsed() < t.terms.idle_timeout && !t.terms.retired());
            }
            idle.retain(|_, list| !list.is_empty());
        }
        self.mux.sweep(self.client.generation());
        self.client.sweep();
    }

    /// Start the periodic [`TunnelPool::sweep`] (once; it ends with the pool).
    pub(super) fn maintain(self: &Arc<Self>) {
        if self.maintained.swap(true, Ordering::AcqRel) {
            return;
        }
        let tick = (self.client.limits().idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                match pool.upgrade() {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        });
    }

    /// A new own certificate: recycle pooled connections and idle tunnels (see
    /// [`HboneClient::rotate`]).
    pub fn rotate(&self, tls: Arc<crate::control::identity::ClientConfigs>) {
        self.client.rotate(tls);
        self.idle.lock().clear();
        self.mux.clear();
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
            if t.since.elapsed() < t.terms.idle_timeout
                && !t.terms.retired()
                && t.slot.generation() == generation
                && t.stream.is_reusable()
            {
                return Some(t);
            }
        }
        None
    }

    /// Close one idle tunnel of `cluster` (to another endpoint), releasing its connection slot.
    fn evict_idle_of(&self, cluster: &PoolHandle) -> bool {
        let mut idle = self.idle.lock();
        for list in idle.values_mut() {
            let same = |t: &IdleTunnel| {
                t.terms
                    .breaker
                    .as_ref()
                    .is_some_and(|b| b.same_cluster(cluster))
            };
            if let Some(i) = list.iter().position(same) {
                list.swap_remove(i);
                return true;
            }
        }
        false
    }

    fn put_idle(&self, key: TunnelKey, stream: H2Stream, slot: StreamSlot, terms: TunnelTerms) {
        // A tunnel on a connection from before a certificate rotation is not kept: it would keep
        // that connection (and its old certificate) alive.
        if slot.generation() != self.client.generation() || terms.retired() {
            return;
        }
        // One reading of the clock for the whole list (it holds as many tunnels as were in use
        // at once: one `elapsed()` each was a clock read per idle tunnel, per request).
        let now = Instant::now();
        let mut idle = self.idle.lock();
        let list = idle.entry(key).or_default();
        list.retain(|t| now.saturating_duration_since(t.since) < t.terms.idle_timeout);
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(IdleTunnel {
                stream,
                slot,
                since: now,
                terms,
            });
            self.stats.tunnels_returned.fetch_add(1, Ordering::Relaxed);
            drop(idle);
            self.freed.notify_waiters();
        }
    }

    /// An idle tunnel to `target` if one is open, else a new CONNECT stream within `policy`'s
    /// limits.
    pub async fn checkout(
        self: &Arc<Self>,
        target: SocketAddr,
        identity: &PeerCheck,
        lease: Arc<Lease>,
        policy: &TunnelPolicy,
    ) -> std::result::Result<PooledTunnel, ConnectError> {
        self.checkout_as(target, identity, lease, policy, true)
            .await
    }

    /// Always a new CONNECT stream within `policy`'s limits, never an idle tunnel: for a caller
    /// that starts its own protocol on the app connection (the h2c pool, ext_authz's gRPC
    /// client, the TCP splice). An idle tunnel's app connection has already spoken HTTP/1: an
    /// h2c preface written on it makes the app close it, and a TCP client's bytes would continue
    /// another client's connection.
    pub async fn checkout_new(
        self: &Arc<Self>,
        target: SocketAddr,
        identity: &PeerCheck,
        lease: Arc<Lease>,
        policy: &TunnelPolicy,
    ) -> std::result::Result<PooledTunnel, ConnectError> {
        self.checkout_as(target, identity, lease, policy, false)
            .await
    }

    async fn checkout_as(
        self: &Arc<Self>,
        target: SocketAddr,
        identity: &PeerCheck,
        lease: Arc<Lease>,
        policy: &TunnelPolicy,
        reuse: bool,
    ) -> std::result::Result<PooledTunnel, ConnectError> {
        self.maintain();
        let key = (target, identity.clone());
        let wait_until = Instant::now() + policy.connect_timeout.unwrap_or(DEFAULT_PENDING_WAIT);
        let mut pending: Option<PoolGuard> = None;
        let connection = loop {
            // Registered before looking, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(mut t) = reuse.then(|| self.take_idle(&key)).flatten() {
                self.stats.tunnels_reused.fetch_add(1, Ordering::Relaxed);
                t.terms.served += 1;
                return Ok(self.lend(key, t.stream, t.slot, t.terms, &lease));
            }
            let Some(breaker) = &policy.breaker else {
                break None;
            };
            match breaker.try_acquire(PoolResource::Connection) {
                Ok(guard) => {
                    break Some(Arc::new(ConnectionSlot {
                        _guard: guard,
                        freed: self.freed.clone(),
                    }))
                }
                Err(overflow) => {
                    if self.evict_idle_of(breaker) {
                        continue;
                    }
                    if pending.is_none() {
                        pending = Some(breaker.try_acquire(PoolResource::PendingRequest).map_err(
                            |o| ConnectError::Overflow {
                                target,
                                reason: o.to_string(),
                            },
                        )?);
                    }
                    let left = wait_until.saturating_duration_since(Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, freed).await.is_err() {
                        return Err(ConnectError::Overflow {
                            target,
                            reason: format!("{overflow}; no tunnel freed up in time"),
                        });
                    }
                }
            }
        };
        // Boxed: a new tunnel is the rare case, and its handshake's future would otherwise be
        // part of every checkout's, which each request's connect moves (several KiB copied).
        let open = Box::pin(
            self.client
                .open(self.node_for(target), identity, target, &[]),
        );
        let (stream, slot) =
            match policy.connect_timeout {
                Some(timeout) => tokio::time::timeout(timeout, open).await.map_err(|_| {
                    ConnectError::Timeout {
                        addr: self.node_for(target),
                        timeout,
                    }
                })??,
                None => open.await?,
            };
        drop(pending);
        let terms = TunnelTerms {
            breaker: policy.breaker.clone(),
            idle_timeout: policy
                .idle_timeout
                .unwrap_or(self.client.limits().idle_timeout),
            max_requests: policy.max_requests_per_tunnel,
            served: 1,
            opened: Instant::now(),
            max_duration: policy.max_duration,
            _connection: connection,
        };
        Ok(self.lend(key, stream, slot, terms, &lease))
    }

    fn lend(
        self: &Arc<Self>,
        key: TunnelKey,
        stream: H2Stream,
        slot: StreamSlot,
        terms: TunnelTerms,
        lease: &Lease,
    ) -> PooledTunnel {
        *lease.peer.lock() = slot.peer().cloned();
        let loan = Arc::new(Loan {
            tunnel: Mutex::new(Some((stream, slot, terms))),
            complete: AtomicBool::new(false),
            key,
            pool: self.clone(),
        });
        *lease.loan.lock() = Arc::downgrade(&loan);
        PooledTunnel { loan }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}
