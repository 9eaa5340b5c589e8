//! IPv6: an unspecified listen address serves both families (istiod's waypoint Service is
//! `PreferDualStack`), and a service whose VIP and pods are IPv6 is served end to end over
//! `::1`: the CONNECT authority `[vip]:port` in, HBONE to `[pod]:node-port` with
//! `CONNECT [pod]:port` out, and the access log writing the addresses as Envoy does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Command;

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, Net};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unspecified_listen_address_serves_ipv4_and_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        // Only a host without IPv6 skips this; the CI machine has `::1`.
        eprintln!("no IPv6 loopback here: nothing to test");
        return;
    }
    let net = Net::new();
    let ca = Ca::new("dual-stack test mesh").unwrap();
    let config = temp_dir("dual-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("dual-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let _ratings = Pod::start(&net, &ca).await;

    // Only the loopback addresses of the two families are connected to.
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--listen", "0.0.0.0:0", "--config"])
        .arg(&config)
        .args(cert_args(&certs))
        .args(["--access-log-format", "json", "--log", "info"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--stats-listen",
            "127.0.0.1:0",
        ])
        .args(["--health-listen", "[::]:0"]);
    let (mut child, addrs, stderr) = spawn_announcing(&mut cmd, 6);
    let _logs = collect(stderr);
    let (v4, v6) = (addrs["hbone"], addrs["hbone-ipv6"]);
    assert!(v4.ip().is_unspecified() && v4.is_ipv4(), "{addrs:?}");
    assert!(v6.ip().is_unspecified() && v6.is_ipv6(), "{addrs:?}");
    assert_eq!(v4.port(), v6.port(), "one port for both families");
    // `[::]` works the other way round: IPv6 first, IPv4 beside it.
    let (h6, h4) = (addrs["health"], addrs["health-ipv4"]);
    assert!(
        h6.is_ipv6() && h4.is_ipv4() && h6.port() == h4.port(),
        "{addrs:?}"
    );

    let health_v4 = SocketAddr::from(([127, 0, 0, 1], h4.port()));
    let health_v6: SocketAddr = format!("[::1]:{}", h6.port()).parse().unwrap();
    for health in [health_v4, health_v6] {
        let (status, body) = poll_until(health, "/healthz/ready", |s, _| s == 200).await;
        assert_eq!(status, 200, "{health}: {body}");
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for (i, hbone) in [
        SocketAddr::from(([127, 0, 0, 1], v4.port())),
        format!("[::1]:{}", v6.port()).parse().unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut send = client(&ca, hbone).await;
        let id = format!("dual-{i}");
        let (parts, _) = sim::get(&mut send, "ratings:9080", "/", &[("x-request-id", &id)])
            .await
            .unwrap();
        assert_eq!(parts.status, 200, "through {hbone}");
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(entry["request_id"], id.as_str());
        assert_eq!(entry["response_code"], 200);
    }
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_service_is_served_over_ipv6_end_to_end() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: nothing to test");
        return;
    }
    let ca = Ca::new("IPv6 test mesh").unwrap();
    // The pod is `::1`: its app and its node's HBONE terminator on ports the OS picks (tests
    // run in parallel, and `::1` is the only IPv6 loopback address).
    let app = sim::start_app(
        "[::1]:0".parse().unwrap(),
        "ratings6-v1",
        sim::AppKind::Http,
    )
    .await
    .unwrap();
    let pod_cert = ca.issue(&spiffe("bookinfo-ratings")).unwrap();
    let node = sim::start_pod("[::1]:0".parse().unwrap(), &pod_cert.workload)
        .await
        .unwrap();
    let app_port = app.addr.port();
    let config = temp_dir("ipv6-config");
    std::fs::write(
        config.join("ratings6.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ratings6\nspec:\n  hosts: [ratings6.default.svc.cluster.local]\n  addresses: [\"fd00:10::20\"]\n  ports:\n  - number: 9080\n    name: http\n    targetPort: {app_port}\n  workloadSelector:\n    labels:\n      app: ratings6\n---\n{}",
            waypoint_tests::workload_yaml("ratings6-v1", "\"::1\"", "ratings6", "v1", "bookinfo-ratings")
        ),
    )
    .unwrap();
    let certs = temp_dir("ipv6-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();

    let mut cmd = Command::new(binary());
    cmd.args(["run", "--listen", "[::1]:0", "--config"])
        .arg(&config)
        .args(cert_args(&certs))
        .args(["--access-log-format", "json", "--log", "info"])
        .args(["--upstream-hbone-port", &node.hbone_addr.port().to_string()])
        .args(QUIET_PORTS);
    let (mut child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let _logs = collect(stderr);
    let hbone = addrs["hbone"];
    assert!(hbone.is_ipv6(), "{addrs:?}");
    let (status, body) = poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");

    // ztunnel's CONNECT to the VIP: `[fd00:10::20]:9080`.
    let mut send = client_to(&ca, hbone, &spiffe("waypoint"), "[fd00:10::20]:9080").await;
    let (parts, body) = sim::get(
        &mut send,
        "ratings6:9080",
        "/ratings/6",
        &[("x-request-id", "v6-1")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo.pod, "ratings6-v1");
    // The node accepted the waypoint's tunnel: it answers 400 to a CONNECT whose authority is
    // not `[its own address]:port`, so `CONNECT [::1]:<app port>` went out as it should.
    assert_eq!(
        node.stats
            .tunnels
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["request_id"], "v6-1", "{line}");
    // Envoy writes an IPv6 address:port with brackets.
    assert_eq!(
        entry["upstream_host"],
        format!("[::1]:{app_port}"),
        "{line}"
    );
    assert_eq!(
        entry["downstream_local_address"], "[fd00:10::20]:9080",
        "{line}"
    );
    assert_eq!(
        entry["upstream_cluster"], "inbound-vip|9080|http|ratings6.default.svc.cluster.local",
        "{line}"
    );
    sigterm_and_wait(child).await;
}
