//! The identity a running `waypoint` holds: certificate files watched for rotation, and
//! certificates requested from (and renewed by) an istiod-style CA.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, Net};

/// The identity's serial as `/config_dump` shows it.
async fn dumped_serial(admin: SocketAddr) -> String {
    let (status, dump) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?format=waypoint").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    dump["identity"]["serial"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_files_are_watched_and_bad_updates_keep_the_old_certificate() {
    let net = Net::new();
    let ca = Ca::new("rotation test mesh").unwrap();
    let config = temp_dir("rotate-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("rotate-certs");
    let first = ca.issue(&spiffe("waypoint")).unwrap();
    first.write_to(&certs).unwrap();
    let _ratings = Pod::start(&net, &ca).await;
    let (child, addrs, stderr) = spawn_run(&config, &certs);
    let logs = collect(stderr);
    let admin = addrs["admin"];
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let first_serial = dumped_serial(admin).await;
    assert_eq!(first_serial, first.workload.summary().serial);

    // Rotate the files the way a CSI driver does, one file after the other, under a bounded load.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, ca_client, hbone) = (
            stop.clone(),
            ca.issue(&spiffe("productpage")).unwrap().workload,
            addrs["hbone"],
        );
        tokio::spawn(async move {
            let client = sim::ZtunnelClient::new(ca_client, hbone, spiffe("waypoint"));
            let (mut sent, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 5_000 {
                // A new tunnel every 10 requests: new streams on the old connection too.
                if let Ok(mut send) = client.http1("10.0.0.20:9080".parse().unwrap()).await {
                    for _ in 0..10 {
                        match sim::get(&mut send, "ratings:9080", "/", &[]).await {
                            Ok((p, _)) if p.status == 200 => {}
                            _ => failed += 1,
                        }
                        sent += 1;
                    }
                } else {
                    failed += 1;
                }
            }
            (sent, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = ca.issue(&spiffe("waypoint")).unwrap();
    let second_serial = second.workload.summary().serial;
    let staged = temp_dir("rotate-staged");
    second.write_to(&staged).unwrap();
    let rotated_at = std::time::Instant::now();
    for f in ["key.pem", "cert-chain.pem"] {
        std::fs::copy(staged.join(f), certs.join(f)).unwrap();
    }
    let deadline = rotated_at + Duration::from_secs(5);
    while dumped_serial(admin).await != second_serial {
        assert!(
            std::time::Instant::now() < deadline,
            "rotation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = rotated_at.elapsed();
    eprintln!("rotation picked up after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the rotation"
    );
    assert!(
        sent > 20,
        "the load ran across the rotation ({sent} requests)"
    );
    let presented = waypoint_tests::presented_serial(
        addrs["hbone"],
        ca.issue(&spiffe("probe")).unwrap().workload,
        &spiffe("waypoint"),
    )
    .await;
    assert_eq!(
        presented, second_serial,
        "new handshakes get the new certificate"
    );
    let mut send = client(&ca, addrs["hbone"]).await;
    ok_request(&mut send, "after-rotation").await;

    // A key that does not match the certificate: rejected once, the second cert keeps serving.
    let third = ca.issue(&spiffe("waypoint")).unwrap();
    std::fs::write(certs.join("key.pem"), &third.key_pem).unwrap();
    let rejected = || {
        logs.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("certificate update rejected"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rejected() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "bad update not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rejected(), 1, "logged once");
    assert_eq!(dumped_serial(admin).await, second_serial);
    let (status, _) = waypoint_tests::http_request(addrs["health"], "GET", "/healthz/ready").await;
    assert_eq!(status, 200, "still ready on the current certificate");
    ok_request(&mut send, "after-bad-update").await;
    let (_, metrics) =
        waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
    assert!(
        metrics.contains("\nwaypoint_certificate_rejected_total 1"),
        "{metrics}"
    );

    // Expired and not-yet-valid client certificates are refused, with the reason in the log.
    for (faulty, reason) in [
        (sim::PodCert::Expired, "expired"),
        (sim::PodCert::NotYetValid, "not valid yet"),
    ] {
        let cert = faulty.mint(&ca, &spiffe("productpage")).unwrap();
        let refused = sim::ZtunnelClient::new(cert.workload, addrs["hbone"], spiffe("waypoint"))
            .http1("10.0.0.20:9080".parse().unwrap())
            .await;
        assert!(
            refused.is_err(),
            "a client certificate that is {reason} was accepted"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("handshake rejected") && l.to_lowercase().contains(reason))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no '{reason}' reason logged: {:?}",
                logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(send);
    sigterm_and_wait(child).await;
}

/// `run --cert-provider istiod` against the CA at `ca_address`, trusting `dir/root-cert.pem` and
/// sending `dir/istio-token`, with `validity` second certificates renewed at `fraction`.
fn istiod_args(
    ca_address: &str,
    dir: &std::path::Path,
    validity: u64,
    fraction: f64,
) -> Vec<std::ffi::OsString> {
    vec![
        "--cert-provider".into(),
        "istiod".into(),
        "--ca-address".into(),
        ca_address.into(),
        "--ca-server-name".into(),
        waypoint::control::identity::istio_ca::DEFAULT_CA_SERVER_NAME.into(),
        "--ca-root".into(),
        dir.join("root-cert.pem").into(),
        "--ca-token".into(),
        dir.join("istio-token").into(),
        "--expected-identity".into(),
        spiffe("waypoint").to_string().into(),
        "--cert-validity-seconds".into(),
        validity.to_string().into(),
        "--cert-renew-fraction".into(),
        fraction.to_string().into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_certificates_are_requested_and_renewed_without_failed_requests() {
    use waypoint::commands::sim::ca_server;
    let net = Net::new();
    let ca = ca_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let own = spiffe("waypoint");
    ca.add_token("waypoint-token", &own);
    let dir = temp_dir("istiod-ca");
    std::fs::write(dir.join("istio-token"), "waypoint-token\n").unwrap();
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).unwrap();
    let config = temp_dir("istiod-config");
    write_ratings_config(&net, &config);
    let ratings = Pod::start(&net, ca.ca()).await;

    // 10-second certificates, renewed when 30 % of the remaining lifetime has passed.
    let args = istiod_args(&ca.address(), &dir, 10, 0.3);
    let (mut child, addrs, stderr) = spawn_run_with(&config, &args);
    let logs = collect(stderr);
    let _access_log = collect(child.stdout.take().unwrap());
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(ca.stats().issued, 1);
    assert_eq!(ca.stats().last_cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(ca.stats().last_requested_validity, Some(10));
    let first_serial = dumped_serial(addrs["admin"]).await;

    // Requests keep flowing while the certificate is renewed — twice, the second time after two
    // refused attempts retried with backoff.
    let mut send = sim::ZtunnelClient::new(
        ca.ca().issue(&spiffe("productpage")).unwrap().workload,
        addrs["hbone"],
        own.clone(),
    )
    .http1("10.0.0.20:9080".parse().unwrap())
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut requests = 0;
    let mut failed_renewals_injected = false;
    while ca.stats().issued < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "renewals did not happen: {:?}",
            ca.stats()
        );
        if ca.stats().issued == 2 && !failed_renewals_injected {
            ca.fail_next(2);
            failed_renewals_injected = true;
        }
        ok_request(&mut send, &format!("renewal-{requests}")).await;
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The CA has answered; wait until the waypoint has applied the second renewal.
    poll_until(addrs["stats"], "/stats/prometheus", |_, m| {
        m.contains("\nwaypoint_certificate_rotations_total 2")
    })
    .await;
    ok_request(&mut send, "after-renewals").await;
    assert!(ca.stats().injected_failures >= 2, "{:?}", ca.stats());
    let serial = dumped_serial(addrs["admin"]).await;
    assert_ne!(serial, first_serial);
    let (status, _) = waypoint_tests::http_request(addrs["health"], "GET", "/healthz/ready").await;
    assert_eq!(status, 200);
    // Both legs present the renewed certificate: new inbound handshakes, and the pod's newest
    // connection from the waypoint (pooled connections were recycled on rotation).
    let presented = waypoint_tests::presented_serial(
        addrs["hbone"],
        ca.ca().issue(&spiffe("probe")).unwrap().workload,
        &own,
    )
    .await;
    assert_eq!(presented, serial);
    assert_eq!(ratings.pod.stats.peer_serials.lock().last(), Some(&serial));
    let log = logs.lock().unwrap().join("\n");
    assert!(
        log.contains("certificate renewal failed, retrying"),
        "{log}"
    );
    assert!(log.contains("certificate renewed by the Istio CA"), "{log}");
    eprintln!("{requests} requests across 2 renewals, none failed");
    drop(send);
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_at_start_is_retried_and_a_bad_token_is_named() {
    use waypoint::commands::sim::ca_server;
    let net = Net::new();
    let ca = Ca::new("late CA").unwrap();
    let dir = temp_dir("late-ca");
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("istio-token"), "good-token").unwrap();
    let config = temp_dir("late-ca-config");
    write_ratings_config(&net, &config);
    let _ratings = Pod::start(&net, &ca).await;
    // A port nobody listens on yet.
    let ca_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let (mut child, addrs, stderr) =
        spawn_run_with(&config, &istiod_args(&ca_addr.to_string(), &dir, 3600, 0.5));
    let logs = collect(stderr);
    let _access_log = collect(child.stdout.take().unwrap());
    let (status, body) = poll_until(addrs["health"], "/healthz/ready", |_, b| {
        b.contains("cannot connect")
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains(&ca_addr.to_string()), "{body}");

    // The CA appears: the waypoint becomes ready without a restart.
    let server = ca_server::start_with(ca_addr, ca, Default::default())
        .await
        .unwrap();
    server.add_token("good-token", &spiffe("waypoint"));
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(server.stats().issued, 1);
    let mut send = client(server.ca(), addrs["hbone"]).await;
    ok_request(&mut send, "after-ca-appeared").await;
    let log = logs.lock().unwrap().join("\n");
    assert_eq!(
        log.matches("cannot connect").count(),
        1,
        "the same failure is logged once: {log}"
    );
    drop(send);
    sigterm_and_wait(child).await;

    // A token the CA refuses: not ready, and the cause is named.
    std::fs::write(dir.join("istio-token"), "stolen-token").unwrap();
    let config = temp_dir("bad-token-config");
    write_ratings_config(&net, &config);
    let (child, addrs, stderr) =
        spawn_run_with(&config, &istiod_args(&server.address(), &dir, 3600, 0.5));
    let logs = collect(stderr);
    let (status, body) = poll_until(addrs["health"], "/healthz/ready", |_, b| {
        b.contains("Unauthenticated")
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Unauthenticated")),
        "the refusal is logged"
    );
    sigterm_and_wait(child).await;
}
