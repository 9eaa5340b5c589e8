//! `bench`: throughput, latency, CPU and memory of the waypoint data path on loopback, next to
//! two baselines measured in the same process and the same run:
//!
//! 1. `direct`   client → app over plain TCP (HTTP/1.1 keep-alive);
//! 2. `hbone`    client → one HBONE hop (mTLS h2 CONNECT terminated by a simulated pod) → app;
//! 3. `waypoint` client → HBONE → waypoint (L7 routing, access log) → HBONE → pod → app, on the
//!    bookinfo config (`reviews` 10.0.0.10:9080, 90/10 v1/v2).
//!
//! Every scenario is HTTP/1.1 keep-alive GETs with the whole response body read. Concurrency `c`
//! means `c` connections/tunnels, each its own keep-alive session driven by its own tokio task,
//! with the requests split evenly. Each run is bounded by `--requests` and `--max-seconds`.
//!
//! CPU is the whole process (`/proc/self/stat` utime+stime), which includes the load generator:
//! the client, the apps, the pods and the waypoint all share the same cores.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use waypoint::access_log::Format;
use waypoint::demo::{bookinfo_snapshot, Bench, TRUST_DOMAIN};
use waypoint::identity::{install_crypto_provider, Ca, SpiffeId};
use waypoint::sim::{self, AppHandle, AppKind, Http1, PodHandle, ZtunnelClient};

#[derive(Parser, Debug)]
#[command(about = "Loopback benchmark: direct vs one HBONE hop vs the waypoint data path")]
struct Args {
    /// Measured requests per run (scenario × concurrency), split evenly over the workers.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Unmeasured warm-up requests per run (same connections, before measuring).
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Hard time cap per run (warm-up and measured phase each); workers stop when it passes.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// Concurrency levels (connections/tunnels, one task each).
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    concurrency: Vec<usize>,
    /// HBONE port of the simulated pods (differs from the demo's 15008 so both can run).
    #[arg(long, default_value_t = 15108)]
    hbone_port: u16,
    /// Loopback IP of the app (and its pod) for the direct and hbone baselines.
    #[arg(long, default_value = "127.0.30.1")]
    baseline_ip: IpAddr,
}

const APP_PORT: u16 = 9080;
const HOST: &str = "reviews:9080";
const PATH: &str = "/reviews/0";
const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Direct,
    Hbone,
    Waypoint,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Hbone => "hbone",
            Scenario::Waypoint => "waypoint",
        }
    }
}

/// How a worker opens its keep-alive session.
enum Target {
    Tcp(SocketAddr),
    Tunnel(Arc<ZtunnelClient>, SocketAddr),
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Http1> {
        match self {
            Target::Tcp(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(send)
            }
            Target::Tunnel(client, dst) => client.http1(*dst).await,
        }
    }
}

#[derive(Default)]
struct WorkerOut {
    latencies_us: Vec<u32>,
    ok: u64,
    warmup_sent: u64,
    measured_sent: u64,
    failures: BTreeMap<String, u64>,
}

struct RunResult {
    scenario: Scenario,
    concurrency: usize,
    ok: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    wall: Duration,
    rps: f64,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    max_us: u32,
    mean_us: f64,
    cpu_per_1k: f64,
    rss_kib: u64,
    /// Waypoint only: (upstream tunnels opened, reused, requests sent incl. warm-up).
    tunnels: Option<(u64, u64, u64)>,
    access_lines: Option<u64>,
    /// Waypoint only: CONNECT tunnels each pod accepted, as "ip=n".
    per_pod: Vec<String>,
}

/// One request; `Err` carries a short description of what went wrong.
async fn one_request(send: &mut Http1) -> Result<(), String> {
    match tokio::time::timeout(
        PER_REQUEST_TIMEOUT,
        sim::get(send, HOST, PATH, &[("user-agent", "waypoint-bench")]),
    )
    .await
    {
        Err(_) => Err(format!("timeout after {PER_REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("error: {e:#}")),
        Ok(Ok((parts, _body))) if parts.status == 200 => Ok(()),
        Ok(Ok((parts, _body))) => Err(format!("HTTP {}", parts.status.as_u16())),
    }
}

fn record(failures: &mut BTreeMap<String, u64>, what: String) {
    let what: String = what.chars().take(200).collect();
    *failures.entry(what).or_default() += 1;
}

async fn worker(
    target: Arc<Target>,
    warmup: usize,
    share: usize,
    max: Duration,
    barrier: Arc<Barrier>,
) -> WorkerOut {
    let mut out = WorkerOut {
        latencies_us: Vec::with_capacity(share),
        ..Default::default()
    };
    let mut send = match target.connect().await {
        Ok(s) => Some(s),
        Err(e) => {
            record(&mut out.failures, format!("connect: {e:#}"));
            None
        }
    };
    // Warm-up: same session, not measured.
    let deadline = Instant::now() + max;
    if let Some(s) = send.as_mut() {
        for _ in 0..warmup {
            if Instant::now() >= deadline {
                break;
            }
            out.warmup_sent += 1;
            if let Err(e) = one_request(s).await {
                record(&mut out.failures, format!("warm-up {e}"));
                break;
            }
        }
    }
    // All warmed up → main samples CPU → go.
    barrier.wait().await;
    barrier.wait().await;
    let deadline = Instant::now() + max;
    let mut i = 0;
    while i < share && Instant::now() < deadline {
        let Some(s) = send.as_mut() else {
            break;
        };
        i += 1;
        out.measured_sent += 1;
        let start = Instant::now();
        match one_request(s).await {
            Ok(()) => {
                out.ok += 1;
                let us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                out.latencies_us.push(us);
            }
            Err(e) => {
                let broken = !e.starts_with("HTTP ");
                record(&mut out.failures, e);
                if broken {
                    // The session is unusable: one fresh one, else this worker stops.
                    send = match target.connect().await {
                        Ok(s) => Some(s),
                        Err(e) => {
                            record(&mut out.failures, format!("reconnect: {e:#}"));
                            None
                        }
                    };
                }
            }
        }
    }
    out
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .context("unexpected /proc/self/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Retry a bind-ish start for a moment: the previous run's listeners are dropped asynchronously.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for _ in 0..50 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.expect("at least one attempt")).with_context(|| format!("starting {what}"))
}

/// What a scenario keeps alive for the duration of one run.
enum Fixture {
    Direct { _app: AppHandle },
    Hbone { _app: AppHandle, pod: PodHandle },
    Waypoint(Box<Bench>),
}

async fn run(
    scenario: Scenario,
    concurrency: usize,
    args: &Args,
    ticks_per_s: f64,
) -> anyhow::Result<RunResult> {
    let app_addr = SocketAddr::new(args.baseline_ip, APP_PORT);
    let pod_addr = SocketAddr::new(args.baseline_ip, args.hbone_port);
    let client_id = SpiffeId::new(TRUST_DOMAIN, "default", "bookinfo-productpage");
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
            let bench = retry("waypoint mesh", || async move {
                let snapshot = bookinfo_snapshot().map_err(|e| anyhow::anyhow!("bookinfo: {e}"))?;
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

    let c = concurrency.clamp(1, args.requests.max(1));
    let max = Duration::from_secs(args.max_seconds);
    let barrier = Arc::new(Barrier::new(c + 1));
    let mut tasks = Vec::with_capacity(c);
    for w in 0..c {
        let share = args.requests / c + usize::from(w < args.requests % c);
        let warm = args.warmup / c + usize::from(w < args.warmup % c);
        tasks.push(tokio::spawn(worker(
            target.clone(),
            warm,
            share,
            max,
            barrier.clone(),
        )));
    }
    barrier.wait().await;
    let cpu0 = cpu_ticks()?;
    let t0 = Instant::now();
    barrier.wait().await;
    let mut outs = Vec::with_capacity(c);
    for t in tasks {
        outs.push(t.await?);
    }
    let wall = t0.elapsed();
    let cpu1 = cpu_ticks()?;

    let mut lat = Vec::with_capacity(args.requests);
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
    let cpu_s = (cpu1.saturating_sub(cpu0)) as f64 / ticks_per_s;
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

fn fmt_us(us: u32) -> String {
    if us >= 10_000 {
        format!("{:.2}ms", f64::from(us) / 1000.0)
    } else {
        format!("{us}µs")
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.concurrency.is_empty() {
        bail!("--requests and --concurrency must be non-empty/positive");
    }
    install_crypto_provider();
    let ticks = clock_ticks();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "waypoint bench: {} measured requests per run (+{} warm-up), cap {}s per phase, \
         concurrency {:?}, {cores} cores, HBONE port {}",
        args.requests, args.warmup, args.max_seconds, args.concurrency, args.hbone_port
    );
    println!(
        "note: client load generator, apps, pods and waypoint share one process and all cores; \
         CPU s/1k is the whole process (client included); RSS is the process after the run\n"
    );

    let mut results = Vec::new();
    for &c in &args.concurrency {
        for scenario in [Scenario::Direct, Scenario::Hbone, Scenario::Waypoint] {
            let r = run(scenario, c, &args, ticks)
                .await
                .with_context(|| format!("{} c={c}", scenario.name()))?;
            eprintln!(
                "  done: {:<8} c={:<3} {:>8.0} req/s in {:.2}s",
                r.scenario.name(),
                r.concurrency,
                r.rps,
                r.wall.as_secs_f64()
            );
            results.push(r);
        }
    }

    println!(
        "{:<9} {:>4} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>14}",
        "scenario",
        "c",
        "ok",
        "failed",
        "req/s",
        "p50",
        "p99",
        "CPU s/1k",
        "RSS MiB",
        "up-tun/10k req"
    );
    for r in &results {
        let tun = match r.tunnels {
            Some((opened, _, sent)) => {
                format!("{:.1}", opened as f64 * 10_000.0 / sent.max(1) as f64)
            }
            None => "-".into(),
        };
        println!(
            "{:<9} {:>4} {:>7} {:>6} {:>9.0} {:>9} {:>9} {:>9.3} {:>9.1} {:>14}",
            r.scenario.name(),
            r.concurrency,
            r.ok,
            r.failed,
            r.rps,
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            r.cpu_per_1k,
            r.rss_kib as f64 / 1024.0,
            tun
        );
    }

    println!("\nlatency tail (mean above p99 means a few very slow requests):");
    println!(
        "{:<9} {:>4} {:>9} {:>9} {:>9}",
        "scenario", "c", "mean", "p99.9", "max"
    );
    for r in &results {
        println!(
            "{:<9} {:>4} {:>9} {:>9} {:>9}",
            r.scenario.name(),
            r.concurrency,
            fmt_us(r.mean_us.round() as u32),
            fmt_us(r.p999_us),
            fmt_us(r.max_us)
        );
    }

    println!("\nvs direct (same run, same c):");
    println!(
        "{:<9} {:>4} {:>12} {:>10} {:>12}",
        "scenario", "c", "throughput×", "p50×", "CPU/1k×"
    );
    for r in &results {
        if r.scenario == Scenario::Direct {
            continue;
        }
        let Some(base) = results
            .iter()
            .find(|b| b.scenario == Scenario::Direct && b.concurrency == r.concurrency)
        else {
            continue;
        };
        println!(
            "{:<9} {:>4} {:>12.2} {:>10.2} {:>12.2}",
            r.scenario.name(),
            r.concurrency,
            r.rps / base.rps,
            f64::from(r.p50_us) / f64::from(base.p50_us.max(1)),
            r.cpu_per_1k / base.cpu_per_1k
        );
    }

    println!("\nwaypoint upstream tunnels (counted from mesh start, warm-up included):");
    for r in &results {
        if let (Some((opened, reused, sent)), Some(lines)) = (r.tunnels, r.access_lines) {
            println!(
                "  c={:<3} opened {opened} (target ≤ {} per endpoint), reused {reused}, requests sent \
                 {sent}, access-log lines {lines}",
                r.concurrency, r.concurrency
            );
            println!("        tunnels accepted per pod: {}", r.per_pod.join(", "));
        }
    }

    let mut any_failed = false;
    for r in &results {
        if !r.failures.is_empty() {
            any_failed = true;
            println!("\nfailures in {} c={}:", r.scenario.name(), r.concurrency);
            for (what, n) in &r.failures {
                println!("  {n:>7} × {what}");
            }
        }
    }

    let summary: Vec<String> = results
        .iter()
        .filter(|r| r.scenario == Scenario::Waypoint)
        .map(|r| {
            let base = results
                .iter()
                .find(|b| b.scenario == Scenario::Direct && b.concurrency == r.concurrency);
            format!(
                "c={} {:.0} req/s p50 {} p99 {} ({:.2}× direct throughput)",
                r.concurrency,
                r.rps,
                fmt_us(r.p50_us),
                fmt_us(r.p99_us),
                base.map_or(f64::NAN, |b| r.rps / b.rps)
            )
        })
        .collect();
    println!(
        "\nRESULT waypoint: {}; failures: {}",
        summary.join("; "),
        if any_failed {
            "YES (see above)"
        } else {
            "none"
        }
    );
    if any_failed {
        std::process::exit(1);
    }
    Ok(())
}
