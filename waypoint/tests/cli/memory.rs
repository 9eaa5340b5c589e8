//! What the waypoint gives back once a config has settled: the allocator's freed pages, and the
//! code and read-only data start-up ran, which leave the resident set until they run again.

use crate::common::*;
use crate::config_reload::{ratings_routed_to, served_by, start_ready, wait_metric, write_config};
use waypoint::control::identity::Ca;
use waypoint_tests::Net;

/// Once the first config and then each change has settled, the freed pages go back to the
/// kernel: the binary's trim is wired to the thread that frees replaced snapshots (the trim
/// itself: main.rs's tests). The same trim takes the clean code pages out of the resident set,
/// and the waypoint serves on with the pages it runs mapped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_config_change_returns_freed_pages_and_code() {
    let net = Net::new();
    let ca = Ca::new("trim test mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let config = temp_dir("trim-config");
    write_config(&config, &ratings_routed_to(&net, "v1"));
    let (child, addrs, _logs) = start_ready(&ca, &config, "trim-certs", &[]).await;
    // The first config's trim, then one per settled change.
    let trims = "waypoint_memory_trims_total";
    assert_eq!(wait_metric(addrs["stats"], trims, |n| n >= 1).await, 1);
    let code = "waypoint_memory_code_released_bytes_total";
    let released = wait_metric(addrs["stats"], code, |_| true).await;
    assert!(
        released >= 1 << 20,
        "start-up's code pages left the resident set: {released} bytes"
    );
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");
    let edited = format!("# edited\n{}", ratings_routed_to(&net, "v1"));
    write_config(&config, &edited);
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n == 2).await;
    assert_eq!(wait_metric(addrs["stats"], trims, |n| n > 1).await, 2);
    // Released again only once the resident code has grown by `CODE_GROWTH` since.
    assert!(wait_metric(addrs["stats"], code, |_| true).await >= released);
    assert_eq!(served_by(&ca, addrs["hbone"]).await, "ratings-v1");
    sigterm_and_wait(child).await;
}

/// The process's anonymous resident memory (heap, stacks), KiB: `RssAnon` of /proc/PID/status.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The admin's JSON answers leave no freed pages resident. `/memory` is written without the
/// embedded Envoy descriptors; the answers that decode them (`/server_info`, `/certs`,
/// `/config_dump`, `/clusters?format=json`: about 11 MiB of heap each time) are followed by a
/// trim. Before, each answer left about 20 MiB of freed pages resident until the next config
/// change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_answers_leave_no_freed_pages_resident() {
    // In KiB, as /proc/PID/status gives it.
    const MIB: u64 = 1 << 10;
    let net = Net::new();
    let ca = Ca::new("admin json memory mesh").unwrap();
    let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
    let config = temp_dir("admin-json-config");
    write_config(&config, &ratings_routed_to(&net, "v1"));
    let (child, addrs, _logs) = start_ready(&ca, &config, "admin-json-certs", &[]).await;
    let trims = "waypoint_memory_trims_total";
    let settled = wait_metric(addrs["stats"], trims, |n| n >= 1).await;
    let pid = child.id();
    let before = rss_anon_kib(pid);
    for _ in 0..3 {
        let (status, body) = waypoint_tests::http_request(addrs["admin"], "GET", "/memory").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"allocated\""), "{body}");
    }
    let after_memory = rss_anon_kib(pid);
    assert!(
        after_memory < before + 6 * MIB,
        "RssAnon {before} -> {after_memory} KiB after three /memory answers"
    );
    for _ in 0..3 {
        let (status, body) =
            waypoint_tests::http_request(addrs["admin"], "GET", "/server_info").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"uptime_current_epoch\""), "{body}");
    }
    wait_metric(addrs["stats"], trims, |n| n > settled).await;
    let after_info = rss_anon_kib(pid);
    assert!(
        after_info < before + 6 * MIB,
        "RssAnon {before} -> {after_info} KiB after three /server_info answers and a trim"
    );
    sigterm_and_wait(child).await;
}
