//! The processes: spawning and reading them (CPU, RSS, hop counters), and the mesh of originator,
//! terminator and waypoints with its generated config.

use super::*;

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process, killed (SIGKILL via `Child::kill`) when dropped.
pub(super) struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    pub(super) fn pid(&self) -> u32 {
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

pub(super) fn rss_kib(pid: u32) -> u64 {
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

/// How much of the executable's code (its `r-xp` mappings, `/proc/<pid>/smaps`) is resident:
/// the part of the RSS the release build's code layout (`waypoint/link/`) keeps small.
pub(super) fn code_kib(pid: u32) -> u64 {
    use procfs::process::{MMPermissions, MMapPath, Process};
    let Ok(process) = Process::new(pid as i32) else {
        return 0;
    };
    let exe = process.exe().unwrap_or_default();
    let code = process.smaps().map(|maps| {
        maps.into_iter()
            .filter(|m| {
                m.perms.contains(MMPermissions::EXECUTE)
                    && matches!(&m.pathname, MMapPath::Path(path) if *path == exe)
            })
            .filter_map(|m| m.extension.map.get("Rss").copied())
            .sum::<u64>()
    });
    code.unwrap_or(0) >> 10
}

/// The hop's counters line (`h2_connections=… tunnels=… failed=…`) as a map.
pub(super) fn hop_counters(stats: SocketAddr) -> anyhow::Result<BTreeMap<String, u64>> {
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

pub(super) struct Mesh {
    pub(super) dir: PathBuf,
    pub(super) originator: Proc,
    pub(super) terminator: Proc,
    pub(super) waypoint: Proc,
    pub(super) waypoint_nolog: Proc,
    pub(super) terminator_stats: SocketAddr,
    pub(super) originator_stats: SocketAddr,
    /// Originator listeners by route: l4, l7, l7nolog, grpc.
    pub(super) routes: BTreeMap<String, SocketAddr>,
    pub(super) _app: sim::AppHandle,
    /// The measured waypoint's admin endpoint (the tracing phase reads what it serves).
    pub(super) waypoint_admin: SocketAddr,
    /// Where the waypoints send spans when tracing is on.
    pub(super) zipkin: super::tracing::ZipkinSink,
}

/// The TCP service's VIP and port: the originator's route `tcp` goes through the waypoint to it.
const TCP_VIP: (&str, u16) = ("10.0.0.12", 9081);

/// bookinfo-like: reviews (HTTP, VIP 10.0.0.10:9080) with a DestinationRule's subsets and a
/// VirtualService routing /reviews to v1; an h2c/gRPC service (VIP 10.0.0.11:9090); the same
/// app as a TCP service ([`TCP_VIP`]), which the waypoint splices without reading HTTP; one
/// endpoint for all, the app, whose node is the terminator.
fn config_yaml(pod_ip: IpAddr, app_port: u16) -> String {
    let (tcp_ip, tcp_port) = TCP_VIP;
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
kind: ServiceEntry
metadata: {{name: reviews-tcp, namespace: default}}
spec:
  hosts: [reviews-tcp.default.svc.cluster.local]
  addresses: [{tcp_ip}]
  ports:
  - {{number: {tcp_port}, name: tcp, targetPort: {app_port}}}
  workloadSelector:
    labels: {{app: reviews}}
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
    pub(super) async fn start(args: &Args) -> anyhow::Result<Mesh> {
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
        let zipkin = super::tracing::ZipkinSink::start().await?;
        std::fs::write(
            dir.join("mesh.yaml"),
            super::tracing::mesh_yaml(zipkin.addr),
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
                .arg("--mesh-config")
                .arg(dir.join("mesh.yaml"))
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
                .args(["--max-streams", &args.originator_max_streams.to_string()])
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
                        "tcp",
                        find(&w_addrs, "waypoint")?,
                        &wp_id,
                        &format!("{}:{}", TCP_VIP.0, TCP_VIP.1),
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
        let waypoint_admin = find(&w_addrs, "waypoint admin")?;
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
            waypoint_admin,
            zipkin,
        })
    }

    pub(super) fn route(&self, name: &str) -> anyhow::Result<SocketAddr> {
        find(&self.routes, name)
    }

    pub(super) fn procs(&self) -> [&Proc; 4] {
        [
            &self.originator,
            &self.waypoint,
            &self.waypoint_nolog,
            &self.terminator,
        ]
    }

    pub(super) fn cpu(&self) -> anyhow::Result<[f64; 5]> {
        let mut out = [0.0; 5];
        for (slot, p) in out.iter_mut().zip(self.procs()) {
            *slot = cpu_seconds(p.pid())
                .with_context(|| format!("CPU time of the {} (pid {})", p.name, p.pid()))?;
        }
        out[4] = cpu_seconds(std::process::id())?;
        Ok(out)
    }
}
