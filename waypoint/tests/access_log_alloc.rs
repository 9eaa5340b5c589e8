//! Rendering a sampled-in access log line allocates nothing but the output's growth: a counting
//! global allocator (this thread's allocations only) around N renders into a reused buffer, in
//! each format, with a borrowed `Line` as the proxy builds it (typed start time and addresses,
//! an identity that is only `Display`). A behaviour bound, not a timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use waypoint::telemetry::access_log::{AccessLog, Field, Format, Line, Sink};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialized thread-local
// without a destructor, so counting never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

struct Principal;

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spiffe://cluster.local/ns/default/sa/productpage")
    }
}

const LINES: u64 = 2_000;

/// Renders `LINES` lines (one new millisecond each, so the start time's cached second turns
/// over twice) into one buffer, and returns the allocations made per line after a warm-up.
fn allocations_per_line(log: &AccessLog, headers: &[(String, String)]) -> (f64, String) {
    let principal = Principal;
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_772_600_767_089);
    let up: SocketAddr = "10.0.0.9:9080".parse().unwrap();
    let local: SocketAddr = "10.96.0.10:9080".parse().unwrap();
    let remote: SocketAddr = "[fd00::5]:40280".parse().unwrap();
    let cluster = String::from("inbound-vip|9080|http/v1|reviews.default.svc.cluster.local");
    let line = |i: u64| Line {
        start_time: (start + Duration::from_millis(i)).into(),
        method: "GET".into(),
        path: "/reviews/7?x=1".into(),
        protocol: "HTTP/1.1".into(),
        response_code: 200,
        response_flags: "-".into(),
        response_code_details: "via_upstream".into(),
        bytes_received: 12,
        bytes_sent: 345 + i,
        duration_ms: 17,
        upstream_service_time_ms: Some(15),
        x_forwarded_for: "192.0.2.7".into(),
        user_agent: "e2e-agent/1.0 \"quoted\"".into(),
        request_id: "0af7651916cd43dd8448eb211c80319c".into(),
        authority: "reviews:9080".into(),
        upstream_host: up.into(),
        upstream_cluster: (&cluster).into(),
        downstream_local_address: local.into(),
        downstream_remote_address: remote.into(),
        source_principal: Field::Display(&principal),
        destination_principal: "spiffe://cluster.local/ns/default/sa/reviews".into(),
        route_name: "reviews.0".into(),
        tunnel_traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        config_version: 7,
        request_headers: headers,
        attempt_count: 1,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(64 * 1024);
    // Warm-up: the buffer's capacity, the per-thread caches (hostname, start time, scratch).
    for i in 0..10 {
        log.render_into(&line(i), &mut out);
        out.clear();
    }
    let before = allocations();
    for i in 0..LINES {
        log.render_into(&line(i * 7), &mut out);
        out.push(b'\n');
        if out.len() > 60 * 1024 {
            out.clear();
        }
    }
    let made = allocations() - before;
    eprintln!("{made} allocations for {LINES} lines");
    let sample = {
        let mut one = Vec::new();
        log.render_into(&line(0), &mut one);
        String::from_utf8(one).unwrap()
    };
    (made as f64 / LINES as f64, sample)
}

#[test]
fn rendering_a_line_allocates_nothing_per_line() {
    let text = AccessLog::new(Format::Text, Sink::Off);
    let (per_line, sample) = allocations_per_line(&text, &[]);
    assert!(
        sample.starts_with("[2026-03-04T05:06:07.089Z] \"GET /reviews/7?x=1 HTTP/1.1\" 200"),
        "{sample}"
    );
    assert!(
        sample.contains(" 10.96.0.10:9080 [fd00::5]:40280 "),
        "{sample}"
    );
    // The per-second timestamp cache formats a new second with chrono (a few allocations, 2
    // times in 2000 lines); nothing else allocates.
    assert!(
        per_line < 0.05,
        "Istio text: {per_line} allocations per line"
    );

    let json = AccessLog::new(Format::Json, Sink::Off);
    let (per_line, sample) = allocations_per_line(&json, &[]);
    let v: serde_json::Value = serde_json::from_str(&sample).unwrap();
    assert_eq!(
        v["source_principal"],
        "spiffe://cluster.local/ns/default/sa/productpage"
    );
    assert_eq!(v["user_agent"], "e2e-agent/1.0 \"quoted\"");
    assert!(
        per_line < 0.05,
        "default JSON: {per_line} allocations per line"
    );

    let custom = AccessLog::with_template(
        Format::Json,
        Some(
            r#"{"t":"%START_TIME%","code":"%RESPONSE_CODE%","ua":"%REQ(USER-AGENT)%",
                "peer":"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%","tenant":"%REQ(X-TENANT)%",
                "trace":"%TRACE_ID%","mixed":"%REQ(:METHOD)% %DOWNSTREAM_PEER_URI_SAN%"}"#,
        ),
        Sink::Off,
    )
    .unwrap();
    let headers = vec![
        ("x-tenant".to_string(), "acme".to_string()),
        (
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        ),
    ];
    let (per_line, sample) = allocations_per_line(&custom, &headers);
    let v: serde_json::Value = serde_json::from_str(&sample).unwrap();
    assert_eq!(v["peer"], "fd00::5");
    assert_eq!(v["trace"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["code"], 200);
    assert!(
        per_line < 0.05,
        "json_format: {per_line} allocations per line"
    );
}
