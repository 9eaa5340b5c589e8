//! Tiny HTTP/2 DATA frames on a shared connection. The h2 crate (0.4.16 and later) closes a
//! whole connection with GOAWAY `ENHANCE_YOUR_CALM` when too many small DATA frames sit unread in
//! its buffers. HBONE connections are shared by many tunnels, so one chatty peer whose reader
//! stopped must not take the other tunnels on that connection down (issue 13).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use waypoint::transport::hbone::UpstreamLimits;
use waypoint_tests::{client_tls, eventually, raw_h2_with, reviews_request, reviews_yaml, Mesh};

const TO_V1: &str = "  - route: [{destination: {host: reviews, subset: v1}}]\n";

/// An HBONE client connection to the mesh's waypoint as productpage, with `window` as its
/// streams' initial receive window; its connection task's handle tells whether it ended.
async fn hbone_connection(
    mesh: &Mesh,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::PingPong,
    tokio::task::JoinHandle<()>,
) {
    let c = raw_h2_with(
        mesh.bench.waypoint_addr,
        client_tls(mesh.cert("productpage"), &mesh.bench.waypoint_id),
        h2::client::Builder::new().initial_window_size(window),
    )
    .await
    .expect("an HBONE connection to the waypoint");
    (c.send, c.ping, c.driver)
}

/// A CONNECT tunnel to reviews' VIP on `send`'s connection.
async fn tunnel(
    send: &mut h2::client::SendRequest<Bytes>,
) -> (h2::SendStream<Bytes>, h2::RecvStream) {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.10:9080")
        .body(())
        .unwrap();
    let (response, stream) = send.send_request(req, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (stream, response.into_body())
}

/// The HTTP/1.1 status code answered in a tunnel (reads up to the end of the headers).
async fn status_in(recv: &mut h2::RecvStream) -> u16 {
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let data = tokio::time::timeout(Duration::from_secs(10), recv.data())
            .await
            .expect("an answer within 10 s")
            .expect("the tunnel carries an answer")
            .expect("the tunnel is not reset");
        let _ = recv.flow_control().release_capacity(data.len());
        head.extend_from_slice(&data);
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {head}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_response_to_a_stalled_client_keeps_the_shared_upstream_connection() {
    // 16,000 chunks, one per ms: enough separate frames (> 9,000) even when a loaded machine
    // delays the node's reads and some chunks share a frame.
    const CHUNKS: u64 = 16_000;
    let mesh = Mesh::start_with(&reviews_yaml("ROUND_ROBIN", TO_V1), |_, o| {
        o.upstream = UpstreamLimits {
            max_connections_per_endpoint: 1,
            ..UpstreamLimits::default()
        }
    })
    .await;
    let pod = mesh.node(1);
    let app = mesh.app("reviews-v1");
    let client = mesh.client();
    // Warm the one upstream connection.
    assert_eq!(reviews_request(&client, "GET", "/", &[]).await.status, 200);

    // Another client's request in flight on the same upstream connection meanwhile: its body
    // is held back until the chatty response has been sent.
    let (mut other, _other_ping, _other_driver) = hbone_connection(&mesh, 1 << 20).await;
    let (mut victim_send, mut victim_recv) = tunnel(&mut other).await;
    victim_send
        .send_data(
            Bytes::from_static(
                b"POST / HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 5\r\n\r\n",
            ),
            false,
        )
        .unwrap();
    eventually(
        "the victim's request reached the app",
        Duration::from_secs(10),
        || app.stats.requests.load(Ordering::Relaxed) == 2,
    )
    .await;

    // The stalled client: a zero stream window, asking for 16,000 one-byte chunks, one per ms.
    // Its tunnel's writes block at once, so the waypoint stops reading the upstream stream.
    let (mut stalled, _ping, _driver) = hbone_connection(&mesh, 0).await;
    let (mut chatty, _chatty_recv) = tunnel(&mut stalled).await;
    let bytes_before = pod.stats.bytes_to_peers.load(Ordering::Relaxed);
    let writes_before = pod.stats.writes_to_peers.load(Ordering::Relaxed);
    chatty
        .send_data(
            Bytes::from_static(
                b"GET / HTTP/1.1\r\nhost: reviews:9080\r\nx-response-chunks: 16000\r\n\r\n",
            ),
            false,
        )
        .unwrap();
    // Every chunk written by the app and forwarded by the node ("1\r\nx\r\n" each, then the
    // last chunk), one DATA frame per chunk; or the shared connection closed meanwhile.
    eventually("the chatty response sent", Duration::from_secs(120), || {
        pod.stats.open.load(Ordering::Relaxed) != 1
            || app.stats.chunks_sent.load(Ordering::Relaxed) == CHUNKS
                && pod.stats.bytes_to_peers.load(Ordering::Relaxed) - bytes_before >= 6 * CHUNKS + 5
    })
    .await;
    assert_eq!(
        pod.stats.open.load(Ordering::Relaxed),
        1,
        "the shared upstream connection closed during the chatty response"
    );
    let frames = pod.stats.writes_to_peers.load(Ordering::Relaxed) - writes_before;
    // h2's budget here: half the 4 MiB connection window, 250 per 6-byte frame: ~8,400 frames.
    assert!(
        frames > 9_000,
        "only {frames} DATA frames: the node coalesced the chunks, the test proves nothing"
    );

    // The request in flight on the shared connection completes…
    victim_send
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    assert_eq!(
        status_in(&mut victim_recv).await,
        200,
        "the other tunnel's request"
    );
    // …a new one is served on the same connection, never closed nor redialed.
    assert_eq!(reviews_request(&client, "GET", "/", &[]).await.status, 200);
    assert_eq!(pod.stats.connections.load(Ordering::Relaxed), 1, "redialed");
    assert_eq!(pod.stats.open.load(Ordering::Relaxed), 1, "closed");
    assert_eq!(app.stats.requests.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_in_tiny_frames_to_a_stalled_upstream_keeps_the_client_connection() {
    // 40,000 one-byte frames: over h2's budget here (half the 16 MiB connection window, 255
    // per frame: ~32,900 frames).
    const FRAMES: usize = 40_000;
    let routes = "  - match: [{headers: {x-victim: {exact: 'yes'}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
";
    let mesh = Mesh::start_with(&reviews_yaml("ROUND_ROBIN", routes), |_, o| {
        o.upstream = UpstreamLimits {
            // The stalled upstream: a node that accepts TCP and never answers the handshake,
            // so nothing reads the request body for this long.
            connect_timeout: Duration::from_secs(60),
            ..UpstreamLimits::default()
        }
    })
    .await;
    mesh.node(1).stats.frozen.send_replace(true);

    let (mut send, mut ping, driver) = hbone_connection(&mesh, 1 << 20).await;
    let (mut trickle, _trickle_recv) = tunnel(&mut send).await;
    let head = format!("POST / HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: {FRAMES}\r\n\r\n");
    trickle.send_data(Bytes::from(head), false).unwrap();
    for sent in 0..FRAMES {
        trickle
            .send_data(Bytes::from_static(b"x"), false)
            .unwrap_or_else(|e| panic!("the client connection closed after {sent} frames: {e}"));
    }

    // Other tunnels on the same client connection keep working, during and after.
    for _ in 0..3 {
        let (mut other, mut answer) = tunnel(&mut send).await;
        other
            .send_data(
                Bytes::from_static(
                    b"GET / HTTP/1.1\r\nhost: reviews:9080\r\nx-victim: yes\r\n\r\n",
                ),
                false,
            )
            .unwrap();
        assert_eq!(
            status_in(&mut answer).await,
            200,
            "another tunnel's request"
        );
        ping.ping(h2::Ping::opaque())
            .await
            .expect("the client connection answers PING (no GOAWAY)");
    }
    assert!(!driver.is_finished(), "the client connection was closed");
    assert_eq!(
        mesh.app("reviews-v1")
            .stats
            .requests
            .load(Ordering::Relaxed),
        0
    );
    drop(trickle);
}
