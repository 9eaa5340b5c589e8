//! The generator: a model of a valid configuration and its strategies.

use super::*;

// ---------------------------------------------------------------------------
// The generator: a model of a valid configuration, rendered to YAML.
// References between objects are `Index`es resolved at render time, so every
// reference points at something that exists.
// ---------------------------------------------------------------------------

pub(crate) const NAMESPACES: [&str; 2] = ["default", "prod"];
pub(crate) const PORT_NAMES: [&str; 8] = [
    "http", "http2", "grpc", "tcp", "tls", "https", "grpc-web", "mongo",
];
pub(crate) const PROTOCOLS: [&str; 7] = ["HTTP", "HTTP2", "GRPC", "TCP", "TLS", "GRPC-WEB", "UDP"];
pub(crate) const SERVICE_ACCOUNTS: [&str; 3] = ["default", "sa-a", "sa-b"];
pub(crate) const SUBSET_NAMES: [&str; 5] = ["v1", "v2", "v3", "canary", "stable"];
pub(crate) const SIMPLE_LB: [&str; 6] = [
    "ROUND_ROBIN",
    "RANDOM",
    "LEAST_REQUEST",
    "LEAST_CONN",
    "PASSTHROUGH",
    "UNSPECIFIED",
];
pub(crate) const MAGLEV_PRIMES: [u32; 3] = [7, 251, 1021];
pub(crate) const PATHS: [&str; 9] = [
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
pub(crate) const URI_REGEXES: [&str; 7] = [
    "/api/.*",
    "/v[0-9]+/.*",
    "(?i)/admin.*",
    ".*",
    "/exact",
    "[a-z/]+",
    "/reviews/[0-9]+",
];
pub(crate) const HEADER_NAMES: [&str; 5] = [
    "end-user",
    "x-version",
    "x-canary",
    "user-agent",
    ":authority",
];
pub(crate) const HEADER_VALUES: [&str; 5] = ["jason", "v2", "true", "", "mozilla/5.0"];
pub(crate) const HEADER_REGEXES: [&str; 3] = ["j.*", "v[0-9]", "(true|yes)"];
pub(crate) const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
pub(crate) const QUERY_NAMES: [&str; 2] = ["user", "debug"];

#[derive(Debug, Clone, Copy)]
pub(crate) enum HostForm {
    /// `name` (expanded in the object's namespace)
    Short,
    /// `name.ns`
    NameNs,
    /// `name.ns.svc`
    NameNsSvc,
    /// `name.ns.svc.cluster.local`
    Fqdn,
}

pub(crate) fn host_form() -> impl Strategy<Value = HostForm> {
    prop_oneof![
        Just(HostForm::Short),
        Just(HostForm::NameNs),
        Just(HostForm::NameNsSvc),
        Just(HostForm::Fqdn),
    ]
}

#[derive(Debug, Clone)]
pub(crate) struct PortG {
    pub(crate) number: u16,
    pub(crate) name: usize,
    pub(crate) suffix: bool,
    pub(crate) protocol: Option<usize>,
    pub(crate) target_port: Option<u16>,
}

#[derive(Debug, Clone)]
pub(crate) struct WorkloadG {
    pub(crate) version: u8,
    pub(crate) tier: Option<bool>,
    pub(crate) sa: usize,
    pub(crate) last_octet: u8,
}

#[derive(Debug, Clone)]
pub(crate) enum LbG {
    Simple(usize, Option<u16>),
    Header(usize),
    Cookie(bool),
    SourceIp,
    Query(usize),
}

#[derive(Debug, Clone)]
pub(crate) enum AlgoG {
    Default,
    Ring(u16),
    Maglev(usize),
}

#[derive(Debug, Clone)]
pub(crate) struct PolicyG {
    pub(crate) lb: Option<(LbG, AlgoG)>,
    pub(crate) pool: Option<(u16, u16)>,
    pub(crate) outlier: Option<(u8, u8)>,
    pub(crate) port_level: Option<(Index, usize)>,
}

#[derive(Debug, Clone)]
pub(crate) enum SubsetLabels {
    Version(u8),
    Tier(bool),
    All,
}

#[derive(Debug, Clone)]
pub(crate) struct SubsetG {
    pub(crate) name: usize,
    pub(crate) labels: SubsetLabels,
    pub(crate) policy: Option<PolicyG>,
}

#[derive(Debug, Clone)]
pub(crate) struct DrG {
    pub(crate) form: HostForm,
    pub(crate) policy: Option<PolicyG>,
    pub(crate) subsets: Vec<SubsetG>,
}

#[derive(Debug, Clone)]
pub(crate) enum StrG {
    Exact(usize),
    Prefix(usize),
    Regex(usize),
    Present,
}

#[derive(Debug, Clone)]
pub(crate) struct MatchG {
    pub(crate) uri: Option<StrG>,
    pub(crate) ignore_uri_case: bool,
    pub(crate) headers: Vec<(usize, StrG)>,
    pub(crate) without_headers: Vec<(usize, StrG)>,
    pub(crate) method: Option<StrG>,
    pub(crate) query: Option<(usize, StrG)>,
    pub(crate) port: Option<Index>,
    pub(crate) source_namespace: Option<usize>,
    pub(crate) authority_prefix: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct DestG {
    pub(crate) target: Index,
    pub(crate) form: HostForm,
    pub(crate) subset: Option<Index>,
    pub(crate) explicit_port: bool,
    pub(crate) port: Index,
    pub(crate) weight: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct RouteG {
    pub(crate) named: bool,
    pub(crate) matches: Vec<MatchG>,
    pub(crate) dests: Vec<DestG>,
    pub(crate) weight_on_single: Option<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct VsG {
    pub(crate) form: HostForm,
    pub(crate) extra_host: Option<Index>,
    pub(crate) routes: Vec<RouteG>,
}

#[derive(Debug, Clone)]
pub(crate) struct ServiceG {
    pub(crate) stem: String,
    pub(crate) ns: usize,
    pub(crate) external: bool,
    pub(crate) form: HostForm,
    pub(crate) vips: Vec<(bool, u8)>,
    pub(crate) ports: Vec<PortG>,
    pub(crate) inline: bool,
    pub(crate) select_all: bool,
    pub(crate) workloads: Vec<WorkloadG>,
    pub(crate) dr: Option<DrG>,
    pub(crate) vs: Option<VsG>,
}

#[derive(Debug, Clone)]
pub(crate) struct ConfigG {
    pub(crate) services: Vec<ServiceG>,
    /// Which file each document goes to (index into 1–3 files).
    pub(crate) files: usize,
    pub(crate) placement: Vec<Index>,
}

pub(crate) fn port_g() -> impl Strategy<Value = PortG> {
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

pub(crate) fn workload_g() -> impl Strategy<Value = WorkloadG> {
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

pub(crate) fn algo_g() -> impl Strategy<Value = AlgoG> {
    prop_oneof![
        Just(AlgoG::Default),
        (1u16..=512).prop_map(AlgoG::Ring),
        (0..MAGLEV_PRIMES.len()).prop_map(AlgoG::Maglev),
    ]
}

pub(crate) fn lb_g() -> impl Strategy<Value = (LbG, AlgoG)> {
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

pub(crate) fn policy_g() -> impl Strategy<Value = PolicyG> {
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

pub(crate) fn dr_g() -> impl Strategy<Value = DrG> {
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

pub(crate) fn str_g(values: usize, regexes: usize, prefixes: bool) -> impl Strategy<Value = StrG> {
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

pub(crate) fn match_g() -> impl Strategy<Value = MatchG> {
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

pub(crate) fn dest_g() -> impl Strategy<Value = DestG> {
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

pub(crate) fn route_g() -> impl Strategy<Value = RouteG> {
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

pub(crate) fn vs_g() -> impl Strategy<Value = VsG> {
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

pub(crate) fn service_g() -> impl Strategy<Value = ServiceG> {
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

pub(crate) fn config_g() -> impl Strategy<Value = ConfigG> {
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
