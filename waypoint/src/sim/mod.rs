//! A simulated mesh on loopback for the demo, the tests and the benchmarks: a CA minting SPIFFE
//! certificates, apps on real TCP ports, pods terminating HBONE the way a destination ztunnel
//! does, and a client that tunnels to the waypoint the way a source ztunnel does.

mod app;
pub mod ca_server;
mod client;
mod pod;

pub use app::{start_app, AppHandle, AppKind, AppStats, Echo};
pub use client::{get, Http1, ZtunnelClient};
pub use pod::{start_pod, PodHandle, PodStats};
