//! One scenario run: its fixture (app, pod, waypoint), the load and what it cost.

use super::*;

/// What a scenario keeps alive for the duration of one run.
pub(super) enum Fixture {
    Direct { _app: AppHandle },
    Hbone { _app: AppHandle, pod: PodHandle },
    Waypoint(Box<Bench>),
}

pub(super) async fn run(
    scenario: Scenario,
    concurrency: usize,
    authz_rules: Option<usize>,
    args: &Args,
) -> anyhow::Result<RunResult> {
    let app_addr = SocketAddr::new(args.baseline_ip, APP_PORT);
    let pod_addr = SocketAddr::new(args.baseline_ip, args.hbone_port);
    let client_id = SpiffeId::new(TRUST_DOMAIN, "default", CLIENT_SA);
    let mut decider = None;
    let (fixture, target) = match scenario {
        Scenario::Direct => {
            let app = retry("direct app", || async {
                Ok(sim::start_app(app_addr, "bench-app", AppKind::Http).await?)
            })
            .await?;
            (Fixture::Direct { _app: app }, Target::Tcp(app_addr))
        }
        Scenario::Hbone => {
            let ca = Ca::new("waypoint bench mesh")?;
            let pod_id = SpiffeId::new(TRUST_DOMAIN, "default", "bench-app");
            let pod_cert = ca.issue(&pod_id)?;
            let app = retry("hbone app", || async {
                Ok(sim::start_app(app_addr, "bench-app", AppKind::Http).await?)
            })
            .await?;
            let pod = retry("hbone pod", || async {
                Ok(sim::start_pod(pod_addr, &pod_cert.workload).await?)
            })
            .await?;
            let client = ZtunnelClient::new(ca.issue(&client_id)?.workload, pod_addr, pod_id);
            (
                Fixture::Hbone { _app: app, pod },
                Target::Tunnel(Arc::new(client), app_addr),
            )
        }
        Scenario::Waypoint => {
            let hbone_port = args.hbone_port;
            if let Some(n) = authz_rules {
                decider = authz_snapshot(n)?.1;
            }
            let bench = retry("waypoint mesh", || async move {
                let snapshot = match authz_rules {
                    // Built again for each attempt: a Snapshot is consumed by the start.
                    Some(n) => authz_snapshot(n)?.0,
                    None => bookinfo_snapshot().map_err(|e| anyhow::anyhow!("bookinfo: {e}"))?,
                };
                Bench::start(snapshot, hbone_port, Format::Text).await
            })
            .await?;
            let client = bench.client(&client_id)?;
            let vip: SocketAddr = "10.0.0.10:9080".parse().expect("static");
            (
                Fixture::Waypoint(Box::new(bench)),
                Target::Tunnel(Arc::new(client), vip),
            )
        }
    };
    let target = Arc::new(target);

    // The access log stays on (Envoy pays for it too), drained so memory stays flat.
    let access_seen = Arc::new(AtomicU64::new(0));
    let drain = match &fixture {
        Fixture::Waypoint(bench) => {
            let (lines, seen) = (bench.access_lines.clone(), access_seen.clone());
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let mut l = lines.lock();
                    seen.fetch_add(l.len() as u64, Ordering::Relaxed);
                    l.clear();
                }
            }))
        }
        _ => None,
    };

    let c = concurrency.clamp(1, args.run.requests.max(1));
    let max = Duration::from_secs(args.run.max_seconds);
    let barrier = Arc::new(Barrier::new(c + 1));
    let mut tasks = Vec::with_capacity(c);
    for w in 0..c {
        let share = args.run.requests / c + usize::from(w < args.run.requests % c);
        let warm = args.run.warmup / c + usize::from(w < args.run.warmup % c);
        let (target, barrier) = (target.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let connect = || target.connect();
            worker(connect, GET, warm, share, max, None, barrier).await
        }));
    }
    barrier.wait().await;
    let cpu0 = cpu_seconds()?;
    let t0 = Instant::now();
    barrier.wait().await;
    let mut outs = Vec::with_capacity(c);
    for t in tasks {
        outs.push(t.await?);
    }
    let wall = t0.elapsed();
    let cpu1 = cpu_seconds()?;

    let mut lat = Vec::with_capacity(args.run.requests);
    let (mut ok, mut measured, mut sent) = (0u64, 0u64, 0u64);
    let mut failures = BTreeMap::new();
    for o in outs {
        lat.extend_from_slice(&o.latencies_us);
        ok += o.ok;
        measured += o.measured_sent;
        sent += o.warmup_sent + o.measured_sent;
        for (k, v) in o.failures {
            *failures.entry(k).or_default() += v;
        }
    }
    lat.sort_unstable();
    let cpu_s = (cpu1 - cpu0).max(0.0);
    let tunnels = match &fixture {
        Fixture::Waypoint(bench) => Some((
            bench
                .app
                .pool
                .client()
                .stats
                .tunnels_opened
                .load(Ordering::Relaxed),
            bench.app.pool.stats.tunnels_reused.load(Ordering::Relaxed),
            sent,
        )),
        _ => None,
    };
    if let Some(d) = drain {
        d.abort();
    }
    let access_lines = match &fixture {
        Fixture::Waypoint(bench) => {
            Some(access_seen.load(Ordering::Relaxed) + bench.access_lines.lock().len() as u64)
        }
        _ => None,
    };
    let per_pod = match &fixture {
        Fixture::Waypoint(bench) => bench
            .pods
            .iter()
            .filter(|p| p.stats.tunnels.load(Ordering::Relaxed) > 0)
            .map(|p| {
                format!(
                    "{}={}",
                    p.hbone_addr.ip(),
                    p.stats.tunnels.load(Ordering::Relaxed)
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let rss = rss_kib();
    if let (Fixture::Waypoint(bench), Some(policy)) = (&fixture, &decider) {
        // Sanity: every request (warm-up included) was allowed by the last ALLOW rule.
        let allowed = bench
            .app
            .telemetry
            .metrics
            .authz
            .decisions
            .get_or_create(&AuthzLabels {
                action: "allow",
                policy: policy.clone(),
                protocol: "http",
            })
            .get();
        if allowed != sent {
            bail!("{sent} requests sent, {allowed} allowed by {policy} (want all of them)");
        }
    }
    if let Fixture::Hbone { pod, .. } = &fixture {
        // Sanity: the baseline really went through the HBONE terminator.
        if pod.stats.tunnels.load(Ordering::Relaxed) == 0 {
            bail!("hbone scenario: the pod saw no tunnels");
        }
    }
    drop(target);
    drop(fixture);
    Ok(RunResult {
        scenario,
        concurrency: c,
        authz_rules,
        ok,
        failed: measured - ok,
        failures,
        wall,
        rps: ok as f64 / wall.as_secs_f64().max(1e-9),
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        p999_us: percentile(&lat, 99.9),
        max_us: lat.last().copied().unwrap_or(0),
        mean_us: lat.iter().map(|&u| f64::from(u)).sum::<f64>() / lat.len().max(1) as f64,
        cpu_per_1k: if ok > 0 {
            cpu_s * 1000.0 / ok as f64
        } else {
            f64::NAN
        },
        rss_kib: rss,
        tunnels,
        access_lines,
        per_pod,
    })
}
