//! Inbound HBONE: mTLS (TLS 1.3, ALPN h2, client cert required) → HTTP/2 server → one CONNECT
//! stream per tunnel. Each accepted tunnel is answered `200` before any tunnelled byte is read,
//! then handed to the [`Inbound`] dispatcher.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use pingora_core::server::ShutdownWatch;
use routing::Destination;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::stream::H2Stream;
use crate::control::identity::peer_identity;
use crate::dataplane::inbound::Inbound;
use crate::dataplane::tunnel::{parse_forwarded, TunnelInfo};
use crate::telemetry::throttle::LogThrottle;
use crate::transport::workers::Workers;

/// Default time from accept to the end of the handshake: TLS, then the client's HTTP/2 preface.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ztunnel pings every 10 s and gives up after 20 s; the waypoint does the same to its peers.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(super) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 1000;
const MAX_HEADER_LIST: u32 = 16 * 1024;

#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub tunnels: AtomicU64,
    /// HBONE connections open now.
    pub connections_open: AtomicU64,
    /// CONNECT tunnels open now.
    pub tunnels_open: AtomicU64,
    pub rejected_handshakes: AtomicU64,
    pub rejected_streams: AtomicU64,
    /// `forwarded: for=` claims that could not be verified.
    pub sources: crate::dataplane::source::SourceStats,
    /// Connections in the TLS handshake now.
    pub tls_handshaking: AtomicU64,
    /// Connections past TLS, waiting for the client's HTTP/2 preface now.
    pub h2_handshaking: AtomicU64,
    /// Connections closed because the TLS handshake did not finish in time.
    pub tls_handshake_timeouts: AtomicU64,
    /// Authenticated connections closed because the HTTP/2 preface did not arrive in time.
    pub h2_handshake_timeouts: AtomicU64,
    /// Accepted tunnels the client reset within [`PREMATURE_RESET_LIFETIME`], before any byte
    /// was sent back.
    pub premature_resets: AtomicU64,
    /// Connections closed because most of their tunnels were reset prematurely.
    pub closed_for_resets: AtomicU64,
}

/// A tunnel the client resets within this long after it was accepted, before the waypoint sent
/// it a byte (Envoy: before the response completed), counts as a premature reset (Envoy's
/// `overload.premature_reset_min_stream_lifetime_seconds`, 1 s)…
pub const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);
/// …and once a connection has carried this many tunnels (Envoy's
/// `overload.premature_reset_total_stream_count`, 500), it is closed when more than half of
/// them were reset prematurely (rapid reset after acceptance, CVE-2023-44487).
pub const PREMATURE_RESET_MIN_STREAMS: u64 = 500;

/// One connection's tunnels and premature resets.
#[derive(Debug, Default)]
struct ResetTracker {
    streams: AtomicU64,
    premature: AtomicU64,
    /// Wakes the connection loop to close the connection.
    trip: tokio::sync::Notify,
}

impl ResetTracker {
    /// Record a tunnel's end; true when the connection should now be closed. Streams count when
    /// they end, as Envoy counts closed requests: a stream accepted but not yet ended neither
    /// counts toward the minimum nor dilutes the share.
    fn ended(&self, reset_by_client: bool, lifetime: Duration) -> bool {
        let streams = self.streams.fetch_add(1, Ordering::AcqRel) + 1;
        if !(reset_by_client && lifetime < PREMATURE_RESET_LIFETIME) {
            return false;
        }
        let premature = self.premature.fetch_add(1, Ordering::AcqRel) + 1;
        streams >= PREMATURE_RESET_MIN_STREAMS && premature * 2 > streams
    }
}

pub struct HboneServer {
    /// Swapped on certificate rotation; each handshake uses the config current at accept.
    tls: ArcSwap<rustls::ServerConfig>,
    inbound: Arc<Inbound>,
    pub stats: ServerStats,
    /// From accept to the client's HTTP/2 preface.
    handshake_timeout: Duration,
    /// Failed handshakes are logged at most once per interval per reason.
    log: LogThrottle,
    /// Where accepted connections are served; `None`: tasks of the accepting runtime.
    workers: Option<Arc<Workers>>,
}

struct ConnInfo {
    peer: SocketAddr,
    local: SocketAddr,
    identity: crate::control::identity::SpiffeId,
    resets: ResetTracker,
}

impl HboneServer {
    /// The SIGTERM drain this server's tunnels follow.
    pub fn drain(&self) -> &crate::dataplane::drain::Drain {
        &self.inbound.drain
    }

    /// New handshakes present the certificate of `tls`; established connections keep theirs.
    pub fn set_tls(&self, tls: Arc<rustls::ServerConfig>) {
        self.tls.store(tls);
    }

    /// `handshake_timeout` bounds the time from accept to the client's HTTP/2 preface.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        inbound: Arc<Inbound>,
        handshake_timeout: Duration,
        workers: Option<Arc<Workers>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tls: ArcSwap::new(tls),
            inbound,
            stats: ServerStats::default(),
            handshake_timeout,
            log: LogThrottle::default(),
            workers,
        })
    }

    /// The worker threads serving its connections, if it has its own.
    pub fn workers(&self) -> Option<&Workers> {
        self.workers.as_deref()
    }

    /// Count a connection refused during its handshake; log it unless `reason` was logged
    /// within the throttle's interval.
    fn refuse(&self, reason: &'static str, log: impl FnOnce(u64)) {
        self.stats
            .rejected_handshakes
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.log.allow(reason) {
            log(suppressed);
        }
    }

    /// Accept HBONE connections until `shutdown` turns true; then stop accepting and let every
    /// connection send GOAWAY and drain.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: ShutdownWatch) {
        let addr = listener.local_addr().ok();
        info!(?addr, "HBONE listener accepting");
        let listeners = self.inbound.telemetry.listeners.clone();
        let stats = listeners.get("hbone");
        loop {
            tokio::select! {
                (tcp, peer) = listeners.accept("hbone", &listener, &stats) => {
                    let shutdown = shutdown.clone();
                    let server = self.clone();
                    match &self.workers {
                        Some(workers) => {
                            let serve = move |tcp| server.connection(tcp, peer, shutdown);
                            if let Err(e) = workers.spawn_connection(tcp, serve) {
                                self.refuse("worker", |suppressed| {
                                    warn!(%peer, error = %e, suppressed,
                                        "cannot hand an HBONE connection to a worker")
                                });
                            }
                        }
                        None => {
                            tokio::spawn(async move { server.connection(tcp, peer, shutdown).await });
                        }
                    }
                },
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        info!("HBONE listener stops accepting");
                        break;
                    }
                }
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        mut shutdown: ShutdownWatch,
    ) {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let _ = tcp.set_nodelay(true);
        // One deadline from accept to the HTTP/2 preface: a peer that completes TLS and then
        // stays silent is held no longer than one that stalls the TLS handshake.
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let handshaking = OpenGauge::new(&self.stats.tls_handshaking);
        let tls = match tokio::time::timeout_at(
            deadline,
            TlsAcceptor::from(self.tls.load_full()).accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return self.refuse(tls_failure(&e), |suppressed| {
                    warn!(%peer, error = %e, suppressed,
                        "HBONE mTLS handshake rejected")
                });
            }
            Err(_) => {
                self.stats
                    .tls_handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                let timeout = self.handshake_timeout;
                return self.refuse("tls_timeout", |suppressed| {
                    warn!(%peer, suppressed,
                        "HBONE mTLS handshake timed out after {timeout:?}")
                });
            }
        };
        drop(handshaking);
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(b"h2") {
            return self.refuse("alpn", |suppressed| {
                warn!(%peer, suppressed,
                    "HBONE peer did not negotiate ALPN h2; closing")
            });
        }
        let identity = match session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(peer_identity)
        {
            Some(Ok(id)) => id,
            Some(Err(reason)) => {
                return self.refuse("identity", |suppressed| {
                    warn!(%peer, %reason, suppressed,
                        "HBONE peer certificate has no usable identity")
                });
            }
            None => {
                return self.refuse("no_certificate", |suppressed| {
                    warn!(%peer, suppressed,
                        "HBONE peer presented no certificate")
                });
            }
        };
        let handshaking = OpenGauge::new(&self.stats.h2_handshaking);
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            // Read in slices, so a burst of tiny frames is taken out between them (fair.rs).
            .handshake::<_, Bytes>(super::fair::Fair::new(tls));
        let mut conn = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return self.refuse("http2", |suppressed| {
                    warn!(%peer, %identity, error = %e, suppressed,
                        "HTTP/2 handshake failed")
                });
            }
            Err(_) => {
                self.stats
                    .h2_handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                let timeout = self.handshake_timeout;
                return self.refuse("http2_timeout", |suppressed| {
                    warn!(%peer, %identity, suppressed,
                        "HBONE peer sent no HTTP/2 preface within {timeout:?} of connecting; \
                         closing")
                });
            }
        };
        drop(handshaking);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGauge::new(&self.stats.connections_open);
        debug!(%peer, %identity, "HBONE connection established");
        let info = Arc::new(ConnInfo {
            peer,
            local,
            identity,
            resets: ResetTracker::default(),
        });
        let (dead_tx, mut dead_rx) = tokio::sync::oneshot::channel::<()>();
        let keepalive = conn.ping_pong().map(|mut pp| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PING_INTERVAL).await;
                    match tokio::time::timeout(PING_TIMEOUT, pp.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            let _ = dead_tx.send(());
                            return;
                        }
                    }
                }
            })
        });
        let mut draining = *shutdown.borrow();
        if draining {
            conn.graceful_shutdown();
        }
        // The drain deadline: its cut answers or resets the tunnels through their upstreams;
        // a connection still open a moment later is closed (GOAWAY INTERNAL_ERROR), so that
        // what the cut could not reach fails explicitly rather than by the process exit.
        let cut = self.inbound.drain.cut_signal();
        tokio::pin!(cut);
        let mut force_close: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                _ = &mut cut, if force_close.is_none() => {
                    let after = self.inbound.drain.force_close_after();
                    force_close = Some(Box::pin(tokio::time::sleep(after)));
                }
                _ = async { force_close.as_mut().expect("guarded").await }, if force_close.is_some() => {
                    debug!(%peer, "closing HBONE connection at the drain deadline");
                    conn.abrupt_shutdown(super::stream::RESET_REASON);
                    let flush = async { while conn.accept().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_millis(200), flush).await;
                    break;
                }
                next = conn.accept() => match next {
                    // The drain has started, maybe before this task sent its GOAWAY (or the
                    // peer read it): a new stream is refused, never served. REFUSED_STREAM tells
                    // the peer it was not processed, so it may retry elsewhere.
                    Some(Ok((_, mut respond))) if *shutdown.borrow() => {
                        if !draining {
                            conn.graceful_shutdown();
                            draining = true;
                        }
                        self.stats.rejected_streams.fetch_add(1, Ordering::Relaxed);
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                    Some(Ok((req, respond))) => {
                        let server = self.clone();
                        let info = info.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move { server.stream(req, respond, info, shutdown).await });
                    }
                    Some(Err(e)) => {
                        debug!(%peer, error = %e, "HBONE connection error");
                        break;
                    }
                    None => break,
                },
                changed = shutdown.changed(), if !draining => {
                    if changed.is_err() || *shutdown.borrow() {
                        debug!(%peer, "sending GOAWAY");
                        conn.graceful_shutdown();
                        draining = true;
                    }
                }
                _ = info.resets.trip.notified() => {
                    self.stats.closed_for_resets.fetch_add(1, Ordering::Relaxed);
                    let (streams, premature) = (
                        info.resets.streams.load(Ordering::Relaxed),
                        info.resets.premature.load(Ordering::Relaxed),
                    );
                    if let Some(suppressed) = self.log.allow("premature_resets") {
                        warn!(%peer, identity = %info.identity, streams, premature, suppressed,
                            "HBONE connection closed: most of its tunnels were reset within \
                             {PREMATURE_RESET_LIFETIME:?} of acceptance");
                    }
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    // Flush the GOAWAY (bounded), then drop the connection and its tunnels.
                    let flush = async { while conn.accept().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
                    break;
                }
                _ = &mut dead_rx => {
                    warn!(%peer, "HBONE peer missed keep-alive pings for {PING_TIMEOUT:?}; closing");
                    break;
                }
            }
        }
        if let Some(k) = keepalive {
            k.abort();
        }
    }

    async fn stream(
        self: Arc<Self>,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        conn: Arc<ConnInfo>,
        shutdown: ShutdownWatch,
    ) {
        let reject = |respond: &mut SendResponse<Bytes>, status: StatusCode| {
            self.stats.rejected_streams.fetch_add(1, Ordering::Relaxed);
            let resp = Response::builder()
                .status(status)
                .body(())
                .expect("static response");
            let _ = respond.send_response(resp, true);
        };
        if req.method() != Method::CONNECT {
            debug!(peer = %conn.peer, method = %req.method(), "non-CONNECT request on HBONE");
            return reject(&mut respond, StatusCode::BAD_REQUEST);
        }
        // Over the memory budget: no new tunnel (the overload manager counts it).
        if self.inbound.telemetry.overload.reject_tunnel() {
            debug!(peer = %conn.peer, "CONNECT refused: memory over the overload threshold");
            return reject(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
        }
        let snapshot = self.inbound.snapshot();
        // `ip:port`, or (multi-network) a `hostname:port` the config's authority map serves,
        // which stands for that service's VIP.
        let Some(dst) = req.uri().authority().and_then(|a| {
            a.as_str()
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| snapshot.resolve_authority(a.host(), a.port_u16()?))
        }) else {
            warn!(peer = %conn.peer, uri = %req.uri(),
                "CONNECT without an ip:port authority or a hostname:port this waypoint serves");
            return reject(&mut respond, StatusCode::BAD_REQUEST);
        };
        let protocol = match snapshot.resolve_destination(dst) {
            Some(Destination::Service { port, .. }) => port.protocol,
            // A pod bound to this waypoint: its direct chains decide (istiod's
            // application-protocol matcher: HTTP detected, else TCP).
            Some(Destination::Pod {
                bound: Some(protocol),
                ..
            }) => protocol,
            Some(Destination::Pod { port, services, .. }) => services
                .iter()
                .find_map(|s| {
                    s.ports
                        .iter()
                        .find(|p| p.target_port == port || p.number == port)
                })
                .map_or(routing::Protocol::Unknown, |p| p.protocol),
            None => {
                warn!(peer = %conn.peer, source = %conn.identity, %dst,
                    "CONNECT to {dst}: no service VIP or workload at that address is served by this waypoint");
                return reject(&mut respond, StatusCode::NOT_FOUND);
            }
        };
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (forwarded_for, forwarded_host) = header("forwarded")
            .map(|f| parse_forwarded(&f))
            .unwrap_or((None, None));
        let source = crate::dataplane::source::resolve(
            &snapshot,
            conn.peer,
            forwarded_for,
            &conn.identity,
            &self.stats.sources,
        );
        let info = TunnelInfo {
            peer: conn.peer,
            source_addr: source.addr,
            claimed_source: source.claimed,
            source_identity: conn.identity.clone(),
            original_dst: dst,
            local: conn.local,
            forwarded_host,
            baggage: header("baggage"),
            traceparent: header("traceparent"),
            metric_labels: Default::default(),
            principal: Default::default(),
        };
        let ok = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .expect("static response");
        let send = match respond.send_response(ok, false) {
            Ok(send) => send,
            Err(e) => {
                debug!(peer = %conn.peer, error = %e, "tunnel closed before 200 was sent");
                return;
            }
        };
        self.stats.tunnels.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGauge::new(&self.stats.tunnels_open);
        let mut tunnel = H2Stream::new(send, req.into_body())
            .with_send_timeout(self.inbound.send_timeout)
            .with_overload(&self.inbound.telemetry.overload);
        let end = Arc::new(super::stream::TunnelEnd::default());
        tunnel.track_end(end.clone());
        let accepted = std::time::Instant::now();
        self.inbound
            .serve_tunnel(tunnel, Arc::new(info), protocol, shutdown)
            .await;
        let reset_by_client = end.reset_by_peer();
        if reset_by_client && accepted.elapsed() < PREMATURE_RESET_LIFETIME {
            self.stats.premature_resets.fetch_add(1, Ordering::Relaxed);
        }
        if conn.resets.ended(reset_by_client, accepted.elapsed()) {
            conn.resets.trip.notify_one();
        }
    }
}

/// The kind of a failed TLS handshake: failures are logged at most once per interval per kind,
/// so that one peer repeating one failure cannot hide a different one.
fn tls_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(c)) => match c {
            C::Expired | C::ExpiredContext { .. } => "tls_certificate_expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "tls_certificate_not_valid_yet",
            C::UnknownIssuer => "tls_certificate_unknown_issuer",
            C::BadSignature | C::BadEncoding => "tls_certificate_bad",
            _ => "tls_certificate_other",
        },
        Some(E::NoCertificatesPresented) => "tls_no_certificate",
        Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => "tls_bad_message",
        Some(E::InappropriateHandshakeMessage { .. } | E::PeerMisbehaved(_)) => "tls_misbehaved",
        Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => "tls_incompatible",
        Some(E::AlertReceived(_)) => "tls_alert",
        Some(_) => "tls_other",
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "tls_eof",
            std::io::ErrorKind::ConnectionReset => "tls_reset",
            _ => "tls_io",
        },
    }
}

/// Counts one open connection or tunnel for as long as it lives.
struct OpenGauge<'a>(&'a AtomicU64);

impl<'a> OpenGauge<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_told_apart_for_rate_limited_logging() {
        let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let cert = |c| wrap(rustls::Error::InvalidCertificate(c));
        assert_eq!(
            tls_failure(&cert(rustls::CertificateError::Expired)),
            "tls_certificate_expired"
        );
        assert_eq!(
            tls_failure(&cert(rustls::CertificateError::NotValidYet)),
            "tls_certificate_not_valid_yet"
        );
        assert_eq!(
            tls_failure(&wrap(rustls::Error::NoCertificatesPresented)),
            "tls_no_certificate"
        );
        assert_eq!(
            tls_failure(&std::io::ErrorKind::UnexpectedEof.into()),
            "tls_eof"
        );
    }
}
