//! `ClusterLoadAssignment` → pod endpoints.
//!
//! istiod (`xds/endpoints/endpoint_builder.go` `buildEnvoyLbEndpoint`, with
//! `toServiceWaypoint` false and HBONE always on for `inbound-vip`) writes
//! each pod as `envoy_internal_address{server_listener_name:
//! "connect_originate", endpoint_id: "<podIP>:<targetPort>"}`, metadata
//! `envoy.filters.listener.original_dst.local = "<podIP>:<port>"` and
//! `istio.workload = "<workload>;<ns>;<canonical svc>;<canonical rev>;<cluster>"`
//! (`util.go` `AppendLbEndpointMetadata`). An endpoint that does not speak
//! HBONE (`supportTunnel` false: a pod outside ambient, a WorkloadEntry
//! without tunnel, a STATIC ServiceEntry address) is a plain `socket_address`;
//! the waypoint dials it directly ([`crate::Transport::Direct`]). Neither pod labels nor the service account are sent: labels here are
//! the canonical service / revision (`service.istio.io/canonical-name`,
//! `service.istio.io/canonical-revision`) plus the synthetic subset labels,
//! and the identity comes from [`super::TranslateOptions::identities`].
//!
//! Each pod keeps its `LocalityLbEndpoints` group's `priority`, `locality` and
//! `load_balancing_weight` ([`crate::Placement`]): istiod groups endpoints by
//! locality (`endpoint_builder.go` `generate`) and, for a DestinationRule
//! `localityLbSetting` (`loadbalancer.go` `ApplyLocalityLoadBalancer`), sets
//! failover priorities and `distribute` weights relative to the waypoint's
//! locality; the load balancer ([`crate::Cluster`]) spills across the
//! priorities and weighs the localities as Envoy does.

use super::{At, Diag};
use crate::policy::{ClusterPolicy, LocalityLb, Placement};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One pod of an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodEndpoint {
    /// Its address, as an IP and a port: a `SocketAddr` is 32 bytes where these take 19
    /// (50 000 pods at 5 000 services).
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    /// From `istio.workload` (`None` without it): one record for the replicas of a workload
    /// ([`PodShare`]), 8 bytes here where the two names inline were 32 (a pod 64 bytes
    /// allocated instead of 96).
    pub(crate) who: Option<Arc<PodWho>>,
    /// Shared: the translator gives equal maps one allocation ([`super::pieces`]).
    pub(crate) labels: Arc<crate::Labels>,
    /// Reached through `connect_originate` (HBONE), else directly.
    pub(crate) tunnel: bool,
    /// Its group's priority, locality and locality weight.
    pub(crate) placement: Arc<Placement>,
    /// Not tunnelled, dialled in Istio mutual TLS (outbound `tlsMode-istio`, see `outbound.rs`).
    pub(crate) istio_mtls: bool,
}

/// A pod's workload and namespace, as `istio.workload` names them; the snapshot endpoint's
/// name is the workload name, the same string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PodWho {
    pub(crate) workload: Option<Arc<str>>,
    pub(crate) namespace: Option<Arc<str>>,
}

/// Pods decoded together, by address: an assignment's pod equal to one an earlier assignment of
/// the same decoding listed is that one (`inbound-vip|…|http/v1|…` lists the pods of
/// `inbound-vip|…|http|…` again: without this each service held every pod twice, 112 bytes and
/// its strings each); the pods of a workload one [`PodWho`] (istiod names a pod's workload
/// after its Deployment, the same for every replica: `GetWorkloadMetaFromPod` in
/// `pilot/pkg/serviceregistry/kube/controller/endpoint_builder.go`), and the records' names one
/// string each (the namespace of many workloads). Lives for one decoding: it holds what it
/// shares.
#[derive(Default)]
pub(crate) struct PodShare {
    pods: std::collections::HashMap<SocketAddr, Arc<PodEndpoint>, super::FastHash>,
    whos: crate::labels::Records<PodWho>,
    names: crate::labels::Names,
}

impl PodShare {
    /// `pod`, or the equal one decoded before it.
    pub(crate) fn pod(&mut self, mut pod: PodEndpoint) -> Arc<PodEndpoint> {
        if let Some(who) = &mut pod.who {
            if !self.whos.contains(who) {
                // A workload new to the decoding: its names shared with the other workloads'.
                let mine = Arc::make_mut(who);
                for name in [&mut mine.namespace, &mut mine.workload]
                    .into_iter()
                    .flatten()
                {
                    *name = self.names.share(name);
                }
            }
            *who = self.whos.share(who);
        }
        match self.pods.get(&pod.addr()) {
            Some(p) if **p == pod => p.clone(),
            _ => {
                let p = Arc::new(pod);
                self.pods.insert(p.addr(), p.clone());
                p
            }
        }
    }
}

impl PodEndpoint {
    /// The workload's name, from `istio.workload`.
    pub(crate) fn workload(&self) -> Option<&Arc<str>> {
        self.who.as_ref()?.workload.as_ref()
    }

    /// The workload's namespace, from `istio.workload`.
    pub(crate) fn namespace(&self) -> Option<&Arc<str>> {
        self.who.as_ref()?.namespace.as_ref()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

// HealthStatus: UNKNOWN = 0, HEALTHY = 1, UNHEALTHY = 2, DRAINING = 3,
// TIMEOUT = 4, DEGRADED = 5.
fn routable(status: i32) -> bool {
    matches!(status, 0 | 1 | 5)
}

/// The routable pods of an assignment. Malformed addresses are rejections
/// of the assignment (`at`); what cannot be expressed is warned about.
pub(crate) fn pods(cla: &ClusterLoadAssignment, at: At<'_>, diag: &mut Diag) -> Vec<PodEndpoint> {
    let mut out = Vec::new();
    let mut skipped = 0usize;
    for locality in &cla.endpoints {
        let placement = Arc::new(Placement {
            priority: locality.priority,
            locality: match &locality.locality {
                Some(l) if !(l.region.is_empty() && l.zone.is_empty() && l.sub_zone.is_empty()) => {
                    std::sync::Arc::new(crate::model::Locality {
                        region: l.region.clone(),
                        zone: l.zone.clone(),
                        sub_zone: l.sub_zone.clone(),
                    })
                }
                _ => crate::model::Locality::unknown(),
            },
            // Unset: Envoy gives the group no load under locality-weighted LB.
            locality_weight: locality
                .load_balancing_weight
                .as_ref()
                .map_or(0, |w| w.value),
        });
        for ep in &locality.lb_endpoints {
            if !routable(ep.health_status) {
                skipped += 1;
                continue;
            }
            if ep
                .load_balancing_weight
                .as_ref()
                .is_some_and(|w| w.value != 1)
            {
                at.warn(
                    diag,
                    "endpoint load_balancing_weight is not supported; equal weights used",
                );
            }
            match pod(ep, placement.clone()) {
                Ok(p) => out.push(p),
                Err(reason) => at.reject(diag, reason.to_string()),
            }
        }
    }
    if skipped > 0 {
        at.warn(
            diag,
            format!("{skipped} unhealthy/draining endpoint(s) left out (as Envoy does)"),
        );
    }
    if let Some(f) = cla
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
        .filter(|f| f.value != 140)
    {
        at.warn(
            diag,
            format!(
                "overprovisioning_factor {} is not supported; 140 (Envoy's default) used",
                f.value
            ),
        );
    }
    if !cla.named_endpoints.is_empty() {
        at.warn(diag, "named_endpoints are not supported; ignored");
    }
    out
}

/// `policy` with the pods' priorities and localities, when they matter: more
/// than one priority, or several localities under locality-weighted LB
/// (`weighted`: the cluster's `locality_weighted_lb_config`).
pub(crate) fn with_placement(
    policy: &ClusterPolicy,
    weighted: bool,
    pods: &[Arc<PodEndpoint>],
) -> ClusterPolicy {
    let mut out = policy.clone();
    let first = pods.first().map(|p| &p.placement);
    let levels = pods.iter().any(|p| p.placement.priority != 0);
    let localities = pods
        .iter()
        .any(|p| Some(&p.placement.locality) != first.map(|f| &f.locality));
    if levels || (weighted && localities) {
        out.load_balancer
            .get_or_insert_with(Default::default)
            .locality = Some(LocalityLb {
            weighted,
            endpoints: pods.iter().map(|p| (p.ip, p.placement.clone())).collect(),
        });
    }
    out
}

/// An `LbEndpoint` this proxy cannot dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EndpointError {
    #[error("named endpoint {0} is not supported")]
    Named(String),
    #[error("endpoint without address")]
    NoAddress,
    #[error("internal address to listener {0:?} (expected connect_originate)")]
    InternalListener(String),
    #[error("endpoint_id {0:?} is not ip:port")]
    EndpointId(String),
    #[error("endpoint address {0:?} is not an IP")]
    NotAnIp(String),
    #[error("endpoint port {0} out of range")]
    PortRange(u32),
    #[error("endpoint without a port value")]
    NoPort,
    #[error("pipe endpoints are not supported")]
    Pipe,
}

fn pod(ep: &LbEndpoint, placement: Arc<Placement>) -> Result<PodEndpoint, EndpointError> {
    let endpoint = match &ep.host_identifier {
        Some(HostIdentifier::Endpoint(e)) => e,
        Some(HostIdentifier::EndpointName(n)) => return Err(EndpointError::Named(n.clone())),
        None => return Err(EndpointError::NoAddress),
    };
    let tunnel = matches!(
        endpoint.address.as_ref().and_then(|a| a.address.as_ref()),
        Some(AddressKind::EnvoyInternalAddress(_))
    );
    let addr = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(AddressKind::EnvoyInternalAddress(i)) => {
            let listener = match &i.address_name_specifier {
                Some(AddressNameSpecifier::ServerListenerName(n)) => n.as_str(),
                None => "",
            };
            if listener != "connect_originate" {
                return Err(EndpointError::InternalListener(listener.to_string()));
            }
            i.endpoint_id
                .parse::<SocketAddr>()
                .map_err(|_| EndpointError::EndpointId(i.endpoint_id.clone()))?
        }
        Some(AddressKind::SocketAddress(s)) => {
            let ip: IpAddr = s
                .address
                .parse()
                .map_err(|_| EndpointError::NotAnIp(s.address.clone()))?;
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| EndpointError::PortRange(p))?
                }
                _ => return Err(EndpointError::NoPort),
            };
            SocketAddr::new(ip, port)
        }
        Some(AddressKind::Pipe(_)) => return Err(EndpointError::Pipe),
        None => return Err(EndpointError::NoAddress),
    };
    let (workload, namespace, labels) = workload_meta(ep);
    Ok(PodEndpoint {
        ip: addr.ip(),
        port: addr.port(),
        who: (workload.is_some() || namespace.is_some()).then(|| {
            Arc::new(PodWho {
                workload: workload.map(Arc::from),
                namespace: namespace.map(Arc::from),
            })
        }),
        labels: Arc::new(labels.into()),
        tunnel,
        placement,
        istio_mtls: false,
    })
}

/// `istio.workload` = `<workload>;<ns>;<canonical svc>;<canonical rev>;<cluster>`.
fn workload_meta(ep: &LbEndpoint) -> (Option<String>, Option<String>, BTreeMap<String, String>) {
    use envoy_types::pb::google::protobuf::value::Kind;
    let mut labels = BTreeMap::new();
    let text = ep
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("workload"))
        .and_then(|v| match v.kind.as_ref() {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
    let Some(text) = text else {
        return (None, None, labels);
    };
    let parts: Vec<&str> = text.split(';').collect();
    let get = |i: usize| {
        parts
            .get(i)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
    };
    if let Some(c) = get(2) {
        labels.insert("service.istio.io/canonical-name".into(), c);
    }
    if let Some(r) = get(3) {
        labels.insert("service.istio.io/canonical-revision".into(), r);
    }
    (get(0), get(1), labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Locality;
    use crate::policy::Placement;

    fn pod(ip: &str, priority: u32, zone: &str) -> Arc<PodEndpoint> {
        Arc::new(PodEndpoint {
            ip: ip.parse().unwrap(),
            port: 9080,
            who: None,
            labels: Default::default(),
            tunnel: true,
            istio_mtls: false,
            placement: Arc::new(Placement {
                priority,
                locality: Arc::new(Locality {
                    region: "r".into(),
                    zone: zone.into(),
                    sub_zone: String::new(),
                }),
                locality_weight: 1,
            }),
        })
    }

    fn locality_of(p: &ClusterPolicy) -> Option<&LocalityLb> {
        p.load_balancer.as_ref()?.locality.as_ref()
    }

    #[test]
    fn placement_only_when_it_changes_picks() {
        let base = ClusterPolicy::default();
        // One priority, one locality: nothing to choose, the policy stays as it was.
        let one = [pod("10.0.0.1", 0, "a"), pod("10.0.0.2", 0, "a")];
        assert_eq!(with_placement(&base, true, &one), base);
        // Several localities count only under locality-weighted LB.
        let two = [pod("10.0.0.1", 0, "a"), pod("10.0.0.2", 0, "b")];
        assert_eq!(with_placement(&base, false, &two), base);
        let p = with_placement(&base, true, &two);
        let l = locality_of(&p).unwrap();
        assert!(l.weighted);
        assert_eq!(l.endpoints.len(), 2);
        // A second priority always.
        let levels = [pod("10.0.0.1", 0, "a"), pod("10.0.0.2", 1, "a")];
        let p = with_placement(&base, false, &levels);
        let l = locality_of(&p).unwrap();
        assert!(!l.weighted);
        assert_eq!(l.endpoints[&"10.0.0.2".parse().unwrap()].priority, 1);
    }
}
