//! Peak memory of loading a large config (issue 13 item 9): `waypoint run` on one file of
//! 8 000 ServiceEntries, in its own process, its peak RSS (`VmHWM`) read once it is ready. Time
//! is not asserted (see docs/benchmarks.md for figures).

use crate::common::*;

const SERVICES: usize = 8000;

/// The largest peak RSS, in KiB, the test binary's `waypoint run` (a debug build, jemalloc) may
/// reach by the time it is ready with the file loaded. Measured on this file: 122.8–123.6 MiB
/// before the snapshot's per-port clusters were boxed and the parsed entries moved into it,
/// 99.6–101.6 MiB after (a release build's load alone: 69 → 58 MiB, docs/benchmarks.md). By
/// 2026-12-06 the same run measured 112.3–113.4 MiB on the CI machine type (over the earlier
/// bound of 112 MiB), and 112.7–117.9 MiB with the snapshot's tables in shards (five runs):
/// the bound sits under the pre-boxing figure, above the noise of today's.
const MAX_PEAK_KIB: i64 = 120 * 1024;

/// ServiceEntry `i` as `config_bench` writes it: a VIP, an HTTP port, two inline endpoints.
fn service_entry(i: usize) -> String {
    let (a, b) = (i / 250, i % 250 + 1);
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  \
         namespace: bench\n  labels:\n    app: svc-{i}\nspec:\n  hosts:\n  - svc-{i}.bench.svc.cluster.local\n  \
         addresses:\n  - 10.{a}.{b}.1\n  ports:\n  - number: 8080\n    name: http\n    protocol: HTTP\n    \
         targetPort: 9080\n  resolution: STATIC\n  location: MESH_INTERNAL\n  endpoints:\n  - address: \
         10.200.{a}.{b}\n    labels: {{app: svc-{i}, version: v1}}\n    serviceAccount: svc-{i}\n  - address: \
         10.201.{a}.{b}\n    labels: {{app: svc-{i}, version: v2}}\n    serviceAccount: svc-{i}\n"
    )
}

/// The peak resident set (`VmHWM`) of process `pid`, in KiB. `wait4`'s `ru_maxrss` cannot be
/// used: a child spawned from this (large, multi-test) process inherits its parent's high-water
/// mark at `exec`.
fn peak_kib(pid: u32) -> i64 {
    status_kib(pid, "VmHWM").expect("VmHWM in /proc/PID/status") as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_8000_service_entries_stays_within_the_memory_bound() {
    let dir = temp_dir("config-load-8000");
    let text: String = (0..SERVICES).map(service_entry).collect();
    std::fs::write(dir.join("services.yaml"), &text).unwrap();
    drop(text);
    let certs = temp_dir("config-load-8000-certs");
    let ca = waypoint::control::identity::Ca::new("config load").unwrap();
    ca.issue(&waypoint_tests::spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let (child, addrs, stderr) = spawn_run_with(&dir, &cert_args(&certs));
    let _logs = collect(stderr);
    // Ready: the config is loaded and published. The high-water mark since exec covers the load.
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let peak = peak_kib(child.id());
    eprintln!("run with {SERVICES} ServiceEntries: peak RSS {peak} KiB once ready");
    // Everything loaded: the bound is about the whole config, not a failed load.
    let (code, dump) =
        waypoint_tests::http_request(addrs["admin"], "GET", "/config_dump?format=waypoint").await;
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["config"]["status"]["services"], SERVICES,
        "services loaded"
    );
    assert!(
        peak <= MAX_PEAK_KIB,
        "peak RSS {peak} KiB over the bound of {MAX_PEAK_KIB} KiB"
    );
    sigterm_and_wait(child).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&certs);
}
