//! Who a tunnel's client is. The HBONE peer's certificate proves an identity and the TCP
//! connection an address; ztunnel's `forwarded: for=` only *claims* the client pod's address. A
//! claim is believed when it is the connection's own address, or when the workload the config
//! knows at that address carries the certificate's identity (ztunnel presents the source
//! workload's certificate). Otherwise the tunnel's source is the TCP peer and the claim is kept
//! aside as unverified: it gives no workload labels, no ALLOW on `source.ip` (a DENY still
//! sees it, [`routing::authz::AuthzView::unverified_source_ip`]), and the access log shows it
//! apart (`downstream_claimed_address`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use routing::{Endpoint, Snapshot};

use crate::control::identity::SpiffeId;

/// What was made of a tunnel's `forwarded: for=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCheck {
    /// No claim, or the claim is the TCP peer's own address.
    Peer,
    /// The workload at the claimed address has the peer certificate's identity.
    Verified,
    /// The workload at the claimed address has another identity.
    Mismatch,
    /// No workload the config knows is at the claimed address.
    Unknown,
}

/// The tunnel's source as resolved at CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The address the waypoint vouches for: the verified claim, else the TCP peer.
    pub addr: SocketAddr,
    /// A claimed address that could not be verified.
    pub claimed: Option<SocketAddr>,
    pub check: SourceCheck,
}

/// Counts of claims that could not be verified (`waypoint_source_unverified_total{reason}`).
#[derive(Debug, Default)]
pub struct SourceStats {
    pub mismatch: AtomicU64,
    pub unknown: AtomicU64,
    /// Unix second of the last mismatch warning, and the mismatches not logged since.
    last_warn: AtomicU64,
    skipped: AtomicU64,
}

/// Whether `workload` may be claimed by a peer proving `identity` (exact SPIFFE id; a
/// namespace-wide `…/sa/*` identity, as xDS endpoints have, proves nothing about one pod).
pub fn identity_matches(workload: &Endpoint, identity: &SpiffeId) -> bool {
    let claimed = &*workload.workload.identity;
    !claimed.is_empty() && !claimed.ends_with("/sa/*") && *claimed == *identity.to_string()
}

/// Resolve a tunnel's source: `forwarded_for` checked against the workload the snapshot knows
/// at that address and the peer's certificate identity.
pub fn resolve(
    snapshot: &Snapshot,
    peer: SocketAddr,
    forwarded_for: Option<SocketAddr>,
    identity: &SpiffeId,
    stats: &SourceStats,
) -> Source {
    let Some(claimed) = forwarded_for.filter(|c| c.ip() != peer.ip()) else {
        return Source {
            addr: forwarded_for.unwrap_or(peer),
            claimed: None,
            check: SourceCheck::Peer,
        };
    };
    match snapshot.source_workload(claimed.ip()) {
        Some(w) if identity_matches(w, identity) => Source {
            addr: claimed,
            claimed: None,
            check: SourceCheck::Verified,
        },
        Some(w) => {
            stats.mismatch.fetch_add(1, Ordering::Relaxed);
            stats.warn_mismatch(peer, claimed, identity, w);
            Source {
                addr: peer,
                claimed: Some(claimed),
                check: SourceCheck::Mismatch,
            }
        }
        None => {
            stats.unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, %claimed, %identity,
                "forwarded source address names no workload in the config; not used");
            Source {
                addr: peer,
                claimed: Some(claimed),
                check: SourceCheck::Unknown,
            }
        }
    }
}

impl SourceStats {
    /// At most one warning every 10 s, saying how many were left out: a peer forging addresses
    /// must not flood the log.
    fn warn_mismatch(
        &self,
        peer: SocketAddr,
        claimed: SocketAddr,
        identity: &SpiffeId,
        w: &Endpoint,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_warn.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 10)
            && self
                .last_warn
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %peer,
                %claimed,
                peer_identity = %identity,
                workload = %w.workload.name,
                workload_identity = %w.workload.identity,
                skipped = self.skipped.swap(0, Ordering::Relaxed),
                "forwarded source address belongs to a workload of another identity; ignored \
                 (no source labels, no ALLOW on source.ip), the peer's address is used"
            );
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let yaml = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 10.1.0.1, serviceAccount: reviews, labels: {app: reviews}}
";
        routing::load_str(&[("w.yaml".to_string(), yaml.to_string())], "cluster.local").unwrap()
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa)
    }

    #[test]
    fn claims_are_believed_only_from_the_workloads_identity() {
        let snap = snapshot();
        let stats = SourceStats::default();
        let peer: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let claim: SocketAddr = "10.1.0.1:40000".parse().unwrap();
        let honest = resolve(&snap, peer, Some(claim), &id("reviews"), &stats);
        assert_eq!(
            (honest.addr, honest.claimed, honest.check),
            (claim, None, SourceCheck::Verified)
        );
        let forged = resolve(&snap, peer, Some(claim), &id("sleep"), &stats);
        assert_eq!(
            (forged.addr, forged.claimed, forged.check),
            (peer, Some(claim), SourceCheck::Mismatch)
        );
        let unknown: SocketAddr = "10.9.9.9:1".parse().unwrap();
        let u = resolve(&snap, peer, Some(unknown), &id("reviews"), &stats);
        assert_eq!(
            (u.addr, u.claimed, u.check),
            (peer, Some(unknown), SourceCheck::Unknown)
        );
        // The connection's own address needs no workload (ztunnel dials from the pod).
        let own: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        let p = resolve(&snap, peer, Some(own), &id("sleep"), &stats);
        assert_eq!((p.addr, p.claimed, p.check), (own, None, SourceCheck::Peer));
        let none = resolve(&snap, peer, None, &id("sleep"), &stats);
        assert_eq!(none.addr, peer);
        assert_eq!(stats.mismatch.load(Ordering::Relaxed), 1);
        assert_eq!(stats.unknown.load(Ordering::Relaxed), 1);
    }
}
