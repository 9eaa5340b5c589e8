//! What the waypoint requires of an upstream HBONE peer's certificate.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use routing::{SanKind, SanMatcher};

use super::{SpiffeId, SpiffeIdError};

/// The check an upstream HBONE peer's certificate must pass (after its chain verifies against
/// the mesh roots).
#[derive(Debug, Clone)]
pub enum PeerCheck {
    /// Exactly this identity (`…/sa/*`: any service account of the namespace). Files mode, and
    /// the waypoint's own test clients. Shared: a cluster endpoint's identity is parsed once,
    /// when its snapshot is built, and each attempt clones the `Arc`.
    Identity(Arc<SpiffeId>),
    /// istiod's `connect_originate` SAN matchers as written: the peer passes when any matches
    /// any of its SANs; an empty list checks the chain only (Envoy with no SAN matcher).
    Sans(Arc<Vec<SanMatcher>>),
}

/// An endpoint whose HBONE peer the waypoint checks: what identity the peer must prove.
pub trait PeerEndpoint {
    /// The expected identity, or why the endpoint has none (the attempt then fails: never dial
    /// without a check).
    fn expected_identity(&self) -> Result<Arc<SpiffeId>, EndpointIdentityError>;
}

/// An endpoint whose identity is not a SPIFFE id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("endpoint {address} identity: {source}")]
pub struct EndpointIdentityError {
    pub address: IpAddr,
    pub source: SpiffeIdError,
}

/// A cluster's endpoint: its pod's.
impl PeerEndpoint for routing::ClusterEndpoint {
    fn expected_identity(&self) -> Result<Arc<SpiffeId>, EndpointIdentityError> {
        self.endpoint.expected_identity()
    }
}

/// A pod, addressed directly or through a cluster: its workload's identity, parsed once for
/// all of the workload's endpoints.
impl PeerEndpoint for routing::Endpoint {
    fn expected_identity(&self) -> Result<Arc<SpiffeId>, EndpointIdentityError> {
        self.workload
            .spiffe_id()
            .cloned()
            .map_err(|e| EndpointIdentityError {
                address: self.address,
                source: e.clone(),
            })
    }
}

impl PeerCheck {
    /// What `endpoint`'s HBONE peer must prove under `snapshot`: istiod's SAN matchers when the
    /// snapshot carries them (xDS), else the endpoint's own identity (files).
    pub fn for_endpoint<E: PeerEndpoint + ?Sized>(
        snapshot: &routing::Snapshot,
        endpoint: &E,
    ) -> Result<PeerCheck, EndpointIdentityError> {
        match snapshot.hbone_peer_sans() {
            Some(m) => Ok(PeerCheck::Sans(m.clone())),
            None => endpoint.expected_identity().map(PeerCheck::Identity),
        }
    }

    /// Does a certificate with these SANs pass? `id` is its SPIFFE identity, if it has one.
    pub fn admits(&self, id: Option<&SpiffeId>, sans: &[(SanKind, String)]) -> bool {
        match self {
            PeerCheck::Identity(expected) => id.is_some_and(|id| expected.admits(id)),
            PeerCheck::Sans(matchers) => SanMatcher::any_matches(matchers, sans),
        }
    }
}

impl From<SpiffeId> for PeerCheck {
    fn from(id: SpiffeId) -> Self {
        PeerCheck::Identity(Arc::new(id))
    }
}

impl PartialEq for PeerCheck {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PeerCheck::Identity(a), PeerCheck::Identity(b)) => a == b,
            (PeerCheck::Sans(a), PeerCheck::Sans(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl Eq for PeerCheck {}

impl Hash for PeerCheck {
    /// By the rendered matchers: equal lists (a new snapshot with the same `connect_originate`)
    /// share pooled connections.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            PeerCheck::Identity(id) => {
                0u8.hash(state);
                id.hash(state);
            }
            PeerCheck::Sans(m) => {
                1u8.hash(state);
                for one in m.iter() {
                    one.to_string().hash(state);
                }
            }
        }
    }
}

impl std::fmt::Display for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerCheck::Identity(id) => write!(f, "{id}"),
            PeerCheck::Sans(m) if m.is_empty() => write!(f, "any identity the CA signed"),
            PeerCheck::Sans(m) => {
                let all: Vec<String> = m.iter().map(ToString::to_string).collect();
                write!(f, "any of [{}]", all.join(", "))
            }
        }
    }
}

/// The SANs of a certificate, by kind (URI, DNS, e-mail, IP).
pub fn cert_sans(cert: &[u8]) -> Vec<(SanKind, String)> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((SanKind::Uri, u.to_string())),
            GeneralName::DNSName(d) => Some((SanKind::Dns, d.to_string())),
            GeneralName::RFC822Name(e) => Some((SanKind::Email, e.to_string())),
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    _ => None,
                };
                ip.map(|ip| (SanKind::IpAddress, ip.to_string()))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(identity: &str) -> Arc<routing::Endpoint> {
        Arc::new(routing::Endpoint {
            address: "10.1.0.1".parse().unwrap(),
            labels: Default::default(),
            workload: std::sync::Arc::new(routing::Workload::new(
                "ep".into(),
                "default".into(),
                "sa".into(),
                identity.into(),
            )),
            transport: Default::default(),
        })
    }

    fn in_cluster(e: &Arc<routing::Endpoint>) -> routing::ClusterEndpoint {
        routing::ClusterEndpoint::new(e.clone(), 80)
    }

    #[test]
    fn an_endpoint_uses_its_workloads_parsed_identity() {
        let files = routing::Snapshot::empty();
        let e = endpoint("spiffe://cluster.local/ns/default/sa/reviews");
        let ce = in_cluster(&e);
        let Ok(PeerCheck::Identity(id)) = PeerCheck::for_endpoint(&files, &ce) else {
            panic!("files mode checks the endpoint's identity");
        };
        // The workload's one parse: none per attempt.
        assert!(Arc::ptr_eq(&id, ce.spiffe_id().unwrap()));
        assert_eq!(id.service_account, "reviews");
        // A pod addressed directly (not through a cluster) checks the same parse.
        let Ok(PeerCheck::Identity(direct)) = PeerCheck::for_endpoint(&files, &*e) else {
            panic!("files mode checks the endpoint's identity");
        };
        assert!(Arc::ptr_eq(&id, &direct));
    }

    #[test]
    fn a_bad_identity_fails_the_same_way_parsed_or_not() {
        let files = routing::Snapshot::empty();
        for bad in ["", "spiffe://cluster.local/default/sa"] {
            let e = endpoint(bad);
            let parsed = PeerCheck::for_endpoint(&files, &in_cluster(&e)).unwrap_err();
            assert_eq!(parsed, PeerCheck::for_endpoint(&files, &*e).unwrap_err());
            assert!(
                parsed
                    .to_string()
                    .starts_with("endpoint 10.1.0.1 identity: invalid SPIFFE id"),
                "{parsed}"
            );
        }
    }
}
