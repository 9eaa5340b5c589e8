//! One upstream path for the HTTP hooks and the TCP splice: where a request or a connection
//! goes — the cluster, the endpoint (LB policy, consistent hash, PASSTHROUGH, retries that avoid
//! endpoints already tried, outlier ejections, least-request counts), the identity the endpoint
//! must prove, and how it is dialled (HBONE, direct TCP/TLS, Istio mutual TLS). The HTTP hooks
//! hand the [`Pick`] to pingora as an `HttpPeer`; the TCP splice dials it itself. Both report
//! each attempt's result to the cluster's outlier detection through [`report`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use routing::{ActiveGuard, Cluster, Endpoint, Snapshot};
use tracing::warn;

use crate::control::identity::{EndpointIdentityError, PeerCheck};

/// Which cluster a request or a connection goes to: a weighted destination, or the service's
/// own port when no route names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
}

impl ClusterKey {
    pub fn new(host: &str, port: u16, subset: Option<&str>) -> Self {
        ClusterKey {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
        }
    }

    pub fn lookup<'s>(&self, snapshot: &'s Snapshot) -> Option<&'s Cluster> {
        snapshot.cluster(&self.host, self.port, self.subset.as_deref())
    }
}

/// How one attempt reaches its endpoint.
#[derive(Debug, Clone)]
pub enum Dial {
    /// An HBONE tunnel to the endpoint's node, whose peer must prove this identity.
    Hbone(PeerCheck),
    /// Outside the mesh: plain TCP, or the TLS the cluster's DestinationRule originates.
    Direct(Option<routing::UpstreamTls>),
    /// A sidecar endpoint: Istio mutual TLS with the waypoint's certificate, this SNI, and a
    /// peer that must prove `expected`.
    IstioMutual { expected: PeerCheck, sni: String },
}

/// One attempt's endpoint and how to dial it.
pub struct Pick {
    pub target: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    pub dial: Dial,
    /// Counts the attempt for LEAST_REQUEST while it is held.
    pub active: ActiveGuard,
}

/// Why an attempt has nowhere to go.
#[derive(Debug, thiserror::Error)]
pub enum NoPick {
    /// The destination names a cluster the snapshot does not have (`NC`).
    #[error("no cluster for route destination")]
    NoCluster,
    /// No endpoint is left: none healthy on a first attempt (`UH`), or every one tried on a
    /// retry (`URX`).
    #[error("no healthy upstream")]
    NoEndpoint { retry: bool },
    /// The endpoint's identity cannot be checked: it is not dialled (fail closed).
    #[error("{reason}")]
    Identity {
        target: SocketAddr,
        reason: EndpointIdentityError,
    },
}

impl NoPick {
    /// The Envoy response flag this is reported under.
    pub fn flag(&self) -> &'static str {
        match self {
            NoPick::NoCluster => "NC",
            NoPick::NoEndpoint { retry: false } => "UH",
            NoPick::NoEndpoint { retry: true } => "URX",
            NoPick::Identity { .. } => "UF",
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`, when Envoy writes one for it.
    pub fn details(&self) -> Option<&'static str> {
        match self {
            NoPick::NoCluster => Some("cluster_not_found"),
            NoPick::NoEndpoint { retry: false } => Some("no_healthy_upstream"),
            NoPick::NoEndpoint { retry: true } => None,
            NoPick::Identity { .. } => Some("upstream_identity_invalid"),
        }
    }
}

/// What an attempt knows when it picks.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The request's consistent-hash key (hash clusters only).
    pub hash: Option<u64>,
    /// Endpoints already tried by this request or connection.
    pub tried: &'a [SocketAddr],
    /// Avoid the endpoints tried while others are left (Envoy's `previous_hosts` retry
    /// predicate; istiod sets it on every route).
    pub avoid_tried: bool,
    /// The address the client addressed (PASSTHROUGH keeps it when it is a pod of the cluster).
    pub original_dst: Option<SocketAddr>,
}

/// Pick the endpoint of `cluster` for one attempt and say how to dial it.
pub fn pick(
    snapshot: &Snapshot,
    cluster: &Cluster,
    key: &ClusterKey,
    attempt: Attempt<'_>,
) -> Result<Pick, NoPick> {
    // PASSTHROUGH: the endpoint the client addressed, when it addressed a pod of this cluster
    // (a service VIP has no single endpoint: fall back to the cluster's pick).
    let passthrough = cluster.passthrough().then(|| {
        let dst = attempt.original_dst?;
        cluster
            .endpoints
            .iter()
            .find(|e| e.endpoint.address == dst.ip() && !attempt.tried.contains(&e.target()))
    });
    let ep = match passthrough.flatten() {
        Some(ep) => ep,
        None => cluster
            .pick_attempt(attempt.hash, attempt.tried, attempt.avoid_tried)
            .ok_or(NoPick::NoEndpoint {
                retry: !attempt.tried.is_empty(),
            })?,
    };
    let dial = match ep.endpoint.transport {
        routing::Transport::Hbone => Dial::Hbone(identity(snapshot, ep)?),
        routing::Transport::Direct => Dial::Direct(cluster.policy.originate_tls().cloned()),
        routing::Transport::IstioMutual => Dial::IstioMutual {
            expected: identity(snapshot, ep)?,
            sni: crate::dataplane::direct::istio_sni(&key.host, key.port, key.subset.as_deref()),
        },
    };
    Ok(Pick {
        target: ep.target(),
        endpoint: ep.endpoint.clone(),
        dial,
        active: ep.begin(),
    })
}

fn identity(snapshot: &Snapshot, ep: &routing::ClusterEndpoint) -> Result<PeerCheck, NoPick> {
    PeerCheck::for_endpoint(snapshot, ep).map_err(|reason| NoPick::Identity {
        target: ep.target(),
        reason,
    })
}

/// The one endpoint of a pod-addressed request or connection (no cluster, no LB): over HBONE,
/// to the identity the pod's workload has.
#[derive(Debug, Clone)]
pub struct PodTarget {
    pub target: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    pub dial: Dial,
}

impl PodTarget {
    pub fn new(snapshot: &Snapshot, endpoint: &Endpoint, port: u16) -> Result<Self, NoPick> {
        let target = SocketAddr::new(endpoint.address, port);
        let identity = PeerCheck::for_endpoint(snapshot, endpoint)
            .map_err(|reason| NoPick::Identity { target, reason })?;
        Ok(PodTarget {
            target,
            endpoint: Arc::new(endpoint.clone()),
            dial: Dial::Hbone(identity),
        })
    }

    /// `inbound-pod|<port>||<ip>`: istiod's `direct-http` / `direct-tcp` chains.
    pub fn cluster_name(&self) -> String {
        Self::cluster_name_of(&self.endpoint, self.target.port())
    }

    pub fn cluster_name_of(endpoint: &Endpoint, port: u16) -> String {
        format!("inbound-pod|{port}||{}", endpoint.address)
    }

    /// An attempt at it (a pod is not a cluster member: nothing to count).
    pub fn pick(&self) -> Pick {
        Pick {
            target: self.target,
            endpoint: self.endpoint.clone(),
            dial: self.dial.clone(),
            active: ActiveGuard::detached(),
        }
    }
}

/// Feed an attempt's result to `cluster`'s outlier detection (a no-op without
/// `outlierDetection`), and log an ejection it causes.
pub fn report(cluster: &Cluster, target: SocketAddr, outcome: routing::Outcome) {
    if let Some(ejection) = cluster.report(target, outcome, Instant::now()) {
        warn!(
            cluster = %cluster.name,
            endpoint = %ejection.target,
            kind = ?ejection.kind,
            ejections = ejection.ejections,
            duration = ?ejection.duration,
            "outlier detection ejected an endpoint"
        );
    }
}

/// What a TCP connection hashes on: its source address only (istiod gives the TCP proxy a
/// `source_ip` hash policy for `useSourceIp`; header and cookie keys have nothing to read, so
/// such a cluster picks as it would without a key, as Envoy does).
pub struct ConnectionHash {
    pub source: IpAddr,
}

impl routing::HashRequest for ConnectionHash {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }

    fn path(&self) -> &str {
        ""
    }

    fn source_ip(&self) -> Option<IpAddr> {
        Some(self.source)
    }
}
