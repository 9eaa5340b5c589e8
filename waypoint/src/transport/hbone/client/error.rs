//! Why an upstream HBONE tunnel could not be opened.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

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
    /// The same failure, for requests that waited on the dial that met it.
    pub(super) fn shared(&self) -> ConnectError {
        match self {
            ConnectError::Tcp { addr, source } => ConnectError::Tcp {
                addr: *addr,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ConnectError::Timeout { addr, timeout } => ConnectError::Timeout {
                addr: *addr,
                timeout: *timeout,
            },
            ConnectError::Tls { addr, reason } => ConnectError::Tls {
                addr: *addr,
                reason: reason.clone(),
            },
            ConnectError::H2 { addr, source } => ConnectError::H2 {
                addr: *addr,
                source: source.reason().unwrap_or(h2::Reason::INTERNAL_ERROR).into(),
            },
            ConnectError::Status {
                addr,
                target,
                status,
            } => ConnectError::Status {
                addr: *addr,
                target: *target,
                status: *status,
            },
            ConnectError::Config(c) => ConnectError::Config(c.clone()),
            ConnectError::Overflow { target, reason } => ConnectError::Overflow {
                target: *target,
                reason: reason.clone(),
            },
        }
    }

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
