//! h2c/gRPC upstreams multiplex on pooled tunnels: concurrent calls to one endpoint share
//! ⌈N/100⌉ tunnels and app connections, sequential ones reuse one, the tunnels of an endpoint
//! removed from the config close after the idle timeout, a bounded loop of calls has no
//! failure, and calls to an app port that also serves HTTP/1 get tunnels of their own.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use waypoint::transport::hbone::UpstreamLimits;
use waypoint_tests::{eventually, service_yaml, workload_yaml, Mesh};

const VIP: &str = "10.0.0.41:9090";

fn echo_yaml() -> String {
    service_yaml("echo", "10.0.0.41", 9090, "grpc")
        + &workload_yaml("echo-v1", "@1", "echo", "v1", "echo")
}

async fn mesh(idle: Duration) -> Mesh {
    Mesh::start_with(&echo_yaml(), |_, o| {
        o.upstream = UpstreamLimits {
            idle_timeout: idle,
            ..UpstreamLimits::default()
        }
    })
    .await
}

/// An h2c connection to the echo service through one tunnel to the waypoint.
async fn h2c(mesh: &Mesh) -> SendRequest<Full<Bytes>> {
    let tunnel = mesh.client().tunnel(VIP.parse().unwrap()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tunnel))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// `total` calls on `send` from `concurrent` tasks, at most 60 s; the failures' descriptions
/// ("out of time" for a task that ran out).
async fn calls(send: &SendRequest<Full<Bytes>>, total: usize, concurrent: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let workers = (0..concurrent).map(|_| {
        let mut send = send.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..total / concurrent {
                if Instant::now() > deadline {
                    failures.push("out of time".to_string());
                    break;
                }
                if let Err(e) = call(&mut send, 0).await {
                    failures.push(e);
                }
            }
            failures
        })
    });
    let mut failures = Vec::new();
    for w in futures::future::join_all(workers).await {
        failures.extend(w.unwrap());
    }
    failures
}

/// One unary gRPC call; the app holds it `delay_ms`. Ok when it answers 200 with grpc-status 0.
async fn call(send: &mut SendRequest<Full<Bytes>>, delay_ms: u64) -> Result<(), String> {
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(5);
    frame.put_slice(b"hello");
    let req = http::Request::post("http://echo:9090/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-delay-ms", delay_ms.to_string())
        .body(Full::new(frame.freeze()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let grpc = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap_or("?").to_string());
    match (status.as_u16(), grpc.as_deref()) {
        (200, Some("0")) if &collected.to_bytes()[5..] == b"echo-v1:hello" => Ok(()),
        (code, grpc) => Err(format!("HTTP {code}, grpc-status {grpc:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grpc_calls_share_one_tunnel_per_100_streams() {
    let mesh = mesh(Duration::from_secs(60)).await;
    // 150 calls at once over 3 client connections, each held 300 ms by the app so they overlap.
    let mut calls = Vec::new();
    for _ in 0..3 {
        let send = h2c(&mesh).await;
        for _ in 0..50 {
            let mut send = send.clone();
            calls.push(tokio::spawn(async move { call(&mut send, 300).await }));
        }
    }
    for c in calls {
        c.await.unwrap().expect("call served");
    }
    let tunnels = mesh.node(1).stats.tunnels.load(Ordering::Relaxed);
    let app_conns = mesh
        .app("echo-v1")
        .stats
        .connections
        .load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&tunnels),
        "{tunnels} tunnels to the endpoint for 150 concurrent calls (at most ⌈150/100⌉ = 2)"
    );
    assert!(
        (1..=2).contains(&app_conns),
        "{app_conns} app connections for 150 concurrent calls (at most 2)"
    );
    let mux = &mesh.bench.app.pool.mux.stats;
    assert!(mux.streams_reused.load(Ordering::Relaxed) >= 148);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_h2c_calls_reuse_one_tunnel() {
    let mesh = mesh(Duration::from_secs(60)).await;
    for _ in 0..20 {
        // A new client connection each time: every call is a new pingora upstream session.
        let mut send = h2c(&mesh).await;
        call(&mut send, 0).await.expect("call served");
    }
    assert_eq!(mesh.node(1).stats.tunnels.load(Ordering::Relaxed), 1);
    assert_eq!(
        mesh.app("echo-v1")
            .stats
            .connections
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(mesh.tunnels_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_of_a_removed_endpoint_close_after_the_idle_timeout() {
    let idle = Duration::from_millis(400);
    let mesh = mesh(idle).await;
    let mut send = h2c(&mesh).await;
    call(&mut send, 0).await.expect("call served");
    let pod = mesh.node(1);
    assert_eq!(pod.stats.open.load(Ordering::Relaxed), 1);
    assert_eq!(mesh.bench.app.pool.mux.open_counts().0, 1);
    // The endpoint leaves the config: nothing will pick its idle connection again.
    let without = mesh
        .net
        .render(&service_yaml("echo", "10.0.0.41", 9090, "grpc"));
    let files = vec![("test.yaml".to_string(), without)];
    let snapshot = routing::load_str(&files, "cluster.local").expect("config");
    mesh.bench.app.publish(snapshot, "test");
    eventually(
        "the h2c connection, its tunnel and the HBONE connection closed",
        idle * 10,
        || {
            pod.stats.open.load(Ordering::Relaxed) == 0
                && mesh.bench.app.pool.mux.open_counts() == (0, 0)
                && mesh.bench.app.pool.client().open_counts() == (0, 0)
        },
    )
    .await;
    let mux = &mesh.bench.app.pool.mux.stats;
    assert_eq!(mux.closed_idle.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_grpc_calls_has_no_failure() {
    const CALLS: usize = 4000;
    const CONCURRENT: usize = 100;
    let mesh = mesh(Duration::from_secs(60)).await;
    let send = h2c(&mesh).await;
    let failures = calls(&send, CALLS, CONCURRENT).await;
    if !failures.is_empty() {
        // What the access log says about them (response code, flags, details).
        let mut kinds = std::collections::BTreeMap::<String, u32>::new();
        for l in mesh
            .access_log()
            .iter()
            .filter(|l| l["response_code"] != 200)
        {
            let kind = format!(
                "{} {} {}",
                l["response_code"], l["response_flags"], l["upstream_transport_failure_reason"]
            );
            *kinds.entry(kind).or_default() += 1;
        }
        panic!(
            "{} of {CALLS} calls failed: {:?}; access log: {kinds:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    }
    assert_eq!(
        mesh.app("echo-v1").stats.requests.load(Ordering::Relaxed),
        CALLS as u64
    );
    assert_eq!(mesh.node(1).stats.tunnels.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_frees_its_stream_on_the_shared_connection() {
    let yaml = echo_yaml()
        + "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\nspec:\n  hosts: [echo]\n  http:\n  - timeout: 300ms\n    route: [{destination: {host: echo}}]\n";
    let mesh = Mesh::start(&yaml).await;
    let mut send = h2c(&mesh).await;
    let started = Instant::now();
    // The app would answer after 20 s; the route gives up after 300 ms.
    let err = call(&mut send, 20_000).await.unwrap_err();
    assert!(err.starts_with("HTTP 504"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // pingora's reset reaches the upstream stream: the connection carries no stream any more.
    eventually(
        "the timed-out stream released",
        Duration::from_secs(5),
        || mesh.bench.app.pool.mux.open_counts() == (1, 0),
    )
    .await;
    call(&mut send, 0).await.expect("the next call is served");
    assert_eq!(mesh.node(1).stats.tunnels.load(Ordering::Relaxed), 1);
}

/// The bench's shape: one app port serves an HTTP/1 service and a gRPC service. HTTP/1 requests
/// leave idle tunnels in the pool whose app connections have spoken HTTP/1; the h2c pool must
/// open its own tunnels rather than write an h2c preface on one of those (the app then closes
/// it, and every call on that h2c connection fails: 12–15 % 502s in the release bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_do_not_take_idle_http1_tunnels_to_the_same_app() {
    const HTTP1: usize = 8;
    const CALLS: usize = 400;
    const CONCURRENT: usize = 40;
    let web = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: echo-web\nspec:\n  hosts: [echo-web.default.svc.cluster.local]\n  addresses: [10.0.0.42]\n  ports:\n  - number: 9080\n    name: http\n    targetPort: 9090\n  workloadSelector:\n    labels:\n      app: echo\n---\n";
    let mesh = Mesh::start(&(echo_yaml() + web)).await;
    // Concurrent HTTP/1 requests (held 200 ms so they overlap): one tunnel each, pooled after.
    let gets = (0..HTTP1).map(|_| {
        let client = mesh.client();
        tokio::spawn(async move {
            let mut send = client.http1("10.0.0.42:9080".parse().unwrap()).await?;
            let (parts, _) =
                waypoint::commands::sim::get(&mut send, "echo-web", "/", &[("x-delay-ms", "200")])
                    .await?;
            anyhow::ensure!(parts.status == 200, "HTTP/1 answered {}", parts.status);
            anyhow::Ok(())
        })
    });
    for g in futures::future::join_all(gets).await {
        g.unwrap().expect("HTTP/1 request served");
    }
    let pool = &mesh.bench.app.pool;
    eventually("HTTP/1 tunnels pooled idle", Duration::from_secs(5), || {
        pool.idle_count() >= 2
    })
    .await;
    let idle = pool.idle_count();

    let send = h2c(&mesh).await;
    let failures = calls(&send, CALLS, CONCURRENT).await;
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // The HTTP/1 tunnels are still idle, untouched; the calls had a tunnel of their own.
    assert_eq!(pool.idle_count(), idle);
    assert_eq!(mesh.bench.app.pool.mux.open_counts().0, 1);
    let mux = &mesh.bench.app.pool.mux.stats;
    assert_eq!(mux.connections_opened.load(Ordering::Relaxed), 1);
}

/// A TCP tunnel to a port whose app also serves HTTP/1 behind another service gets a CONNECT of
/// its own: splicing its bytes onto an idle pooled tunnel would continue an app connection that
/// another client's HTTP/1 requests used (found with the h2c case above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tunnels_do_not_take_idle_http1_tunnels_to_the_same_app() {
    let web = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: echo-web\nspec:\n  hosts: [echo-web.default.svc.cluster.local]\n  addresses: [10.0.0.42]\n  ports:\n  - number: 9080\n    name: http\n    targetPort: 9090\n  workloadSelector:\n    labels:\n      app: echo\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: echo-tcp\nspec:\n  hosts: [echo-tcp.default.svc.cluster.local]\n  addresses: [10.0.0.43]\n  ports:\n  - number: 9100\n    name: tcp\n    protocol: TCP\n    targetPort: 9090\n  workloadSelector:\n    labels:\n      app: echo\n---\n";
    let mesh = Mesh::start(&(echo_yaml() + web)).await;
    let client = mesh.client();
    let mut send = client
        .http1("10.0.0.42:9080".parse().unwrap())
        .await
        .expect("a tunnel to echo-web");
    let (parts, _) = waypoint::commands::sim::get(&mut send, "echo-web", "/", &[])
        .await
        .expect("an HTTP/1 answer");
    assert_eq!(parts.status, 200);
    let pool = &mesh.bench.app.pool;
    eventually(
        "the HTTP/1 tunnel pooled idle",
        Duration::from_secs(5),
        || pool.idle_count() >= 1,
    )
    .await;
    let idle = pool.idle_count();

    // HTTP/1 spoken over the TCP service: spliced as bytes, so an answer proves the splice
    // reached the app.
    let mut tcp = client
        .http1("10.0.0.43:9100".parse().unwrap())
        .await
        .expect("a tunnel to echo-tcp");
    let (parts, _) = waypoint::commands::sim::get(&mut tcp, "echo-tcp", "/", &[])
        .await
        .expect("an answer through the TCP splice");
    assert_eq!(parts.status, 200);
    assert_eq!(
        pool.idle_count(),
        idle,
        "the TCP splice took the idle HTTP/1 tunnel instead of a CONNECT of its own"
    );
}
