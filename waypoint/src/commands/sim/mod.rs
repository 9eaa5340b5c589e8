//! A simulated mesh on loopback for the demo, the tests and the benchmarks: a CA minting SPIFFE
//! certificates, apps on real TCP ports, pods terminating HBONE the way a destination ztunnel
//! does, and a client that tunnels to the waypoint the way a source ztunnel does.

mod app;
pub mod ca_server;
mod client;
mod pod;

pub use app::{start_app, AppHandle, AppKind, AppStats, Echo};
pub use client::{get, request, Http1, ZtunnelClient};
pub use pod::{start_pod, PodHandle, PodStats};

/// A faulty certificate for a simulated pod's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodCert {
    /// Validity ended in 2021.
    Expired,
    /// Validity starts in 2090.
    NotYetValid,
    /// The right identity, signed by a CA outside the mesh's bundle.
    ForeignCa,
    /// Signed by the mesh CA, for the same namespace and service account in another trust domain.
    TrustDomain(String),
}

impl PodCert {
    pub fn mint(
        &self,
        mesh: &crate::control::identity::Ca,
        id: &crate::control::identity::SpiffeId,
    ) -> Result<crate::control::identity::MintedCert, crate::control::identity::IdentityError> {
        match self {
            PodCert::Expired => mesh.issue_with(id, |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            PodCert::NotYetValid => mesh.issue_with(id, |p| {
                p.not_before = rcgen::date_time_ymd(2090, 1, 1);
                p.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }),
            PodCert::ForeignCa => crate::control::identity::Ca::new("foreign mesh")?.issue(id),
            PodCert::TrustDomain(td) => mesh.issue(&crate::control::identity::SpiffeId::new(
                td,
                &id.namespace,
                &id.service_account,
            )),
        }
    }
}
