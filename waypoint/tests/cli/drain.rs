//! The SIGTERM drain contract, against the real binary in its own process (`--drain-seconds 4`,
//! so the cut comes 1 s before the end): what finishes in time gets its response with
//! `connection: close`, idle keep-alive tunnels are closed, a request still waiting for its
//! response at the deadline is answered 503 `LR`, a response cut mid-body ends in RST_STREAM on
//! its tunnel, a TCP splice open at the deadline is reset the same way, new tunnels are refused,
//! and the process exits 0 within the drain time.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::control::identity::Ca;
use waypoint::transport::hbone::H2Stream;
use waypoint_tests::{sim, spiffe, Net};

use crate::common::*;

const VIP: &str = "10.0.0.20:9080";
/// The drain time: the cut comes 1 s before its end. The quick request (1.5 s) must be answered
/// after the drain started (SIGTERM taken) and before the cut, on 2 cores shared with other
/// builds.
const DRAIN: Duration = Duration::from_secs(4);

/// Read a raw HTTP/1.1 response on `tunnel` until its header and `body` bytes of body arrived.
async fn read_head_and(tunnel: &mut H2Stream, body: usize) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            if seen.len() >= end + 4 + body {
                return String::from_utf8_lossy(&seen[..end]).into_owned();
            }
        }
        let n = tokio::time::timeout_at(deadline.into(), tunnel.read(&mut buf))
            .await
            .expect("response head in time")
            .expect("response head");
        assert!(n > 0, "tunnel ended before the response head");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The JSON access log line of the request to `path` (bounded wait).
async fn line_for(access: &std::sync::Mutex<Vec<String>>, path: &str) -> serde_json::Value {
    line_where(access, "path", path).await
}

/// The JSON access log line whose `key` is `value` (bounded wait).
async fn line_where(
    access: &std::sync::Mutex<Vec<String>>,
    key: &str,
    value: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = access.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v[key] == value).then_some(v)
        });
        if let Some(v) = found {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line with {key} {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_or_resets_what_outlives_the_drain_and_exits_in_time() {
    let net = Net::new();
    let ca = Ca::new("drain contract mesh").unwrap();
    let config = temp_dir("drain-contract-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("drain-contract-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let ratings = Pod::start(&net, &ca).await;
    // A TCP echo service (VIP 10.0.0.30:9000) on its own pod at @2.
    let tcp_yaml = waypoint_tests::service_yaml("echo", "10.0.0.30", 9000, "tcp")
        + &waypoint_tests::workload_yaml("echo-v1", "@2", "echo", "v1", "echo");
    std::fs::write(config.join("echo.yaml"), net.render(&tcp_yaml)).unwrap();
    let _echo_app = sim::start_app(
        std::net::SocketAddr::new(net.ip(2), 9000),
        "echo",
        sim::AppKind::TcpEcho,
    )
    .await
    .unwrap();
    let _echo_pod = sim::start_pod(
        std::net::SocketAddr::new(net.ip(2), 15008),
        &ca.issue(&spiffe("echo")).unwrap().workload,
    )
    .await
    .unwrap();
    let (mut child, addrs, stderr) = spawn_announcing(
        std::process::Command::new(binary())
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .args(cert_args(&certs))
            .args(["--access-log-format", "json", "--log", "info"])
            .args(["--drain-seconds", &DRAIN.as_secs().to_string()])
            .args(QUIET_PORTS),
        4,
    );
    let access = collect(child.stdout.take().unwrap());
    let logs = collect(stderr);
    let client = std::sync::Arc::new(sim::ZtunnelClient::new(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        addrs["hbone"],
        spiffe("waypoint"),
    ));

    // An idle keep-alive tunnel: one request answered, the next never sent.
    let mut idle = client.http1(VIP.parse().unwrap()).await.unwrap();
    ok_request(&mut idle, "before-sigterm").await;

    // In flight at SIGTERM: one answered well within the drain, one answered after the drain
    // time, and one whose response streams 1 KiB every 20 ms for a minute.
    let spawn_get = |path: &'static str, delay: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut send = client.http1(VIP.parse().unwrap()).await?;
            sim::get(&mut send, "ratings:9080", path, &[("x-delay-ms", delay)]).await
        })
    };
    let quick = spawn_get("/ratings/quick", "1500");
    let slow = spawn_get("/ratings/slow", "10000");
    let mut trickle = client.tunnel(VIP.parse().unwrap()).await.unwrap();
    trickle
        .write_all(
            b"GET /ratings/trickle HTTP/1.1\r\nhost: ratings:9080\r\nx-trickle-ms: 20\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head_and(&mut trickle, 2048).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A TCP connection spliced to the echo, open across the drain.
    let mut tcp = client
        .tunnel("10.0.0.30:9000".parse().unwrap())
        .await
        .unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echoed, b"ping");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ratings.requests() < 4 {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The outcomes are exported (all 0 before SIGTERM).
    let (status, metrics) =
        waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
    assert_eq!(status, 200);
    for outcome in ["completed", "responded_503", "reset"] {
        let series = format!("waypoint_drain_requests_total{{outcome=\"{outcome}\"}} 0");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }

    let terminated = Instant::now();
    let exit = tokio::spawn(sigterm_and_wait(child));
    poll_until(addrs["health"], "/healthz/ready", |status, body| {
        status == 503 && body.contains("draining")
    })
    .await;

    // Drain start: the idle keep-alive tunnel is closed (not held until the process exits).
    let draining = Instant::now();
    while !idle.is_closed() {
        assert!(
            draining.elapsed() < Duration::from_secs(1),
            "the idle keep-alive tunnel is still open after drain start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New tunnels are refused (GOAWAY, listener closed).
    assert!(
        client.tunnel(VIP.parse().unwrap()).await.is_err(),
        "a new tunnel was accepted while draining"
    );

    // Finished within the drain: its 200, telling the client not to reuse the connection.
    let (parts, _) = quick.await.unwrap().expect("the quick request is answered");
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["connection"], "close");

    // Still waiting at the deadline: a 503 that closes the connection, not an EOF.
    let (parts, _) = slow
        .await
        .unwrap()
        .expect("the slow request gets a response, not an EOF");
    assert_eq!(parts.status, 503);
    assert_eq!(parts.headers["connection"], "close");
    let answered = terminated.elapsed();

    // Cut mid-body: RST_STREAM on the tunnel, not a clean END_STREAM (EOF).
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    let ended = loop {
        match tokio::time::timeout_at(deadline.into(), trickle.read(&mut buf))
            .await
            .expect("the cut response ends")
        {
            Ok(0) => break None,
            Ok(_) => continue,
            Err(e) => break Some(e),
        }
    };
    let e = ended.expect("a reset, not a clean end of the tunnel");
    assert_reset_internal_error(&e);

    // The TCP splice open at the deadline: reset the same way.
    let ended = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the TCP tunnel ends at the deadline");
    let e = ended.expect_err("a reset, not a clean end of the TCP tunnel");
    assert_reset_internal_error(&e);

    exit.await.unwrap();
    let took = terminated.elapsed();
    assert!(
        answered < took && took < DRAIN + Duration::from_secs(1),
        "503 after {answered:?}, exit after {took:?}: beyond the {DRAIN:?} drain time"
    );

    // The access log tells the deadline's work apart: 503 LR, and the cut 200 with LR.
    let line = line_for(&access, "/ratings/slow").await;
    assert_eq!(line["response_code"], 503, "{line}");
    assert_eq!(line["response_flags"], "LR", "{line}");
    assert_eq!(line["response_code_details"], "drain_deadline", "{line}");
    let line = line_for(&access, "/ratings/trickle").await;
    assert_eq!(line["response_code"], 200, "{line}");
    assert_eq!(line["response_flags"], "LR", "{line}");
    let tcp_line = line_where(&access, "downstream_local_address", "10.0.0.30:9000").await;
    assert_eq!(tcp_line["response_flags"], "LR", "{tcp_line}");
    let line = line_for(&access, "/ratings/quick").await;
    assert_eq!(line["response_code"], 200, "{line}");
    assert!(!line["response_flags"].to_string().contains("LR"), "{line}");

    let logs = logs.lock().unwrap().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
    let last = logs
        .lines()
        .rev()
        .find(|l| l.contains("exiting"))
        .map(strip_ansi)
        .unwrap_or_else(|| panic!("no exit line:\n{logs}"));
    eprintln!("{last}");
    assert!(
        last.contains("responded_503=1") && last.contains("reset=2"),
        "{last}"
    );
}

/// `e` is a tunnel's stream reset with `INTERNAL_ERROR` (how the drain cut ends a started
/// response or a TCP splice), not a clean end or a connection error.
fn assert_reset_internal_error(e: &std::io::Error) {
    let h2 = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<h2::Error>())
        .unwrap_or_else(|| panic!("not an HTTP/2 error: {e:?}"));
    assert!(h2.is_reset(), "a stream reset, not {h2:?}");
    assert_eq!(h2.reason(), Some(h2::Reason::INTERNAL_ERROR), "{h2:?}");
}
