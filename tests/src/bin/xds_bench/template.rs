//! The xDS state of N istiod-sized services, cloned from the bookinfo fixture's `reviews` with
//! their own names, VIPs and pod IPs.

use super::*;

pub(super) const IP_MATCHER: &str = "type.googleapis.com/xds.type.matcher.v3.IPMatcher";

/// `xds.type.matcher.v3.IPMatcher` (cncf/xds `xds/type/matcher/v3/ip.proto`; envoy-types does
/// not generate it).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct IpMatcher {
    #[prost(message, repeated, tag = "1")]
    pub(super) range_matchers: Vec<IpRangeMatcher>,
}

/// The resources handed to a memory probe.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AnyList {
    #[prost(message, repeated, tag = "1")]
    pub(super) items: Vec<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct IpRangeMatcher {
    #[prost(message, repeated, tag = "1")]
    pub(super) ranges: Vec<envoy_types::pb::xds::core::v3::CidrRange>,
    #[prost(message, optional, tag = "2")]
    pub(super) on_match: Option<OnMatch>,
    #[prost(bool, tag = "3")]
    pub(super) exclusive: bool,
}

// ---------------------------------------------------------------------------------------------
// Generating istiod-shaped resources
// ---------------------------------------------------------------------------------------------

/// One service to generate.
pub(super) struct Spec {
    /// Short name (`svc-42`); the host is `<name>.default.svc.cluster.local`.
    pub(super) name: String,
    pub(super) vip: Ipv4Addr,
    /// Pod IPs: the first half is subset v1, the rest v2.
    pub(super) pods: Vec<IpAddr>,
    /// Route weights of v1 and v2.
    pub(super) weights: [u32; 2],
}

impl Spec {
    /// Baseline service `i` with `endpoints` pod IPs that nothing listens on (10.128.0.0/9).
    pub(super) fn baseline(i: usize, endpoints: usize) -> Spec {
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

    pub(super) fn host(&self) -> String {
        format!("{}.default.svc.cluster.local", self.name)
    }

    pub(super) fn rename(&self, s: &str) -> String {
        s.replace(TEMPLATE_SHORT, &self.name)
    }
}

/// VIP of service `i` (10.96.0.0/12, as a kind cluster's service CIDR).
pub(super) fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// The resources of one service, as istiod builds them for a waypoint.
#[derive(Clone)]
pub(super) struct ServiceXds {
    /// `main_internal` filter chain `inbound-vip|9080|http|<host>` (HCM, inline route config).
    pub(super) chain: FilterChain,
    /// The listener's IP-matcher entry: VIP → port 9080 → the chain.
    pub(super) range: IpRangeMatcher,
    /// `inbound-vip|9080|http|<host>` and its subsets `http/v1`, `http/v2` (EDS).
    pub(super) clusters: Vec<Cluster>,
    /// The three clusters' assignments.
    pub(super) assignments: Vec<ClusterLoadAssignment>,
}

/// The bookinfo fixture, cut into the pieces one service is made of.
pub(super) struct Template {
    pub(super) connect_terminate: Listener,
    /// Without chains; its IP matcher is replaced per state.
    pub(super) main_internal: Listener,
    /// `connect_originate`, `main_internal`.
    pub(super) infra_clusters: Vec<Cluster>,
    pub(super) chain: FilterChain,
    /// Index of the HCM in `chain.filters`, and the HCM itself.
    pub(super) hcm_at: usize,
    pub(super) hcm: HttpConnectionManager,
    pub(super) range: IpRangeMatcher,
    pub(super) cluster: Cluster,
    pub(super) subset_cluster: Cluster,
    pub(super) assignment: ClusterLoadAssignment,
    pub(super) endpoint: LbEndpoint,
}

impl Template {
    pub(super) fn load() -> anyhow::Result<Template> {
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

    pub(super) fn service(&self, spec: &Spec) -> ServiceXds {
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
    pub(super) fn chain(&self, spec: &Spec) -> FilterChain {
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
                    let mut lone = None;
                    if let Some(ClusterSpecifier::WeightedClusters(wc)) =
                        &mut action.cluster_specifier
                    {
                        for (c, w) in wc.clusters.iter_mut().zip(spec.weights) {
                            c.name = rename(&c.name);
                            c.weight = Some(UInt32Value { value: w });
                        }
                        // istiod drops a 0-weight destination; a lone one is sent as `cluster`.
                        wc.clusters
                            .retain(|c| c.weight.as_ref().is_some_and(|w| w.value > 0));
                        if let [only] = wc.clusters.as_slice() {
                            lone = Some(only.name.clone());
                        }
                    }
                    if let Some(name) = lone {
                        action.cluster_specifier = Some(ClusterSpecifier::Cluster(name));
                    }
                }
            }
        }
        let mut chain = self.chain.clone();
        chain.name = rename(&chain.name);
        chain.filters[self.hcm_at].config_type = Some(ConfigType::TypedConfig(any(&hcm)));
        chain
    }

    pub(super) fn range(&self, spec: &Spec, chain: &str) -> IpRangeMatcher {
        let mut range = self.range.clone();
        for r in &mut range.ranges {
            r.address_prefix = spec.vip.to_string();
        }
        if let Some(o) = &mut range.on_match {
            point_actions_at(o, chain);
        }
        range
    }

    pub(super) fn cluster(&self, spec: &Spec) -> Cluster {
        let rename = |s: &str| spec.rename(s);
        let mut c = self.cluster.clone();
        c.name = rename(&c.name);
        if let Some(eds) = &mut c.eds_cluster_config {
            eds.service_name = rename(&eds.service_name);
        }
        rename_metadata(&mut c.metadata, &rename);
        c
    }

    pub(super) fn subset_cluster(&self, spec: &Spec, version: &str) -> Cluster {
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
    pub(super) fn assignment(
        &self,
        spec: &Spec,
        name: &str,
        groups: &[(&[IpAddr], &str)],
    ) -> ClusterLoadAssignment {
        let mut endpoints = Vec::new();
        for (pods, version) in groups {
            for ip in pods.iter() {
                endpoints.push(self.endpoint(spec, *ip, version));
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
    /// The pods of one version are the replicas of one Deployment (`{name}-{version}`), and
    /// istiod names each pod's workload after it (`GetWorkloadMetaFromPod` in istio/istio's
    /// `pilot/pkg/serviceregistry/kube/controller/endpoint_builder.go`).
    pub(super) fn endpoint(&self, spec: &Spec, ip: IpAddr, version: &str) -> LbEndpoint {
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
            format!("{name}-{version};default;{name};{version};Kubernetes"),
        );
        e
    }

    /// `main_internal` with `services`' chains, its IP matcher mapping every VIP.
    pub(super) fn main_internal<'a>(
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
    pub(super) fn resources(&self, services: &[ServiceXds]) -> Resources {
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
pub(super) fn ip_matcher_any(l: &mut Listener) -> Option<&mut Any> {
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
pub(super) fn point_actions_at(o: &mut OnMatch, chain: &str) {
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

pub(super) fn point_matcher_at(m: &mut Matcher, chain: &str) {
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

pub(super) fn rename_metadata(md: &mut Option<Metadata>, f: &dyn Fn(&str) -> String) {
    if let Some(md) = md {
        for s in md.filter_metadata.values_mut() {
            rename_struct(s, f);
        }
    }
}

pub(super) fn rename_struct(s: &mut Struct, f: &dyn Fn(&str) -> String) {
    for v in s.fields.values_mut() {
        rename_value(v, f);
    }
}

pub(super) fn rename_value(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v.kind.as_mut() {
        Some(Kind::StringValue(s)) => *s = f(s),
        Some(Kind::StructValue(s)) => rename_struct(s, f),
        Some(Kind::ListValue(l)) => l.values.iter_mut().for_each(|v| rename_value(v, f)),
        _ => {}
    }
}

pub(super) fn set_string(md: &mut Metadata, namespace: &str, key: &str, value: String) {
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
pub(super) fn to_anys(r: &Resources) -> Vec<Any> {
    let listeners = r.listeners.iter().map(any);
    let clusters = r.clusters.iter().map(any);
    let endpoints = r.endpoints.iter().map(any);
    listeners.chain(clusters).chain(endpoints).collect()
}

pub(super) fn baseline(tpl: &Template, n: usize, endpoints: usize) -> Vec<ServiceXds> {
    (0..n)
        .map(|i| tpl.service(&Spec::baseline(i, endpoints)))
        .collect()
}

pub(super) fn translate_options() -> TranslateOptions {
    TranslateOptions {
        trust_domain: TRUST_DOMAIN.to_string(),
        ..TranslateOptions::default()
    }
}

pub(super) fn rejections(r: Vec<routing::xds::Rejection>) -> anyhow::Error {
    let first: Vec<String> = r.iter().take(3).map(ToString::to_string).collect();
    anyhow!("{} rejection(s): {}", r.len(), first.join("; "))
}
