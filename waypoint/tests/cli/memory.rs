//! What the waypoint gives back once a config has settled: the allocator's freed pages, and the
//! code and read-only data start-up ran, which leave the resident set until they run again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::common::*;
use crate::config_reload::{ratings_routed_to, served_by, start_ready, wait_metric, write_config};
use waypoint::control::identity::Ca;
use waypoint_tests::Net;

const TRIMS: &str = "waypoint_memory_trims_total";

/// A waypoint routing ratings to pod v1 from a config file, ready, past its first config's
/// trim (`trims`, the count then); with what it needs kept alive.
struct Settled {
    net: Net,
    ca: Ca,
    _v1: Pod,
    config: PathBuf,
    child: Waypoint,
    addrs: HashMap<String, SocketAddr>,
    trims: u64,
}

impl Settled {
    async fn start(tag: &str) -> Settled {
        let net = Net::new();
        let ca = Ca::new(&format!("{tag} mesh")).unwrap();
        let _v1 = Pod::start_at(&net, &ca, 1, "ratings-v1").await;
        let config = temp_dir(&format!("{tag}-config"));
        write_config(&config, &ratings_routed_to(&net, "v1"));
        let (child, addrs, _logs) = start_ready(&ca, &config, &format!("{tag}-certs"), &[]).await;
        let trims = wait_metric(addrs["stats"], TRIMS, |n| n >= 1).await;
        Settled {
            net,
            ca,
            _v1,
            config,
            child,
            addrs,
            trims,
        }
    }
}

/// Once the first config and then each change has settled, the freed pages go back to the
/// kernel: the binary's trim is wired to the thread that frees replaced snapshots (the trim
/// itself: main.rs's tests). The same trim takes the clean code pages out of the resident set,
/// and the waypoint serves on with the pages it runs mapped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_config_change_returns_freed_pages_and_code() {
    let w = Settled::start("trim").await;
    let (net, ca, config, addrs) = (&w.net, &w.ca, &w.config, &w.addrs);
    // The first config's trim, then one per settled change.
    assert_eq!(w.trims, 1);
    let code = "waypoint_memory_code_released_bytes_total";
    let released = wait_metric(addrs["stats"], code, |_| true).await;
    assert!(
        released >= 1 << 20,
        "start-up's code pages left the resident set: {released} bytes"
    );
    assert_eq!(served_by(ca, addrs["hbone"]).await, "ratings-v1");
    let edited = format!("# edited\n{}", ratings_routed_to(net, "v1"));
    write_config(config, &edited);
    wait_metric(addrs["stats"], "waypoint_config_updates_total", |n| n == 2).await;
    assert_eq!(wait_metric(addrs["stats"], TRIMS, |n| n > 1).await, 2);
    // Released again only once the resident code has grown by `CODE_GROWTH` since.
    assert!(wait_metric(addrs["stats"], code, |_| true).await >= released);
    assert_eq!(served_by(ca, addrs["hbone"]).await, "ratings-v1");
    sigterm_and_wait(w.child).await;
}

/// `/memory` is written without the embedded Envoy descriptors and leaves no freed pages
/// resident (before, three answers took `RssAnon` from 9 to 31 MiB); the answers that still
/// decode them (`/server_info`, `/certs`, `/config_dump`, `/clusters?format=json`: about 11 MiB
/// of heap each time) are followed by a trim, where before their pages stayed until the next
/// config change. What that trim returns is not bounded here: the admin thread's jemalloc cache
/// keeps some of the freed objects, and with them a varying part of their pages (9 → 9–18 MiB
/// of `RssAnon` in the runs that wrote this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_answers_leave_no_pages_and_the_other_json_answers_are_trimmed() {
    // In KiB, as /proc/PID/status gives it.
    const MIB: u64 = 1 << 10;
    let w = Settled::start("admin-json").await;
    let addrs = &w.addrs;
    let rss_anon_kib = || status_kib(w.child.id(), "RssAnon").expect("RssAnon");
    let before = rss_anon_kib();
    for _ in 0..3 {
        let (status, body) = waypoint_tests::http_request(addrs["admin"], "GET", "/memory").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"allocated\""), "{body}");
    }
    let after_memory = rss_anon_kib();
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
    // Each answer asks for a trim 200 ms after it (a debug build's answer may take longer than
    // that): the one after the last answer, counted from when it was given.
    let answered = wait_metric(addrs["stats"], TRIMS, |_| true).await;
    wait_metric(addrs["stats"], TRIMS, |n| n > answered).await;
    sigterm_and_wait(w.child).await;
}
