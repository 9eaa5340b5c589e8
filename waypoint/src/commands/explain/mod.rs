//! `waypoint explain --config DIR [--source ID] [-H 'name: value']… METHOD URL`: how the
//! waypoint would handle one request, offline — the service it addresses, the VirtualService and
//! route that match (and why the earlier ones did not), the destinations with their weights,
//! subsets, clusters, load-balancing policy and the endpoints behind each.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use routing::{Destination, RouteDecision, RouteExplanation, SimpleRequest, Snapshot};
use serde::Serialize;

use crate::control::identity::SpiffeId;

mod authz;
mod report;

use authz::explain_authz;

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("config_source")
        .required(true)
        .args(["config", "xds_dump"])
))]
pub struct ExplainArgs {
    /// Directory of Istio YAML, as given to `waypoint run --config`. Either this or --xds-dump.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Instead of YAML: what istiod sends the waypoint, saved as JSON (an Envoy waypoint's
    /// `/config_dump`, or `istioctl proxy-config all <waypoint-pod> -o json`).
    #[arg(long, value_name = "FILE")]
    pub xds_dump: Option<PathBuf>,
    /// Mesh trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[command(flatten)]
    pub waypoint: crate::commands::cli::WaypointArgs,
    /// SPIFFE id of the client workload (its namespace feeds `sourceNamespace` matches).
    #[arg(long)]
    pub source: Option<SpiffeId>,
    /// IP of the client pod: its WorkloadEntry labels feed `sourceLabels` matches.
    #[arg(long)]
    pub source_ip: Option<IpAddr>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// HTTP method, e.g. GET.
    pub method: String,
    /// `http://host[:port]/path?query`; host is a service name, FQDN, VIP or pod IP.
    pub url: String,
}

impl ExplainArgs {
    /// The config the request is explained against, for messages.
    fn source_name(&self) -> String {
        match (&self.config, &self.xds_dump) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(file)) => file.display().to_string(),
            (None, None) => "(no config)".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// A `-H` header or the URL that `explain` and `curl` could not read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0:?} is not `name: value`")]
    NotAHeader(String),
    #[error("{0:?} has an empty header name")]
    EmptyHeaderName(String),
    #[error("{url:?} is not a URL: {source}")]
    NotAUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("{0:?} has no host (use http://host[:port]/path)")]
    NoHost(String),
}

/// Why a request cannot be explained: its URL, or what it addresses is not in the config.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0} is a pod that no service covers on that port")]
    PodWithoutService(SocketAddr),
    #[error("no port of {host} covers {port}")]
    NoServicePortFor { host: String, port: u16 },
    #[error("{address} is neither a service VIP nor a known pod in {config}")]
    UnknownAddress { address: SocketAddr, config: String },
    #[error("no service {host:?} in {config} (services: {known})")]
    UnknownService {
        host: String,
        config: String,
        known: String,
    },
    #[error("{host} has no port {port} (ports: {ports})")]
    UnknownPort {
        host: String,
        port: u16,
        ports: String,
    },
    #[error("{0} has several ports; put one in the URL")]
    SeveralPorts(String),
}

pub(crate) fn parse_header(s: &str) -> Result<(String, String), InputError> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| InputError::NotAHeader(s.to_string()))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(InputError::EmptyHeaderName(s.to_string()));
    }
    Ok((k.to_ascii_lowercase(), v.trim().to_string()))
}

/// The parts of the URL explain (and curl) need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

pub(crate) fn parse_url(url: &str) -> Result<Target, InputError> {
    let uri: http::Uri = url.parse().map_err(|source| InputError::NotAUrl {
        url: url.to_string(),
        source,
    })?;
    let authority = uri
        .authority()
        .ok_or_else(|| InputError::NoHost(url.to_string()))?;
    Ok(Target {
        scheme: uri.scheme_str().unwrap_or("http").to_string(),
        host: authority.host().trim_matches(['[', ']']).to_string(),
        port: authority.port_u16(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

#[derive(Debug, Serialize)]
pub struct DestinationReport {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    pub weight: u32,
    /// Share of the route's traffic (weight / total).
    pub share: f64,
    pub cluster: Option<serde_json::Value>,
    /// Why there is no cluster, if there is none.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub url: String,
    pub source: Option<String>,
    pub source_labels: Option<BTreeMap<String, String>>,
    pub service: String,
    pub port: u16,
    pub protocol: String,
    pub routing: RouteExplanation,
    pub destinations: Vec<DestinationReport>,
    /// How the destination's connection manager handles the path, and what became of it.
    pub path: PathReport,
    /// The authorization decision, when policies apply to the destination.
    pub authorization: Option<AuthzExplanation>,
}

/// The path handling the request meets before authorization and routing.
#[derive(Debug, Serialize)]
pub struct PathReport {
    pub policy: routing::path::PathPolicy,
    /// The path authorization and routing see, when it differs from the request's.
    pub normalized: Option<String>,
    /// The waypoint answers itself (escaped slashes rejected or redirected).
    pub local_reply: Option<String>,
}

/// Which policies applied, how each rule evaluated, and the decision — what the data path
/// decides for the same request.
#[derive(Debug, Serialize)]
pub struct AuthzExplanation {
    /// RequestAuthentication: the token's outcome (`verified iss/sub`, `no token`, or Envoy's
    /// rejection message), when the destination has JWT providers.
    pub authentication: Option<String>,
    /// The policies' decision (none when the token was rejected first).
    pub decision: Option<routing::authz::Decision>,
    /// The status the request gets when refused: 401 (token) or 403 (policy).
    pub status: Option<u16>,
    /// The response code details when refused.
    pub response_code_details: Option<String>,
    pub policies: Vec<routing::authz::PolicyTrace>,
}

/// Explain `args` against `snapshot`.
pub fn explain(snapshot: &Snapshot, args: &ExplainArgs) -> Result<Explanation, ExplainError> {
    let mut target = parse_url(&args.url)?;
    // Pod-addressed requests get the waypoint-wide policies (istiod's direct chains).
    let mut pod_addressed = false;
    // The pod a pod-addressed request goes to: (name, identity).
    let mut pod = (String::new(), String::new());
    let (service, port) = match target.host.parse::<IpAddr>() {
        Ok(ip) => {
            let port = target.port.unwrap_or(80);
            match snapshot.resolve_destination(SocketAddr::new(ip, port)) {
                Some(Destination::Service { service, port }) => (service, port),
                Some(Destination::Pod {
                    services,
                    port,
                    endpoint,
                    ..
                }) => {
                    pod_addressed = true;
                    pod = (
                        endpoint.workload.name.to_string(),
                        endpoint.workload.identity.to_string(),
                    );
                    let service = services
                        .first()
                        .ok_or(ExplainError::PodWithoutService(SocketAddr::new(ip, port)))?;
                    let sp = service
                        .ports
                        .iter()
                        .find(|p| p.target_port == port || p.number == port)
                        .ok_or_else(|| ExplainError::NoServicePortFor {
                            host: service.hostname.clone(),
                            port,
                        })?;
                    (*service, sp)
                }
                None => {
                    return Err(ExplainError::UnknownAddress {
                        address: SocketAddr::new(ip, port),
                        config: args.source_name(),
                    })
                }
            }
        }
        Err(_) => {
            let service = snapshot.service_by_host(&target.host).ok_or_else(|| {
                let known: Vec<&str> = snapshot.services().map(|s| s.hostname.as_str()).collect();
                ExplainError::UnknownService {
                    host: target.host.clone(),
                    config: args.source_name(),
                    known: known.join(", "),
                }
            })?;
            let port = match target.port {
                Some(p) => service.port(p).ok_or_else(|| {
                    let ports: Vec<String> =
                        service.ports.iter().map(|p| p.number.to_string()).collect();
                    ExplainError::UnknownPort {
                        host: service.hostname.clone(),
                        port: p,
                        ports: ports.join(", "),
                    }
                })?,
                None if service.ports.len() == 1 => &service.ports[0],
                None => return Err(ExplainError::SeveralPorts(service.hostname.clone())),
            };
            (service, port)
        }
    };
    // As the data path: the destination's path handling (its connection manager under xDS,
    // else the process-wide setting), before authorization and routing.
    let path_policy = if pod_addressed {
        snapshot.pod_path()
    } else {
        port.path
    }
    .unwrap_or_else(|| args.waypoint.path_normalization.into());
    let mut path_report = PathReport {
        policy: path_policy,
        normalized: None,
        local_reply: None,
    };
    match routing::path::apply(&target.path, &path_policy) {
        routing::path::PathOutcome::Unchanged => {}
        routing::path::PathOutcome::Rewrite(p) => {
            path_report.normalized = Some(p.clone());
            target.path = p;
        }
        routing::path::PathOutcome::Reject => {
            path_report.local_reply = Some("400 path_normalization_failed".to_string());
        }
        routing::path::PathOutcome::Redirect(p) => {
            // What the client meets when it follows the redirect is explained below.
            path_report.local_reply = Some(format!("307 location: {p}"));
            path_report.normalized = Some(p.clone());
            target.path = p;
        }
    }
    // As on the data path, a workload's labels are the source's only when the source proves
    // that workload's identity (without --source, the workload's own identity is assumed).
    let source_labels = args
        .source_ip
        .and_then(|ip| snapshot.source_workload(ip))
        .filter(|w| {
            args.source
                .as_ref()
                .is_none_or(|id| crate::dataplane::source::identity_matches(w, id))
        })
        .map(|e| e.labels.to_map());
    let mut req = SimpleRequest::new(target.path.clone())
        .with_method(args.method.to_ascii_uppercase())
        .with_scheme(target.scheme.clone())
        .with_authority(match target.port {
            Some(p) => format!("{}:{p}", target.host),
            None => target.host.clone(),
        })
        .with_port(port.number);
    for (k, v) in &args.headers {
        req = req.with_header(k.clone(), v.clone());
    }
    if let Some(ns) = args.source.as_ref().map(|s| s.namespace.clone()) {
        req = req.with_source_namespace(ns);
    }
    if let Some(labels) = &source_labels {
        req = req.with_source_labels(labels.clone());
    }
    let authority = match target.port {
        Some(p) => format!("{}:{p}", target.host),
        None => target.host.clone(),
    };
    let authorization = explain_authz(
        snapshot,
        args,
        (!pod_addressed).then_some(service.hostname.as_str()),
        SocketAddr::new(
            target
                .host
                .parse()
                .ok()
                .or_else(|| service.vips.first().copied())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            target.port.unwrap_or(port.number),
        ),
        &authority,
        &target.path,
    );
    let (routing, destinations) = if pod_addressed {
        let dport = target.port.unwrap_or(port.number);
        pod_route(service, port.number, &target.host, dport, &pod)
    } else {
        service_route(snapshot, service, port.number, &req)
    };
    // The route's timeout, retries, faults, mirrors and header operations are in
    // `routing.actions` (the default route's too: its retries are the port's, as istiod wrote them
    // or Istio's default in files mode).
    Ok(Explanation {
        method: args.method.to_ascii_uppercase(),
        url: args.url.clone(),
        source: args.source.as_ref().map(|s| s.to_string()),
        source_labels,
        service: service.hostname.clone(),
        port: port.number,
        protocol: format!("{:?}", port.protocol).to_ascii_lowercase(),
        routing,
        destinations,
        path: path_report,
        authorization,
    })
}

/// istiod's `direct-http`: the pod the client addressed (`ip:dport`, named `pod.0` with
/// identity `pod.1`), whatever the Host; no VirtualService route applies.
fn pod_route(
    service: &routing::Service,
    port: u16,
    ip: &str,
    dport: u16,
    pod: &(String, String),
) -> (routing::RouteExplanation, Vec<DestinationReport>) {
    let routing = routing::RouteExplanation {
        service: service.hostname.clone(),
        port,
        virtual_services: Vec::new(),
        applied: None,
        routes: Vec::new(),
        decision: routing::ExplainedDecision::Default {
            reason: format!(
                "pod-addressed: forwarded to {ip}:{dport} whatever the Host \
                 (istiod's direct-http); routes do not apply"
            ),
        },
        actions: Vec::new(),
    };
    let destination = DestinationReport {
        host: ip.to_string(),
        subset: None,
        port: dport,
        weight: 100,
        share: 1.0,
        cluster: Some(serde_json::json!({
            "name": format!("inbound-pod|{dport}||{ip}"),
            "lb": "none (the addressed pod)",
            "endpoints": [{
                "name": pod.0,
                "target": format!("{ip}:{dport}"),
                "identity": pod.1,
            }],
        })),
        problem: None,
    };
    (routing, vec![destination])
}

/// The route `req` takes on `service:port` and the weighted destinations it leads to.
fn service_route(
    snapshot: &Snapshot,
    service: &routing::Service,
    port: u16,
    req: &routing::SimpleRequest,
) -> (routing::RouteExplanation, Vec<DestinationReport>) {
    let routing = snapshot.explain_route(service, port, req);
    let mut targets: Vec<(String, Option<String>, u16, u32)> = Vec::new();
    match snapshot.route(service, port, req) {
        RouteDecision::Route { route, .. } => {
            for d in &route.destinations {
                targets.push((
                    d.host.clone(),
                    d.subset.clone(),
                    d.port.unwrap_or(port),
                    d.weight,
                ));
            }
        }
        RouteDecision::Default => {
            targets.push((service.hostname.clone(), None, port, 100));
        }
        RouteDecision::NoRoute => {}
    }
    let total: u64 = targets.iter().map(|t| u64::from(t.3)).sum();
    let destinations = targets
        .into_iter()
        .map(|(host, subset, dport, weight)| {
            let cluster = snapshot.cluster(&host, dport, subset.as_deref());
            DestinationReport {
                share: if total == 0 {
                    0.0
                } else {
                    f64::from(weight) / total as f64
                },
                problem: cluster.is_none().then(|| {
                    format!(
                        "no cluster for {host} port {dport}{} (unknown subset or port): 503 NC",
                        subset
                            .as_deref()
                            .map(|s| format!(" subset {s}"))
                            .unwrap_or_default()
                    )
                }),
                cluster: cluster.map(|c| serde_json::to_value(c).unwrap_or_default()),
                host,
                subset,
                port: dport,
                weight,
            }
        })
        .collect();
    (routing, destinations)
}

/// Load the config, explain, print. Returns the exit code (1 for bad config or input).
pub fn run(args: &ExplainArgs) -> i32 {
    let snapshot = match (&args.config, &args.xds_dump) {
        (Some(dir), _) => {
            match routing::load_dir_with(dir, &args.waypoint.load_options(&args.trust_domain)) {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!(
                        "{} problem(s) in {}:\n{errors}",
                        errors.len(),
                        dir.display()
                    );
                    return 1;
                }
            }
        }
        (None, Some(file)) => match crate::control::xds::load_dump(file, &args.trust_domain) {
            Ok(dump) => {
                for r in &dump.refused {
                    eprintln!("warning: left out, Envoy would reject it: {r}");
                }
                dump.translation.snapshot
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        },
        (None, None) => {
            eprintln!("error: give --config DIR or --xds-dump FILE");
            return 1;
        }
    };
    match explain(&snapshot, args) {
        Ok(e) => {
            match args.output {
                Output::Text => crate::commands::output::write(e.render_text()),
                Output::Json => crate::outln!(
                    "{}",
                    serde_json::to_string_pretty(&e)
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                ),
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers() {
        assert_eq!(
            parse_url("http://reviews:9080/r/1?x=2").unwrap(),
            Target {
                scheme: "http".into(),
                host: "reviews".into(),
                port: Some(9080),
                path: "/r/1?x=2".into()
            }
        );
        assert_eq!(parse_url("http://10.0.0.10").unwrap().port, None);
        assert!(matches!(parse_url("/no/host"), Err(InputError::NoHost(_))));
        assert_eq!(
            parse_url("/no/host").unwrap_err().to_string(),
            "\"/no/host\" has no host (use http://host[:port]/path)"
        );
        assert_eq!(
            parse_header("End-User: jason").unwrap(),
            ("end-user".to_string(), "jason".to_string())
        );
        assert!(matches!(
            parse_header("nocolon"),
            Err(InputError::NotAHeader(_))
        ));
    }
}
