//! Outbound HBONE: pooled mTLS HTTP/2 connections to endpoint nodes (`podIP:15008`), one CONNECT
//! stream per tunnel. Connections are shared per (node address, expected identity); another one
//! opens when all existing ones carry their stream limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::stream::H2Stream;
use crate::identity::{ClientConfigs, PeerCheck, SpiffeId};

/// ztunnel pools at most 100 streams on one connection.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect to {addr} failed: {source} (is the node's ztunnel listening on the HBONE port?)")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TCP connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("mTLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {target} via {addr} answered {status} (400: authority/IP mismatch, 401: policy deny, 503: app refused)")]
    Status {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("no client TLS config for {0}")]
    Config(String),
    #[error("no tunnel to {target}: {reason}")]
    Overflow { target: SocketAddr, reason: String },
}

impl ConnectError {
    /// Short reason for the access log's upstream transport failure field.
    pub fn short_reason(&self) -> &'static str {
        match self {
            ConnectError::Tcp { .. } => "connection_failure",
            ConnectError::Timeout { .. } => "connection_timeout",
            ConnectError::Tls { .. } => "tls_handshake_failure",
            ConnectError::H2 { .. } => "http2_failure",
            ConnectError::Status { .. } => "connect_refused",
            ConnectError::Config(_) => "tls_config",
            ConnectError::Overflow { .. } => "upstream_overflow",
        }
    }
}

#[derive(Debug, Default)]
pub struct ClientStats {
    pub connections_opened: AtomicU64,
    pub tunnels_opened: AtomicU64,
}

struct Conn {
    send: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    /// The certificate generation it was dialed with (see [`HboneClient::rotate`]).
    generation: u64,
    /// The identity the peer's certificate showed.
    peer: Option<SpiffeId>,
}

/// Decrements a connection's active stream count when the tunnel ends.
pub struct StreamSlot(Arc<AtomicUsize>, u64, Option<SpiffeId>);

impl StreamSlot {
    /// The SPIFFE identity the connection's peer proved in its handshake.
    pub fn peer(&self) -> Option<&SpiffeId> {
        self.2.as_ref()
    }

    /// The certificate generation of the connection this stream rides on.
    pub fn generation(&self) -> u64 {
        self.1
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type ConnKey = (SocketAddr, PeerCheck);

pub struct HboneClient {
    tls: ArcSwap<ClientConfigs>,
    generation: AtomicU64,
    conns: Mutex<HashMap<ConnKey, Vec<Conn>>>,
    connect_timeout: Duration,
    pub stats: ClientStats,
}

impl HboneClient {
    pub fn new(tls: Arc<ClientConfigs>, connect_timeout: Duration) -> Self {
        Self {
            tls: ArcSwap::new(tls),
            generation: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
            stats: ClientStats::default(),
        }
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
            streams += c.active.load(Ordering::Relaxed);
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
            list.retain(|c| !Arc::ptr_eq(&c.active, &slot.0));
        }
    }

    async fn connection(
        &self,
        node: SocketAddr,
        identity: &PeerCheck,
    ) -> Result<(SendRequest<Bytes>, StreamSlot, bool), ConnectError> {
        let key = (node, identity.clone());
        let generation = self.generation.load(Ordering::Acquire);
        {
            let mut conns = self.conns.lock();
            if let Some(list) = conns.get_mut(&key) {
                list.retain(|c| c.generation == generation && !c.send.is_closed_hint());
                for conn in list.iter() {
                    let active = conn.active.load(Ordering::Acquire);
                    if active < MAX_STREAMS_PER_CONNECTION
                        && conn
                            .active
                            .compare_exchange(
                                active,
                                active + 1,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                    {
                        return Ok((
                            conn.send.clone(),
                            StreamSlot(conn.active.clone(), generation, conn.peer.clone()),
                            false,
                        ));
                    }
                }
            }
        }
        let (send, peer) = self.dial(node, identity).await?;
        let active = Arc::new(AtomicUsize::new(1));
        // Dialed with a certificate that was rotated meanwhile: use it once, do not pool it.
        if self.generation.load(Ordering::Acquire) == generation {
            self.conns.lock().entry(key).or_default().push(Conn {
                send: send.clone(),
                active: active.clone(),
                generation,
                peer: peer.clone(),
            });
        }
        Ok((send, StreamSlot(active, generation, peer), true))
    }

    async fn dial(
        &self,
        node: SocketAddr,
        identity: &PeerCheck,
    ) -> Result<(SendRequest<Bytes>, Option<SpiffeId>), ConnectError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(node))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: node,
                timeout: self.connect_timeout,
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
            self.connect_timeout,
            connector.connect(ServerName::IpAddress(node.ip().into()), tcp),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: node,
            timeout: self.connect_timeout,
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
            .and_then(|c| crate::identity::peer_identity(c).ok());
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::Tls {
                addr: node,
                reason: "peer did not negotiate ALPN h2".into(),
            });
        }
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(16 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| ConnectError::H2 { addr: node, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%node, error = %e, "outbound HBONE connection ended");
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
        let response = tokio::time::timeout(self.connect_timeout, response)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: node,
                timeout: self.connect_timeout,
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
