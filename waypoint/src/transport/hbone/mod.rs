//! HBONE: HTTP/2 CONNECT inside mutual TLS (port 15008).

pub mod bridge;
pub mod client;
pub mod connector;
pub mod fair;
pub mod mux;
pub mod pool;
pub mod recv;
pub mod server;
pub mod stream;

pub use client::{ConnectError, HboneClient, UpstreamLimits};
pub use connector::TunnelConnector;
pub use pool::{Lease, TunnelPolicy, TunnelPool};
pub use stream::H2Stream;

/// The HBONE port of every ztunnel and waypoint.
pub const HBONE_PORT: u16 = 15008;
