//! `waypoint manifest`: the Kubernetes objects that run one waypoint for one service account, as
//! multi-document YAML (one waypoint per service account is one command per account).
//!
//! The objects are built as `serde_json` values (no Kubernetes type crate in the binary) and
//! written with `serde-saphyr`. `waypoint/tests/manifests.rs` checks every document against the
//! `k8s-openapi` type of its kind and checks that `docker/k8s/waypoint.yaml` is this command's
//! output for the bookinfo example. `docker/README.md` explains the choices (labels, resources).

use std::fmt::Write as _;

mod objects;

pub use objects::{objects, placeholder_config};

/// Image repository of the default image; the tag is this crate's version.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/waypoint-dev/waypoint";
/// `--image` default: `ghcr.io/waypoint-dev/waypoint:<crate version>`.
pub const DEFAULT_IMAGE: &str =
    concat!("ghcr.io/waypoint-dev/waypoint:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_REPLICAS: u32 = 2;
/// The HPA's upper bound (raised to `--replicas` when that is larger).
pub const MAX_REPLICAS: u32 = 10;
/// HPA target: average CPU use as a percentage of the CPU request.
pub const CPU_TARGET_PERCENT: u32 = 70;
pub const DEFAULT_DRAIN_SECONDS: u32 = 10;
/// Seconds the kubelet waits past the drain before SIGKILL.
pub const TERMINATION_SLACK_SECONDS: u64 = 5;
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Where the ConfigMap (Istio YAML, files mode) is mounted: `WAYPOINT_CONFIG_DIR`.
pub const CONFIG_DIR: &str = "/etc/waypoint/config";
/// Where the certificate Secret is mounted; the file names are the `run` defaults.
pub const CERT_DIR: &str = "/etc/certs";
pub const CERT_CHAIN_KEY: &str = "cert-chain.pem";
pub const KEY_KEY: &str = "key.pem";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Key of the example ConfigMap (the loader reads `*.yaml`/`*.yml`).
pub const CONFIG_KEY: &str = "config.yaml";

pub const STATS_PORT: u16 = 15020;
pub const HEALTH_PORT: u16 = 15021;
pub const READINESS_PATH: &str = "/healthz/ready";
pub const METRICS_PATH: &str = "/stats/prometheus";
/// distroless `nonroot`.
pub const RUN_AS: i64 = 65532;

/// Istio's GatewayClass for waypoints, and the value istiod gives `gateway.istio.io/managed` on
/// the objects of a waypoint: istiod and ztunnel recognise waypoint pods and Services by it.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
pub const MESH_CONTROLLER_LABEL: &str = "istio.io-mesh-controller";

/// Requests: what one replica needs at modest load; limits: room for bursts (docker/README.md,
/// "Resources", derives them from docs/benchmarks.md).
pub const CPU_REQUEST: &str = "100m";
pub const MEMORY_REQUEST: &str = "64Mi";
pub const CPU_LIMIT: &str = "2";
pub const MEMORY_LIMIT: &str = "512Mi";

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ManifestArgs {
    /// Kubernetes ServiceAccount the waypoint runs as (created by these manifests). The
    /// waypoint's identity is spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, value_name = "SA", value_parser = parse_dns_label)]
    pub service_account: String,
    /// Namespace of every object.
    #[arg(long, value_name = "NS", value_parser = parse_dns_label)]
    pub namespace: String,
    /// Container image.
    #[arg(long, default_value = DEFAULT_IMAGE, value_parser = parse_image)]
    pub image: String,
    /// Deployment replicas; also the HorizontalPodAutoscaler's minimum.
    #[arg(
        long,
        default_value_t = DEFAULT_REPLICAS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub replicas: u32,
    /// Name of the Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler
    /// (and of the Gateway that may point at it). Default: <SA>-waypoint.
    #[arg(long, value_parser = parse_dns1035_label)]
    pub name: Option<String>,
    /// ConfigMap holding the Istio YAML (files mode). Default: <SA>-waypoint-config.
    #[arg(long, value_name = "NAME", value_parser = parse_dns_subdomain)]
    pub config_map: Option<String>,
    /// Do not print the example ConfigMap (keep a ConfigMap you manage yourself when
    /// re-applying); the Deployment still mounts --config-map.
    #[arg(long)]
    pub no_config_map: bool,
    /// Seconds the waypoint drains after SIGTERM (`run --drain-seconds`);
    /// terminationGracePeriodSeconds is this plus 5.
    #[arg(long, default_value_t = DEFAULT_DRAIN_SECONDS)]
    pub drain_seconds: u32,
    /// Mesh trust domain (`run --trust-domain`, env TRUST_DOMAIN).
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN, value_parser = parse_trust_domain)]
    pub trust_domain: String,
    /// Cluster id (`run --cluster-id`, env CLUSTER_ID).
    #[arg(long, default_value = DEFAULT_CLUSTER_ID, value_parser = parse_non_empty)]
    pub cluster_id: String,
}

impl ManifestArgs {
    /// The defaults for one service account, as the command line gives them.
    pub fn new(service_account: &str, namespace: &str) -> Self {
        Self {
            service_account: service_account.to_string(),
            namespace: namespace.to_string(),
            image: DEFAULT_IMAGE.to_string(),
            replicas: DEFAULT_REPLICAS,
            name: None,
            config_map: None,
            no_config_map: false,
            drain_seconds: DEFAULT_DRAIN_SECONDS,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
        }
    }

    /// Deployment/Service/PDB/HPA name.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-waypoint", self.service_account))
    }

    pub fn config_map_name(&self) -> String {
        self.config_map
            .clone()
            .unwrap_or_else(|| format!("{}-waypoint-config", self.service_account))
    }

    /// The Secret with cert-chain.pem, key.pem and root-cert.pem.
    pub fn cert_secret_name(&self) -> String {
        format!("{}-waypoint-certs", self.service_account)
    }

    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    pub fn termination_grace_period_seconds(&self) -> u64 {
        u64::from(self.drain_seconds) + TERMINATION_SLACK_SECONDS
    }

    pub fn max_replicas(&self) -> u32 {
        self.replicas.max(MAX_REPLICAS)
    }

    /// Every check the command line makes, and those that involve two flags (a derived name).
    /// The message names the flag and the bad value.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let bad = |flag: &'static str, value: &str, rule: Rule| {
            Err(InvalidInput::Value {
                flag,
                value: value.to_string(),
                rule,
            })
        };
        if let Err(why) = parse_dns_label(&self.service_account) {
            return bad("--service-account", &self.service_account, why);
        }
        if let Err(why) = parse_dns_label(&self.namespace) {
            return bad("--namespace", &self.namespace, why);
        }
        if let Err(why) = parse_image(&self.image) {
            return bad("--image", &self.image, why);
        }
        if self.replicas < 1 {
            return bad("--replicas", &self.replicas.to_string(), Rule::AtLeastOne);
        }
        let name = self.name();
        if let Err(why) = parse_dns1035_label(&name) {
            return match &self.name {
                Some(_) => bad("--name", &name, why),
                None => Err(InvalidInput::DerivedName {
                    value: self.service_account.clone(),
                    name,
                    rule: why,
                }),
            };
        }
        let config_map = self.config_map_name();
        if let Err(why) = parse_dns_subdomain(&config_map) {
            return bad("--config-map", &config_map, why);
        }
        if let Err(why) = parse_trust_domain(&self.trust_domain) {
            return bad("--trust-domain", &self.trust_domain, why);
        }
        if let Err(why) = parse_non_empty(&self.cluster_id) {
            return bad("--cluster-id", &self.cluster_id, why);
        }
        Ok(())
    }

    /// The command line that prints these manifests (flags at their defaults left out).
    pub fn command_line(&self) -> String {
        let mut cmd = format!(
            "waypoint manifest --service-account {} --namespace {}",
            self.service_account, self.namespace
        );
        let defaults = Self::new(&self.service_account, &self.namespace);
        if self.image != defaults.image {
            let _ = write!(cmd, " --image {}", self.image);
        }
        if self.replicas != defaults.replicas {
            let _ = write!(cmd, " --replicas {}", self.replicas);
        }
        if self.name() != defaults.name() {
            let _ = write!(cmd, " --name {}", self.name());
        }
        if self.config_map_name() != defaults.config_map_name() {
            let _ = write!(cmd, " --config-map {}", self.config_map_name());
        }
        if self.no_config_map {
            cmd.push_str(" --no-config-map");
        }
        if self.drain_seconds != defaults.drain_seconds {
            let _ = write!(cmd, " --drain-seconds {}", self.drain_seconds);
        }
        if self.trust_domain != defaults.trust_domain {
            let _ = write!(cmd, " --trust-domain {}", self.trust_domain);
        }
        if self.cluster_id != defaults.cluster_id {
            let _ = write!(cmd, " --cluster-id {:?}", self.cluster_id);
        }
        cmd
    }
}

/// Bad input to `waypoint manifest`; the message names the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("invalid value {value:?} for {flag}: {rule}")]
    Value {
        flag: &'static str,
        value: String,
        rule: Rule,
    },
    /// `--service-account` without `--name`: the name derived from it breaks a rule.
    #[error(
        "invalid value {value:?} for --service-account: the derived name {name:?} (Deployment \
         and Service) is invalid: {rule}; choose one with --name"
    )]
    DerivedName {
        value: String,
        name: String,
        rule: Rule,
    },
}

/// The rule a flag's value breaks (clap prints it after the flag and the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error(
        "must be a DNS-1123 label: at most 63 characters, lower-case letters, digits and '-', \
         starting and ending with a letter or digit"
    )]
    Dns1123Label,
    #[error(
        "must be a DNS-1035 label (it names a Service): at most 63 characters, lower-case \
         letters, digits and '-', starting with a letter and ending with a letter or digit"
    )]
    Dns1035Label,
    #[error(
        "must be a DNS-1123 subdomain: at most 253 characters, dot-separated parts of lower-case \
         letters, digits and '-', each starting and ending with a letter or digit"
    )]
    Dns1123Subdomain,
    #[error("must be a SPIFFE trust domain: lower-case letters, digits, '.', '-' and '_'")]
    TrustDomain,
    #[error("must not be empty")]
    Empty,
    #[error("must not contain whitespace")]
    Whitespace,
    #[error("must be at least 1")]
    AtLeastOne,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, any length.
fn is_dns1123_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_word(s)
}

/// A DNS-1123 label (ServiceAccount and namespace names).
pub fn parse_dns_label(s: &str) -> Result<String, Rule> {
    if is_dns1123_label(s) {
        Ok(s.to_string())
    } else {
        Err(Rule::Dns1123Label)
    }
}

/// A DNS-1035 label (Service names: a DNS-1123 label that starts with a letter).
pub fn parse_dns1035_label(s: &str) -> Result<String, Rule> {
    if is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase() {
        Ok(s.to_string())
    } else {
        Err(Rule::Dns1035Label)
    }
}

/// A DNS-1123 subdomain (ConfigMap names).
pub fn parse_dns_subdomain(s: &str) -> Result<String, Rule> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_word) {
        Ok(s.to_string())
    } else {
        Err(Rule::Dns1123Subdomain)
    }
}

/// A SPIFFE trust domain name.
pub fn parse_trust_domain(s: &str) -> Result<String, Rule> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(Rule::TrustDomain)
    }
}

pub fn parse_image(s: &str) -> Result<String, Rule> {
    if s.is_empty() {
        Err(Rule::Empty)
    } else if s.chars().any(char::is_whitespace) {
        Err(Rule::Whitespace)
    } else {
        Ok(s.to_string())
    }
}

pub fn parse_non_empty(s: &str) -> Result<String, Rule> {
    if s.trim().is_empty() {
        Err(Rule::Empty)
    } else {
        Ok(s.to_string())
    }
}

/// The multi-document YAML that `waypoint manifest` prints.
pub fn render(args: &ManifestArgs) -> Result<String, ManifestError> {
    let objects = objects(args)?;
    let mut out = format!(
        "# waypoint {version}: one waypoint for service account {ns}/{sa}\n\
         # identity {id}, from Secret {ns}/{secret} ({CERT_CHAIN_KEY}, {KEY_KEY}, {ROOT_CERT_KEY})\n\
         # generated by: {cmd}\n\
         # no RBAC objects: in files mode the waypoint makes no Kubernetes API calls\n",
        version = env!("CARGO_PKG_VERSION"),
        ns = args.namespace,
        sa = args.service_account,
        id = args.spiffe_id(),
        secret = args.cert_secret_name(),
        cmd = args.command_line(),
    );
    for object in &objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(object)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// `waypoint manifest`: the YAML on stdout; bad input exits 2 with the message, as clap does.
pub fn print(args: &ManifestArgs) -> anyhow::Result<()> {
    match render(args) {
        Ok(yaml) => {
            crate::commands::output::write(yaml);
            Ok(())
        }
        Err(ManifestError::Invalid(e)) => {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit()
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(parse_dns_label("bookinfo-reviews").is_ok());
        assert!(parse_dns_label("0abc").is_ok());
        for bad in ["", "Bad_SA", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(parse_dns_label(bad).is_err(), "{bad:?}");
        }
        assert!(parse_dns1035_label("0abc").is_err());
        assert!(parse_dns_subdomain("a.b-c").is_ok());
        assert!(parse_dns_subdomain("a..b").is_err());
        assert!(parse_dns_subdomain(&"a".repeat(100)).is_ok());
        assert!(parse_dns_subdomain(&"a".repeat(254)).is_err());
        assert!(parse_trust_domain("cluster.local").is_ok());
        assert!(parse_trust_domain("Cluster.local").is_err());
        assert!(parse_image("").is_err());
        assert!(parse_image("a b").is_err());
    }

    #[test]
    fn derived_name_that_is_too_long_names_the_service_account() {
        let sa = "a".repeat(60);
        let err = ManifestArgs::new(&sa, "ns").validate().unwrap_err();
        assert!(
            matches!(&err, InvalidInput::DerivedName { value, rule: Rule::Dns1035Label, .. } if *value == sa),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&sa) && text.contains("--name"), "{text}");
        assert!(
            text.contains("(Deployment and Service) is invalid: must be a DNS-1035 label"),
            "{text}"
        );
        let mut args = ManifestArgs::new(&sa, "ns");
        args.name = Some("short".into());
        args.validate().unwrap();
    }

    #[test]
    fn command_line_lists_non_default_flags() {
        let mut args = ManifestArgs::new("sa", "ns");
        assert_eq!(
            args.command_line(),
            "waypoint manifest --service-account sa --namespace ns"
        );
        args.replicas = 3;
        args.drain_seconds = 30;
        args.no_config_map = true;
        assert_eq!(
            args.command_line(),
            "waypoint manifest --service-account sa --namespace ns --replicas 3 \
             --no-config-map --drain-seconds 30"
        );
    }

    /// The example ConfigMap's config loads as it is: the waypoint turns ready on it.
    #[test]
    fn placeholder_config_loads() {
        let dir = std::env::temp_dir().join(format!("waypoint-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CONFIG_KEY), placeholder_config("bookinfo")).unwrap();
        let snapshot = routing::load_dir(&dir, DEFAULT_TRUST_DOMAIN);
        let _ = std::fs::remove_dir_all(&dir);
        let snapshot = snapshot.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            snapshot
                .service_by_host("example.bookinfo.svc.cluster.local")
                .is_some(),
            "{}",
            snapshot.to_json()
        );
        assert_eq!(
            snapshot
                .endpoints("example.bookinfo.svc.cluster.local")
                .len(),
            1
        );
    }

    #[test]
    fn yaml_quotes_strings_that_look_like_other_types() {
        let yaml = render(&ManifestArgs::new("sa", "ns")).unwrap();
        assert!(yaml.contains("prometheus.io/port: \"15020\""), "{yaml}");
        assert!(yaml.contains("prometheus.io/scrape: \"true\""), "{yaml}");
        assert!(
            yaml.contains("sidecar.istio.io/inject: \"false\""),
            "{yaml}"
        );
        assert!(yaml.contains("config.yaml: |"), "{yaml}");
    }
}
