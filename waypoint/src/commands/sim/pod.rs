//! A pod's node-side HBONE terminator, as the destination ztunnel behaves: mTLS with the pod's
//! identity, `CONNECT ip:port` where ip must be its own (else 400), dial the app (else 503), 200,
//! then copy bytes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::control::identity::{peer_identity, server_config, WorkloadCert};
use crate::transport::hbone::H2Stream;

#[derive(Debug, Default)]
pub struct PodStats {
    /// HBONE (mTLS h2) connections accepted.
    pub connections: AtomicU64,
    /// CONNECT tunnels accepted.
    pub tunnels: AtomicU64,
    /// Peer identities seen, last one.
    pub last_peer: parking_lot::Mutex<Option<String>>,
    /// Serial number (hex) of each accepted client certificate, in order.
    pub peer_serials: parking_lot::Mutex<Vec<String>>,
    /// HBONE connections open now.
    pub open: AtomicU64,
    /// Writes (each one DATA frame) and bytes sent to HBONE peers from apps.
    pub writes_to_peers: AtomicU64,
    pub bytes_to_peers: AtomicU64,
    /// `true`: the node stops answering, as a SIGSTOPped ztunnel: open connections are no
    /// longer served (no PING answer, no data) and new ones get no TLS handshake.
    pub frozen: tokio::sync::watch::Sender<bool>,
    /// `true`: new connections wait for their TLS handshake until it turns `false` again (a
    /// slow node: dials stay in flight as long as a test needs).
    pub held: tokio::sync::watch::Sender<bool>,
}

impl PodStats {
    async fn until_frozen(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }
}

/// Counts an open HBONE connection in [`PodStats::open`] while it lives.
struct Open(Arc<PodStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct PodHandle {
    pub hbone_addr: SocketAddr,
    pub stats: Arc<PodStats>,
    task: JoinHandle<()>,
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_pod(hbone_addr: SocketAddr, cert: &WorkloadCert) -> std::io::Result<PodHandle> {
    let tls = server_config(cert, std::slice::from_ref(&cert.id.trust_domain))
        .map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(hbone_addr).await?;
    let hbone_addr = listener.local_addr()?;
    let stats = Arc::new(PodStats::default());
    let st = stats.clone();
    let own_ip = hbone_addr.ip();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // As ztunnel does: small HBONE frames must not wait for delayed ACKs (Nagle).
            let _ = tcp.set_nodelay(true);
            let (acceptor, st) = (acceptor.clone(), st.clone());
            tokio::spawn(async move {
                if *st.frozen.borrow() {
                    // Hung: the connection is accepted by the kernel and never answered.
                    let _held = tcp;
                    return std::future::pending().await;
                }
                let _ = st.held.subscribe().wait_for(|held| !*held).await;
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let peer = leaf.and_then(|c| peer_identity(c).ok());
                *st.last_peer.lock() = peer.map(|p| p.to_string());
                if let Some(serial) = leaf.and_then(|c| crate::control::identity::serial(c)) {
                    st.peer_serials.lock().push(serial);
                }
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::Relaxed);
                st.open.fetch_add(1, Ordering::Relaxed);
                let _open = Open(st.clone());
                loop {
                    let (req, mut respond) = tokio::select! {
                        next = conn.accept() => match next {
                            Some(Ok(stream)) => stream,
                            _ => break,
                        },
                        // Hung: the connection is held, never polled again.
                        _ = st.until_frozen() => return std::future::pending().await,
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let reply = |respond: &mut h2::server::SendResponse<Bytes>,
                                     s: StatusCode| {
                            let _ = respond.send_response(
                                Response::builder().status(s).body(()).expect("static"),
                                true,
                            );
                        };
                        if req.method() != Method::CONNECT {
                            return reply(&mut respond, StatusCode::BAD_REQUEST);
                        }
                        let Some(target) = req
                            .uri()
                            .authority()
                            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
                        else {
                            return reply(&mut respond, StatusCode::BAD_REQUEST);
                        };
                        if target.ip() != own_ip {
                            return reply(&mut respond, StatusCode::BAD_REQUEST);
                        }
                        let Ok(mut app) = TcpStream::connect(target).await else {
                            return reply(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
                        };
                        let Ok(send) = respond.send_response(
                            Response::builder().status(200).body(()).expect("static"),
                            false,
                        ) else {
                            return;
                        };
                        st.tunnels.fetch_add(1, Ordering::Relaxed);
                        let mut tunnel = Counted(H2Stream::new(send, req.into_body()), st);
                        let _ = tokio::io::copy_bidirectional(&mut tunnel, &mut app).await;
                    });
                }
            });
        }
    });
    Ok(PodHandle {
        hbone_addr,
        stats,
        task,
    })
}

/// A tunnel that counts what is written into it in [`PodStats`].
struct Counted(H2Stream, Arc<PodStats>);

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n @ 1..)) = written {
            self.1.writes_to_peers.fetch_add(1, Ordering::Relaxed);
            self.1.bytes_to_peers.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
