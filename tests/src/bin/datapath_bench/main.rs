//! `datapath_bench`: the waypoint in its own process beside an L4 reference path (issue 14;
//! method and figures in docs/benchmarks.md).
//!
//! Four kinds of processes, all on loopback with OS-chosen ports:
//!
//! - this program: the load generator (HTTP/1.1 keep-alive GETs, or h2c gRPC calls) and the app
//!   (`waypoint::commands::sim::start_app`, HTTP/1.1 and h2c);
//! - `hbone_hop originate` (like ztunnel's outbound): plain TCP from the load generator, one
//!   mTLS HTTP/2 CONNECT stream per connection, pooled and multiplexed (100 streams a connection);
//! - `hbone_hop terminate` (like ztunnel's inbound): HBONE in, the app dialled;
//! - `waypoint run` (the release binary) on a generated bookinfo-like config whose endpoint is
//!   the app, its node being the terminator (`--upstream-hbone-port`); a second `waypoint run`
//!   with the access log off (`--access-log-sample-rate 0`) for the access-log comparison. Both
//!   get a meshConfig naming this program's Zipkin sink, for the tracing phase (`tracing.rs`).
//!
//! Paths: L4 = client → originator → terminator → app; L7 = client → originator → waypoint →
//! terminator → app. Each phase runs its load after a warm-up on the same connections and
//! samples utime+stime (`/proc/PID/stat`) of every process around the measured part only; RSS
//! is `VmRSS` after the phase. Every loop is bounded by a request count and `--max-seconds`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use waypoint::commands::sim::{self, AppKind, Http1};
use waypoint::control::identity::{install_crypto_provider, Ca, SpiffeId};
use waypoint_tests::load::{percentile, record, worker, Get, RunBounds};
mod mesh;
use mesh::{code_kib, hop_counters, rss_kib, Mesh};
mod load;
use load::{grpc, open_idle, profile, run, Load, Run};

mod tracing;

#[derive(Parser, Debug)]
#[command(
    about = "The waypoint (release binary, own process) vs an L4 reference path of two lean HBONE \
             hops (own processes): CPU per request per process, RSS, latency, throughput, idle \
             tunnels, gRPC tunnel reuse, access-log cost; printed next to issue 14's targets"
)]
struct Args {
    #[command(flatten)]
    run: RunBounds,
    /// Connections of the max-rate run (the other one is 1 connection).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The paced run: total request rate (req/s) …
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// … over this many connections …
    #[arg(long, default_value_t = 8)]
    paced_connections: usize,
    /// … for this many measured requests.
    #[arg(long, default_value_t = 5_000)]
    paced_requests: usize,
    /// Idle tunnels opened through the waypoint (one request each, then held). 0: skip.
    #[arg(long, default_value_t = 10_000)]
    idle_tunnels: usize,
    /// gRPC (h2c inside the tunnel) requests, and the concurrent streams carrying them on one
    /// h2c connection. 0 requests: skip.
    #[arg(long, default_value_t = 10_000)]
    grpc_requests: usize,
    #[arg(long, default_value_t = 100)]
    grpc_streams: usize,
    /// Max-rate runs with every request traced (a Telemetry at 100 %, spans to an in-process
    /// Zipkin sink), after the access-log rounds. 0: skip.
    #[arg(long, default_value_t = 1)]
    trace_rounds: usize,
    /// Rounds of the access-log comparison (each: log off, then log on, at max rate).
    #[arg(long, default_value_t = 2)]
    access_log_rounds: usize,
    /// The `waypoint` binary (default: next to this program, i.e. target/release/waypoint).
    #[arg(long)]
    waypoint_bin: Option<PathBuf>,
    /// The `hbone_hop` binary (default: next to this program).
    #[arg(long)]
    hop_bin: Option<PathBuf>,
    /// Worker threads of each hop (ztunnel's default is 2).
    #[arg(long, default_value_t = 2)]
    hop_threads: usize,
    /// Streams the originator puts on one HBONE connection before it opens another (ztunnel's
    /// pool: 100). Lower: the waypoint gets more inbound connections, spread over its workers.
    #[arg(long, default_value_t = 100)]
    originator_max_streams: usize,
    /// `--threads` of the waypoint (default: its own, one per CPU).
    #[arg(long)]
    waypoint_threads: Option<usize>,
    /// Record a `perf` profile of the waypoint during an extra, unmeasured max-rate L7 run and
    /// print its top symbols.
    #[arg(long)]
    perf: bool,
    /// `perf record --call-graph` mode of `--perf` (`fp` needs frame pointers, which release
    /// builds omit; `dwarf` unwinds any build, at more cost). The recording stays in the run's
    /// directory (`perf.data`) for `perf report`.
    #[arg(long, default_value = "fp")]
    perf_call_graph: String,
    /// Loopback address of the app and its terminator (the endpoint's pod and node).
    #[arg(long, default_value = "127.0.77.1")]
    pod_ip: IpAddr,
}

const HOST: &str = "reviews:9080";
const PATH: &str = "/reviews/0";
const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const GET: Get = Get {
    host: HOST,
    path: PATH,
    user_agent: "datapath-bench",
    timeout: PER_REQUEST_TIMEOUT,
};
const TRUST_DOMAIN: &str = "cluster.local";

fn spiffe(sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "default", sa)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn print_runs(runs: &[&Run]) {
    println!(
        "{:<24} {:>7} {:>9} {:>8} {:>8} │ {:>8} {:>8} {:>8} {:>8} {:>8} │ {:>6} {:>6} {:>6} {:>6}",
        "run",
        "ok",
        "req/s",
        "p50 µs",
        "p99 µs",
        "orig",
        "wp",
        "wp-nolog",
        "term",
        "loadgen",
        "orig",
        "wp",
        "nolog",
        "term"
    );
    println!(
        "{:<24} {:>7} {:>9} {:>8} {:>8} │ {:^44} │ {:^27}",
        "", "", "", "", "", "CPU ms per 1000 requests", "RSS MiB after"
    );
    for r in runs {
        let c = r.cpu_ms_per_1k;
        let m = |k: u64| k as f64 / 1024.0;
        println!(
            "{:<24} {:>7} {:>9.0} {:>8} {:>8} │ {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} │ {:>6.1} {:>6.1} {:>6.1} {:>6.1}",
            r.label,
            r.ok,
            r.rps(),
            r.p50_us,
            r.p99_us,
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            m(r.rss_kib[0]),
            m(r.rss_kib[1]),
            m(r.rss_kib[2]),
            m(r.rss_kib[3])
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.run.requests == 0 || args.connections == 0 || args.paced_requests == 0 {
        bail!("--requests, --connections and --paced-requests must be positive");
    }
    install_crypto_provider();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mesh = Mesh::start(&args).await?;
    println!(
        "datapath_bench: {cores} cores; {} measured requests per max-rate run (+{} warm-up), \
         paced {} req/s × {} requests over {} connections, cap {}s per phase; files in {}",
        args.run.requests,
        args.run.warmup,
        args.rate,
        args.paced_requests,
        args.paced_connections,
        args.run.max_seconds,
        mesh.dir.display()
    );
    println!(
        "pids: originator {}, waypoint {}, waypoint (log off) {}, terminator {}, load generator + \
         app {}",
        mesh.originator.pid(),
        mesh.waypoint.pid(),
        mesh.waypoint_nolog.pid(),
        mesh.terminator.pid(),
        std::process::id()
    );
    let paced = Load::Paced {
        conns: args.paced_connections,
        rate: args.rate,
    };
    let n = args.run.requests;
    let c = args.connections;
    let l4_1 = run(&mesh, "L4 c=1", "l4", Load::Max(1), n, &args).await?;
    let l7_1 = run(&mesh, "L7 c=1", "l7", Load::Max(1), n, &args).await?;
    let l4_c = run(&mesh, &format!("L4 c={c}"), "l4", Load::Max(c), n, &args).await?;
    let l7_c = run(&mesh, &format!("L7 c={c}"), "l7", Load::Max(c), n, &args).await?;
    let pr = args.paced_requests;
    let at_rate = |what: &str| format!("{what} {} req/s", args.rate);
    let l4_p = run(&mesh, &at_rate("L4"), "l4", paced, pr, &args).await?;
    let l7_p = run(&mesh, &at_rate("L7"), "l7", paced, pr, &args).await?;
    // The same three loads through the waypoint's TCP splice: its HBONE transport, in and out,
    // without HTTP. What the L7 runs cost above these is the waypoint's HTTP work.
    let tcp_1 = run(&mesh, "TCP via wp c=1", "tcp", Load::Max(1), n, &args).await?;
    let tcp_label = format!("TCP via wp c={c}");
    let tcp_c = run(&mesh, &tcp_label, "tcp", Load::Max(c), n, &args).await?;
    let tcp_p = run(&mesh, &at_rate("TCP via wp"), "tcp", paced, pr, &args).await?;
    let mut traced_spans = 0;
    let mut log_on = vec![];
    let mut log_off = vec![];
    for round in 0..args.access_log_rounds {
        let off = format!("L7 c={c} log off #{}", round + 1);
        log_off.push(run(&mesh, &off, "l7nolog", Load::Max(c), n, &args).await?);
        let on = format!("L7 c={c} log on #{}", round + 1);
        log_on.push(run(&mesh, &on, "l7", Load::Max(c), n, &args).await?);
    }
    let mut traced = vec![];
    if args.trace_rounds > 0 {
        tracing::set_tracing(&mesh, true).await?;
        let before = mesh.zipkin.spans();
        for round in 0..args.trace_rounds {
            let label = format!("L7 c={c} traced #{}", round + 1);
            traced.push(run(&mesh, &label, "l7", Load::Max(c), n, &args).await?);
        }
        tracing::set_tracing(&mesh, false).await?;
        // One span per request, warm-up included; the last batch leaves within the export
        // thread's flush interval.
        let want: u64 = traced.iter().map(|r| r.ok + args.run.warmup as u64).sum();
        traced_spans = tracing::spans_reaching(&mesh.zipkin, before, want).await;
        eprintln!("  done: tracing, {traced_spans} of {want} spans at the Zipkin sink");
    }
    let off = format!("{} log off", at_rate("L7"));
    let l7_p_off = run(&mesh, &off, "l7nolog", paced, pr, &args).await?;

    let max = Duration::from_secs(args.run.max_seconds);
    let grpc_out = if args.grpc_requests > 0 {
        let (cpu0, t0) = (mesh.cpu()?, Instant::now());
        let (ok, tunnels, failures) =
            grpc(&mesh, args.grpc_requests, args.grpc_streams, max).await?;
        let (cpu1, secs) = (mesh.cpu()?, t0.elapsed().as_secs_f64());
        eprintln!("  done: gRPC {ok} ok, {tunnels} tunnels at the terminator");
        // CPU ms per 1000 calls of the waypoint (index 1) and the terminator (3), and calls/s.
        let per_1k = |i: usize| (cpu1[i] - cpu0[i]) * 1e6 / ok.max(1) as f64;
        println!(
            "gRPC phase: {:.0} calls/s; CPU ms per 1000 calls: waypoint {:.1}, terminator {:.1}",
            ok as f64 / secs,
            per_1k(1),
            per_1k(3)
        );
        Some((ok, tunnels, failures))
    } else {
        None
    };
    let perf = if args.perf {
        Some(profile(&mesh, &args).await)
    } else {
        None
    };
    let idle = if args.idle_tunnels > 0 {
        let before = rss_kib(mesh.waypoint.pid());
        let held = open_idle(&mesh, args.idle_tunnels, max).await?;
        let after = rss_kib(mesh.waypoint.pid());
        eprintln!("  done: {} idle tunnels held", held.len());
        let out = (held.len(), before, after);
        drop(held);
        Some(out)
    } else {
        None
    };

    // ----- the report -----
    println!("\nper run (CPU from /proc/PID/stat utime+stime over the measured part):");
    let mut all: Vec<&Run> = vec![
        &l4_1, &l7_1, &l4_c, &l7_c, &l4_p, &l7_p, &tcp_1, &tcp_c, &tcp_p,
    ];
    all.extend(log_off.iter());
    all.extend(log_on.iter());
    all.extend(traced.iter());
    all.push(&l7_p_off);
    print_runs(&all);

    let mut any_failed = false;
    for r in &all {
        for (what, k) in &r.failures {
            any_failed = true;
            println!("  failures in {}: {k} × {what}", r.label);
        }
    }

    println!("\nwaypoint CPU per request ÷ (originator + terminator), same L7 run (target ≤ 0.8):");
    let mut ratios = vec![];
    for (mode, r4, r7) in [
        ("1 connection", &l4_1, &l7_1),
        ("max rate", &l4_c, &l7_c),
        ("paced", &l4_p, &l7_p),
    ] {
        let ratio = r7.waypoint_cpu() / r7.hops_cpu();
        ratios.push(ratio);
        println!(
            "  {mode:<13} {:<16} waypoint {:>6.1} ms/1k, originator+terminator {:>6.1} ms/1k \
             (L4 run: {:>6.1}) → {:.2} {}",
            r7.label,
            r7.waypoint_cpu(),
            r7.hops_cpu(),
            r4.hops_cpu(),
            ratio,
            verdict(ratio <= 0.8)
        );
    }
    println!(
        "\nthe waypoint's transport alone (TCP splice: HBONE in and out, no HTTP), same loads; \
         L7's HTTP work is the rest:"
    );
    for (mode, r4, rt, r7) in [
        ("1 connection", &l4_1, &tcp_1, &l7_1),
        ("max rate", &l4_c, &tcp_c, &l7_c),
        ("paced", &l4_p, &tcp_p, &l7_p),
    ] {
        println!(
            "  {mode:<13} {:<20} waypoint {:>6.1} ms/1k ÷ (orig + term) {:>6.1} → {:.2}; \
             HTTP adds {:>6.1} ms/1k ({:.2} of orig + term in the L7 run); p50 over the L4 \
             run's {:.3} ms",
            rt.label,
            rt.waypoint_cpu(),
            rt.hops_cpu(),
            rt.waypoint_cpu() / rt.hops_cpu(),
            r7.waypoint_cpu() - rt.waypoint_cpu(),
            (r7.waypoint_cpu() - rt.waypoint_cpu()) / r7.hops_cpu(),
            (f64::from(rt.p50_us) - f64::from(r4.p50_us)) / 1000.0,
        );
    }
    let added_p50 = (f64::from(l7_1.p50_us) - f64::from(l4_1.p50_us)) / 1000.0;
    let added_p99 = (f64::from(l7_1.p99_us) - f64::from(l4_1.p99_us)) / 1000.0;
    let tput = l7_c.rps() / l4_c.rps();
    let rss = l7_p.rss_kib[1] as f64 / 1024.0;
    println!("\ntargets (issue 14), one run:");
    println!(
        "  added p50 at 1 connection      {added_p50:.3} ms (L7 {} µs − L4 {} µs)   target ≤ 0.1 ms   {}",
        l7_1.p50_us,
        l4_1.p50_us,
        verdict(added_p50 <= 0.1)
    );
    println!(
        "  added p99 at 1 connection      {added_p99:.3} ms (L7 {} µs − L4 {} µs)   (no target)",
        l7_1.p99_us, l4_1.p99_us
    );
    println!(
        "  L7 ÷ L4 max throughput (c={c})  {tput:.2} ({:.0} ÷ {:.0} req/s)   target ≥ 0.55   {}",
        l7_c.rps(),
        l4_c.rps(),
        verdict(tput >= 0.55)
    );
    println!(
        "  waypoint RSS at {} req/s      {rss:.1} MiB   target ≤ 20 MiB   {}   \
         ({:.1} MiB of it the executable's code)",
        args.rate,
        verdict(rss <= 20.0),
        l7_p.waypoint_code_kib as f64 / 1024.0
    );
    let max_ratio = ratios.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "  waypoint ÷ (orig + term)       worst {max_ratio:.2}   target ≤ 0.8 in every mode   {}",
        verdict(ratios.iter().all(|&r| r <= 0.8))
    );
    let mean = |rs: &[Run]| rs.iter().map(Run::waypoint_cpu).sum::<f64>() / rs.len().max(1) as f64;
    if !log_on.is_empty() {
        let (on, off) = (mean(&log_on), mean(&log_off));
        let share = (on - off) / on * 100.0;
        let (pon, poff) = (l7_p.waypoint_cpu(), l7_p_off.waypoint_cpu());
        let pshare = (pon - poff) / pon * 100.0;
        println!(
            "  access log CPU share, c={c}     {share:.1} % (on {on:.1} vs off {off:.1} ms/1k, mean \
             of {} rounds)   target ≤ 5 %   {}",
            log_on.len(),
            verdict(share <= 5.0)
        );
        println!(
            "  access log CPU share, paced    {pshare:.1} % (on {pon:.1} vs off {poff:.1} ms/1k)   \
             target ≤ 5 %   {}",
            verdict(pshare <= 5.0)
        );
    }
    if !traced.is_empty() && !log_on.is_empty() {
        let mean =
            |runs: &[Run]| runs.iter().map(Run::waypoint_cpu).sum::<f64>() / runs.len() as f64;
        let (t, on) = (mean(&traced), mean(&log_on));
        println!(
            "  tracing at 100 %, c={c}          +{:.1} % waypoint CPU (traced {t:.1} vs untraced \
             {on:.1} ms/1k, access log on in both); {traced_spans} spans exported   (no target)",
            (t - on) / on * 100.0
        );
    }
    if let Some((ok, tunnels, failures)) = grpc_out {
        let per_10k = tunnels as f64 * 10_000.0 / ok.max(1) as f64;
        let allowed = args.grpc_streams.div_ceil(100) as u64;
        println!(
            "  gRPC tunnels (1 endpoint, {} concurrent streams)   {tunnels} CONNECTs at the \
             terminator for {ok} requests ({per_10k:.1} per 10k)   target ≤ {allowed}   {}",
            args.grpc_streams,
            verdict(tunnels <= allowed && ok > 0)
        );
        if ok < args.grpc_requests as u64 {
            any_failed = true;
            println!(
                "  gRPC: {} of {} requests failed",
                args.grpc_requests as u64 - ok,
                args.grpc_requests
            );
            for (what, k) in &failures {
                println!("    {k} × {what}");
            }
        }
    }
    if let Some((held, before, after)) = idle {
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / held.max(1) as f64;
        println!(
            "  idle tunnels                   {held} held through the waypoint: RSS {:.1} → {:.1} \
             MiB, {per:.0} bytes per tunnel   (no target)",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
        if held < args.idle_tunnels {
            any_failed = true;
            println!(
                "  idle tunnels: only {held} of {} opened",
                args.idle_tunnels
            );
        }
    }
    println!(
        "\nhop counters at the end: originator {:?}; terminator {:?}",
        hop_counters(mesh.originator_stats)?,
        hop_counters(mesh.terminator_stats)?
    );
    match perf {
        None => {}
        Some(Ok(top)) => println!("\nperf: the waypoint at c={c} (top symbols, self):\n{top}"),
        Some(Err(e)) => println!("\nperf: not available here: {e:#}"),
    }
    if any_failed {
        println!("\nRESULT: some requests failed (see above)");
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(mesh.dir.join("certs"));
    Ok(())
}
