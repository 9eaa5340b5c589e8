//! Aggregated Discovery Service client for istiod. Generic over resource types: it keeps
//! subscriptions, versions and nonces, ACKs and NACKs, and hands decoded resources to a handler;
//! it knows nothing about routing.
//!
//! - [`Client`] runs one ADS stream at a time (Delta by default, state-of-the-world on request or
//!   as a fallback), reconnecting with jittered exponential backoff.
//! - After every response the client builds a *candidate* [`ResourceState`] (the last accepted
//!   state plus that response's changes) and offers it to a [`Handler`]. Accepted: the candidate
//!   becomes the accepted state and the client ACKs. Rejected: the client NACKs naming each
//!   resource and keeps the last accepted state, so the caller keeps serving its last good config.
//! - [`NodeInfo`] builds the `Node` istiod expects from a waypoint.
//! - [`StatusHandle`] exposes connection state, ACKed versions and counters for metrics and
//!   config dumps.
//! - `testing` (feature): an in-process ADS server over TLS for tests.
// No unsafe code; the test build allows it in one place, the counting allocator of
// `ads::tests`.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]

mod ads;
mod client;
mod config;
mod delta;
mod node;
mod resource;
mod session;
mod sotw;
mod status;
mod transport;
mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use client::Client;
pub use client::StreamError;
pub use config::{
    istiod_server_name, Backoff, ClientConfig, Compact, ConfigError, Mode, DEFAULT_ADDRESS,
    DEFAULT_SERVER_NAME,
};
pub use node::{
    env, labels_from_downward_api, NodeError, NodeInfo, DEFAULT_CLUSTER_DOMAIN, DEFAULT_CLUSTER_ID,
    DEFAULT_LABELS_PATH, WAYPOINT_NODE_TYPE,
};
pub use resource::{
    intern_type_url, type_url, Applied, Change, Handler, Names, Payload, Rejection, Resource,
    ResourceState, Subscriptions, TypeState, TypeUrl, Update,
};
pub use status::{Status, StatusHandle, TypeStatus};
pub use transport::{ConnectError, AUTHORIZATION_METADATA, CLUSTER_ID_METADATA};

/// The Envoy protos this crate speaks, re-exported so callers use the same versions.
pub use envoy_types::pb;
