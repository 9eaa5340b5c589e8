//! The `waypoint` binary itself: `run` on a config directory under pingora's Server, serving a
//! request end to end and writing its access log line to stdout; clear errors for bad config.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, Net};

#[test]
fn broken_config_is_reported_with_file_and_field() {
    let dir = temp_dir("broken");
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w\nspec:\n  address: not-an-ip\n",
    )
    .unwrap();
    // A certificate file that exists but is not PEM is fatal at startup (a missing one is
    // waited for; see the readiness test).
    let garbage = temp_dir("broken-garbage");
    std::fs::write(garbage.join("cert-chain.pem"), "not a certificate").unwrap();
    std::fs::write(garbage.join("key.pem"), "not a key").unwrap();
    std::fs::write(garbage.join("root-cert.pem"), "not a root").unwrap();
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&dir)
        .args(cert_args(&garbage))
        .args(QUIET_PORTS)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cert_path = garbage.join("cert-chain.pem");
    assert!(
        stderr.contains(&*cert_path.to_string_lossy()),
        "identity error names the file: {stderr}"
    );

    let certs = temp_dir("broken-certs");
    let ca = Ca::new("t").unwrap();
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&dir)
        .args(cert_args(&certs))
        .args(QUIET_PORTS)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml")
            && stderr.contains("spec.address")
            && stderr.contains("not-an-ip"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_traffic_and_exits_on_sigterm() {
    let net = Net::new();
    let ca = Ca::new("binary test mesh").unwrap();
    let config = temp_dir("run-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("run-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let _ratings = Pod::start(&net, &ca).await;

    let (mut child, addrs, stderr) = spawn_run(&config, &certs);
    std::thread::spawn(move || for _ in stderr.lines() {});

    let mut send = client(&ca, addrs["hbone"]).await;
    let (parts, body) = sim::get(
        &mut send,
        "ratings:9080",
        "/ratings/1",
        &[("x-request-id", "bin-1")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200);
    let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo.pod, "ratings-v1");
    drop(send);

    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["request_id"], "bin-1");
    assert_eq!(
        entry["upstream_cluster"],
        "inbound-vip|9080|http|ratings.default.svc.cluster.local"
    );
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_certificate_and_config_and_admin_controls_work() {
    let net = Net::new();
    let ca = Ca::new("readiness test mesh").unwrap();
    let certs = temp_dir("ready-certs");
    let config = temp_dir("ready-config");
    std::fs::remove_dir(&config).unwrap(); // appears later
    let _ratings = Pod::start(&net, &ca).await;

    let (mut child, addrs, stderr) = spawn_run(&config, &certs);
    let logs = collect(stderr);
    let stdout = collect(child.stdout.take().unwrap());
    let (health, admin, stats) = (addrs["health"], addrs["admin"], addrs["stats"]);

    // Nothing yet: not ready, and the body says what is missing.
    let (status, body) = waypoint_tests::http_request(health, "GET", "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no certificate") && body.contains("cert-chain.pem does not exist"),
        "{body}"
    );
    assert!(
        body.contains("no config") && body.contains("does not exist"),
        "{body}"
    );

    // The certificate appears: only the config is missing.
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let (status, body) = poll_until(health, "/healthz/ready", |_, b| {
        !b.contains("no certificate")
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("no config"), "{body}");

    // The config appears (atomically, as a ConfigMap mount swaps it): ready.
    let staging = temp_dir("ready-staging");
    write_ratings_config(&net, &staging);
    std::fs::rename(&staging, &config).unwrap();
    let (status, body) = poll_until(health, "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(body.trim(), "ready");
    let (status2, _) = waypoint_tests::http_request(admin, "GET", "/ready").await;
    assert_eq!((status, status2), (200, 200));
    let (_, metrics) = waypoint_tests::http_request(stats, "GET", "/stats/prometheus").await;
    assert!(metrics.contains("\nwaypoint_ready 1"), "{metrics}");

    // /config_dump: process flags, identity, the routing snapshot.
    let (status, dump) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?format=waypoint").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["process"]["listen"], "127.0.0.1:0");
    assert_eq!(
        dump["identity"]["spiffe_id"],
        spiffe("waypoint").to_string()
    );
    assert_eq!(dump["config"]["status"]["source"], "files");
    assert!(dump["config"]["snapshot"]
        .to_string()
        .contains("ratings.default.svc.cluster.local"));

    let mut send = client(&ca, addrs["hbone"]).await;
    let logged = |id: &str| {
        let needle = format!("\"request_id\":\"{id}\"");
        stdout.lock().unwrap().iter().any(|l| l.contains(&needle))
    };
    let wait_logged = |id: &'static str| async move {
        for _ in 0..100 {
            if logged(id) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };

    // /logging: debug lines appear only after the level is raised.
    ok_request(&mut send, "before-debug").await;
    assert!(wait_logged("before-debug").await);
    let debug_lines = || {
        logs.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("DEBUG"))
            .count()
    };
    assert_eq!(debug_lines(), 0, "info level logs no debug lines");
    let (status, body) =
        waypoint_tests::http_request(admin, "POST", "/logging?level=verbose").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = waypoint_tests::http_request(admin, "POST", "/logging?level=debug").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("active filter: debug"), "{body}");
    ok_request(&mut send, "after-debug").await;
    assert!(wait_logged("after-debug").await);
    assert!(
        debug_lines() > 0,
        "debug level takes effect without restart"
    );

    // /access_log: sampling to 0 switches lines off, 1 brings them back.
    let (status, _) = waypoint_tests::http_request(admin, "POST", "/access_log?sample=0").await;
    assert_eq!(status, 200);
    ok_request(&mut send, "while-off").await;
    let (status, _) = waypoint_tests::http_request(admin, "POST", "/access_log?sample=1").await;
    assert_eq!(status, 200);
    ok_request(&mut send, "back-on").await;
    assert!(wait_logged("back-on").await);
    assert!(!logged("while-off"), "no line while sampling is 0");
    let (_, body) = waypoint_tests::http_request(admin, "GET", "/access_log").await;
    assert!(body.contains("lines sampled out: 1"), "{body}");

    drop(send);
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_tunnels() {
    let net = Net::new();
    let ca = Ca::new("drain test mesh").unwrap();
    let config = temp_dir("drain-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("drain-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let ratings = Pod::start(&net, &ca).await;
    let (child, addrs, stderr) = spawn_run(&config, &certs);
    let logs = collect(stderr);
    let client = std::sync::Arc::new(sim::ZtunnelClient::new(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        addrs["hbone"],
        spiffe("waypoint"),
    ));

    // A bounded load: 8 requests, each held 1 s by the app, on 8 tunnels of one connection
    // (well before the drain's cut, 1.5 s after SIGTERM).
    let in_flight = 8;
    let mut load = Vec::new();
    for i in 0..in_flight {
        let client = client.clone();
        load.push(tokio::spawn(async move {
            let mut send = client.http1("10.0.0.20:9080".parse().unwrap()).await?;
            let id = format!("drain-{i}");
            let (parts, _) = sim::get(
                &mut send,
                "ratings:9080",
                "/ratings/slow",
                &[("x-delay-ms", "1000"), ("x-request-id", id.as_str())],
            )
            .await?;
            anyhow::Ok(parts.status)
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ratings.requests() < in_flight {
        assert!(std::time::Instant::now() < deadline, "load never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let terminated = std::time::Instant::now();
    let exit = tokio::spawn(sigterm_and_wait(child));
    poll_until(addrs["health"], "/healthz/ready", |status, body| {
        status == 503 && body.contains("draining")
    })
    .await;
    // New tunnels are refused: the open connection has sent GOAWAY and the listener is closed.
    let refused = client.tunnel("10.0.0.20:9080".parse().unwrap()).await;
    assert!(refused.is_err(), "a new tunnel was accepted while draining");
    // Readiness fails while draining, so Kubernetes stops sending traffic here.
    let (status, body) =
        waypoint_tests::http_request(addrs["health"], "GET", "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");

    // Every in-flight request still completes.
    for task in load {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    exit.await.unwrap();
    let took = terminated.elapsed();
    assert!(
        took < Duration::from_secs(2 + 1),
        "exit took {took:?}, beyond the 2 s drain time"
    );
    let logs = logs.lock().unwrap().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}
