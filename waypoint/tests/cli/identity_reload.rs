//! The waypoint's own certificate from files (issue 13 item 12): an expired or not yet valid
//! certificate is never put in service. At startup readiness stays 503 naming why; at a
//! rotation the update is rejected, logged once and counted, and the current certificate keeps
//! serving.

use std::time::Duration;

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, Net};

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

async fn serial(admin: std::net::SocketAddr) -> String {
    let (_, dump) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?format=waypoint").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    dump["identity"]["serial"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Write a certificate and its key the way a rotation does (key first).
fn install(cert: &waypoint::control::identity::MintedCert, dir: &std::path::Path) {
    std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), &cert.chain_pem).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_certificates_are_never_served() {
    let net = Net::new();
    let ca = Ca::new("validity test mesh").unwrap();
    let _ratings = Pod::start(&net, &ca).await;
    let config = temp_dir("validity-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("validity-certs");
    let early = sim::PodCert::NotYetValid
        .mint(&ca, &spiffe("waypoint"))
        .unwrap();
    early.write_to(&certs).unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--reload-interval-ms".into(), "40".into()]);
    let (mut child, addrs, stderr) = spawn_run_with(&config, &args);
    let logs = collect(stderr);
    let _access = collect(child.stdout.take().unwrap());
    let (health, stats, admin) = (addrs["health"], addrs["stats"], addrs["admin"]);

    // Startup: not ready, naming the file and why.
    let (_, why) = poll_until(health, "/healthz/ready", |s, body| {
        s == 503 && body.contains("not valid yet")
    })
    .await;
    assert!(why.contains("cert-chain.pem"), "{why}");
    let good = ca.issue(&spiffe("waypoint")).unwrap();
    install(&good, &certs);
    poll_until(health, "/healthz/ready", |s, _| s == 200).await;
    let serving = good.workload.summary().serial;
    assert_eq!(serial(admin).await, serving);

    // Rotations to an expired, then a not yet valid certificate: each rejected once.
    let mut send = client(&ca, addrs["hbone"]).await;
    for (n, (bad, reason)) in [
        (sim::PodCert::Expired, "expired at"),
        (sim::PodCert::NotYetValid, "not valid yet"),
    ]
    .into_iter()
    .enumerate()
    {
        install(&bad.mint(&ca, &spiffe("waypoint")).unwrap(), &certs);
        let (_, m) = poll_until(stats, "/stats/prometheus", |_, m| {
            metric(m, "waypoint_certificate_rejected_total") == n as u64 + 1
        })
        .await;
        assert_eq!(metric(&m, "waypoint_certificate_rotations_total"), 0);
        let rejected: Vec<String> = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("certificate update rejected"))
            .cloned()
            .collect();
        assert_eq!(rejected.len(), n + 1, "{rejected:?}");
        assert!(rejected[n].contains(reason), "{rejected:?}");
        assert_eq!(
            serial(admin).await,
            serving,
            "the current certificate serves"
        );
        let (status, _) = waypoint_tests::http_request(health, "GET", "/healthz/ready").await;
        assert_eq!(status, 200);
        ok_request(&mut send, &format!("after-bad-{n}")).await;
    }
    let presented = waypoint_tests::presented_serial(
        addrs["hbone"],
        ca.issue(&spiffe("probe")).unwrap().workload,
        &spiffe("waypoint"),
    )
    .await;
    assert_eq!(
        presented, serving,
        "new handshakes get the current certificate"
    );

    // A valid certificate afterwards is rotated in.
    let next = ca.issue(&spiffe("waypoint")).unwrap();
    install(&next, &certs);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while serial(admin).await != next.workload.summary().serial {
        assert!(std::time::Instant::now() < deadline, "rotation not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(send);
    sigterm_and_wait(child).await;
}
