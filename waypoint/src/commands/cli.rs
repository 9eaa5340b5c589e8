//! Command line: `waypoint run` (the proxy), `waypoint demo` (the loopback canary).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::env;

pub use crate::commands::run_args::{RunArgs, WaypointArgs};
use crate::control::identity::install_crypto_provider;
use crate::telemetry::logging::LogControl;

#[derive(Debug, Parser)]
#[command(
    name = "waypoint",
    version,
    about = "An L7 waypoint proxy for Istio's ambient mesh, on Pingora"
)]
pub struct Cli {
    /// Log filter for stderr (tracing env-filter syntax), e.g. `info`, `waypoint=debug`.
    /// Default: `info` for `run`, `warn` for `demo`.
    #[arg(long, env = env::WAYPOINT_LOG, global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the waypoint: config from local Istio YAML files (--config DIR) or from istiod over
    /// xDS (--xds ADDRESS). `waypoint certs` mints test certificates for it.
    Run(Box<RunArgs>),
    /// Istio's container interface: `proxy waypoint [agent flags]`, as istiod's waypoint
    /// template runs the `istio-proxy` container. Reads the pod's environment (POD_NAMESPACE,
    /// SERVICE_ACCOUNT, TRUST_DOMAIN, ISTIO_META_CLUSTER_ID, PROXY_CONFIG, WAYPOINT_*); agent
    /// flags without meaning here are accepted and ignored.
    Proxy(ProxyArgs),
    /// Check a config directory without running: one line per problem (file, document,
    /// resource, field); exit 0 when valid, 1 when not.
    Validate(crate::commands::validate::ValidateArgs),
    /// Show how one request would be routed: service, matching VirtualService route (and why
    /// earlier routes did not match), destinations, subsets, clusters, endpoints and LB policy.
    Explain(crate::commands::explain::ExplainArgs),
    /// Translate what istiod sends a waypoint (saved as JSON: an Envoy waypoint's /config_dump
    /// or `istioctl proxy-config all <pod> -o json`) and print the routing snapshot this
    /// waypoint would serve; warnings name what it cannot express, exit 1 on resources Envoy
    /// would reject.
    Translate(crate::commands::translate::TranslateArgs),
    /// Run the bookinfo reviews canary (v1 90% / v2 10%) on loopback, in one process, and print
    /// the access log and the observed split.
    Demo(DemoArgs),
    /// Mint a test CA and SPIFFE workload certificates (Istio's file names) for `run` on files
    /// and for `curl`.
    Certs(crate::commands::certs::CertsArgs),
    /// Send one HTTP request through a running waypoint the way ztunnel does: mTLS with a
    /// workload certificate, HTTP/2 CONNECT to the service VIP:port, HTTP/1.1 inside.
    Curl(crate::commands::curl::CurlArgs),
    /// Print the Kubernetes manifests of one waypoint for one service account (YAML on stdout).
    ///
    /// ServiceAccount, example ConfigMap, Deployment, Service, PodDisruptionBudget and
    /// HorizontalPodAutoscaler: `waypoint manifest ... | kubectl apply -f -`.
    Manifest(crate::commands::manifest::ManifestArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The proxy type; only `waypoint`.
    pub kind: String,
    /// Istio agent flags (`--domain`, `--serviceCluster`, `--proxyLogLevel`, `--log_as_json`,
    /// `--concurrency`, …).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
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
    /// HBONE port the demo pods listen on (on their own 127.0.10.x addresses). Default: 15008,
    /// or a free port when 15008 is taken there.
    #[arg(long)]
    pub hbone_port: Option<u16>,
    /// After the report, keep the demo running with steady traffic and serve the live canary
    /// page (and the other admin endpoints) on this address; its URL is printed. Ends on
    /// Ctrl-C or SIGTERM.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:15000")]
    pub ui: Option<std::net::SocketAddr>,
}

pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    if let Command::Proxy(proxy) = &cli.command {
        let launch = crate::control::istio::resolve(&proxy.kind, &proxy.agent_args, |k| {
            std::env::var(k).ok()
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        let filter = cli.log.clone().unwrap_or(launch.log_filter);
        let logs = Arc::new(LogControl::init_with(&filter, launch.log_json));
        for setting in &launch.ignored {
            tracing::debug!("istio agent setting accepted and ignored: {setting}");
        }
        install_crypto_provider();
        return crate::commands::run::run(launch.run, logs);
    }
    let default_log = match cli.command {
        Command::Demo(_) | Command::Curl(_) | Command::Certs(_) => "warn",
        _ => "info",
    };
    let logs = Arc::new(LogControl::init(cli.log.as_deref().unwrap_or(default_log)));
    install_crypto_provider();
    match cli.command {
        Command::Demo(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::commands::demo::run(
                args.requests,
                args.concurrency,
                args.config.as_deref(),
                args.hbone_port,
                args.ui,
            ))
        }
        Command::Run(args) => crate::commands::run::run((*args).into(), logs),
        Command::Manifest(args) => crate::commands::manifest::print(&args),
        Command::Certs(args) => crate::commands::certs::run(&args),
        Command::Curl(args) => std::process::exit(crate::commands::curl::run(&args)),
        Command::Proxy(_) => unreachable!("handled above"),
        Command::Validate(args) => std::process::exit(crate::commands::validate::run(&args)),
        Command::Explain(args) => std::process::exit(crate::commands::explain::run(&args)),
        Command::Translate(args) => std::process::exit(crate::commands::translate::run(&args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    use crate::config::{Listen, RunConfig};

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_and_disabled_listeners() {
        let cli = Cli::try_parse_from([
            "waypoint",
            "run",
            "--config",
            "/c",
            "--stats-listen",
            "none",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(
            args.admin_listen,
            Listen(Some("127.0.0.1:15000".parse().unwrap()))
        );
        assert_eq!(args.stats_listen, Listen(None));
        assert_eq!(
            args.health_listen,
            Listen(Some("0.0.0.0:15021".parse().unwrap()))
        );
        assert_eq!(args.cluster_id, "Kubernetes");
        assert_eq!(args.hbone_backlog, 1024);
        assert_eq!(args.hbone_handshake_timeout_ms, 10_000);
        assert_eq!(
            RunConfig::from(*args).endpoint_limits(),
            crate::telemetry::admin::EndpointLimits::default()
        );
        let err = Cli::try_parse_from([
            "waypoint",
            "run",
            "--config",
            "/c",
            "--admin-listen",
            "nope",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"nope\" is not ip:port or `none`"), "{err}");
    }
}
