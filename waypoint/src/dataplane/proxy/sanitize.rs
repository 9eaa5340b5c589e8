//! What a client may not tell the app or the waypoint through request headers: Envoy's HTTP
//! connection manager as istiod configures it for a waypoint's `main_internal` chains
//! (`use_remote_address: false`, no `internal_address_config`, `forward_client_cert_details`
//! left at SANITIZE on a listener whose downstream has no certificate). Every request is then
//! external and not an edge request, so Envoy (`ConnectionManagerUtility::mutateRequestHeaders`,
//! `cleanInternalHeaders`) removes:
//! - `x-forwarded-client-cert` (SANITIZE: the app never sees a client-written XFCC);
//! - `x-envoy-internal` (never set: no request is internal);
//! - the `x-envoy-*` headers that steer Envoy itself ([`ENVOY_CONTROL_HEADERS`]).
//!
//! Other `x-envoy-*` headers (e.g. `x-envoy-decorator-operation`, which only edge requests lose,
//! or a made-up `x-envoy-foo`) pass through unchanged, as they do through Envoy.

use pingora_http::RequestHeader;

/// The headers Envoy strips from external requests (`cleanInternalHeaders`).
pub const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Remove what a client may not set, before authorization and routing see the request.
pub fn request_headers(req: &mut RequestHeader) {
    // One pass over the names first: most requests carry none of these, and each removal below
    // is a hash lookup.
    let suspect = req.headers.keys().any(|name| {
        let name = name.as_str();
        name.starts_with("x-envoy-") || name == "x-forwarded-client-cert"
    });
    if !suspect {
        return;
    }
    req.remove_header("x-forwarded-client-cert");
    req.remove_header("x-envoy-internal");
    for name in ENVOY_CONTROL_HEADERS {
        req.remove_header(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_identity_and_envoy_control_headers_are_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            (
                "x-forwarded-client-cert",
                "By=spiffe://evil;URI=spiffe://evil",
            ),
            ("x-forwarded-client-cert", "By=spiffe://evil2"),
            ("x-envoy-internal", "true"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-upstream-rq-timeout-ms", "1"),
            ("x-envoy-foo", "bar"),
            ("x-envoy-decorator-operation", "op"),
            ("x-request-id", "r"),
        ] {
            req.append_header(k, v).unwrap();
        }
        request_headers(&mut req);
        let mut left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["x-envoy-decorator-operation", "x-envoy-foo", "x-request-id"]
        );
    }
}
