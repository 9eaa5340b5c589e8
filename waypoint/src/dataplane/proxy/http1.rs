//! HTTP/1.x conformance of what the waypoint sends its client.
//!
//! - **The status line is the waypoint's, not the upstream's** (RFC 9110 §6.2: a proxy sends
//!   its own version in the responses it forwards). pingora 0.9.1 forwards an HTTP/1.0
//!   upstream's `HTTP/1.0` status line as it is whenever the response has a `content-length`
//!   (it only rewrites the version when it turns a length-less 1.0 response into chunked), and an
//!   HTTP/1.1 client then falls back to one request per connection. Envoy's HTTP/1 codec writes
//!   `HTTP/1.1 ` unless the request itself was HTTP/1.0 (`ResponseEncoderImpl::encodeHeaders`);
//!   the waypoint does the same.
//! - **No `transfer-encoding` to an HTTP/1.0 client** (RFC 9112 §6.1). pingora makes a 1.0
//!   upstream's length-less body chunked, and a 1.1 upstream may answer chunked, whatever the
//!   client's version. Envoy does not chunk-encode for an HTTP/1.0 request and delimits the body
//!   by closing the connection; so does the waypoint (the header is dropped, pingora then writes
//!   the decoded body close-delimited and closes the connection after it).
//!
//! How the body is framed for an HTTP/1.1 client is left to pingora: a length-less upstream
//! body (HTTP/1.0, delimited by the upstream closing) is sent chunked and the client connection
//! stays open, as Envoy does (it chunk-encodes any length-less response to an HTTP/1.1 request).

use http::{header, Version};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Fit a response to the HTTP/1.x client it goes to. Nothing for HTTP/2 clients (no status
/// line, no transfer codings).
pub(super) fn fit_response(session: &mut Session, response: &mut ResponseHeader) {
    match session.req_header().version {
        Version::HTTP_11 => response.set_version(Version::HTTP_11),
        Version::HTTP_10 => {
            response.set_version(Version::HTTP_10);
            if response.remove_header(&header::TRANSFER_ENCODING).is_some() {
                // Close-delimited from here on: the connection cannot carry another request.
                session.set_keepalive(None);
            }
        }
        _ => {}
    }
}
