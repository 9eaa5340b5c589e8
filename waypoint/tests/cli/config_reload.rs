//! Config from files at runtime: `waypoint validate`, and hot reload in `waypoint run` — 50
//! reloads under a bounded load with zero failed requests, each request served by the snapshot it
//! started with, and an invalid edit that leaves the last good config serving.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use waypoint::control::identity::Ca;
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
pub(crate) fn ratings_routed_to(net: &Net, subset: &str) -> String {
    let yaml = service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings")
        + &workload_yaml("ratings-v2", "@2", "ratings", "v2", "bookinfo-ratings")
        + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ratings\nspec:\n  host: ratings\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v2\n    labels: {version: v2}\n---\n"
        + &format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {{host: ratings, subset: {subset}}}\n");
    net.render(&yaml)
}

/// Replace the config file atomically (a rename inside the directory).
pub(crate) fn write_config(dir: &std::path::Path, yaml: &str) {
    let tmp = dir.join("ratings.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(tmp, dir.join("ratings.yaml")).unwrap();
}

/// A counter or gauge without labels (gauges print as `1.0`).
fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| {
            let v: f64 = l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()?;
            Some(v as u64)
        })
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

async fn config_version(admin: std::net::SocketAddr) -> u64 {
    let (_, dump) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?format=waypoint").await;
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
    let (child, addrs, logs, access) = start(&ca, &config, "reload-certs", &[]);
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

/// The stats endpoint's value of `name` once `done(value)` (bounded: 10 s).
pub(crate) async fn wait_metric(
    stats: std::net::SocketAddr,
    name: &str,
    done: impl Fn(u64) -> bool,
) -> u64 {
    let (_, m) = poll_until(stats, "/stats/prometheus", |_, m| done(metric(m, name))).await;
    metric(&m, name)
}

pub(crate) type Logs = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A waypoint on `config` with a fresh certificate (in a new directory named after `tag`),
/// reloading every 40 ms: the process, its addresses, its stderr lines and its access log lines.
fn start(
    ca: &Ca,
    config: &std::path::Path,
    tag: &str,
    extra: &[&str],
) -> (Waypoint, HashMap<String, std::net::SocketAddr>, Logs, Logs) {
    let certs = temp_dir(tag);
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--reload-interval-ms".into(), "40".into()]);
    args.extend(extra.iter().map(|a| a.into()));
    let (mut child, addrs, stderr) = spawn_run_with(config, &args);
    let logs = collect(stderr);
    let access = collect(child.stdout.take().unwrap());
    (child, addrs, logs, access)
}

/// [`start`], then ready.
pub(crate) async fn start_ready(
    ca: &Ca,
    config: &std::path::Path,
    tag: &str,
    extra: &[&str],
) -> (Waypoint, HashMap<String, std::net::SocketAddr>, Logs) {
    let (child, addrs, logs, _access) = start(ca, config, tag, extra);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    (child, addrs, logs)
}

/// The pod a request to ratings is served by, on a new tunnel.
pub(crate) async fn served_by(ca: &Ca, hbone: std::net::SocketAddr) -> String {
    let mut send = client(ca, hbone).await;
    let (parts, _) = sim::get(&mut send, "ratings:9080", "/", &[]).await.unwrap();
    assert_eq!(parts.status, 200);
    parts.headers["x-pod"].to_str().unwrap().to_string()
}

fn logged(logs: &std::sync::Mutex<Vec<String>>, needle: &str) -> Vec<String> {
    logs.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Issue 13 item 10: entries named like config that are not files (a directory `x.yaml`, a
/// dangling symlink, a symlink loop) used to pin the change fingerprint, so no later edit was
/// ever applied and nothing was logged. Now each is reported (log, metric, /config_dump) and a
/// later valid edit applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_are_not_files_are_reported_and_do_not_freeze_reloads() {
    let net = Net::new();
    let ca = Ca::new("unreadable test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let _v2 = Pod::start_at(&net, &ca, 2, "ratings-v2").await;
    let config = temp_dir("unreadable-config");
    write_config(&config, &ratings_routed_to(&net, "v1"));
    let (child, addrs, logs) = start_ready(&ca, &config, "unreadable-certs", &[]).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");

    std::fs::create_dir(config.join("dir.yaml")).unwrap();
    std::os::unix::fs::symlink(config.join("gone"), config.join("dangling.yaml")).unwrap();
    // Each entry is what it is from the start (a two-link loop would be dangling for a moment).
    std::os::unix::fs::symlink(config.join("loop.yaml"), config.join("loop.yaml")).unwrap();
    std::os::unix::fs::symlink(config.join("self.yml"), config.join("self.yml")).unwrap();
    write_config(&config, &ratings_routed_to(&net, "v2"));
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n == 2).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v2");

    let unreadable = wait_metric(addrs["stats"], "waypoint_config_unreadable_entries", |n| {
        n == 4
    })
    .await;
    assert_eq!(unreadable, 4);
    let (_, m) = waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
    assert_eq!(metric(&m, "waypoint_config_unreadable_reported_total"), 4);
    assert_eq!(metric(&m, "waypoint_config_rejected_total"), 0);
    let (_, dump) =
        waypoint_tests::http_request(addrs["admin"], "GET", "/config_dump?format=waypoint").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let listed: Vec<&str> = dump["config"]["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed.contains(&"dir.yaml: is a directory, not a file"),
        "{listed:?}"
    );
    for name in ["dir.yaml", "dangling.yaml", "loop.yaml", "self.yml"] {
        let lines = logged(&logs, &format!("config entry {name} not loaded"));
        assert_eq!(lines.len(), 1, "{name} reported once: {lines:?}");
    }
    let (status, _) = waypoint_tests::http_request(addrs["health"], "GET", "/healthz/ready").await;
    assert_eq!(status, 200);
    sigterm_and_wait(child).await;
}

/// Set the soft limit of open files of process `pid` (its hard limit unchanged); returns the
/// previous soft limit.
fn set_open_files_limit(pid: u32, soft: Option<libc::rlim_t>) -> libc::rlim_t {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit writes `old`, valid for the call; no new limit is passed.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    if let Some(soft) = soft {
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: prlimit reads `new`, valid for the call.
        let rc = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
    old.rlim_cur
}

/// Issue 13 item 10: a temporary read error (EMFILE: the waypoint out of file descriptors)
/// used to count as a change: the config was rejected, then reloaded, and the certificate
/// "rotated" (which flushes the upstream pool). Now it observes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_reloads_and_rotates_nothing() {
    let net = Net::new();
    let ca = Ca::new("emfile test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let _v2 = Pod::start_at(&net, &ca, 2, "ratings-v2").await;
    let config = temp_dir("emfile-config");
    write_config(&config, &ratings_routed_to(&net, "v1"));
    let (child, addrs, logs) = start_ready(&ca, &config, "emfile-certs", &[]).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");

    // Every open fails with EMFILE for a second: 25 looks at the config and the certificate.
    let old = set_open_files_limit(child.id(), Some(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    set_open_files_limit(child.id(), Some(old));

    // A positive signal after the window: a real edit applies, as the second config.
    write_config(&config, &ratings_routed_to(&net, "v2"));
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n >= 2).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v2");
    let (_, m) = waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
    assert_eq!(metric(&m, "waypoint_config_updates_total"), 2, "{m}");
    assert_eq!(metric(&m, "waypoint_config_rejected_total"), 0);
    assert_eq!(metric(&m, "waypoint_certificate_rotations_total"), 0);
    assert_eq!(metric(&m, "waypoint_certificate_rejected_total"), 0);
    assert!(
        logged(&logs, "rejected").is_empty(),
        "{:?}",
        logs.lock().unwrap()
    );
    sigterm_and_wait(child).await;
}

/// Issue 13 item 10: a ConfigMap volume (keys are symlinks into `..data`, itself a symlink to a
/// timestamped dot directory, swapped atomically by kubelet). Dot entries are not loaded (a
/// broken `.hidden.yaml` does not matter; each key loads once) and a swap is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swaps_apply_and_dot_entries_are_not_loaded() {
    let net = Net::new();
    let ca = Ca::new("configmap test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let _v2 = Pod::start_at(&net, &ca, 2, "ratings-v2").await;
    let config = temp_dir("configmap-config");
    let first = config.join("..2024_01_01_00_00_00.1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("ratings.yaml"), ratings_routed_to(&net, "v1")).unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", config.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/ratings.yaml", config.join("ratings.yaml")).unwrap();
    std::fs::write(
        config.join(".hidden.yaml"),
        "kind: VirtualService\nspec: [\n",
    )
    .unwrap();
    let (child, addrs, _logs) = start_ready(&ca, &config, "configmap-certs", &[]).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");

    // kubelet's swap: a new timestamped directory, `..data` replaced by a rename, the old one
    // removed.
    let second = config.join("..2024_01_01_00_01_00.2");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("ratings.yaml"), ratings_routed_to(&net, "v2")).unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_01_00.2", config.join("..data_tmp")).unwrap();
    std::fs::rename(config.join("..data_tmp"), config.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n == 2).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v2");
    let (_, m) = waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
    assert_eq!(metric(&m, "waypoint_config_rejected_total"), 0);
    sigterm_and_wait(child).await;
}

/// Issue 13 item 11: an empty config directory used to be served (0 services: every CONNECT
/// 404) with readiness 200. Now it keeps the waypoint not ready at startup, naming why, and an
/// edit that empties the directory is rejected; `--allow-empty-config` serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_config_is_not_served_without_allow_empty_config() {
    let net = Net::new();
    let ca = Ca::new("empty test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let _v2 = Pod::start_at(&net, &ca, 2, "ratings-v2").await;
    let config = temp_dir("empty-config");
    let (child, addrs, logs, _access) = start(&ca, &config, "empty-certs", &[]);
    let (_, why) = poll_until(addrs["health"], "/healthz/ready", |s, body| {
        s == 503 && body.contains("holds no services")
    })
    .await;
    assert!(why.contains(&*config.to_string_lossy()), "{why}");

    write_config(&config, &ratings_routed_to(&net, "v1"));
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");

    // Emptied: rejected, the last good config keeps serving.
    std::fs::remove_file(config.join("ratings.yaml")).unwrap();
    wait_metric(addrs["stats"], "waypoint_config_rejected_total", |n| n == 1).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");
    let rejected = logged(&logs, "config update rejected");
    assert!(
        rejected.len() == 1 && rejected[0].contains("holds no services"),
        "{rejected:?}"
    );
    let (status, _) = waypoint_tests::http_request(addrs["health"], "GET", "/healthz/ready").await;
    assert_eq!(status, 200, "still serving the last good config");
    write_config(&config, &ratings_routed_to(&net, "v2"));
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n == 2).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v2");
    sigterm_and_wait(child).await;

    // Asked for explicitly: an empty directory is served.
    let empty = temp_dir("empty-allowed");
    let (child, addrs, _logs) = start_ready(
        &ca,
        &empty,
        "empty-allowed-certs",
        &["--allow-empty-config"],
    )
    .await;
    let (_, m) = waypoint_tests::http_request(addrs["stats"], "GET", "/stats/prometheus").await;
    assert_eq!(metric(&m, "waypoint_ready"), 1);
    sigterm_and_wait(child).await;
}

/// Issue 13 item 9: config input over the size limit is refused naming the file; at a reload
/// the last good config keeps serving, and later edits apply once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_over_the_size_limit_is_rejected_naming_the_file() {
    let net = Net::new();
    let ca = Ca::new("limit test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let _v2 = Pod::start_at(&net, &ca, 2, "ratings-v2").await;
    let config = temp_dir("limit-config");
    write_config(&config, &ratings_routed_to(&net, "v1"));
    let (child, addrs, logs) = start_ready(
        &ca,
        &config,
        "limit-certs",
        &["--config-max-file-bytes", "100000"],
    )
    .await;
    std::fs::write(config.join("big.yaml"), "# padding\n".repeat(10_001)).unwrap();
    wait_metric(addrs["stats"], "waypoint_config_rejected_total", |n| n == 1).await;
    let rejected = logged(&logs, "config update rejected");
    assert!(
        rejected.len() == 1
            && rejected[0].contains("big.yaml: file is 100010 bytes, over the limit of 100000"),
        "{rejected:?}"
    );
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");
    std::fs::remove_file(config.join("big.yaml")).unwrap();
    write_config(&config, &ratings_routed_to(&net, "v2"));
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n == 2).await;
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v2");
    sigterm_and_wait(child).await;
}
