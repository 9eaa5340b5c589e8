//! HBONE: HTTP/2 CONNECT inside mutual TLS (port 15008).

pub mod client;
pub mod pool;
pub mod recv;
pub mod server;
pub mod stream;

pub use client::{ConnectError, HboneClient, UpstreamLimits};
pub use pool::{Lease, TunnelConnector, TunnelPolicy, TunnelPool};
pub use stream::H2Stream;

/// The HBONE port of every ztunnel and waypoint.
pub const HBONE_PORT: u16 = 15008;
