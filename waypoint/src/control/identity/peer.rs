//! What the waypoint requires of an upstream HBONE peer's certificate.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use routing::{SanKind, SanMatcher};

use super::SpiffeId;

/// The check an upstream HBONE peer's certificate must pass (after its chain verifies against
/// the mesh roots).
#[derive(Debug, Clone)]
pub enum PeerCheck {
    /// Exactly this identity (`…/sa/*`: any service account of the namespace). Files mode, and
    /// the waypoint's own test clients.
    Identity(SpiffeId),
    /// istiod's `connect_originate` SAN matchers as written: the peer passes when any matches
    /// any of its SANs; an empty list checks the chain only (Envoy with no SAN matcher).
    Sans(Arc<Vec<SanMatcher>>),
}

impl PeerCheck {
    /// What `endpoint`'s HBONE peer must prove under `snapshot`: istiod's SAN matchers when the
    /// snapshot carries them (xDS), else the endpoint's own identity (files).
    pub fn for_endpoint(
        snapshot: &routing::Snapshot,
        endpoint: &routing::Endpoint,
    ) -> Result<PeerCheck, String> {
        match snapshot.hbone_peer_sans() {
            Some(m) => Ok(PeerCheck::Sans(m.clone())),
            None => endpoint
                .identity
                .parse::<SpiffeId>()
                .map(PeerCheck::Identity)
                .map_err(|e| format!("endpoint {} identity: {e}", endpoint.address)),
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
        PeerCheck::Identity(id)
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
