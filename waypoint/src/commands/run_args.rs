//! `waypoint run`'s flags (clap), each backed by its environment variable, and their conversion
//! into the library's [`RunConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};

use crate::config::{self, env, CertProvider, Listen, RunConfig, WaypointConfig, XdsMode};
use crate::telemetry::access_log::Format;

#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("config_source")
        .required(true)
        .args(["config", "xds"])
))]
pub struct RunArgs {
    /// Directory of Istio YAML (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule),
    /// watched for changes. Either this or --xds.
    #[arg(long, env = env::WAYPOINT_CONFIG_DIR)]
    pub config: Option<PathBuf>,
    /// Take the config from istiod over xDS (Delta ADS) at this address, e.g.
    /// `istiod.istio-system.svc:15012`, as an Envoy waypoint would. The node identity comes from
    /// POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT and ISTIO_META_* as in istiod's
    /// waypoint template.
    #[arg(long, env = env::XDS_ADDRESS)]
    pub xds: Option<String>,
    /// PEM root(s) that istiod's serving certificate must chain to (default: --ca-root).
    #[arg(long, env = env::XDS_ROOT_CA)]
    pub xds_root_ca: Option<PathBuf>,
    /// TLS server name istiod's certificate must carry (default: the address's host;
    /// `istiod.istio-system.svc` for an IP or localhost).
    #[arg(long, env = env::XDS_SERVER_NAME)]
    pub xds_server_name: Option<String>,
    /// The pod's labels (downward API file, `key="value"` lines), sent to istiod as node
    /// `LABELS`; `topology.istio.io/locality` / `istio-locality` also give the node's locality.
    /// Skipped when the file does not exist.
    #[arg(long, env = env::XDS_POD_LABELS, default_value = xds_client::DEFAULT_LABELS_PATH)]
    pub xds_pod_labels: PathBuf,
    /// Projected service-account token sent to istiod as `authorization: Bearer`, re-read on
    /// every connect; `none` sends no token (then the workload certificate authenticates).
    #[arg(long, env = env::XDS_TOKEN, default_value = crate::control::identity::istio_ca::DEFAULT_TOKEN_PATH)]
    pub xds_token: PathBuf,
    /// xDS protocol: `delta` (what istiod uses for waypoints), `sotw` (state of the world), or
    /// `auto` (delta, falling back to sotw when istiod does not implement it).
    #[arg(long, env = env::XDS_MODE, default_value_t = XdsMode::Auto,
          value_parser = PossibleValuesParser::new(XdsMode::NAMES).try_map(|s| s.parse::<XdsMode>()))]
    pub xds_mode: XdsMode,
    /// DNS server (`IP:PORT`) that resolves the hostnames of DNS clusters (ServiceEntry
    /// `resolution: DNS`); default: the system's (/etc/resolv.conf).
    #[arg(long, env = env::WAYPOINT_DNS_SERVER)]
    pub dns_server: Option<SocketAddr>,
    /// HBONE listen address. An unspecified address (`0.0.0.0` or `[::]`) listens on both
    /// IPv4 and IPv6 on that port when the host has IPv6 (dual stack; also for the admin,
    /// stats, health and prometheus addresses); a specific address listens only there.
    #[arg(long, env = env::WAYPOINT_LISTEN, default_value_t = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// PEM certificate chain of the waypoint (leaf first, URI SAN = its SPIFFE id).
    #[arg(
        long,
        env = env::WAYPOINT_CERT_CHAIN,
        default_value = config::DEFAULT_CERT_CHAIN
    )]
    pub cert_chain: PathBuf,
    /// PEM private key of the waypoint.
    #[arg(long, env = env::WAYPOINT_KEY, default_value = config::DEFAULT_KEY)]
    pub key: PathBuf,
    /// PEM bundle of trusted mesh roots.
    #[arg(
        long,
        env = env::WAYPOINT_TRUST_BUNDLE,
        default_value = config::DEFAULT_TRUST_BUNDLE
    )]
    pub trust_bundle: PathBuf,
    /// Mesh trust domain: identities of endpoints in the config are minted in it.
    #[arg(long, env = env::TRUST_DOMAIN, default_value = config::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    #[command(flatten)]
    pub waypoint: WaypointArgs,
    /// meshConfig YAML (the `mesh` key of istiod's `istio` ConfigMap): the `extensionProviders`
    /// CUSTOM AuthorizationPolicies name (envoyExtAuthzHttp/Grpc; without them a request matching a
    /// CUSTOM rule is denied) and those Telemetry resources name (envoyFileAccessLog,
    /// opentelemetry, zipkin), with `defaultProviders` and the default sampling.
    #[arg(long, env = env::WAYPOINT_MESH_CONFIG, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// Further trust domains whose clients are accepted.
    #[arg(
        long = "trust-domain-alias",
        env = env::WAYPOINT_TRUST_DOMAIN_ALIASES,
        value_delimiter = ','
    )]
    pub trust_domain_aliases: Vec<String>,
    /// HBONE port of destination nodes.
    #[arg(long, env = env::WAYPOINT_UPSTREAM_HBONE_PORT, default_value_t = crate::transport::hbone::HBONE_PORT)]
    pub upstream_hbone_port: u16,
    /// Timeout for dialing an endpoint and its CONNECT (milliseconds).
    #[arg(long, env = env::WAYPOINT_CONNECT_TIMEOUT_MS, default_value_t = config::DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Total time an HTTP/1.1 request's headers may take inside a tunnel, from their first byte
    /// (milliseconds; 0: no total bound, only the 60 s per-read timeout). A slower client's
    /// tunnel is closed.
    #[arg(
        long,
        env = env::WAYPOINT_REQUEST_HEADERS_TIMEOUT_MS,
        default_value_t = config::DEFAULT_REQUEST_HEADERS_TIMEOUT_MS
    )]
    pub request_headers_timeout_ms: u64,
    /// How long a write to a client may wait for the client to read (its HTTP/2 flow-control
    /// window shut), in milliseconds; then the tunnel is closed and what it held upstream
    /// released (0: wait forever).
    #[arg(
        long,
        env = env::WAYPOINT_STREAM_SEND_TIMEOUT_MS,
        default_value_t = config::DEFAULT_STREAM_SEND_TIMEOUT_MS
    )]
    pub stream_send_timeout_ms: u64,
    /// Process-wide memory budget in MiB (heap allocated). At 90 % of it HTTP keep-alive inside
    /// tunnels stops, at 95 % new requests and CONNECTs get 503 (flag OM), from 98 % until
    /// back under 90 % tunnels stalled on a client that does not read are reset. Default: 90 % of the cgroup's memory
    /// limit (v2 memory.max, v1 memory.limit_in_bytes) less what is resident outside the heap at
    /// start, when there is a limit; else off. 0: off. The start-up log gives the budget.
    #[arg(long, env = env::WAYPOINT_MEMORY_BUDGET_MIB)]
    pub memory_budget_mib: Option<u64>,
    /// Upstream HBONE connections per endpoint node (and expected identity) at most; beyond
    /// them tunnels share the least loaded connection (HTTP/2 multiplexing).
    #[arg(long, env = env::WAYPOINT_UPSTREAM_MAX_CONNECTIONS, default_value_t = config::DEFAULT_UPSTREAM_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub upstream_max_connections: u16,
    /// Close an upstream HBONE connection without tunnels, an idle pooled tunnel and an h2c
    /// upstream connection without streams, after this long (milliseconds; a DestinationRule
    /// `http.idleTimeout` overrides it for tunnels and h2c connections).
    #[arg(long, env = env::WAYPOINT_UPSTREAM_IDLE_TIMEOUT_MS, default_value_t = config::DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_idle_timeout_ms: u64,
    /// PING each upstream HBONE connection this often (milliseconds)…
    #[arg(long, env = env::WAYPOINT_UPSTREAM_KEEPALIVE_INTERVAL_MS, default_value_t = config::DEFAULT_UPSTREAM_KEEPALIVE_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_keepalive_interval_ms: u64,
    /// …and close it when the answer takes longer than this (milliseconds): a hung peer.
    #[arg(long, env = env::WAYPOINT_UPSTREAM_KEEPALIVE_TIMEOUT_MS, default_value_t = config::DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_keepalive_timeout_ms: u64,
    /// Access log format.
    #[arg(long, env = env::WAYPOINT_ACCESS_LOG_FORMAT, value_enum, default_value_t = Format::Text)]
    pub access_log_format: Format,
    /// Access log template: Envoy command operators (`%REQ(:METHOD)%`, `%RESPONSE_CODE%`, ...)
    /// for text; a json_format object (`{"code":"%RESPONSE_CODE%"}`) for json. Default: Istio's
    /// text format / the built-in JSON object.
    #[arg(long, env = env::WAYPOINT_ACCESS_LOG_TEMPLATE, value_name = "FORMAT")]
    pub access_log_template: Option<String>,
    /// Fraction of access log lines written, 0..=1 (0 switches the log off).
    #[arg(
        long,
        env = env::WAYPOINT_ACCESS_LOG_SAMPLE_RATE,
        default_value_t = config::DEFAULT_ACCESS_LOG_SAMPLE_RATE,
        value_parser = crate::telemetry::access_log::parse_sample_rate
    )]
    pub access_log_sample_rate: f64,
    /// Worker threads (default: one per CPU).
    #[arg(long, env = env::WAYPOINT_THREADS)]
    pub threads: Option<usize>,
    /// Serve inbound HBONE connections on tokio's multi-thread (work-stealing) scheduler.
    /// Without it, each worker thread owns the connections it is given (the least loaded one
    /// gets the next) and everything they carry, as Envoy's workers do: fewer cross-thread
    /// wake-ups per request, but one HBONE connection uses at most one core.
    #[arg(long, env = env::WAYPOINT_WORK_STEALING)]
    pub work_stealing: bool,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = env::WAYPOINT_DRAIN_SECONDS, default_value_t = config::DEFAULT_DRAIN_SECONDS)]
    pub drain_seconds: u64,
    /// Admin endpoints (/ready /config_dump /clusters /server_info /certs /memory
    /// /quitquitquit /logging /access_log /splits /stats/prometheus);
    /// keep it on loopback. `none` disables it.
    #[arg(long, env = env::WAYPOINT_ADMIN_LISTEN, default_value_t = config::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: Listen,
    /// Prometheus scrape endpoint (/stats/prometheus), as on Istio's proxies. `none` disables it.
    #[arg(long, env = env::WAYPOINT_STATS_LISTEN, default_value_t = config::DEFAULT_STATS_LISTEN)]
    pub stats_listen: Listen,
    /// Readiness probe endpoint (/healthz/ready). `none` disables it.
    #[arg(long, env = env::WAYPOINT_HEALTH_LISTEN, default_value_t = config::DEFAULT_HEALTH_LISTEN)]
    pub health_listen: Listen,
    /// Connections each of the admin, stats, health and prometheus listeners serves at once;
    /// beyond it a new connection is closed as soon as it is accepted (counted in
    /// `waypoint_listener_connections_closed{reason="limit"}`). Each listener has its own
    /// budget, so a flood of one leaves the others answering.
    #[arg(long, env = env::WAYPOINT_ENDPOINT_MAX_CONNECTIONS, default_value_t = config::DEFAULT_ENDPOINT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub endpoint_max_connections: u32,
    /// Admin, stats and health listeners: time for a request's headers to arrive, counted from
    /// the connection's start or the previous response (so also the keep-alive idle limit), in
    /// milliseconds.
    #[arg(long, env = env::WAYPOINT_ENDPOINT_HEADER_TIMEOUT_MS, default_value_t = config::DEFAULT_ENDPOINT_HEADER_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub endpoint_header_timeout_ms: u64,
    /// Admin, stats and health listeners: a connection on which nothing is read or written for
    /// this long is closed (a peer that stops reading a response), in milliseconds.
    #[arg(long, env = env::WAYPOINT_ENDPOINT_IDLE_TIMEOUT_MS, default_value_t = config::DEFAULT_ENDPOINT_IDLE_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub endpoint_idle_timeout_ms: u64,
    /// HBONE listen backlog: connections the kernel completes before the waypoint accepts
    /// them (capped by the kernel's net.core.somaxconn).
    #[arg(long, env = env::WAYPOINT_HBONE_BACKLOG, default_value_t = config::DEFAULT_HBONE_BACKLOG,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub hbone_backlog: u32,
    /// Inbound HBONE: time from accept to the client's HTTP/2 preface, the mTLS handshake
    /// included, in milliseconds. A peer that is slower, or that completes TLS and stays
    /// silent, is closed (`waypoint_hbone_handshake_timeouts`).
    #[arg(long, env = env::WAYPOINT_HBONE_HANDSHAKE_TIMEOUT_MS, default_value_t = config::DEFAULT_HBONE_HANDSHAKE_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub hbone_handshake_timeout_ms: u64,
    /// This cluster's id: the `destination_cluster` metric label.
    #[arg(long, env = env::CLUSTER_ID, default_value = config::DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// Where the waypoint's certificate comes from: `files` (--cert-chain/--key/--trust-bundle,
    /// watched for rotation) or `istiod` (requested from the Istio CA and renewed).
    #[arg(long, env = env::WAYPOINT_CERT_PROVIDER, default_value_t = CertProvider::Files,
          value_parser = PossibleValuesParser::new(CertProvider::NAMES).try_map(|s| s.parse::<CertProvider>()))]
    pub cert_provider: CertProvider,
    /// Istio CA address (istiod's gRPC port), for `--cert-provider istiod`.
    #[arg(long, env = env::CA_ADDR, default_value = crate::control::identity::istio_ca::DEFAULT_CA_ADDRESS)]
    pub ca_address: String,
    /// TLS server name the CA's certificate must carry (default: the address's host;
    /// `istiod.istio-system.svc` for an IP or localhost).
    #[arg(long, env = env::WAYPOINT_CA_SERVER_NAME)]
    pub ca_server_name: Option<String>,
    /// PEM root(s) of the mesh: verify the CA, and the trust bundle in istiod mode.
    #[arg(
        long,
        env = env::WAYPOINT_CA_ROOT,
        default_value = config::DEFAULT_CA_ROOT
    )]
    pub ca_root: PathBuf,
    /// Projected service-account token sent to the CA as `authorization: Bearer`.
    #[arg(long, env = env::WAYPOINT_CA_TOKEN, default_value = crate::control::identity::istio_ca::DEFAULT_TOKEN_PATH)]
    pub ca_token: PathBuf,
    /// Validity requested for CA-issued certificates, in seconds.
    #[arg(long, env = env::WAYPOINT_CERT_VALIDITY_SECONDS, default_value_t = config::DEFAULT_CERT_VALIDITY_SECONDS)]
    pub cert_validity_seconds: u64,
    /// Renew when this fraction of the remaining lifetime has passed (0 < f < 1).
    #[arg(long, env = env::WAYPOINT_CERT_RENEW_FRACTION, default_value_t = config::DEFAULT_CERT_RENEW_FRACTION, value_parser = config::parse_fraction)]
    pub cert_renew_fraction: f64,
    /// A second Prometheus endpoint, e.g. `0.0.0.0:15090` where Envoy-based waypoints serve
    /// theirs. `none` (default) disables it.
    #[arg(long, env = env::WAYPOINT_PROM_LISTEN, default_value_t = config::DEFAULT_PROM_LISTEN)]
    pub prom_listen: Listen,
    /// Refuse a certificate whose SPIFFE id is not this one (`proxy waypoint` sets it from
    /// TRUST_DOMAIN, POD_NAMESPACE and SERVICE_ACCOUNT).
    #[arg(long, env = env::WAYPOINT_EXPECTED_IDENTITY)]
    pub expected_identity: Option<String>,
    /// Hot reload: how often the config directory and the identity files are looked at besides
    /// change notifications (inotify), in milliseconds. A look reads metadata only; a file is
    /// read again only when its size, times or inode changed.
    #[arg(long, env = env::WAYPOINT_RELOAD_INTERVAL_MS, default_value_t = config::DEFAULT_RELOAD_INTERVAL_MS)]
    pub reload_interval_ms: u64,
    /// Serve a config directory that holds no services. Without it an empty directory keeps the
    /// waypoint not ready at startup, and replacing a served config by an empty one is rejected
    /// (the last good config keeps serving).
    #[arg(long, env = env::WAYPOINT_ALLOW_EMPTY_CONFIG)]
    pub allow_empty_config: bool,
    /// Sliding window of the split audit (/splits), in seconds.
    #[arg(long, env = env::WAYPOINT_SPLIT_WINDOW_SECONDS, default_value_t = config::DEFAULT_SPLIT_WINDOW_SECONDS)]
    pub split_window_seconds: u64,
}

/// Which waypoint this is, for AuthorizationPolicy `targetRefs` in YAML config (under istiod,
/// istiod attaches policies itself).
#[derive(Debug, Clone, clap::Args)]
pub struct WaypointArgs {
    /// This waypoint's Gateway, NAMESPACE/NAME: policies whose targetRefs name it (from its
    /// namespace) apply to every service it serves.
    #[arg(
        long = "waypoint-gateway",
        env = env::WAYPOINT_GATEWAY,
        default_value = config::DEFAULT_GATEWAY,
        value_name = "NS/NAME",
        value_parser = config::parse_gateway
    )]
    pub gateway: (String, String),
    /// The mesh's root namespace: a policy there targeting GatewayClass istio-waypoint applies
    /// to every waypoint.
    #[arg(long, env = env::WAYPOINT_ROOT_NAMESPACE, default_value = config::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// meshConfig pathNormalization, applied before authorization and routing: NONE, BASE
    /// (RFC 3986 dot segments; Istio's default), MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    #[arg(
        long,
        env = env::WAYPOINT_PATH_NORMALIZATION,
        default_value = "BASE",
        value_parser = |s: &str| s.parse::<routing::path::PathNormalization>()
    )]
    pub path_normalization: routing::path::PathNormalization,
    /// Most bytes of YAML read from a config directory, all files together; over it the config
    /// is refused naming the file (at a reload, the last good config keeps serving).
    #[arg(long, env = env::WAYPOINT_CONFIG_MAX_BYTES, default_value_t = routing::DEFAULT_MAX_TOTAL_BYTES)]
    pub config_max_bytes: u64,
    /// Most bytes of one config file.
    #[arg(long, env = env::WAYPOINT_CONFIG_MAX_FILE_BYTES, default_value_t = routing::DEFAULT_MAX_FILE_BYTES)]
    pub config_max_file_bytes: u64,
}

impl Default for WaypointArgs {
    fn default() -> Self {
        let w = WaypointConfig::default();
        Self {
            gateway: w.gateway,
            root_namespace: w.root_namespace,
            path_normalization: w.path_normalization,
            config_max_bytes: w.config_max_bytes,
            config_max_file_bytes: w.config_max_file_bytes,
        }
    }
}

impl WaypointArgs {
    /// What the YAML loader needs, with `trust_domain`.
    pub fn load_options(&self, trust_domain: &str) -> routing::LoadOptions {
        WaypointConfig::from(self.clone()).load_options(trust_domain)
    }
}

impl From<WaypointArgs> for WaypointConfig {
    fn from(a: WaypointArgs) -> Self {
        Self {
            gateway: a.gateway,
            root_namespace: a.root_namespace,
            path_normalization: a.path_normalization,
            config_max_bytes: a.config_max_bytes,
            config_max_file_bytes: a.config_max_file_bytes,
        }
    }
}

impl From<RunArgs> for RunConfig {
    fn from(a: RunArgs) -> Self {
        Self {
            config: a.config,
            xds: a.xds,
            xds_root_ca: a.xds_root_ca,
            xds_server_name: a.xds_server_name,
            xds_pod_labels: a.xds_pod_labels,
            xds_token: a.xds_token,
            xds_mode: a.xds_mode,
            dns_server: a.dns_server,
            listen: a.listen,
            cert_chain: a.cert_chain,
            key: a.key,
            trust_bundle: a.trust_bundle,
            trust_domain: a.trust_domain,
            waypoint: a.waypoint.into(),
            mesh_config: a.mesh_config,
            trust_domain_aliases: a.trust_domain_aliases,
            upstream_hbone_port: a.upstream_hbone_port,
            connect_timeout_ms: a.connect_timeout_ms,
            request_headers_timeout_ms: a.request_headers_timeout_ms,
            stream_send_timeout_ms: a.stream_send_timeout_ms,
            memory_budget_mib: a.memory_budget_mib,
            upstream_max_connections: a.upstream_max_connections,
            upstream_idle_timeout_ms: a.upstream_idle_timeout_ms,
            upstream_keepalive_interval_ms: a.upstream_keepalive_interval_ms,
            upstream_keepalive_timeout_ms: a.upstream_keepalive_timeout_ms,
            access_log_format: a.access_log_format,
            access_log_template: a.access_log_template,
            access_log_sample_rate: a.access_log_sample_rate,
            threads: a.threads,
            work_stealing: a.work_stealing,
            drain_seconds: a.drain_seconds,
            admin_listen: a.admin_listen,
            stats_listen: a.stats_listen,
            health_listen: a.health_listen,
            endpoint_max_connections: a.endpoint_max_connections,
            endpoint_header_timeout_ms: a.endpoint_header_timeout_ms,
            endpoint_idle_timeout_ms: a.endpoint_idle_timeout_ms,
            hbone_backlog: a.hbone_backlog,
            hbone_handshake_timeout_ms: a.hbone_handshake_timeout_ms,
            cluster_id: a.cluster_id,
            cert_provider: a.cert_provider,
            ca_address: a.ca_address,
            ca_server_name: a.ca_server_name,
            ca_root: a.ca_root,
            ca_token: a.ca_token,
            cert_validity_seconds: a.cert_validity_seconds,
            cert_renew_fraction: a.cert_renew_fraction,
            prom_listen: a.prom_listen,
            expected_identity: a.expected_identity,
            reload_interval_ms: a.reload_interval_ms,
            allow_empty_config: a.allow_empty_config,
            split_window_seconds: a.split_window_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::commands::cli::{Cli, Command};

    /// A sample value for every `run` flag, none of them its default. A flag without a sample
    /// fails `env_and_flags_give_the_same_config`.
    const SAMPLES: &[(&str, &str)] = &[
        ("config", "/srv/config"),
        ("xds", "istiod.example:15012"),
        ("xds_root_ca", "/x/root.pem"),
        ("xds_server_name", "istiod.example"),
        ("xds_pod_labels", "/x/labels"),
        ("xds_token", "none"),
        ("xds_mode", "sotw"),
        ("dns_server", "127.0.0.53:53"),
        ("listen", "127.0.0.1:16008"),
        ("cert_chain", "/x/chain.pem"),
        ("key", "/x/key.pem"),
        ("trust_bundle", "/x/roots.pem"),
        ("trust_domain", "example.org"),
        ("gateway", "bookinfo/wp"),
        ("root_namespace", "mesh-root"),
        ("path_normalization", "MERGE_SLASHES"),
        ("config_max_bytes", "1234"),
        ("config_max_file_bytes", "123"),
        ("mesh_config", "/x/mesh.yaml"),
        ("trust_domain_aliases", "a.org,b.org"),
        ("upstream_hbone_port", "15009"),
        ("connect_timeout_ms", "11"),
        ("request_headers_timeout_ms", "0"),
        ("stream_send_timeout_ms", "12"),
        ("memory_budget_mib", "64"),
        ("upstream_max_connections", "3"),
        ("upstream_idle_timeout_ms", "13"),
        ("upstream_keepalive_interval_ms", "14"),
        ("upstream_keepalive_timeout_ms", "15"),
        ("access_log_format", "json"),
        ("access_log_template", "%RESPONSE_CODE%"),
        ("access_log_sample_rate", "0.25"),
        ("threads", "3"),
        ("work_stealing", "true"),
        ("drain_seconds", "4"),
        ("admin_listen", "127.0.0.1:16000"),
        ("stats_listen", "none"),
        ("health_listen", "127.0.0.1:16021"),
        ("endpoint_max_connections", "5"),
        ("endpoint_header_timeout_ms", "16"),
        ("endpoint_idle_timeout_ms", "17"),
        ("hbone_backlog", "18"),
        ("hbone_handshake_timeout_ms", "19"),
        ("cluster_id", "east"),
        ("cert_provider", "istiod"),
        ("ca_address", "ca.example:15012"),
        ("ca_server_name", "ca.example"),
        ("ca_root", "/x/ca-root.pem"),
        ("ca_token", "/x/token"),
        ("cert_validity_seconds", "3600"),
        ("cert_renew_fraction", "0.75"),
        ("prom_listen", "127.0.0.1:16090"),
        ("expected_identity", "spiffe://example.org/ns/a/sa/b"),
        ("reload_interval_ms", "20"),
        ("allow_empty_config", "true"),
        ("split_window_seconds", "21"),
    ];

    fn from_flags(argv: &[&str]) -> RunConfig {
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        (*args).into()
    }

    fn from_env(pairs: &[(String, String)], read: &mut Vec<String>) -> RunConfig {
        let seen = std::cell::RefCell::new(Vec::new());
        let config = RunConfig::from_env(|k| {
            seen.borrow_mut().push(k.to_string());
            pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
        read.extend(seen.into_inner());
        config
    }

    /// The flag path (clap, then `RunConfig::from`) and the environment path (`proxy waypoint`:
    /// `RunConfig::from_env`) give equal configs for every setting, one at a time, and for
    /// none: a flag added to one and not the other, or a default that differs, fails here.
    #[test]
    fn env_and_flags_give_the_same_config() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run subcommand");
        let mut env_names = std::collections::BTreeSet::new();
        let mut read = Vec::new();
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || arg.is_global_set() || id == "log" {
                continue;
            }
            let long = arg.get_long().expect("every run setting is a long flag");
            let var = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{long} has no environment variable"))
                .to_str()
                .expect("ASCII name")
                .to_string();
            env_names.insert(var.clone());
            let sample = SAMPLES
                .iter()
                .find(|(k, _)| *k == id)
                .unwrap_or_else(|| panic!("no sample value for --{long} in SAMPLES"))
                .1;
            // A config source is needed (unless this is one), and only one may be given.
            let source: &[&str] = if id == "config" || id == "xds" {
                &[]
            } else {
                &["--config", "/c"]
            };
            let mut argv = vec!["waypoint", "run"];
            argv.extend_from_slice(source);
            let flag = format!("--{long}");
            let is_switch = !arg.get_action().takes_values();
            argv.push(&flag);
            if !is_switch {
                argv.push(sample);
            }
            let mut pairs = vec![(var.clone(), sample.to_string())];
            if !source.is_empty() {
                pairs.push((env::WAYPOINT_CONFIG_DIR.into(), "/c".into()));
            }
            let flags = from_flags(&argv);
            assert_eq!(flags, from_env(&pairs, &mut read), "--{long} vs {var}");
            let mut base = argv.clone();
            base.truncate(2 + source.len());
            if !source.is_empty() {
                assert_ne!(flags, from_flags(&base), "--{long} {sample} is its default");
            }
        }
        // Defaults.
        assert_eq!(
            from_flags(&["waypoint", "run", "--config", "/c"]),
            from_env(&[(env::WAYPOINT_CONFIG_DIR.into(), "/c".into())], &mut read)
        );
        assert_eq!(SAMPLES.len(), env_names.len(), "a sample without a flag");
        // The environment path reads exactly the flags' variables.
        let read: std::collections::BTreeSet<_> = read.into_iter().collect();
        assert_eq!(read, env_names);
    }
}
