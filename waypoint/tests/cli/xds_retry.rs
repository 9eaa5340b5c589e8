//! `waypoint run --xds` takes each route's retry policy, CORS and fault as istiod writes them
//! (routing/tests/fixtures/xds/route_fields.json, istiod 1.24.6):
//!
//! - services one and two have no VirtualService, so their default route retries twice on
//!   `reset-before-request`. Each has one endpoint whose node drops the first HBONE connection
//!   before the TLS handshake: the retry goes back to that same endpoint (Envoy's
//!   `previous_hosts` falls back to a tried host when no other exists) and succeeds. two's route
//!   is served as 1.22/1.23 write it (no retry policy): its first request fails.
//! - web's `api` route answers a CORS preflight from its `typed_per_filter_config`; its `teapot`
//!   route aborts with 418 by its per-route fault.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::*;
use crate::xds::{serve, wait_ack};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};

const FIXTURE: &str = include_str!("../../../routing/tests/fixtures/xds/route_fields.json");
const TOKEN: &str = "istio-token-for-the-route-fields-test";

/// The fixture on this test's net: pod 10.244.6.N → @N.
fn doc(net: &Net) -> Value {
    let mut text = FIXTURE.replace("example.org", TRUST_DOMAIN);
    for n in 1..=3 {
        text = text.replace(&format!("10.244.6.{n}:"), &format!("{}:", net.ip(n)));
    }
    serde_json::from_str(&text).unwrap()
}

/// two's default route as istiod 1.22/1.23 write it: no retry policy.
fn without_two_retries(doc: &mut Value) {
    let mut found = 0;
    let mut visit = vec![&mut *doc];
    while let Some(v) = visit.pop() {
        match v {
            Value::Object(o) => {
                let two = o.get("cluster").and_then(Value::as_str)
                    == Some("inbound-vip|9080|http|two.default.svc.cluster.local");
                if two && o.remove("retryPolicy").is_some() {
                    found += 1;
                }
                visit.extend(o.values_mut());
            }
            Value::Array(items) => visit.extend(items.iter_mut()),
            _ => {}
        }
    }
    assert_eq!(found, 1);
}

/// A pod whose node drops its first HBONE connection: the app on :9080, the HBONE terminator
/// on an ephemeral port, and in front of it on :15008 a relay that closes the first
/// connection it accepts and relays the others.
struct FlakyPod {
    app: sim::AppHandle,
    _pod: sim::PodHandle,
    accepted: Arc<AtomicU64>,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyPod {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl FlakyPod {
    async fn start(net: &Net, ca: &Ca, host: u8, name: &str) -> Self {
        let ip = net.ip(host);
        let app = sim::start_app(SocketAddr::new(ip, 9080), name, sim::AppKind::Http)
            .await
            .unwrap();
        let cert = ca.issue(&spiffe(name)).unwrap();
        let pod = sim::start_pod(SocketAddr::new(ip, 0), &cert.workload)
            .await
            .unwrap();
        let front = TcpListener::bind(SocketAddr::new(ip, 15008)).await.unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let (count, backend) = (accepted.clone(), pod.hbone_addr);
        let relay = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = front.accept().await {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    drop(inbound); // closed before the TLS handshake
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        FlakyPod {
            app,
            _pod: pod,
            accepted,
            relay,
        }
    }

    fn requests(&self) -> u64 {
        self.app.stats.requests.load(Ordering::Relaxed)
    }
}

async fn send(
    ca: &Ca,
    waypoint: SocketAddr,
    vip: &str,
    method: http::Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::response::Parts {
    let mut tunnel = client_to(ca, waypoint, &spiffe("waypoint"), vip).await;
    sim::request(&mut tunnel, method, host, path, headers)
        .await
        .unwrap()
        .0
}

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_route_retries_cors_and_fault_as_istiod_writes_them() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds route fields test mesh", "xds-route-fields", TOKEN).await;
    let one = FlakyPod::start(&net, &ca, 1, "one-v1").await;
    let two = FlakyPod::start(&net, &ca, 2, "two-v1").await;
    let web = Pod::start_as(&net, &ca, 3, "web-v1", "web").await;
    let mut doc = doc(&net);
    without_two_retries(&mut doc);
    let versions = serve(&server, &doc);
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-route-x");
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    let (waypoint, admin) = (addrs["hbone"], addrs["admin"]);
    poll_until(admin, "/ready", |s, _| s == 200).await;
    wait_ack(&server, &versions).await;
    let get = http::Method::GET;

    // (a) one: the first HBONE connection is dropped; reset-before-request retries on the only
    // endpoint, which answers.
    let parts = send(
        &ca,
        waypoint,
        "10.96.6.1:9080",
        get.clone(),
        "one:9080",
        "/",
        &[],
    )
    .await;
    assert_eq!(parts.status, 200, "{:?}", logs.lock().unwrap());
    assert_eq!(
        one.accepted.load(Ordering::SeqCst),
        2,
        "a second connection"
    );
    assert_eq!(one.requests(), 1);
    // two (no retry policy on its route): the dropped connection is the answer.
    let parts = send(
        &ca,
        waypoint,
        "10.96.6.2:9080",
        get.clone(),
        "two:9080",
        "/",
        &[],
    )
    .await;
    assert_eq!(parts.status, 503);
    assert_eq!(two.accepted.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!(two.requests(), 0);

    // (b) CORS preflight answered by the waypoint from the route's CorsPolicy.
    let before = web.requests();
    let preflight = [
        ("origin", "https://dev.example"),
        ("access-control-request-method", "POST"),
    ];
    let parts = send(
        &ca,
        waypoint,
        "10.96.6.3:9080",
        http::Method::OPTIONS,
        "web:9080",
        "/api/items",
        &preflight,
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        header(&parts, "access-control-allow-origin"),
        Some("https://dev.example")
    );
    assert_eq!(
        header(&parts, "access-control-allow-methods"),
        Some("GET,POST")
    );
    assert_eq!(
        header(&parts, "access-control-allow-headers"),
        Some("x-token,content-type")
    );
    assert_eq!(header(&parts, "access-control-max-age"), Some("600"));
    assert_eq!(
        header(&parts, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        web.requests(),
        before,
        "the preflight never reached the app"
    );
    // A simple request from an allowed origin is forwarded and gets the CORS headers.
    let parts = send(
        &ca,
        waypoint,
        "10.96.6.3:9080",
        get.clone(),
        "web:9080",
        "/api/items",
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        header(&parts, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&parts, "access-control-expose-headers"),
        Some("x-trace")
    );
    assert_eq!(web.requests(), before + 1);

    // (c) the teapot route's per-route fault aborts every request with 418.
    let parts = send(
        &ca,
        waypoint,
        "10.96.6.3:9080",
        get,
        "web:9080",
        "/teapot",
        &[],
    )
    .await;
    assert_eq!(parts.status, 418);
    assert_eq!(
        web.requests(),
        before + 1,
        "the aborted request never reached the app"
    );

    // Nothing of these routes was warned away.
    let logs = logs.lock().unwrap().join("\n");
    assert!(!logs.contains("not supported"), "{logs}");
}
