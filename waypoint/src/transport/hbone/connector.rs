//! The `custom_l4` connector pingora dials upstreams with: an HTTP/1 upstream gets a pooled
//! tunnel ([`super::pool`]), an h2c upstream an in-memory connection whose stream is bridged onto
//! a multiplexed h2c connection ([`super::bridge`], [`super::mux`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::VirtualSocketStream;
use pingora_error::{Error, ErrorType, Result};

use super::client::ConnectError;
use super::pool::{Lease, TunnelPolicy, TunnelPool};
use crate::control::identity::PeerCheck;

/// The `custom_l4` connector of one upstream attempt: dials over HBONE instead of TCP.
#[derive(Clone)]
pub struct TunnelConnector {
    pub pool: Arc<TunnelPool>,
    pub identity: PeerCheck,
    pub lease: Arc<Lease>,
    pub policy: TunnelPolicy,
    /// Why the last connect failed, for the access log and the status mapping.
    pub failure: Arc<Mutex<Option<String>>>,
    /// An h2c upstream: the request's stream goes on a multiplexed connection ([`super::mux`]).
    pub h2: bool,
}

impl std::fmt::Debug for TunnelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConnector")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

impl TunnelConnector {
    /// pingora's in-memory h2 connection, its stream bridged onto a pooled h2c connection.
    async fn mux_stream(&self, target: SocketAddr) -> std::result::Result<Stream, ConnectError> {
        self.pool.maintain();
        let slot = self
            .pool
            .mux
            .checkout(
                &self.pool,
                target,
                &self.identity,
                &self.lease,
                &self.policy,
            )
            .await?;
        let again = self.clone();
        let reslot: super::bridge::Reslot = Box::new(move || {
            Box::pin(async move {
                again
                    .pool
                    .mux
                    .stats
                    .retried_unsent
                    .fetch_add(1, Ordering::Relaxed);
                let pool = &again.pool;
                pool.mux
                    .checkout(pool, target, &again.identity, &again.lease, &again.policy)
                    .await
                    .ok()
            })
        });
        let io = super::bridge::start(slot, reslot);
        Ok(Stream::from(VirtualSocketStream::new(Box::new(io))))
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
        let connected = if self.h2 {
            self.mux_stream(target).await
        } else {
            self.pool
                .checkout(target, &self.identity, self.lease.clone(), &self.policy)
                .await
                .map(|tunnel| Stream::from(VirtualSocketStream::new(Box::new(tunnel))))
        };
        match connected {
            Ok(stream) => Ok(stream),
            Err(e) => {
                *self.failure.lock() = Some(e.short_reason().to_string());
                let etype = match e {
                    // A circuit breaker, not a failed connect: 503 UO, never retried.
                    ConnectError::Overflow { .. } => ErrorType::HTTPStatus(503),
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
