//! Istio's label sets and how their values are derived, as the Envoy waypoint (istio/proxy
//! `istio_stats.cc`, reporter `SERVER_GATEWAY`) derives them. The fields are declared in the
//! order that filter pushes its tags, so the exposition lists them in Istio's order.
//!
//! All of this runs when a label set is built (once per tunnel for the source, once per handle
//! cache miss for the rest), never per request.

use super::*;

pub(crate) type Label = Arc<str>;

pub(crate) fn label(v: &str) -> Label {
    Arc::from(v)
}

pub(super) fn or_unknown(v: Option<&str>) -> Label {
    match v {
        Some(v) if !v.is_empty() => label(v),
        _ => label(UNKNOWN),
    }
}

/// Who sent the request: the tunnel's SPIFFE id and the `baggage` ztunnel attaches
/// (`k8s.cluster.name`, `k8s.namespace.name`, `k8s.<kind>.name`, `service.name` = the canonical
/// service, `service.version` = the canonical revision).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source_workload: Label,
    pub source_canonical_service: Label,
    pub source_canonical_revision: Label,
    pub source_workload_namespace: Label,
    pub source_principal: Label,
    pub source_app: Label,
    pub source_version: Label,
    pub source_cluster: Label,
}

impl SourceLabels {
    pub fn unknown() -> Self {
        Self::from_tunnel(None, None)
    }

    /// From the tunnel's `baggage` first; what it does not say, from `workload`: the config's
    /// workload at the client's address (carrying the certificate's identity), as Istio's
    /// waypoint finds its peer by address (istio/proxy `workload_discovery`). A client that sends
    /// no baggage (a sidecar, a gateway) is then still named.
    pub fn from_tunnel(tunnel: Option<&TunnelInfo>, at_address: Option<&Endpoint>) -> Self {
        let peer = at_address.map(Peer::of);
        let bag = |k: &str| {
            tunnel
                .and_then(|t| t.baggage_value(k))
                .filter(|v| !v.is_empty())
        };
        // ztunnel names the workload by its kind: k8s.deployment.name, k8s.statefulset.name, …
        let workload = [
            "k8s.deployment.name",
            "k8s.statefulset.name",
            "k8s.daemonset.name",
            "k8s.job.name",
            "k8s.cronjob.name",
            "k8s.replicaset.name",
            "k8s.pod.name",
            "k8s.workload.name",
        ]
        .iter()
        .find_map(|k| bag(k))
        .or(peer.as_ref().and_then(|p| p.workload));
        let id = tunnel.map(|t| &t.source_identity);
        // Istio's waypoint takes app and version from the peer's canonical service and revision
        // (istio/proxy `workload_discovery/api.cc` `convert`); istiod names a workload without
        // canonical labels after itself, with revision `latest` (`pkg/kube/labels/labels.go`).
        let canonical = bag("service.name")
            .or(bag("app.kubernetes.io/name"))
            .or(peer.as_ref().map(|p| p.canonical))
            .or(workload);
        let version = bag("service.version").or(peer.as_ref().map(|p| p.revision));
        let known = canonical.is_some();
        Self {
            source_workload: or_unknown(workload),
            source_canonical_service: or_unknown(canonical),
            source_canonical_revision: label(version.unwrap_or("latest")),
            // The namespace of the peer's SAN first, then the peer metadata's (istio_stats.cc).
            source_workload_namespace: or_unknown(
                id.map(|i| i.namespace.as_str())
                    .filter(|ns| !ns.is_empty())
                    .or(bag("k8s.namespace.name"))
                    .or(workload_namespace(at_address)),
            ),
            source_principal: or_unknown(id.map(|i| i.to_string()).as_deref()),
            source_app: or_unknown(canonical),
            source_version: or_unknown(version.or(known.then_some("latest"))),
            source_cluster: or_unknown(bag("k8s.cluster.name")),
        }
    }
}

fn workload_namespace(workload: Option<&Endpoint>) -> Option<&str> {
    workload
        .map(|w| &*w.workload.namespace)
        .filter(|n| !n.is_empty())
}

/// A workload's names as istiod derives them (`pkg/kube/labels/labels.go`): its workload name,
/// canonical service and canonical revision.
struct Peer<'e> {
    workload: Option<&'e str>,
    canonical: &'e str,
    revision: &'e str,
}

impl<'e> Peer<'e> {
    fn of(endpoint: &'e Endpoint) -> Self {
        let l = |k: &str| endpoint.labels.get(k).filter(|v| !v.is_empty());
        let workload = l("service.istio.io/workload-name")
            .or(Some(&*endpoint.workload.name))
            .filter(|w| !w.is_empty());
        Self {
            workload,
            canonical: l("service.istio.io/canonical-name")
                .or(l("app.kubernetes.io/name"))
                .or(l("app"))
                .or(workload)
                .unwrap_or(UNKNOWN),
            revision: l("service.istio.io/canonical-revision")
                .or(l("app.kubernetes.io/version"))
                .or(l("version"))
                .unwrap_or("latest"),
        }
    }
}

/// Where the request went: the service it addressed and the endpoint that served it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination_workload: Label,
    pub destination_workload_namespace: Label,
    pub destination_principal: Label,
    pub destination_app: Label,
    pub destination_version: Label,
    pub destination_service: Label,
    pub destination_canonical_service: Label,
    pub destination_canonical_revision: Label,
    pub destination_service_name: Label,
    pub destination_service_namespace: Label,
    pub destination_cluster: Label,
}

impl DestinationLabels {
    /// `service` is (hostname, namespace) of the addressed service.
    pub fn new(
        service: Option<(&str, &str)>,
        endpoint: Option<&Endpoint>,
        cluster_id: &str,
    ) -> Self {
        // istiod's canonical service and revision (`pkg/kube/labels/labels.go`), in its order.
        // Without an endpoint the waypoint knows no destination peer: `unknown` throughout,
        // the canonical revision included (istio_stats.cc, `Reporter::ServerGateway`).
        let peer = endpoint.map(Peer::of);
        let workload = peer.as_ref().and_then(|p| p.workload);
        let canonical = peer.as_ref().map(|p| p.canonical);
        let revision = peer.as_ref().map(|p| p.revision);
        Self {
            destination_workload: or_unknown(workload),
            destination_workload_namespace: or_unknown(endpoint.map(|e| &*e.workload.namespace)),
            destination_principal: or_unknown(endpoint.map(|e| &*e.workload.identity)),
            // app and version are the canonical service and revision, as for the source.
            destination_app: or_unknown(canonical),
            destination_version: or_unknown(revision),
            destination_service: or_unknown(service.map(|(host, _)| host)),
            destination_canonical_service: or_unknown(canonical),
            destination_canonical_revision: or_unknown(revision),
            destination_service_name: or_unknown(
                service.and_then(|(host, _)| host.split('.').next()),
            ),
            destination_service_namespace: or_unknown(service.map(|(_, ns)| ns)),
            destination_cluster: or_unknown(endpoint.map(|_| cluster_id)),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    #[prometheus(flatten)]
    pub source: SourceLabels,
    #[prometheus(flatten)]
    pub destination: DestinationLabels,
    pub request_protocol: &'static str,
    pub response_code: Label,
    pub grpc_response_status: Label,
    pub response_flags: Label,
    pub connection_security_policy: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    #[prometheus(flatten)]
    pub source: SourceLabels,
    #[prometheus(flatten)]
    pub destination: DestinationLabels,
    pub request_protocol: &'static str,
    pub response_flags: Label,
    pub connection_security_policy: &'static str,
}

pub(super) fn flags_label(flags: &str) -> Label {
    label(if flags.is_empty() { "-" } else { flags })
}

/// `grpc_response_status` as Envoy's `Grpc::Common::getGrpcStatus(trailers, headers, info)`
/// gives it to istio_stats: empty for plain HTTP; for gRPC the `grpc-status` the upstream sent
/// (a value that is not a number in 0..=16 is `-1`, Envoy's `InvalidCode`, which also bounds
/// the label's cardinality), else the status inferred from the HTTP code
/// (`Grpc::Utility::httpToGrpcStatus`), else (no response at all) empty.
pub(super) fn grpc_status_label(grpc: bool, status: Option<&str>, response_code: u16) -> Label {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    if !grpc {
        return label("");
    }
    let code = match status.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n < CODES.len() as u64 => CODES[n as usize],
            _ => "-1",
        },
        None => match response_code {
            0 => "",
            400 => "13",
            401 => "16",
            403 => "7",
            404 => "12",
            429 | 502 | 503 | 504 => "14",
            _ => "2",
        },
    };
    label(code)
}
