//! waypoint: an L7 waypoint proxy for Istio's ambient mesh on Cloudflare's Pingora.
#![forbid(unsafe_code)]

pub mod app;
pub mod commands;
pub mod config;
pub mod control;
pub mod dataplane;
/// The release build's code layout (`build.rs`): its decision is tested here.
#[cfg(test)]
#[path = "../link/hot_code.rs"]
mod hot_code;
pub mod telemetry;
#[cfg(test)]
mod tests_layout;
pub mod transport;
