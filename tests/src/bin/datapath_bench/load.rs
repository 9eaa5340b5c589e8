//! The load: HTTP/1.1 keep-alive runs at max rate or paced, gRPC calls, idle tunnels, the perf
//! profile.

use super::*;

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub(super) enum Load {
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
pub(super) struct Run {
    pub(super) label: String,
    pub(super) ok: u64,
    pub(super) failures: BTreeMap<String, u64>,
    pub(super) wall: Duration,
    pub(super) p50_us: u32,
    pub(super) p99_us: u32,
    /// ms of CPU per 1000 requests: originator, waypoint, waypoint (log off), terminator, this
    /// program (load generator and app).
    pub(super) cpu_ms_per_1k: [f64; 5],
    pub(super) rss_kib: [u64; 4],
    /// Of the waypoint's (process 1), its executable's resident code.
    pub(super) waypoint_code_kib: u64,
    /// Which waypoint carried the run: 1 (log on), 2 (log off); 0 for L4.
    pub(super) waypoint: usize,
}

impl Run {
    pub(super) fn rps(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    /// CPU per request of the waypoint that carried this run (log on or off).
    pub(super) fn waypoint_cpu(&self) -> f64 {
        self.cpu_ms_per_1k
            .get(self.waypoint)
            .copied()
            .unwrap_or(f64::NAN)
    }
    pub(super) fn hops_cpu(&self) -> f64 {
        self.cpu_ms_per_1k[0] + self.cpu_ms_per_1k[3]
    }
}

pub(super) async fn run(
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
        waypoint_code_kib: code_kib(p[1].pid()),
        waypoint: match route {
            "l7" | "tcp" => 1,
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
pub(super) async fn grpc(
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
pub(super) async fn open_idle(mesh: &Mesh, n: usize, max: Duration) -> anyhow::Result<Vec<Http1>> {
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
pub(super) async fn profile(mesh: &Mesh, args: &Args) -> anyhow::Result<String> {
    let data = mesh.dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args([
            "record",
            "-F",
            "999",
            "--call-graph",
            &args.perf_call_graph,
            "-o",
        ])
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
