//! `waypoint certs` and `waypoint curl` as a user runs them: certificates minted by one, a real
//! `waypoint run` on them, a pod whose certificate comes from the same files, and a request sent
//! through the waypoint by the other, over HBONE.

use std::net::SocketAddr;
use std::process::Command;

use crate::common::*;
use waypoint::control::identity::WorkloadCert;
use waypoint_tests::{sim, Net};

fn certs(out: &std::path::Path, ids: &[&str]) -> String {
    let result = Command::new(binary())
        .args(["certs", "--out"])
        .arg(out)
        .args(ids)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        result.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    stdout
}

fn load(dir: &std::path::Path) -> WorkloadCert {
    WorkloadCert::from_files(
        &dir.join("cert-chain.pem"),
        &dir.join("key.pem"),
        &dir.join("root-cert.pem"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_then_curl_through_a_running_waypoint() {
    let out = temp_dir("certs-curl");
    let first = certs(&out, &["default/waypoint", "default/productpage"]);
    assert!(first.contains("created a CA"), "{first}");
    let root = std::fs::read(out.join("ca/root-cert.pem")).unwrap();
    // A second run adds an identity under the same root.
    let second = certs(
        &out,
        &["spiffe://cluster.local/ns/default/sa/bookinfo-ratings"],
    );
    assert!(second.contains("reused the CA"), "{second}");
    assert_eq!(std::fs::read(out.join("ca/root-cert.pem")).unwrap(), root);
    let ratings = load(&out.join("default/bookinfo-ratings"));
    assert_eq!(
        ratings.id.to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
    );
    assert_eq!(
        ratings.roots[0].as_ref(),
        load(&out.join("default/waypoint")).roots[0].as_ref()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("default/waypoint/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key.pem is private: {mode:o}");

    // The ratings pod (app + HBONE terminator) with the minted certificate.
    let net = Net::new();
    let app = sim::start_app(
        SocketAddr::new(net.ip(1), 9080),
        "ratings-v1",
        sim::AppKind::Http,
    )
    .await
    .unwrap();
    let _pod = sim::start_pod(SocketAddr::new(net.ip(1), 15008), &ratings)
        .await
        .unwrap();
    let config = temp_dir("certs-curl-config");
    write_ratings_config(&net, &config);
    let (_waypoint, addrs, _stderr) = spawn_run(&config, &out.join("default/waypoint"));
    let hbone = addrs["hbone"].to_string();

    let curl = |extra: &[&str]| {
        Command::new(binary())
            .args(["curl", "--waypoint", &hbone, "--certs"])
            .arg(out.join("default/productpage"))
            .args(extra)
            .output()
            .unwrap()
    };
    // The URL names the service; --to is the VIP the client resolved it to.
    let ok = curl(&[
        "-i",
        "-H",
        "x-test: 1",
        "--to",
        "10.0.0.20:9080",
        "http://ratings:9080/ratings/7",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200 OK\n"), "{stdout}");
    assert!(stdout.contains("x-pod: ratings-v1"), "{stdout}");
    assert_eq!(
        app.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A waypoint that is not the one expected is refused, naming the identities.
    let wrong = curl(&[
        "--waypoint-identity",
        "spiffe://cluster.local/ns/default/sa/other",
        "http://10.0.0.20:9080/",
    ]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("opening the HBONE tunnel to 10.0.0.20:9080"),
        "{stderr}"
    );
    assert_eq!(
        app.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
