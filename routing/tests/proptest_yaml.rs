//! Property tests of the Istio YAML front-end (`routing::load_str`), and the
//! stable-Rust regression harness of the `yaml_front_end` fuzz target
//! (`routing/fuzz`): every file of its seed corpus runs through the same code
//! (`routing/fuzz/src/exercise.rs`, included below) on every `cargo test`.
//!
//! Properties (256 cases each unless `PROPTEST_CASES` is set; failure
//! persistence off, so nothing is written next to the sources):
//! - (a) generated *valid* configurations (services with VIPs, ports and
//!   protocols; workloads with labels and service accounts; DestinationRules
//!   with subsets and load-balancer policies; VirtualServices with uri /
//!   header / method / query matches and weighted routes to existing subsets),
//!   dealt into 1–3 files, always load, and `route()` on generated requests
//!   returns `Default`, `NoRoute` (only for services a VirtualService names) or
//!   a route whose every destination's cluster exists;
//! - (b) mutations of that YAML (truncation, deleted or duplicated lines,
//!   swapped characters, values replaced with garbage) never panic;
//! - (c) every load error names one of the loaded files (checked on every
//!   failed load here, and in a targeted property that must fail).

use proptest::prelude::*;
use proptest::sample::Index;
use routing::{load_str, RouteDecision, SimpleRequest, Snapshot};
use std::collections::BTreeSet;
use std::fmt::Write as _;

#[path = "../fuzz/src/exercise.rs"]
mod exercise;

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------------------
// The generator: a model of a valid configuration, rendered to YAML.
// References between objects are `Index`es resolved at render time, so every
// reference points at something that exists.
// ---------------------------------------------------------------------------

const NAMESPACES: [&str; 2] = ["default", "prod"];
const PORT_NAMES: [&str; 8] = [
    "http", "http2", "grpc", "tcp", "tls", "https", "grpc-web", "mongo",
];
const PROTOCOLS: [&str; 7] = ["HTTP", "HTTP2", "GRPC", "TCP", "TLS", "GRPC-WEB", "UDP"];
const SERVICE_ACCOUNTS: [&str; 3] = ["default", "sa-a", "sa-b"];
const SUBSET_NAMES: [&str; 5] = ["v1", "v2", "v3", "canary", "stable"];
const SIMPLE_LB: [&str; 6] = [
    "ROUND_ROBIN",
    "RANDOM",
    "LEAST_REQUEST",
    "LEAST_CONN",
    "PASSTHROUGH",
    "UNSPECIFIED",
];
const MAGLEV_PRIMES: [u32; 3] = [7, 251, 1021];
const PATHS: [&str; 9] = [
    "/",
    "/api/",
    "/api/v1/items",
    "/API/x",
    "/exact",
    "/v1/reviews",
    "/reviews/7",
    "/admin/panel",
    "/static/a.css",
];
const URI_REGEXES: [&str; 7] = [
    "/api/.*",
    "/v[0-9]+/.*",
    "(?i)/admin.*",
    ".*",
    "/exact",
    "[a-z/]+",
    "/reviews/[0-9]+",
];
const HEADER_NAMES: [&str; 5] = [
    "end-user",
    "x-version",
    "x-canary",
    "user-agent",
    ":authority",
];
const HEADER_VALUES: [&str; 5] = ["jason", "v2", "true", "", "mozilla/5.0"];
const HEADER_REGEXES: [&str; 3] = ["j.*", "v[0-9]", "(true|yes)"];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const QUERY_NAMES: [&str; 2] = ["user", "debug"];

#[derive(Debug, Clone, Copy)]
enum HostForm {
    /// `name` (expanded in the object's namespace)
    Short,
    /// `name.ns`
    NameNs,
    /// `name.ns.svc`
    NameNsSvc,
    /// `name.ns.svc.cluster.local`
    Fqdn,
}

fn host_form() -> impl Strategy<Value = HostForm> {
    prop_oneof![
        Just(HostForm::Short),
        Just(HostForm::NameNs),
        Just(HostForm::NameNsSvc),
        Just(HostForm::Fqdn),
    ]
}

#[derive(Debug, Clone)]
struct PortG {
    number: u16,
    name: usize,
    suffix: bool,
    protocol: Option<usize>,
    target_port: Option<u16>,
}

#[derive(Debug, Clone)]
struct WorkloadG {
    version: u8,
    tier: Option<bool>,
    sa: usize,
    last_octet: u8,
}

#[derive(Debug, Clone)]
enum LbG {
    Simple(usize, Option<u16>),
    Header(usize),
    Cookie(bool),
    SourceIp,
    Query(usize),
}

#[derive(Debug, Clone)]
enum AlgoG {
    Default,
    Ring(u16),
    Maglev(usize),
}

#[derive(Debug, Clone)]
struct PolicyG {
    lb: Option<(LbG, AlgoG)>,
    pool: Option<(u16, u16)>,
    outlier: Option<(u8, u8)>,
    port_level: Option<(Index, usize)>,
}

#[derive(Debug, Clone)]
enum SubsetLabels {
    Version(u8),
    Tier(bool),
    All,
}

#[derive(Debug, Clone)]
struct SubsetG {
    name: usize,
    labels: SubsetLabels,
    policy: Option<PolicyG>,
}

#[derive(Debug, Clone)]
struct DrG {
    form: HostForm,
    policy: Option<PolicyG>,
    subsets: Vec<SubsetG>,
}

#[derive(Debug, Clone)]
enum StrG {
    Exact(usize),
    Prefix(usize),
    Regex(usize),
    Present,
}

#[derive(Debug, Clone)]
struct MatchG {
    uri: Option<StrG>,
    ignore_uri_case: bool,
    headers: Vec<(usize, StrG)>,
    without_headers: Vec<(usize, StrG)>,
    method: Option<StrG>,
    query: Option<(usize, StrG)>,
    port: Option<Index>,
    source_namespace: Option<usize>,
    authority_prefix: bool,
}

#[derive(Debug, Clone)]
struct DestG {
    target: Index,
    form: HostForm,
    subset: Option<Index>,
    explicit_port: bool,
    port: Index,
    weight: u8,
}

#[derive(Debug, Clone)]
struct RouteG {
    named: bool,
    matches: Vec<MatchG>,
    dests: Vec<DestG>,
    weight_on_single: Option<u8>,
}

#[derive(Debug, Clone)]
struct VsG {
    form: HostForm,
    extra_host: Option<Index>,
    routes: Vec<RouteG>,
}

#[derive(Debug, Clone)]
struct ServiceG {
    stem: String,
    ns: usize,
    external: bool,
    form: HostForm,
    vips: Vec<(bool, u8)>,
    ports: Vec<PortG>,
    inline: bool,
    select_all: bool,
    workloads: Vec<WorkloadG>,
    dr: Option<DrG>,
    vs: Option<VsG>,
}

#[derive(Debug, Clone)]
struct ConfigG {
    services: Vec<ServiceG>,
    /// Which file each document goes to (index into 1–3 files).
    files: usize,
    placement: Vec<Index>,
}

fn port_g() -> impl Strategy<Value = PortG> {
    (
        prop_oneof![Just(80u16), Just(443), Just(8080), Just(9080), 1u16..=65535],
        0..PORT_NAMES.len(),
        any::<bool>(),
        proptest::option::weighted(0.3, 0..PROTOCOLS.len()),
        proptest::option::weighted(0.3, 1u16..=65535),
    )
        .prop_map(|(number, name, suffix, protocol, target_port)| PortG {
            number,
            name,
            suffix,
            protocol,
            target_port,
        })
}

fn workload_g() -> impl Strategy<Value = WorkloadG> {
    (
        1u8..=3,
        proptest::option::of(any::<bool>()),
        0..SERVICE_ACCOUNTS.len(),
        1u8..=254,
    )
        .prop_map(|(version, tier, sa, last_octet)| WorkloadG {
            version,
            tier,
            sa,
            last_octet,
        })
}

fn algo_g() -> impl Strategy<Value = AlgoG> {
    prop_oneof![
        Just(AlgoG::Default),
        (1u16..=512).prop_map(AlgoG::Ring),
        (0..MAGLEV_PRIMES.len()).prop_map(AlgoG::Maglev),
    ]
}

fn lb_g() -> impl Strategy<Value = (LbG, AlgoG)> {
    prop_oneof![
        (
            (
                0..SIMPLE_LB.len(),
                proptest::option::weighted(0.3, 1u16..=120)
            )
                .prop_map(|(s, w)| LbG::Simple(s, w)),
            Just(AlgoG::Default)
        ),
        ((0..HEADER_NAMES.len() - 1).prop_map(LbG::Header), algo_g()),
        (any::<bool>().prop_map(LbG::Cookie), algo_g()),
        (Just(LbG::SourceIp), algo_g()),
        ((0..QUERY_NAMES.len()).prop_map(LbG::Query), algo_g()),
    ]
}

fn policy_g() -> impl Strategy<Value = PolicyG> {
    (
        proptest::option::of(lb_g()),
        proptest::option::weighted(0.3, (1u16..=1000, 1u16..=1000)),
        proptest::option::weighted(0.3, (1u8..=10, 0u8..=100)),
        proptest::option::weighted(0.2, (any::<Index>(), 0..SIMPLE_LB.len())),
    )
        .prop_map(|(lb, pool, outlier, port_level)| PolicyG {
            lb,
            pool,
            outlier,
            port_level,
        })
}

fn dr_g() -> impl Strategy<Value = DrG> {
    let subset = (
        0..SUBSET_NAMES.len(),
        prop_oneof![
            (1u8..=4).prop_map(SubsetLabels::Version),
            any::<bool>().prop_map(SubsetLabels::Tier),
            Just(SubsetLabels::All),
        ],
        proptest::option::weighted(0.2, policy_g()),
    )
        .prop_map(|(name, labels, policy)| SubsetG {
            name,
            labels,
            policy,
        });
    (
        host_form(),
        proptest::option::of(policy_g()),
        prop::collection::vec(subset, 0..=4),
    )
        .prop_map(|(form, policy, subsets)| DrG {
            form,
            policy,
            subsets,
        })
}

fn str_g(values: usize, regexes: usize, prefixes: bool) -> impl Strategy<Value = StrG> {
    let prefix = if prefixes {
        (0..values).prop_map(StrG::Prefix).boxed()
    } else {
        (0..values).prop_map(StrG::Exact).boxed()
    };
    prop_oneof![
        3 => (0..values).prop_map(StrG::Exact),
        2 => prefix,
        2 => (0..regexes).prop_map(StrG::Regex),
        1 => Just(StrG::Present),
    ]
}

fn match_g() -> impl Strategy<Value = MatchG> {
    (
        proptest::option::of(str_g(PATHS.len(), URI_REGEXES.len(), true)),
        any::<bool>(),
        prop::collection::vec(
            (
                0..HEADER_NAMES.len(),
                // no empty `prefix` outside `uri`: HEADER_VALUES[3] is ""
                str_g(HEADER_VALUES.len(), HEADER_REGEXES.len(), false),
            ),
            0..=2,
        ),
        prop::collection::vec(
            (
                0..HEADER_NAMES.len(),
                str_g(HEADER_VALUES.len(), HEADER_REGEXES.len(), false),
            ),
            0..=1,
        ),
        proptest::option::weighted(0.3, str_g(METHODS.len(), 1, true)),
        proptest::option::weighted(
            0.2,
            (0..QUERY_NAMES.len(), str_g(HEADER_VALUES.len(), 1, false)),
        ),
        proptest::option::weighted(0.2, any::<Index>()),
        proptest::option::weighted(0.1, 0..NAMESPACES.len()),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(
                uri,
                ignore_uri_case,
                headers,
                without_headers,
                method,
                query,
                port,
                source_namespace,
                authority_prefix,
            )| MatchG {
                uri,
                ignore_uri_case,
                headers,
                without_headers,
                method,
                query,
                port,
                source_namespace,
                authority_prefix,
            },
        )
}

fn dest_g() -> impl Strategy<Value = DestG> {
    (
        any::<Index>(),
        host_form(),
        proptest::option::of(any::<Index>()),
        proptest::bool::weighted(0.3),
        any::<Index>(),
        0u8..=100,
    )
        .prop_map(
            |(target, form, subset, explicit_port, port, weight)| DestG {
                target,
                form,
                subset,
                explicit_port,
                port,
                weight,
            },
        )
}

fn route_g() -> impl Strategy<Value = RouteG> {
    (
        any::<bool>(),
        prop::collection::vec(match_g(), 0..=2),
        prop::collection::vec(dest_g(), 1..=3),
        proptest::option::weighted(0.2, 0u8..=100),
    )
        .prop_map(|(named, matches, dests, weight_on_single)| RouteG {
            named,
            matches,
            dests,
            weight_on_single,
        })
}

fn vs_g() -> impl Strategy<Value = VsG> {
    (
        host_form(),
        proptest::option::weighted(0.2, any::<Index>()),
        prop::collection::vec(route_g(), 1..=4),
    )
        .prop_map(|(form, extra_host, routes)| VsG {
            form,
            extra_host,
            routes,
        })
}

fn service_g() -> impl Strategy<Value = ServiceG> {
    (
        "[a-z][a-z0-9]{0,5}",
        0..NAMESPACES.len(),
        proptest::bool::weighted(0.2),
        host_form(),
        prop::collection::vec((proptest::bool::weighted(0.2), any::<u8>()), 0..=2),
        prop::collection::vec(port_g(), 1..=3),
        (proptest::bool::weighted(0.2), proptest::bool::weighted(0.1)),
        prop::collection::vec(workload_g(), 0..=4),
        proptest::option::weighted(0.7, dr_g()),
        proptest::option::weighted(0.7, vs_g()),
    )
        .prop_map(
            |(stem, ns, external, form, vips, ports, (inline, select_all), workloads, dr, vs)| {
                ServiceG {
                    stem,
                    ns,
                    external,
                    form,
                    vips,
                    ports,
                    inline,
                    select_all,
                    workloads,
                    dr,
                    vs,
                }
            },
        )
}

fn config_g() -> impl Strategy<Value = ConfigG> {
    (
        prop::collection::vec(service_g(), 1..=4),
        1usize..=3,
        prop::collection::vec(any::<Index>(), 32),
    )
        .prop_map(|(services, files, placement)| ConfigG {
            services,
            files,
            placement,
        })
}

/// What the rendered configuration contains, for the checks.
#[derive(Debug)]
struct Rendered {
    files: Vec<(String, String)>,
    /// (canonical hostname, ports) per service.
    services: Vec<(String, Vec<u16>)>,
    /// Canonical hostnames a VirtualService names.
    routed: BTreeSet<String>,
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

struct Svc {
    name: String,
    ns: &'static str,
    external: bool,
    canonical: String,
    ports: Vec<u16>,
    subsets: Vec<String>,
}

impl Svc {
    /// How an object in namespace `from` refers to this service.
    fn reference(&self, form: HostForm, from: &str) -> String {
        if self.external {
            return self.canonical.clone();
        }
        match form {
            HostForm::Short if from == self.ns => self.name.clone(),
            HostForm::NameNs => format!("{}.{}", self.name, self.ns),
            HostForm::NameNsSvc => format!("{}.{}.svc", self.name, self.ns),
            _ => self.canonical.clone(),
        }
    }
}

fn render_str(out: &mut String, key: &str, m: &StrG, values: &[&str], regexes: &[&str]) {
    let v = match m {
        StrG::Exact(i) => format!("{{exact: {}}}", q(values[*i])),
        StrG::Prefix(i) => format!("{{prefix: {}}}", q(values[*i])),
        StrG::Regex(i) => format!("{{regex: {}}}", q(regexes[*i])),
        StrG::Present => "{}".to_string(),
    };
    let _ = writeln!(out, "{key}: {v}");
}

fn render_policy(out: &mut String, indent: &str, p: &PolicyG, ports: &[u16]) -> bool {
    let mut body = String::new();
    if let Some((lb, algo)) = &p.lb {
        let algo = match algo {
            AlgoG::Default => String::new(),
            AlgoG::Ring(n) => format!(", ringHash: {{minimumRingSize: {n}}}"),
            AlgoG::Maglev(i) => format!(", maglev: {{tableSize: {}}}", MAGLEV_PRIMES[*i]),
        };
        let lb = match lb {
            LbG::Simple(s, warmup) => match warmup {
                Some(w) => format!("{{simple: {}, warmupDurationSecs: {w}s}}", SIMPLE_LB[*s]),
                None => format!("{{simple: {}}}", SIMPLE_LB[*s]),
            },
            LbG::Header(h) => format!(
                "{{consistentHash: {{httpHeaderName: {}{algo}}}}}",
                q(HEADER_NAMES[*h])
            ),
            LbG::Cookie(ttl) => format!(
                "{{consistentHash: {{httpCookie: {{name: affinity, ttl: {}}}{algo}}}}}",
                if *ttl { "10s" } else { "0s" }
            ),
            LbG::SourceIp => format!("{{consistentHash: {{useSourceIp: true{algo}}}}}"),
            LbG::Query(i) => format!(
                "{{consistentHash: {{httpQueryParameterName: {}{algo}}}}}",
                QUERY_NAMES[*i]
            ),
        };
        let _ = writeln!(body, "{indent}  loadBalancer: {lb}");
    }
    if let Some((conns, reqs)) = p.pool {
        let _ = writeln!(
            body,
            "{indent}  connectionPool: {{tcp: {{maxConnections: {conns}, connectTimeout: 250ms}}, http: {{http2MaxRequests: {reqs}}}}}"
        );
    }
    if let Some((errors, max_percent)) = p.outlier {
        let _ = writeln!(
            body,
            "{indent}  outlierDetection: {{consecutive5xxErrors: {errors}, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: {max_percent}}}"
        );
    }
    if let Some((port, lb)) = &p.port_level {
        let _ = writeln!(
            body,
            "{indent}  portLevelSettings:\n{indent}  - port: {{number: {}}}\n{indent}    loadBalancer: {{simple: {}}}",
            ports[port.index(ports.len())],
            SIMPLE_LB[*lb]
        );
    }
    if body.is_empty() {
        return false;
    }
    let _ = writeln!(out, "{indent}trafficPolicy:");
    out.push_str(&body);
    true
}

fn render(cfg: &ConfigG) -> Rendered {
    // Pass 1: names, namespaces, hosts, ports and subsets.
    let mut svcs: Vec<Svc> = Vec::new();
    for (i, s) in cfg.services.iter().enumerate() {
        // The index suffix keeps names distinct (the last characters differ).
        let name = format!("{}{i}", s.stem);
        let ns = NAMESPACES[s.ns];
        let canonical = if s.external {
            format!("{name}.example.com")
        } else {
            format!("{name}.{ns}.svc.cluster.local")
        };
        let mut ports: Vec<u16> = Vec::new();
        for p in &s.ports {
            if !ports.contains(&p.number) {
                ports.push(p.number);
            }
        }
        let mut subsets: Vec<String> = Vec::new();
        if let Some(dr) = &s.dr {
            for sub in &dr.subsets {
                let n = SUBSET_NAMES[sub.name].to_string();
                if !subsets.contains(&n) {
                    subsets.push(n);
                }
            }
        }
        svcs.push(Svc {
            name,
            ns,
            external: s.external,
            canonical,
            ports,
            subsets,
        });
    }

    // Pass 2: documents.
    let mut docs: Vec<String> = Vec::new();
    let mut routed = BTreeSet::new();
    for (i, (s, sv)) in cfg.services.iter().zip(&svcs).enumerate() {
        let ns = sv.ns;
        let name = &sv.name;
        // ServiceEntry
        let mut d = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
        );
        let host = if s.external {
            sv.canonical.clone()
        } else {
            match s.form {
                HostForm::Short => name.clone(),
                _ => sv.canonical.clone(),
            }
        };
        let _ = writeln!(d, "  hosts: [{}]", q(&host));
        if !s.vips.is_empty() {
            let vips: Vec<String> = s
                .vips
                .iter()
                .enumerate()
                .map(|(k, (v6, x))| {
                    if *v6 {
                        format!("'fd00::{i}:{k}:{x:x}'")
                    } else {
                        format!("10.{i}.{k}.{x}")
                    }
                })
                .collect();
            let _ = writeln!(d, "  addresses: [{}]", vips.join(", "));
        }
        d.push_str("  ports:\n");
        let mut seen = Vec::new();
        for (k, p) in s.ports.iter().enumerate() {
            if seen.contains(&p.number) {
                continue;
            }
            seen.push(p.number);
            let mut pname = PORT_NAMES[p.name].to_string();
            if p.suffix {
                let _ = write!(pname, "-p{k}");
            }
            let _ = write!(d, "  - number: {}\n    name: {}\n", p.number, q(&pname));
            if let Some(pr) = p.protocol {
                let _ = writeln!(d, "    protocol: {}", PROTOCOLS[pr]);
            }
            if let Some(t) = p.target_port {
                let _ = writeln!(d, "    targetPort: {t}");
            }
        }
        d.push_str("  resolution: STATIC\n");
        let labels = |w: &WorkloadG| {
            let mut l = format!("{{app: {}, version: v{}", q(name), w.version);
            if let Some(t) = w.tier {
                let _ = write!(l, ", tier: {}", if t { "a" } else { "b" });
            }
            l.push('}');
            l
        };
        let address = |j: usize, w: &WorkloadG| format!("172.{}.{j}.{}", 16 + i, w.last_octet);
        if s.inline {
            if !s.workloads.is_empty() {
                d.push_str("  endpoints:\n");
            }
            for (j, w) in s.workloads.iter().enumerate() {
                let _ = writeln!(
                    d,
                    "  - {{address: {}, labels: {}, serviceAccount: {}}}",
                    address(j, w),
                    labels(w),
                    SERVICE_ACCOUNTS[w.sa]
                );
            }
        } else {
            if s.select_all {
                d.push_str("  workloadSelector: {labels: {}}\n");
            } else {
                let _ = writeln!(d, "  workloadSelector: {{labels: {{app: {}}}}}", q(name));
            }
            for (j, w) in s.workloads.iter().enumerate() {
                docs.push(format!(
                    "apiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\nmetadata: {{name: {name}-w{j}, namespace: {ns}}}\nspec:\n  address: {}\n  serviceAccount: {}\n  labels: {}\n",
                    address(j, w),
                    SERVICE_ACCOUNTS[w.sa],
                    labels(w)
                ));
            }
        }
        docs.push(d);

        // DestinationRule
        if let Some(dr) = &s.dr {
            let mut d = format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {}\n",
                q(&sv.reference(dr.form, ns))
            );
            if let Some(p) = &dr.policy {
                render_policy(&mut d, "  ", p, &sv.ports);
            }
            let mut names = Vec::new();
            if !dr.subsets.is_empty() {
                d.push_str("  subsets:\n");
            }
            for sub in &dr.subsets {
                let n = SUBSET_NAMES[sub.name];
                if names.contains(&n) {
                    continue;
                }
                names.push(n);
                let labels = match &sub.labels {
                    SubsetLabels::Version(v) => format!("{{version: v{v}}}"),
                    SubsetLabels::Tier(t) => format!("{{tier: {}}}", if *t { "a" } else { "b" }),
                    SubsetLabels::All => "{}".to_string(),
                };
                let _ = writeln!(d, "  - name: {n}\n    labels: {labels}");
                if let Some(p) = &sub.policy {
                    render_policy(&mut d, "    ", p, &sv.ports);
                }
            }
            docs.push(d);
        }

        // VirtualService
        if let Some(vs) = &s.vs {
            let extra = vs
                .extra_host
                .map(|x| x.index(svcs.len()))
                .filter(|x| *x != i);
            let mut hosts = vec![q(&sv.reference(vs.form, ns))];
            routed.insert(sv.canonical.clone());
            if let Some(x) = extra {
                hosts.push(q(&svcs[x].canonical));
                routed.insert(svcs[x].canonical.clone());
            }
            let mut d = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{}]\n  http:\n",
                hosts.join(", ")
            );
            for (r, route) in vs.routes.iter().enumerate() {
                d.push_str("  - ");
                if route.named {
                    let _ = write!(d, "name: r{r}\n    ");
                }
                if !route.matches.is_empty() {
                    d.push_str("match:\n");
                    for m in &route.matches {
                        render_match(&mut d, m, &sv.ports, name);
                    }
                    d.push_str("    ");
                }
                d.push_str("route:\n");
                let n = route.dests.len();
                let all_zero = route.dests.iter().all(|x| x.weight == 0);
                for (k, dest) in route.dests.iter().enumerate() {
                    let t = &svcs[dest.target.index(svcs.len())];
                    let _ = write!(
                        d,
                        "    - destination:\n        host: {}\n",
                        q(&t.reference(dest.form, ns))
                    );
                    if let (Some(sub), false) = (dest.subset, t.subsets.is_empty()) {
                        let _ = writeln!(
                            d,
                            "        subset: {}",
                            t.subsets[sub.index(t.subsets.len())]
                        );
                    }
                    // No port only where the request's port is a port of the
                    // destination: a one-host VirtualService routing to itself.
                    let implicit_ok = extra.is_none() && std::ptr::eq(t, sv);
                    if dest.explicit_port || !implicit_ok {
                        let _ = writeln!(
                            d,
                            "        port: {{number: {}}}",
                            t.ports[dest.port.index(t.ports.len())]
                        );
                    }
                    let weight = if n == 1 {
                        route.weight_on_single
                    } else if all_zero && k == 0 {
                        Some(1)
                    } else {
                        Some(dest.weight)
                    };
                    if let Some(w) = weight {
                        let _ = writeln!(d, "      weight: {w}");
                    }
                }
            }
            docs.push(d);
        }
    }

    // Deal the documents into 1–3 files.
    let mut texts = vec![String::new(); cfg.files];
    for (k, doc) in docs.iter().enumerate() {
        let f = cfg.placement[k % cfg.placement.len()].index(cfg.files);
        if !texts[f].is_empty() {
            texts[f].push_str("---\n");
        }
        texts[f].push_str(doc);
    }
    Rendered {
        files: texts
            .into_iter()
            .enumerate()
            .map(|(k, t)| (format!("f{k}.yaml"), t))
            .collect(),
        services: svcs
            .iter()
            .map(|s| (s.canonical.clone(), s.ports.clone()))
            .collect(),
        routed,
    }
}

fn render_match(d: &mut String, m: &MatchG, ports: &[u16], name: &str) {
    let mut first = true;
    let mut line = |d: &mut String| {
        d.push_str(if first { "    - " } else { "      " });
        first = false;
    };
    if let Some(u) = &m.uri {
        line(d);
        render_str(d, "uri", u, &PATHS, &URI_REGEXES);
        if m.ignore_uri_case {
            line(d);
            d.push_str("ignoreUriCase: true\n");
        }
    }
    let header_block = |d: &mut String, key: &str, hs: &[(usize, StrG)], first: bool| {
        d.push_str(if first { "    - " } else { "      " });
        let _ = writeln!(d, "{key}:");
        let mut seen = Vec::new();
        for (h, cond) in hs {
            if seen.contains(h) {
                continue;
            }
            seen.push(*h);
            d.push_str("        ");
            render_str(
                d,
                &q(HEADER_NAMES[*h]),
                cond,
                &HEADER_VALUES,
                &HEADER_REGEXES,
            );
        }
    };
    if !m.headers.is_empty() {
        header_block(d, "headers", &m.headers, first);
        first = false;
    }
    if !m.without_headers.is_empty() {
        header_block(d, "withoutHeaders", &m.without_headers, first);
        first = false;
    }
    let mut line = |d: &mut String| {
        d.push_str(if first { "    - " } else { "      " });
        first = false;
    };
    if let Some(meth) = &m.method {
        line(d);
        render_str(d, "method", meth, &METHODS, &["GET|POST"]);
    }
    if let Some((qn, cond)) = &m.query {
        line(d);
        let _ = writeln!(d, "queryParams:");
        d.push_str("        ");
        render_str(d, QUERY_NAMES[*qn], cond, &HEADER_VALUES, &["[0-9]+"]);
    }
    if let Some(p) = &m.port {
        line(d);
        let _ = writeln!(d, "port: {}", ports[p.index(ports.len())]);
    }
    if let Some(ns) = m.source_namespace {
        line(d);
        let _ = writeln!(d, "sourceNamespace: {}", NAMESPACES[ns]);
    }
    if m.authority_prefix {
        line(d);
        let _ = writeln!(d, "authority: {{prefix: {}}}", q(name));
    }
    if first {
        // an empty block `{}` matches everything
        d.push_str("    - {}\n");
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RequestG {
    path: usize,
    query: Option<(usize, usize)>,
    raw_path: Option<String>,
    headers: Vec<(usize, usize)>,
    method: usize,
    https: bool,
    authority: bool,
    source: Option<(usize, u8)>,
}

fn request_g() -> impl Strategy<Value = RequestG> {
    (
        0..PATHS.len(),
        proptest::option::of((0..QUERY_NAMES.len(), 0..HEADER_VALUES.len())),
        proptest::option::weighted(0.2, "[ -~]{0,16}"),
        prop::collection::vec((0..HEADER_NAMES.len(), 0..HEADER_VALUES.len()), 0..=3),
        0..METHODS.len(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of((0..NAMESPACES.len(), 1u8..=3)),
    )
        .prop_map(
            |(path, query, raw_path, headers, method, https, authority, source)| RequestG {
                path,
                query,
                raw_path,
                headers,
                method,
                https,
                authority,
                source,
            },
        )
}

fn build_request(r: &RequestG, host: &str, port: u16) -> SimpleRequest {
    let mut path = r
        .raw_path
        .clone()
        .unwrap_or_else(|| PATHS[r.path].to_string());
    if let Some((n, v)) = r.query {
        let _ = write!(path, "?{}={}", QUERY_NAMES[n], HEADER_VALUES[v]);
    }
    let mut req = SimpleRequest::new(path).with_method(METHODS[r.method]);
    for (h, v) in &r.headers {
        req = req.with_header(HEADER_NAMES[*h], HEADER_VALUES[*v]);
    }
    if r.https {
        req = req.with_scheme("https");
    }
    if r.authority {
        req = req.with_authority(format!("{host}:{port}"));
    }
    if let Some((ns, v)) = r.source {
        req = req
            .with_source_namespace(NAMESPACES[ns])
            .with_source_labels([("version", format!("v{v}"))]);
    }
    req.with_port(port)
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

fn dump(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(n, t)| format!("==> {n} <==\n{t}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn load_valid(r: &Rendered) -> Snapshot {
    match load_str(&r.files, exercise::TRUST_DOMAIN) {
        Ok(s) => s,
        Err(e) => panic!(
            "generated config failed to load:\n{e}\n\n{}",
            dump(&r.files)
        ),
    }
}

/// Route `req` for (service, port) and check the decision.
fn check_route(s: &Snapshot, r: &Rendered, host: &str, port: u16, req: &SimpleRequest) {
    let svc = s
        .service_by_host(host)
        .unwrap_or_else(|| panic!("service {host} not found"));
    assert_eq!(svc.hostname, host);
    match s.route(svc, port, req) {
        RouteDecision::Route {
            virtual_service,
            route_index,
            route,
        } => {
            let vs = s
                .virtual_services()
                .iter()
                .find(|v| v.id() == virtual_service)
                .unwrap_or_else(|| panic!("route from unknown VirtualService {virtual_service}"));
            assert!(
                vs.hosts.iter().any(|h| h == host),
                "{virtual_service} does not name {host}"
            );
            assert_eq!(
                vs.http.get(route_index),
                Some(&**route),
                "route index {route_index}"
            );
            assert!(
                !route.destinations.is_empty(),
                "route {} has no destination",
                route.name
            );
            for d in &route.destinations {
                let p = d.port.unwrap_or(port);
                assert!(
                    s.cluster(&d.host, p, d.subset.as_deref()).is_some(),
                    "route {} of {virtual_service}: no cluster for {} port {p} subset {:?}\n{}",
                    route.name,
                    d.host,
                    d.subset,
                    dump(&r.files)
                );
                assert!(d.weight > 0 || route.destinations.len() == 1);
            }
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
            assert!(routing::pick_weighted(&route.destinations, &mut rng).is_some());
        }
        RouteDecision::Default => {
            assert!(
                s.cluster(host, port, None).is_some(),
                "no default cluster {host}:{port}"
            );
        }
        RouteDecision::NoRoute => {
            assert!(
                r.routed.contains(host),
                "NoRoute for {host}, which no VirtualService names"
            );
        }
    }
}

fn check_valid(cfg: &ConfigG, reqs: &[RequestG]) {
    let r = render(cfg);
    let s = load_valid(&r);
    assert_eq!(s.services().count(), r.services.len(), "{}", dump(&r.files));
    for (host, ports) in &r.services {
        if !r.routed.contains(host) {
            let svc = s
                .service_by_host(host)
                .unwrap_or_else(|| panic!("{host} missing"));
            assert!(matches!(
                s.route(svc, ports[0], &SimpleRequest::new("/")),
                RouteDecision::Default
            ));
        }
        for &port in ports {
            assert!(
                s.cluster(host, port, None).is_some(),
                "no cluster {host}:{port}"
            );
            for req in reqs {
                check_route(&s, &r, host, port, &build_request(req, host, port));
            }
        }
    }
    exercise::exercise_snapshot(&s);
}

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

const GARBAGE: [&str; 24] = [
    "",
    "~",
    "[",
    "{a: b",
    "-1",
    "0",
    "99999999999999999999",
    "1e400",
    ".nan",
    "0x10",
    "true",
    "'unterminated",
    "\"\\u0000\"",
    "*anchor",
    "&a [*a]",
    "!!binary aGk=",
    "::",
    "\t",
    "ä/€",
    "\u{202e}x",
    "[1, {2: 3}]",
    "- - -",
    "? complex\n: key",
    "|\n  block",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapChars(Index),
    ReplaceValue(Index, usize),
    Indent(Index, bool),
    Insert(Index, String),
}

fn mutation_g() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => any::<Index>().prop_map(Mutation::SwapChars),
        3 => (any::<Index>(), 0..GARBAGE.len()).prop_map(|(i, g)| Mutation::ReplaceValue(i, g)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, b)| Mutation::Indent(i, b)),
        1 => (any::<Index>(), "[ -~\n]{0,8}").prop_map(|(i, s)| Mutation::Insert(i, s)),
    ]
}

fn char_boundary(t: &str, i: &Index) -> usize {
    if t.is_empty() {
        return 0;
    }
    let mut at = i.index(t.len() + 1);
    while !t.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(t: &str, m: &Mutation) -> String {
    let lines: Vec<&str> = t.split_inclusive('\n').collect();
    let line_at = |i: &Index| {
        if lines.is_empty() {
            None
        } else {
            Some(i.index(lines.len()))
        }
    };
    match m {
        Mutation::Truncate(i) => t[..char_boundary(t, i)].to_string(),
        Mutation::DeleteLine(i) => match line_at(i) {
            Some(k) => lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, l)| *l)
                .collect(),
            None => t.to_string(),
        },
        Mutation::DuplicateLine(i) => match line_at(i) {
            Some(k) => {
                let mut v = lines.clone();
                v.insert(k, lines[k]);
                v.concat()
            }
            None => t.to_string(),
        },
        Mutation::SwapChars(i) => {
            let chars: Vec<char> = t.chars().collect();
            if chars.len() < 2 {
                return t.to_string();
            }
            let k = i.index(chars.len() - 1);
            let mut c = chars;
            c.swap(k, k + 1);
            c.into_iter().collect()
        }
        Mutation::ReplaceValue(i, g) => {
            // the value after the k-th ": " (or the k-th "- ")
            let spots: Vec<usize> = t
                .match_indices(": ")
                .map(|(p, _)| p + 2)
                .chain(t.match_indices("- ").map(|(p, _)| p + 2))
                .collect();
            if spots.is_empty() {
                return format!("{t}{}", GARBAGE[*g]);
            }
            let start = spots[i.index(spots.len())];
            let end = t[start..]
                .find(['\n', ',', '}', ']'])
                .map_or(t.len(), |e| start + e);
            format!("{}{}{}", &t[..start], GARBAGE[*g], &t[end..])
        }
        Mutation::Indent(i, more) => match line_at(i) {
            Some(k) => {
                let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                if *more {
                    v[k].insert(0, ' ');
                } else if v[k].starts_with(' ') {
                    v[k].remove(0);
                } else {
                    v[k].insert_str(0, "  - ");
                }
                v.concat()
            }
            None => t.to_string(),
        },
        Mutation::Insert(i, s) => {
            let at = char_boundary(t, i);
            format!("{}{s}{}", &t[..at], &t[at..])
        }
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// (a) Generated valid configurations load, and routing them is sound.
    #[test]
    fn valid_configs_load_and_route(
        cfg in config_g(),
        reqs in prop::collection::vec(request_g(), 1..=4),
    ) {
        check_valid(&cfg, &reqs);
    }

    /// (b) + (c) Mutated YAML never panics; errors name a loaded file; a
    /// snapshot that still loads is driven like the fuzz target does.
    #[test]
    fn mutated_yaml_never_panics(
        cfg in config_g(),
        file in any::<Index>(),
        mutations in prop::collection::vec(mutation_g(), 1..=3),
    ) {
        let mut files = render(&cfg).files;
        let k = file.index(files.len());
        for m in &mutations {
            files[k].1 = mutate(&files[k].1, m);
        }
        let _ = exercise::check_load(&files);
    }

    /// (c) A config with one definitely invalid value fails, and the errors
    /// name loaded files, at least one the file that has the bad value.
    #[test]
    fn errors_name_the_file(
        cfg in config_g(),
        file in any::<Index>(),
        bad in prop_oneof![
            Just(("number: ", "0")),
            Just(("address: ", "not-an-ip")),
            Just(("number: ", "70000")),
        ],
    ) {
        let mut files = render(&cfg).files;
        // the first occurrence in some file that has one
        let start = file.index(files.len());
        let Some(k) = (0..files.len())
            .map(|j| (start + j) % files.len())
            .find(|j| files[*j].1.contains(bad.0)) else {
            return Ok(());
        };
        let t = &files[k].1;
        let at = t.find(bad.0).map(|p| p + bad.0.len()).unwrap_or(0);
        let end = t[at..].find(['\n', ',', '}']).map_or(t.len(), |e| at + e);
        files[k].1 = format!("{}{}{}", &t[..at], bad.1, &t[end..]);
        let name = files[k].0.clone();
        match load_str(&files, exercise::TRUST_DOMAIN) {
            Ok(_) => panic!("loaded with {}{} in {name}:\n{}", bad.0, bad.1, dump(&files)),
            Err(e) => {
                exercise::check_errors(&files, &e);
                prop_assert!(
                    e.iter().any(|x| x.at.file == name),
                    "no error names {}:\n{}", name, e
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The fuzz target's seed corpus, on stable
// ---------------------------------------------------------------------------

#[test]
fn fuzz_seed_corpus_runs_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/yaml_front_end");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    paths.sort();
    assert!(paths.len() >= 5, "seed corpus too small: {paths:?}");
    for p in paths {
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        exercise::exercise_bytes(&data);
    }
}

/// The bookinfo example, fully joined, loads: the seed corpus keeps a
/// loadable input (so the fuzzer starts from a snapshot that routes).
#[test]
fn fuzz_seed_bookinfo_all_loads() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/yaml_front_end/bookinfo-all.yaml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let files = vec![("bookinfo-all.yaml".to_string(), text)];
    let s = exercise::check_load(&files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.services().count(), 3);
}
