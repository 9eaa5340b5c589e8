//! One model service from its clusters: TCP destinations, the workloads a waypoint serves, per-port
//! traffic policy.

use super::*;
use crate::model::{Workload, UNKNOWN_ACCOUNT};
use crate::recent::Recent;
use std::cell::RefCell;

/// Kubernetes namespace of `name.ns.svc…`, else `default`.
fn namespace_of_host(host: &str) -> String {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() >= 3 && parts[2] == "svc" {
        parts[1].to_string()
    } else {
        "default".to_string()
    }
}

/// The waypoint's namespace as `connect_originate` names it (its `spiffe://<td>/ns/<ns>/sa/`
/// matcher), for pods whose own is not known.
pub(super) fn waypoint_namespace(sans: &[SanMatcher]) -> Option<String> {
    sans.iter().find_map(|m| match &m.matcher {
        StringMatch::Prefix(p) => {
            let ns = p.split_once("/ns/")?.1.strip_suffix("/sa/")?;
            (!ns.is_empty() && !ns.contains('/')).then(|| ns.to_string())
        }
        _ => None,
    })
}

/// The service account of an identity that admits any service account of its namespace (the
/// waypoint's HBONE client honours it).
pub const ANY_SERVICE_ACCOUNT: &str = "*";

/// Pods bound to the waypoint (the `direct-*` range): served on every port, with the protocol
/// the application-protocol matcher allows (a chain it names that the listener lacks cannot
/// serve). The endpoint is the pod's service endpoint when it has one, else a pod of its own
/// with the identity the caller knows or the one `connect_originate` verifies.
pub(super) fn bound_workloads(
    main: &listener::MainListener,
    known: &BTreeMap<IpAddr, Arc<Endpoint>>,
    waypoint_namespace: Option<&str>,
    opts: &TranslateOptions,
    diag: &mut Diag,
    builder: &mut SnapshotBuilder,
) {
    for (ip, pc) in &main.matched.pods {
        let present = |c: &Option<String>| c.as_ref().is_some_and(|c| main.authz.contains_key(c));
        let protocol = match (present(&pc.http), present(&pc.tcp)) {
            (true, true) => Protocol::Unknown,
            (true, false) => Protocol::Http,
            (false, true) => Protocol::Tcp,
            (false, false) => {
                diag.warn(
                    LISTENER_TYPE,
                    listener::MAIN_INTERNAL,
                    format!("pod {ip}: no direct chain to serve it; ignored"),
                );
                continue;
            }
        };
        let endpoint = match known.get(ip) {
            Some(ep) => ep.clone(),
            None => {
                // Unknown until the HBONE handshake shows it, like service endpoints; the peer is
                // verified against `connect_originate`'s SAN matchers.
                let namespace = waypoint_namespace.unwrap_or("default").to_string();
                let identity = opts.identities.get(ip).cloned().unwrap_or_default();
                let (ns, sa) = match identity
                    .split_once("/ns/")
                    .and_then(|(_, r)| r.split_once("/sa/"))
                {
                    Some((ns, sa)) if sa != ANY_SERVICE_ACCOUNT => (ns.into(), sa.into()),
                    Some((ns, _)) => (ns.into(), UNKNOWN_ACCOUNT.into()),
                    None => (namespace.into(), UNKNOWN_ACCOUNT.into()),
                };
                Arc::new(Endpoint {
                    address: *ip,
                    labels: Default::default(),
                    workload: Arc::new(Workload::new(
                        ip.to_string().into(),
                        ns,
                        sa,
                        identity.into(),
                    )),
                    // A workload that uses the waypoint is in the ambient mesh.
                    transport: Transport::Hbone,
                })
            }
        };
        builder.workload(endpoint, protocol);
    }
}

/// What one service gives the snapshot builder besides its routes, and what building it found.
#[derive(Debug)]
pub(crate) struct ServiceOut {
    pub(super) service: Service,
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    /// Shared with every snapshot that has the service.
    pub(super) destination_rule: Option<Arc<DestinationRule>>,
    pub(super) diag: Diag,
}

impl ServiceOut {
    /// Hand it to `builder` (as many times as translations reuse it), with the service's routes
    /// as `acc` has them, and the clusters a published snapshot built from it, if any.
    pub(super) fn emit(
        &self,
        acc: ServiceAcc,
        clusters: Option<Arc<PortMap>>,
        builder: &mut SnapshotBuilder,
    ) {
        if let Some(dr) = &self.destination_rule {
            builder.destination_rule(dr.clone());
        }
        if let Some(vs) = self.virtual_service(acc) {
            builder.virtual_service(vs);
        }
        match clusters {
            Some(c) => {
                builder.service_with_clusters(self.service.clone(), self.endpoints.clone(), c)
            }
            None => builder.service(self.service.clone(), self.endpoints.clone()),
        };
    }
}

impl ServiceOut {
    /// The service's VirtualService from the routes `acc` has for it (none without routes).
    pub(super) fn virtual_service(&self, acc: ServiceAcc) -> Option<VirtualService> {
        if acc.http.is_empty() && acc.tcp.is_empty() {
            return None;
        }
        let (namespace, name) = acc.virtual_service.unwrap_or_else(|| {
            (
                self.service.namespace.clone(),
                format!("xds-{}", self.service.hostname),
            )
        });
        Some(VirtualService {
            namespace,
            name,
            hosts: vec![self.service.hostname.clone()],
            http: acc.http,
            tcp: acc.tcp,
        })
    }
}

/// One service's model objects but its routes (see [`ServiceOut::emit`]).
pub(super) fn build_service(
    host: &str,
    acc: &ServiceAcc,
    mine: &[(&str, &ServiceCluster)],
    pods: &Pods<'_>,
    opts: &TranslateOptions,
) -> ServiceOut {
    let mut diag = Diag::default();
    let diag = &mut diag;
    let namespace = acc
        .namespace
        .as_deref()
        .map_or_else(|| namespace_of_host(host), str::to_string);
    // Ports: kept as long as the snapshot, so no spare room (pushed one by one, one port
    // took four slots).
    let mut ports = Vec::with_capacity(acc.ports.len());
    for (number, p) in &acc.ports {
        let kinds: BTreeSet<bool> = p
            .chains
            .keys()
            .filter_map(|c| ClusterName::parse(c).map(|c| c.is_tcp()))
            .chain(
                mine.iter()
                    .filter(|(_, sc)| sc.name.port == *number && sc.name.subset().is_none())
                    .map(|(_, sc)| sc.name.is_tcp()),
            )
            .collect();
        let protocol = match (kinds.contains(&false), kinds.contains(&true)) {
            (true, true) => Protocol::Unknown,
            (false, true) => Protocol::Tcp,
            _ if p.http2
                || mine
                    .iter()
                    .any(|(_, sc)| sc.name.port == *number && sc.http2) =>
            {
                Protocol::Http2
            }
            _ => Protocol::Http,
        };
        if !mine
            .iter()
            .any(|(_, sc)| sc.name.port == *number && sc.name.subset().is_none())
        {
            let chains: Vec<&String> = p.chains.keys().collect();
            diag.warn(
                LISTENER_TYPE,
                listener::MAIN_INTERNAL,
                format!("{host}:{number} (chains {chains:?}): its cluster is not in this config (never sent by CDS, or refused); requests to this port get 503 until it is"),
            );
        }
        // Target port: the pods' port in this port's own (no subset) cluster.
        let mut targets = BTreeSet::new();
        for (name, sc) in mine {
            if sc.name.port == *number {
                targets.extend(
                    pods.get(*name)
                        .into_iter()
                        .flat_map(|l| l.iter())
                        .map(|p| p.port),
                );
            }
        }
        if targets.len() > 1 {
            diag.warn(
                CLUSTER_TYPE,
                &format!("inbound-vip|{number}|…|{host}"),
                format!("pods use different target ports {targets:?}; the first is used"),
            );
        }
        let target_port = targets.first().copied().unwrap_or(*number);
        let name = match protocol {
            Protocol::Tcp => format!("tcp-{number}"),
            Protocol::Http2 => format!("http2-{number}"),
            Protocol::Unknown => format!("port-{number}"),
            _ => format!("http-{number}"),
        };
        ports.push(ServicePort {
            number: *number,
            name,
            protocol,
            target_port,
            path: p.path,
            default_retries: p.default_retries.clone(),
        });
    }
    // Endpoints: union over the service's clusters; subset membership as labels.
    struct Acc {
        labels: BTreeMap<String, String>,
        namespace: Option<Arc<str>>,
        workload: Option<Arc<str>>,
        tunnel: bool,
        istio_mtls: bool,
    }
    let mut eps: BTreeMap<IpAddr, Acc> = BTreeMap::new();
    for (name, sc) in mine {
        for p in pods.get(*name).into_iter().flat_map(|l| l.iter()) {
            let e = eps.entry(p.ip).or_insert_with(|| Acc {
                labels: BTreeMap::new(),
                namespace: None,
                workload: None,
                tunnel: p.tunnel,
                istio_mtls: p.istio_mtls,
            });
            e.labels
                .extend(p.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            if e.namespace.is_none() {
                e.namespace = p.namespace().cloned();
            }
            if e.workload.is_none() {
                e.workload = p.workload().cloned();
            }
            if let Some(s) = sc.name.subset() {
                e.labels
                    .insert(format!("{SUBSET_LABEL_PREFIX}{s}"), "true".to_string());
            }
        }
    }
    // Pods of one subset carry the same labels: one map for them (the snapshot builder would
    // share them anyway; shared here, the reused service and the snapshot hold the same ones).
    let mut label_maps = crate::labels::LabelMaps::default();
    let mut names = crate::labels::Names::default();
    // The replicas of a workload (the same names) one record.
    let mut workloads = crate::labels::Records::default();
    let endpoints: Vec<Arc<Endpoint>> = eps
        .into_iter()
        .map(|(ip, a)| {
            let labels = label_maps.intern(a.labels);
            let ns = match &a.namespace {
                Some(ns) => names.share(ns),
                None => names.get(&namespace),
            };
            // The pod's identity when the caller knows it (workload discovery); else unknown
            // until the HBONE handshake shows it. Either way the peer is verified against
            // `connect_originate`'s SAN matchers (the snapshot's `hbone_peer_sans`).
            let identity = opts.identities.get(&ip).map_or("", String::as_str);
            let sa = match identity.rsplit_once("/sa/") {
                Some((_, sa)) if sa != ANY_SERVICE_ACCOUNT => names.get(sa),
                _ => names.get(UNKNOWN_ACCOUNT),
            };
            let workload = Workload::new(
                a.workload.unwrap_or_else(|| ip.to_string().into()),
                ns,
                sa,
                names.get(identity),
            );
            Arc::new(Endpoint {
                address: ip,
                labels,
                workload: workloads.record(workload),
                transport: if a.tunnel {
                    Transport::Hbone
                } else if a.istio_mtls {
                    Transport::IstioMutual
                } else {
                    Transport::Direct
                },
            })
        })
        .collect();
    // DestinationRule from the clusters' effective policies.
    let mut top = TrafficPolicy::default();
    let mut subsets: BTreeMap<String, TrafficPolicy> = BTreeMap::new();
    for (name, sc) in mine {
        let placed = endpoint::with_placement(
            &sc.policy,
            sc.locality_weighted,
            pods.get(*name).map_or(&[][..], |l| l),
        );
        let p = &placed;
        match sc.name.subset() {
            None => {
                if *p != ClusterPolicy::default()
                    && !top
                        .port_level_settings
                        .iter()
                        .any(|x| x.port == sc.name.port)
                {
                    top.port_level_settings.push(port_policy(sc.name.port, p));
                }
            }
            Some(s) => {
                let tp = subsets.entry(s.to_string()).or_default();
                if !tp
                    .port_level_settings
                    .iter()
                    .any(|x| x.port == sc.name.port)
                {
                    tp.port_level_settings.push(port_policy(sc.name.port, p));
                }
            }
        }
    }
    let mut destination_rule = None;
    if !top.port_level_settings.is_empty() || !subsets.is_empty() {
        let mut dr = DestinationRule {
            namespace: namespace.clone(),
            name: format!("xds-{host}"),
            host: host.to_string(),
            traffic_policy: (!top.port_level_settings.is_empty())
                .then(|| TrafficPolicy::shared(top)),
            subsets: subsets
                .into_iter()
                .map(|(name, tp)| Subset {
                    labels: subset_labels(&name),
                    name,
                    traffic_policy: Some(TrafficPolicy::shared(tp)),
                })
                .collect(),
        };
        crate::builder::shrink_rule(&mut dr);
        destination_rule = Some(Arc::new(dr));
    }
    ServiceOut {
        service: Service {
            hostname: host.to_string(),
            namespace,
            vips: acc.vips.keys().copied().collect(),
            ports,
        },
        endpoints,
        destination_rule,
        diag: std::mem::take(diag),
    }
}

/// The labels of subset `name` (`xds.subset/<name>: "true"`), one map for every service's subset
/// of that name: a one-entry map is a whole B-tree node (about 570 bytes with its strings), and
/// a mesh has a handful of subset names (`v1`, `v2`, …) across thousands of services. The last
/// [`RECENT_SUBSETS`] names this thread made are found again; nothing is kept alive for them.
pub(crate) fn subset_labels(name: &str) -> Arc<BTreeMap<String, String>> {
    thread_local! {
        static RECENT: RefCell<Recent<BTreeMap<String, String>>> =
            const { RefCell::new(Recent::new(RECENT_SUBSETS)) };
    }
    let is = |labels: &BTreeMap<String, String>| {
        labels.len() == 1
            && labels
                .keys()
                .next()
                .and_then(|k| k.strip_prefix(SUBSET_LABEL_PREFIX))
                == Some(name)
    };
    RECENT.with_borrow_mut(|recent| match recent.find(is) {
        Some(found) => found,
        None => recent.insert(BTreeMap::from([(
            format!("{SUBSET_LABEL_PREFIX}{name}"),
            "true".to_string(),
        )])),
    })
}

/// How many subset names [`subset_labels`] remembers.
const RECENT_SUBSETS: usize = 16;

fn port_policy(port: u16, p: &ClusterPolicy) -> PortTrafficPolicy {
    PortTrafficPolicy {
        port,
        load_balancer: p.load_balancer.clone(),
        connection_pool: p.connection_pool.clone(),
        outlier_detection: p.outlier_detection.clone(),
        tls: p.tls.clone(),
    }
}
