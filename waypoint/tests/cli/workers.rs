//! `waypoint run`'s worker threads: each inbound HBONE connection is served by the worker that
//! holds the fewest, which the per-worker gauge shows; `--work-stealing` gives the shared
//! scheduler back, and the gauge is absent.

use std::time::{Duration, Instant};

use waypoint::control::identity::Ca;
use waypoint_tests::{spiffe, Net};

use crate::common::*;

const GAUGE: &str = "waypoint_worker_connections";

async fn per_worker(stats: std::net::SocketAddr) -> [f64; 2] {
    [
        sample(stats, GAUGE, &[("worker", "0")]).await,
        sample(stats, GAUGE, &[("worker", "1")]).await,
    ]
}

/// The thread names of process `pid`.
fn threads(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_string())
        .collect()
}

/// A ratings pod, and `waypoint run --threads 2` with `extra` flags in front of it, ready.
struct Running {
    _net: Net,
    _pod: Pod,
    ca: Ca,
    child: Waypoint,
    addrs: std::collections::HashMap<String, std::net::SocketAddr>,
    _logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn start(tag: &str, extra: &[&str]) -> Running {
    let net = Net::new();
    let ca = Ca::new(&format!("{tag} mesh")).unwrap();
    let pod = Pod::start(&net, &ca).await;
    let config = temp_dir(&format!("{tag}-config"));
    write_ratings_config(&net, &config);
    let certs = temp_dir(&format!("{tag}-certs"));
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--threads", "2"].iter().chain(extra).map(Into::into));
    let (child, addrs, stderr) = spawn_run_with(&config, &args);
    let logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    Running {
        _net: net,
        _pod: pod,
        ca,
        child,
        addrs,
        _logs: logs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_to_the_least_loaded_worker() {
    let w = start("workers", &[]).await;
    let names = threads(w.child.id());
    for worker in ["worker-0", "worker-1"] {
        assert!(names.iter().any(|n| n == worker), "{worker} in {names:?}");
    }

    let mut first = client(&w.ca, w.addrs["hbone"]).await;
    ok_request(&mut first, "first").await;
    assert_eq!(per_worker(w.addrs["stats"]).await, [1.0, 0.0]);
    let mut second = client(&w.ca, w.addrs["hbone"]).await;
    ok_request(&mut second, "second").await;
    assert_eq!(per_worker(w.addrs["stats"]).await, [1.0, 1.0]);

    // The first connection closes: worker 0 is the least loaded again and takes the third.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while per_worker(w.addrs["stats"]).await != [0.0, 1.0] {
        assert!(
            Instant::now() < deadline,
            "the first connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = client(&w.ca, w.addrs["hbone"]).await;
    ok_request(&mut third, "third").await;
    ok_request(&mut second, "second again").await;
    assert_eq!(per_worker(w.addrs["stats"]).await, [1.0, 1.0]);
    sigterm_and_wait(w.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_serves_without_workers_of_its_own() {
    let w = start("stealing", &["--work-stealing"]).await;
    let mut send = client(&w.ca, w.addrs["hbone"]).await;
    ok_request(&mut send, "stolen").await;
    let scrape = waypoint_tests::scrape(w.addrs["stats"]).await;
    assert!(
        scrape.samples(GAUGE, &[]).is_empty(),
        "no {GAUGE} with --work-stealing"
    );
    let names = threads(w.child.id());
    assert!(!names.iter().any(|n| n.starts_with("worker-")), "{names:?}");
    sigterm_and_wait(w.child).await;
}
