//! waypoint: an L7 waypoint proxy for Istio's ambient mesh on Cloudflare's Pingora.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod certs;
pub mod cli;
pub mod curl;
pub mod demo;
pub mod direct;
pub mod dns;
pub mod drain;
pub mod explain;
pub mod hbone;
pub mod header_deadline;
pub mod identity;
pub mod inbound;
pub mod istio;
pub mod listen;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod mirror;
pub mod output;
pub mod overload;
pub mod proxy;
pub mod reload;
pub mod run;
pub mod sim;
pub mod source;
pub mod splice;
pub mod splits;
pub mod status;
pub mod throttle;
pub mod tunnel;
pub mod validate;
mod watch;
pub mod xds;
