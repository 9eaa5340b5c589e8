//! Command line: `waypoint run` (the proxy), `waypoint demo` (the loopback canary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::control::identity::install_crypto_provider;
use crate::telemetry::access_log::Format;
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
    #[arg(long, env = "WAYPOINT_LOG", global = true)]
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
    Translate(crate::control::xds::TranslateArgs),
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

#[derive(Debug, Clone, clap::Args, Serialize)]
#[command(group(
    clap::ArgGroup::new("config_source")
        .required(true)
        .args(["config", "xds"])
))]
pub struct RunArgs {
    /// Directory of Istio YAML (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule),
    /// watched for changes. Either this or --xds.
    #[arg(long, env = "WAYPOINT_CONFIG_DIR")]
    pub config: Option<PathBuf>,
    /// Take the config from istiod over xDS (Delta ADS) at this address, e.g.
    /// `istiod.istio-system.svc:15012`, as an Envoy waypoint would. The node identity comes from
    /// POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT and ISTIO_META_* as in istiod's
    /// waypoint template.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds: Option<String>,
    /// PEM root(s) that istiod's serving certificate must chain to (default: --ca-root).
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_ca: Option<PathBuf>,
    /// TLS server name istiod's certificate must carry (default: the address's host;
    /// `istiod.istio-system.svc` for an IP or localhost).
    #[arg(long, env = "XDS_SERVER_NAME")]
    pub xds_server_name: Option<String>,
    /// The pod's labels (downward API file, `key="value"` lines), sent to istiod as node
    /// `LABELS`; `topology.istio.io/locality` / `istio-locality` also give the node's locality.
    /// Skipped when the file does not exist.
    #[arg(long, env = "XDS_POD_LABELS", default_value = xds_client::DEFAULT_LABELS_PATH)]
    pub xds_pod_labels: PathBuf,
    /// Projected service-account token sent to istiod as `authorization: Bearer`, re-read on
    /// every connect; `none` sends no token (then the workload certificate authenticates).
    #[arg(long, env = "XDS_TOKEN", default_value = crate::control::identity::istio_ca::DEFAULT_TOKEN_PATH)]
    pub xds_token: PathBuf,
    /// xDS protocol: `delta` (what istiod uses for waypoints), `sotw` (state of the world), or
    /// `auto` (delta, falling back to sotw when istiod does not implement it).
    #[arg(long, env = "XDS_MODE", value_enum, default_value_t = XdsMode::Auto)]
    pub xds_mode: XdsMode,
    /// DNS server (`IP:PORT`) that resolves the hostnames of DNS clusters (ServiceEntry
    /// `resolution: DNS`); default: the system's (/etc/resolv.conf).
    #[arg(long, env = "WAYPOINT_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
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
    #[command(flatten)]
    pub waypoint: WaypointArgs,
    /// meshConfig YAML whose `extensionProviders` (envoyExtAuthzHttp, envoyExtAuthzGrpc) CUSTOM
    /// AuthorizationPolicies name. Without it a request matching a CUSTOM rule is denied.
    #[arg(long, env = "WAYPOINT_MESH_CONFIG", value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// Further trust domains whose clients are accepted.
    #[arg(
        long = "trust-domain-alias",
        env = "WAYPOINT_TRUST_DOMAIN_ALIASES",
        value_delimiter = ','
    )]
    pub trust_domain_aliases: Vec<String>,
    /// HBONE port of destination nodes.
    #[arg(long, env = "WAYPOINT_UPSTREAM_HBONE_PORT", default_value_t = crate::transport::hbone::HBONE_PORT)]
    pub upstream_hbone_port: u16,
    /// Timeout for dialing an endpoint and its CONNECT (milliseconds).
    #[arg(long, env = "WAYPOINT_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Total time an HTTP/1.1 request's headers may take inside a tunnel, from their first byte
    /// (milliseconds; 0: no total bound, only the 60 s per-read timeout). A slower client's
    /// tunnel is closed.
    #[arg(
        long,
        env = "WAYPOINT_REQUEST_HEADERS_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_headers_timeout_ms: u64,
    /// How long a write to a client may wait for the client to read (its HTTP/2 flow-control
    /// window shut), in milliseconds; then the tunnel is closed and what it held upstream
    /// released (0: wait forever).
    #[arg(
        long,
        env = "WAYPOINT_STREAM_SEND_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    pub stream_send_timeout_ms: u64,
    /// Process-wide memory budget in MiB (heap allocated). At 90 % of it HTTP keep-alive inside
    /// tunnels stops, at 95 % new requests and CONNECTs get 503 (flag OM), from 98 % until
    /// back under 90 % tunnels stalled on a client that does not read are reset. Default: 90 % of the cgroup's memory
    /// limit (v2 memory.max, v1 memory.limit_in_bytes) less what is resident outside the heap at
    /// start, when there is a limit; else off. 0: off. The start-up log gives the budget.
    #[arg(long, env = "WAYPOINT_MEMORY_BUDGET_MIB")]
    pub memory_budget_mib: Option<u64>,
    /// Upstream HBONE connections per endpoint node (and expected identity) at most; beyond
    /// them tunnels share the least loaded connection (HTTP/2 multiplexing).
    #[arg(long, env = "WAYPOINT_UPSTREAM_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub upstream_max_connections: u16,
    /// Close an upstream HBONE connection without tunnels, an idle pooled tunnel and an h2c
    /// upstream connection without streams, after this long (milliseconds; a DestinationRule
    /// `http.idleTimeout` overrides it for tunnels and h2c connections).
    #[arg(long, env = "WAYPOINT_UPSTREAM_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_idle_timeout_ms: u64,
    /// PING each upstream HBONE connection this often (milliseconds)…
    #[arg(long, env = "WAYPOINT_UPSTREAM_KEEPALIVE_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_keepalive_interval_ms: u64,
    /// …and close it when the answer takes longer than this (milliseconds): a hung peer.
    #[arg(long, env = "WAYPOINT_UPSTREAM_KEEPALIVE_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_keepalive_timeout_ms: u64,
    /// Access log format.
    #[arg(long, env = "WAYPOINT_ACCESS_LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    pub access_log_format: Format,
    /// Access log template: Envoy command operators (`%REQ(:METHOD)%`, `%RESPONSE_CODE%`, ...)
    /// for text; a json_format object (`{"code":"%RESPONSE_CODE%"}`) for json. Default: Istio's
    /// text format / the built-in JSON object.
    #[arg(long, env = "WAYPOINT_ACCESS_LOG_TEMPLATE", value_name = "FORMAT")]
    pub access_log_template: Option<String>,
    /// Fraction of access log lines written, 0..=1 (0 switches the log off).
    #[arg(
        long,
        env = "WAYPOINT_ACCESS_LOG_SAMPLE_RATE",
        default_value_t = 1.0,
        value_parser = crate::telemetry::access_log::parse_sample_rate
    )]
    pub access_log_sample_rate: f64,
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "WAYPOINT_THREADS")]
    pub threads: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "WAYPOINT_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Admin endpoints (/ready /config_dump /logging /access_log /splits /stats/prometheus);
    /// keep it on loopback. `none` disables it.
    #[arg(long, env = "WAYPOINT_ADMIN_LISTEN", default_value = "127.0.0.1:15000")]
    pub admin_listen: Listen,
    /// Prometheus scrape endpoint (/stats/prometheus), as on Istio's proxies. `none` disables it.
    #[arg(long, env = "WAYPOINT_STATS_LISTEN", default_value = "0.0.0.0:15020")]
    pub stats_listen: Listen,
    /// Readiness probe endpoint (/healthz/ready). `none` disables it.
    #[arg(long, env = "WAYPOINT_HEALTH_LISTEN", default_value = "0.0.0.0:15021")]
    pub health_listen: Listen,
    /// Connections each of the admin, stats, health and prometheus listeners serves at once;
    /// beyond it a new connection is closed as soon as it is accepted (counted in
    /// `waypoint_listener_connections_closed{reason="limit"}`). Each listener has its own
    /// budget, so a flood of one leaves the others answering.
    #[arg(long, env = "WAYPOINT_ENDPOINT_MAX_CONNECTIONS", default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub endpoint_max_connections: u32,
    /// Admin, stats and health listeners: time for a request's headers to arrive, counted from
    /// the connection's start or the previous response (so also the keep-alive idle limit), in
    /// milliseconds.
    #[arg(long, env = "WAYPOINT_ENDPOINT_HEADER_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub endpoint_header_timeout_ms: u64,
    /// Admin, stats and health listeners: a connection on which nothing is read or written for
    /// this long is closed (a peer that stops reading a response), in milliseconds.
    #[arg(long, env = "WAYPOINT_ENDPOINT_IDLE_TIMEOUT_MS", default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub endpoint_idle_timeout_ms: u64,
    /// HBONE listen backlog: connections the kernel completes before the waypoint accepts
    /// them (capped by the kernel's net.core.somaxconn).
    #[arg(long, env = "WAYPOINT_HBONE_BACKLOG", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub hbone_backlog: u32,
    /// Inbound HBONE: time from accept to the client's HTTP/2 preface, the mTLS handshake
    /// included, in milliseconds. A peer that is slower, or that completes TLS and stays
    /// silent, is closed (`waypoint_hbone_handshake_timeouts`).
    #[arg(long, env = "WAYPOINT_HBONE_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub hbone_handshake_timeout_ms: u64,
    /// This cluster's id: the `destination_cluster` metric label.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Where the waypoint's certificate comes from: `files` (--cert-chain/--key/--trust-bundle,
    /// watched for rotation) or `istiod` (requested from the Istio CA and renewed).
    #[arg(long, env = "WAYPOINT_CERT_PROVIDER", value_enum, default_value_t = CertProvider::Files)]
    pub cert_provider: CertProvider,
    /// Istio CA address (istiod's gRPC port), for `--cert-provider istiod`.
    #[arg(long, env = "CA_ADDR", default_value = crate::control::identity::istio_ca::DEFAULT_CA_ADDRESS)]
    pub ca_address: String,
    /// TLS server name the CA's certificate must carry (default: the address's host;
    /// `istiod.istio-system.svc` for an IP or localhost).
    #[arg(long, env = "WAYPOINT_CA_SERVER_NAME")]
    pub ca_server_name: Option<String>,
    /// PEM root(s) of the mesh: verify the CA, and the trust bundle in istiod mode.
    #[arg(
        long,
        env = "WAYPOINT_CA_ROOT",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root: PathBuf,
    /// Projected service-account token sent to the CA as `authorization: Bearer`.
    #[arg(long, env = "WAYPOINT_CA_TOKEN", default_value = crate::control::identity::istio_ca::DEFAULT_TOKEN_PATH)]
    pub ca_token: PathBuf,
    /// Validity requested for CA-issued certificates, in seconds.
    #[arg(long, env = "WAYPOINT_CERT_VALIDITY_SECONDS", default_value_t = 86_400)]
    pub cert_validity_seconds: u64,
    /// Renew when this fraction of the remaining lifetime has passed (0 < f < 1).
    #[arg(long, env = "WAYPOINT_CERT_RENEW_FRACTION", default_value_t = 0.5, value_parser = parse_fraction)]
    pub cert_renew_fraction: f64,
    /// A second Prometheus endpoint, e.g. `0.0.0.0:15090` where Envoy-based waypoints serve
    /// theirs. `none` (default) disables it.
    #[arg(long, env = "WAYPOINT_PROM_LISTEN", default_value = "none")]
    pub prom_listen: Listen,
    /// Refuse a certificate whose SPIFFE id is not this one (`proxy waypoint` sets it from
    /// TRUST_DOMAIN, POD_NAMESPACE and SERVICE_ACCOUNT).
    #[arg(long, env = "WAYPOINT_EXPECTED_IDENTITY")]
    pub expected_identity: Option<String>,
    /// Hot reload: how often the config directory and the identity files are looked at besides
    /// change notifications (inotify), in milliseconds. A look reads metadata only; a file is
    /// read again only when its size, times or inode changed.
    #[arg(long, env = "WAYPOINT_RELOAD_INTERVAL_MS", default_value_t = 250)]
    pub reload_interval_ms: u64,
    /// Serve a config directory that holds no services. Without it an empty directory keeps the
    /// waypoint not ready at startup, and replacing a served config by an empty one is rejected
    /// (the last good config keeps serving).
    #[arg(long, env = "WAYPOINT_ALLOW_EMPTY_CONFIG")]
    pub allow_empty_config: bool,
    /// Sliding window of the split audit (/splits), in seconds.
    #[arg(long, env = "WAYPOINT_SPLIT_WINDOW_SECONDS", default_value_t = 300)]
    pub split_window_seconds: u64,
}

/// Which waypoint this is, for AuthorizationPolicy `targetRefs` in YAML config (under istiod,
/// istiod attaches policies itself).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct WaypointArgs {
    /// This waypoint's Gateway, NAMESPACE/NAME: policies whose targetRefs name it (from its
    /// namespace) apply to every service it serves.
    #[arg(
        long = "waypoint-gateway",
        env = "WAYPOINT_GATEWAY",
        default_value = "default/waypoint",
        value_name = "NS/NAME",
        value_parser = parse_gateway
    )]
    pub gateway: (String, String),
    /// The mesh's root namespace: a policy there targeting GatewayClass istio-waypoint applies
    /// to every waypoint.
    #[arg(long, env = "WAYPOINT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// meshConfig pathNormalization, applied before authorization and routing: NONE, BASE
    /// (RFC 3986 dot segments; Istio's default), MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    #[arg(
        long,
        env = "WAYPOINT_PATH_NORMALIZATION",
        default_value = "BASE",
        value_parser = |s: &str| s.parse::<routing::path::PathNormalization>()
    )]
    pub path_normalization: routing::path::PathNormalization,
    /// Most bytes of YAML read from a config directory, all files together; over it the config
    /// is refused naming the file (at a reload, the last good config keeps serving).
    #[arg(long, env = "WAYPOINT_CONFIG_MAX_BYTES", default_value_t = routing::DEFAULT_MAX_TOTAL_BYTES)]
    pub config_max_bytes: u64,
    /// Most bytes of one config file.
    #[arg(long, env = "WAYPOINT_CONFIG_MAX_FILE_BYTES", default_value_t = routing::DEFAULT_MAX_FILE_BYTES)]
    pub config_max_file_bytes: u64,
}

impl Default for WaypointArgs {
    fn default() -> Self {
        let w = routing::WaypointRef::default();
        Self {
            gateway: (w.namespace, w.name),
            root_namespace: w.root_namespace,
            path_normalization: Default::default(),
            config_max_bytes: routing::DEFAULT_MAX_TOTAL_BYTES,
            config_max_file_bytes: routing::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl RunArgs {
    /// The per-listener limits of the admin, stats and health endpoints.
    pub fn endpoint_limits(&self) -> crate::telemetry::admin::EndpointLimits {
        crate::telemetry::admin::EndpointLimits {
            max_connections: self.endpoint_max_connections as usize,
            header_timeout: std::time::Duration::from_millis(self.endpoint_header_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.endpoint_idle_timeout_ms),
        }
    }
}

impl WaypointArgs {
    /// What the YAML loader needs, with `trust_domain`.
    pub fn load_options(&self, trust_domain: &str) -> routing::LoadOptions {
        routing::LoadOptions {
            trust_domain: trust_domain.to_string(),
            waypoint: routing::WaypointRef {
                namespace: self.gateway.0.clone(),
                name: self.gateway.1.clone(),
                root_namespace: self.root_namespace.clone(),
            },
            dns: Default::default(),
            limits: routing::InputLimits {
                max_total_bytes: self.config_max_bytes,
                max_file_bytes: self.config_max_file_bytes,
            },
        }
    }
}

fn parse_gateway(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdsMode {
    Delta,
    Sotw,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CertProvider {
    Files,
    Istiod,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction strictly between 0 and 1")),
    }
}

/// A listen address, or `none`/`off` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "off" | "" => Ok(Self(None)),
            _ => s
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|e| format!("{s:?} is not ip:port or `none`: {e}")),
        }
    }
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
            ))
        }
        Command::Run(args) => crate::commands::run::run(*args, logs),
        Command::Manifest(args) => crate::commands::manifest::print(&args),
        Command::Certs(args) => crate::commands::certs::run(&args),
        Command::Curl(args) => std::process::exit(crate::commands::curl::run(&args)),
        Command::Proxy(_) => unreachable!("handled above"),
        Command::Validate(args) => std::process::exit(crate::commands::validate::run(&args)),
        Command::Explain(args) => std::process::exit(crate::commands::explain::run(&args)),
        Command::Translate(args) => {
            std::process::exit(crate::control::xds::translate_command(&args))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
            args.endpoint_limits(),
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
