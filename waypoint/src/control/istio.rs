//! The container interface istiod gives a waypoint pod (`manifests/.../files/waypoint.yaml`): the
//! `proxy waypoint …` arguments of Istio's agent, its environment (`POD_NAMESPACE`,
//! `SERVICE_ACCOUNT`, `TRUST_DOMAIN`, `ISTIO_META_*`, `PROXY_CONFIG`, …) and its ports, mapped onto
//! `waypoint run`. Agent flags that mean nothing here are accepted and ignored (debug log), never
//! fatal, so this binary can replace the `istio-proxy` image under istiod's template.
//!
//! Precedence: explicit `WAYPOINT_*` variables (which `proxyMetadata` in the mesh config or the
//! `proxy.istio.io/config` annotation turns into container env) win over what is derived from
//! `PROXY_CONFIG` and the agent flags, which win over defaults.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

use crate::config::{env as vars, CertProvider, Listen, RunConfig};

/// Why `proxy waypoint …` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    #[error("`proxy {0}` is not supported: this binary is a waypoint (use `proxy waypoint`)")]
    Unsupported(String),
    #[error("unexpected argument {0:?} after `proxy waypoint`")]
    UnexpectedArgument(String),
    #[error("--proxyLogLevel {0:?} is not an Envoy log level")]
    LogLevel(String),
    #[error("--concurrency {0:?} is not a number")]
    Concurrency(String),
    #[error("PROXY_CONFIG is not valid ProxyConfig JSON: {0}")]
    ProxyConfig(serde_json::Error),
    #[error("PROXY_CONFIG terminationDrainDuration {0:?} is not a duration")]
    DrainDuration(String),
    #[error("`proxy waypoint` settings: {0}")]
    Settings(#[from] crate::config::ConfigError),
}

/// What `proxy waypoint …` resolves to.
#[derive(Debug)]
pub struct AgentLaunch {
    pub run: RunConfig,
    /// Log filter from `--proxyLogLevel` (unless `WAYPOINT_LOG` is set).
    pub log_filter: String,
    pub log_json: bool,
    /// Flags accepted but without effect here, for one debug line each.
    pub ignored: Vec<String>,
}

/// The subset of Istio's ProxyConfig (JSON in `PROXY_CONFIG`) that maps onto the waypoint.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxyConfig {
    termination_drain_duration: Option<String>,
    status_port: Option<u16>,
    proxy_admin_port: Option<u16>,
    concurrency: Option<usize>,
    discovery_address: Option<String>,
}

/// Envoy's `--proxyLogLevel` values as a tracing level.
fn tracing_level(envoy: &str) -> Option<&'static str> {
    Some(match envoy.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// Agent flags that take no value.
const BOOLEAN_FLAGS: [&str; 2] = ["log_as_json", "log_caller"];

/// Split `--k v`, `--k=v` and `-k v` into (name, value) pairs.
fn agent_flags(args: &[String]) -> Result<Vec<(String, Option<String>)>, IstioError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(IstioError::UnexpectedArgument(arg.clone()));
        };
        if let Some((k, v)) = name.split_once('=') {
            out.push((k.to_string(), Some(v.to_string())));
        } else if BOOLEAN_FLAGS.contains(&name)
            || args.get(i + 1).is_none_or(|next| next.starts_with('-'))
        {
            out.push((name.to_string(), None));
        } else {
            out.push((name.to_string(), Some(args[i + 1].clone())));
            i += 1;
        }
        i += 1;
    }
    Ok(out)
}

/// Resolve `proxy <kind> <agent args…>` with the process environment read through `env`.
pub fn resolve(
    kind: &str,
    agent_args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<AgentLaunch, IstioError> {
    if kind != "waypoint" {
        return Err(IstioError::Unsupported(kind.to_string()));
    }
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    // Every `waypoint run` setting its variable gives (local Istio YAML when
    // WAYPOINT_CONFIG_DIR is set); what follows fills in what no variable set.
    let mut run = RunConfig::from_env(&env)?;
    let mut log_filter = "info".to_string();
    let mut log_json = false;
    let mut ignored = Vec::new();
    let mut threads_from_flag = false;
    for (name, value) in agent_flags(agent_args)? {
        match (name.as_str(), value) {
            ("proxyLogLevel", Some(v)) => {
                log_filter = tracing_level(&v)
                    .ok_or_else(|| IstioError::LogLevel(v.clone()))?
                    .to_string();
            }
            ("log_as_json", _) => log_json = true,
            ("concurrency", Some(v)) if !set(vars::WAYPOINT_THREADS) => {
                let n: usize = v.parse().map_err(|_| IstioError::Concurrency(v.clone()))?;
                if n > 0 {
                    run.threads = Some(n);
                    threads_from_flag = true;
                }
            }
            (other, v) => ignored.push(match v {
                Some(v) => format!("--{other} {v}"),
                None => format!("--{other}"),
            }),
        }
    }
    if let Some(raw) = env(vars::PROXY_CONFIG).filter(|v| !v.trim().is_empty()) {
        let pc: ProxyConfig = serde_json::from_str(&raw).map_err(IstioError::ProxyConfig)?;
        if let Some(d) = &pc.termination_drain_duration {
            // A Go duration string, as the agent reads it.
            let d = routing::yaml::parse_duration(d)
                .map_err(|_| IstioError::DrainDuration(d.clone()))?;
            if !set(vars::WAYPOINT_DRAIN_SECONDS) {
                run.drain_seconds = d.as_secs().max(1);
            }
        }
        // The agent's status port (15020): merged Prometheus stats and health. Readiness stays
        // on 15021, where istiod's template points the probes.
        if let (Some(port), false) = (pc.status_port, set(vars::WAYPOINT_STATS_LISTEN)) {
            run.stats_listen = Listen(Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))));
        }
        if let (Some(port), false) = (pc.proxy_admin_port, set(vars::WAYPOINT_ADMIN_LISTEN)) {
            run.admin_listen = Listen(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        }
        if let (Some(n), false) = (pc.concurrency, set(vars::WAYPOINT_THREADS)) {
            if n > 0 && !threads_from_flag {
                run.threads = Some(n);
            }
        }
        if let Some(addr) = pc.discovery_address.filter(|a| !a.is_empty()) {
            if set(vars::WAYPOINT_CONFIG_DIR) {
                ignored.push(format!(
                    "PROXY_CONFIG discoveryAddress {addr} (config comes from WAYPOINT_CONFIG_DIR)"
                ));
            } else if !set(vars::XDS_ADDRESS) {
                run.xds = Some(addr);
            }
        }
    }
    if run.config.is_none() && run.xds.is_none() {
        run.xds = Some(xds_client::DEFAULT_ADDRESS.into());
    }
    // Envoy's Prometheus port in istiod's template; scrapers may point at it.
    if !set(vars::WAYPOINT_PROM_LISTEN) {
        run.prom_listen = crate::config::ENVOY_PROM_LISTEN;
    }
    if !set(vars::CLUSTER_ID) {
        if let Some(id) = env(vars::ISTIO_META_CLUSTER_ID).filter(|v| !v.is_empty()) {
            run.cluster_id = id;
        }
    }
    if !set(vars::WAYPOINT_EXPECTED_IDENTITY) {
        if let (Some(ns), Some(sa)) = (env(vars::POD_NAMESPACE), env(vars::SERVICE_ACCOUNT)) {
            let td = env(vars::TRUST_DOMAIN)
                .unwrap_or_else(|| crate::config::DEFAULT_TRUST_DOMAIN.into());
            run.expected_identity = Some(format!("spiffe://{td}/ns/{ns}/sa/{sa}"));
        }
    }
    // istiod's template always asks for istiod-issued certificates (CA_ADDR is read with the
    // other settings); file-mounted certificates (WAYPOINT_CERT_CHAIN) or an explicit provider
    // win.
    if !set(vars::WAYPOINT_CERT_PROVIDER) && !set(vars::WAYPOINT_CERT_CHAIN) {
        run.cert_provider = CertProvider::Istiod;
    }
    if let Some(filter) = env(vars::WAYPOINT_LOG).filter(|v| !v.is_empty()) {
        log_filter = filter;
    }
    Ok(AgentLaunch {
        run,
        log_filter,
        log_json,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    use crate::config::tests::env;

    const BASE: [(&str, &str); 5] = [
        ("WAYPOINT_CONFIG_DIR", "/etc/waypoint/config"),
        ("POD_NAMESPACE", "bookinfo"),
        ("SERVICE_ACCOUNT", "waypoint"),
        ("TRUST_DOMAIN", "example.org"),
        ("ISTIO_META_CLUSTER_ID", "east"),
    ];

    #[test]
    fn template_arguments_and_environment() {
        let mut e = BASE.to_vec();
        e.push((
            "PROXY_CONFIG",
            r#"{"terminationDrainDuration":"7s","statusPort":15029,"proxyAdminPort":15000,"discoveryAddress":"istiod.istio-system.svc:15012","tracing":{"zipkin":{}}}"#,
        ));
        let launch = resolve(
            "waypoint",
            &args("--domain $(POD_NAMESPACE).svc.cluster.local --serviceCluster waypoint.bookinfo --proxyLogLevel warning --proxyComponentLogLevel misc:error --log_output_level default:info --log_as_json --outlierLogPath=/dev/stdout"),
            env(&e),
        )
        .unwrap();
        assert_eq!(launch.log_filter, "warn");
        assert!(launch.log_json);
        assert_eq!(launch.run.drain_seconds, 7);
        assert_eq!(
            launch.run.stats_listen.addr(),
            Some("0.0.0.0:15029".parse().unwrap()),
            "statusPort"
        );
        assert_eq!(
            launch.run.health_listen.addr(),
            Some("0.0.0.0:15021".parse().unwrap()),
            "readiness stays where the template's probes look"
        );
        assert_eq!(
            launch.run.prom_listen.addr(),
            Some("0.0.0.0:15090".parse().unwrap())
        );
        assert_eq!(launch.run.cluster_id, "east");
        assert_eq!(
            launch.run.expected_identity.as_deref(),
            Some("spiffe://example.org/ns/bookinfo/sa/waypoint")
        );
        assert_eq!(launch.run.cert_provider, CertProvider::Istiod);
        let ignored = launch.ignored.join("\n");
        for flag in [
            "--domain",
            "--serviceCluster",
            "--proxyComponentLogLevel",
            "--outlierLogPath",
            "discoveryAddress",
        ] {
            assert!(ignored.contains(flag), "{flag} not reported: {ignored}");
        }
    }

    #[test]
    fn bad_input_is_named() {
        let e = env(&BASE);
        assert!(resolve("sidecar", &[], &e)
            .unwrap_err()
            .to_string()
            .contains("proxy sidecar"));
        assert!(resolve("waypoint", &args("--proxyLogLevel loud"), &e)
            .unwrap_err()
            .to_string()
            .contains("loud"));
        assert!(resolve("waypoint", &args("stray"), &e)
            .unwrap_err()
            .to_string()
            .contains("stray"));
        let mut bad = BASE.to_vec();
        bad.push(("PROXY_CONFIG", "{not json"));
        assert!(resolve("waypoint", &[], env(&bad))
            .unwrap_err()
            .to_string()
            .contains("PROXY_CONFIG"));
        let mut bad = BASE.to_vec();
        bad.push(("PROXY_CONFIG", r#"{"terminationDrainDuration":"soon"}"#));
        assert!(resolve("waypoint", &[], env(&bad))
            .unwrap_err()
            .to_string()
            .contains("soon"));
        let mut bad = BASE.to_vec();
        bad.push(("WAYPOINT_ADMIN_LISTEN", "everywhere"));
        let err = resolve("waypoint", &[], env(&bad)).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "`proxy waypoint` settings: environment variable WAYPOINT_ADMIN_LISTEN=\"everywhere\": "
            ),
            "{err}"
        );
    }

    #[test]
    fn without_a_config_dir_config_comes_from_istiod() {
        let launch = resolve("waypoint", &[], env(&[])).unwrap();
        assert_eq!(launch.run.config, None);
        assert_eq!(
            launch.run.xds.as_deref(),
            Some("istiod.istio-system.svc:15012")
        );
        let mut e: Vec<_> = BASE[1..].to_vec();
        e.push((
            "PROXY_CONFIG",
            r#"{"discoveryAddress":"istiod-canary.istio-system.svc:15012"}"#,
        ));
        let launch = resolve("waypoint", &[], env(&e)).unwrap();
        assert_eq!(
            launch.run.xds.as_deref(),
            Some("istiod-canary.istio-system.svc:15012")
        );
        assert!(launch
            .ignored
            .iter()
            .all(|i| !i.contains("discoveryAddress")));
    }

    #[test]
    fn durations() {
        let parse = |s| routing::yaml::parse_duration(s).ok();
        assert_eq!(parse("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("5"), None);
        assert_eq!(parse("-1s"), None);
    }
}
