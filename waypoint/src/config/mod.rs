//! The settings of `waypoint run` as plain Rust types ([`RunConfig`]), the names of every
//! environment variable the waypoint reads ([`env`]), and a typed parser that builds a
//! `RunConfig` from the environment alone ([`RunConfig::from_env`]).
//!
//! Two front-ends fill a `RunConfig`: clap in `commands::cli` (flags, each backed by the same
//! variable) and `control::istio` (`proxy waypoint`: the pod's environment as istiod's template
//! sets it). The library takes only this type. Defaults live here, once, for both.

pub mod env;
mod parse;
#[cfg(test)]
pub(crate) mod tests;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use parse::{
    parse_access_log_format, parse_bool, parse_fraction, parse_gateway, parse_positive,
    ConfigError, InvalidValue,
};

/// `--listen`: the HBONE port on every address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::UNSPECIFIED,
    crate::transport::hbone::HBONE_PORT,
));
pub const DEFAULT_CERT_CHAIN: &str = "/etc/certs/cert-chain.pem";
pub const DEFAULT_KEY: &str = "/etc/certs/key.pem";
pub const DEFAULT_TRUST_BUNDLE: &str = "/etc/certs/root-cert.pem";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_STREAM_SEND_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: u16 = 8;
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_UPSTREAM_KEEPALIVE_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT_MS: u64 = 20_000;
pub const DEFAULT_ACCESS_LOG_SAMPLE_RATE: f64 = 1.0;
pub const DEFAULT_DRAIN_SECONDS: u64 = 10;
pub const DEFAULT_ADMIN_LISTEN: Listen = Listen(Some(SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::LOCALHOST,
    15000,
))));
pub const DEFAULT_STATS_LISTEN: Listen = Listen(Some(SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::UNSPECIFIED,
    15020,
))));
pub const DEFAULT_HEALTH_LISTEN: Listen = Listen(Some(SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::UNSPECIFIED,
    15021,
))));
pub const DEFAULT_PROM_LISTEN: Listen = Listen(None);
/// Envoy's Prometheus port, where `proxy waypoint` serves the second Prometheus endpoint.
pub const ENVOY_PROM_LISTEN: Listen = Listen(Some(SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::UNSPECIFIED,
    15090,
))));
pub const DEFAULT_ENDPOINT_MAX_CONNECTIONS: u32 = 256;
pub const DEFAULT_ENDPOINT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_ENDPOINT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_HBONE_BACKLOG: u32 = 1024;
pub const DEFAULT_HBONE_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_CA_ROOT: &str = "/var/run/secrets/istio/root-cert.pem";
pub const DEFAULT_CERT_VALIDITY_SECONDS: u64 = 86_400;
pub const DEFAULT_CERT_RENEW_FRACTION: f64 = 0.5;
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 250;
pub const DEFAULT_SPLIT_WINDOW_SECONDS: u64 = 300;
pub const DEFAULT_GATEWAY: &str = "default/waypoint";
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Everything `waypoint run` needs. Serialized as given (field names are the flags' names with
/// underscores): logged at start and served first in the admin `/config_dump`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    /// Directory of Istio YAML, watched for changes. Either this or `xds`.
    pub config: Option<PathBuf>,
    /// istiod's xDS address.
    pub xds: Option<String>,
    pub xds_root_ca: Option<PathBuf>,
    pub xds_server_name: Option<String>,
    pub xds_pod_labels: PathBuf,
    /// `none` sends no token.
    pub xds_token: PathBuf,
    pub xds_mode: XdsMode,
    pub dns_server: Option<SocketAddr>,
    pub listen: SocketAddr,
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
    pub trust_domain: String,
    pub waypoint: WaypointConfig,
    pub mesh_config: Option<PathBuf>,
    pub trust_domain_aliases: Vec<String>,
    pub upstream_hbone_port: u16,
    pub connect_timeout_ms: u64,
    /// 0: no total bound.
    pub request_headers_timeout_ms: u64,
    /// 0: wait forever.
    pub stream_send_timeout_ms: u64,
    /// `None`: from the cgroup's limit; `Some(0)`: off.
    pub memory_budget_mib: Option<u64>,
    pub upstream_max_connections: u16,
    pub upstream_idle_timeout_ms: u64,
    pub upstream_keepalive_interval_ms: u64,
    pub upstream_keepalive_timeout_ms: u64,
    pub access_log_format: crate::telemetry::access_log::Format,
    pub access_log_template: Option<String>,
    pub access_log_sample_rate: f64,
    /// `None`: one per CPU.
    pub threads: Option<usize>,
    pub work_stealing: bool,
    pub drain_seconds: u64,
    pub admin_listen: Listen,
    pub stats_listen: Listen,
    pub health_listen: Listen,
    pub endpoint_max_connections: u32,
    pub endpoint_header_timeout_ms: u64,
    pub endpoint_idle_timeout_ms: u64,
    pub hbone_backlog: u32,
    pub hbone_handshake_timeout_ms: u64,
    pub cluster_id: String,
    pub cert_provider: CertProvider,
    pub ca_address: String,
    pub ca_server_name: Option<String>,
    pub ca_root: PathBuf,
    pub ca_token: PathBuf,
    pub cert_validity_seconds: u64,
    pub cert_renew_fraction: f64,
    pub prom_listen: Listen,
    pub expected_identity: Option<String>,
    pub reload_interval_ms: u64,
    pub allow_empty_config: bool,
    pub split_window_seconds: u64,
}

impl Default for RunConfig {
    /// Every default of `waypoint run`, no config source.
    fn default() -> Self {
        Self {
            config: None,
            xds: None,
            xds_root_ca: None,
            xds_server_name: None,
            xds_pod_labels: xds_client::DEFAULT_LABELS_PATH.into(),
            xds_token: crate::control::identity::istio_ca::DEFAULT_TOKEN_PATH.into(),
            xds_mode: XdsMode::Auto,
            dns_server: None,
            listen: DEFAULT_LISTEN,
            cert_chain: DEFAULT_CERT_CHAIN.into(),
            key: DEFAULT_KEY.into(),
            trust_bundle: DEFAULT_TRUST_BUNDLE.into(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            waypoint: WaypointConfig::default(),
            mesh_config: None,
            trust_domain_aliases: Vec::new(),
            upstream_hbone_port: crate::transport::hbone::HBONE_PORT,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_headers_timeout_ms: DEFAULT_REQUEST_HEADERS_TIMEOUT_MS,
            stream_send_timeout_ms: DEFAULT_STREAM_SEND_TIMEOUT_MS,
            memory_budget_mib: None,
            upstream_max_connections: DEFAULT_UPSTREAM_MAX_CONNECTIONS,
            upstream_idle_timeout_ms: DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
            upstream_keepalive_interval_ms: DEFAULT_UPSTREAM_KEEPALIVE_INTERVAL_MS,
            upstream_keepalive_timeout_ms: DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT_MS,
            access_log_format: crate::telemetry::access_log::Format::Text,
            access_log_template: None,
            access_log_sample_rate: DEFAULT_ACCESS_LOG_SAMPLE_RATE,
            threads: None,
            work_stealing: false,
            drain_seconds: DEFAULT_DRAIN_SECONDS,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            stats_listen: DEFAULT_STATS_LISTEN,
            health_listen: DEFAULT_HEALTH_LISTEN,
            endpoint_max_connections: DEFAULT_ENDPOINT_MAX_CONNECTIONS,
            endpoint_header_timeout_ms: DEFAULT_ENDPOINT_HEADER_TIMEOUT_MS,
            endpoint_idle_timeout_ms: DEFAULT_ENDPOINT_IDLE_TIMEOUT_MS,
            hbone_backlog: DEFAULT_HBONE_BACKLOG,
            hbone_handshake_timeout_ms: DEFAULT_HBONE_HANDSHAKE_TIMEOUT_MS,
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            cert_provider: CertProvider::Files,
            ca_address: crate::control::identity::istio_ca::DEFAULT_CA_ADDRESS.into(),
            ca_server_name: None,
            ca_root: DEFAULT_CA_ROOT.into(),
            ca_token: crate::control::identity::istio_ca::DEFAULT_TOKEN_PATH.into(),
            cert_validity_seconds: DEFAULT_CERT_VALIDITY_SECONDS,
            cert_renew_fraction: DEFAULT_CERT_RENEW_FRACTION,
            prom_listen: DEFAULT_PROM_LISTEN,
            expected_identity: None,
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
            allow_empty_config: false,
            split_window_seconds: DEFAULT_SPLIT_WINDOW_SECONDS,
        }
    }
}

impl RunConfig {
    /// The per-listener limits of the admin, stats and health endpoints.
    pub fn endpoint_limits(&self) -> crate::telemetry::admin::EndpointLimits {
        crate::telemetry::admin::EndpointLimits {
            max_connections: self.endpoint_max_connections as usize,
            header_timeout: Duration::from_millis(self.endpoint_header_timeout_ms),
            idle_timeout: Duration::from_millis(self.endpoint_idle_timeout_ms),
        }
    }

    /// What the YAML loader needs.
    pub fn load_options(&self) -> routing::LoadOptions {
        let mut options = self.waypoint.load_options(&self.trust_domain);
        if let Some(path) = &self.mesh_config {
            match mesh_telemetry(path) {
                Ok((mesh, _)) => options.mesh = std::sync::Arc::new(mesh),
                // Checked at start; a file broken since is reported, and Telemetry documents
                // then find only the built-in `envoy` provider.
                Err(e) => tracing::error!(error = %e, "mesh config telemetry not read"),
            }
        }
        options
    }
}

/// The meshConfig file cannot be read (its telemetry part and its authorization providers are
/// read from it apart).
#[derive(Debug, thiserror::Error)]
#[error("reading mesh config {}: {source}", path.display())]
pub struct MeshConfigReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The meshConfig file's text.
pub fn read_mesh_config(path: &Path) -> Result<String, MeshConfigReadError> {
    std::fs::read_to_string(path).map_err(|source| MeshConfigReadError {
        path: path.to_path_buf(),
        source,
    })
}

/// Why the meshConfig file's telemetry part cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error(transparent)]
    Read(#[from] MeshConfigReadError),
    #[error("mesh config {}: {source}", path.display())]
    Telemetry {
        path: PathBuf,
        source: routing::yaml::mesh_config::MeshTelemetryError,
    },
}

/// The telemetry providers and defaults of the meshConfig file at `path`, with warnings.
pub fn mesh_telemetry(
    path: &std::path::Path,
) -> Result<(routing::yaml::mesh_config::MeshTelemetry, Vec<String>), MeshConfigError> {
    let text = read_mesh_config(path)?;
    routing::yaml::mesh_config::MeshTelemetry::parse(&text).map_err(|source| {
        MeshConfigError::Telemetry {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Which waypoint this is, for AuthorizationPolicy `targetRefs` in YAML config, and the YAML
/// input's bounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaypointConfig {
    /// This waypoint's Gateway (namespace, name).
    pub gateway: (String, String),
    pub root_namespace: String,
    pub path_normalization: routing::path::PathNormalization,
    pub config_max_bytes: u64,
    pub config_max_file_bytes: u64,
}

impl Default for WaypointConfig {
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

impl WaypointConfig {
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
            mesh: std::sync::Arc::new(routing::yaml::mesh_config::MeshTelemetry::builtin()),
        }
    }
}

/// The xDS protocol variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdsMode {
    /// What istiod uses for waypoints.
    Delta,
    /// State of the world.
    Sotw,
    /// Delta, falling back to state of the world when istiod does not implement it.
    Auto,
}

impl XdsMode {
    /// The accepted spellings, for help texts.
    pub const NAMES: [&'static str; 3] = ["delta", "sotw", "auto"];
}

impl std::str::FromStr for XdsMode {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "delta" => Ok(Self::Delta),
            "sotw" => Ok(Self::Sotw),
            "auto" => Ok(Self::Auto),
            _ => Err(InvalidValue(format!("{s:?} is not delta, sotw or auto"))),
        }
    }
}

impl std::fmt::Display for XdsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Delta => "delta",
            Self::Sotw => "sotw",
            Self::Auto => "auto",
        })
    }
}

/// Where the waypoint's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertProvider {
    /// Certificate, key and roots from files, watched for rotation.
    Files,
    /// Requested from the Istio CA and renewed.
    Istiod,
}

impl CertProvider {
    /// The accepted spellings, for help texts.
    pub const NAMES: [&'static str; 2] = ["files", "istiod"];
}

impl std::str::FromStr for CertProvider {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "files" => Ok(Self::Files),
            "istiod" => Ok(Self::Istiod),
            _ => Err(InvalidValue(format!("{s:?} is not files or istiod"))),
        }
    }
}

impl std::fmt::Display for CertProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Files => "files",
            Self::Istiod => "istiod",
        })
    }
}

/// A listen address, or `none`/`off` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Listen(pub Option<SocketAddr>);

impl Listen {
    pub fn addr(&self) -> Option<SocketAddr> {
        self.0
    }
}

impl std::str::FromStr for Listen {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "none" | "off" | "" => Ok(Self(None)),
            _ => s
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|e| InvalidValue(format!("{s:?} is not ip:port or `none`: {e}"))),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("none"),
        }
    }
}
