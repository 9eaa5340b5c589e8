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

/// The service the bench's requests go to (its VIP is 10.0.0.10:9080).
const SERVICE: &str = "reviews.default.svc.cluster.local";
const USER_AGENT: &str = "waypoint-bench";
const CLIENT_SA: &str = "bookinfo-productpage";

/// `n` authorization rules as AuthorizationPolicy documents attached to the waypoint (Gateway
/// `default/waypoint`): about 30 % in DENY policies, the rest in ALLOW policies, at most
/// `max(4, n/20)` rules a policy. No DENY rule matches the bench's request and only the last
/// rule of the last ALLOW policy allows it, so every rule is evaluated for every request.
/// Returns the YAML and the deciding policy's `NS/NAME` (None for `n == 0`).
fn authz_policies(n: usize) -> (String, Option<String>) {
    let deny = n * 3 / 10;
    let allow = n - deny;
    let per_policy = (n / 20).max(4);
    let mut yaml = String::new();
    let mut decider = None;
    for (action, count) in [("DENY", deny), ("ALLOW", allow)] {
        let policies = count.div_ceil(per_policy);
        for p in 0..policies {
            let name = format!("bench-{}-{p}", action.to_ascii_lowercase());
            let _ = write!(
                yaml,
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata:\n  name: {name}\n  namespace: default\nspec:\n  targetRefs:\n  \
                 - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: waypoint\n  \
                 action: {action}\n  rules:\n"
            );
            let first = p * per_policy;
            let last = ((p + 1) * per_policy).min(count);
            for i in first..last {
                let rule = if action == "DENY" {
                    deny_rule(i)
                } else if i + 1 == count {
                    decider = Some(format!("default/{name}"));
                    allowing_rule()
                } else {
                    allow_rule(i)
                };
                yaml.push_str(&rule);
            }
        }
    }
    (yaml, decider)
}

/// A DENY rule the bench's request never matches (three shapes: a source namespace and admin
/// paths; methods and paths; a principal prefix and a header condition).
fn deny_rule(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "  - from:\n    - source:\n        namespaces: [\"ns-{i}\", \"untrusted-{i}\"]\n    \
             to:\n    - operation:\n        paths: [\"/admin/{i}/*\", \"/debug/{i}\"]\n"
        ),
        1 => format!(
            "  - to:\n    - operation:\n        methods: [\"DELETE\", \"PUT\"]\n        \
             paths: [\"/reviews/{i}/*\"]\n"
        ),
        _ => format!(
            "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/attacker-{i}/sa/*\"]\n    \
             when:\n    - key: request.headers[x-debug-{i}]\n      values: [\"on\"]\n"
        ),
    }
}

/// An ALLOW rule that does not match the bench's request; two of the three shapes have a true
/// principal, so their permission is evaluated too.
fn allow_rule(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/default/sa/svc-{i}\"]\n    \
             to:\n    - operation:\n        methods: [\"GET\", \"HEAD\"]\n        paths: [\"/api/v{i}/*\"]\n"
        ),
        1 => format!(
            "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/default/sa/{CLIENT_SA}\"]\n    \
             to:\n    - operation:\n        methods: [\"GET\"]\n        paths: [\"/ratings/{i}*\", \"/details/{i}\"]\n"
        ),
        _ => format!(
            "  - from:\n    - source:\n        namespaces: [\"default\"]\n    \
             to:\n    - operation:\n        methods: [\"GET\"]\n        paths: [\"/reviews/*\"]\n    \
             when:\n    - key: request.headers[x-tenant]\n      values: [\"tenant-{i}\"]\n"
        ),
    }
}

/// The rule that allows the bench's request: principal and namespace, hosts, methods, a path
/// prefix, and the user agent in `when`.
fn allowing_rule() -> String {
    format!(
        "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/default/sa/{CLIENT_SA}\"]\n        \
         namespaces: [\"default\"]\n    to:\n    - operation:\n        \
         hosts: [\"reviews*\", \"{SERVICE}*\"]\n        methods: [\"GET\", \"HEAD\"]\n        \
         paths: [\"/reviews/*\", \"/reviews\"]\n    when:\n    - key: request.headers[user-agent]\n      \
         values: [\"{USER_AGENT}*\"]\n"
    )
}

/// The bookinfo snapshot with `n` generated rules, checked: every rule attached to the
/// reviews service and the bench's request allowed by the deciding policy.
fn authz_snapshot(n: usize) -> anyhow::Result<(Snapshot, Option<String>)> {
    let (yaml, decider) = authz_policies(n);
    let mut files: Vec<(String, String)> = BOOKINFO
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    if n > 0 {
        files.push(("bench-authz.yaml".into(), yaml));
    }
    let snapshot = routing::load_str(&files, TRUST_DOMAIN)
        .map_err(|e| anyhow::anyhow!("bookinfo with {n} authorization rules: {e}"))?;
    let set = snapshot.authorization().for_service(Some(SERVICE), true);
    let rules: usize = set.policies.iter().map(|p| p.rules.len()).sum();
    if rules != n {
        bail!("{n} rules generated, {rules} attached to {SERVICE}");
    }
    let verdict = set.evaluate(&BenchRequest::new()).verdict;
    let ok = match (&verdict, &decider) {
        (Verdict::NoPolicy, None) => true,
        (Verdict::Allowed { policy, .. }, Some(d)) => policy == d,
        _ => false,
    };
    if !ok {
        bail!("{n} rules: the bench's request gets {verdict:?}, expected an allow by {decider:?}");
    }
    Ok((snapshot, decider))
}

/// The bench's request as the waypoint's authorization reads it (GET /reviews/0 to
/// reviews:9080 with the bench's user agent, from the client identity of the bench).
struct BenchRequest {
    principal: String,
    source: IpAddr,
    destination: IpAddr,
}

impl BenchRequest {
    fn new() -> Self {
        Self {
            principal: SpiffeId::new(TRUST_DOMAIN, "default", CLIENT_SA).to_string(),
            source: IpAddr::from([127, 0, 0, 1]),
            destination: IpAddr::from([10, 0, 0, 10]),
        }
    }
}

impl AuthzView for BenchRequest {
    fn is_http(&self) -> bool {
        true
    }
    fn principal(&self) -> Option<&str> {
        Some(&self.principal)
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some(self.source)
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        Some(self.destination)
    }
    fn destination_port(&self) -> u16 {
        APP_PORT
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn host(&self) -> Option<&str> {
        Some(HOST)
    }
    fn path(&self) -> &str {
        PATH
    }
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match name {
            "user-agent" => Some(USER_AGENT.into()),
            "host" => Some(HOST.into()),
            _ => None,
        }
    }
}

struct EvalResult {
    rules: usize,
    policies: usize,
    decisions: u64,
    ns_per_decision: f64,
    /// Median ns of a decision made right after 32 MiB were written, so the policies are no
    /// longer in any CPU cache: what a request pays when the rest of the proxy's work evicted
    /// them.
    cold_ns_per_decision: f64,
    allocs_per_decision: f64,
}

/// Decisions measured cold (each after a cache-evicting sweep of [`COLD_SWEEP_BYTES`]).
const COLD_DECISIONS: usize = 200;
const COLD_SWEEP_BYTES: usize = 32 << 20;

/// Evaluate the bench's request against the reviews service's PolicySet for `n` rules, in a
/// loop bounded by `iterations` and `max`.
fn eval_alone(n: usize, iterations: u64, max: Duration) -> anyhow::Result<EvalResult> {
    let (snapshot, _) = authz_snapshot(n)?;
    let set = snapshot.authorization().for_service(Some(SERVICE), true);
    let req = BenchRequest::new();
    // Warm-up (caches, branch predictors), not measured.
    for _ in 0..iterations.min(1_000) {
        std::hint::black_box(set.evaluate(std::hint::black_box(&req)));
    }
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    COUNT_ALLOCS.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < iterations {
        for _ in 0..256 {
            std::hint::black_box(set.evaluate(std::hint::black_box(&req)));
        }
        done += 256;
        if t0.elapsed() >= max {
            break;
        }
    }
    let wall = t0.elapsed();
    COUNT_ALLOCS.store(false, Ordering::Relaxed);
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let mut sweep = vec![0u8; COLD_SWEEP_BYTES];
    let mut cold = Vec::with_capacity(COLD_DECISIONS);
    let t_cold = Instant::now();
    while cold.len() < COLD_DECISIONS && t_cold.elapsed() < max {
        for line in sweep.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&mut sweep);
        let t = Instant::now();
        std::hint::black_box(set.evaluate(std::hint::black_box(&req)));
        cold.push(t.elapsed().as_nanos() as f64);
    }
    Ok(EvalResult {
        rules: n,
        policies: set.policies.len(),
        decisions: done,
        ns_per_decision: wall.as_nanos() as f64 / done as f64,
        cold_ns_per_decision: median(cold),
        allocs_per_decision: allocs as f64 / done as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
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

impl RunResult {
    /// The scenario, or `authz:N` for a waypoint run with N authorization rules.
    fn label(&self) -> String {
        match self.authz_rules {
            Some(n) => format!("authz:{n}"),
            None => self.scenario.name().to_string(),
        }
    }
}

/// The authorization summary: per rule count and concurrency, medians over the rounds; the
/// ratios are taken within each round (against that round's 0-rule run at the same
/// concurrency, run next to it) and their median printed, so drift between rounds cancels. Then
/// the evaluation alone against the process's whole CPU per request.
fn print_authz(results: &[RunResult], counts: &[usize], evals: &[EvalResult]) {
    let mut levels: Vec<usize> = results.iter().map(|r| r.concurrency).collect();
    levels.dedup();
    println!(
        "\nauthorization, end to end (waypoint scenario; medians over rounds; × is the median of \
         per-round ratios against 0 rules at the same c, same run; ΔCPU is the median per-round \
         difference of the whole process's CPU per request):"
    );
    println!(
        "{:>6} {:>4} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>11}",
        "rules",
        "c",
        "rounds",
        "req/s",
        "p50",
        "p99",
        "CPU s/1k",
        "req/s×",
        "CPU×",
        "p50×",
        "p99×",
        "ΔCPU µs/req"
    );
    let runs = |n: usize, c: usize| -> Vec<&RunResult> {
        results
            .iter()
            .filter(|r| r.authz_rules == Some(n) && r.concurrency == c)
            .collect()
    };
    type Metric = fn(&RunResult) -> f64;
    let (rps, p50, p99, cpu): (Metric, Metric, Metric, Metric) = (
        |r| r.rps,
        |r| f64::from(r.p50_us),
        |r| f64::from(r.p99_us),
        |r| r.cpu_per_1k,
    );
    for &c in &levels {
        let base = runs(0, c);
        for &n in counts {
            let these = runs(n, c);
            if these.is_empty() {
                continue;
            }
            let abs = |f: Metric| median(these.iter().map(|r| f(r)).collect());
            let ratio = |f: Metric| {
                median(
                    these
                        .iter()
                        .zip(&base)
                        .map(|(r, b)| f(r) / f(b).max(1e-9))
                        .collect(),
                )
            };
            let delta_cpu = median(
                these
                    .iter()
                    .zip(&base)
                    .map(|(r, b)| (r.cpu_per_1k - b.cpu_per_1k) * 1000.0)
                    .collect(),
            );
            println!(
                "{:>6} {:>4} {:>6} {:>9.0} {:>9} {:>9} {:>9.4} {:>8.3} {:>7.3} {:>7.3} {:>7.3} {:>11.2}",
                n,
                c,
                these.len(),
                abs(rps),
                fmt_us(abs(p50).round() as u32),
                fmt_us(abs(p99).round() as u32),
                abs(cpu),
                ratio(rps),
                ratio(cpu),
                ratio(p50),
                ratio(p99),
                delta_cpu
            );
        }
    }
    // CPU s/1k is ms per request; the evaluation is ns per decision.
    println!("\nevaluation alone as a share of the whole process's CPU per request at 0 rules:");
    for &c in &levels {
        let cpu0_ns = median(runs(0, c).iter().map(|r| r.cpu_per_1k).collect()) * 1e6;
        let shares: Vec<String> = evals
            .iter()
            .filter(|e| e.rules > 0)
            .map(|e| {
                format!(
                    "{} rules {:.2}%",
                    e.rules,
                    100.0 * e.ns_per_decision / cpu0_ns
                )
            })
            .collect();
        println!(
            "  c={c}: {:.1} µs CPU per request at 0 rules; {}",
            cpu0_ns / 1000.0,
            shares.join(", ")
        );
    }
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
