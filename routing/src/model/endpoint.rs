//! Endpoints: where a service's workloads run, and who they are.

use crate::{SpiffeId, SpiffeIdError};
use once_cell::race::OnceBox;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A workload instance (WorkloadEntry or inline ServiceEntry endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Shared: the snapshot builder gives endpoints with equal labels one map (the pods of a
    /// subset have the same labels). Change one with `Arc::make_mut`.
    pub labels: Arc<crate::Labels>,
    /// Who runs there: shared by the endpoints of one workload (a Deployment's replicas have
    /// the same name, namespace, service account and identity), 8 bytes here where the four
    /// names inline were 64 (an endpoint 112 bytes allocated instead of 64; 50 000 of them at
    /// 5 000 services).
    pub workload: Arc<Workload>,
    /// HBONE, or a direct connection for a workload outside the mesh.
    pub transport: crate::upstream::Transport,
}

/// Who an [`Endpoint`] is. The names are shared strings: the pods of a workload have the same
/// service account, namespace and identity, and a front-end gives them one allocation.
#[derive(Clone)]
pub struct Workload {
    /// The workload's name (istiod's `istio.workload`: the Deployment's, the same for its
    /// replicas), else the pod's address.
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub service_account: Arc<str>,
    /// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`; empty when not known ahead of the connection
    /// (xDS without workload discovery: the peer certificate tells).
    pub identity: Arc<str>,
    /// `identity` parsed the first time a peer is checked against it, then kept: one parse for
    /// the workload's endpoints in every cluster and for the pods addressed directly (8 bytes
    /// until then; a cluster endpoint held a pointer to its parse, 8 bytes each of 100 000).
    parsed: OnceBox<Result<Arc<SpiffeId>, SpiffeIdError>>,
}

impl Workload {
    /// The record of a workload; its identity is parsed when first asked for
    /// ([`Workload::spiffe_id`]).
    pub fn new(
        name: Arc<str>,
        namespace: Arc<str>,
        service_account: Arc<str>,
        identity: Arc<str>,
    ) -> Self {
        Workload {
            name,
            namespace,
            service_account,
            identity,
            parsed: OnceBox::new(),
        }
    }

    /// The identity a peer must prove, or why `identity` is no SPIFFE id (empty, for instance,
    /// when only the handshake tells: then the attempt fails closed).
    pub fn spiffe_id(&self) -> Result<&Arc<SpiffeId>, &SpiffeIdError> {
        self.parsed
            .get_or_init(|| Box::new(self.identity.parse().map(Arc::new)))
            .as_ref()
    }

    fn names(&self) -> [&str; 4] {
        [
            &self.name,
            &self.namespace,
            &self.service_account,
            &self.identity,
        ]
    }
}

/// Equal by the names (the parse follows from `identity`).
impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        self.names() == other.names()
    }
}

impl Eq for Workload {}

impl std::hash::Hash for Workload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.names().hash(state);
    }
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .field("identity", &self.identity)
            .finish()
    }
}

/// An endpoint's fields as they always were written (the workload's names inline, in this
/// order), whatever holds them.
impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let w = &*self.workload;
        let mut st = s.serialize_struct("Endpoint", 7)?;
        st.serialize_field("address", &self.address)?;
        st.serialize_field("labels", &*self.labels)?;
        st.serialize_field("service_account", &w.service_account)?;
        st.serialize_field("namespace", &w.namespace)?;
        st.serialize_field("identity", &w.identity)?;
        st.serialize_field("name", &w.name)?;
        st.serialize_field("transport", &self.transport)?;
        st.end()
    }
}

/// Where a workload runs (`region/zone/sub_zone`, Envoy's `core.Locality`); empty parts are
/// unknown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Locality {
    /// The unknown locality (every part empty), one `Arc` the whole process shares: most
    /// endpoints of a mesh without zones have it, and each would otherwise be an allocation.
    pub fn unknown() -> Arc<Locality> {
        static UNKNOWN: std::sync::OnceLock<Arc<Locality>> = std::sync::OnceLock::new();
        UNKNOWN.get_or_init(Default::default).clone()
    }
}

impl std::fmt::Display for Locality {
    /// `region/zone/sub_zone`, as Istio writes a locality (`""` when unknown).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [&self.region, &self.zone, &self.sub_zone];
        let n = parts
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        for (i, p) in parts[..n].iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl Endpoint {
    /// True when this endpoint's labels are a superset of `selector`.
    pub fn matches_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        labels_superset(&self.labels, selector)
    }
}

/// The service account of an endpoint whose identity is not known ahead of the connection.
pub(crate) const UNKNOWN_ACCOUNT: &str = "unknown";

/// `labels ⊇ selector`.
pub fn labels_superset(labels: &crate::Labels, selector: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v.as_str()))
}

/// Label that takes a workload out of ambient (`istio.io/dataplane-mode: none`).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// How the files front-end reaches a WorkloadEntry / ServiceEntry endpoint: over HBONE (the
/// simulated mesh's default), or directly when its labels opt it out of ambient
/// (`istio.io/dataplane-mode: none`), as ztunnel leaves such a workload uncaptured.
pub fn transport_of(labels: &BTreeMap<String, String>) -> crate::upstream::Transport {
    match labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("none") => crate::upstream::Transport::Direct,
        _ => crate::upstream::Transport::Hbone,
    }
}

/// SPIFFE identity of a service account.
pub fn spiffe_identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}
