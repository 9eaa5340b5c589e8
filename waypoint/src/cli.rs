//! Command line: `waypoint run` (the proxy), `waypoint demo` (the loopback canary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use parking_lot::Mutex;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::GenBackgroundService;
use serde::Serialize;
use tracing::{info, warn};

use crate::access_log::{AccessLog, Format, Sink};
use crate::app::{bind, App, HboneService, Settings};
use crate::identity::{install_crypto_provider, WorkloadCert};

#[derive(Debug, Parser)]
#[command(
    name = "waypoint",
    version,
    about = "An L7 waypoint proxy for Istio's ambient mesh, on Pingora"
)]
pub struct Cli {
    /// Log filter for stderr (tracing env-filter syntax), e.g. `info`, `waypoint=debug`.
    /// Default: `info` for `run`, `warn` for `demo`.
    #[arg(long, env = "WAYPOINT_LOG", global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the waypoint on local Istio YAML files.
    Run(RunArgs),
    /// Run the bookinfo reviews canary (v1 90% / v2 10%) on loopback, in one process, and print
    /// the access log and the observed split.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args, Serialize)]
pub struct RunArgs {
    /// Directory of Istio YAML (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule).
    #[arg(long, env = "WAYPOINT_CONFIG_DIR")]
    pub config: PathBuf,
    /// HBONE listen address.
    #[arg(long, env = "WAYPOINT_LISTEN", default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,
    /// PEM certificate chain of the waypoint (leaf first, URI SAN = its SPIFFE id).
    #[arg(
        long,
        env = "WAYPOINT_CERT_CHAIN",
        default_value = "/etc/certs/cert-chain.pem"
    )]
    pub cert_chain: PathBuf,
    /// PEM private key of the waypoint.
    #[arg(long, env = "WAYPOINT_KEY", default_value = "/etc/certs/key.pem")]
    pub key: PathBuf,
    /// PEM bundle of trusted mesh roots.
    #[arg(
        long,
        env = "WAYPOINT_TRUST_BUNDLE",
        default_value = "/etc/certs/root-cert.pem"
    )]
    pub trust_bundle: PathBuf,
    /// Mesh trust domain: identities of endpoints in the config are minted in it.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Further trust domains whose clients are accepted.
    #[arg(
        long = "trust-domain-alias",
        env = "WAYPOINT_TRUST_DOMAIN_ALIASES",
        value_delimiter = ','
    )]
    pub trust_domain_aliases: Vec<String>,
    /// HBONE port of destination nodes.
    #[arg(long, env = "WAYPOINT_UPSTREAM_HBONE_PORT", default_value_t = crate::hbone::HBONE_PORT)]
    pub upstream_hbone_port: u16,
    /// Timeout for dialing an endpoint and its CONNECT (milliseconds).
    #[arg(long, env = "WAYPOINT_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Access log format.
    #[arg(long, env = "WAYPOINT_ACCESS_LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    pub access_log_format: Format,
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "WAYPOINT_THREADS")]
    pub threads: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "WAYPOINT_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub requests: usize,
    /// HBONE tunnels (each a keep-alive HTTP/1.1 session) to spread them over.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Use this config directory instead of the embedded examples/bookinfo.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HBONE port the demo pods listen on (on their own 127.0.10.x addresses).
    #[arg(long, default_value_t = crate::hbone::HBONE_PORT)]
    pub hbone_port: u16,
}

pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("invalid --log filter {filter:?}: {e}; using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    let default_log = match cli.command {
        Command::Run(_) => "info",
        Command::Demo(_) => "warn",
    };
    init_logging(cli.log.as_deref().unwrap_or(default_log));
    install_crypto_provider();
    match cli.command {
        Command::Demo(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::demo::run(
                args.requests,
                args.concurrency,
                args.config.as_deref(),
                args.hbone_port,
            ))
        }
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    info!(config = %serde_json::to_string(&args).unwrap_or_default(), "starting waypoint");
    let cert = WorkloadCert::from_files(&args.cert_chain, &args.key, &args.trust_bundle)
        .context("loading the waypoint's identity")?;
    info!(identity = ?cert.summary(), "identity loaded");
    let snapshot = routing::load_dir(&args.config, &args.trust_domain).map_err(|errors| {
        anyhow::anyhow!(
            "{} problem(s) in {}:\n{errors}",
            errors.len(),
            args.config.display()
        )
    })?;
    for w in snapshot.warnings() {
        warn!("{w}");
    }
    info!(
        version = snapshot.version(),
        services = snapshot.services().count(),
        "config loaded"
    );
    let mut settings = Settings::new(&args.trust_domain);
    settings
        .trust_domains
        .extend(args.trust_domain_aliases.iter().cloned());
    settings.upstream_hbone_port = args.upstream_hbone_port;
    settings.connect_timeout = Duration::from_millis(args.connect_timeout_ms);
    let log = Arc::new(AccessLog::new(args.access_log_format, Sink::Stdout));
    let app = Arc::new(App::new(cert, snapshot, &settings, log)?);
    let listener =
        bind(args.listen).with_context(|| format!("binding HBONE listener {}", args.listen))?;
    let addr = listener.local_addr()?;
    info!(%addr, "HBONE listener bound");
    eprintln!("waypoint listening on {addr}");

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(args.drain_seconds),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = GenBackgroundService::new(
        "HBONE listener".to_string(),
        Arc::new(HboneService {
            app,
            listener: Mutex::new(Some(listener)),
        }),
    );
    service.threads = Some(threads);
    server.add_service(service);
    server.run_forever()
}
