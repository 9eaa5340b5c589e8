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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_to_the_least_loaded_worker() {
    let net = Net::new();
    let ca = Ca::new("workers mesh").unwrap();
    let _pod = Pod::start(&net, &ca).await;
    let config = temp_dir("workers-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("workers-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--threads".into(), "2".into()]);
    let (child, addrs, stderr) = spawn_run_with(&config, &args);
    let _logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let names = threads(child.id());
    for worker in ["worker-0", "worker-1"] {
        assert!(names.iter().any(|n| n == worker), "{worker} in {names:?}");
    }

    let mut first = client(&ca, addrs["hbone"]).await;
    ok_request(&mut first, "first").await;
    assert_eq!(per_worker(addrs["stats"]).await, [1.0, 0.0]);
    let mut second = client(&ca, addrs["hbone"]).await;
    ok_request(&mut second, "second").await;
    assert_eq!(per_worker(addrs["stats"]).await, [1.0, 1.0]);

    // The first connection closes: worker 0 is the least loaded again and takes the third.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while per_worker(addrs["stats"]).await != [0.0, 1.0] {
        assert!(
            Instant::now() < deadline,
            "the first connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = client(&ca, addrs["hbone"]).await;
    ok_request(&mut third, "third").await;
    ok_request(&mut second, "second again").await;
    assert_eq!(per_worker(addrs["stats"]).await, [1.0, 1.0]);
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_serves_without_workers_of_its_own() {
    let net = Net::new();
    let ca = Ca::new("stealing mesh").unwrap();
    let _pod = Pod::start(&net, &ca).await;
    let config = temp_dir("stealing-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("stealing-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--threads".into(), "2".into(), "--work-stealing".into()]);
    let (child, addrs, stderr) = spawn_run_with(&config, &args);
    let _logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let mut send = client(&ca, addrs["hbone"]).await;
    ok_request(&mut send, "stolen").await;
    let scrape = waypoint_tests::scrape(addrs["stats"]).await;
    assert!(
        scrape.samples(GAUGE, &[]).is_empty(),
        "no {GAUGE} with --work-stealing"
    );
    let names = threads(child.id());
    assert!(!names.iter().any(|n| n.starts_with("worker-")), "{names:?}");
    sigterm_and_wait(child).await;
}
