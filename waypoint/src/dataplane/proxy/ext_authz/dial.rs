//! Where a check goes. Files mode, and xDS mode while the snapshot has no cluster for the
//! provider's service: its `host:port`, through the system resolver. When istiod sent the
//! provider's `outbound|PORT||HOST` cluster (see `routing/src/xds/outbound.rs`), an endpoint of
//! it, picked by the cluster's load balancer, reached as the cluster says: over HBONE to its node
//! when it is in the mesh; directly when it is a plain endpoint, in plaintext or with the
//! cluster's DestinationRule TLS; in Istio mutual TLS with the waypoint's certificate when it is
//! a sidecar pod. A cluster with no endpoint, or one whose socket cannot be built, fails the
//! check (the provider's `failOpen` / status decide), as Envoy's would: never a plaintext
//! fallback by name.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::control::identity::PeerCheck;
use crate::dataplane::direct::DirectError;
use crate::transport::hbone::pool::TunnelHold;
use crate::transport::hbone::{ConnectError, H2Stream, Lease, TunnelPolicy, TunnelPool};

/// How the provider is reached for one check.
#[derive(Clone)]
pub enum Route {
    /// `host:port` through the system resolver.
    Resolve,
    /// A plain endpoint of the provider's cluster.
    Direct(SocketAddr),
    /// An endpoint dialled directly in TLS: the cluster's DestinationRule TLS, or Istio mutual
    /// TLS to a sidecar pod.
    DirectTls {
        target: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        sni: Option<String>,
    },
    /// The provider's cluster cannot be reached from here: the check fails with this reason.
    Refused(String),
    /// An endpoint in the mesh: a CONNECT tunnel through its node.
    Hbone {
        target: SocketAddr,
        identity: PeerCheck,
        pool: Arc<TunnelPool>,
    },
}

impl Route {
    /// The route the snapshot gives the provider at `address` (`host:port`); `h2` for a gRPC
    /// provider (Istio's ALPN then offers `h2`).
    pub fn for_provider(
        snapshot: &routing::Snapshot,
        address: &str,
        pool: &Arc<TunnelPool>,
        h2: bool,
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
            return Route::Refused(format!("cluster {} has no healthy endpoint", cluster.name));
        };
        let refused = |why: String| Route::Refused(format!("{address} at {}: {why}", ep.target()));
        match ep.endpoint.transport {
            routing::Transport::Hbone => match PeerCheck::for_endpoint(snapshot, ep) {
                Ok(identity) => Route::Hbone {
                    target: ep.target(),
                    identity,
                    pool: pool.clone(),
                },
                Err(e) => refused(e.to_string()),
            },
            routing::Transport::Direct => {
                match cluster.policy.tls.as_ref().and_then(|t| t.originate()) {
                    None => Route::Direct(ep.target()),
                    Some(tls) => match crate::dataplane::direct::tls_config(tls) {
                        Ok(config) => Route::DirectTls {
                            target: ep.target(),
                            config,
                            sni: tls.sni.clone().or_else(|| Some(host.to_string())),
                        },
                        Err(e) => refused(e.to_string()),
                    },
                }
            }
            routing::Transport::IstioMutual => {
                let config = PeerCheck::for_endpoint(snapshot, ep)
                    .map_err(|e| e.to_string())
                    .and_then(|expected| {
                        crate::dataplane::direct::istio_mutual_config(
                            &pool.client().configs(),
                            &expected,
                            h2,
                        )
                        .map_err(|e| e.to_string())
                    });
                match config {
                    Ok(config) => Route::DirectTls {
                        target: ep.target(),
                        config,
                        sni: Some(crate::dataplane::direct::istio_sni(host, port, None)),
                    },
                    Err(e) => refused(e),
                }
            }
        }
    }

    /// A connection to the provider (`address` for [`Route::Resolve`]).
    pub async fn connect(&self, address: &str) -> Result<Conn, DialError> {
        match self {
            Route::Resolve => tokio::net::TcpStream::connect(address)
                .await
                .map(Conn::Tcp)
                .map_err(|source| DialError::Resolve {
                    address: address.to_string(),
                    source,
                }),
            Route::Direct(target) => tokio::net::TcpStream::connect(target)
                .await
                .map(Conn::Tcp)
                .map_err(|source| DialError::Direct {
                    address: address.to_string(),
                    target: *target,
                    source,
                }),
            Route::DirectTls {
                target,
                config,
                sni,
            } => crate::dataplane::direct::connect_stream(
                *target,
                Some((config.clone(), sni.clone())),
                None,
            )
            .await
            .map(|s| Conn::Tls(Box::new(s)))
            .map_err(|source| DialError::DirectTls {
                address: address.to_string(),
                target: *target,
                source,
            }),
            Route::Refused(why) => Err(DialError::Refused(why.clone())),
            Route::Hbone {
                target,
                identity,
                pool,
            } => {
                // A CONNECT of its own: gRPC's preface on an idle tunnel whose app connection
                // served HTTP/1 makes the provider close it.
                let tunnel = pool
                    .checkout_new(
                        *target,
                        identity,
                        Arc::new(Lease::default()),
                        &TunnelPolicy::default(),
                    )
                    .await
                    .map_err(|source| DialError::Hbone {
                        address: address.to_string(),
                        target: *target,
                        source,
                    })?;
                let (stream, hold) = tunnel.into_inner();
                Ok(Conn::Hbone(stream, hold))
            }
        }
    }
}

/// Why no connection to the provider was made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("connect {address} at {target}: {source}")]
    Direct {
        address: String,
        target: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect {address} at {target}: {source}")]
    DirectTls {
        address: String,
        target: SocketAddr,
        source: DirectError,
    },
    #[error("HBONE to {address} at {target}: {source}")]
    Hbone {
        address: String,
        target: SocketAddr,
        source: ConnectError,
    },
    /// The route refused the provider when it was chosen ([`Route::Refused`]'s reason).
    #[error("{0}")]
    Refused(String),
}

/// A connection to the provider; the tunnel's slots are held while it lives.
pub enum Conn {
    Tcp(tokio::net::TcpStream),
    Tls(Box<pingora_core::protocols::l4::stream::Stream>),
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
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Hbone(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Hbone(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Hbone(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
