//! Where a check goes. Files mode, and xDS mode while the snapshot has no endpoint for the
//! provider's service: its `host:port`, through the system resolver. When istiod sent the
//! provider's `outbound|PORT||HOST` cluster with endpoints (see `routing/src/xds/outbound.rs`),
//! an endpoint of it, picked by the cluster's load balancer: over HBONE to its node when it is
//! in the mesh, directly when it is a plain endpoint. An endpoint that wants Istio mutual TLS (a
//! sidecar pod) or a cluster with DestinationRule TLS is not dialled here: the check falls back
//! to `host:port`, as before.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hbone::pool::TunnelHold;
use crate::hbone::{H2Stream, Lease, TunnelPolicy, TunnelPool};
use crate::identity::PeerCheck;

/// How the provider is reached for one check.
#[derive(Clone)]
pub enum Route {
    /// `host:port` through the system resolver.
    Resolve,
    /// A plain endpoint of the provider's cluster.
    Direct(SocketAddr),
    /// An endpoint in the mesh: a CONNECT tunnel through its node.
    Hbone {
        target: SocketAddr,
        identity: PeerCheck,
        pool: Arc<TunnelPool>,
    },
}

impl Route {
    /// The route the snapshot gives the provider at `address` (`host:port`).
    pub fn for_provider(
        snapshot: &routing::Snapshot,
        address: &str,
        pool: &Arc<TunnelPool>,
    ) -> Route {
        let Some((host, port)) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        else {
            return Route::Resolve;
        };
        // Only a service known as a route destination alone (istiod's `outbound|…` clusters have
        // no VIP on the waypoint); a service the waypoint serves keeps the resolver, as before.
        if snapshot
            .service_by_host(host)
            .is_none_or(|s| !s.vips.is_empty())
        {
            return Route::Resolve;
        }
        let Some(cluster) = snapshot.cluster(host, port, None) else {
            return Route::Resolve;
        };
        let Some(ep) = cluster.pick(&[]) else {
            return Route::Resolve;
        };
        match ep.endpoint.transport {
            routing::Transport::Hbone => match PeerCheck::for_endpoint(snapshot, &ep.endpoint) {
                Ok(identity) => Route::Hbone {
                    target: ep.target,
                    identity,
                    pool: pool.clone(),
                },
                Err(_) => Route::Resolve,
            },
            routing::Transport::Direct if cluster.policy.originate_tls().is_none() => {
                Route::Direct(ep.target)
            }
            _ => Route::Resolve,
        }
    }

    /// A connection to the provider (`address` for [`Route::Resolve`]).
    pub async fn connect(&self, address: &str) -> Result<Conn, String> {
        match self {
            Route::Resolve => tokio::net::TcpStream::connect(address)
                .await
                .map(Conn::Tcp)
                .map_err(|e| format!("connect {address}: {e}")),
            Route::Direct(target) => tokio::net::TcpStream::connect(target)
                .await
                .map(Conn::Tcp)
                .map_err(|e| format!("connect {address} at {target}: {e}")),
            Route::Hbone {
                target,
                identity,
                pool,
            } => {
                let tunnel = pool
                    .checkout(
                        *target,
                        identity,
                        Arc::new(Lease::default()),
                        &TunnelPolicy::default(),
                    )
                    .await
                    .map_err(|e| format!("HBONE to {address} at {target}: {e}"))?;
                let (stream, hold) = tunnel.into_inner();
                Ok(Conn::Hbone(stream, hold))
            }
        }
    }
}

/// A connection to the provider; the tunnel's slots are held while it lives.
pub enum Conn {
    Tcp(tokio::net::TcpStream),
    Hbone(H2Stream, TunnelHold),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Hbone(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Hbone(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Hbone(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Hbone(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
