//! SPIFFE identities as Istio uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsed once where the config names them (a cluster endpoint's expected identity is parsed
//! when the snapshot is built, see [`crate::ClusterEndpoint::spiffe_id`]), compared per handshake.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid SPIFFE id {input:?}: {reason} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")]
pub struct SpiffeIdError {
    pub input: String,
    pub reason: &'static str,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The service account of an expected identity that admits any service account of its
    /// namespace: `spiffe://<td>/ns/<ns>/sa/*`. Istiod's waypoint config verifies endpoints this
    /// way (the `connect_originate` cluster matches the URI SAN prefix `spiffe://<td>/ns/<ns>/sa/`)
    /// when it does not name each pod's service account.
    pub const ANY_SERVICE_ACCOUNT: &'static str = "*";

    /// Whether a peer presenting `presented` satisfies this expected identity.
    pub fn admits(&self, presented: &SpiffeId) -> bool {
        if self.service_account == Self::ANY_SERVICE_ACCOUNT {
            self.trust_domain == presented.trust_domain && self.namespace == presented.namespace
        } else {
            self == presented
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| SpiffeIdError {
            input: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("missing spiffe:// scheme"))?;
        let mut parts = rest.split('/');
        let td = parts.next().filter(|t| !t.is_empty());
        let td = td.ok_or_else(|| err("empty trust domain"))?;
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !ns.is_empty() && !sa.is_empty() =>
            {
                Ok(SpiffeId::new(td, ns, sa))
            }
            _ => Err(err("path is not /ns/<namespace>/sa/<service-account>")),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_service_account_admits_only_its_namespace() {
        let any: SpiffeId = "spiffe://cluster.local/ns/bookinfo/sa/*".parse().unwrap();
        let ok = SpiffeId::new("cluster.local", "bookinfo", "bookinfo-reviews");
        assert!(any.admits(&ok));
        assert!(!any.admits(&SpiffeId::new("cluster.local", "other", "bookinfo-reviews")));
        assert!(!any.admits(&SpiffeId::new("evil.local", "bookinfo", "bookinfo-reviews")));
        let exact = SpiffeId::new("cluster.local", "bookinfo", "bookinfo-ratings");
        assert!(exact.admits(&exact.clone()));
        assert!(!exact.admits(&ok));
        // A peer presenting the literal `*` is an exact match only for `*` expectations.
        assert!(!ok.admits(&SpiffeId::new("cluster.local", "bookinfo", "*")));
    }

    #[test]
    fn parses_and_prints() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "default", "bookinfo-reviews")
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/sa/a/ns/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be rejected");
        }
    }
}
