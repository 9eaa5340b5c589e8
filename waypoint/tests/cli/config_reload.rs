//! Config from files at runtime: `waypoint validate`, and hot reload in `waypoint run` — 50
//! reloads under a bounded load with zero failed requests, each request served by the snapshot it
//! started with, and an invalid edit that leaves the last good config serving.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use waypoint::identity::Ca;
use waypoint_tests::{service_yaml, sim, spiffe, workload_yaml, Net};

#[test]
fn validate_names_every_problem_and_passes_good_config() {
    let out = Command::new(binary())
        .args([
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bookinfo"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (3 services"));

    let dir = temp_dir("validate-bad");
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w\nspec:\n  address: not-an-ip\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s\nspec:\n  hosts: [s.example]\n  ports:\n  - number: 99999\n    name: http\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["validate"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("a.yaml doc 0 WorkloadEntry")
                && l.contains("spec.address")
                && l.contains("not-an-ip")),
        "{stdout}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains("b.yaml doc 0 ServiceEntry") && l.contains("99999")),
        "{stdout}"
    );

    let out = Command::new(binary())
        .args(["validate", "--output", "json"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap_or(""))
        .collect();
    assert!(fields.contains(&"spec.address"), "{v}");
}

/// ratings with pods v1 (@1) and v2 (@2); the VirtualService sends everything to `subset`.
fn ratings_routed_to(net: &Net, subset: &str) -> String {
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings")
        + &workload_yaml("ratings-v2", "@2", "ratings", "v2", "bookinfo-ratings")
        + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ratings\nspec:\n  host: ratings\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v2\n    labels: {version: v2}\n---\n"
        + &format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {{host: ratings, subset: {subset}}}\n");
    net.render(&yaml)
}

/// Replace the config file atomically (a rename inside the directory).
fn write_config(dir: &std::path::Path, yaml: &str) {
    let tmp = dir.join("ratings.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(tmp, dir.join("ratings.yaml")).unwrap();
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

async fn config_version(admin: std::net::SocketAddr) -> u64 {
    let (_, dump) = waypoint_tests::http_request(admin, "GET", "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    dump["config"]["status"]["version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_nothing_and_bad_edits_keep_the_last_good_config() {
    let net = Net::new();
    let ca = Ca::new("reload test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let _v2 = Pod::start_at(&net, &ca, 2, "ratings-v2").await;
    let config = temp_dir("reload-config");
    write_config(&config, &ratings_routed_to(&net, "v1"));
    let certs = temp_dir("reload-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--reload-interval-ms".into(), "40".into()]);
    let (mut child, addrs, stderr) = spawn_run_with(&config, &args);
    let logs = collect(stderr);
    let access = collect(child.stdout.take().unwrap());
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let mut pod_of_version = HashMap::new();
    pod_of_version.insert(config_version(addrs["admin"]).await, net.ip(1));

    // Bounded load: 2 tunnels, at most 20 000 requests, until the reloads are done.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (stop, failures) = (stop.clone(), failures.clone());
        let client = sim::ZtunnelClient::new(
            ca.issue(&spiffe("productpage")).unwrap().workload,
            addrs["hbone"],
            spiffe("waypoint"),
        );
        load.push(tokio::spawn(async move {
            let mut send = client
                .http1("10.0.0.20:9080".parse().unwrap())
                .await
                .unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 10_000 {
                let id = format!("w{worker}-{sent}");
                match sim::get(
                    &mut send,
                    "ratings:9080",
                    "/",
                    &[("x-request-id", id.as_str())],
                )
                .await
                {
                    Ok((parts, _)) if parts.status == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent += 1;
            }
            sent
        }));
    }

    for i in 1..=50u64 {
        let subset = if i % 2 == 1 { "v2" } else { "v1" };
        write_config(&config, &ratings_routed_to(&net, subset));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, m) =
                waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
            if metric(&m, "waypoint_config_updates_total") == 1 + i {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reload {i} not applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ip = if subset == "v1" { net.ip(1) } else { net.ip(2) };
        pod_of_version.insert(config_version(addrs["admin"]).await, ip);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for l in load {
        sent += l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert_eq!(pod_of_version.len(), 51);

    // Every request went where the snapshot it started with routed it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (access.lock().unwrap().len() as u64) < sent {
        assert!(
            std::time::Instant::now() < deadline,
            "missing access log lines"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut versions_seen = std::collections::HashSet::new();
    for line in access.lock().unwrap().iter() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        let version = l["config_version"].as_u64().unwrap();
        let expected = pod_of_version
            .get(&version)
            .unwrap_or_else(|| panic!("unknown config version {version}"));
        assert_eq!(
            l["upstream_host"],
            format!("{expected}:9080"),
            "request {} on config {version}",
            l["request_id"]
        );
        versions_seen.insert(version);
    }
    eprintln!(
        "{sent} requests over {} config versions, none failed",
        versions_seen.len()
    );
    assert!(
        versions_seen.len() > 10,
        "load overlapped few reloads: {versions_seen:?}"
    );

    // An invalid edit: rejected once, the last good config (v1) keeps serving.
    std::fs::write(
        config.join("broken.yaml"),
        "kind: VirtualService\nspec: [\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
        if metric(&m, "waypoint_config_rejected_total") == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bad edit not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rejected: Vec<String> = logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("config update rejected"))
        .cloned()
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("broken.yaml"), "{rejected:?}");
    let mut send = client(&ca, addrs["hbone"]).await;
    let (parts, _) = sim::get(&mut send, "ratings:9080", "/", &[]).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts.headers.get("x-pod").unwrap(),
        "ratings-v1",
        "the last good config (reload 50: v1) still serves"
    );
    let (status, _) = waypoint_tests::http_request(addrs["health"], "GET", "/healthz/ready").await;
    assert_eq!(status, 200);
    drop(send);
    sigterm_and_wait(child).await;
}
