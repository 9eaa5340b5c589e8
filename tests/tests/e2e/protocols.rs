//! What a tunnel can carry: h2c and gRPC, an HTTP/1.1 upgrade (WebSocket), and raw TCP on a TCP
//! service port.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint_tests::{service_yaml, workload_yaml, Mesh};

/// The echo gRPC service (10.0.0.40:9090, one pod) and an h2c connection to it through a
/// tunnel of the waypoint.
async fn grpc_echo() -> (Mesh, hyper::client::conn::http2::SendRequest<Full<Bytes>>) {
    let yaml = service_yaml("echo", "10.0.0.40", 9090, "grpc")
        + &workload_yaml("echo-v1", "@1", "echo", "v1", "echo");
    let mesh = Mesh::start(&yaml).await;
    let tunnel = mesh
        .client()
        .tunnel("10.0.0.40:9090".parse().unwrap())
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tunnel))
            .await
            .unwrap();
    tokio::spawn(conn);
    (mesh, send)
}

/// A gRPC call to `method` whose request body is `messages`, each length-prefixed.
fn grpc_call(method: &str, messages: &[&[u8]]) -> http::Request<Full<Bytes>> {
    let mut frames = BytesMut::new();
    for m in messages {
        frames.put_u8(0);
        frames.put_u32(m.len() as u32);
        frames.put_slice(m);
    }
    http::Request::post(format!("http://echo:9090/echo.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frames.freeze()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_inside_a_tunnel() {
    let (mesh, mut send) = grpc_echo().await;
    let req = grpc_call("Say", &[b"hello"]);
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("gRPC trailers arrive through the waypoint");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let body = collected.to_bytes();
    assert_eq!(&body[5..], b"echo-v1:hello");
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["protocol"], "HTTP/2");
    assert_eq!(
        log[0]["upstream_cluster"],
        "inbound-vip|9090|http|echo.default.svc.cluster.local"
    );
    // Istio's metrics label it gRPC, with the status from the trailers.
    let admin = mesh.admin().await;
    let metrics = waypoint_tests::scrape(admin.addr).await;
    let grpc = [
        ("request_protocol", "grpc"),
        ("response_code", "200"),
        ("grpc_response_status", "0"),
        ("destination_service", "echo.default.svc.cluster.local"),
    ];
    assert_eq!(metrics.value("istio_requests", &grpc), 1.0);
}

/// Istio's gRPC message counters: a client stream of three messages answered with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_are_counted_each_way() {
    let (mesh, mut send) = grpc_echo().await;
    let req = grpc_call("Collect", &[b"one", b"", b"three"]);
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    mesh.wait_for_log_lines(1).await;
    let admin = mesh.admin().await;
    let metrics = waypoint_tests::scrape(admin.addr).await;
    let grpc = [
        ("request_protocol", "grpc"),
        ("destination_service", "echo.default.svc.cluster.local"),
    ];
    assert_eq!(metrics.value("istio_request_messages", &grpc), 3.0);
    assert_eq!(metrics.value("istio_response_messages", &grpc), 1.0);
    // Plain HTTP has no message series.
    assert!(metrics
        .samples("istio_request_messages", &[("request_protocol", "http")])
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    let yaml = service_yaml("chat", "10.0.0.50", 8080, "http")
        + &workload_yaml("chat-v1", "@1", "chat", "v1", "chat");
    let mesh = Mesh::start(&yaml).await;
    let mut send = mesh
        .client()
        .http1("10.0.0.50:8080".parse().unwrap())
        .await
        .unwrap();
    let req = http::Request::get("/ws")
        .header("host", "chat:8080")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for msg in [&b"hello"[..], b"second frame"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
}

/// The mongodb TCP service (10.0.0.30:27017, one pod) and a tunnel to it through which
/// `payload` (not HTTP: binary bytes an HTTP parser would reject) has gone and come back.
async fn mongodb_echo(payload: &[u8]) -> (Mesh, waypoint::transport::hbone::H2Stream) {
    let yaml = service_yaml("mongodb", "10.0.0.30", 27017, "tcp-mongo")
        + &workload_yaml("mongodb-v1", "@1", "mongodb", "v1", "mongodb");
    let mesh = Mesh::start(&yaml).await;
    let mut tunnel = mesh
        .client()
        .tunnel("10.0.0.30:27017".parse().unwrap())
        .await
        .unwrap();
    tunnel.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, payload);
    (mesh, tunnel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_port_is_spliced_without_http_parsing() {
    let payload = b"\x3a\x00\x00\x00\xd4\x07\x00\x00ping-mongo";
    let (mesh, mut tunnel) = mongodb_echo(payload).await;
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tunnel.read_to_end(&mut rest).await;
    let log = mesh.wait_for_log_lines(1).await;
    let ip1 = mesh.net.ip(1);
    assert_eq!(log[0]["upstream_host"], format!("{ip1}:27017"));
    assert_eq!(
        log[0]["upstream_cluster"],
        "inbound-vip|27017|tcp|mongodb.default.svc.cluster.local"
    );
    assert_eq!(log[0]["bytes_received"], payload.len() as u64);
    assert_eq!(log[0]["bytes_sent"], payload.len() as u64);
    assert_eq!(
        log[0]["method"],
        serde_json::Value::Null,
        "a TCP line has no HTTP fields"
    );
}

/// A client that resets its TCP tunnel instead of ending it: the line keeps the bytes that
/// flowed and says the downstream ended it (`DC`), not the endpoint (`UC`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnel_the_client_resets_logs_its_bytes_and_dc() {
    let payload = b"\x3a\x00\x00\x00\xd4\x07\x00\x00ping-then-reset";
    let (mesh, mut tunnel) = mongodb_echo(payload).await;
    tunnel.reset();
    drop(tunnel);
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["response_flags"], "DC", "{:?}", log[0]);
    assert_eq!(log[0]["bytes_received"], payload.len() as u64);
    assert_eq!(log[0]["bytes_sent"], payload.len() as u64);
}

/// A TCP service whose endpoint is outside the mesh (`istio.io/dataplane-mode: none`): the
/// splice dials it directly, as the HTTP path does, and its node's HBONE port sees no tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_an_endpoint_outside_the_mesh_is_dialled_directly() {
    let yaml = service_yaml("legacy-db", "10.0.0.31", 27017, "tcp-mongo")
        + "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: legacy-db-v1\nspec:\n  address: @1\n  serviceAccount: legacy-db\n  labels:\n    app: legacy-db\n    version: v1\n    istio.io/dataplane-mode: none\n---\n";
    let mesh = Mesh::start(&yaml).await;
    let mut tunnel = mesh
        .client()
        .tunnel("10.0.0.31:27017".parse().unwrap())
        .await
        .unwrap();
    let payload = b"\x3a\x00\x00\x00\xd4\x07\x00\x00ping-direct";
    tunnel.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, payload);
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tunnel.read_to_end(&mut rest).await;
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["upstream_host"], format!("{}:27017", mesh.net.ip(1)));
    assert_eq!(log[0]["bytes_sent"], payload.len() as u64);
    let hbone_tunnels: u64 = mesh
        .bench
        .pods
        .iter()
        .map(|p| p.stats.tunnels.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(hbone_tunnels, 0, "reached without HBONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_timeout_closes_a_quiet_splice() {
    let yaml = service_yaml("mongodb", "10.0.0.30", 27017, "tcp-mongo")
        + &workload_yaml("mongodb-v1", "@1", "mongodb", "v1", "mongodb")
        + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: mongodb\nspec:\n  host: mongodb\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        idleTimeout: 400ms\n";
    let mesh = Mesh::start(&yaml).await;
    assert!(
        mesh.bench.app.snapshot.load().warnings().is_empty(),
        "tcp.idleTimeout is enforced, not warned about"
    );
    let mut tunnel = mesh
        .client()
        .tunnel("10.0.0.30:27017".parse().unwrap())
        .await
        .unwrap();
    // Bytes every 200 ms keep it open past the idle timeout...
    for _ in 0..4 {
        tunnel.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tunnel.read_exact(&mut back).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...then silence: the waypoint closes it.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the quiet splice was closed");
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["bytes_received"], 16);
    assert_eq!(log[0]["bytes_sent"], 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_tcp_route_picks_the_subset() {
    let yaml = service_yaml("mongodb", "10.0.0.30", 27017, "tcp-mongo")
        + &workload_yaml("mongodb-v1", "@1", "mongodb", "v1", "mongodb")
        + &workload_yaml("mongodb-v2", "@2", "mongodb", "v2", "mongodb")
        + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: mongodb\nspec:\n  host: mongodb\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v2\n    labels: {version: v2}\n---\n"
        + "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: mongodb\nspec:\n  hosts: [mongodb]\n  tcp:\n  - match: [{port: 27017}]\n    route:\n    - destination: {host: mongodb, subset: v2}\n";
    let mesh = Mesh::start(&yaml).await;
    for i in 0..4 {
        tcp_ping(&mesh).await;
        let log = mesh.wait_for_log_lines(i + 1).await;
        assert_eq!(log[i]["upstream_host"], format!("{}:27017", mesh.net.ip(2)));
        assert_eq!(
            log[i]["upstream_cluster"],
            "inbound-vip|27017|tcp/v2|mongodb.default.svc.cluster.local"
        );
    }
}

/// One TCP connection through the waypoint to the mongodb service: `ping` echoed, then closed.
async fn tcp_ping(mesh: &Mesh) {
    let mut tunnel = mesh
        .client()
        .tunnel("10.0.0.30:27017".parse().unwrap())
        .await
        .unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    tunnel.shutdown().await.unwrap();
    let _ = tunnel.read_to_end(&mut Vec::new()).await;
}

fn mongodb_with_policy(endpoints: u8, policy: &str) -> String {
    let mut yaml = service_yaml("mongodb", "10.0.0.30", 27017, "tcp-mongo");
    for i in 1..=endpoints {
        yaml += &workload_yaml(
            &format!("mongodb-{i}"),
            &format!("@{i}"),
            "mongodb",
            "v1",
            "mongodb",
        );
    }
    yaml + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: mongodb\nspec:\n  host: mongodb\n  trafficPolicy:\n"
        + policy
}

/// The TCP splice picks through the same upstream path as HTTP: a consistent-hash cluster
/// keyed on the source address (`useSourceIp`, istiod's `source_ip` hash policy on the TCP
/// proxy) sends every connection of one client to one endpoint. (Before, the splice picked at
/// random: 12 connections over 4 endpoints all land on one with probability 4 × 4⁻¹².)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_consistent_hash_on_the_source_address_is_sticky() {
    let mesh = Mesh::start(&mongodb_with_policy(
        4,
        "    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n",
    ))
    .await;
    for i in 0..12 {
        tcp_ping(&mesh).await;
        mesh.wait_for_log_lines(i + 1).await;
    }
    let log = mesh.wait_for_log_lines(12).await;
    let hosts: std::collections::BTreeSet<_> = log
        .iter()
        .map(|l| l["upstream_host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 1, "one client, one endpoint: {hosts:?}");
}

/// TCP connect failures feed the cluster's outlier detection, as the HTTP path's do: an
/// endpoint whose node refuses HBONE is ejected after `consecutive5xxErrors` and the following
/// connections go straight to the healthy one. (Before, round robin sent every other
/// connection to the dead endpoint first: about half the lines carried `UF`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_failures_eject_the_endpoint() {
    let yaml = mongodb_with_policy(
        2,
        "    loadBalancer:\n      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 1\n      interval: 30s\n      baseEjectionTime: 60s\n      maxEjectionPercent: 100\n",
    );
    let mesh = Mesh::start_with(&yaml, |net, o| {
        o.down.insert(net.ip(2));
    })
    .await;
    for i in 0..10 {
        tcp_ping(&mesh).await;
        mesh.wait_for_log_lines(i + 1).await;
    }
    let log = mesh.wait_for_log_lines(10).await;
    let healthy = format!("{}:27017", mesh.net.ip(1));
    assert!(
        log.iter().all(|l| l["upstream_host"] == healthy.as_str()),
        "every connection reached the healthy endpoint: {log:?}"
    );
    let refused = log
        .iter()
        .filter(|l| l["response_flags"].as_str().unwrap().contains("UF"))
        .count();
    assert_eq!(
        refused, 1,
        "one refusal, then the endpoint is ejected: {log:?}"
    );
}
