//! Every environment variable the waypoint reads, by name, and the typed parser that builds a
//! [`RunConfig`] from them (`name=value: reason` on a bad value). An empty variable counts as
//! unset.

use super::parse::{parse_from_str, ConfigError};
use super::{
    parse_access_log_format, parse_bool, parse_fraction, parse_gateway, parse_positive, RunConfig,
};

// `waypoint run`'s settings (each also a flag).
pub const WAYPOINT_CONFIG_DIR: &str = "WAYPOINT_CONFIG_DIR";
pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
pub const XDS_SERVER_NAME: &str = "XDS_SERVER_NAME";
pub const XDS_POD_LABELS: &str = "XDS_POD_LABELS";
pub const XDS_TOKEN: &str = "XDS_TOKEN";
pub const XDS_MODE: &str = "XDS_MODE";
pub const WAYPOINT_DNS_SERVER: &str = "WAYPOINT_DNS_SERVER";
pub const WAYPOINT_LISTEN: &str = "WAYPOINT_LISTEN";
pub const WAYPOINT_CERT_CHAIN: &str = "WAYPOINT_CERT_CHAIN";
pub const WAYPOINT_KEY: &str = "WAYPOINT_KEY";
pub const WAYPOINT_TRUST_BUNDLE: &str = "WAYPOINT_TRUST_BUNDLE";
/// The mesh's trust domain (also part of the identity `proxy waypoint` expects).
pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
pub const WAYPOINT_GATEWAY: &str = "WAYPOINT_GATEWAY";
pub const WAYPOINT_ROOT_NAMESPACE: &str = "WAYPOINT_ROOT_NAMESPACE";
pub const WAYPOINT_PATH_NORMALIZATION: &str = "WAYPOINT_PATH_NORMALIZATION";
pub const WAYPOINT_CONFIG_MAX_BYTES: &str = "WAYPOINT_CONFIG_MAX_BYTES";
pub const WAYPOINT_CONFIG_MAX_FILE_BYTES: &str = "WAYPOINT_CONFIG_MAX_FILE_BYTES";
pub const WAYPOINT_MESH_CONFIG: &str = "WAYPOINT_MESH_CONFIG";
/// Comma-separated.
pub const WAYPOINT_TRUST_DOMAIN_ALIASES: &str = "WAYPOINT_TRUST_DOMAIN_ALIASES";
pub const WAYPOINT_UPSTREAM_HBONE_PORT: &str = "WAYPOINT_UPSTREAM_HBONE_PORT";
pub const WAYPOINT_CONNECT_TIMEOUT_MS: &str = "WAYPOINT_CONNECT_TIMEOUT_MS";
pub const WAYPOINT_REQUEST_HEADERS_TIMEOUT_MS: &str = "WAYPOINT_REQUEST_HEADERS_TIMEOUT_MS";
pub const WAYPOINT_STREAM_SEND_TIMEOUT_MS: &str = "WAYPOINT_STREAM_SEND_TIMEOUT_MS";
pub const WAYPOINT_MEMORY_BUDGET_MIB: &str = "WAYPOINT_MEMORY_BUDGET_MIB";
pub const WAYPOINT_UPSTREAM_MAX_CONNECTIONS: &str = "WAYPOINT_UPSTREAM_MAX_CONNECTIONS";
pub const WAYPOINT_UPSTREAM_IDLE_TIMEOUT_MS: &str = "WAYPOINT_UPSTREAM_IDLE_TIMEOUT_MS";
pub const WAYPOINT_UPSTREAM_KEEPALIVE_INTERVAL_MS: &str = "WAYPOINT_UPSTREAM_KEEPALIVE_INTERVAL_MS";
pub const WAYPOINT_UPSTREAM_KEEPALIVE_TIMEOUT_MS: &str = "WAYPOINT_UPSTREAM_KEEPALIVE_TIMEOUT_MS";
pub const WAYPOINT_ACCESS_LOG_FORMAT: &str = "WAYPOINT_ACCESS_LOG_FORMAT";
pub const WAYPOINT_ACCESS_LOG_TEMPLATE: &str = "WAYPOINT_ACCESS_LOG_TEMPLATE";
pub const WAYPOINT_ACCESS_LOG_SAMPLE_RATE: &str = "WAYPOINT_ACCESS_LOG_SAMPLE_RATE";
pub const WAYPOINT_THREADS: &str = "WAYPOINT_THREADS";
pub const WAYPOINT_WORK_STEALING: &str = "WAYPOINT_WORK_STEALING";
pub const WAYPOINT_DRAIN_SECONDS: &str = "WAYPOINT_DRAIN_SECONDS";
pub const WAYPOINT_ADMIN_LISTEN: &str = "WAYPOINT_ADMIN_LISTEN";
pub const WAYPOINT_STATS_LISTEN: &str = "WAYPOINT_STATS_LISTEN";
pub const WAYPOINT_HEALTH_LISTEN: &str = "WAYPOINT_HEALTH_LISTEN";
pub const WAYPOINT_ENDPOINT_MAX_CONNECTIONS: &str = "WAYPOINT_ENDPOINT_MAX_CONNECTIONS";
pub const WAYPOINT_ENDPOINT_HEADER_TIMEOUT_MS: &str = "WAYPOINT_ENDPOINT_HEADER_TIMEOUT_MS";
pub const WAYPOINT_ENDPOINT_IDLE_TIMEOUT_MS: &str = "WAYPOINT_ENDPOINT_IDLE_TIMEOUT_MS";
pub const WAYPOINT_HBONE_BACKLOG: &str = "WAYPOINT_HBONE_BACKLOG";
pub const WAYPOINT_HBONE_HANDSHAKE_TIMEOUT_MS: &str = "WAYPOINT_HBONE_HANDSHAKE_TIMEOUT_MS";
/// This cluster's id (the `destination_cluster` label).
pub const CLUSTER_ID: &str = "CLUSTER_ID";
pub const WAYPOINT_CERT_PROVIDER: &str = "WAYPOINT_CERT_PROVIDER";
/// The Istio CA's address, as istiod's template sets it.
pub const CA_ADDR: &str = "CA_ADDR";
pub const WAYPOINT_CA_SERVER_NAME: &str = "WAYPOINT_CA_SERVER_NAME";
pub const WAYPOINT_CA_ROOT: &str = "WAYPOINT_CA_ROOT";
pub const WAYPOINT_CA_TOKEN: &str = "WAYPOINT_CA_TOKEN";
pub const WAYPOINT_CERT_VALIDITY_SECONDS: &str = "WAYPOINT_CERT_VALIDITY_SECONDS";
pub const WAYPOINT_CERT_RENEW_FRACTION: &str = "WAYPOINT_CERT_RENEW_FRACTION";
pub const WAYPOINT_PROM_LISTEN: &str = "WAYPOINT_PROM_LISTEN";
pub const WAYPOINT_EXPECTED_IDENTITY: &str = "WAYPOINT_EXPECTED_IDENTITY";
pub const WAYPOINT_RELOAD_INTERVAL_MS: &str = "WAYPOINT_RELOAD_INTERVAL_MS";
pub const WAYPOINT_ALLOW_EMPTY_CONFIG: &str = "WAYPOINT_ALLOW_EMPTY_CONFIG";
pub const WAYPOINT_SPLIT_WINDOW_SECONDS: &str = "WAYPOINT_SPLIT_WINDOW_SECONDS";

// Read by every command.
/// The stderr log filter (tracing env-filter syntax).
pub const WAYPOINT_LOG: &str = "WAYPOINT_LOG";

// Istio's container interface (`proxy waypoint`), as istiod's waypoint template sets it.
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
/// Istio's ProxyConfig as JSON.
pub const PROXY_CONFIG: &str = "PROXY_CONFIG";
pub const ISTIO_META_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";

// Read by the xDS client (`xds_client::NodeInfo::from_env`) for the node identity sent to istiod.
pub const POD_NAME: &str = "POD_NAME";
pub const INSTANCE_IP: &str = "INSTANCE_IP";
pub const CLUSTER_DOMAIN: &str = "CLUSTER_DOMAIN";
/// Every `ISTIO_META_<KEY>` becomes node metadata `<KEY>`.
pub const ISTIO_META_PREFIX: &str = "ISTIO_META_";

// Read by the access log's `%HOSTNAME%`.
pub const HOSTNAME: &str = "HOSTNAME";

/// Reads variables through a lookup (the process environment, or a map in tests).
struct Reader<F> {
    get: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The variable's value; empty counts as unset.
    fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.is_empty())
    }

    /// The parsed value, when set.
    fn parse<T, E: std::fmt::Display>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.raw(name) else {
            return Ok(None);
        };
        match parse(&value) {
            Ok(v) => Ok(Some(v)),
            Err(reason) => Err(ConfigError::Invalid {
                name,
                value,
                reason: reason.to_string(),
            }),
        }
    }

    /// Overwrite `slot` when the variable is set.
    fn set<T, E: std::fmt::Display>(
        &self,
        slot: &mut T,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = self.parse(name, parse)? {
            *slot = v;
        }
        Ok(())
    }

    /// Fill an optional `slot` when the variable is set.
    fn set_opt<T, E: std::fmt::Display>(
        &self,
        slot: &mut Option<T>,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = self.parse(name, parse)? {
            *slot = Some(v);
        }
        Ok(())
    }
}

fn text(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.to_string())
}

fn path(s: &str) -> Result<std::path::PathBuf, std::convert::Infallible> {
    Ok(s.into())
}

impl RunConfig {
    /// `waypoint run`'s settings from the environment alone: each variable a flag of `waypoint
    /// run` reads, parsed as the flag is, the same defaults. `get` looks one variable up
    /// (`|k| std::env::var(k).ok()` for the process). At most one config source may be set.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Reader { get };
        let mut c = RunConfig::default();
        env.set_opt(&mut c.config, WAYPOINT_CONFIG_DIR, path)?;
        env.set_opt(&mut c.xds, XDS_ADDRESS, text)?;
        if c.config.is_some() && c.xds.is_some() {
            return Err(ConfigError::Conflict {
                first: WAYPOINT_CONFIG_DIR,
                second: XDS_ADDRESS,
            });
        }
        env.set_opt(&mut c.xds_root_ca, XDS_ROOT_CA, path)?;
        env.set_opt(&mut c.xds_server_name, XDS_SERVER_NAME, text)?;
        env.set(&mut c.xds_pod_labels, XDS_POD_LABELS, path)?;
        env.set(&mut c.xds_token, XDS_TOKEN, path)?;
        env.set(&mut c.xds_mode, XDS_MODE, parse_from_str)?;
        env.set_opt(&mut c.dns_server, WAYPOINT_DNS_SERVER, parse_from_str)?;
        env.set(&mut c.listen, WAYPOINT_LISTEN, parse_from_str)?;
        env.set(&mut c.cert_chain, WAYPOINT_CERT_CHAIN, path)?;
        env.set(&mut c.key, WAYPOINT_KEY, path)?;
        env.set(&mut c.trust_bundle, WAYPOINT_TRUST_BUNDLE, path)?;
        env.set(&mut c.trust_domain, TRUST_DOMAIN, text)?;
        let w = &mut c.waypoint;
        env.set(&mut w.gateway, WAYPOINT_GATEWAY, parse_gateway)?;
        env.set(&mut w.root_namespace, WAYPOINT_ROOT_NAMESPACE, text)?;
        env.set(
            &mut w.path_normalization,
            WAYPOINT_PATH_NORMALIZATION,
            parse_from_str,
        )?;
        env.set(
            &mut w.config_max_bytes,
            WAYPOINT_CONFIG_MAX_BYTES,
            parse_from_str,
        )?;
        env.set(
            &mut w.config_max_file_bytes,
            WAYPOINT_CONFIG_MAX_FILE_BYTES,
            parse_from_str,
        )?;
        env.set_opt(&mut c.mesh_config, WAYPOINT_MESH_CONFIG, path)?;
        env.set(
            &mut c.trust_domain_aliases,
            WAYPOINT_TRUST_DOMAIN_ALIASES,
            |s| Ok::<_, std::convert::Infallible>(s.split(',').map(String::from).collect()),
        )?;
        env.set(
            &mut c.upstream_hbone_port,
            WAYPOINT_UPSTREAM_HBONE_PORT,
            parse_from_str,
        )?;
        env.set(
            &mut c.connect_timeout_ms,
            WAYPOINT_CONNECT_TIMEOUT_MS,
            parse_from_str,
        )?;
        env.set(
            &mut c.request_headers_timeout_ms,
            WAYPOINT_REQUEST_HEADERS_TIMEOUT_MS,
            parse_from_str,
        )?;
        env.set(
            &mut c.stream_send_timeout_ms,
            WAYPOINT_STREAM_SEND_TIMEOUT_MS,
            parse_from_str,
        )?;
        env.set_opt(
            &mut c.memory_budget_mib,
            WAYPOINT_MEMORY_BUDGET_MIB,
            parse_from_str,
        )?;
        env.set(
            &mut c.upstream_max_connections,
            WAYPOINT_UPSTREAM_MAX_CONNECTIONS,
            parse_positive,
        )?;
        env.set(
            &mut c.upstream_idle_timeout_ms,
            WAYPOINT_UPSTREAM_IDLE_TIMEOUT_MS,
            parse_positive,
        )?;
        env.set(
            &mut c.upstream_keepalive_interval_ms,
            WAYPOINT_UPSTREAM_KEEPALIVE_INTERVAL_MS,
            parse_positive,
        )?;
        env.set(
            &mut c.upstream_keepalive_timeout_ms,
            WAYPOINT_UPSTREAM_KEEPALIVE_TIMEOUT_MS,
            parse_positive,
        )?;
        env.set(
            &mut c.access_log_format,
            WAYPOINT_ACCESS_LOG_FORMAT,
            parse_access_log_format,
        )?;
        env.set_opt(
            &mut c.access_log_template,
            WAYPOINT_ACCESS_LOG_TEMPLATE,
            text,
        )?;
        env.set(
            &mut c.access_log_sample_rate,
            WAYPOINT_ACCESS_LOG_SAMPLE_RATE,
            crate::telemetry::access_log::parse_sample_rate,
        )?;
        env.set_opt(&mut c.threads, WAYPOINT_THREADS, parse_from_str)?;
        env.set(&mut c.work_stealing, WAYPOINT_WORK_STEALING, parse_bool)?;
        env.set(&mut c.drain_seconds, WAYPOINT_DRAIN_SECONDS, parse_from_str)?;
        env.set(&mut c.admin_listen, WAYPOINT_ADMIN_LISTEN, parse_from_str)?;
        env.set(&mut c.stats_listen, WAYPOINT_STATS_LISTEN, parse_from_str)?;
        env.set(&mut c.health_listen, WAYPOINT_HEALTH_LISTEN, parse_from_str)?;
        env.set(
            &mut c.endpoint_max_connections,
            WAYPOINT_ENDPOINT_MAX_CONNECTIONS,
            parse_positive,
        )?;
        env.set(
            &mut c.endpoint_header_timeout_ms,
            WAYPOINT_ENDPOINT_HEADER_TIMEOUT_MS,
            parse_positive,
        )?;
        env.set(
            &mut c.endpoint_idle_timeout_ms,
            WAYPOINT_ENDPOINT_IDLE_TIMEOUT_MS,
            parse_positive,
        )?;
        env.set(&mut c.hbone_backlog, WAYPOINT_HBONE_BACKLOG, parse_positive)?;
        env.set(
            &mut c.hbone_handshake_timeout_ms,
            WAYPOINT_HBONE_HANDSHAKE_TIMEOUT_MS,
            parse_positive,
        )?;
        env.set(&mut c.cluster_id, CLUSTER_ID, text)?;
        env.set(&mut c.cert_provider, WAYPOINT_CERT_PROVIDER, parse_from_str)?;
        env.set(&mut c.ca_address, CA_ADDR, text)?;
        env.set_opt(&mut c.ca_server_name, WAYPOINT_CA_SERVER_NAME, text)?;
        env.set(&mut c.ca_root, WAYPOINT_CA_ROOT, path)?;
        env.set(&mut c.ca_token, WAYPOINT_CA_TOKEN, path)?;
        env.set(
            &mut c.cert_validity_seconds,
            WAYPOINT_CERT_VALIDITY_SECONDS,
            parse_from_str,
        )?;
        env.set(
            &mut c.cert_renew_fraction,
            WAYPOINT_CERT_RENEW_FRACTION,
            parse_fraction,
        )?;
        env.set(&mut c.prom_listen, WAYPOINT_PROM_LISTEN, parse_from_str)?;
        env.set_opt(&mut c.expected_identity, WAYPOINT_EXPECTED_IDENTITY, text)?;
        env.set(
            &mut c.reload_interval_ms,
            WAYPOINT_RELOAD_INTERVAL_MS,
            parse_from_str,
        )?;
        env.set(
            &mut c.allow_empty_config,
            WAYPOINT_ALLOW_EMPTY_CONFIG,
            parse_bool,
        )?;
        env.set(
            &mut c.split_window_seconds,
            WAYPOINT_SPLIT_WINDOW_SECONDS,
            parse_from_str,
        )?;
        Ok(c)
    }
}
