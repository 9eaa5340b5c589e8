//! The `waypoint` binary itself: `run` on a config directory under pingora's Server, serving a
//! request end to end and writing its access log line to stdout; clear errors for bad config.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use waypoint::identity::Ca;
use waypoint_tests::{service_yaml, sim, spiffe, workload_yaml, Net};

/// Cargo builds the package's binary before its integration tests and names it here.
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waypoint"))
}

/// `--cert-chain … --key … --trust-bundle …` for files written by `MintedCert::write_to`.
fn cert_args(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let files = [
        ("--cert-chain", "cert-chain.pem"),
        ("--key", "key.pem"),
        ("--trust-bundle", "root-cert.pem"),
    ];
    let mut args = Vec::new();
    for (flag, file) in files {
        args.push(flag.into());
        args.push(dir.join(file).into());
    }
    args
}

/// Admin, stats and health endpoints on ports the OS picks (tests run in parallel).
const QUIET_PORTS: [&str; 6] = [
    "--admin-listen",
    "127.0.0.1:0",
    "--stats-listen",
    "127.0.0.1:0",
    "--health-listen",
    "127.0.0.1:0",
];

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("waypoint-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings");
    std::fs::write(config.join("ratings.yaml"), net.render(&yaml)).unwrap();
    let certs = temp_dir("run-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();

    let _app = sim::start_app(
        SocketAddr::new(net.ip(1), 9080),
        "ratings-v1",
        sim::AppKind::Http,
    )
    .await
    .unwrap();
    let pod_cert = ca.issue(&spiffe("bookinfo-ratings")).unwrap();
    let _pod = sim::start_pod(SocketAddr::new(net.ip(1), 15008), &pod_cert.workload)
        .await
        .unwrap();

    let mut child = Command::new(binary())
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(cert_args(&certs))
        .args(["--access-log-format", "json", "--drain-seconds", "2"])
        .args(QUIET_PORTS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "waypoint exited before listening"
        );
        if let Some(a) = line.trim().strip_prefix("waypoint listening on ") {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in stderr.lines() {});

    let client = sim::ZtunnelClient::new(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        addr,
        spiffe("waypoint"),
    );
    let mut send = client
        .http1("10.0.0.20:9080".parse().unwrap())
        .await
        .unwrap();
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

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waypoint did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}
