//! Unit tests of the template language (moved from template.rs; outputs unchanged).

use super::*;
use crate::telemetry::access_log::Field;

mod typed;

#[test]
fn protocol_is_named_as_envoy_names_it() {
    use http::Version;
    for (v, name) in [
        (Version::HTTP_10, "HTTP/1.0"),
        (Version::HTTP_11, "HTTP/1.1"),
        (Version::HTTP_2, "HTTP/2"),
        (Version::HTTP_3, "HTTP/3"),
    ] {
        assert_eq!(protocol_name(v), name);
        let e = Entry {
            protocol: protocol_name(v).into(),
            ..Entry::default()
        };
        assert_eq!(render("%PROTOCOL%", &e), name);
    }
}

fn known() -> Entry {
    Entry {
        start_time: "2026-03-04T05:06:07.089Z".into(),
        method: "GET".into(),
        path: "/reviews/7?x=1".into(),
        protocol: "HTTP/1.1".into(),
        response_code: 200,
        response_flags: "".into(),
        response_code_details: "via_upstream".into(),
        upstream_transport_failure_reason: "".into(),
        bytes_received: 12,
        bytes_sent: 345,
        duration_ms: 17,
        upstream_service_time_ms: Some(15),
        x_forwarded_for: "192.0.2.7".into(),
        user_agent: "e2e-agent/1.0".into(),
        request_id: "req-123".into(),
        authority: "reviews:9080".into(),
        upstream_host: "10.0.0.9:9080".into(),
        upstream_cluster: "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local".into(),
        downstream_local_address: "10.96.0.10:9080".into(),
        downstream_remote_address: "10.244.1.5:40280".into(),
        downstream_claimed_address: String::new(),
        source_principal: "spiffe://cluster.local/ns/default/sa/productpage".into(),
        destination_principal: "spiffe://cluster.local/ns/default/sa/reviews".into(),
        route_name: "reviews.0".into(),
        request_headers: vec![
            ("x-tenant".into(), "acme".into()),
            (":scheme".into(), "http".into()),
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
        ],
        response_headers: vec![("content-type".into(), "application/json".into())],
        upstream_local_address: "10.0.0.2:51000".into(),
        requested_server_name: "outbound_.9080_._.reviews.default.svc.cluster.local".into(),
        connection_termination_details: "".into(),
        attempt_count: 2,
        config_version: 7,
        tunnel_traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        authz: String::new(),
        authz_dry_run: String::new(),
        authz_audit: String::new(),
    }
}

fn render(t: &str, e: &Entry) -> String {
    Template::parse(t)
        .unwrap_or_else(|err| panic!("{t}: {err}"))
        .render(e)
}

#[test]
fn every_operator() {
    let e = known();
    let host = hostname().unwrap_or("-");
    let table: &[(&str, &str)] = &[
        ("%START_TIME%", "2026-03-04T05:06:07.089Z"),
        (
            "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
            "2026-03-04T05:06:07.089Z",
        ),
        (
            "%START_TIME(%Y/%m/%d %H:%M:%E3S)%",
            "2026/03/04 05:06:07.089",
        ),
        ("%START_TIME(%s.%6f)%", "1772600767.089000"),
        ("%START_TIME(%f)%", "089000000"),
        ("%START_TIME(%d %%)%", "04 %"),
        ("%REQ(:METHOD)%", "GET"),
        ("%REQ(:PATH)%", "/reviews/7?x=1"),
        ("%REQ_WITHOUT_QUERY(:PATH)%", "/reviews/7"),
        ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/reviews/7?x=1"),
        ("%REQ(:AUTHORITY)%", "reviews:9080"),
        ("%REQ(HOST)%", "reviews:9080"),
        ("%REQ(:SCHEME)%", "http"),
        ("%REQ(X-REQUEST-ID)%", "req-123"),
        ("%REQ(X-FORWARDED-FOR)%", "192.0.2.7"),
        ("%REQ(USER-AGENT)%", "e2e-agent/1.0"),
        ("%REQ(X-Tenant)%", "acme"),
        ("%REQ(X-MISSING)%", "-"),
        ("%RESP(CONTENT-TYPE)%", "application/json"),
        ("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "15"),
        ("%RESP(:STATUS)%", "200"),
        ("%RESP(X-MISSING)%", "-"),
        ("%PROTOCOL%", "HTTP/1.1"),
        ("%RESPONSE_CODE%", "200"),
        ("%RESPONSE_FLAGS%", "-"),
        ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
        ("%CONNECTION_TERMINATION_DETAILS%", "-"),
        ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-"),
        ("%BYTES_RECEIVED%", "12"),
        ("%BYTES_SENT%", "345"),
        ("%DURATION%", "17"),
        ("%RESPONSE_DURATION%", "15"),
        ("%UPSTREAM_HOST%", "10.0.0.9:9080"),
        ("%UPSTREAM_REMOTE_ADDRESS%", "10.0.0.9:9080"),
        (
            "%UPSTREAM_CLUSTER%",
            "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
        ),
        (
            "%UPSTREAM_CLUSTER_RAW%",
            "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
        ),
        ("%UPSTREAM_LOCAL_ADDRESS%", "10.0.0.2:51000"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.96.0.10:9080"),
        ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.96.0.10"),
        ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.244.1.5:40280"),
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.244.1.5"),
        (
            "%DOWNSTREAM_PEER_URI_SAN%",
            "spiffe://cluster.local/ns/default/sa/productpage",
        ),
        (
            "%REQUESTED_SERVER_NAME%",
            "outbound_.9080_._.reviews.default.svc.cluster.local",
        ),
        ("%ROUTE_NAME%", "reviews.0"),
        ("%CONFIG_VERSION%", "7"),
        ("%HOSTNAME%", host),
        ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2"),
        ("%TRACE_ID%", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (
            "%TUNNEL_TRACEPARENT%",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("100%% %RESPONSE_CODE%%%", "100% 200%"),
        ("", ""),
        ("no operators", "no operators"),
    ];
    for (t, want) in table {
        assert_eq!(render(t, &e), *want, "template {t}");
    }
}

#[test]
fn absent_values_are_dashes() {
    let e = Entry::default();
    for t in [
        "%START_TIME%",
        "%START_TIME(%Y)%",
        "%REQ(:METHOD)%",
        "%REQ(:PATH)%",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        "%RESP(:STATUS)%",
        "%RESPONSE_DURATION%",
        "%PROTOCOL%",
        "%UPSTREAM_HOST%",
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "%TRACE_ID%",
        "%TUNNEL_TRACEPARENT%",
    ] {
        assert_eq!(render(t, &e), "-", "{t}");
    }
    assert_eq!(render("%RESPONSE_CODE% %BYTES_SENT%", &e), "0 0");
}

#[test]
fn header_fallback_and_truncation() {
    let mut e = known();
    e.request_headers
        .push(("x-envoy-original-path".into(), "/original".into()));
    assert_eq!(
        render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", &e),
        "/original"
    );
    assert_eq!(render("%REQ(X-MISSING?X-TENANT)%", &e), "acme");
    assert_eq!(render("%REQ(X-MISSING?X-OTHER)%", &e), "-");
    assert_eq!(render("%REQ(USER-AGENT):3%", &e), "e2e");
    assert_eq!(render("%REQ(X-MISSING?USER-AGENT):6%", &e), "e2e-ag");
    assert_eq!(render("%REQ(USER-AGENT):0%", &e), "");
    assert_eq!(render("%REQ(USER-AGENT):100%", &e), "e2e-agent/1.0");
    assert_eq!(render("%RESP(X-NONE?CONTENT-TYPE):11%", &e), "application");
    // Cut at a character boundary, never inside one.
    e.user_agent = "héllo".into();
    assert_eq!(render("%REQ(USER-AGENT):2%", &e), "h");
    // Repeated headers are joined.
    e.request_headers.push(("x-tenant".into(), "other".into()));
    assert_eq!(render("%REQ(X-TENANT)%", &e), "acme,other");
    // A captured upstream service time header wins over the entry's.
    e.response_headers
        .push(("x-envoy-upstream-service-time".into(), "9".into()));
    assert_eq!(render("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", &e), "9");
}

#[test]
fn errors_name_the_operator_and_offset() {
    let cases: &[(&str, TemplateError)] = &[
        (
            "[%START_TIME%] %FOO% x",
            TemplateError::UnknownOperator {
                token: "%FOO%".into(),
                offset: 15,
            },
        ),
        (
            "%BAR(x):3%",
            TemplateError::UnknownOperator {
                token: "%BAR(x):3%".into(),
                offset: 0,
            },
        ),
        ("abc %DURATION", TemplateError::Unterminated { offset: 4 }),
        ("abc %REQ(X", TemplateError::Unterminated { offset: 4 }),
        ("abc %REQ(X):12", TemplateError::Unterminated { offset: 4 }),
        ("trailing %", TemplateError::Unterminated { offset: 9 }),
    ];
    for (t, want) in cases {
        assert_eq!(Template::parse(t).unwrap_err(), *want, "{t}");
    }
    assert_eq!(
        Template::parse("[%START_TIME%] %FOO% x")
            .unwrap_err()
            .to_string(),
        "unknown command operator %FOO% at offset 15"
    );
    for (t, offset) in [
        ("50% off", 2),
        ("%req(x)%", 0),
        ("x %DURATION(1)%", 2),
        ("%REQ%", 0),
        ("%REQ()%", 0),
        ("%REQ(A?B?C)%", 0),
        ("%REQ(A B)%", 0),
        ("%REQ(A):x%", 0),
        ("%REQ(A):99999999999999999999999%", 0),
        ("%DURATION x%", 0),
        ("%START_TIME(%Q)%", 0),
    ] {
        match Template::parse(t) {
            Err(TemplateError::Invalid { offset: o, .. }) => assert_eq!(o, offset, "{t}"),
            other => panic!("{t}: {other:?}"),
        }
    }
}

#[test]
fn no_panics_on_odd_input() {
    let e = known();
    for t in [
        "%",
        "%%",
        "%%%",
        "%(",
        "%A(",
        "%A()",
        "%A():",
        "%A():1",
        "é%é",
        "%é%",
        "%REQ(é)%",
        "%START_TIME(é%)%",
        "%START_TIME(%)%",
        "%START_TIME(%E)%",
        "%START_TIME(%9)%",
        "%START_TIME(%E9S%E0S%1f)%",
        ")%(",
        "::%:%",
        "%START_TIME():5%",
    ] {
        if let Ok(tpl) = Template::parse(t) {
            let _ = tpl.render(&e);
            let _ = tpl.render(&Entry::default());
        }
    }
    // Byte-wise prefixes of a template with multibyte characters.
    let src = "ü %REQ(ü?é):3% ✓ %START_TIME(%Y✓%3f)% %%";
    for end in 0..=src.len() {
        if let Some(prefix) = src.get(..end) {
            if let Ok(tpl) = Template::parse(prefix) {
                let _ = tpl.render(&e);
            }
        }
    }
}

#[test]
fn istio_default_line() {
    let e = known();
    let want = "[2026-03-04T05:06:07.089Z] \"GET /reviews/7?x=1 HTTP/1.1\" 200 - via_upstream - \
                \"-\" 12 345 17 15 \"192.0.2.7\" \"e2e-agent/1.0\" \"req-123\" \"reviews:9080\" \
                \"10.0.0.9:9080\" inbound-vip|9080|http/v1|reviews.default.svc.cluster.local \
                10.0.0.2:51000 10.96.0.10:9080 10.244.1.5:40280 \
                outbound_.9080_._.reviews.default.svc.cluster.local reviews.0";
    assert_eq!(Template::istio_default().render(&e), want);
    // No headers to capture for Istio's format: the entry has them all.
    assert!(Template::istio_default().request_headers().is_empty());
    assert!(Template::istio_default().response_headers().is_empty());
}

#[test]
fn istio_default_tcp_line() {
    let e = Entry {
        start_time: "2026-03-04T05:06:07.089Z".into(),
        bytes_received: 10,
        bytes_sent: 20,
        duration_ms: 3,
        upstream_host: "10.0.0.9:9080".into(),
        upstream_cluster: "inbound-vip|9080|tcp|db".into(),
        downstream_local_address: "10.96.0.10:9080".into(),
        downstream_remote_address: "10.244.1.5:40280".into(),
        ..Default::default()
    };
    assert_eq!(
        Template::istio_default().render(&e),
        "[2026-03-04T05:06:07.089Z] \"- - -\" 0 - - - \"-\" 10 20 3 - \"-\" \"-\" \"-\" \"-\" \
         \"10.0.0.9:9080\" inbound-vip|9080|tcp|db - 10.96.0.10:9080 10.244.1.5:40280 - -"
    );
}

#[test]
fn headers_to_capture() {
    let t = Template::parse(
        "%REQ(X-A?USER-AGENT)% %REQ(:SCHEME)% %REQ(x-a)% %RESP(X-B?X-ENVOY-UPSTREAM-SERVICE-TIME)% \
         %TRACE_ID% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    )
    .unwrap();
    assert_eq!(t.request_headers(), ["x-a", ":scheme", "traceparent"]);
    assert_eq!(t.response_headers(), ["x-b"]);
    let j = JsonTemplate::parse(r#"{"a":"%REQ(X-C)%","n":{"b":"%RESP(X-D)%"}}"#).unwrap();
    assert_eq!(j.request_headers(), ["x-c"]);
    assert_eq!(j.response_headers(), ["x-d"]);
}

#[test]
fn json_format_types_nulls_and_order() {
    let j = JsonTemplate::parse(
        r#"{"z_code":"%RESPONSE_CODE%","p":"%REQ(:PATH)%","a_missing":"%REQ(X-MISSING)%",
            "ust":"%RESPONSE_DURATION%","tries":"%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
            "sent":"%BYTES_SENT%","mixed":"%RESPONSE_CODE% %REQ(X-MISSING)%",
            "cut":"%REQ(USER-AGENT):3%","lit":"v1","quote":"%REQ(X-Q)%",
            "nested":{"d":"%DURATION%","flags":"%RESPONSE_FLAGS%"},"k":7,"b":true,"nil":null}"#,
    )
    .unwrap();
    let mut e = known();
    e.request_headers.push(("x-q".into(), "a\"b\\c".into()));
    let line = j.render(&e);
    assert_eq!(
        line,
        r#"{"z_code":200,"p":"/reviews/7?x=1","a_missing":null,"ust":15,"tries":2,"sent":345,"mixed":"200 -","cut":"e2e","lit":"v1","quote":"a\"b\\c","nested":{"d":17,"flags":"-"},"k":7,"b":true,"nil":null}"#
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["z_code"], 200);
    let e = Entry::default();
    let v: serde_json::Value = serde_json::from_str(&j.render(&e)).unwrap();
    assert_eq!(v["ust"], serde_json::Value::Null);
    assert_eq!(v["p"], serde_json::Value::Null);
    assert_eq!(v["z_code"], 0);
}

#[test]
fn json_format_errors() {
    assert!(matches!(
        JsonTemplate::parse("[]"),
        Err(TemplateError::Json(_))
    ));
    assert!(matches!(
        JsonTemplate::parse("\"%DURATION%\""),
        Err(TemplateError::Json(_))
    ));
    assert!(matches!(
        JsonTemplate::parse("{"),
        Err(TemplateError::Json(_))
    ));
    assert!(matches!(
        JsonTemplate::parse(r#"{"a":"x","a":"y"}"#),
        Err(TemplateError::Json(_))
    ));
    assert!(matches!(
        JsonTemplate::parse(r#"{"a":["%DURATION%"]}"#),
        Err(TemplateError::Json(_))
    ));
    let err = JsonTemplate::parse(r#"{"ok":"%DURATION%","bad":"x %FOO%"}"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        "json_format key \"bad\": unknown command operator %FOO% at offset 2"
    );
}
