//! `xds_bench`: what istiod-sized xDS state costs the waypoint, and how long a push takes to
//! serve. A program that prints numbers, not a test; it asserts nothing about time.
//!
//! 1. **Translation.** For N services (10 endpoints each, two weighted subsets each) it builds
//!    the resources istiod would send a waypoint, as prost structs: one service's filter chain,
//!    IP-matcher entry, clusters and assignment are taken from the bookinfo fixture's `reviews`
//!    (`routing/tests/fixtures/xds/bookinfo.json`) and cloned per service with its own names, VIP
//!    and pod IPs; all services hang off one `main_internal` listener. Per N it reports the
//!    encoded size, `Resources::from_any` (what the waypoint does with every push) and
//!    `routing::xds::translate` times (median of `--runs`), and the memory the decoded resources
//!    and the snapshot hold (measured in a fresh child process per N, see [`probe_memory`]).
//! 2. **Push latency.** The in-test ADS server (TLS, bearer token) serves N such services to the
//!    real `waypoint` binary (`waypoint run --xds`, spawned from the directory this program runs
//!    from: build both into the same target dir). Then, a handful of times, one new service
//!    (3 clusters, 3 assignments, the listener with one more chain) is pushed and the time from
//!    the push to the first 200 through the waypoint to the new VIP is measured, with real pods
//!    behind it; and a weight-only change of an existing route is pushed and timed to its ACK.
//!
//! The ADS server, the simulated pods and the client run in this process; the waypoint is its own
//! process. All share the machine's cores.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::{value::Kind, Any, StringValue, Struct, UInt32Value, Value};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::TreeType;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::on_match::OnMatch as OnMatchKind;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherType, OnMatch};
use envoy_types::pb::xds::r#type::matcher::v3::Matcher;
use prost::{Message, Name};
use routing::xds::{Resources, TranslateOptions};
use waypoint::control::identity::{install_crypto_provider, Ca};
use waypoint_tests::{sim, spiffe, Net, TRUST_DOMAIN};
use xds_client::testing::{any, AdsServer, AdsServerOptions, TestPki};
use xds_client::type_url;

#[derive(Parser, Debug)]
#[command(about = "xDS translation cost and push-to-first-request latency of the waypoint")]
struct Args {
    /// Service counts for the translation measurement; the first is the baseline for ratios.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000")]
    sizes: Vec<usize>,
    /// Endpoints (pods) per service; half in subset v1, half in v2.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Timed repetitions of decode and translate per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Services already served before the timed pushes (one waypoint per size).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    push_sizes: Vec<usize>,
    /// Timed pushes per size (new service, then as many weight-only changes).
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    /// Skip the push-latency part.
    #[arg(long)]
    no_push: bool,
    /// The waypoint binary (default: `waypoint` next to this program).
    #[arg(long)]
    waypoint: Option<PathBuf>,
    /// Internal: measure the memory of decoding and translating the resources in this file (an
    /// `AnyList`) and print one `probe` line (the parent runs this in a fresh child per N).
    #[arg(long, hide = true)]
    probe_memory: Option<PathBuf>,
}

const FIXTURE: &str = include_str!("../../../routing/tests/fixtures/xds/bookinfo.json");
/// The fixture service every generated service is cloned from.
const TEMPLATE_SHORT: &str = "reviews";
const TEMPLATE_VIP: &str = "10.96.0.12";
const PORT: u16 = 9080;
const TOKEN: &str = "istio-token-for-the-bench";
/// How long one push may take to show before the run is declared failed.
const PUSH_DEADLINE: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(2);

const IP_MATCHER: &str = "type.googleapis.com/xds.type.matcher.v3.IPMatcher";

/// `xds.type.matcher.v3.IPMatcher` (cncf/xds `xds/type/matcher/v3/ip.proto`; envoy-types does
/// not generate it).
#[derive(Clone, PartialEq, prost::Message)]
struct IpMatcher {
    #[prost(message, repeated, tag = "1")]
    range_matchers: Vec<IpRangeMatcher>,
}

/// The resources handed to a memory probe.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyList {
    #[prost(message, repeated, tag = "1")]
    items: Vec<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IpRangeMatcher {
    #[prost(message, repeated, tag = "1")]
    ranges: Vec<envoy_types::pb::xds::core::v3::CidrRange>,
    #[prost(message, optional, tag = "2")]
    on_match: Option<OnMatch>,
    #[prost(bool, tag = "3")]
    exclusive: bool,
}

// ---------------------------------------------------------------------------------------------
// Generating istiod-shaped resources
// ---------------------------------------------------------------------------------------------

/// One service to generate.
struct Spec {
    /// Short name (`svc-42`); the host is `<name>.default.svc.cluster.local`.
    name: String,
    vip: Ipv4Addr,
    /// Pod IPs: the first half is subset v1, the rest v2.
    pods: Vec<IpAddr>,
    /// Route weights of v1 and v2.
    weights: [u32; 2],
}

impl Spec {
    /// Baseline service `i` with `endpoints` pod IPs that nothing listens on (10.128.0.0/9).
    fn baseline(i: usize, endpoints: usize) -> Spec {
        let first = u32::from(Ipv4Addr::new(10, 128, 0, 1)) + (i * endpoints) as u32;
        Spec {
            name: format!("svc-{i}"),
            vip: vip(i),
            pods: (0..endpoints as u32)
                .map(|k| IpAddr::V4(Ipv4Addr::from(first + k)))
                .collect(),
            weights: [90, 10],
        }
    }

    fn host(&self) -> String {
        format!("{}.default.svc.cluster.local", self.name)
    }

    fn rename(&self, s: &str) -> String {
        s.replace(TEMPLATE_SHORT, &self.name)
    }
}

/// VIP of service `i` (10.96.0.0/12, as a kind cluster's service CIDR).
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// The resources of one service, as istiod builds them for a waypoint.
#[derive(Clone)]
struct ServiceXds {
    /// `main_internal` filter chain `inbound-vip|9080|http|<host>` (HCM, inline route config).
    chain: FilterChain,
    /// The listener's IP-matcher entry: VIP → port 9080 → the chain.
    range: IpRangeMatcher,
    /// `inbound-vip|9080|http|<host>` and its subsets `http/v1`, `http/v2` (EDS).
    clusters: Vec<Cluster>,
    /// The three clusters' assignments.
    assignments: Vec<ClusterLoadAssignment>,
}

/// The bookinfo fixture, cut into the pieces one service is made of.
struct Template {
    connect_terminate: Listener,
    /// Without chains; its IP matcher is replaced per state.
    main_internal: Listener,
    /// `connect_originate`, `main_internal`.
    infra_clusters: Vec<Cluster>,
    chain: FilterChain,
    /// Index of the HCM in `chain.filters`, and the HCM itself.
    hcm_at: usize,
    hcm: HttpConnectionManager,
    range: IpRangeMatcher,
    cluster: Cluster,
    subset_cluster: Cluster,
    assignment: ClusterLoadAssignment,
    endpoint: LbEndpoint,
}

impl Template {
    fn load() -> anyhow::Result<Template> {
        let json = FIXTURE.replace("example.org", TRUST_DOMAIN);
        let res = routing::xds::json::load_resources(&json).context("bookinfo fixture")?;
        let host = format!("{TEMPLATE_SHORT}.default.svc.cluster.local");
        let chain_name = format!("inbound-vip|{PORT}|http|{host}");
        let subset_name = format!("inbound-vip|{PORT}|http/v1|{host}");
        let listener = |name: &str| {
            res.listeners
                .iter()
                .find(|l| l.name == name)
                .cloned()
                .ok_or_else(|| anyhow!("fixture has no listener {name}"))
        };
        let cluster = |name: &str| {
            res.clusters
                .iter()
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| anyhow!("fixture has no cluster {name}"))
        };
        let mut main_internal = listener("main_internal")?;
        let chain = main_internal
            .filter_chains
            .iter()
            .find(|c| c.name == chain_name)
            .cloned()
            .context("fixture has no reviews chain")?;
        main_internal.filter_chains.clear();
        let (hcm_at, hcm) = chain
            .filters
            .iter()
            .enumerate()
            .find_map(|(i, f)| match &f.config_type {
                Some(ConfigType::TypedConfig(a))
                    if a.type_url == HttpConnectionManager::type_url() =>
                {
                    HttpConnectionManager::decode(a.value.as_slice())
                        .ok()
                        .map(|h| (i, h))
                }
                _ => None,
            })
            .context("the reviews chain has no HCM")?;
        let ip_any = ip_matcher_any(&mut main_internal).context("main_internal IP matcher")?;
        let ipm = IpMatcher::decode(ip_any.value.as_slice()).context("IPMatcher")?;
        let range = ipm
            .range_matchers
            .iter()
            .find(|r| r.ranges.iter().any(|c| c.address_prefix == TEMPLATE_VIP))
            .cloned()
            .context("no IP matcher entry for the reviews VIP")?;
        let assignment = res
            .endpoints
            .iter()
            .find(|e| e.cluster_name == chain_name)
            .cloned()
            .context("fixture has no reviews assignment")?;
        let endpoint = assignment
            .endpoints
            .first()
            .and_then(|l| l.lb_endpoints.first())
            .cloned()
            .context("reviews assignment has no endpoint")?;
        Ok(Template {
            connect_terminate: listener("connect_terminate")?,
            main_internal,
            infra_clusters: vec![cluster("connect_originate")?, cluster("main_internal")?],
            chain,
            hcm_at,
            hcm,
            range,
            cluster: cluster(&chain_name)?,
            subset_cluster: cluster(&subset_name)?,
            assignment,
            endpoint,
        })
    }

    fn service(&self, spec: &Spec) -> ServiceXds {
        let host = spec.host();
        let main = format!("inbound-vip|{PORT}|http|{host}");
        let subset = |v: &str| format!("inbound-vip|{PORT}|http/{v}|{host}");
        let half = spec.pods.len().div_ceil(2);
        let (v1_pods, v2_pods) = spec.pods.split_at(half);
        ServiceXds {
            chain: self.chain(spec),
            range: self.range(spec, &main),
            clusters: vec![
                self.cluster(spec),
                self.subset_cluster(spec, "v1"),
                self.subset_cluster(spec, "v2"),
            ],
            assignments: vec![
                self.assignment(spec, &main, &[(v1_pods, "v1"), (v2_pods, "v2")]),
                self.assignment(spec, &subset("v1"), &[(v1_pods, "v1")]),
                self.assignment(spec, &subset("v2"), &[(v2_pods, "v2")]),
            ],
        }
    }

    /// The chain with its inline route config: the VirtualService-like route splitting over
    /// subsets v1 and v2 by `spec.weights`.
    fn chain(&self, spec: &Spec) -> FilterChain {
        let rename = |s: &str| spec.rename(s);
        let mut hcm = self.hcm.clone();
        hcm.stat_prefix = rename(&hcm.stat_prefix);
        if let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier {
            rc.name = rename(&rc.name);
            for route in rc
                .virtual_hosts
                .iter_mut()
                .flat_map(|v| v.routes.iter_mut())
            {
                route.name = rename(&route.name);
                rename_metadata(&mut route.metadata, &rename);
                if let Some(d) = &mut route.decorator {
                    d.operation = rename(&d.operation);
                }
                if let Some(Action::Route(action)) = &mut route.action {
                    if let Some(ClusterSpecifier::WeightedClusters(wc)) =
                        &mut action.cluster_specifier
                    {
                        for (c, w) in wc.clusters.iter_mut().zip(spec.weights) {
                            c.name = rename(&c.name);
                            c.weight = Some(UInt32Value { value: w });
                        }
                    }
                }
            }
        }
        let mut chain = self.chain.clone();
        chain.name = rename(&chain.name);
        chain.filters[self.hcm_at].config_type = Some(ConfigType::TypedConfig(any(&hcm)));
        chain
    }

    fn range(&self, spec: &Spec, chain: &str) -> IpRangeMatcher {
        let mut range = self.range.clone();
        for r in &mut range.ranges {
            r.address_prefix = spec.vip.to_string();
        }
        if let Some(o) = &mut range.on_match {
            point_actions_at(o, chain);
        }
        range
    }

    fn cluster(&self, spec: &Spec) -> Cluster {
        let rename = |s: &str| spec.rename(s);
        let mut c = self.cluster.clone();
        c.name = rename(&c.name);
        if let Some(eds) = &mut c.eds_cluster_config {
            eds.service_name = rename(&eds.service_name);
        }
        rename_metadata(&mut c.metadata, &rename);
        c
    }

    fn subset_cluster(&self, spec: &Spec, version: &str) -> Cluster {
        let rename = |s: &str| {
            let s = spec
                .rename(s)
                .replace("|http/v1|", &format!("|http/{version}|"));
            if s == "v1" {
                version.to_string()
            } else {
                s
            }
        };
        let mut c = self.subset_cluster.clone();
        c.name = rename(&c.name);
        if let Some(eds) = &mut c.eds_cluster_config {
            eds.service_name = rename(&eds.service_name);
        }
        rename_metadata(&mut c.metadata, &rename);
        c
    }

    /// An assignment named `name` with the pods of `groups` (pods, their version).
    fn assignment(
        &self,
        spec: &Spec,
        name: &str,
        groups: &[(&[IpAddr], &str)],
    ) -> ClusterLoadAssignment {
        let mut endpoints = Vec::new();
        for (pods, version) in groups {
            for (k, ip) in pods.iter().enumerate() {
                endpoints.push(self.endpoint(spec, *ip, version, k));
            }
        }
        let mut cla = self.assignment.clone();
        cla.cluster_name = name.to_string();
        cla.endpoints.truncate(1);
        if let Some(locality) = cla.endpoints.first_mut() {
            locality.lb_endpoints = endpoints;
        }
        cla
    }

    /// `envoy_internal_address{connect_originate, "ip:9080"}` with istiod's endpoint metadata.
    fn endpoint(&self, spec: &Spec, ip: IpAddr, version: &str, k: usize) -> LbEndpoint {
        let target = SocketAddr::new(ip, PORT).to_string();
        let mut e = self.endpoint.clone();
        if let Some(HostIdentifier::Endpoint(ep)) = &mut e.host_identifier {
            if let Some(address::Address::EnvoyInternalAddress(a)) =
                ep.address.as_mut().and_then(|a| a.address.as_mut())
            {
                a.endpoint_id = target.clone();
            }
        }
        let md = e.metadata.get_or_insert_with(Metadata::default);
        set_string(
            md,
            "envoy.filters.listener.original_dst",
            "local",
            target.clone(),
        );
        let name = &spec.name;
        set_string(
            md,
            "istio",
            "workload",
            format!("{name}-{version}-{k};default;{name};{version};Kubernetes"),
        );
        e
    }

    /// `main_internal` with `services`' chains, its IP matcher mapping every VIP.
    fn main_internal<'a>(
        &self,
        services: impl Iterator<Item = &'a ServiceXds> + Clone,
    ) -> Listener {
        let mut l = self.main_internal.clone();
        l.filter_chains = services.clone().map(|s| s.chain.clone()).collect();
        let ipm = IpMatcher {
            range_matchers: services.map(|s| s.range.clone()).collect(),
        };
        if let Some(a) = ip_matcher_any(&mut l) {
            a.value = ipm.encode_to_vec();
        }
        l
    }

    /// The whole state of the world for `services`.
    fn resources(&self, services: &[ServiceXds]) -> Resources {
        Resources {
            listeners: vec![
                self.connect_terminate.clone(),
                self.main_internal(services.iter()),
            ],
            clusters: self
                .infra_clusters
                .iter()
                .cloned()
                .chain(services.iter().flat_map(|s| s.clusters.iter().cloned()))
                .collect(),
            endpoints: services
                .iter()
                .flat_map(|s| s.assignments.iter().cloned())
                .collect(),
            routes: Vec::new(),
        }
    }
}

/// The `Any` holding `main_internal`'s `IPMatcher`.
fn ip_matcher_any(l: &mut Listener) -> Option<&mut Any> {
    let Some(MatcherType::MatcherTree(tree)) = l
        .filter_chain_matcher
        .as_mut()
        .and_then(|m| m.matcher_type.as_mut())
    else {
        return None;
    };
    match tree.tree_type.as_mut() {
        Some(TreeType::CustomMatch(c)) => {
            c.typed_config.as_mut().filter(|a| a.type_url == IP_MATCHER)
        }
        _ => None,
    }
}

/// Every action under `o` (the port map) selects `chain`.
fn point_actions_at(o: &mut OnMatch, chain: &str) {
    match o.on_match.as_mut() {
        Some(OnMatchKind::Action(a)) => {
            a.name = chain.to_string();
            a.typed_config = Some(any(&StringValue {
                value: chain.to_string(),
            }));
        }
        Some(OnMatchKind::Matcher(m)) => point_matcher_at(m, chain),
        None => {}
    }
}

fn point_matcher_at(m: &mut Matcher, chain: &str) {
    if let Some(MatcherType::MatcherTree(tree)) = m.matcher_type.as_mut() {
        if let Some(TreeType::ExactMatchMap(map) | TreeType::PrefixMatchMap(map)) =
            tree.tree_type.as_mut()
        {
            for o in map.map.values_mut() {
                point_actions_at(o, chain);
            }
        }
    }
}

fn rename_metadata(md: &mut Option<Metadata>, f: &dyn Fn(&str) -> String) {
    if let Some(md) = md {
        for s in md.filter_metadata.values_mut() {
            rename_struct(s, f);
        }
    }
}

fn rename_struct(s: &mut Struct, f: &dyn Fn(&str) -> String) {
    for v in s.fields.values_mut() {
        rename_value(v, f);
    }
}

fn rename_value(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v.kind.as_mut() {
        Some(Kind::StringValue(s)) => *s = f(s),
        Some(Kind::StructValue(s)) => rename_struct(s, f),
        Some(Kind::ListValue(l)) => l.values.iter_mut().for_each(|v| rename_value(v, f)),
        _ => {}
    }
}

fn set_string(md: &mut Metadata, namespace: &str, key: &str, value: String) {
    md.filter_metadata
        .entry(namespace.to_string())
        .or_default()
        .fields
        .insert(
            key.to_string(),
            Value {
                kind: Some(Kind::StringValue(value)),
            },
        );
}

/// Every resource as the ADS server sends it.
fn to_anys(r: &Resources) -> Vec<Any> {
    let listeners = r.listeners.iter().map(any);
    let clusters = r.clusters.iter().map(any);
    let endpoints = r.endpoints.iter().map(any);
    listeners.chain(clusters).chain(endpoints).collect()
}

fn baseline(tpl: &Template, n: usize, endpoints: usize) -> Vec<ServiceXds> {
    (0..n)
        .map(|i| tpl.service(&Spec::baseline(i, endpoints)))
        .collect()
}

fn translate_options() -> TranslateOptions {
    TranslateOptions {
        trust_domain: TRUST_DOMAIN.to_string(),
        ..TranslateOptions::default()
    }
}

fn rejections(r: Vec<routing::xds::Rejection>) -> anyhow::Error {
    let first: Vec<String> = r.iter().take(3).map(ToString::to_string).collect();
    anyhow!("{} rejection(s): {}", r.len(), first.join("; "))
}

// ---------------------------------------------------------------------------------------------
// Part 1: translation
// ---------------------------------------------------------------------------------------------

struct TranslateRow {
    n: usize,
    resources: usize,
    bytes: usize,
    decode: Duration,
    translate: Duration,
    warnings: usize,
    memory: Option<Memory>,
}

/// KiB of RSS growth, from a [`probe_memory`] child.
#[derive(Clone, Copy)]
struct Memory {
    /// Decoded `Resources` (what `from_any` allocates; the `Any`s are already held).
    decoded: u64,
    /// A second snapshot while the first is alive: ≈ the snapshot's live size (the first
    /// translation's freed temporaries are reused).
    snapshot: u64,
    /// The first translation: the snapshot plus the temporaries the allocator kept.
    first: u64,
}

fn measure_translation(
    tpl: &Template,
    n: usize,
    args: &Args,
    exe: &Path,
) -> anyhow::Result<TranslateRow> {
    let services = baseline(tpl, n, args.endpoints);
    let anys = to_anys(&tpl.resources(&services));
    drop(services);
    let bytes = anys.iter().map(|a| a.value.len()).sum();
    let options = translate_options();
    let mut decode_times = Vec::new();
    let mut translate_times = Vec::new();
    let mut warnings = 0;
    // One untimed run first: the heap grows and faults its pages in here, not in the timings.
    let warm = Resources::from_any(anys.iter()).map_err(rejections)?;
    drop(routing::xds::translate(&warm, &options).map_err(rejections)?);
    drop(warm);
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        let resources = Resources::from_any(anys.iter()).map_err(rejections)?;
        decode_times.push(t.elapsed());
        let t = Instant::now();
        let translation = routing::xds::translate(&resources, &options).map_err(rejections)?;
        translate_times.push(t.elapsed());
        let served = translation.snapshot.services().count();
        if served < n {
            bail!("N={n}: the snapshot has {served} services");
        }
        if translation.warnings.len() != warnings {
            warnings = translation.warnings.len();
            if let Some(w) = translation.warnings.first() {
                eprintln!("  note: N={n}: {warnings} warning(s), first: {w}");
            }
        }
        drop(translation);
    }
    let memory = match memory_in_child(exe, n, &anys) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("  note: memory probe for N={n} failed: {e:#}");
            None
        }
    };
    Ok(TranslateRow {
        n,
        resources: anys.len(),
        bytes,
        decode: median(&mut decode_times),
        translate: median(&mut translate_times),
        warnings,
        memory,
    })
}

fn memory_in_child(exe: &Path, n: usize, anys: &[Any]) -> anyhow::Result<Memory> {
    let mut buf = Vec::new();
    for a in anys {
        prost::encoding::message::encode(1, a, &mut buf);
    }
    let file =
        std::env::temp_dir().join(format!("waypoint-xds-bench-{}-{n}.bin", std::process::id()));
    std::fs::write(&file, &buf)?;
    drop(buf);
    let out = Command::new(exe)
        .arg("--probe-memory")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()));
    if let Err(e) = std::fs::remove_file(&file) {
        eprintln!("  note: could not remove {}: {e}", file.display());
    }
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("probe "))
        .ok_or_else(|| {
            anyhow!(
                "no probe line; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let field = |k: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| anyhow!("no {k} in {line:?}"))?
            .parse()
            .map_err(|e| anyhow!("{k} in {line:?}: {e}"))
    };
    Ok(Memory {
        decoded: field("decoded_kib")?,
        snapshot: field("snapshot_kib")?,
        first: field("first_kib")?,
    })
}

/// The child side. Reading the file leaves no garbage (one buffer, sized up front, kept), so the
/// RSS growth of `from_any` is the decoded resources. The first `translate` grows RSS by the
/// snapshot plus the temporaries glibc keeps after they are freed; a second one, with the first
/// snapshot still alive, reuses those temporaries, so its growth approximates the live size.
fn probe_memory(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file)?;
    let list = AnyList::decode(bytes.as_slice())?;
    let before = status_kib("VmRSS")?;
    let resources = Resources::from_any(list.items.iter()).map_err(rejections)?;
    let decoded = status_kib("VmRSS")?;
    let options = translate_options();
    let first = routing::xds::translate(&resources, &options).map_err(rejections)?;
    let after_first = status_kib("VmRSS")?;
    let second = routing::xds::translate(&resources, &options).map_err(rejections)?;
    let after_second = status_kib("VmRSS")?;
    println!(
        "probe services={} decoded_kib={} first_kib={} snapshot_kib={}",
        second.snapshot.services().count(),
        decoded.saturating_sub(before),
        after_first.saturating_sub(decoded),
        after_second.saturating_sub(after_first),
    );
    drop((first, second, resources, list, bytes));
    Ok(())
}

/// A `kB` line of `/proc/<pid>/status` (`self` by default).
fn status_kib(key: &str) -> anyhow::Result<u64> {
    status_kib_of("self", key)
}

fn status_kib_of(pid: &str, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn print_translation(rows: &[TranslateRow], endpoints: usize) {
    println!();
    println!("translation (services with {endpoints} endpoints, 3 clusters and 3 assignments each; medians):");
    println!(
        "{:>6} {:>6} {:>9} {:>7} {:>10} {:>12} {:>8} {:>11} {:>9} {:>10} {:>9}",
        "N",
        "res",
        "enc MiB",
        "B/svc",
        "decode ms",
        "translate ms",
        "µs/svc",
        "decoded MiB",
        "snap MiB",
        "snap KiB/s",
        "1st MiB"
    );
    for r in rows {
        let (decoded, snap, per, first) = match r.memory {
            Some(m) => (
                format!("{:.1}", m.decoded as f64 / 1024.0),
                format!("{:.1}", m.snapshot as f64 / 1024.0),
                format!("{:.1}", m.snapshot as f64 / r.n as f64),
                format!("{:.1}", m.first as f64 / 1024.0),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>6} {:>6} {:>9.2} {:>7} {:>10.1} {:>12.1} {:>8.1} {:>11} {:>9} {:>10} {:>9}",
            r.n,
            r.resources,
            r.bytes as f64 / 1048576.0,
            r.bytes / r.n,
            ms(r.decode),
            ms(r.translate),
            r.translate.as_secs_f64() * 1e6 / r.n as f64,
            decoded,
            snap,
            per,
            first,
        );
    }
    let Some(base) = rows.first() else { return };
    println!();
    println!("per service, vs N={} (1.00 = scales linearly):", base.n);
    println!(
        "{:>6} {:>12} {:>11} {:>13} {:>12}",
        "N", "translate×", "decode×", "bytes/svc×", "snap/svc×"
    );
    let per = |d: Duration, n: usize| d.as_secs_f64() / n as f64;
    for r in rows {
        let snap = match (r.memory, base.memory) {
            (Some(m), Some(b)) if b.snapshot > 0 => format!(
                "{:.2}",
                (m.snapshot as f64 / r.n as f64) / (b.snapshot as f64 / base.n as f64)
            ),
            _ => "-".into(),
        };
        println!(
            "{:>6} {:>12.2} {:>11.2} {:>13.2} {:>12}",
            r.n,
            per(r.translate, r.n) / per(base.translate, base.n),
            per(r.decode, r.n) / per(base.decode, base.n),
            (r.bytes as f64 / r.n as f64) / (base.bytes as f64 / base.n as f64),
            snap,
        );
    }
    if rows.iter().any(|r| r.warnings > 0) {
        println!("(translation warnings were reported; see the notes above)");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// Part 2: push latency through the real binary
// ---------------------------------------------------------------------------------------------

/// The simulated pods behind every pushed service (subset v1 at @1, v2 at @2), and the client.
struct Destination {
    net: Net,
    ca: Ca,
    certs: PathBuf,
    _apps: Vec<sim::AppHandle>,
    _pods: Vec<sim::PodHandle>,
}

impl Destination {
    async fn start() -> anyhow::Result<Destination> {
        let net = Net::new();
        let ca = Ca::new("xds bench mesh")?;
        let certs = std::env::temp_dir().join(format!("waypoint-xds-bench-{}", std::process::id()));
        std::fs::create_dir_all(&certs)?;
        ca.issue(&spiffe("waypoint"))?.write_to(&certs)?;
        let mut apps = Vec::new();
        let mut pods = Vec::new();
        for (host, name) in [(1, "pushed-v1"), (2, "pushed-v2")] {
            let ip = net.ip(host);
            apps.push(sim::start_app(SocketAddr::new(ip, PORT), name, sim::AppKind::Http).await?);
            let cert = ca.issue(&spiffe("bench-pushed"))?;
            pods.push(sim::start_pod(SocketAddr::new(ip, 15008), &cert.workload).await?);
        }
        Ok(Destination {
            net,
            ca,
            certs,
            _apps: apps,
            _pods: pods,
        })
    }

    fn pods(&self) -> Vec<IpAddr> {
        vec![self.net.ip(1), self.net.ip(2)]
    }
}

/// A spawned `waypoint`, killed (by its own pid) when dropped.
struct WaypointProcess {
    child: Child,
    hbone: SocketAddr,
    admin: SocketAddr,
    /// The last lines of its stderr, for error messages.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for WaypointProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("  note: could not kill waypoint {}: {e}", self.child.id());
            }
            let _ = self.child.wait();
        }
    }
}

impl WaypointProcess {
    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn rss_mib(&self) -> Option<f64> {
        status_kib_of(&self.child.id().to_string(), "VmRSS")
            .ok()
            .map(|k| k as f64 / 1024.0)
    }
}

fn waypoint_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.waypoint {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .join("waypoint"),
    };
    if !path.is_file() {
        bail!(
            "the waypoint binary is not at {} — build it into the same target dir:\n  \
             cargo build --release -p waypoint --bin waypoint\n\
             (or pass --waypoint PATH, or --no-push to skip the push-latency part)",
            path.display()
        );
    }
    Ok(path)
}

async fn spawn_waypoint(
    exe: &Path,
    server: &AdsServer,
    dir: &Path,
) -> anyhow::Result<WaypointProcess> {
    let mut cmd = waypoint_tests::xds_run_command(exe, &server.address(), dir, "waypoint-bench-0");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))?;
    let stderr = child.stderr.take().context("waypoint stderr")?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let tail = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(found) = announced(&line) {
                    let _ = tx.send(found);
                }
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
    }
    let mut process = WaypointProcess {
        child,
        hbone: SocketAddr::from(([0, 0, 0, 0], 0)),
        admin: SocketAddr::from(([0, 0, 0, 0], 0)),
        tail,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut hbone, mut admin) = (None, None);
    while hbone.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((what, addr))) if what == "hbone" => hbone = Some(addr),
            Ok(Some((what, addr))) if what == "admin" => admin = Some(addr),
            Ok(Some(_)) => {}
            _ => bail!(
                "the waypoint did not announce its listeners:\n{}",
                process.tail()
            ),
        }
    }
    process.hbone = hbone.unwrap_or(process.hbone);
    process.admin = admin.unwrap_or(process.admin);
    Ok(process)
}

/// `waypoint [<what>] listening on <addr>` (the HBONE one has no `<what>`).
fn announced(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.trim().strip_prefix("waypoint ")?;
    let (what, addr) = match rest.strip_prefix("listening on ") {
        Some(addr) => ("hbone", addr),
        None => rest.split_once(" listening on ")?,
    };
    Some((what.to_string(), addr.parse().ok()?))
}

async fn admin_status(admin: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// One GET through a fresh tunnel to `vip`; its status, or `None` if the tunnel or request
/// failed.
async fn try_get(client: &sim::ZtunnelClient, vip: SocketAddr, host: &str) -> Option<u16> {
    let attempt = async {
        let mut send = client.http1(vip).await.ok()?;
        let (parts, _) = sim::get(&mut send, host, "/", &[]).await.ok()?;
        Some(parts.status.as_u16())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Poll `vip` every [`POLL_EVERY`] until a 200; (time since `t0`, attempts).
async fn first_200(
    client: &sim::ZtunnelClient,
    vip: SocketAddr,
    host: &str,
    t0: Instant,
) -> anyhow::Result<(Duration, u32)> {
    let mut attempts = 0;
    let mut last = None;
    while t0.elapsed() < PUSH_DEADLINE {
        attempts += 1;
        last = try_get(client, vip, host).await;
        if last == Some(200) {
            return Ok((t0.elapsed(), attempts));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    bail!(
        "no 200 from {host} ({vip}) within {PUSH_DEADLINE:?} ({attempts} attempts, last {last:?})"
    )
}

struct PushRow {
    n: usize,
    startup: Duration,
    rss_mib: Option<f64>,
    /// New service: to the first 200, to the LDS ACK.
    first_200: Vec<Duration>,
    new_ack: Vec<Duration>,
    attempts: Vec<u32>,
    /// Weight-only change of an existing route: to the LDS ACK.
    weight_ack: Vec<Duration>,
}

async fn measure_push(
    tpl: &Template,
    n: usize,
    args: &Args,
    exe: &Path,
    dst: &Destination,
) -> anyhow::Result<PushRow> {
    let pki = TestPki::new();
    let server = Arc::new(
        AdsServer::start(
            "127.0.0.1:0".parse()?,
            &pki,
            AdsServerOptions::with_token(TOKEN),
        )
        .await?,
    );
    std::fs::write(dst.certs.join("istiod-root.pem"), pki.root_pem())?;
    std::fs::write(dst.certs.join("token"), TOKEN)?;

    let mut services = baseline(tpl, n, args.endpoints);
    let world = tpl.resources(&services);
    let mut lds = String::new();
    for l in &world.listeners {
        lds = server.set(type_url::LISTENER, &l.name, any(l));
    }
    for c in &world.clusters {
        server.set(type_url::CLUSTER, &c.name, any(c));
    }
    for e in &world.endpoints {
        server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, &e.cluster_name, any(e));
    }
    drop(world);

    let started = Instant::now();
    let waypoint = spawn_waypoint(exe, &server, &dst.certs).await?;
    let ready_deadline = Duration::from_secs(120);
    while admin_status(waypoint.admin, "/ready").await != Some(200) {
        if started.elapsed() > ready_deadline {
            bail!(
                "N={n}: the waypoint was not ready within {ready_deadline:?}:\n{}",
                waypoint.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let startup = started.elapsed();
    if !server
        .wait_for_ack(type_url::LISTENER, &lds, Duration::from_secs(30))
        .await
    {
        bail!(
            "N={n}: the initial listeners were never ACKed; NACKs: {:?}",
            server.nacks()
        );
    }
    let rss_mib = waypoint.rss_mib();
    eprintln!(
        "  N={n}: waypoint ready {:.0} ms after spawn, RSS {:.0} MiB",
        ms(startup),
        rss_mib.unwrap_or(0.0)
    );

    let client = sim::ZtunnelClient::new(
        dst.ca.issue(&spiffe("productpage"))?.workload,
        waypoint.hbone,
        spiffe("waypoint"),
    );
    // Warm the client's mTLS connection to the waypoint (a VIP nothing serves yet).
    let warm = SocketAddr::new(IpAddr::V4(vip(n + args.pushes)), PORT);
    let _ = try_get(&client, warm, "warm-up:9080").await;

    let mut row = PushRow {
        n,
        startup,
        rss_mib,
        first_200: Vec::new(),
        new_ack: Vec::new(),
        attempts: Vec::new(),
        weight_ack: Vec::new(),
    };
    for p in 0..args.pushes {
        let spec = Spec {
            name: format!("pushed-{p}"),
            vip: vip(n + p),
            pods: dst.pods(),
            weights: [50, 50],
        };
        let svc = tpl.service(&spec);
        let clusters: Vec<(String, Any)> = svc
            .clusters
            .iter()
            .map(|c| (c.name.clone(), any(c)))
            .collect();
        let assignments: Vec<(String, Any)> = svc
            .assignments
            .iter()
            .map(|e| (e.cluster_name.clone(), any(e)))
            .collect();
        services.push(svc);
        let listener = any(&tpl.main_internal(services.iter()));
        let vip = SocketAddr::new(IpAddr::V4(spec.vip), PORT);
        let host = format!("{}:{PORT}", spec.name);

        // CDS, EDS, LDS back to back (microseconds apart), as istiod orders them.
        let t0 = Instant::now();
        for (name, a) in clusters {
            server.set(type_url::CLUSTER, &name, a);
        }
        for (name, a) in assignments {
            server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, &name, a);
        }
        let version = server.set(type_url::LISTENER, "main_internal", listener);
        let ack = ack_timer(server.clone(), version, t0);
        let (took, attempts) = first_200(&client, vip, &host, t0)
            .await
            .with_context(|| format!("N={n} push {p}:\n{}", waypoint.tail()))?;
        row.first_200.push(took);
        row.attempts.push(attempts);
        row.new_ack.push(ack.await??);
    }

    for p in 0..args.pushes {
        let mut spec = Spec::baseline(0, args.endpoints);
        spec.weights = if p % 2 == 0 { [50, 50] } else { [90, 10] };
        services[0].chain = tpl.chain(&spec);
        let listener = any(&tpl.main_internal(services.iter()));
        let t0 = Instant::now();
        let version = server.set(type_url::LISTENER, "main_internal", listener);
        row.weight_ack
            .push(ack_timer(server.clone(), version, t0).await??);
    }
    if !server.nacks().is_empty() {
        eprintln!("  note: N={n}: NACKs: {:?}", server.nacks());
    }
    drop(waypoint);
    server.stop().await;
    Ok(row)
}

/// Time from `t0` to the ACK of `version` of the listeners.
fn ack_timer(
    server: Arc<AdsServer>,
    version: String,
    t0: Instant,
) -> tokio::task::JoinHandle<anyhow::Result<Duration>> {
    tokio::spawn(async move {
        if server
            .wait_for_ack(type_url::LISTENER, &version, PUSH_DEADLINE)
            .await
        {
            Ok(t0.elapsed())
        } else {
            bail!(
                "listener version {version} not ACKed within {PUSH_DEADLINE:?}; NACKs: {:?}",
                server.nacks()
            )
        }
    })
}

fn print_push(rows: &[PushRow], pushes: usize) {
    println!();
    println!("push latency ({pushes} pushes per row; min / median / max, ms):");
    println!(
        "{:>6} {:>10} {:>8}  {:>23}  {:>23}  {:>23} {:>9}",
        "N",
        "ready ms",
        "RSS MiB",
        "new svc → first 200",
        "new svc → LDS ACK",
        "weight → LDS ACK",
        "polls"
    );
    for r in rows {
        let polls: Vec<String> = r.attempts.iter().map(u32::to_string).collect();
        println!(
            "{:>6} {:>10.0} {:>8} {:>24} {:>24} {:>24} {:>9}",
            r.n,
            ms(r.startup),
            r.rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            spread(&r.first_200),
            spread(&r.new_ack),
            spread(&r.weight_ack),
            polls.join(","),
        );
    }
}

fn spread(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort();
    format!(
        "{:.1} / {:.1} / {:.1}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(file) = &args.probe_memory {
        return probe_memory(file);
    }
    if args.endpoints < 2 {
        bail!("--endpoints must be at least 2 (one per subset)");
    }
    if args.sizes.is_empty() {
        bail!("--sizes is empty");
    }
    install_crypto_provider();
    let exe = std::env::current_exe()?;
    let tpl = Template::load()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "xds bench: sizes {:?}, {} endpoints/service, {} runs, push sizes {:?} × {} pushes, {cores} cores",
        args.sizes, args.endpoints, args.runs, args.push_sizes, args.pushes
    );
    println!("note: translation runs in this process; memory is measured in a fresh child per N; the waypoint under push is the release binary in its own process, the ADS server, pods and client share this one");

    let mut rows = Vec::new();
    for &n in &args.sizes {
        let row = measure_translation(&tpl, n, &args, &exe)?;
        eprintln!(
            "  done: translate N={n}: {:.1} ms ({} resources, {:.1} MiB)",
            ms(row.translate),
            row.resources,
            row.bytes as f64 / 1048576.0
        );
        rows.push(row);
    }
    print_translation(&rows, args.endpoints);

    if args.no_push || args.push_sizes.is_empty() {
        return Ok(());
    }
    let waypoint = waypoint_binary(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let push_rows = runtime.block_on(async {
        let dst = Destination::start().await?;
        let mut out = Vec::new();
        for &n in &args.push_sizes {
            out.push(measure_push(&tpl, n, &args, &waypoint, &dst).await?);
        }
        if let Err(e) = std::fs::remove_dir_all(&dst.certs) {
            eprintln!("  note: could not remove {}: {e}", dst.certs.display());
        }
        anyhow::Ok(out)
    })?;
    print_push(&push_rows, args.pushes);
    Ok(())
}
