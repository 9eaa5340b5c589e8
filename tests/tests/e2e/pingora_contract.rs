//! The pingora behaviour the upstream pool relies on (pingora is pinned to `=0.9.1`; this test
//! fails loudly when an upgrade changes it). Driven with pingora's own HTTP connectors and our
//! `custom_l4` connector over real tunnels to a simulated pod.
//!
//! HTTP/1.1 (the tunnel reuse trick, docs/architecture.md "Upstream tunnel reuse"):
//! 1. releasing a finished keep-alive session tests the stream with one read before pooling it:
//!    that read gives our tunnel back to our idle list, and pingora, seeing EOF, does not pool
//!    what it holds — its next lookup for the peer calls our connector again, which reuses the
//!    tunnel;
//! 2. releasing a session pingora will not keep shuts the stream down, and our tunnel is not
//!    given back.
//!
//! HTTP/2: pingora does not reuse an h2 connection over a virtual stream (it compares the
//! connection's file descriptor with the peer), which is why h2c upstreams are multiplexed in
//! our own pool; the second session's stream goes on the first one's h2c connection there.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::connectors::http::v1::Connector as H1Connector;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::v1::client::HttpSession as H1Session;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use waypoint::control::identity::PeerCheck;
use waypoint::transport::hbone::{Lease, TunnelConnector, TunnelPolicy};
use waypoint_tests::{service_yaml, spiffe, workload_yaml, Mesh};

const IDLE: Option<Duration> = Some(Duration::from_secs(60));

async fn echo_mesh() -> (Mesh, SocketAddr) {
    let yaml = service_yaml("echo", "10.0.0.42", 9090, "http")
        + &workload_yaml("echo-v1", "@1", "echo", "v1", "echo");
    let mesh = Mesh::start(&yaml).await;
    let target = SocketAddr::new(mesh.net.ip(1), 9090);
    (mesh, target)
}

/// A peer dialled through our connector, with a lease of its own (one per upstream attempt).
fn peer(mesh: &Mesh, target: SocketAddr, h2: bool) -> (HttpPeer, Arc<Lease>) {
    let lease = Arc::new(Lease::default());
    let mut peer = HttpPeer::new(target, false, String::new());
    if h2 {
        peer.options.set_http_version(2, 2);
    }
    peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
        pool: mesh.bench.app.pool.clone(),
        identity: PeerCheck::from(spiffe("echo")),
        lease: lease.clone(),
        policy: TunnelPolicy::default(),
        failure: Default::default(),
        h2,
    }));
    (peer, lease)
}

fn get(close: bool) -> Box<RequestHeader> {
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("host", "echo").unwrap();
    if close {
        req.insert_header("connection", "close").unwrap();
    }
    Box::new(req)
}

/// One GET read to the end of its body.
async fn exchange(http: &mut H1Session, close: bool) {
    http.write_request_header(get(close)).await.unwrap();
    http.read_response().await.unwrap();
    http.respect_keepalive();
    assert_eq!(http.get_status().unwrap(), 200);
    while http.read_body_bytes().await.unwrap().is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_http1_release_gives_the_tunnel_back_and_does_not_pool_it() {
    let (mesh, target) = echo_mesh().await;
    let pool = mesh.bench.app.pool.clone();
    let connector = H1Connector::new(None);

    let (first, lease) = peer(&mesh, target, false);
    let (mut http, reused) = connector.get_http_session(&first).await.unwrap();
    assert!(!reused);
    exchange(&mut http, false).await;
    lease.mark_complete(); // what the proxy does at the end of the response body
    connector.release_http_session(http, &first, IDLE).await;
    // (1) The reuse test's read gave the tunnel back…
    assert_eq!(pool.stats.tunnels_returned.load(Ordering::Relaxed), 1);
    assert_eq!(pool.idle_count(), 1);

    // …and pingora kept nothing: its next lookup calls our connector, which reuses the tunnel.
    let (second, lease) = peer(&mesh, target, false);
    let (mut http, reused) = connector.get_http_session(&second).await.unwrap();
    assert!(
        !reused,
        "pingora pooled a virtual stream it should have dropped"
    );
    assert_eq!(pool.stats.tunnels_reused.load(Ordering::Relaxed), 1);
    assert_eq!(pool.idle_count(), 0);
    // (2) A session pingora will not keep is shut down: the tunnel is not given back.
    exchange(&mut http, true).await;
    lease.mark_complete();
    connector.release_http_session(http, &second, IDLE).await;
    assert_eq!(pool.stats.tunnels_returned.load(Ordering::Relaxed), 1);
    assert_eq!(pool.idle_count(), 0);

    assert_eq!(mesh.node(1).stats.tunnels.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats.returned_late.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_does_not_reuse_h2_over_a_virtual_stream() {
    let (mesh, target) = echo_mesh().await;
    let connector = HttpConnector::<()>::new(None);
    for round in 0..2 {
        let (peer, _lease) = peer(&mesh, target, true);
        let (session, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(
            !reused,
            "round {round}: pingora reused an h2 connection on a virtual stream"
        );
        let HttpSession::H2(mut h2) = session else {
            panic!("round {round}: not an h2 session");
        };
        h2.write_request_header(get(false), true).unwrap();
        h2.read_response_header().await.unwrap();
        assert_eq!(h2.response_header().unwrap().status, 200);
        while h2.read_response_body().await.unwrap().is_some() {}
        connector
            .release_http_session(HttpSession::H2(h2), &peer, IDLE)
            .await;
    }
    // Our pool carried both sessions' streams on one h2c connection, on one tunnel.
    let mux = &mesh.bench.app.pool.mux.stats;
    assert_eq!(mux.connections_opened.load(Ordering::Relaxed), 1);
    assert_eq!(mux.streams_reused.load(Ordering::Relaxed), 1);
    assert_eq!(mesh.node(1).stats.tunnels.load(Ordering::Relaxed), 1);
}
