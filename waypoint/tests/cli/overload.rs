//! The overload manager against the real `waypoint run` binary in its own process: a small
//! process-wide memory budget, pressure from slow readers (tunnels whose client never reads a
//! large response), and what the waypoint does about it. Loopback only; every loop is bounded in
//! count and time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use waypoint::control::identity::Ca;
use waypoint_tests::{spiffe, Net};

use crate::common::*;

const MIB: f64 = (1 << 20) as f64;

/// ratings, a DENY policy on its `/admin`, and a TCP echo service at 10.0.0.30:9000 (@2).
fn write_config(net: &Net, dir: &std::path::Path) {
    write_ratings_config(net, dir);
    let echo = waypoint_tests::service_yaml("echo", "10.0.0.30", 9000, "tcp")
        + &waypoint_tests::workload_yaml("echo-v1", "@2", "echo", "v1", "echo");
    std::fs::write(dir.join("echo.yaml"), net.render(&echo)).unwrap();
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: ratings}]\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n";
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
}

fn action(name: &'static str) -> [(&'static str, &'static str); 1] {
    [("action", name)]
}

async fn memory(stats: SocketAddr) -> f64 {
    sample(stats, "waypoint_overload_memory_bytes", &[]).await
}

/// The memory gauge once the monitor has published a first sample (bounded: 10 s).
async fn first_memory(stats: SocketAddr) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = memory(stats).await;
        if m > 0.0 {
            return m;
        }
        assert!(Instant::now() < deadline, "no memory sample published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `metric` until `done` (bounded by `limit`); its last value.
async fn poll_metric(
    stats: SocketAddr,
    family: &str,
    labels: &[(&str, &str)],
    limit: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = sample(stats, family, labels).await;
        if done(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{family}{labels:?} never reached the expected value; last {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tunnels opened before the pressure, for one request each while it lasts (keep-alive goes off
/// at 90 %, and new CONNECTs are refused at 95 %), and one for the policed path.
async fn open_probes(
    ca: &Ca,
    hbone: SocketAddr,
) -> (
    Vec<waypoint::commands::sim::Http1>,
    waypoint::commands::sim::Http1,
) {
    let mut probes = Vec::new();
    for _ in 0..10 {
        probes.push(client(ca, hbone).await);
    }
    (probes, client(ca, hbone).await)
}

/// One request on a new tunnel: status and body.
async fn get(ca: &Ca, hbone: SocketAddr, path: &str, id: &str) -> (u16, String) {
    let mut tunnel = client(ca, hbone).await;
    get_on(&mut tunnel, path, id).await
}

async fn get_on(
    tunnel: &mut waypoint::commands::sim::Http1,
    path: &str,
    id: &str,
) -> (u16, String) {
    let (parts, body) =
        waypoint::commands::sim::get(tunnel, "ratings:9080", path, &[("x-request-id", id)])
            .await
            .unwrap();
    (
        parts.status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The JSON access log line of request `id` (bounded wait).
async fn logged(access: &std::sync::Mutex<Vec<String>>, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = access.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["request_id"] == id).then_some(v)
        });
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "no access log line for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_budget_sheds_load_resets_slow_readers_and_recovers() {
    const TUNNELS: usize = 200;
    let net = Net::new();
    let ca = Ca::new("overload mesh").unwrap();
    let _pod = Pod::start(&net, &ca).await;
    let _echo = waypoint::commands::sim::start_app(
        SocketAddr::new(net.ip(2), 9000),
        "echo-v1",
        waypoint::commands::sim::AppKind::TcpEcho,
    )
    .await
    .unwrap();
    let _echo_node = waypoint::commands::sim::start_pod(
        SocketAddr::new(net.ip(2), 15008),
        &ca.issue(&spiffe("echo")).unwrap().workload,
    )
    .await
    .unwrap();
    let config = temp_dir("overload-config");
    write_config(&net, &config);
    let certs = temp_dir("overload-certs");
    let waypoint_id = spiffe("waypoint");
    ca.issue(&waypoint_id).unwrap().write_to(&certs).unwrap();
    let run = |budget_mib: u64| {
        let mut args = cert_args(&certs);
        args.extend([
            "--memory-budget-mib".into(),
            budget_mib.to_string().into(),
            // Tunnels end by the overload manager here, not by the send timeout.
            "--stream-send-timeout-ms".into(),
            "120000".into(),
        ]);
        spawn_run_with(&config, &args)
    };

    // 1. What this build holds idle and with 200 slow readers, under a budget never reached.
    let (child, addrs, stderr) = run(1 << 20);
    let _logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(get(&ca, addrs["hbone"], "/ratings/1", "warm").await.0, 200);
    // Idle includes the probe tunnels the second run holds through the pressure.
    let before = first_memory(addrs["stats"]).await;
    let probes = open_probes(&ca, addrs["hbone"]).await;
    // A sample taken with the probes open.
    let idle = poll_metric(
        addrs["stats"],
        "waypoint_overload_memory_bytes",
        &[],
        Duration::from_secs(5),
        |m| m != before,
    )
    .await;
    let mut readers = SlowReaders::connect(&ca, addrs["hbone"], &waypoint_id).await;
    for _ in 0..TUNNELS {
        assert_eq!(readers.open(4 << 20).await, 200);
    }
    let mut peak = idle;
    for _ in 0..20 {
        peak = peak.max(memory(addrs["stats"]).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = peak - idle;
    eprintln!(
        "overload: idle {:.1} MiB heap, {TUNNELS} slow readers {:.1} MiB (+{:.1} MiB)",
        idle / MIB,
        peak / MIB,
        growth / MIB
    );
    assert!(growth > 4.0 * MIB, "slow readers added only {growth} bytes");
    drop((readers, probes));
    drop(child);

    // 2. A budget that half of that pressure exceeds.
    let budget_mib = ((idle + growth / 2.0) / MIB).ceil() as u64;
    let (mut child, addrs, stderr) = run(budget_mib);
    let stats = addrs["stats"];
    let access = collect(child.stdout.take().unwrap());
    let logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    assert_eq!(
        get(&ca, addrs["hbone"], "/ratings/1", "before").await.0,
        200
    );
    first_memory(stats).await;
    assert_eq!(
        sample(stats, "waypoint_overload_budget_bytes", &[]).await,
        (budget_mib << 20) as f64
    );
    for a in [
        "disable_http_keepalive",
        "stop_accepting_requests",
        "reset_high_memory_streams",
    ] {
        assert_eq!(
            sample(stats, "waypoint_overload_action_active", &action(a)).await,
            0.0
        );
    }
    // Tunnels opened before the pressure, each for one request while it lasts.
    let (mut probes, mut admin_probe) = open_probes(&ca, addrs["hbone"]).await;
    // TCP tunnels to the echo service, opened now and fed later: once CONNECTs are refused
    // (95 %) they are the pressure that still gets in, and what they echo back is never read.
    let mut echoes = SlowReaders::connect(&ca, addrs["hbone"], &waypoint_id).await;
    for _ in 0..40 {
        assert_eq!(echoes.open_to("10.0.0.30:9000", None).await, 200);
    }

    // Pressure, in batches, until both a CONNECT and a request were refused (from 95 %).
    let mut readers = SlowReaders::connect(&ca, addrs["hbone"], &waypoint_id).await;
    let mut refused_connects = 0;
    let mut shed = None;
    let mut probes = probes.iter_mut().enumerate();
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..100 {
        if shed.is_some() && refused_connects > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "pressure built for 60 s");
        for _ in 0..20 {
            if readers.open(4 << 20).await == 503 {
                refused_connects += 1;
                break;
            }
        }
        let rejecting = sample(
            stats,
            "waypoint_overload_action_active",
            &action("stop_accepting_requests"),
        )
        .await;
        if rejecting == 0.0 || shed.is_some() {
            continue;
        }
        let (round, probe) = probes.next().expect("a tunnel left to probe with");
        let id = format!("probe-{round}");
        let (status, body) = get_on(probe, "/ratings/1", &id).await;
        assert!(status == 503 || status == 200, "{status} {body}");
        if status == 503 {
            assert_eq!(body, "waypoint overloaded");
            shed = Some(id);
            // A request the policy denies is denied under pressure too (never let through).
            let (status, _) = get_on(&mut admin_probe, "/admin", "admin-shed").await;
            assert!(status == 503 || status == 403, "/admin answered {status}");
        }
    }
    let shed = shed.expect("a request refused with 503 while over 95 % of the budget");
    let line = logged(&access, &shed).await;
    assert_eq!(line["response_code"], 503, "{line}");
    assert_eq!(line["response_flags"], "OM", "{line}");
    assert!(
        sample(stats, "waypoint_overload_rejected", &[("what", "request")]).await >= 1.0,
        "shed requests are counted"
    );
    eprintln!("overload: {refused_connects} CONNECTs refused while building pressure");

    // Past 98 %: 1 MiB into every echo tunnel.
    for (_, stream) in echoes.held.iter_mut() {
        stream
            .send_data(bytes::Bytes::from(vec![b'x'; 1 << 20]), false)
            .unwrap();
    }

    // The stalled tunnels are reset (they held the memory) and memory falls back below the
    // first threshold; no more pressure is added.
    poll_metric(
        stats,
        "waypoint_overload_streams_reset",
        &[],
        Duration::from_secs(20),
        |v| v >= 1.0,
    )
    .await;
    let budget = (budget_mib << 20) as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = memory(stats).await;
        let keepalive = sample(
            stats,
            "waypoint_overload_action_active",
            &action("disable_http_keepalive"),
        )
        .await;
        if m < 0.9 * budget && keepalive == 0.0 {
            eprintln!(
                "overload: memory back to {:.1} MiB of {budget_mib} MiB",
                m / MIB
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "memory stayed at {:.1} MiB of {budget_mib} MiB",
            m / MIB
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reset = sample(stats, "waypoint_overload_streams_reset", &[]).await;
    let tunnels = sample(stats, "waypoint_overload_rejected", &[("what", "tunnel")]).await;
    let held = readers.held.len() + echoes.held.len();
    eprintln!("overload: {reset} of {held} stalled tunnels reset, {tunnels} CONNECTs refused");
    assert!(reset <= held as f64, "{reset} resets");
    assert!(
        tunnels >= refused_connects as f64,
        "{tunnels} refused CONNECTs counted"
    );
    drop((readers, echoes));

    // Pressure gone: requests succeed again, and policy still denies.
    assert_eq!(get(&ca, addrs["hbone"], "/ratings/1", "after").await.0, 200);
    assert_eq!(
        get(&ca, addrs["hbone"], "/admin", "admin-after").await.0,
        403
    );
    let warned = |what: &str| logs.lock().unwrap().iter().any(|l| l.contains(what));
    assert!(warned("overload actions on"), "a WARN when actions turn on");
    sigterm_and_wait(child).await;
}
