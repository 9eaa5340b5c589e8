//! Outbound HBONE: pooled mTLS HTTP/2 connections to endpoint nodes (`podIP:15008`), one CONNECT
//! stream per tunnel. Connections are shared per (node address, expected identity); another one
//! opens when all existing ones carry their stream limit, up to
//! [`UpstreamLimits::max_connections_per_endpoint`] (beyond it streams share the least loaded
//! connection, HTTP/2 multiplexing being the point). Dials to one key are made one at a time:
//! requests arriving while a dial is under way wait for it and share its connection, or its
//! failure. Each connection is PINGed every `keepalive_interval`; one that does not answer
//! within `keepalive_timeout` (a hung peer) is closed and forgotten. A connection without
//! streams for `idle_timeout` is closed ([`HboneClient::sweep`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::stream::H2Stream;
use crate::control::identity::{ClientConfigs, PeerCheck};

mod error;

pub use error::ConnectError;

/// ztunnel pools at most 100 streams on one connection.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// What an upstream may send ahead of the waypoint's reader, per tunnel and per connection: the
/// data a slow downstream reader can make the waypoint hold (measured in
/// `waypoint/tests/cli/abuse.rs`). A LAN's bandwidth-delay product is far below either.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;

/// Bounds on the upstream HBONE connections a waypoint keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamLimits {
    /// Timeout for dialing a node (TCP, mTLS, HTTP/2 handshake) and for its CONNECT answer.
    pub connect_timeout: Duration,
    /// HBONE connections per (node, expected identity) at most.
    pub max_connections_per_endpoint: usize,
    /// A connection without streams for this long is closed.
    pub idle_timeout: Duration,
    /// A PING is sent on every connection this often…
    pub keepalive_interval: Duration,
    /// …and a connection whose PING is not answered within this is closed.
    pub keepalive_timeout: Duration,
}

impl Default for UpstreamLimits {
    /// 10 s connect timeout (Istio's), 8 connections per endpoint (800 concurrent streams at
    /// ztunnel's 100 per connection), 60 s idle, PING every 10 s with a 20 s answer deadline
    /// (ztunnel's HTTP/2 keep-alive).
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_connections_per_endpoint: 8,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Default)]
pub struct ClientStats {
    pub connections_opened: AtomicU64,
    pub tunnels_opened: AtomicU64,
    /// Requests that waited on another request's dial to the same node instead of dialing.
    pub dials_coalesced: AtomicU64,
    /// Connections closed after `idle_timeout` without streams.
    pub closed_idle: AtomicU64,
    /// Connections closed because a PING went unanswered (a hung peer).
    pub closed_keepalive: AtomicU64,
}

/// A connection's stream count and when it last went to zero.
#[derive(Debug)]
struct Usage {
    active: AtomicUsize,
    /// Milliseconds after the client's epoch when the last stream ended.
    idle_since_ms: AtomicU64,
    /// Set when its keep-alive PING failed: never handed out again.
    dead: AtomicBool,
}

struct Conn {
    send: SendRequest<Bytes>,
    usage: Arc<Usage>,
    /// The certificate generation it was dialed with (see [`HboneClient::rotate`]).
    generation: u64,
    /// The identity the peer's certificate showed (its URI, formatted once at the handshake).
    peer: Option<Peer>,
}

/// Decrements a connection's active stream count when the tunnel ends.
pub struct StreamSlot(Arc<Usage>, u64, Option<Peer>, Instant);

impl StreamSlot {
    /// The SPIFFE identity the connection's peer proved in its handshake.
    pub fn peer(&self) -> Option<&Peer> {
        self.2.as_ref()
    }

    /// The certificate generation of the connection this stream rides on.
    pub fn generation(&self) -> u64 {
        self.1
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.3.elapsed().as_millis() as u64;
            self.0.idle_since_ms.store(ms, Ordering::Release);
        }
    }
}

type ConnKey = (SocketAddr, PeerCheck);

/// The SPIFFE URI an upstream proved in its handshake: a request's `destination_principal`,
/// shared by every stream on the connection.
pub type Peer = Arc<str>;

/// One key's dial gate: dials are made one at a time, and the last failure is shared with the
/// requests that waited for it.
#[derive(Default)]
struct DialGate {
    last_failure: Option<(Instant, ConnectError)>,
}

pub struct HboneClient {
    tls: ArcSwap<ClientConfigs>,
    generation: AtomicU64,
    conns: Mutex<HashMap<ConnKey, Vec<Conn>>>,
    dials: Mutex<HashMap<ConnKey, Arc<tokio::sync::Mutex<DialGate>>>>,
    limits: UpstreamLimits,
    epoch: Instant,
    pub stats: Arc<ClientStats>,
    /// At its cut every connection is dropped: the streams on it fail at once.
    drain: Arc<crate::dataplane::drain::Drain>,
}

impl HboneClient {
    pub fn new(tls: Arc<ClientConfigs>, connect_timeout: Duration) -> Self {
        Self::with_limits(
            tls,
            UpstreamLimits {
                connect_timeout,
                ..UpstreamLimits::default()
            },
        )
    }

    pub fn with_limits(tls: Arc<ClientConfigs>, limits: UpstreamLimits) -> Self {
        Self {
            tls: ArcSwap::new(tls),
            generation: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            dials: Mutex::new(HashMap::new()),
            limits,
            epoch: Instant::now(),
            stats: Arc::new(ClientStats::default()),
            drain: Arc::default(),
        }
    }

    /// Connections drop when `drain` is cut (the end of the SIGTERM drain).
    pub fn with_drain(mut self, drain: Arc<crate::dataplane::drain::Drain>) -> Self {
        self.drain = drain;
        self
    }

    pub fn limits(&self) -> &UpstreamLimits {
        &self.limits
    }

    /// Close connections without streams for `idle_timeout`, and forget dead and closed ones
    /// and unused dial gates. Called periodically ([`super::TunnelPool::maintain`]).
    pub fn sweep(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let idle_ms = self.limits.idle_timeout.as_millis() as u64;
        let mut closed_idle = 0;
        let mut conns = self.conns.lock();
        for list in conns.values_mut() {
            list.retain(|c| {
                if c.usage.dead.load(Ordering::Acquire) || c.send.is_closed_hint() {
                    return false;
                }
                let idle = c.usage.active.load(Ordering::Acquire) == 0
                    && now_ms.saturating_sub(c.usage.idle_since_ms.load(Ordering::Acquire))
                        >= idle_ms;
                closed_idle += u64::from(idle);
                !idle
            });
        }
        conns.retain(|_, list| !list.is_empty());
        drop(conns);
        self.stats
            .closed_idle
            .fetch_add(closed_idle, Ordering::Relaxed);
        self.dials
            .lock()
            .retain(|_, gate| Arc::strong_count(gate) > 1 || gate.try_lock().is_err());
    }

    /// A new own certificate: connections dialed from now on present it. Pooled connections
    /// are forgotten, so none keeps an old certificate; streams open on them finish undisturbed
    /// (the connection closes when its last stream ends).
    pub fn rotate(&self, tls: Arc<ClientConfigs>) {
        self.tls.store(tls);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.conns.lock().clear();
    }

    /// The waypoint's own certificate's client configs (the current ones).
    pub fn configs(&self) -> Arc<ClientConfigs> {
        self.tls.load_full()
    }

    /// Bumped by every [`HboneClient::rotate`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// (pooled HBONE connections, CONNECT streams open on them) right now.
    pub fn open_counts(&self) -> (usize, usize) {
        let conns = self.conns.lock();
        let mut connections = 0;
        let mut streams = 0;
        for c in conns.values().flatten() {
            connections += 1;
            streams += c.usage.active.load(Ordering::Relaxed);
        }
        (connections, streams)
    }

    /// Open a CONNECT tunnel to `target` through the node at `node` that must prove `identity`.
    pub async fn open(
        &self,
        node: SocketAddr,
        identity: &PeerCheck,
        target: SocketAddr,
        headers: &[(&str, String)],
    ) -> Result<(H2Stream, StreamSlot), ConnectError> {
        // One retry on a fresh connection if a pooled one turned out to be closed.
        let mut fresh_tried = false;
        loop {
            let (send, slot, fresh) = self.connection(node, identity).await?;
            match self.connect_stream(send, node, target, headers).await {
                Ok(stream) => {
                    self.stats.tunnels_opened.fetch_add(1, Ordering::Relaxed);
                    return Ok((stream, slot));
                }
                Err(ConnectError::H2 { source, .. }) if !fresh && !fresh_tried => {
                    debug!(%node, error = %source, "pooled HBONE connection unusable, redialing");
                    self.forget(node, identity, &slot);
                    fresh_tried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Drop the connection that carried `slot` (it failed); others stay pooled.
    fn forget(&self, node: SocketAddr, identity: &PeerCheck, slot: &StreamSlot) {
        let mut conns = self.conns.lock();
        if let Some(list) = conns.get_mut(&(node, identity.clone())) {
            list.retain(|c| !Arc::ptr_eq(&c.usage, &slot.0));
        }
    }

    /// A stream slot on a pooled connection to `key` with room, if there is one; at the
    /// per-endpoint cap, the least loaded connection whatever its load.
    fn pooled(
        &self,
        key: &ConnKey,
        generation: u64,
    ) -> Option<(SendRequest<Bytes>, StreamSlot, bool)> {
        let mut conns = self.conns.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| {
            c.generation == generation
                && !c.usage.dead.load(Ordering::Acquire)
                && !c.send.is_closed_hint()
        });
        let slot = |c: &Conn| {
            (
                c.send.clone(),
                StreamSlot(c.usage.clone(), generation, c.peer.clone(), self.epoch),
                false,
            )
        };
        for conn in list.iter() {
            let active = conn.usage.active.load(Ordering::Acquire);
            if active < MAX_STREAMS_PER_CONNECTION
                && conn
                    .usage
                    .active
                    .compare_exchange(active, active + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Some(slot(conn));
            }
        }
        if list.len() >= self.limits.max_connections_per_endpoint {
            let conn = list
                .iter()
                .min_by_key(|c| c.usage.active.load(Ordering::Acquire))?;
            conn.usage.active.fetch_add(1, Ordering::AcqRel);
            return Some(slot(conn));
        }
        None
    }

    async fn connection(
        &self,
        node: SocketAddr,
        identity: &PeerCheck,
    ) -> Result<(SendRequest<Bytes>, StreamSlot, bool), ConnectError> {
        let key = (node, identity.clone());
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(found) = self.pooled(&key, generation) {
            return Ok(found);
        }
        // One dial at a time per key: a burst to a cold endpoint shares the first connection.
        let gate = self.dials.lock().entry(key.clone()).or_default().clone();
        let waited_since = Instant::now();
        let mut gate = match gate.try_lock() {
            Ok(g) => g,
            Err(_) => {
                self.stats.dials_coalesced.fetch_add(1, Ordering::Relaxed);
                gate.lock().await
            }
        };
        if let Some(found) = self.pooled(&key, generation) {
            return Ok(found);
        }
        if let Some((at, e)) = &gate.last_failure {
            if *at >= waited_since {
                return Err(e.shared());
            }
        }
        let usage = Arc::new(Usage {
            active: AtomicUsize::new(1),
            idle_since_ms: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        });
        let (send, peer) = match self.dial(node, identity, usage.clone()).await {
            Ok(c) => c,
            Err(e) => {
                gate.last_failure = Some((Instant::now(), e.shared()));
                return Err(e);
            }
        };
        gate.last_failure = None;
        let slot = StreamSlot(usage.clone(), generation, peer.clone(), self.epoch);
        // Dialed with a certificate that was rotated meanwhile: use it once, do not pool it.
        // (A connection the pool no longer holds closes once its last stream ends: h2 closes a
        // client connection without request handles or streams.)
        if self.generation.load(Ordering::Acquire) == generation {
            self.conns.lock().entry(key).or_default().push(Conn {
                send: send.clone(),
                usage,
                generation,
                peer,
            });
        }
        Ok((send, slot, true))
    }

    async fn dial(
        &self,
        node: SocketAddr,
        identity: &PeerCheck,
        usage: Arc<Usage>,
    ) -> Result<(SendRequest<Bytes>, Option<Peer>), ConnectError> {
        let timeout = self.limits.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(node))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: node,
                timeout,
            })?
            .map_err(|source| ConnectError::Tcp { addr: node, source })?;
        let _ = tcp.set_nodelay(true);
        let config = self
            .tls
            .load()
            .for_peer(identity)
            .map_err(|e| ConnectError::Config(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(
            timeout,
            connector.connect(ServerName::IpAddress(node.ip().into()), tcp),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: node,
            timeout,
        })?
        .map_err(|e| ConnectError::Tls {
            addr: node,
            reason: e.to_string(),
        })?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::control::identity::peer_identity(c).ok())
            .map(|id| Peer::from(id.to_string()));
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::Tls {
                addr: node,
                reason: "peer did not negotiate ALPN h2".into(),
            });
        }
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(16 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(tls);
        let (send, mut conn) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: node,
                timeout,
            })?
            .map_err(|source| ConnectError::H2 { addr: node, source })?;
        let ping = conn.ping_pong();
        let (interval, answer_within) = (
            self.limits.keepalive_interval,
            self.limits.keepalive_timeout,
        );
        let stats = self.stats.clone();
        let cut = self.drain.cut_signal();
        tokio::spawn(async move {
            let keepalive = async {
                match ping {
                    Some(ping) => keepalive(ping, interval, answer_within).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = &mut conn => if let Err(e) = ended {
                    debug!(%node, error = %e, "outbound HBONE connection ended");
                },
                why = keepalive => {
                    // Dropping the connection closes the socket: its streams fail now instead
                    // of waiting on a peer that stopped answering.
                    usage.dead.store(true, Ordering::Release);
                    stats.closed_keepalive.fetch_add(1, Ordering::Relaxed);
                    warn!(%node, %why, "outbound HBONE connection closed: keep-alive PING unanswered");
                }
                _ = cut => {
                    // The drain deadline: the streams fail now, so that the requests on them
                    // are answered (503) or reset deliberately before the process exits.
                    usage.dead.store(true, Ordering::Release);
                    debug!(%node, "outbound HBONE connection dropped at the drain deadline");
                }
            }
        });
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        debug!(%node, expected = %identity, peer = ?peer, "outbound HBONE connection established");
        Ok((send, peer))
    }

    async fn connect_stream(
        &self,
        send: SendRequest<Bytes>,
        node: SocketAddr,
        target: SocketAddr,
        headers: &[(&str, String)],
    ) -> Result<H2Stream, ConnectError> {
        let h2err = |source| ConnectError::H2 { addr: node, source };
        let mut send = send.ready().await.map_err(h2err)?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string());
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let req = req.body(()).expect("CONNECT request from valid parts");
        let (response, stream) = send.send_request(req, false).map_err(h2err)?;
        let response = tokio::time::timeout(self.limits.connect_timeout, response)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: node,
                timeout: self.limits.connect_timeout,
            })?
            .map_err(h2err)?;
        if response.status() != StatusCode::OK {
            warn!(%node, %target, status = %response.status(), "endpoint refused CONNECT");
            return Err(ConnectError::Status {
                addr: node,
                target,
                status: response.status(),
            });
        }
        Ok(H2Stream::new(stream, response.into_body()))
    }
}

/// PING every `interval`; returns why when an answer does not come within `answer_within`.
async fn keepalive(mut ping: h2::PingPong, interval: Duration, answer_within: Duration) -> String {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(answer_within, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no PING answer within {answer_within:?}"),
        }
    }
}

trait ClosedHint {
    fn is_closed_hint(&self) -> bool;
}

impl ClosedHint for SendRequest<Bytes> {
    /// A connection whose driver has gone away fails `poll_ready` at once.
    fn is_closed_hint(&self) -> bool {
        let mut probe = self.clone();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        matches!(probe.poll_ready(&mut cx), std::task::Poll::Ready(Err(_)))
    }
}
