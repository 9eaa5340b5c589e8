//! External authorizers (CUSTOM policies' providers) as configuration: from meshConfig
//! `extensionProviders` (the waypoint reads the file) or from istiod's `ext_authz` filters
//! (`crate::xds`). The waypoint makes the calls.

use std::time::Duration;

/// How the authorizer is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzKind {
    Http {
        path_prefix: String,
        /// Lowercased header names sent to the authorizer (exact; a trailing `*` is a prefix, a
        /// leading one a suffix).
        request_headers: Vec<String>,
        additional_headers: Vec<(String, String)>,
        upstream_on_allow: Vec<String>,
        downstream_on_deny: Vec<String>,
        downstream_on_allow: Vec<String>,
    },
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzProvider {
    pub name: String,
    /// `host:port` dialled directly.
    pub address: String,
    pub timeout: Duration,
    pub fail_open: bool,
    pub status_on_error: u16,
    pub kind: ExtAuthzKind,
}
