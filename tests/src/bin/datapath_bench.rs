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
//!   with the access log off (`--access-log-sample-rate 0`) for the access-log comparison.
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
    /// `--threads` of the waypoint (default: its own, one per CPU).
    #[arg(long)]
    waypoint_threads: Option<usize>,
    /// Record a `perf` profile of the waypoint during an extra, unmeasured max-rate L7 run and
    /// print its top symbols.
    #[arg(long)]
    perf: bool,
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
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process, killed (SIGKILL via `Child::kill`) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` with stderr piped: a thread copies every line to `log` and hands the lines
/// announcing `<prefix> … listening on <addr>` to the caller, who waits for `want` of them
/// (bounded: 30 s). Returns the announced `(what, addr)` pairs.
fn spawn(
    name: &'static str,
    cmd: &mut Command,
    log: &Path,
    stdout: Stdio,
    want: usize,
) -> anyhow::Result<(Proc, BTreeMap<String, SocketAddr>)> {
    let mut child = cmd
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))?;
    let stderr = child.stderr.take().context("stderr piped")?;
    let proc = Proc { name, child };
    let (tx, rx) = std::sync::mpsc::channel();
    let mut file = std::fs::File::create(log)?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if let Some((what, addr)) = line.split_once(" listening on ") {
                if let Ok(addr) = addr.trim().parse::<SocketAddr>() {
                    let _ = tx.send((what.to_string(), addr));
                }
            }
        }
    });
    let mut addrs = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while addrs.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((what, addr)) => {
                addrs.insert(what, addr);
            }
            Err(_) => bail!(
                "{name} did not announce its listeners within 30 s (see {})",
                log.display()
            ),
        }
    }
    Ok((proc, addrs))
}

fn find(addrs: &BTreeMap<String, SocketAddr>, what: &str) -> anyhow::Result<SocketAddr> {
    addrs
        .get(what)
        .copied()
        .with_context(|| format!("no listener {what:?} announced (have {addrs:?})"))
}

/// utime + stime of every thread of `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat without ')'")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime + stime) as f64 / hz)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The hop's counters line (`h2_connections=… tunnels=… failed=…`) as a map.
fn hop_counters(stats: SocketAddr) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut tcp = std::net::TcpStream::connect(stats)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    tcp.read_to_string(&mut line)?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The mesh
// ---------------------------------------------------------------------------------------------

struct Mesh {
    dir: PathBuf,
    originator: Proc,
    terminator: Proc,
    waypoint: Proc,
    waypoint_nolog: Proc,
    terminator_stats: SocketAddr,
    originator_stats: SocketAddr,
    /// Originator listeners by route: l4, l7, l7nolog, grpc.
    routes: BTreeMap<String, SocketAddr>,
    _app: sim::AppHandle,
}

/// bookinfo-like: reviews (HTTP, VIP 10.0.0.10:9080) with a DestinationRule's subsets and a
/// VirtualService routing /reviews to v1; an h2c/gRPC service (VIP 10.0.0.11:9090); one
/// endpoint for both, the app, whose node is the terminator.
fn config_yaml(pod_ip: IpAddr, app_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.0.0.10]
  ports:
  - {{number: 9080, name: http, targetPort: {app_port}}}
  workloadSelector:
    labels: {{app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo-grpc, namespace: default}}
spec:
  hosts: [echo-grpc.default.svc.cluster.local]
  addresses: [10.0.0.11]
  ports:
  - {{number: 9090, name: grpc, targetPort: {app_port}}}
  workloadSelector:
    labels: {{bench: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1, namespace: default}}
spec:
  address: {pod_ip}
  serviceAccount: bookinfo-reviews
  labels: {{app: reviews, version: v1, bench: echo}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: reviews-v1
    match:
    - uri: {{prefix: /reviews}}
    route:
    - destination: {{host: reviews, subset: v1}}
"#
    )
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(name))
}

impl Mesh {
    async fn start(args: &Args) -> anyhow::Result<Mesh> {
        let dir = std::env::temp_dir().join(format!("datapath-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config"))?;
        let ca = Ca::new("datapath-bench")?;
        for sa in ["waypoint", "productpage", "bookinfo-reviews"] {
            ca.issue(&spiffe(sa))?
                .write_to(&dir.join("certs").join(sa))?;
        }
        let app = sim::start_app(SocketAddr::new(args.pod_ip, 0), "reviews-v1", AppKind::Http)
            .await
            .with_context(|| format!("starting the app on {}", args.pod_ip))?;
        std::fs::write(
            dir.join("config/bench.yaml"),
            config_yaml(args.pod_ip, app.addr.port()),
        )?;
        let hop = match &args.hop_bin {
            Some(p) => p.clone(),
            None => sibling("hbone_hop")?,
        };
        let wp = match &args.waypoint_bin {
            Some(p) => p.clone(),
            None => sibling("waypoint")?,
        };
        for bin in [&hop, &wp] {
            if !bin.exists() {
                bail!(
                    "{} not found: build it first (cargo build --release -p waypoint --bin \
                     waypoint; cargo build --release -p waypoint-tests --bin hbone_hop) or pass \
                     --waypoint-bin/--hop-bin",
                    bin.display()
                );
            }
        }

        let (terminator, t_addrs) = spawn(
            "terminator",
            Command::new(&hop)
                .arg("--certs")
                .arg(dir.join("certs/bookinfo-reviews"))
                .args(["--threads", &args.hop_threads.to_string()])
                .args(["terminate", "--listen"])
                .arg(SocketAddr::new(args.pod_ip, 0).to_string()),
            &dir.join("terminator.log"),
            Stdio::null(),
            2,
        )?;
        let hbone = find(&t_addrs, "hop hbone")?;
        let terminator_stats = find(&t_addrs, "hop stats")?;

        let waypoint_cmd = |sample_rate: &str| {
            let mut cmd = Command::new(&wp);
            cmd.args(["run", "--listen", "127.0.0.1:0", "--config"])
                .arg(dir.join("config"))
                .arg("--cert-chain")
                .arg(dir.join("certs/waypoint/cert-chain.pem"))
                .arg("--key")
                .arg(dir.join("certs/waypoint/key.pem"))
                .arg("--trust-bundle")
                .arg(dir.join("certs/waypoint/root-cert.pem"))
                .args(["--upstream-hbone-port", &hbone.port().to_string()])
                .args(["--access-log-sample-rate", sample_rate])
                .args(["--admin-listen", "127.0.0.1:0"])
                .args(["--stats-listen", "127.0.0.1:0"])
                .args(["--health-listen", "127.0.0.1:0"])
                .args(["--drain-seconds", "1", "--log", "info"]);
            if let Some(t) = args.waypoint_threads {
                cmd.args(["--threads", &t.to_string()]);
            }
            cmd
        };
        // The access log goes to stdout, here a file (what a container runtime reads).
        let access_log = std::fs::File::create(dir.join("access.log"))?;
        let (waypoint, w_addrs) = spawn(
            "waypoint",
            &mut waypoint_cmd("1"),
            &dir.join("waypoint.log"),
            Stdio::from(access_log),
            4,
        )?;
        let (waypoint_nolog, n_addrs) = spawn(
            "waypoint (access log off)",
            &mut waypoint_cmd("0"),
            &dir.join("waypoint-nolog.log"),
            Stdio::null(),
            4,
        )?;
        let wp_id = spiffe("waypoint").to_string();
        let pod_id = spiffe("bookinfo-reviews").to_string();
        let app_target = SocketAddr::new(args.pod_ip, app.addr.port());
        let route = |name: &str, next: SocketAddr, id: &str, target: &str| {
            format!("{name}=127.0.0.1:0,{next},{id},{target}")
        };
        let (originator, routes) = spawn(
            "originator",
            Command::new(&hop)
                .arg("--certs")
                .arg(dir.join("certs/productpage"))
                .args(["--threads", &args.hop_threads.to_string()])
                .arg("originate")
                .args([
                    "--route",
                    &route("l4", hbone, &pod_id, &app_target.to_string()),
                    "--route",
                    &route("l7", find(&w_addrs, "waypoint")?, &wp_id, "10.0.0.10:9080"),
                    "--route",
                    &route(
                        "l7nolog",
                        find(&n_addrs, "waypoint")?,
                        &wp_id,
                        "10.0.0.10:9080",
                    ),
                    "--route",
                    &route(
                        "grpc",
                        find(&w_addrs, "waypoint")?,
                        &wp_id,
                        "10.0.0.11:9090",
                    ),
                ]),
            &dir.join("originator.log"),
            Stdio::null(),
            5,
        )?;
        let originator_stats = find(&routes, "hop stats")?;
        let routes = routes
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("hop ")?.to_string(), v)))
            .collect();
        Ok(Mesh {
            dir,
            originator,
            terminator,
            waypoint,
            waypoint_nolog,
            terminator_stats,
            originator_stats,
            routes,
            _app: app,
        })
    }

    fn route(&self, name: &str) -> anyhow::Result<SocketAddr> {
        find(&self.routes, name)
    }

    fn procs(&self) -> [&Proc; 4] {
        [
            &self.originator,
            &self.waypoint,
            &self.waypoint_nolog,
            &self.terminator,
        ]
    }

    fn cpu(&self) -> anyhow::Result<[f64; 5]> {
        let mut out = [0.0; 5];
        for (slot, p) in out.iter_mut().zip(self.procs()) {
            *slot = cpu_seconds(p.pid())
                .with_context(|| format!("CPU time of the {} (pid {})", p.name, p.pid()))?;
        }
        out[4] = cpu_seconds(std::process::id())?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Load {
    /// `n` connections, each sending as fast as its answers come.
    Max(usize),
    /// `conns` connections sharing `rate` req/s, each on its own schedule.
    Paced { conns: usize, rate: u64 },
}

impl Load {
    fn conns(self) -> usize {
        match self {
            Load::Max(n) => n,
            Load::Paced { conns, .. } => conns,
        }
    }
}

async fn http1(addr: SocketAddr) -> anyhow::Result<Http1> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// One measured run: per-process CPU per 1000 requests, RSS, throughput, latency.
struct Run {
    label: String,
    ok: u64,
    failures: BTreeMap<String, u64>,
    wall: Duration,
    p50_us: u32,
    p99_us: u32,
    /// ms of CPU per 1000 requests: originator, waypoint, waypoint (log off), terminator, this
    /// program (load generator and app).
    cpu_ms_per_1k: [f64; 5],
    rss_kib: [u64; 4],
    /// Which waypoint carried the run: 1 (log on), 2 (log off); 0 for L4.
    waypoint: usize,
}

impl Run {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    /// CPU per request of the waypoint that carried this run (log on or off).
    fn waypoint_cpu(&self) -> f64 {
        self.cpu_ms_per_1k
            .get(self.waypoint)
            .copied()
            .unwrap_or(f64::NAN)
    }
    fn hops_cpu(&self) -> f64 {
        self.cpu_ms_per_1k[0] + self.cpu_ms_per_1k[3]
    }
}

async fn run(
    mesh: &Mesh,
    label: &str,
    route: &str,
    load: Load,
    requests: usize,
    args: &Args,
) -> anyhow::Result<Run> {
    let addr = mesh.route(route)?;
    let conns = load.conns().max(1);
    let barrier = Arc::new(Barrier::new(conns + 1));
    let max = Duration::from_secs(args.run.max_seconds);
    let warmup = (args.run.warmup / conns).max(1);
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let share = requests / conns + usize::from(i < requests % conns);
        let pace = match load {
            Load::Paced { conns, rate } => {
                Some(Duration::from_secs_f64(conns as f64 / rate.max(1) as f64))
            }
            Load::Max(_) => None,
        };
        tasks.push(tokio::spawn(worker(
            move || http1(addr),
            GET,
            warmup,
            share,
            max,
            pace,
            barrier.clone(),
        )));
    }
    barrier.wait().await;
    let cpu0 = mesh.cpu()?;
    let start = Instant::now();
    barrier.wait().await;
    let mut outs = Vec::with_capacity(conns);
    for t in tasks {
        outs.push(t.await?);
    }
    let wall = start.elapsed();
    let cpu1 = mesh.cpu()?;
    let mut lat = Vec::with_capacity(requests);
    let mut ok = 0;
    let mut failures = BTreeMap::new();
    for o in outs {
        lat.extend_from_slice(&o.latencies_us);
        ok += o.ok;
        for (k, v) in o.failures {
            *failures.entry(k).or_default() += v;
        }
    }
    lat.sort_unstable();
    let per_1k = |i: usize| {
        if ok == 0 {
            f64::NAN
        } else {
            (cpu1[i] - cpu0[i]).max(0.0) * 1e6 / ok as f64
        }
    };
    let p = mesh.procs();
    let r = Run {
        label: label.to_string(),
        ok,
        failures,
        wall,
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        cpu_ms_per_1k: [per_1k(0), per_1k(1), per_1k(2), per_1k(3), per_1k(4)],
        rss_kib: [
            rss_kib(p[0].pid()),
            rss_kib(p[1].pid()),
            rss_kib(p[2].pid()),
            rss_kib(p[3].pid()),
        ],
        waypoint: match route {
            "l7" => 1,
            "l7nolog" => 2,
            _ => 0,
        },
    };
    eprintln!(
        "  done: {:<22} {:>7} ok {:>8.0} req/s p50 {}µs",
        r.label,
        r.ok,
        r.rps(),
        r.p50_us
    );
    Ok(r)
}

/// gRPC: `requests` unary calls over one h2c connection through the originator's `grpc` route
/// (→ waypoint → terminator → app), `streams` at a time. Returns (ok, CONNECTs the terminator
/// accepted meanwhile).
async fn grpc(
    mesh: &Mesh,
    requests: usize,
    streams: usize,
    max: Duration,
) -> anyhow::Result<(u64, u64, BTreeMap<String, u64>)> {
    let before = hop_counters(mesh.terminator_stats)?;
    let tcp = TcpStream::connect(mesh.route("grpc")?).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let deadline = Instant::now() + max;
    let streams = streams.max(1);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let share = requests / streams + usize::from(i < requests % streams);
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let mut failures = BTreeMap::new();
            for _ in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                // One gRPC message: uncompressed, 5 bytes of payload.
                let body = Bytes::from_static(&[0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
                let req = http::Request::post("http://echo-grpc:9090/bench.Echo/Call")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(body))
                    .expect("static request");
                let resp =
                    match tokio::time::timeout(PER_REQUEST_TIMEOUT, send.send_request(req)).await {
                        Ok(Ok(resp)) => resp,
                        Ok(Err(e)) => {
                            record(&mut failures, format!("gRPC: {e}"));
                            continue;
                        }
                        Err(_) => {
                            record(&mut failures, "gRPC: timeout".into());
                            continue;
                        }
                    };
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => ok += 1,
                    Ok(_) => record(&mut failures, format!("gRPC: HTTP {status}")),
                    Err(e) => record(&mut failures, format!("gRPC body: {e}")),
                }
            }
            (ok, failures)
        }));
    }
    let mut ok = 0;
    let mut failures = BTreeMap::new();
    for t in tasks {
        let (n, f) = t.await?;
        ok += n;
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
    }
    let after = hop_counters(mesh.terminator_stats)?;
    let tunnels =
        after.get("tunnels").copied().unwrap_or(0) - before.get("tunnels").copied().unwrap_or(0);
    Ok((ok, tunnels, failures))
}

/// Open `n` tunnels through the waypoint (originator route l7; one request each, at most 64
/// being opened at a time) and hold them. Returns the tunnels held (their connections) and how
/// many made it.
async fn open_idle(mesh: &Mesh, n: usize, max: Duration) -> anyhow::Result<Vec<Http1>> {
    let addr = mesh.route("l7")?;
    let deadline = Instant::now() + max;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        if Instant::now() >= deadline {
            break;
        }
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut s = http1(addr).await.ok()?;
            GET.send(&mut s).await.ok()?;
            Some(s)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Some(s) = t.await? {
            held.push(s);
        }
    }
    Ok(held)
}

/// `perf record` of the waypoint during an unmeasured max-rate L7 run; the top symbols.
async fn profile(mesh: &Mesh, args: &Args) -> anyhow::Result<String> {
    let data = mesh.dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &mesh.waypoint.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(mesh.dir.join("perf-record.log"))?)
        .spawn()
        .context("starting perf record")?;
    // perf opens its events before it says anything; give it its start-up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = run(
        mesh,
        "perf (not measured)",
        "l7",
        Load::Max(args.connections),
        args.run.requests,
        args,
    )
    .await;
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let status = perf.wait()?;
    r?;
    if !status.success() && !data.exists() {
        let log = std::fs::read_to_string(mesh.dir.join("perf-record.log")).unwrap_or_default();
        bail!("perf record failed: {}", log.trim());
    }
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim_end().trim_end_matches([' ', '-']))
        .take(30)
        .collect::<Vec<_>>()
        .join("\n"))
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
    let l4_p = run(
        &mesh,
        &format!("L4 {} req/s", args.rate),
        "l4",
        paced,
        pr,
        &args,
    )
    .await?;
    let l7_p = run(
        &mesh,
        &format!("L7 {} req/s", args.rate),
        "l7",
        paced,
        pr,
        &args,
    )
    .await?;
    let mut log_on = vec![];
    let mut log_off = vec![];
    for round in 0..args.access_log_rounds {
        let off = format!("L7 c={c} log off #{}", round + 1);
        log_off.push(run(&mesh, &off, "l7nolog", Load::Max(c), n, &args).await?);
        let on = format!("L7 c={c} log on #{}", round + 1);
        log_on.push(run(&mesh, &on, "l7", Load::Max(c), n, &args).await?);
    }
    let l7_p_off = run(
        &mesh,
        &format!("L7 {} req/s log off", args.rate),
        "l7nolog",
        paced,
        pr,
        &args,
    )
    .await?;

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
    let mut all: Vec<&Run> = vec![&l4_1, &l7_1, &l4_c, &l7_c, &l4_p, &l7_p];
    all.extend(log_off.iter());
    all.extend(log_on.iter());
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
        "  waypoint RSS at {} req/s      {rss:.1} MiB   target ≤ 20 MiB   {}",
        args.rate,
        verdict(rss <= 20.0)
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
