//! Upstream HBONE connections stay bounded: a burst to a cold endpoint shares one dial and at
//! most the per-endpoint cap of connections, connections and idle tunnels close after the idle
//! timeout once the traffic ends, and a hung node (it stops answering, as a SIGSTOPped ztunnel)
//! is found by the keep-alive PING and its connection closed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use waypoint::transport::hbone::UpstreamLimits;
use waypoint_tests::{eventually, reviews_request, reviews_yaml, Mesh};

const TO_V1: &str = "  - route: [{destination: {host: reviews, subset: v1}}]\n";

fn limits() -> UpstreamLimits {
    UpstreamLimits {
        connect_timeout: Duration::from_millis(500),
        max_connections_per_endpoint: 2,
        idle_timeout: Duration::from_millis(400),
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shares_bounded_connections_that_close_when_idle() {
    let mesh = Mesh::start_with(&reviews_yaml("ROUND_ROBIN", TO_V1), |_, o| {
        o.upstream = limits()
    })
    .await;
    let pod = mesh.node(1);
    let client = mesh.client();
    let stats = &mesh.bench.app.pool.client().stats;
    // 300 concurrent requests to the cold endpoint, each held 300 ms by the app so they overlap.
    // The node holds its handshakes until requests have waited on a dial in flight, so the
    // burst meets the dial whatever the machine's speed.
    pod.stats.held.send_replace(true);
    let burst = (0..300).map(|_| reviews_request(&client, "GET", "/", &[("x-delay-ms", "300")]));
    let release = async {
        eventually(
            "requests waiting on the dial in flight",
            Duration::from_secs(10),
            || stats.dials_coalesced.load(Ordering::Relaxed) > 0,
        )
        .await;
        pod.stats.held.send_replace(false);
    };
    let (replies, ()) = futures::join!(futures::future::join_all(burst), release);
    assert!(replies.iter().all(|r| r.status == 200), "all served");
    let opened = pod.stats.connections.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&opened),
        "{opened} HBONE connections to one node for 300 concurrent requests (cap 2)"
    );

    // Traffic over: idle tunnels and then their connection close after the idle timeout.
    eventually(
        "upstream connections closed",
        Duration::from_secs(5),
        || {
            pod.stats.open.load(Ordering::Relaxed) == 0
                && mesh.bench.app.pool.client().open_counts() == (0, 0)
        },
    )
    .await;
    assert!(stats.closed_idle.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_found_by_keepalive_and_its_failure_shared() {
    let mesh = Mesh::start_with(&reviews_yaml("ROUND_ROBIN", TO_V1), |_, o| {
        o.upstream = UpstreamLimits {
            // Long enough that only the keep-alive can close the connection here.
            idle_timeout: Duration::from_secs(60),
            ..limits()
        }
    })
    .await;
    let pod = mesh.node(1);
    let client = mesh.client();
    assert_eq!(reviews_request(&client, "GET", "/", &[]).await.status, 200);
    let upstream = mesh.bench.app.pool.client();
    assert_eq!(upstream.open_counts().0, 1);

    pod.stats.frozen.send_replace(true);
    eventually(
        "the hung connection closed by keep-alive",
        Duration::from_secs(5),
        || upstream.open_counts().0 == 0,
    )
    .await;
    assert_eq!(upstream.stats.closed_keepalive.load(Ordering::Relaxed), 1);
    let admin = mesh.admin().await;
    let scrape = waypoint_tests::scrape(admin.addr).await;
    assert_eq!(
        scrape.value(
            "waypoint_upstream_connections_closed",
            &[("reason", "keepalive")]
        ),
        1.0
    );

    // New requests meet a node that accepts TCP and never handshakes: one dial at a time, the
    // requests that waited share its failure; every one gets 503 within the connect timeout.
    let before = upstream.stats.connections_opened.load(Ordering::Relaxed);
    let burst = (0..20).map(|_| reviews_request(&client, "GET", "/", &[]));
    let replies = futures::future::join_all(burst).await;
    assert!(replies.iter().all(|r| r.status == 503), "all 503");
    assert!(upstream.stats.dials_coalesced.load(Ordering::Relaxed) > 0);
    assert_eq!(
        upstream.stats.connections_opened.load(Ordering::Relaxed),
        before
    );
}

/// Slowloris inside a tunnel: request headers trickled a byte at a time are cut at the total
/// header deadline (pingora's per-read timeout alone restarts on every byte), while a
/// keep-alive tunnel that waits between requests is not on the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_headers_are_cut_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start_with(&reviews_yaml("ROUND_ROBIN", ""), |_, o| {
        o.request_headers_timeout = Some(Duration::from_millis(600));
    })
    .await;
    let client = mesh.client();
    let vip = "10.0.0.10:9080".parse().unwrap();

    // An honest keep-alive client idles longer than the deadline between two requests.
    let mut t = client.tunnel(vip).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nhost: reviews:9080\r\n\r\n";
    for _ in 0..2 {
        t.write_all(request).await.unwrap();
        // The whole response: its head, then content-length bytes.
        let mut got = Vec::new();
        let complete = |got: &[u8]| {
            let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))?
                .trim()
                .parse()
                .ok()?;
            (got.len() >= end + len).then_some(())
        };
        while complete(&got).is_none() {
            let mut b = [0u8; 1024];
            let n = t.read(&mut b).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        tokio::time::sleep(Duration::from_millis(900)).await;
    }

    // A trickler: one byte every 100 ms never completes its headers; the tunnel ends at the
    // deadline (pingora's 60 s read timeout would never fire: every byte restarts it), with no
    // request forwarded.
    let mut t = client.tunnel(vip).await.unwrap();
    let mut cut = false;
    for byte in b"GET / HTTP/1.1\r\nhost: reviews:9080\r\nx-slow: "
        .iter()
        .cycle()
        .take(100)
    {
        if t.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), t.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => panic!("an answer to an incomplete request"),
            Err(_) => {}
        }
    }
    assert!(cut, "the trickling tunnel was never cut within 10 s");
    assert!(waypoint::transport::header_deadline::TIMED_OUT.load(Ordering::Relaxed) >= 1);
}
