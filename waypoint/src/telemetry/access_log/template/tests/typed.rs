//! The typed, borrowed access-log line and the cached timestamp writer against the owned
//! rendering they replaced (moved from `tests.rs`; outputs unchanged).

use chrono::{DateTime, Utc};

use super::*;

/// A principal with a `Display` only, as `SpiffeId` is.
struct Principal(&'static str, &'static str);

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spiffe://cluster.local/ns/{}/sa/{}", self.0, self.1)
    }
}

/// The `%START_TIME%` text of the owned rendering before typed start times (chrono, per line).
fn old_timestamp(t: std::time::SystemTime) -> String {
    let dt: DateTime<Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Every operator, with truncations, port stripping and time formats.
const EVERY_OPERATOR: &str = "[%START_TIME%] %START_TIME(%Y/%m/%d %H:%M:%E3S %s.%6f)% \
%REQ(:METHOD)% %REQ(:PATH):7% %REQ_WITHOUT_QUERY(:PATH)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
%REQ(:AUTHORITY)% %REQ(HOST):4% %REQ(X-REQUEST-ID)% %REQ(X-FORWARDED-FOR)% %REQ(USER-AGENT):3% \
%REQ(X-TENANT)% %REQ(X-MISSING?X-TENANT)% %RESP(CONTENT-TYPE)% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(:STATUS)% %PROTOCOL% %RESPONSE_CODE% \
%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
%UPSTREAM_TRANSPORT_FAILURE_REASON% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESPONSE_DURATION% %UPSTREAM_HOST% %UPSTREAM_HOST:9% %UPSTREAM_CLUSTER% \
%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% \
%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% \
%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:3% %DOWNSTREAM_PEER_URI_SAN% \
%DOWNSTREAM_PEER_URI_SAN:20% %REQUESTED_SERVER_NAME% %ROUTE_NAME% %HOSTNAME% %CONFIG_VERSION% \
%UPSTREAM_REQUEST_ATTEMPT_COUNT% %TRACE_ID% %TUNNEL_TRACEPARENT% 100%%";

const EVERY_OPERATOR_JSON: &str = r#"{"start":"%START_TIME%","t":"%START_TIME(%s %3f)%",
"method":"%REQ(:METHOD)%","path":"%REQ(:PATH)%","cut":"%REQ(:PATH):5%","nq":"%REQ_WITHOUT_QUERY(:PATH)%",
"ua":"%REQ(USER-AGENT)%","tenant":"%REQ(X-TENANT)%","ct":"%RESP(CONTENT-TYPE)%",
"ust":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%","code":"%RESPONSE_CODE%","flags":"%RESPONSE_FLAGS%",
"details":"%RESPONSE_CODE_DETAILS%","reason":"%UPSTREAM_TRANSPORT_FAILURE_REASON%",
"rx":"%BYTES_RECEIVED%","tx":"%BYTES_SENT%","d":"%DURATION%","rd":"%RESPONSE_DURATION%",
"up":"%UPSTREAM_HOST%","upcut":"%UPSTREAM_HOST:6%","cluster":"%UPSTREAM_CLUSTER%",
"dl":"%DOWNSTREAM_LOCAL_ADDRESS%","dlp":"%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
"dr":"%DOWNSTREAM_REMOTE_ADDRESS%","drp":"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
"san":"%DOWNSTREAM_PEER_URI_SAN%","sancut":"%DOWNSTREAM_PEER_URI_SAN:9%","route":"%ROUTE_NAME%",
"v":"%CONFIG_VERSION%","tries":"%UPSTREAM_REQUEST_ATTEMPT_COUNT%","trace":"%TRACE_ID%",
"tp":"%TUNNEL_TRACEPARENT%","mixed":"%REQ(:METHOD)% %DOWNSTREAM_PEER_URI_SAN% \"%REQ(X-TENANT)%\"",
"n":{"a":"%DOWNSTREAM_REMOTE_ADDRESS%","k":1}}"#;

/// The typed, borrowed line (a `SystemTime`, `SocketAddr`s, a `Display` principal) renders to
/// the same bytes as the owned entry holding their text forms as the proxy built them before
/// (`timestamp()` by chrono, `to_string()`), for random values, in every template kind: Istio's
/// text, every operator, a json_format with every operator, and the built-in JSON object
/// (compared with serde's derive on the owned entry).
#[test]
fn typed_borrowed_lines_render_as_owned_entries() {
    use rand::{Rng, SeedableRng};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::{Duration, UNIX_EPOCH};

    let every = Template::parse(EVERY_OPERATOR).unwrap();
    let json = JsonTemplate::parse(EVERY_OPERATOR_JSON).unwrap();
    let texts = [
        "",
        "GET",
        "/reviews/7?x=1&y=\"2\"",
        "a\"b\\c",
        "tab\there\nnewline\u{1}",
        "héllo ✓ wörld",
        "10.0.0.1:80",
        "[::1]:8080",
        "no-port",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ];
    let principals = [
        Principal("default", "productpage"),
        Principal("ns-é", "s\"a"),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let text = |rng: &mut rand::rngs::StdRng| texts[rng.gen_range(0..texts.len())];
    let addr = |rng: &mut rand::rngs::StdRng| -> Option<SocketAddr> {
        let ip = match rng.gen_range(0..4) {
            0 => return None,
            1 => IpAddr::V4(Ipv4Addr::from(rng.gen::<u32>())),
            2 => IpAddr::V6(Ipv6Addr::from(rng.gen::<u128>())),
            _ => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, rng.gen())),
        };
        Some(SocketAddr::new(ip, rng.gen()))
    };
    let mut lines = 0;
    for i in 0..3000u64 {
        // Random instants from 1970 to ~2100; runs of consecutive milliseconds share a second
        // (the timestamp cache) and cross second boundaries.
        let base = UNIX_EPOCH + Duration::from_millis(rng.gen_range(0..4_102_444_800_000));
        let start = base + Duration::from_millis(i % 7 * 333);
        let up = addr(&mut rng);
        let local = addr(&mut rng);
        let remote = addr(&mut rng);
        let claimed = addr(&mut rng);
        let principal = rng.gen_bool(0.8).then(|| &principals[rng.gen_range(0..2)]);
        let strings: Vec<&str> = (0..16).map(|_| text(&mut rng)).collect();
        let request_headers: Vec<(String, String)> = (0..rng.gen_range(0..4))
            .map(|n| {
                let name = ["x-tenant", "traceparent", "x-other"][n % 3];
                (name.to_string(), text(&mut rng).to_string())
            })
            .collect();
        let response_headers: Vec<(String, String)> = (0..rng.gen_range(0..3))
            .map(|n| {
                let name = ["content-type", "x-envoy-upstream-service-time"][n % 2];
                (name.to_string(), text(&mut rng).to_string())
            })
            .collect();
        let (code, rx, tx, dur) = (rng.gen::<u16>(), rng.gen(), rng.gen(), rng.gen());
        let ust = rng.gen_bool(0.5).then(|| rng.gen());
        let (version, attempts) = (rng.gen(), rng.gen());
        let owned_addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let entry = Entry {
            start_time: old_timestamp(start),
            method: strings[0].into(),
            path: strings[1].into(),
            protocol: strings[2].into(),
            response_code: code,
            response_flags: strings[3].into(),
            response_code_details: strings[4].into(),
            upstream_transport_failure_reason: strings[5].into(),
            bytes_received: rx,
            bytes_sent: tx,
            duration_ms: dur,
            upstream_service_time_ms: ust,
            x_forwarded_for: strings[6].into(),
            user_agent: strings[7].into(),
            request_id: strings[8].into(),
            authority: strings[9].into(),
            upstream_host: owned_addr(up),
            upstream_cluster: strings[10].into(),
            downstream_local_address: owned_addr(local),
            downstream_remote_address: owned_addr(remote),
            downstream_claimed_address: owned_addr(claimed),
            source_principal: principal.map(|p| p.to_string()).unwrap_or_default(),
            destination_principal: strings[11].into(),
            route_name: strings[12].into(),
            tunnel_traceparent: strings[13].into(),
            config_version: version,
            authz: strings[14].into(),
            authz_dry_run: strings[15].into(),
            authz_audit: String::new(),
            request_headers: request_headers.clone(),
            response_headers: response_headers.clone(),
            upstream_local_address: strings[2].into(),
            requested_server_name: strings[5].into(),
            connection_termination_details: strings[4].into(),
            attempt_count: attempts,
        };
        let typed = Line {
            start_time: start.into(),
            upstream_host: up.into(),
            downstream_local_address: local.into(),
            downstream_remote_address: remote.into(),
            downstream_claimed_address: claimed.into(),
            source_principal: principal.map_or(Field::Str(""), |p| Field::Display(p)),
            ..entry.line()
        };
        for t in [Template::istio_default(), &every] {
            assert_eq!(t.render_line(&typed), t.render(&entry), "{entry:?}");
        }
        let mut out = Vec::new();
        json.write(&typed, &mut out);
        let rendered = String::from_utf8(out).unwrap();
        assert_eq!(rendered, json.render(&entry), "{entry:?}");
        serde_json::from_str::<serde_json::Value>(&rendered).expect("valid JSON");
        let mut out = Vec::new();
        typed.write_default_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&entry.line()).unwrap(),
            "{entry:?}"
        );
        lines += 1;
    }
    assert_eq!(lines, 3000);
}

/// The cached-second timestamp writer agrees with chrono on every millisecond of a few seconds
/// (cache hits, then misses at each boundary) and on random instants, before 1970 included.
#[test]
fn cached_timestamps_match_chrono() {
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, UNIX_EPOCH};
    let base = UNIX_EPOCH + Duration::from_secs(1_772_600_765);
    for ms in 0..4_000 {
        let t = base + Duration::from_millis(ms);
        assert_eq!(crate::telemetry::access_log::timestamp(t), old_timestamp(t));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..2_000 {
        let t = UNIX_EPOCH + Duration::from_nanos(rng.gen_range(0..1u64 << 62));
        assert_eq!(crate::telemetry::access_log::timestamp(t), old_timestamp(t));
        let before = UNIX_EPOCH - Duration::from_millis(rng.gen_range(0..1u64 << 40));
        assert_eq!(
            crate::telemetry::access_log::timestamp(before),
            old_timestamp(before)
        );
    }
}
