//! Part 2: push latency through the real binary: the waypoint process, the pods behind each pushed
//! service, first 200 and ACK timing.

pub(super) use super::probe::{answered_by, first_200, try_get};
use super::*;

// ---------------------------------------------------------------------------------------------
// Part 2: push latency through the real binary
// ---------------------------------------------------------------------------------------------

/// The simulated pods behind every pushed service (subset v1 at @1, v2 at @2; the churn run's
/// replacements at @3 and @4), and the client. Each app answers with its name, so a response
/// tells which pod (and subset) served it.
pub(super) struct Destination {
    pub(super) net: Net,
    pub(super) ca: Ca,
    pub(super) certs: PathBuf,
    pub(super) apps: Vec<sim::AppHandle>,
    pub(super) _pods: Vec<sim::PodHandle>,
}

impl Destination {
    pub(super) async fn start() -> anyhow::Result<Destination> {
        let net = Net::new();
        let ca = Ca::new("xds bench mesh")?;
        let certs = std::env::temp_dir().join(format!("waypoint-xds-bench-{}", std::process::id()));
        std::fs::create_dir_all(&certs)?;
        ca.issue(&spiffe("waypoint"))?.write_to(&certs)?;
        let mut apps = Vec::new();
        let mut pods = Vec::new();
        for (host, name) in [
            (1, POD_NAMES[0]),
            (2, POD_NAMES[1]),
            (3, POD_NAMES[2]),
            (4, POD_NAMES[3]),
        ] {
            let ip = net.ip(host);
            apps.push(sim::start_app(SocketAddr::new(ip, PORT), name, sim::AppKind::Http).await?);
            let cert = ca.issue(&spiffe("bench-pushed"))?;
            pods.push(sim::start_pod(SocketAddr::new(ip, 15008), &cert.workload).await?);
        }
        Ok(Destination {
            net,
            ca,
            certs,
            apps,
            _pods: pods,
        })
    }

    /// The pods of a pushed service: v1, v2.
    pub(super) fn pods(&self) -> Vec<IpAddr> {
        vec![self.net.ip(1), self.net.ip(2)]
    }

    /// Pods that also serve, to replace v1's and v2's in an endpoint change.
    pub(super) fn spare(&self) -> Vec<IpAddr> {
        vec![self.net.ip(3), self.net.ip(4)]
    }
}

/// The apps' names at @1..@4 (what [`sim::Echo::pod`] answers).
pub(super) const POD_NAMES: [&str; 4] = ["pushed-v1", "pushed-v2", "pushed-v1b", "pushed-v2b"];

/// A spawned `waypoint`, killed (by its own pid) when dropped.
pub(super) struct WaypointProcess {
    pub(super) child: Child,
    pub(super) hbone: SocketAddr,
    pub(super) admin: SocketAddr,
    /// The last lines of its stderr, for error messages.
    pub(super) tail: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for WaypointProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("  note: could not kill waypoint {}: {e}", self.child.id());
            }
            let _ = self.child.wait();
        }
    }
}

impl WaypointProcess {
    pub(super) fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub(super) fn rss_mib(&self) -> Option<f64> {
        status_kib_of(&self.child.id().to_string(), "VmRSS")
            .ok()
            .map(|k| k as f64 / 1024.0)
    }
}

pub(super) fn waypoint_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.waypoint {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .join("waypoint"),
    };
    if !path.is_file() {
        bail!(
            "the waypoint binary is not at {} — build it into the same target dir:\n  \
             cargo build --release -p waypoint --bin waypoint\n\
             (or pass --waypoint PATH, or --no-push to skip the push-latency part)",
            path.display()
        );
    }
    Ok(path)
}

pub(super) async fn spawn_waypoint(
    exe: &Path,
    server: &AdsServer,
    dir: &Path,
) -> anyhow::Result<WaypointProcess> {
    let mut cmd = waypoint_tests::xds_run_command(exe, &server.address(), dir, "waypoint-bench-0");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))?;
    let stderr = child.stderr.take().context("waypoint stderr")?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let tail = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(found) = announced(&line) {
                    let _ = tx.send(found);
                }
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
    }
    let mut process = WaypointProcess {
        child,
        hbone: SocketAddr::from(([0, 0, 0, 0], 0)),
        admin: SocketAddr::from(([0, 0, 0, 0], 0)),
        tail,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut hbone, mut admin) = (None, None);
    while hbone.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((what, addr))) if what == "hbone" => hbone = Some(addr),
            Ok(Some((what, addr))) if what == "admin" => admin = Some(addr),
            Ok(Some(_)) => {}
            _ => bail!(
                "the waypoint did not announce its listeners:\n{}",
                process.tail()
            ),
        }
    }
    process.hbone = hbone.unwrap_or(process.hbone);
    process.admin = admin.unwrap_or(process.admin);
    Ok(process)
}

/// `waypoint [<what>] listening on <addr>` (the HBONE one has no `<what>`).
pub(super) fn announced(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.trim().strip_prefix("waypoint ")?;
    let (what, addr) = match rest.strip_prefix("listening on ") {
        Some(addr) => ("hbone", addr),
        None => rest.split_once(" listening on ")?,
    };
    Some((what.to_string(), addr.parse().ok()?))
}

pub(super) async fn admin_status(admin: SocketAddr, path: &str) -> Option<u16> {
    admin_get(admin, path).await.map(|(status, _)| status)
}

/// `GET path` on the admin port: the status and the raw response (head and body).
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// The heap the waypoint's allocator has handed out, MiB: `/memory`'s `allocated` (jemalloc's
/// `stats.allocated`, rendered as Envoy's `Memory`, a 64-bit integer as a JSON string). Unlike
/// RSS it leaves out the pages the allocator keeps after a free: the live heap.
pub(super) async fn heap_mib(admin: SocketAddr) -> Option<f64> {
    let (status, text) = admin_get(admin, "/memory").await?;
    if status != 200 {
        return None;
    }
    let after = &text[text.find("\"allocated\"")? + "\"allocated\"".len()..];
    let digits: String = after
        .trim_start_matches([':', ' ', '"'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<u64>().ok().map(|b| b as f64 / 1048576.0)
}

/// `waypoint_memory_trims_total` from the admin's Prometheus page (0 when absent: a waypoint
/// built before the trim).
pub(super) async fn trims(admin: SocketAddr) -> u64 {
    let Some((200, text)) = admin_get(admin, "/stats/prometheus").await else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("waypoint_memory_trims_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The waypoint's RSS once it has returned its freed pages after the last change (its trim
/// count passed `since`), or after 3 s (a waypoint without the trim).
pub(super) async fn settled_rss(waypoint: &WaypointProcess, since: u64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while trims(waypoint.admin).await <= since && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waypoint.rss_mib()
}

pub(super) struct PushRow {
    pub(super) n: usize,
    pub(super) startup: Duration,
    pub(super) rss_mib: Option<f64>,
    /// RSS at ready once the freed pages went back ([`settled_rss`]).
    pub(super) rss_settled: Option<f64>,
    /// The live heap at the same moment ([`heap_mib`]).
    pub(super) heap_mib: Option<f64>,
    /// RSS and live heap after the pushes.
    pub(super) rss_after: Option<f64>,
    pub(super) heap_after: Option<f64>,
    /// New service: to the first 200, to the LDS ACK.
    pub(super) first_200: Vec<Duration>,
    pub(super) new_ack: Vec<Duration>,
    pub(super) attempts: Vec<u32>,
    /// Weight-only change of an existing route (100/0 ⇄ 0/100): to the first answer from the
    /// newly weighted subset, polls until then, to the LDS ACK.
    pub(super) weight_seen: Vec<Duration>,
    pub(super) weight_polls: Vec<u32>,
    pub(super) weight_ack: Vec<Duration>,
}

/// An ADS server serving `services`, and the waypoint spawned against it once it is ready and
/// has ACKed the listeners.
pub(super) struct Served {
    pub(super) server: Arc<AdsServer>,
    pub(super) waypoint: WaypointProcess,
    /// Spawn → `/ready` 200.
    pub(super) startup: Duration,
}

pub(super) async fn serve(
    tpl: &Template,
    services: &[ServiceXds],
    exe: &Path,
    dst: &Destination,
) -> anyhow::Result<Served> {
    let n = services.len();
    let pki = TestPki::new();
    let server = Arc::new(
        AdsServer::start(
            "127.0.0.1:0".parse()?,
            &pki,
            AdsServerOptions::with_token(TOKEN),
        )
        .await?,
    );
    std::fs::write(dst.certs.join("istiod-root.pem"), pki.root_pem())?;
    std::fs::write(dst.certs.join("token"), TOKEN)?;

    let world = tpl.resources(services);
    let mut lds = String::new();
    for l in &world.listeners {
        lds = server.set(type_url::LISTENER, &l.name, any(l));
    }
    for c in &world.clusters {
        server.set(type_url::CLUSTER, &c.name, any(c));
    }
    for e in &world.endpoints {
        server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, &e.cluster_name, any(e));
    }
    drop(world);

    let started = Instant::now();
    let waypoint = spawn_waypoint(exe, &server, &dst.certs).await?;
    let ready_deadline = Duration::from_secs(120);
    while admin_status(waypoint.admin, "/ready").await != Some(200) {
        if started.elapsed() > ready_deadline {
            bail!(
                "N={n}: the waypoint was not ready within {ready_deadline:?}:\n{}",
                waypoint.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let startup = started.elapsed();
    // A waypoint before the sixteenth xDS round answered `/memory` through a descriptor pool it
    // decoded for each answer, which left about 20 MiB of freed pages resident until the next
    // trim: asked once here, before the first trim, so that an older binary's settled RSS is
    // read after those pages went back (today's answers allocate next to nothing).
    let _ = heap_mib(waypoint.admin).await;
    if !server
        .wait_for_ack(type_url::LISTENER, &lds, Duration::from_secs(30))
        .await
    {
        bail!(
            "N={n}: the initial listeners were never ACKed; NACKs: {:?}",
            server.nacks()
        );
    }
    Ok(Served {
        server,
        waypoint,
        startup,
    })
}

pub(super) async fn measure_push(
    tpl: &Template,
    n: usize,
    args: &Args,
    exe: &Path,
    dst: &Destination,
) -> anyhow::Result<PushRow> {
    let mut services = baseline(tpl, n, args.endpoints);
    let Served {
        server,
        waypoint,
        startup,
    } = serve(tpl, &services, exe, dst).await?;
    let rss_mib = waypoint.rss_mib();
    let heap_mib = heap_mib(waypoint.admin).await;
    let rss_settled = settled_rss(&waypoint, 0).await;
    eprintln!(
        "  N={n}: waypoint ready {:.0} ms after spawn, RSS {:.0} MiB ({:.0} settled), heap {:.0} MiB",
        ms(startup),
        rss_mib.unwrap_or(0.0),
        rss_settled.unwrap_or(0.0),
        heap_mib.unwrap_or(0.0)
    );

    let client = sim::ZtunnelClient::new(
        dst.ca.issue(&spiffe("productpage"))?.workload,
        waypoint.hbone,
        spiffe("waypoint"),
    );
    // Warm the client's mTLS connection to the waypoint (a VIP nothing serves yet).
    let warm = SocketAddr::new(IpAddr::V4(vip(n + args.pushes)), PORT);
    let _ = try_get(&client, warm, "warm-up:9080").await;

    let mut row = PushRow {
        n,
        startup,
        rss_mib,
        rss_settled,
        heap_mib,
        rss_after: None,
        heap_after: None,
        first_200: Vec::new(),
        new_ack: Vec::new(),
        attempts: Vec::new(),
        weight_seen: Vec::new(),
        weight_polls: Vec::new(),
        weight_ack: Vec::new(),
    };
    for p in 0..args.pushes {
        let spec = Spec {
            name: format!("pushed-{p}"),
            vip: vip(n + p),
            pods: dst.pods(),
            weights: [50, 50],
        };
        let svc = tpl.service(&spec);
        let clusters: Vec<(String, Any)> = svc
            .clusters
            .iter()
            .map(|c| (c.name.clone(), any(c)))
            .collect();
        let assignments: Vec<(String, Any)> = svc
            .assignments
            .iter()
            .map(|e| (e.cluster_name.clone(), any(e)))
            .collect();
        services.push(svc);
        let listener = any(&tpl.main_internal(services.iter()));
        let vip = SocketAddr::new(IpAddr::V4(spec.vip), PORT);
        let host = format!("{}:{PORT}", spec.name);

        // CDS, EDS, LDS back to back (microseconds apart), as istiod orders them.
        let t0 = Instant::now();
        for (name, a) in clusters {
            server.set(type_url::CLUSTER, &name, a);
        }
        for (name, a) in assignments {
            server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, &name, a);
        }
        let version = server.set(type_url::LISTENER, "main_internal", listener);
        let ack = ack_timer(server.clone(), version, t0);
        let (took, attempts) = first_200(&client, vip, &host, t0)
            .await
            .with_context(|| format!("N={n} push {p}:\n{}", waypoint.tail()))?;
        row.first_200.push(took);
        row.attempts.push(attempts);
        row.new_ack.push(ack.await??);
    }

    // Weight flips of the first pushed service (v1 at @1, v2 at @2, both serving): 100/0 first,
    // untimed, until v1 answers and the listener is ACKed; then 0/100 and back, each timed to the
    // first answer from the newly weighted pod. With all weight on one subset, one answer
    // decides.
    let flip = services.len() - args.pushes;
    let mut spec = Spec {
        name: "pushed-0".into(),
        vip: vip(n),
        pods: dst.pods(),
        weights: [100, 0],
    };
    let target = SocketAddr::new(IpAddr::V4(spec.vip), PORT);
    let host = format!("{}:{PORT}", spec.name);
    for p in 0..=args.pushes {
        if p > 0 {
            spec.weights = if p % 2 == 1 { [0, 100] } else { [100, 0] };
        }
        let expect = if spec.weights[0] > 0 {
            POD_NAMES[0]
        } else {
            POD_NAMES[1]
        };
        services[flip].chain = tpl.chain(&spec);
        let listener = any(&tpl.main_internal(services.iter()));
        let t0 = Instant::now();
        let version = server.set(type_url::LISTENER, "main_internal", listener);
        let ack = ack_timer(server.clone(), version, t0);
        let (seen, polls) = answered_by(&client, target, &host, expect, t0)
            .await
            .with_context(|| format!("N={n} weight flip {p}:\n{}", waypoint.tail()))?;
        let acked = ack.await??;
        if p > 0 {
            row.weight_seen.push(seen);
            row.weight_polls.push(polls);
            row.weight_ack.push(acked);
        }
    }
    if !server.nacks().is_empty() {
        eprintln!("  note: N={n}: NACKs: {:?}", server.nacks());
    }
    // After the pushes: what a waypoint holds once nothing is in flight and the freed pages
    // went back (at ready it also holds the initial sync's last response, freed when the next
    // one arrives).
    let since = trims(waypoint.admin).await;
    row.rss_after = settled_rss(&waypoint, since).await;
    row.heap_after = self::heap_mib(waypoint.admin).await;
    drop(waypoint);
    server.stop().await;
    Ok(row)
}

/// Time from `t0` to the ACK of `version` of the listeners.
pub(super) fn ack_timer(
    server: Arc<AdsServer>,
    version: String,
    t0: Instant,
) -> tokio::task::JoinHandle<anyhow::Result<Duration>> {
    tokio::spawn(async move {
        if server
            .wait_for_ack(type_url::LISTENER, &version, PUSH_DEADLINE)
            .await
        {
            Ok(t0.elapsed())
        } else {
            bail!(
                "listener version {version} not ACKed within {PUSH_DEADLINE:?}; NACKs: {:?}",
                server.nacks()
            )
        }
    })
}

pub(super) fn print_push(rows: &[PushRow], pushes: usize) {
    println!();
    println!(
        "push latency ({pushes} pushes per row; min / median / max, ms; from the server's set):"
    );
    println!(
        "{:>6} {:>10} {:>8} {:>8} {:>9} {:>10}  {:>23}  {:>23}  {:>23}  {:>23} {:>9} {:>9}",
        "N",
        "ready ms",
        "RSS MiB",
        "settled",
        "heap MiB",
        "after MiB",
        "new svc → first 200",
        "new svc → LDS ACK",
        "weight → observable",
        "weight → LDS ACK",
        "polls",
        "w polls"
    );
    for r in rows {
        let polls: Vec<String> = r.attempts.iter().map(u32::to_string).collect();
        let w_polls: Vec<String> = r.weight_polls.iter().map(u32::to_string).collect();
        println!(
            "{:>6} {:>10.0} {:>8} {:>8} {:>9} {:>10} {:>24} {:>24} {:>24} {:>24} {:>9} {:>9}",
            r.n,
            ms(r.startup),
            r.rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            r.rss_settled.map_or("-".into(), |m| format!("{m:.0}")),
            r.heap_mib.map_or("-".into(), |m| format!("{m:.0}")),
            match (r.rss_after, r.heap_after) {
                (Some(rss), Some(heap)) => format!("{rss:.0}/{heap:.0}"),
                _ => "-".into(),
            },
            spread(&r.first_200),
            spread(&r.new_ack),
            spread(&r.weight_seen),
            spread(&r.weight_ack),
            polls.join(","),
            w_polls.join(","),
        );
    }
    println!("  (weight: a route flipped between 100/0 and 0/100 over two serving pods; observable = the first answer from the newly weighted pod, one request per poll)");
    println!("  (RSS and heap at ready, and RSS/heap after the pushes: at ready the waypoint also holds the initial sync's last response, until the next one arrives)");
    // Flatness: the largest push size's figure over the smallest's (the issue's 10,000 / 1,000).
    let (Some(small), Some(large)) = (
        rows.iter().min_by_key(|r| r.n),
        rows.iter().max_by_key(|r| r.n),
    ) else {
        return;
    };
    if small.n == large.n {
        return;
    }
    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if !a.is_zero() => format!("×{:.2}", b.as_secs_f64() / a.as_secs_f64()),
        _ => "-".into(),
    };
    println!(
        "flatness, N={} over N={} (medians; 1.00 is flat): ready {}, new svc → first 200 {}, weight → observable {}",
        large.n,
        small.n,
        ratio(Some(small.startup), Some(large.startup)),
        ratio(median_of(&small.first_200), median_of(&large.first_200)),
        ratio(median_of(&small.weight_seen), median_of(&large.weight_seen)),
    );
}

pub(super) fn median_of(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

pub(super) fn spread(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort();
    format!(
        "{:.1} / {:.1} / {:.1}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}
