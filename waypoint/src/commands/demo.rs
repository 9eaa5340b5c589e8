//! `waypoint demo`: the bookinfo reviews canary on loopback, in one process. Mints a CA, starts
//! the pods of the config (apps plus HBONE terminators with their own identities), runs the real
//! waypoint data path, drives requests through it the way ztunnel does, and prints what happened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use routing::{Protocol, RouteDecision, SimpleRequest, Snapshot};
use tokio::net::TcpListener;

use crate::app::{App, Settings};
use crate::commands::sim::{self, AppHandle, AppKind, PodHandle, ZtunnelClient};
use crate::control::identity::{Ca, SpiffeId};
use crate::telemetry::access_log::{AccessLog, Format, Sink};

/// The example shipped in `examples/bookinfo/`, embedded so `waypoint demo` needs no files.
pub const BOOKINFO: &[(&str, &str)] = &[
    (
        "services.yaml",
        include_str!("../../../examples/bookinfo/services.yaml"),
    ),
    (
        "workloads.yaml",
        include_str!("../../../examples/bookinfo/workloads.yaml"),
    ),
    (
        "reviews-destination-rule.yaml",
        include_str!("../../../examples/bookinfo/reviews-destination-rule.yaml"),
    ),
    (
        "reviews-virtual-service.yaml",
        include_str!("../../../examples/bookinfo/reviews-virtual-service.yaml"),
    ),
];

pub const TRUST_DOMAIN: &str = "cluster.local";

pub fn bookinfo_snapshot() -> Result<Snapshot, routing::LoadErrors> {
    let files: Vec<(String, String)> = BOOKINFO
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    routing::load_str(&files, TRUST_DOMAIN)
}

/// How [`Bench::start_with`] deviates from a healthy mesh.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub hbone_port: u16,
    pub format: Format,
    /// Pods that present this identity instead of the one their WorkloadEntry declares.
    pub pod_identity: std::collections::HashMap<std::net::IpAddr, SpiffeId>,
    /// Pods whose node presents a faulty certificate instead of a good one.
    pub pod_cert: std::collections::HashMap<std::net::IpAddr, sim::PodCert>,
    /// Endpoints whose HBONE terminator is not started (node down).
    pub down: std::collections::HashSet<std::net::IpAddr>,
    /// Access log template (Envoy command operators; a json_format object for JSON).
    pub access_log_template: Option<String>,
    /// Further client trust domains the waypoint accepts.
    pub trust_domain_aliases: Vec<String>,
    /// meshConfig extensionProviders for CUSTOM policies.
    pub authorizers:
        std::collections::HashMap<String, crate::dataplane::proxy::ext_authz::Provider>,
    /// Upstream HBONE connection bounds.
    pub upstream: crate::transport::hbone::UpstreamLimits,
    /// Total deadline of HTTP/1.1 request headers inside a tunnel.
    pub request_headers_timeout: Option<std::time::Duration>,
    /// How long a write to a client may wait for its window.
    pub send_timeout: Option<std::time::Duration>,
    /// The split audit's window (`/splits`, the canary page).
    pub split_window: std::time::Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            hbone_port: crate::transport::hbone::HBONE_PORT,
            format: Format::Text,
            pod_identity: Default::default(),
            pod_cert: Default::default(),
            down: Default::default(),
            access_log_template: None,
            trust_domain_aliases: Vec::new(),
            authorizers: Default::default(),
            upstream: Default::default(),
            request_headers_timeout: Some(crate::app::DEFAULT_REQUEST_HEADERS_TIMEOUT),
            send_timeout: Some(crate::app::DEFAULT_SEND_TIMEOUT),
            split_window: crate::telemetry::status::SPLIT_WINDOW,
        }
    }
}

/// Everything the demo (and the tests and benchmarks) run: pods, apps, the waypoint, a client.
pub struct Bench {
    pub ca: Ca,
    pub app: Arc<App>,
    pub waypoint_addr: SocketAddr,
    pub waypoint_id: SpiffeId,
    pub pods: Vec<PodHandle>,
    pub apps: Vec<AppHandle>,
    pub access_lines: Arc<Mutex<Vec<String>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Bench {
    /// Start every endpoint of `snapshot` (app on each target port, HBONE terminator on
    /// `hbone_port`) and a waypoint on 127.0.0.1:0.
    pub async fn start(
        snapshot: Snapshot,
        hbone_port: u16,
        format: Format,
    ) -> anyhow::Result<Self> {
        let opts = BenchOptions {
            hbone_port,
            format,
            ..Default::default()
        };
        Self::start_with(snapshot, opts).await
    }

    pub async fn start_with(snapshot: Snapshot, opts: BenchOptions) -> anyhow::Result<Self> {
        let BenchOptions {
            hbone_port,
            format,
            ref pod_identity,
            ref pod_cert,
            ref down,
            ref access_log_template,
            ref trust_domain_aliases,
            ref authorizers,
            upstream,
            request_headers_timeout,
            send_timeout,
            split_window,
        } = opts;
        crate::control::identity::install_crypto_provider();
        let ca = Ca::new("waypoint demo mesh")?;
        let mut pods = Vec::new();
        let mut apps = Vec::new();
        let mut started = std::collections::HashSet::new();
        for service in snapshot.services() {
            for endpoint in snapshot.endpoints(&service.hostname) {
                for port in &service.ports {
                    let addr = SocketAddr::new(endpoint.address, port.target_port);
                    if !started.insert(addr) {
                        continue;
                    }
                    let kind = if port.protocol == Protocol::Tcp {
                        AppKind::TcpEcho
                    } else {
                        AppKind::Http
                    };
                    apps.push(
                        sim::start_app(addr, &endpoint.workload.name, kind)
                            .await
                            .with_context(|| {
                                format!("starting app {} on {addr}", endpoint.workload.name)
                            })?,
                    );
                }
                let hbone = SocketAddr::new(endpoint.address, hbone_port);
                if !down.contains(&endpoint.address) && started.insert(hbone) {
                    let id: SpiffeId = match pod_identity.get(&endpoint.address) {
                        Some(id) => id.clone(),
                        None => endpoint.workload.identity.parse()?,
                    };
                    let cert = match pod_cert.get(&endpoint.address) {
                        Some(faulty) => faulty.mint(&ca, &id)?,
                        None => ca.issue(&id)?,
                    };
                    pods.push(
                        sim::start_pod(hbone, &cert.workload)
                            .await
                            .with_context(|| {
                                format!(
                                    "starting HBONE terminator for {} on {hbone}",
                                    endpoint.workload.name
                                )
                            })?,
                    );
                }
            }
        }
        let waypoint_id = SpiffeId::new(TRUST_DOMAIN, "default", "waypoint");
        let cert = ca.issue(&waypoint_id)?;
        let mut settings = Settings::new(TRUST_DOMAIN);
        settings.upstream_hbone_port = hbone_port;
        settings
            .trust_domains
            .extend(trust_domain_aliases.iter().cloned());
        settings.authorizers = authorizers.clone();
        settings.upstream = upstream;
        settings.request_headers_timeout = request_headers_timeout;
        settings.send_timeout = send_timeout;
        let access_lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(AccessLog::with_template(
            format,
            access_log_template.as_deref(),
            Sink::Memory(access_lines.clone()),
        )?);
        let telemetry = crate::telemetry::status::Telemetry::new("Kubernetes", split_window);
        let app = Arc::new(App::with_telemetry(
            cert.workload,
            snapshot,
            &settings,
            log,
            telemetry,
            "files",
        )?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let waypoint_addr = listener.local_addr()?;
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let serving = app.clone();
        tokio::spawn(async move { serving.serve(listener, watch).await });
        Ok(Self {
            ca,
            app,
            waypoint_addr,
            waypoint_id,
            pods,
            apps,
            access_lines,
            shutdown,
        })
    }

    /// A client ztunnel with the given workload identity.
    pub fn client(&self, id: &SpiffeId) -> anyhow::Result<ZtunnelClient> {
        let cert = self.ca.issue(id)?;
        Ok(ZtunnelClient::new(
            cert.workload,
            self.waypoint_addr,
            self.waypoint_id.clone(),
        ))
    }
}

pub struct DemoReport {
    /// pod name → responses served.
    pub by_pod: BTreeMap<String, u64>,
    pub failures: u64,
}

/// Send `requests` GETs to `vip`, spread over `concurrency` keep-alive tunnels.
pub async fn drive(
    client: &ZtunnelClient,
    vip: SocketAddr,
    host: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<DemoReport> {
    let concurrency = concurrency.clamp(1, requests.max(1));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut send = client.http1(vip).await?;
        let share = requests / concurrency + usize::from(worker < requests % concurrency);
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut by_pod = BTreeMap::<String, u64>::new();
            let mut failures = 0;
            for i in 0..share {
                match sim::get(
                    &mut send,
                    &host,
                    &format!("/reviews/{i}"),
                    &[("user-agent", "waypoint-demo")],
                )
                .await
                {
                    Ok((parts, _)) if parts.status == 200 => {
                        let pod = parts
                            .headers
                            .get("x-pod")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?");
                        *by_pod.entry(pod.to_string()).or_default() += 1;
                    }
                    _ => failures += 1,
                }
            }
            (by_pod, failures)
        }));
    }
    let mut report = DemoReport {
        by_pod: BTreeMap::new(),
        failures: 0,
    };
    for t in tasks {
        let (by_pod, failures) = t.await?;
        for (k, v) in by_pod {
            *report.by_pod.entry(k).or_default() += v;
        }
        report.failures += failures;
    }
    Ok(report)
}

/// One line of the demo's split table: a destination of the route, its configured weight and the
/// pods behind it.
struct SplitRow {
    /// As the split audit names the destination: the subset, else the service's short name.
    label: String,
    weight: u32,
    pods: Vec<String>,
}

impl SplitRow {
    fn new(snapshot: &Snapshot, host: &str, port: u16, subset: Option<&str>, weight: u32) -> Self {
        let label = match subset {
            Some(s) => s.to_string(),
            None => host.split('.').next().unwrap_or(host).to_string(),
        };
        let pods = snapshot
            .cluster(host, port, subset)
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| e.endpoint.workload.name.to_string())
                    .collect()
            })
            .unwrap_or_default();
        Self {
            label,
            weight,
            pods,
        }
    }
}

/// The HBONE port the demo's pods listen on, and why it is not the one asked for.
struct HbonePort {
    port: u16,
    note: Option<String>,
}

/// `--hbone-port` when given; otherwise 15008, or a free port when 15008 is taken on a pod's
/// address (a ztunnel or another demo on this machine): every pod must share one port, since
/// the waypoint dials `podIP:<port>` for all of them.
fn pick_hbone_port(snapshot: &Snapshot, requested: Option<u16>) -> anyhow::Result<HbonePort> {
    let ips: std::collections::BTreeSet<std::net::IpAddr> = snapshot
        .services()
        .flat_map(|s| snapshot.endpoints(&s.hostname))
        .map(|e| e.address)
        .collect();
    let taken = |port: u16| {
        ips.iter().find_map(|ip| {
            std::net::TcpListener::bind((*ip, port))
                .err()
                .map(|e| (*ip, e))
        })
    };
    if let Some(port) = requested {
        return match taken(port) {
            None => Ok(HbonePort { port, note: None }),
            Some((ip, e)) => bail!(
                "--hbone-port {port}: cannot listen on {ip}:{port} ({e}); choose another \
                 --hbone-port, or leave it out to let the demo pick a free one"
            ),
        };
    }
    let default = crate::transport::hbone::HBONE_PORT;
    let Some((ip, e)) = taken(default) else {
        return Ok(HbonePort {
            port: default,
            note: None,
        });
    };
    let first = *ips
        .iter()
        .next()
        .context("the demo config has no endpoints")?;
    for _ in 0..16 {
        let port = std::net::TcpListener::bind((first, 0))?
            .local_addr()?
            .port();
        if taken(port).is_none() {
            return Ok(HbonePort {
                port,
                note: Some(format!(
                    "  port {default} is taken on {ip} ({e}); the pods terminate HBONE on {port} \
                     instead (--hbone-port chooses)"
                )),
            });
        }
    }
    bail!("no port is free on every pod address for HBONE ({ip}:{default}: {e}); pass --hbone-port")
}

pub async fn run(
    requests: usize,
    concurrency: usize,
    config: Option<&std::path::Path>,
    hbone_port: Option<u16>,
    ui: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let snapshot = match config {
        Some(dir) => routing::load_dir(dir, TRUST_DOMAIN).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => bookinfo_snapshot().map_err(|e| anyhow::anyhow!("embedded example: {e}"))?,
    };
    let service = snapshot
        .services()
        .find(|s| s.hostname.starts_with("reviews."))
        .context("the demo config has no reviews service")?;
    let (host, port) = (service.hostname.clone(), service.ports[0].number);
    let vip = SocketAddr::new(*service.vips.first().context("reviews has no VIP")?, port);
    // One row per destination of the route the demo's requests take, labelled as the split
    // audit labels it, with the pods of that destination's own cluster (an HTTPRoute splits
    // over Services, a VirtualService over subsets of one).
    let rows: Vec<SplitRow> = match snapshot.route(service, port, &SimpleRequest::new("/reviews/0"))
    {
        RouteDecision::Route { route, .. } => route
            .destinations
            .iter()
            .map(|d| {
                SplitRow::new(
                    &snapshot,
                    &d.host,
                    d.port.unwrap_or(port),
                    d.subset.as_deref(),
                    d.weight,
                )
            })
            .collect(),
        _ => vec![SplitRow::new(&snapshot, &host, port, None, 100)],
    };
    let hbone_port = pick_hbone_port(&snapshot, hbone_port)?;
    let opts = BenchOptions {
        hbone_port: hbone_port.port,
        format: Format::Text,
        // The canary page's chart moves every few seconds.
        split_window: if ui.is_some() {
            crate::commands::demo_ui::WINDOW
        } else {
            crate::telemetry::status::SPLIT_WINDOW
        },
        ..Default::default()
    };
    let bench = Bench::start_with(snapshot, opts)
        .await
        .context("starting the loopback mesh (are the pods' app ports free?)")?;
    if let Some(note) = hbone_port.note {
        crate::outln!("{note}");
    }
    crate::outln!(
        "waypoint demo: waypoint {} listening on {}",
        bench.waypoint_id,
        bench.waypoint_addr
    );
    crate::outln!(
        "  {} pods terminating HBONE on port {}, each with its own SPIFFE certificate",
        bench.pods.len(),
        hbone_port.port
    );
    let client = bench.client(&SpiffeId::new(
        TRUST_DOMAIN,
        "default",
        "bookinfo-productpage",
    ))?;
    crate::outln!(
        "  sending {requests} requests to {host} ({vip}) over {concurrency} HBONE tunnels as {}\n",
        SpiffeId::new(TRUST_DOMAIN, "default", "bookinfo-productpage")
    );
    let report = drive(
        &client,
        vip,
        &format!("{}:{port}", host.split('.').next().unwrap_or(&host)),
        requests,
        concurrency,
    )
    .await?;

    crate::outln!(
        "access log (first 3 of {}):",
        bench.access_lines.lock().len()
    );
    for line in bench.access_lines.lock().iter().take(3) {
        crate::outln!("  {line}");
    }
    let served: u64 = report.by_pod.values().sum();
    crate::outln!("\nsplit for {host}:");
    let width = rows
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(0)
        .max(11);
    crate::outln!(
        "  {:<width$} {:>10} {:>10} {:>10}",
        "destination",
        "configured",
        "observed",
        "requests"
    );
    for row in &rows {
        let n: u64 = row
            .pods
            .iter()
            .map(|p| report.by_pod.get(p).copied().unwrap_or(0))
            .sum();
        let share = if served > 0 {
            100.0 * n as f64 / served as f64
        } else {
            0.0
        };
        let (label, weight) = (&row.label, row.weight);
        crate::outln!("  {label:<width$} {weight:>9}% {share:>9.1}% {n:>10}");
    }
    crate::outln!("\nthe waypoint's own split audit (admin /splits):");
    for line in bench.app.telemetry.splits.report().render_text().lines() {
        crate::outln!("  {line}");
    }
    let stats = &bench.app.pool;
    crate::outln!(
        "\n{served} served, {} failed; upstream tunnels opened: {}, reused: {}",
        report.failures,
        stats
            .client()
            .stats
            .tunnels_opened
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .stats
            .tunnels_reused
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    if report.failures > 0 {
        bail!("{} requests failed", report.failures);
    }
    if let Some(listen) = ui {
        let authority = format!("{}:{port}", host.split('.').next().unwrap_or(&host));
        crate::commands::demo_ui::serve(&bench, &client, vip, &authority, listen).await?;
    }
    Ok(())
}
