//! waypoint: an L7 waypoint proxy for Istio's ambient mesh on Cloudflare's Pingora.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod app;
pub mod cli;
pub mod demo;
pub mod hbone;
pub mod identity;
pub mod inbound;
pub mod proxy;
pub mod sim;
pub mod tunnel;
