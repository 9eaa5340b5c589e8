//! waypoint: an L7 waypoint proxy for Istio's ambient mesh on Cloudflare's Pingora.
#![forbid(unsafe_code)]

pub mod app;
pub mod commands;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod telemetry;
#[cfg(test)]
mod tests_layout;
pub mod transport;
