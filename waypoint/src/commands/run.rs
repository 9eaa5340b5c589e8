//! `waypoint run`: bind every listener up front (a taken port fails at once), start the admin,
//! stats and health endpoints, then wait for a certificate and a config before serving HBONE.
//!
//! Files that are *missing* at startup are waited for (a CSI driver or an agent may write them
//! a moment later); readiness says what is missing. Files that are present but *invalid* at
//! startup are fatal (exit 1, naming the file and the field). Once running, files that appear
//! broken (half-written) are logged and waited out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{BackgroundService, GenBackgroundService};
use routing::Snapshot;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::app::{App, Settings};
use crate::config::{CertProvider, RunConfig};
use crate::control::identity::WorkloadCert;
use crate::control::reload::{
    fetch_identity, load_config, load_identity, renew_identity, watch_config, watch_identity,
    Backoff, Found,
};
use crate::control::xds::{SnapshotSink, XdsRuntime};
use crate::telemetry::access_log::{AccessLog, Sink};
use crate::telemetry::admin::{Admin, Role};
use crate::telemetry::logging::LogControl;
use crate::telemetry::status::Telemetry;
use crate::transport::listen;

/// How often missing certificate or config files are looked for.
const WAIT_POLL: Duration = Duration::from_millis(250);

fn settings(args: &RunConfig) -> anyhow::Result<Settings> {
    let mut settings = Settings::new(&args.trust_domain);
    settings
        .trust_domains
        .extend(args.trust_domain_aliases.iter().cloned());
    settings.upstream_hbone_port = args.upstream_hbone_port;
    settings.request_headers_timeout = (args.request_headers_timeout_ms > 0)
        .then(|| Duration::from_millis(args.request_headers_timeout_ms));
    settings.send_timeout = (args.stream_send_timeout_ms > 0)
        .then(|| Duration::from_millis(args.stream_send_timeout_ms));
    settings.upstream = crate::transport::hbone::UpstreamLimits {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        max_connections_per_endpoint: usize::from(args.upstream_max_connections),
        idle_timeout: Duration::from_millis(args.upstream_idle_timeout_ms),
        keepalive_interval: Duration::from_millis(args.upstream_keepalive_interval_ms),
        keepalive_timeout: Duration::from_millis(args.upstream_keepalive_timeout_ms),
    };
    settings.handshake_timeout = Duration::from_millis(args.hbone_handshake_timeout_ms);
    settings.path_normalization = args.waypoint.path_normalization;
    if let Some(mesh) = &args.mesh_config {
        settings.authorizers =
            crate::dataplane::proxy::ext_authz::load_providers(mesh).map_err(anyhow::Error::msg)?;
        // Its telemetry providers are read with each config load; a bad one stops the start.
        let (_, warnings) = crate::config::mesh_telemetry(mesh).map_err(anyhow::Error::msg)?;
        for w in warnings {
            warn!(mesh_config = %mesh.display(), "{w}");
        }
    }
    Ok(settings)
}

fn announce(what: &str, listener: &std::net::TcpListener) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    info!(%addr, "{what} listener bound");
    // Tests and scripts read these lines to learn ports chosen with :0.
    eprintln!("waypoint {what} listening on {addr}");
    Ok(addr)
}

pub fn run(args: RunConfig, logs: Arc<LogControl>) -> anyhow::Result<()> {
    info!(config = %serde_json::to_string(&args).unwrap_or_default(), "starting waypoint");
    let log = AccessLog::with_template(
        args.access_log_format,
        args.access_log_template.as_deref(),
        Sink::Stdout,
    )
    .map_err(|e| anyhow::anyhow!("invalid --access-log-template: {e}"))?;
    log.set_sample_rate(args.access_log_sample_rate);
    let log = Arc::new(log);

    let telemetry = Telemetry::new(
        &args.cluster_id,
        Duration::from_secs(args.split_window_seconds.max(1)),
    );
    telemetry
        .overload
        .start(&crate::dataplane::overload::Budget::resolve(
            args.memory_budget_mib,
        ))
        .context("starting the memory monitor")?;
    // What is present must be valid; what is missing is waited for (and readiness says why).
    let cert = match (args.cert_provider, load_identity(&args)) {
        (CertProvider::Istiod, _) => {
            if args.expected_identity.is_none() {
                anyhow::bail!(
                    "--cert-provider istiod needs the identity to request: set \
                     --expected-identity (or run as `proxy waypoint` with POD_NAMESPACE and \
                     SERVICE_ACCOUNT)"
                );
            }
            let why = format!(
                "requesting a certificate from the Istio CA at {}",
                args.ca_address
            );
            telemetry.status.waiting_for("certificate", why);
            None
        }
        (CertProvider::Files, Found::Ready(cert)) => Some(cert),
        (CertProvider::Files, Found::Missing(why)) => {
            warn!("waiting for the waypoint's identity: {why}");
            telemetry.status.waiting_for("certificate", why);
            None
        }
        (CertProvider::Files, Found::Invalid(e)) => anyhow::bail!(e),
    };
    let (snapshot, xds) = match (&args.config, &args.xds) {
        (Some(dir), _) => match load_config(dir, &args.load_options(), args.allow_empty_config) {
            Found::Ready(s) => (Some(s), None),
            Found::Missing(why) => {
                warn!("waiting for config: {why}");
                telemetry.status.waiting_for("config", why);
                (None, None)
            }
            Found::Invalid(e) => anyhow::bail!(e),
        },
        (None, Some(address)) => {
            let xds = XdsRuntime::new(&args, &telemetry)?;
            info!(%address, "config from istiod over xDS");
            telemetry
                .status
                .waiting_for("config", format!("waiting for istiod at {address}"));
            (None, Some(xds))
        }
        (None, None) => anyhow::bail!("no config source: give --config DIR or --xds ADDRESS"),
    };

    let hbone = listen::bind_all(args.listen, args.hbone_backlog)
        .with_context(|| format!("binding HBONE listener {}", args.listen))?;
    for (i, l) in hbone.iter().enumerate() {
        let addr = l.local_addr()?;
        info!(%addr, "HBONE listener bound");
        match i {
            0 => eprintln!("waypoint listening on {addr}"),
            _ => eprintln!(
                "waypoint hbone-{} listening on {addr}",
                listen::family(addr)
            ),
        }
    }
    let mut admin_listeners = Vec::new();
    for (role, what, addr) in [
        (Role::Admin, "admin", args.admin_listen),
        (Role::Stats, "stats", args.stats_listen),
        (Role::Health, "health", args.health_listen),
        (Role::Stats, "prometheus", args.prom_listen),
    ] {
        let Some(addr) = addr.0 else { continue };
        let all = listen::bind_all(addr, listen::ENDPOINT_BACKLOG)
            .with_context(|| format!("binding {what} listener {addr}"))?;
        for (i, l) in all.into_iter().enumerate() {
            match i {
                0 => announce(what, &l)?,
                _ => announce(&format!("{what}-{}", listen::family(l.local_addr()?)), &l)?,
            };
            admin_listeners.push((role, what, l));
        }
    }

    // The node istiod would know this pod as, when the pod's environment says (the bootstrap
    // of `/config_dump`); under `--xds` the client set it already.
    if telemetry.status.node().is_none() {
        if let Ok(node) = xds_client::NodeInfo::from_env() {
            telemetry.status.set_node(node.to_node());
        }
    }
    let admin = Arc::new(Admin {
        telemetry: telemetry.clone(),
        logs: Some(logs),
        access_log: Some(log.clone()),
        process: serde_json::to_value(&args).unwrap_or_default(),
    });

    let threads = worker_threads(&args);
    let work_stealing = args.work_stealing;
    let conf = ServerConf {
        threads,
        // The data path exits the process once drained; this is only the upper bound.
        grace_period_seconds: Some(args.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(GenBackgroundService::new(
        "admin endpoints".to_string(),
        Arc::new(AdminService {
            admin,
            limits: args.endpoint_limits(),
            listeners: Mutex::new(admin_listeners),
        }),
    ));
    let mut service = GenBackgroundService::new(
        "HBONE listener".to_string(),
        Arc::new(DataplaneService {
            settings: settings(&args)?,
            args,
            log,
            telemetry,
            initial: Mutex::new(Some((cert, snapshot))),
            xds: Mutex::new(xds),
            listener: Mutex::new(Some(hbone)),
        }),
    );
    // With its own workers, the service's runtime only accepts connections and runs the
    // background tasks (identity, config watch).
    service.threads = Some(if work_stealing { threads } else { 1 });
    server.add_service(service);
    server.run_forever()
}

/// `--threads`, else one per CPU.
fn worker_threads(args: &RunConfig) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

fn tokio_listener(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

struct AdminService {
    admin: Arc<Admin>,
    limits: crate::telemetry::admin::EndpointLimits,
    listeners: Mutex<Vec<(Role, &'static str, std::net::TcpListener)>>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // The endpoints outlive SIGTERM: during the drain, probes must see "draining" (503)
        // rather than a refused connection. The process exit ends them.
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        let listeners = std::mem::take(&mut *self.listeners.lock());
        let mut tasks = Vec::new();
        for (role, name, l) in listeners {
            match tokio_listener(l) {
                Ok(l) => tasks.push(tokio::spawn(self.admin.clone().serve_with(
                    l,
                    role,
                    name,
                    self.limits,
                    shutdown.clone(),
                ))),
                Err(e) => error!(?role, error = %e, "cannot use the admin listening socket"),
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

type Initial = (Option<WorkloadCert>, Option<Snapshot>);

/// Waits for identity and config, then runs the data path on the HBONE listener.
struct DataplaneService {
    args: RunConfig,
    settings: Settings,
    log: Arc<AccessLog>,
    telemetry: Telemetry,
    initial: Mutex<Option<Initial>>,
    /// In xDS mode: the client (taken when the service starts) and where its snapshots arrive.
    xds: Mutex<Option<XdsRuntime>>,
    /// The HBONE sockets (two for a dual-stack address).
    listener: Mutex<Option<Vec<std::net::TcpListener>>>,
}

impl DataplaneService {
    /// Poll until both are loaded; `None` when shutdown came first.
    async fn wait_for_inputs(
        &self,
        initial: Initial,
        sink: Option<&SnapshotSink>,
        shutdown: &mut ShutdownWatch,
    ) -> Option<(WorkloadCert, Snapshot)> {
        let (mut cert, mut snapshot) = initial;
        let status = &self.telemetry.status;
        // `run` has logged why each input is missing; log again only when the reason changes.
        let mut first = true;
        let mut last_cert: Option<String> = None;
        let mut last_config: Option<String> = None;
        let report = |last: &mut Option<String>, what: &'static str, why: String, first: bool| {
            if !first && last.as_ref() != Some(&why) {
                warn!("waiting for {what}: {why}");
            }
            status.waiting_for(what, why.lines().next().unwrap_or("").to_string());
            *last = Some(why);
        };
        let mut backoff = Backoff::new();
        let mut next_ca_attempt = std::time::Instant::now();
        loop {
            if cert.is_none() && self.args.cert_provider == CertProvider::Istiod {
                if std::time::Instant::now() >= next_ca_attempt {
                    match fetch_identity(&self.args).await {
                        Ok(c) => {
                            info!(identity = ?c.summary(), "certificate issued by the Istio CA");
                            status.set_certificate(c.summary());
                            cert = Some(c);
                        }
                        Err(why) => {
                            let delay = backoff.delay();
                            next_ca_attempt = std::time::Instant::now() + delay;
                            report(&mut last_cert, "certificate", why.to_string(), false);
                        }
                    }
                }
            } else if cert.is_none() {
                match load_identity(&self.args) {
                    Found::Ready(c) => {
                        info!(identity = ?c.summary(), "identity loaded");
                        status.set_certificate(c.summary());
                        cert = Some(c);
                    }
                    Found::Missing(why) | Found::Invalid(why) => {
                        report(&mut last_cert, "certificate", why, first)
                    }
                }
            }
            if snapshot.is_none() {
                match (sink, &self.args.config) {
                    // The xDS handler reports what it waits for itself.
                    (Some(sink), _) => snapshot = sink.take(),
                    (None, Some(dir)) => match load_config(
                        dir,
                        &self.args.load_options(),
                        self.args.allow_empty_config,
                    ) {
                        Found::Ready(s) => snapshot = Some(s),
                        Found::Missing(why) | Found::Invalid(why) => {
                            report(&mut last_config, "config", why, first)
                        }
                    },
                    (None, None) => {}
                }
            }
            first = false;
            if let (Some(_), Some(_)) = (&cert, &snapshot) {
                return cert.zip(snapshot);
            }
            let arrived = async {
                match sink {
                    Some(sink) if cert.is_some() => sink.wait(WAIT_POLL).await,
                    _ => tokio::time::sleep(WAIT_POLL).await,
                }
            };
            tokio::select! {
                _ = arrived => {}
                _ = shutdown.changed() => return None,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for DataplaneService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (Some(initial), Some(listener)) =
            (self.initial.lock().take(), self.listener.lock().take())
        else {
            error!("HBONE service started twice");
            return;
        };
        // In xDS mode the stream to istiod starts now and lives as long as the process (config
        // keeps flowing through the drain; the exit ends it).
        let xds = self.xds.lock().take();
        let (_xds_stop, xds_stopped) = tokio::sync::watch::channel(false);
        let sink = xds.map(|xds| {
            let sink = xds.sink.clone();
            // Its own thread and runtime: translating a large state takes a while (about 0.9 s
            // for 10 000 services) and must not hold up a data-path worker; at a lower priority,
            // so that a translation yields the cores to requests when both want them.
            let spawned = std::thread::Builder::new()
                .name("xds".into())
                .spawn(move || {
                    use crate::control::priority::{lower_this_thread, CONFIG_THREAD_NICE};
                    if let Err(e) = lower_this_thread(CONFIG_THREAD_NICE) {
                        warn!(error = %e, "cannot lower the xDS thread's priority; it competes with the data path");
                    }
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(xds.run(xds_stopped)),
                        Err(e) => error!(error = %e, "cannot start the xDS client's runtime"),
                    }
                });
            if let Err(e) = spawned {
                error!(error = %e, "cannot start the xDS client's thread");
            }
            sink
        });
        let Some((cert, snapshot)) = self
            .wait_for_inputs(initial, sink.as_deref(), &mut shutdown)
            .await
        else {
            return;
        };
        for w in snapshot.warnings() {
            warn!("{w}");
        }
        info!(
            version = snapshot.version(),
            services = snapshot.services().count(),
            "config loaded"
        );
        let mut settings = self.settings.clone();
        if !self.args.work_stealing {
            match crate::transport::workers::Workers::start(worker_threads(&self.args)) {
                Ok(workers) => settings.workers = Some(Arc::new(workers)),
                Err(e) => {
                    error!(error = %e, "cannot start the data path's worker threads; exiting");
                    std::process::exit(1);
                }
            }
        }
        let app = match App::with_telemetry(
            cert,
            snapshot,
            &settings,
            self.log.clone(),
            self.telemetry.clone(),
            if sink.is_some() { "xds" } else { "files" },
        ) {
            Ok(app) => Arc::new(app),
            Err(e) => {
                // Nothing would ever serve: say why and let the supervisor restart us.
                error!(error = %e, "cannot start the data path; exiting");
                std::process::exit(1);
            }
        };
        let listener = match listener.into_iter().map(tokio_listener).collect() {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot use the HBONE listening socket");
                return;
            }
        };
        info!("ready: serving HBONE");
        let watcher = match self.args.cert_provider {
            CertProvider::Files => tokio::spawn(watch_identity(app.clone(), self.args.clone())),
            CertProvider::Istiod => tokio::spawn(renew_identity(app.clone(), self.args.clone())),
        };
        let reloader = match &sink {
            Some(sink) => {
                sink.attach(app.clone());
                None
            }
            None => Some(tokio::spawn(watch_config(app.clone(), self.args.clone()))),
        };
        app.serve_all(listener, shutdown).await;
        watcher.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        self.telemetry.status.set_draining();
        app.start_drain().await;
        // SIGTERM: the listener is closed, every connection has sent GOAWAY, HTTP/1.1 inside
        // tunnels is no longer kept alive. Exit as soon as the last connection has drained;
        // otherwise, `cut_margin` before the drain time is up, end what is still in flight
        // deliberately (503 or reset, see `crate::dataplane::drain`), then exit at the drain time.
        // (pingora's grace period, set to the same length, keeps the runtimes alive until then.)
        let drain = Duration::from_secs(self.args.drain_seconds);
        let margin = crate::dataplane::drain::cut_margin(drain);
        let started = tokio::time::Instant::now();
        let open = || {
            app.server
                .stats
                .connections_open
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let wait_until = |deadline: tokio::time::Instant| async move {
            while open() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        wait_until(started + drain - margin).await;
        let left = open();
        if left > 0 {
            info!(
                connections = left,
                "drain deadline in {margin:?}: ending the requests still in flight"
            );
            app.cut_drain(crate::dataplane::drain::force_close_after(drain));
            wait_until(started + drain).await;
        }
        let (completed, responded_503, reset) = app.drain.counts();
        match open() {
            0 => info!(
                elapsed = ?started.elapsed(),
                completed,
                responded_503,
                reset,
                "drained; exiting"
            ),
            n => warn!(
                connections = n,
                completed,
                responded_503,
                reset,
                "drain time {drain:?} is up; exiting with connections open"
            ),
        }
        // The access log's last batch (lines wait up to FLUSH_INTERVAL in its buffer).
        self.log.flush();
        std::process::exit(0);
    }
}
