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

/// The most of a request body the waypoint can hold for a check and still forward the body
/// whole. pingora replays a body read before proxying from its retry buffer, which holds 64 KiB
/// (pingora-core 0.9 `BODY_BUF_LIMIT`); a larger read could not be sent upstream.
pub const MAX_BODY_BYTES: u32 = 64 * 1024;

/// Envoy's `with_request_body` (`BufferSettings`; Istio's `includeRequestBodyInCheck`): the
/// request body, up to `max_bytes`, goes with the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyBuffer {
    /// 1..=[`MAX_BODY_BYTES`].
    pub max_bytes: u32,
    /// A larger body is checked on its first `max_bytes` (instead of answered 413).
    pub allow_partial: bool,
    /// gRPC: the body goes as `raw_body` bytes (instead of the UTF-8 `body`).
    pub pack_as_bytes: bool,
}

/// Body-buffer settings this proxy cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyBufferError {
    #[error("maxRequestBytes must be at least 1")]
    Empty,
    #[error(
        "maxRequestBytes {0} is more than this proxy can buffer for a check \
         ({max}: the body read before proxying is replayed from pingora's \
         64 KiB retry buffer)",
        max = MAX_BODY_BYTES
    )]
    TooLarge(u32),
}

impl BodyBuffer {
    /// Settings within what this proxy can do, or why not.
    pub fn new(
        max_bytes: u32,
        allow_partial: bool,
        pack_as_bytes: bool,
    ) -> Result<Self, BodyBufferError> {
        if max_bytes == 0 {
            return Err(BodyBufferError::Empty);
        }
        if max_bytes > MAX_BODY_BYTES {
            return Err(BodyBufferError::TooLarge(max_bytes));
        }
        Ok(Self {
            max_bytes,
            allow_partial,
            pack_as_bytes,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzProvider {
    pub name: String,
    /// `host:port` dialled directly.
    pub address: String,
    pub timeout: Duration,
    pub fail_open: bool,
    pub status_on_error: u16,
    /// The request body goes with the check (`None`: headers only).
    pub body: Option<BodyBuffer>,
    pub kind: ExtAuthzKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_buffer_bounds() {
        assert!(BodyBuffer::new(0, false, false).is_err());
        assert!(BodyBuffer::new(MAX_BODY_BYTES + 1, true, false)
            .unwrap_err()
            .to_string()
            .contains("65537"));
        let b = BodyBuffer::new(MAX_BODY_BYTES, true, true).unwrap();
        assert_eq!(
            (b.max_bytes, b.allow_partial, b.pack_as_bytes),
            (65536, true, true)
        );
    }
}
