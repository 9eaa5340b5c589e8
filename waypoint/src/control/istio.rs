//! The container interface istiod gives a waypoint pod (`manifests/.../files/waypoint.yaml`): the
//! `proxy waypoint …` arguments of Istio's agent, its environment (`POD_NAMESPACE`,
//! `SERVICE_ACCOUNT`, `TRUST_DOMAIN`, `ISTIO_META_*`, `PROXY_CONFIG`, …) and its ports, mapped onto
//! `waypoint run`. Agent flags that mean nothing here are accepted and ignored (debug log), never
//! fatal, so this binary can replace the `istio-proxy` image under istiod's template.
//!
//! Precedence: explicit `WAYPOINT_*` variables (which `proxyMetadata` in the mesh config or the
//! `proxy.istio.io/config` annotation turns into container env) win over what is derived from
//! `PROXY_CONFIG` and the agent flags, which win over defaults.

use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::commands::cli::{Listen, RunArgs};

/// What `proxy waypoint …` resolves to.
#[derive(Debug)]
pub struct AgentLaunch {
    pub run: RunArgs,
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

/// `"5s"`, `"1.5s"`, `"100ms"`, `"2m"` (protobuf JSON durations and Go duration strings).
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
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
fn agent_flags(args: &[String]) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument {arg:?} after `proxy waypoint`"
            ));
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

#[derive(Parser)]
struct RunOnly {
    #[command(flatten)]
    run: RunArgs,
}

/// Resolve `proxy <kind> <agent args…>` with the process environment read through `env`.
pub fn resolve(
    kind: &str,
    agent_args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<AgentLaunch, String> {
    if kind != "waypoint" {
        return Err(format!(
            "`proxy {kind}` is not supported: this binary is a waypoint (use `proxy waypoint`)"
        ));
    }
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    // Local Istio YAML when WAYPOINT_CONFIG_DIR is set; else istiod over xDS, at XDS_ADDRESS,
    // PROXY_CONFIG's discoveryAddress or istiod's default address (as the Istio agent).
    let mut argv: Vec<String> = vec!["waypoint".into()];
    if set("WAYPOINT_CONFIG_DIR") {
        argv.extend([
            "--config".into(),
            env("WAYPOINT_CONFIG_DIR").unwrap_or_default(),
        ]);
    }
    let mut log_filter = "info".to_string();
    let mut log_json = false;
    let mut ignored = Vec::new();
    for (name, value) in agent_flags(agent_args)? {
        match (name.as_str(), value) {
            ("proxyLogLevel", Some(v)) => {
                log_filter = tracing_level(&v)
                    .ok_or_else(|| format!("--proxyLogLevel {v:?} is not an Envoy log level"))?
                    .to_string();
            }
            ("log_as_json", _) => log_json = true,
            ("concurrency", Some(v)) if !set("WAYPOINT_THREADS") => {
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--concurrency {v:?} is not a number"))?;
                if n > 0 {
                    argv.extend(["--threads".into(), n.to_string()]);
                }
            }
            (other, v) => ignored.push(match v {
                Some(v) => format!("--{other} {v}"),
                None => format!("--{other}"),
            }),
        }
    }
    if let Some(raw) = env("PROXY_CONFIG").filter(|v| !v.trim().is_empty()) {
        let pc: ProxyConfig = serde_json::from_str(&raw)
            .map_err(|e| format!("PROXY_CONFIG is not valid ProxyConfig JSON: {e}"))?;
        if let Some(d) = &pc.termination_drain_duration {
            let d = parse_duration(d).ok_or_else(|| {
                format!("PROXY_CONFIG terminationDrainDuration {d:?} is not a duration")
            })?;
            if !set("WAYPOINT_DRAIN_SECONDS") {
                argv.extend(["--drain-seconds".into(), d.as_secs().max(1).to_string()]);
            }
        }
        // The agent's status port (15020): merged Prometheus stats and health. Readiness stays
        // on 15021, where istiod's template points the probes.
        if let (Some(port), false) = (pc.status_port, set("WAYPOINT_STATS_LISTEN")) {
            argv.extend(["--stats-listen".into(), format!("0.0.0.0:{port}")]);
        }
        if let (Some(port), false) = (pc.proxy_admin_port, set("WAYPOINT_ADMIN_LISTEN")) {
            argv.extend(["--admin-listen".into(), format!("127.0.0.1:{port}")]);
        }
        if let (Some(n), false) = (pc.concurrency, set("WAYPOINT_THREADS")) {
            if n > 0 && !argv.iter().any(|a| a == "--threads") {
                argv.extend(["--threads".into(), n.to_string()]);
            }
        }
        if let Some(addr) = pc.discovery_address.filter(|a| !a.is_empty()) {
            if set("WAYPOINT_CONFIG_DIR") {
                ignored.push(format!(
                    "PROXY_CONFIG discoveryAddress {addr} (config comes from WAYPOINT_CONFIG_DIR)"
                ));
            } else if !set("XDS_ADDRESS") {
                argv.extend(["--xds".into(), addr]);
            }
        }
    }
    if !set("WAYPOINT_CONFIG_DIR") && !set("XDS_ADDRESS") && !argv.iter().any(|a| a == "--xds") {
        argv.extend(["--xds".into(), xds_client::DEFAULT_ADDRESS.into()]);
    }
    // Envoy's Prometheus port in istiod's template; scrapers may point at it.
    if !set("WAYPOINT_PROM_LISTEN") {
        argv.extend(["--prom-listen".into(), "0.0.0.0:15090".into()]);
    }
    if !set("CLUSTER_ID") {
        if let Some(id) = env("ISTIO_META_CLUSTER_ID").filter(|v| !v.is_empty()) {
            argv.extend(["--cluster-id".into(), id]);
        }
    }
    if !set("WAYPOINT_EXPECTED_IDENTITY") {
        if let (Some(ns), Some(sa)) = (env("POD_NAMESPACE"), env("SERVICE_ACCOUNT")) {
            let td = env("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into());
            argv.extend([
                "--expected-identity".into(),
                format!("spiffe://{td}/ns/{ns}/sa/{sa}"),
            ]);
        }
    }
    // istiod's template always asks for istiod-issued certificates (PILOT_CERT_PROVIDER, CA_ADDR
    // read by clap); file-mounted certificates (WAYPOINT_CERT_CHAIN) or an explicit provider win.
    if !set("WAYPOINT_CERT_PROVIDER") && !set("WAYPOINT_CERT_CHAIN") {
        argv.extend(["--cert-provider".into(), "istiod".into()]);
    }
    let run = RunOnly::try_parse_from(&argv)
        .map_err(|e| format!("`proxy waypoint` settings: {e}"))?
        .run;
    if let Some(filter) = env("WAYPOINT_LOG").filter(|v| !v.is_empty()) {
        log_filter = filter;
    }
    Ok(AgentLaunch {
        run,
        log_filter,
        log_json,
        ignored,
    })
}

impl Listen {
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

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
        assert_eq!(
            launch.run.cert_provider,
            crate::commands::cli::CertProvider::Istiod
        );
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
            .contains("proxy sidecar"));
        assert!(resolve("waypoint", &args("--proxyLogLevel loud"), &e)
            .unwrap_err()
            .contains("loud"));
        assert!(resolve("waypoint", &args("stray"), &e)
            .unwrap_err()
            .contains("stray"));
        let mut bad = BASE.to_vec();
        bad.push(("PROXY_CONFIG", "{not json"));
        assert!(resolve("waypoint", &[], env(&bad))
            .unwrap_err()
            .contains("PROXY_CONFIG"));
        let mut bad = BASE.to_vec();
        bad.push(("PROXY_CONFIG", r#"{"terminationDrainDuration":"soon"}"#));
        assert!(resolve("waypoint", &[], env(&bad))
            .unwrap_err()
            .contains("soon"));
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
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
