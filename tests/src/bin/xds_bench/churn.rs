//! Part 3: the churn run. With N services served to the real binary, a fixed data-path load (a
//! few keep-alive sessions, each its own HBONE tunnel, sending sequential GETs to a few services'
//! VIPs) runs for T seconds without churn, then for T seconds while the ADS server pushes R
//! endpoint changes per second. Every change replaces one subset's endpoint with another pod IP:
//! for the load's targets a pod that also serves (so no request has to fail), for the other
//! services an address nothing listens on (nothing sends to them).

use std::collections::BTreeMap;

use super::*;
use push::{first_200, heap_mib, serve, settled_rss, trims, Served, WaypointProcess};
use tokio::sync::Barrier;
use waypoint_tests::load::{self, Get, WorkerOut};

/// Services the load is sent to (`churn-0`..), behind the destination's serving pods.
const TARGETS: usize = 4;
/// Measured requests per phase, over all sessions (the phase's time cap usually ends it first).
const MAX_REQUESTS: usize = 5_000_000;
/// Unmeasured requests per session before each phase.
const WARMUP: usize = 200;
/// How often the churn phase samples the waypoint's RSS.
const RSS_EVERY: Duration = Duration::from_secs(10);

/// One phase of load.
pub(super) struct Phase {
    /// Measured latencies of the 200s, sorted (µs).
    latencies_us: Vec<u32>,
    sent: u64,
    ok: u64,
    failures: BTreeMap<String, u64>,
    elapsed: Duration,
    /// The waypoint's CPU time (user + system) over the measured part, and this process's
    /// (load generator, pods, ADS server).
    cpu: Option<Duration>,
    bench_cpu: Option<Duration>,
}

/// What the churn phase pushed.
pub(super) struct Pushed {
    sent: u64,
    elapsed: Duration,
    /// (seconds into the phase, RSS MiB).
    rss: Vec<(f64, f64)>,
    /// The live heap ([`heap_mib`]) at the phase's start and once its last change was ACKed
    /// (or given up on), MiB.
    heap: (Option<f64>, Option<f64>),
    /// RSS and live heap once the last change has settled (the waypoint's trim after it, or
    /// 3 s), MiB: what the churn left behind.
    settled: (Option<f64>, Option<f64>),
    /// EDS responses (each carries one or more changes) the waypoint ACKed by the phase's end,
    /// and in all.
    acked_at_end: usize,
    acked_responses: usize,
    /// From the load's end to the ACK of the last change; `None` if not ACKed within
    /// [`PUSH_DEADLINE`].
    last_acked_after: Option<Duration>,
    nacks: usize,
    /// The EDS versions of the first and last change.
    first: u64,
    last: u64,
}

pub(super) struct ChurnReport {
    n: usize,
    startup: Duration,
    connections: usize,
    secs: u64,
    rate: u32,
    quiet: Phase,
    churn: Phase,
    pushed: Pushed,
    /// Requests the replacement pods answered during the churn phase.
    spares: u64,
}

pub(super) async fn measure_churn(
    tpl: &Template,
    args: &Args,
    exe: &Path,
    dst: &Destination,
) -> anyhow::Result<ChurnReport> {
    let n = args.churn_services;
    let mut services = baseline(tpl, n, args.endpoints);
    let targets: Vec<Spec> = (0..TARGETS).map(|k| target(k, n, dst)).collect();
    services.extend(targets.iter().map(|s| tpl.service(s)));
    let Served {
        server,
        waypoint,
        startup,
    } = serve(tpl, &services, exe, dst).await?;
    drop(services);
    eprintln!(
        "  churn N={n}: waypoint ready {:.0} ms after spawn, RSS {:.0} MiB",
        ms(startup),
        waypoint.rss_mib().unwrap_or(0.0)
    );
    let client = Arc::new(sim::ZtunnelClient::new(
        dst.ca.issue(&spiffe("productpage"))?.workload,
        waypoint.hbone,
        spiffe("waypoint"),
    ));
    for t in &targets {
        let vip = SocketAddr::new(IpAddr::V4(t.vip), PORT);
        first_200(&client, vip, &format!("{}:{PORT}", t.name), Instant::now())
            .await
            .with_context(|| format!("churn target {}:\n{}", t.name, waypoint.tail()))?;
    }

    let quiet = phase(&client, &targets, args, &waypoint, None).await?;
    eprintln!(
        "  churn N={n}: no-churn phase done ({} requests)",
        quiet.sent
    );
    let churner = Churner {
        tpl,
        server: &server,
        waypoint: &waypoint,
        dst,
        targets: &targets,
        n,
        endpoints: args.endpoints,
        rate: args.churn_rate,
        secs: args.churn_secs,
    };
    let served_before = served_by_spares(dst);
    let mut pushed = None;
    let churn = phase(
        &client,
        &targets,
        args,
        &waypoint,
        Some((&churner, &mut pushed)),
    )
    .await?;
    let spares = served_by_spares(dst) - served_before;
    let pushed = churner
        .settle(pushed.context("the churn phase pushed nothing")?)
        .await;
    drop(waypoint);
    server.stop().await;
    Ok(ChurnReport {
        n,
        startup,
        connections: args.churn_connections,
        secs: args.churn_secs,
        rate: args.churn_rate,
        quiet,
        churn,
        pushed,
        spares,
    })
}

/// Requests the replacement pods (@3, @4) have answered so far.
fn served_by_spares(dst: &Destination) -> u64 {
    dst.apps[2..]
        .iter()
        .map(|a| a.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Load target `k`: v1 at the destination's @1, v2 at @2, split 50/50.
fn target(k: usize, n: usize, dst: &Destination) -> Spec {
    Spec {
        name: format!("churn-{k}"),
        vip: vip(n + k),
        pods: dst.pods(),
        weights: [50, 50],
    }
}

/// `args.churn_connections` sessions (session `i` to target `i % TARGETS`), warmed up, then
/// measured for `args.churn_secs` (or [`MAX_REQUESTS`]) while `churn`, if given, pushes.
async fn phase(
    client: &Arc<sim::ZtunnelClient>,
    targets: &[Spec],
    args: &Args,
    waypoint: &WaypointProcess,
    churn: Option<(&Churner<'_>, &mut Option<Pushed>)>,
) -> anyhow::Result<Phase> {
    let sessions = args.churn_connections.max(1);
    let max = Duration::from_secs(args.churn_secs);
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut workers = Vec::new();
    for i in 0..sessions {
        let t = &targets[i % targets.len()];
        let vip = SocketAddr::new(IpAddr::V4(t.vip), PORT);
        // `Get` takes a `&'static str`; one short string per session and phase.
        let host: &'static str = Box::leak(format!("{}:{PORT}", t.name).into_boxed_str());
        let get = Get {
            host,
            path: "/",
            user_agent: "xds-bench-churn",
            timeout: Duration::from_secs(5),
        };
        let client = client.clone();
        let barrier = barrier.clone();
        workers.push(tokio::spawn(async move {
            let connect = || {
                let client = client.clone();
                async move { client.http1(vip).await }
            };
            load::worker(
                connect,
                get,
                WARMUP,
                MAX_REQUESTS / sessions,
                max,
                None,
                barrier,
            )
            .await
        }));
    }
    barrier.wait().await;
    let pid = waypoint.child.id().to_string();
    let cpu0 = (cpu_of(&pid), cpu_of("self"));
    barrier.wait().await;
    let t0 = Instant::now();
    let mut outs: Vec<WorkerOut> = Vec::new();
    if let Some((churner, out)) = churn {
        *out = Some(churner.run().await);
    }
    for w in workers {
        outs.push(w.await?);
    }
    let elapsed = t0.elapsed();
    let since = |now: Option<Duration>, then: Option<Duration>| {
        now.zip(then).map(|(b, a)| b.saturating_sub(a))
    };
    let cpu = since(cpu_of(&pid), cpu0.0);
    let bench_cpu = since(cpu_of("self"), cpu0.1);
    let mut latencies_us: Vec<u32> = outs
        .iter_mut()
        .flat_map(|o| std::mem::take(&mut o.latencies_us))
        .collect();
    latencies_us.sort_unstable();
    let mut failures = BTreeMap::new();
    for o in &outs {
        for (what, count) in &o.failures {
            *failures.entry(what.clone()).or_default() += count;
        }
    }
    Ok(Phase {
        latencies_us,
        sent: outs.iter().map(|o| o.measured_sent).sum(),
        ok: outs.iter().map(|o| o.ok).sum(),
        failures,
        elapsed,
        cpu,
        bench_cpu,
    })
}

/// A process's user + system CPU time so far (`/proc/<pid>/stat`, in clock ticks).
fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Pushes the churn: change `k` goes to load target `k/2 % TARGETS` when `k` is even (one
/// subset's pod replaced by the other serving pod of that subset: v1 @1 ⇄ @3, v2 @2 ⇄ @4), else
/// to service `k/2 % n` (its first v1 pod replaced by an address in 10.127.0.0/16, or put back).
struct Churner<'a> {
    tpl: &'a Template,
    server: &'a Arc<AdsServer>,
    waypoint: &'a WaypointProcess,
    dst: &'a Destination,
    targets: &'a [Spec],
    n: usize,
    endpoints: usize,
    rate: u32,
    secs: u64,
}

impl Churner<'_> {
    /// The `k`th change: (assignment name, assignment).
    fn change(&self, k: usize) -> (String, ClusterLoadAssignment) {
        let subset = |spec: &Spec, v: &str| format!("inbound-vip|{PORT}|http/{v}|{}", spec.host());
        if k.is_multiple_of(2) || self.n == 0 {
            let t = (k / 2) % self.targets.len();
            let c = k / 2 / self.targets.len();
            let spec = &self.targets[t];
            let which = c % 2;
            let v = ["v1", "v2"][which];
            let pod = if (c / 2).is_multiple_of(2) {
                self.dst.spare()[which]
            } else {
                self.dst.pods()[which]
            };
            let name = subset(spec, v);
            let cla = self.tpl.assignment(spec, &name, &[(&[pod], v)]);
            (name, cla)
        } else {
            let i = (k / 2) % self.n;
            let round = k / 2 / self.n;
            let spec = Spec::baseline(i, self.endpoints);
            let half = spec.pods.len().div_ceil(2);
            let mut v1: Vec<IpAddr> = spec.pods[..half].to_vec();
            if round.is_multiple_of(2) {
                v1[0] = IpAddr::V4(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 127, 0, 0)) + (i as u32 & 0xffff),
                ));
            }
            let name = subset(&spec, "v1");
            let cla = self.tpl.assignment(&spec, &name, &[(&v1, "v1")]);
            (name, cla)
        }
    }

    /// `rate` changes a second for `secs` seconds (at most `rate × secs`), sampling the
    /// waypoint's RSS at the start, every [`RSS_EVERY`] and at the end.
    async fn run(&self) -> Pushed {
        let phase = Duration::from_secs(self.secs);
        let total = u64::from(self.rate) * self.secs;
        let t0 = Instant::now();
        let mut rss = vec![(0.0, self.waypoint.rss_mib().unwrap_or(0.0))];
        let heap_before = heap_mib(self.waypoint.admin).await;
        let mut next_rss = RSS_EVERY;
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1))));
        // Missed ticks are caught up, so the phase sends `rate × secs` if it can.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0u64;
        let mut first_version = None;
        let mut last_version = None;
        while sent < total && t0.elapsed() < phase {
            tick.tick().await;
            let (name, cla) = self.change(sent as usize);
            let version = self
                .server
                .set(type_url::CLUSTER_LOAD_ASSIGNMENT, &name, any(&cla));
            first_version.get_or_insert_with(|| version.clone());
            last_version = Some(version);
            sent += 1;
            if t0.elapsed() >= next_rss {
                rss.push((
                    t0.elapsed().as_secs_f64(),
                    self.waypoint.rss_mib().unwrap_or(0.0),
                ));
                next_rss += RSS_EVERY;
            }
        }
        let elapsed = t0.elapsed();
        rss.push((
            elapsed.as_secs_f64(),
            self.waypoint.rss_mib().unwrap_or(0.0),
        ));
        let first: u64 = first_version.and_then(|v| v.parse().ok()).unwrap_or(0);
        let last: u64 = last_version.and_then(|v| v.parse().ok()).unwrap_or(0);
        Pushed {
            sent,
            elapsed,
            rss,
            heap: (heap_before, None),
            settled: (None, None),
            acked_at_end: self.acked_since(first),
            acked_responses: 0,
            last_acked_after: None,
            nacks: 0,
            first,
            last,
        }
    }

    /// EDS ACKs of responses at or after version `first`.
    fn acked_since(&self, first: u64) -> usize {
        self.server
            .acks()
            .iter()
            .filter(|r| {
                r.type_url == type_url::CLUSTER_LOAD_ASSIGNMENT
                    && r.responded_version
                        .as_deref()
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|v| v >= first)
            })
            .count()
    }

    /// After the load ended: wait (bounded) for the last change's ACK, count ACKs and NACKs.
    async fn settle(&self, mut pushed: Pushed) -> Pushed {
        if pushed.sent > 0 {
            let start = Instant::now();
            if self
                .server
                .wait_for_ack(
                    type_url::CLUSTER_LOAD_ASSIGNMENT,
                    &pushed.last.to_string(),
                    PUSH_DEADLINE,
                )
                .await
            {
                pushed.last_acked_after = Some(start.elapsed());
            }
        }
        // Quiescent again: what the pushes left behind, then once the waypoint has trimmed.
        let trimmed = trims(self.waypoint.admin).await;
        pushed.heap.1 = heap_mib(self.waypoint.admin).await;
        pushed.settled.0 = settled_rss(self.waypoint, trimmed).await;
        pushed.settled.1 = heap_mib(self.waypoint.admin).await;
        pushed.acked_responses = self.acked_since(pushed.first);
        pushed.nacks = self.server.nacks().len();
        pushed
    }
}

pub(super) fn print_churn(r: &ChurnReport) {
    println!();
    println!(
        "churn: N={} services + {TARGETS} load targets (ready {:.0} ms), {} sessions of sequential GETs (each its own HBONE tunnel) to the targets' VIPs, {} s per phase, {} endpoint changes/s in the second:",
        r.n,
        ms(r.startup),
        r.connections,
        r.secs,
        r.rate
    );
    println!(
        "  {:<9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>15} {:>15}",
        "phase",
        "requests",
        "failed",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "waypoint CPU",
        "bench CPU"
    );
    for (name, p) in [("no churn", &r.quiet), ("churn", &r.churn)] {
        let failed: u64 = p.failures.values().sum();
        let pct = |q| f64::from(load::percentile(&p.latencies_us, q)) / 1e3;
        let cpu = |c: Option<Duration>| {
            c.map_or("-".into(), |c| {
                format!(
                    "{:.1} s ({:.0} %)",
                    c.as_secs_f64(),
                    100.0 * c.as_secs_f64() / p.elapsed.as_secs_f64().max(1e-9)
                )
            })
        };
        println!(
            "  {:<9} {:>9} {:>7} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>15} {:>15}",
            name,
            p.sent,
            failed,
            p.ok as f64 / p.elapsed.as_secs_f64().max(1e-9),
            pct(50.0),
            pct(99.0),
            p.latencies_us.last().map_or(0.0, |v| f64::from(*v) / 1e3),
            cpu(p.cpu),
            cpu(p.bench_cpu),
        );
        for (what, count) in p.failures.iter().take(5) {
            println!("      failed {count}×: {what}");
        }
    }
    let p99 = |p: &Phase| f64::from(load::percentile(&p.latencies_us, 99.0));
    let base = p99(&r.quiet);
    if base > 0.0 {
        println!(
            "  p99 delta with churn: {:+.1} % (the issue's target: ≤ 10 %)",
            (p99(&r.churn) - base) / base * 100.0
        );
    }
    let pu = &r.pushed;
    println!(
        "  pushes: {} sent in {:.1} s ({:.1}/s), half to the load targets' subsets; EDS responses ACKed {} by the phase's end, {} in all (one can carry several changes); last change ACKed {}; NACKs {}",
        pu.sent,
        pu.elapsed.as_secs_f64(),
        pu.sent as f64 / pu.elapsed.as_secs_f64().max(1e-9),
        pu.acked_at_end,
        pu.acked_responses,
        pu.last_acked_after
            .map_or(format!("not within {PUSH_DEADLINE:?}"), |d| format!(
                "{:.0} ms after the phase ended",
                ms(d)
            )),
        pu.nacks,
    );
    println!(
        "  requests answered by the replacement pods (@3, @4) during churn: {}",
        r.spares
    );
    let samples: Vec<String> = pu
        .rss
        .iter()
        .map(|(s, m)| format!("{s:.0} s {m:.0}"))
        .collect();
    if let (Some(first), Some(last)) = (pu.rss.first(), pu.rss.last()) {
        println!(
            "  waypoint RSS MiB during churn: {} (drift {:+.0} MiB)",
            samples.join(", "),
            last.1 - first.1
        );
    }
    if let (Some(before), Some(after)) = pu.heap {
        println!(
            "  waypoint heap MiB (allocated, /memory) at the phase's start and after its last ACK: {before:.0}, {after:.0} (drift {:+.1} MiB)",
            after - before
        );
    }
    if let (Some((_, rss0)), Some(heap0), (Some(rss), Some(heap))) =
        (pu.rss.first(), pu.heap.0, pu.settled)
    {
        println!(
            "  once settled (the trim after the last change): RSS {rss:.0} MiB (drift {:+.0}), heap {heap:.0} MiB (drift {:+.1})",
            rss - rss0,
            heap - heap0
        );
    }
    println!("  note: the load generator, the pods and the ADS server share this process (bench CPU) and the machine's cores; the waypoint is its own process. The test ADS server compares only what changed since a stream's last push (since 2026-12-06; before, every resource per push, ~17 ms at 5 000 services); the replaced pods' new tunnels (mTLS handshakes) are part of the churn phase's data-path cost");
}
