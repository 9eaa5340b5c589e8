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
//! CPU is the whole process (`CLOCK_PROCESS_CPUTIME_ID`: utime+stime of every thread), which
//! includes the load generator:
//! the client, the apps, the pods and the waypoint all share the same cores.
//!
//! `--authz-rules 0,10,1000` adds the cost of authorization: first the evaluation alone (the
//! PolicySet the waypoint would use for the bench's request, built through the YAML front-end,
//! evaluated in a loop: ns and heap allocations per decision), then the waypoint scenario once
//! per rule count with that many AuthorizationPolicy rules added to the bookinfo config, every
//! rule set allowing the bench's requests by its last ALLOW rule (so every rule is evaluated and
//! every response is still 200), reported as ratios against N=0 measured in the same run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hyper_util::rt::TokioIo;
use routing::authz::{AuthzView, Verdict};
use routing::Snapshot;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use waypoint::commands::demo::{bookinfo_snapshot, Bench, BOOKINFO, TRUST_DOMAIN};
use waypoint::commands::sim::{self, AppHandle, AppKind, Http1, PodHandle, ZtunnelClient};
use waypoint::control::identity::{install_crypto_provider, Ca, SpiffeId};
use waypoint::telemetry::access_log::Format;
use waypoint::telemetry::metrics::AuthzLabels;
use waypoint_tests::load::{percentile, worker, Get, RunBounds};
mod authz;
use authz::{authz_snapshot, eval_alone, fmt_us, print_authz, CLIENT_SA};
mod run;
use run::run;

#[derive(Parser, Debug)]
#[command(about = "Loopback benchmark: direct vs one HBONE hop vs the waypoint data path")]
struct Args {
    #[command(flatten)]
    run: RunBounds,
    /// Concurrency levels (connections/tunnels, one task each).
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    concurrency: Vec<usize>,
    /// HBONE port of the simulated pods (differs from the demo's 15008 so both can run).
    #[arg(long, default_value_t = 15108)]
    hbone_port: u16,
    /// Loopback IP of the app (and its pod) for the direct and hbone baselines.
    #[arg(long, default_value = "127.0.30.1")]
    baseline_ip: IpAddr,
    /// Authorization rule counts: evaluate them alone, and run the waypoint scenario once per
    /// count with that many AuthorizationPolicy rules (0 is added when missing: the baseline).
    #[arg(long, value_delimiter = ',')]
    authz_rules: Vec<usize>,
    /// Rounds of the authorization runs (each round runs every count once, in a rotated order);
    /// figures are medians over the rounds.
    #[arg(long, default_value_t = 1)]
    authz_rounds: usize,
    /// Decisions per rule count in the evaluation-alone measurement (also capped at
    /// --eval-seconds).
    #[arg(long, default_value_t = 200_000)]
    eval_iterations: u64,
    #[arg(long, default_value_t = 5)]
    eval_seconds: u64,
}

const APP_PORT: u16 = 9080;
const HOST: &str = "reviews:9080";
const PATH: &str = "/reviews/0";
const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const GET: Get = Get {
    host: HOST,
    path: PATH,
    user_agent: "waypoint-bench",
    timeout: PER_REQUEST_TIMEOUT,
};

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

struct RunResult {
    scenario: Scenario,
    concurrency: usize,
    /// Waypoint only, with `--authz-rules`: the number of authorization rules in force.
    authz_rules: Option<usize>,
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

/// CPU time of the whole process (every thread, exited ones included: utime + stime), in
/// seconds, from `CLOCK_PROCESS_CPUTIME_ID` (nanosecond resolution; `/proc/self/stat` counts in
/// 10 ms ticks, too coarse for runs of a few thousand requests).
fn cpu_seconds() -> anyhow::Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        bail!(
            "clock_gettime(CLOCK_PROCESS_CPUTIME_ID): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
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

// ---------------------------------------------------------------------------------------------
// Authorization: the rule sets, the evaluation-alone measurement, the allocation counter.
// ---------------------------------------------------------------------------------------------

/// The system allocator, counting allocations while [`COUNT_ALLOCS`] is set (one relaxed load
/// per allocation otherwise), so the evaluation-alone measurement can show allocations per
/// decision.
struct CountingAlloc;

static COUNT_ALLOCS: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count_alloc() {
    if COUNT_ALLOCS.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the contract.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

impl RunResult {
    /// The scenario, or `authz:N` for a waypoint run with N authorization rules.
    fn label(&self) -> String {
        match self.authz_rules {
            Some(n) => format!("authz:{n}"),
            None => self.scenario.name().to_string(),
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.run.requests == 0 || args.concurrency.is_empty() {
        bail!("--requests and --concurrency must be non-empty/positive");
    }
    install_crypto_provider();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "waypoint bench: {} measured requests per run (+{} warm-up), cap {}s per phase, \
         concurrency {:?}, {cores} cores, HBONE port {}",
        args.run.requests, args.run.warmup, args.run.max_seconds, args.concurrency, args.hbone_port
    );
    println!(
        "note: client load generator, apps, pods and waypoint share one process and all cores; \
         CPU s/1k is the whole process (client included); RSS is the process after the run\n"
    );

    let mut authz_counts = args.authz_rules.clone();
    if !authz_counts.is_empty() && !authz_counts.contains(&0) {
        authz_counts.insert(0, 0);
    }
    authz_counts.dedup();
    let mut evals = Vec::new();
    if !authz_counts.is_empty() {
        println!(
            "authorization, evaluation alone: the reviews PolicySet against the bench's request \
             (allowed by the last ALLOW rule; none of the DENY rules match), up to {} decisions \
             or {}s per count",
            args.eval_iterations, args.eval_seconds
        );
        println!(
            "{:>6} {:>9} {:>10} {:>12} {:>12} {:>14}",
            "rules", "policies", "decisions", "ns/decision", "cold ns", "allocs/decision"
        );
        for &n in &authz_counts {
            let e = eval_alone(
                n,
                args.eval_iterations,
                Duration::from_secs(args.eval_seconds),
            )?;
            println!(
                "{:>6} {:>9} {:>10} {:>12.1} {:>12.1} {:>14.2}",
                e.rules,
                e.policies,
                e.decisions,
                e.ns_per_decision,
                e.cold_ns_per_decision,
                e.allocs_per_decision
            );
            evals.push(e);
        }
        println!();
    }

    let mut results = Vec::new();
    for &c in &args.concurrency {
        let mut runs: Vec<(Scenario, Option<usize>)> =
            vec![(Scenario::Direct, None), (Scenario::Hbone, None)];
        if authz_counts.is_empty() {
            runs.push((Scenario::Waypoint, None));
        } else {
            // Each round runs every count, starting one further along, so no count always
            // runs first (or right after the baselines).
            for round in 0..args.authz_rounds.max(1) {
                for k in 0..authz_counts.len() {
                    let n = authz_counts[(k + round) % authz_counts.len()];
                    runs.push((Scenario::Waypoint, Some(n)));
                }
            }
        }
        for (scenario, authz) in runs {
            let r = run(scenario, c, authz, &args)
                .await
                .with_context(|| format!("{} c={c}", scenario.name()))?;
            eprintln!(
                "  done: {:<11} c={:<3} {:>8.0} req/s in {:.2}s",
                r.label(),
                r.concurrency,
                r.rps,
                r.wall.as_secs_f64()
            );
            if authz.is_some() && !r.failures.is_empty() {
                // Every rule set allows the bench's requests: anything but 200 is a bug.
                let mut why = String::new();
                for (what, n) in &r.failures {
                    let _ = write!(why, "; {n} × {what}");
                }
                bail!("{} c={c}: not every response was 200{why}", r.label());
            }
            results.push(r);
        }
    }

    println!(
        "{:<11} {:>4} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>14}",
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
            "{:<11} {:>4} {:>7} {:>6} {:>9.0} {:>9} {:>9} {:>9.3} {:>9.1} {:>14}",
            r.label(),
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
        "{:<11} {:>4} {:>9} {:>9} {:>9}",
        "scenario", "c", "mean", "p99.9", "max"
    );
    for r in &results {
        println!(
            "{:<11} {:>4} {:>9} {:>9} {:>9}",
            r.label(),
            r.concurrency,
            fmt_us(r.mean_us.round() as u32),
            fmt_us(r.p999_us),
            fmt_us(r.max_us)
        );
    }

    println!("\nvs direct (same run, same c):");
    println!(
        "{:<11} {:>4} {:>12} {:>10} {:>12}",
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
            "{:<11} {:>4} {:>12.2} {:>10.2} {:>12.2}",
            r.label(),
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
                "  {} c={:<3} opened {opened} (target ≤ {} per endpoint), reused {reused}, requests sent \
                 {sent}, access-log lines {lines}",
                r.label(),
                r.concurrency,
                r.concurrency
            );
            println!("        tunnels accepted per pod: {}", r.per_pod.join(", "));
        }
    }

    if !authz_counts.is_empty() {
        print_authz(&results, &authz_counts, &evals);
    }

    let mut any_failed = false;
    for r in &results {
        if !r.failures.is_empty() {
            any_failed = true;
            println!("\nfailures in {} c={}:", r.label(), r.concurrency);
            for (what, n) in &r.failures {
                println!("  {n:>7} × {what}");
            }
        }
    }

    let summary: Vec<String> = results
        .iter()
        .filter(|r| r.scenario == Scenario::Waypoint && r.authz_rules.unwrap_or(0) == 0)
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
