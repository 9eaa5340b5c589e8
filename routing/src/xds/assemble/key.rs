//! What a service is built from: compared borrowed with the last translation's key, copied only
//! when the service is built again.

use super::*;

/// What a service was built from; equal keys build equal services.
#[derive(Debug)]
pub(super) struct ServiceKey {
    /// Its namespace, VIPs, ports (each with the chains the matcher and the listener name for
    /// it) and chains; without its routes (see [`ServiceAcc::without_routes`]).
    pub(super) acc: ServiceAcc,
    /// Its clusters, each with the hash key the routes gave it.
    pub(super) clusters: Vec<(Arc<ClusterPiece>, Option<HashKey>)>,
    /// Each EDS cluster's assignment (`None`: not received).
    pub(super) assignments: Vec<Option<Arc<AssignmentPiece>>>,
}

/// A service's key as this translation has it, borrowed. Pieces compare by identity: the memo
/// holds them, so no other piece takes their address while a key lives.
pub(super) struct KeyView<'a> {
    acc: &'a ServiceAcc,
    clusters: Vec<(&'a Arc<ClusterPiece>, Option<&'a HashKey>)>,
    assignments: Vec<Option<&'a Arc<AssignmentPiece>>>,
}

/// What the service `acc` is built from, when it can be reused: not when the caller knows pod
/// identities, nor for clusters whose endpoints are read at assembly (STATIC, DNS).
pub(super) fn key_view<'a>(
    acc: &'a ServiceAcc,
    mine: &[(&'a str, &'a ServiceCluster)],
    clusters: &BTreeMap<&'a str, &'a Arc<ClusterPiece>>,
    clas: &BTreeMap<&'a str, &'a Arc<AssignmentPiece>>,
    opts: &TranslateOptions,
) -> Option<KeyView<'a>> {
    if !opts.identities.is_empty() {
        return None;
    }
    let mut view = KeyView {
        acc,
        clusters: Vec::with_capacity(mine.len()),
        assignments: Vec::with_capacity(mine.len()),
    };
    for (name, sc) in mine {
        let piece = clusters.get(name)?;
        let hash = sc
            .policy
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.consistent_hash.as_ref())
            .and_then(|ch| ch.key.as_ref());
        view.clusters.push((piece, hash));
        match &sc.source {
            EndpointSource::Eds(eds) => view.assignments.push(clas.get(&**eds).copied()),
            EndpointSource::None => {}
            EndpointSource::Inline(_) | EndpointSource::Dns(_) => return None,
        }
    }
    Some(view)
}

impl KeyView<'_> {
    /// The same inputs as `key`'s.
    pub(super) fn matches(&self, key: &ServiceKey) -> bool {
        let acc = self.acc;
        key.acc.namespace == acc.namespace
            && key.acc.vips == acc.vips
            && key.acc.ports.len() == acc.ports.len()
            && key
                .acc
                .ports
                .iter()
                .zip(&acc.ports)
                .all(|((a, pa), (b, pb))| a == b && pa.chains == pb.chains)
            && key.acc.chains.len() == acc.chains.len()
            && key
                .acc
                .chains
                .iter()
                .zip(&acc.chains)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && key.clusters.len() == self.clusters.len()
            && key
                .clusters
                .iter()
                .zip(&self.clusters)
                .all(|((a, ha), (b, hb))| Arc::ptr_eq(a, b) && ha.as_ref() == *hb)
            && key.assignments.len() == self.assignments.len()
            && key
                .assignments
                .iter()
                .zip(&self.assignments)
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
    }

    /// The key, copied.
    pub(super) fn owned(self) -> ServiceKey {
        ServiceKey {
            acc: self.acc.without_routes(),
            clusters: self
                .clusters
                .into_iter()
                .map(|(p, h)| (p.clone(), h.cloned()))
                .collect(),
            assignments: self.assignments.into_iter().map(|a| a.cloned()).collect(),
        }
    }
}

/// A service the memo remembers: what it was built from, and what that gave. Boxed in the
/// memo's map: inline, each of the map's slots (used or not) would be 280 bytes (2.3 MB of
/// slots at 5 000 services, 0.27 MB boxed).
#[derive(Debug)]
pub(super) struct Remembered {
    pub(super) key: ServiceKey,
    pub(super) out: Arc<ServiceOut>,
    /// Its clusters in a published snapshot (and that snapshot's runtime state).
    pub(super) clusters: Option<Arc<PortMap>>,
}

/// The memo's map holds its services boxed: a slot (used or not) is a name and a pointer.
#[cfg(test)]
#[test]
fn the_service_memo_holds_its_services_boxed() {
    fn slot<K, V, S>(_: &HashMap<K, V, S>) -> usize {
        std::mem::size_of::<(K, V)>()
    }
    let memo = super::ServiceMemo::default();
    assert_eq!(slot(&memo.services), 32);
    assert!(std::mem::size_of::<Remembered>() > 200);
}
