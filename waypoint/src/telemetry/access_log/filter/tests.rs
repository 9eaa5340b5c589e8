//! The attributes, the headers, and what compiles: `LogFilter` over access-log lines.

use std::net::SocketAddr;

use super::references::Root;
use super::*;
use crate::telemetry::access_log::Entry;

pub(super) fn filter(expression: &str) -> LogFilter {
    LogFilter::compile(expression).unwrap_or_else(|e| panic!("{e}"))
}

/// An HTTP request as the waypoint logs it.
pub(super) fn http() -> Entry {
    Entry {
        start_time: "2026-01-01T00:00:00.250Z".into(),
        method: "GET".into(),
        path: "/api/v1/items?page=2#top".into(),
        protocol: "HTTP/1.1".into(),
        response_code: 200,
        response_code_details: "via_upstream".into(),
        bytes_received: 10,
        bytes_sent: 300,
        duration_ms: 12,
        upstream_service_time_ms: Some(9),
        x_forwarded_for: "192.168.0.7".into(),
        user_agent: "curl/8.5.0".into(),
        request_id: "5f6b6c2e-0000-4000-8000-000000000001".into(),
        authority: "reviews.shop.svc.cluster.local:9080".into(),
        upstream_host: "10.0.0.9:9080".into(),
        upstream_cluster: "inbound-vip|9080|http|reviews.shop.svc.cluster.local".into(),
        downstream_local_address: "10.96.0.20:9080".into(),
        downstream_remote_address: "10.0.0.1:52000".into(),
        source_principal: "spiffe://cluster.local/ns/shop/sa/frontend".into(),
        destination_principal: "spiffe://cluster.local/ns/shop/sa/reviews".into(),
        route_name: "reviews-v1".into(),
        upstream_local_address: "10.0.0.5:40123".into(),
        attempt_count: 1,
        ..Default::default()
    }
}

pub(super) fn eval(expression: &str, e: &Entry) -> Result<bool, EvalError> {
    filter(expression).evaluate(&e.line())
}

pub(super) fn is_true(expression: &str, e: &Entry) -> bool {
    match eval(expression, e) {
        Ok(b) => b,
        Err(err) => panic!("{expression}: {err}"),
    }
}

#[test]
fn istio_example_error_codes() {
    let f = filter("response.code >= 400");
    assert_eq!(f.expression(), "response.code >= 400");
    let mut e = http();
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    for code in [400, 404, 503] {
        e.response_code = code;
        assert_eq!(f.evaluate(&e.line()), Ok(true), "{code}");
    }
    e.response_code = 399;
    assert!(!f.matches(&e.line()));
    // No response (a TCP line): `response.code` is absent, the line is not written.
    e.response_code = 0;
    assert!(f.evaluate(&e.line()).is_err());
    assert!(!f.matches(&e.line()));
}

#[test]
fn istio_example_request_header() {
    let f = filter("request.headers['x-debug'] == 'on'");
    assert_eq!(f.request_headers(), ["x-debug"]);
    assert!(f.response_headers().is_empty());
    let mut e = http();
    e.request_headers = vec![("x-debug".into(), "on".into())];
    assert_eq!(f.evaluate(&e.line()), Ok(true));
    assert!(f.matches(&e.line()));
    e.request_headers = vec![("x-debug".into(), "off".into())];
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    // Absent header: no such key, an evaluation error; the line is not written.
    e.request_headers = vec![("x-other".into(), "on".into())];
    let err = f.evaluate(&e.line()).unwrap_err().to_string();
    assert!(err.contains("x-debug"), "{err}");
    assert!(!f.matches(&e.line()));
    // Envoy lowercases the key; repeated headers are joined with `,`.
    e.request_headers = vec![
        ("x-debug".into(), "on".into()),
        ("x-debug".into(), "2".into()),
    ];
    assert!(is_true("request.headers['X-Debug'] == 'on,2'", &e));
    assert!(is_true("'x-debug' in request.headers", &e));
    assert!(!is_true("'x-nope' in request.headers", &e));
    assert!(!is_true("has(request.headers.x_debug)", &e));
    // The headers the line has fields for.
    let e = http();
    assert!(is_true(
        "request.headers[':authority'] == 'reviews.shop.svc.cluster.local:9080' && \
         request.headers[':method'] == 'GET' && \
         request.headers[':path'] == '/api/v1/items?page=2#top' && \
         request.headers['user-agent'] == 'curl/8.5.0' && \
         request.headers['x-forwarded-for'] == '192.168.0.7' && \
         request.headers['x-request-id'] == request.id && size(request.headers) == 6",
        &e
    ));
    // Literal header names are reported for capture, the line's own fields are not.
    let f = filter(
        "'X-A' in request.headers || request.headers.x_b == '' || \
         has(request.headers.x_c) || request.headers[':method'] == 'GET' || \
         response.headers['Grpc-Message'] == '' || request.referer == ''",
    );
    assert_eq!(f.request_headers(), ["x-a", "x_b", "x_c", "referer"]);
    assert_eq!(f.response_headers(), ["grpc-message"]);
}

#[test]
fn istio_example_mtls_and_source() {
    // Envoy's `source.address` is the address with its port (`Address::asStringView`).
    let f = filter("connection.mtls && source.address == '10.0.0.1:52000'");
    let mut e = http();
    assert_eq!(f.evaluate(&e.line()), Ok(true));
    assert!(!is_true(
        "connection.mtls && source.address == '10.0.0.1'",
        &e
    ));
    e.downstream_remote_address = "10.0.0.2:52000".into();
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    // No peer identity: not mTLS.
    let mut e = http();
    e.source_principal.clear();
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    assert!(is_true("!connection.mtls", &e));
    let e = http();
    assert!(is_true(
        "source.port == 52000 && destination.address == '10.96.0.20:9080' && \
         destination.port == 9080 && connection.uri_san_peer_certificate == \
         'spiffe://cluster.local/ns/shop/sa/frontend'",
        &e
    ));
    // Typed addresses (the proxy's own lines), IPv6 included.
    let remote: SocketAddr = "[fd00::1]:40000".parse().unwrap();
    let line = Line {
        downstream_remote_address: remote.into(),
        ..e.line()
    };
    let f = filter("source.address == '[fd00::1]:40000' && source.port == 40000");
    assert_eq!(f.evaluate(&line), Ok(true));
}

#[test]
fn istio_example_not_health_checks() {
    let f = filter("!(request.url_path.startsWith('/health'))");
    let mut e = http();
    assert_eq!(f.evaluate(&e.line()), Ok(true));
    e.path = "/healthz".into();
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    e.path = "/health?probe=1".into();
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    // The query is not part of `url_path`.
    e.path = "/api?next=/health".into();
    assert_eq!(f.evaluate(&e.line()), Ok(true));
    assert!(is_true("request.url_path == '/api'", &e));
    assert!(is_true("request.path == '/api?next=/health'", &e));
    assert!(is_true("request.query == 'next=/health'", &e));
    let e = http();
    assert!(
        is_true("request.query == 'page=2'", &e),
        "without the fragment"
    );
    let mut e = http();
    e.path = "/plain".into();
    assert!(is_true(
        "request.query == '' && request.url_path == request.path",
        &e
    ));
    // A TCP line has no path: absent, not written.
    e.path.clear();
    assert!(eval("!(request.url_path.startsWith('/health'))", &e).is_err());
}

#[test]
fn syntax_errors_do_not_compile() {
    for bad in ["response.code >=", "request.headers['x'", "", "a ? b"] {
        let err = LogFilter::compile(bad).unwrap_err();
        assert!(matches!(err, FilterError::Syntax { .. }), "{bad}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    // Optional syntax: not in Envoy's runtime.
    assert!(matches!(
        LogFilter::compile("request.?path == '/'"),
        Err(FilterError::Syntax { .. })
    ));
}

#[test]
fn unknown_roots_and_fields_do_not_compile() {
    let err = LogFilter::compile("foo.x == 1").unwrap_err();
    assert!(
        matches!(&err, FilterError::UnknownRoot { name, .. } if name == "foo"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("\"foo\"") && text.contains("foo.x == 1"),
        "{text}"
    );
    let err = LogFilter::compile("response.code == 200 && bar").unwrap_err();
    assert!(matches!(&err, FilterError::UnknownRoot { name, .. } if name == "bar"));
    // Envoy's, not the waypoint's.
    let err = LogFilter::compile("metadata.filter_metadata['x'] == 1").unwrap_err();
    assert!(err.to_string().contains("does not provide"), "{err}");
    let err = LogFilter::compile("optional.of(1) == 1").unwrap_err();
    assert!(matches!(&err, FilterError::UnknownRoot { name, .. } if name == "optional"));
    // A known root, a name Envoy does not have.
    for (expr, field) in [
        ("request.pth == '/'", "request.pth"),
        ("has(response.status)", "response.status"),
        ("source['ip'] == ''", "source.ip"),
    ] {
        let err = LogFilter::compile(expr).unwrap_err();
        assert!(matches!(err, FilterError::UnknownField { .. }), "{expr}");
        assert!(err.to_string().contains(field), "{err}");
    }
    // Comprehensions are disabled, as in Envoy.
    let err = LogFilter::compile("[1, 2].exists(x, x == response.code)").unwrap_err();
    assert!(matches!(err, FilterError::Unsupported { .. }), "{err}");
    // Type names are no attributes.
    assert!(is_true(
        "type(response.code) == int && type(request.path) == string",
        &http()
    ));
    assert!(is_true(
        "type(request.duration) == google.protobuf.Duration",
        &http()
    ));
}

#[test]
fn non_bool_results_are_errors() {
    let f = filter("response.code");
    let err = f.evaluate(&http().line()).unwrap_err().to_string();
    assert!(err.contains("int"), "{err}");
    assert!(!f.matches(&http().line()));
    for expr in [
        "request.path",
        "request.duration",
        "request.headers",
        "1 + 1",
    ] {
        assert!(eval(expr, &http()).is_err(), "{expr}");
    }
    assert!(eval("1 / 0 == 1", &http()).is_err());
}

#[test]
fn absent_attributes_are_errors() {
    let mut e = http();
    e.start_time.clear();
    e.response_code_details.clear();
    for expr in [
        "request.time > timestamp('2020-01-01T00:00:00Z')",
        "response.code_details == 'via_upstream'",
        "connection.tls_version == 'TLSv1.3'",
        "response.backend_latency > duration('1s')",
        "xds.virtual_host_name == ''",
        "request.scheme == 'http'",
        "connection.termination_details == ''",
    ] {
        let f = filter(expr);
        let err = f.evaluate(&e.line()).unwrap_err().to_string();
        assert!(err.contains("No such key"), "{expr}: {err}");
        assert!(!f.matches(&e.line()), "{expr}");
    }
    assert!(!is_true(
        "has(request.time) || has(response.code_details)",
        &e
    ));
    assert!(is_true("has(request.path) && has(response.flags)", &e));
    // `||` forgives an error on one side when the other is true, as CEL does.
    assert!(is_true(
        "connection.tls_version == 'x' || response.code == 200",
        &e
    ));
}

#[test]
fn request_attributes() {
    let mut e = http();
    e.request_headers = vec![
        (":scheme".into(), "http".into()),
        ("referer".into(), "https://shop.example/".into()),
    ];
    assert!(is_true(
        "request.method == 'GET' && request.host == 'reviews.shop.svc.cluster.local:9080' && \
         request.scheme == 'http' && request.referer == 'https://shop.example/' && \
         request.useragent == 'curl/8.5.0' && \
         request.id == '5f6b6c2e-0000-4000-8000-000000000001' && \
         request.protocol == 'HTTP/1.1' && request.size == 10",
        &e
    ));
    // `request.time` and `request.duration`: `tests_time`.
    // The headers the line carries, name and value bytes.
    let headers: u64 = [
        (":method", "GET"),
        (":path", "/api/v1/items?page=2#top"),
        (":authority", "reviews.shop.svc.cluster.local:9080"),
        ("x-request-id", "5f6b6c2e-0000-4000-8000-000000000001"),
        ("x-forwarded-for", "192.168.0.7"),
        ("user-agent", "curl/8.5.0"),
        (":scheme", "http"),
        ("referer", "https://shop.example/"),
    ]
    .iter()
    .map(|(k, v)| (k.len() + v.len()) as u64)
    .sum();
    assert!(is_true(
        &format!("request.total_size == {}", 10 + headers),
        &e
    ));
    // A content-length header is the size, as in Envoy; an invalid one is absent.
    e.request_headers = vec![("content-length".into(), "42".into())];
    assert!(is_true("request.size == 42", &e));
    assert_eq!(
        filter("request.size > 0").request_headers(),
        ["content-length"]
    );
    e.request_headers = vec![("content-length".into(), "x".into())];
    assert!(eval("request.size == 10", &e).is_err());
    e.protocol = "HTTP/2".into();
    assert!(is_true("request.protocol == 'HTTP/2'", &e));
}

#[test]
fn response_attributes() {
    let mut e = http();
    e.response_headers = vec![("content-type".into(), "application/grpc".into())];
    assert!(is_true(
        "response.code == 200 && response.code_details == 'via_upstream' && \
         response.size == 300 && response.flags == 0 && \
         response.headers['content-type'] == 'application/grpc' && \
         response.headers[':status'] == '200' && \
         response.headers['x-envoy-upstream-service-time'] == '9'",
        &e
    ));
    let headers = "content-type".len()
        + "application/grpc".len()
        + ":status".len()
        + 3
        + "x-envoy-upstream-service-time".len()
        + 1;
    assert!(is_true(
        &format!("response.total_size == {}", 300 + headers),
        &e
    ));
    assert!(is_true("size(response.headers) == 3", &e));
    // A captured header the line also has a field for is one header.
    let mut no_response = e.clone();
    no_response.response_code = 0;
    no_response.upstream_service_time_ms = None;
    no_response.response_headers = vec![(":status".into(), "204".into())];
    assert!(is_true(
        "size(response.headers) == 1 && response.headers[':status'] == '204'",
        &no_response
    ));
    // The flags: bit n for Envoy's CoreResponseFlag n.
    e.response_flags = "UF,URX".into();
    assert!(
        is_true("response.flags == 32800", &e),
        "UF = 1 << 5, URX = 1 << 15"
    );
    assert!(is_true("response.flags % 64 >= 32", &e));
    e.response_flags = "NR".into();
    assert!(is_true("response.flags == 256", &e));
    e.response_flags = "LH".into();
    assert!(is_true("response.flags == 1", &e));
    e.response_flags = "UDO,DR".into();
    assert!(is_true("response.flags == 805306368", &e));
    // gRPC status: the header, else inferred from the HTTP status.
    e.response_headers = vec![("grpc-status".into(), "5".into())];
    assert!(is_true("response.grpc_status == 5", &e));
    e.response_headers = vec![("grpc-status".into(), "99".into())];
    assert!(is_true("response.grpc_status == -1", &e), "InvalidCode");
    e.response_headers.clear();
    for (code, grpc) in [
        (200, 2),
        (400, 13),
        (401, 16),
        (403, 7),
        (404, 12),
        (503, 14),
    ] {
        e.response_code = code;
        assert!(
            is_true(&format!("response.grpc_status == {grpc}"), &e),
            "{code}"
        );
    }
    assert_eq!(
        filter("response.grpc_status == 0").response_headers(),
        ["grpc-status"]
    );
    e.response_code = 0;
    assert!(eval("response.grpc_status == 2", &e).is_err());
}

#[test]
fn connection_upstream_and_xds_attributes() {
    let mut e = http();
    assert!(is_true(
        "upstream.address == '10.0.0.9:9080' && upstream.port == 9080 && \
         upstream.local_address == '10.0.0.5:40123' && \
         upstream.transport_failure_reason == '' && upstream.request_attempt_count == 1u && \
         upstream.uri_san_peer_certificate == 'spiffe://cluster.local/ns/shop/sa/reviews' && \
         xds.cluster_name == 'inbound-vip|9080|http|reviews.shop.svc.cluster.local' && \
         xds.route_name == 'reviews-v1' && connection.requested_server_name == ''",
        &e
    ));
    e.upstream_transport_failure_reason = "connection refused".into();
    e.requested_server_name = "reviews.shop".into();
    e.connection_termination_details = "rbac_access_denied_matched_policy[none]".into();
    e.attempt_count = 3;
    assert!(is_true(
        "upstream.transport_failure_reason == 'connection refused' && \
         connection.requested_server_name == 'reviews.shop' && \
         connection.termination_details.startsWith('rbac_') && \
         upstream.request_attempt_count == 3u",
        &e
    ));
    // No upstream picked: no upstream info.
    let mut e = http();
    e.upstream_host.clear();
    assert!(eval("upstream.transport_failure_reason == ''", &e).is_err());
    assert!(eval("upstream.address == ''", &e).is_err());
    assert!(eval("upstream.port == 0", &e).is_err());
}

#[test]
fn only_the_roots_referenced_are_resolved() {
    let f = filter("response.code == 200");
    assert_eq!(f.roots, Root::Response.bit());
    let f = filter("request.path == '/' || source.port == 1 || xds.route_name == ''");
    assert_eq!(
        f.roots,
        Root::Request.bit() | Root::Source.bit() | Root::Xds.bit()
    );
}

#[test]
fn a_filter_is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<LogFilter>();
}
