//! What changed between the last translation's clusters and assignments and a new state's,
//! as far as a splice can follow it (see [`super::patch`]): the services to build again.

use super::super::aligned;
use super::super::eds::Last;
use super::super::*;
use crate::xds::pieces::{name_key, Decoded};
use std::collections::HashMap;

/// The hosts of changed services; whether cluster names came or went, and whether the EDS
/// names the clusters ask for may have changed.
pub(super) struct Changes {
    pub(super) hosts: BTreeSet<String>,
    pub(super) names_changed: bool,
    pub(super) eds_changed: bool,
    /// The new state's clusters and assignments are in name order (found so by
    /// [`aligned::diff`]).
    pub(super) sorted: bool,
    /// The names of the clusters added, when they are known to be all that changed in the
    /// names (none gone).
    pub(super) added: Vec<String>,
}

/// A cluster a splice can follow: an ordinary service cluster (its endpoints its own EDS
/// assignment's, or none) that reported nothing. Its service's host.
pub(super) fn spliceable(c: &ClusterPiece) -> Option<&str> {
    let ClusterRole::Service {
        cluster,
        matches: None,
    } = &c.role
    else {
        return None;
    };
    let own = match &cluster.source {
        EndpointSource::Eds(eds) => **eds == *c.name,
        EndpointSource::None => true,
        EndpointSource::Inline(_) | EndpointSource::Dns(_) => false,
    };
    (own && c.diag.is_empty()).then_some(cluster.name.host())
}

/// The services whose clusters or assignments differ between the last translation's and
/// `decoded`'s (by name: changed, added, removed). `None` when a changed piece is not one a
/// splice can follow, or a name is there twice (the full translation rejects it).
pub(super) fn changed_pieces(l: &Last, decoded: &Decoded) -> Option<Changes> {
    type ByName<'a, P> = HashMap<u128, &'a Arc<P>, crate::xds::FastHash>;
    if l.sorted {
        let clusters = aligned::diff(l.clusters(), &decoded.clusters);
        let assignments = aligned::diff(l.assignments(), &decoded.assignments);
        if let (Some(c), Some(a)) = (clusters, assignments) {
            return changed_in_order(l, decoded, c, a);
        }
    }
    let mut changes = Changes {
        hosts: BTreeSet::new(),
        names_changed: false,
        eds_changed: false,
        sorted: false,
        added: Vec::new(),
    };
    let old: ByName<'_, ClusterPiece> = l
        .clusters()
        .iter()
        .map(|c| (name_key(&c.name), c))
        .collect();
    // The names of changed clusters.
    let mut changed: Vec<u128> = Vec::new();
    let mut new: ByName<'_, ClusterPiece> = HashMap::default();
    new.reserve(decoded.clusters.len());
    for c in &decoded.clusters {
        let k = name_key(&c.name);
        if new.insert(k, c).is_some() {
            return None;
        }
        match old.get(&k) {
            Some(o) if Arc::ptr_eq(o, c) => continue,
            Some(o) => {
                changes.eds_changed |= o.eds != c.eds;
                changes.hosts.insert(spliceable(o)?.to_string());
            }
            None => changes.names_changed = true,
        }
        changes.hosts.insert(spliceable(c)?.to_string());
        changed.push(k);
    }
    if changes.names_changed || new.len() != old.len() {
        changes.names_changed = true;
        for (k, o) in &old {
            if !new.contains_key(k) {
                changes.hosts.insert(spliceable(o)?.to_string());
                changed.push(*k);
            }
        }
    }
    // An assignment's service: its cluster's (of its name), in the state it is in. One that no
    // cluster of its name uses, or that another cluster uses too, is not followed.
    let host = |a: &AssignmentPiece, clusters: &ByName<'_, ClusterPiece>| {
        if !a.diag.is_empty() || l.irregular(&a.name) {
            return None;
        }
        let c = clusters.get(&name_key(&a.name))?;
        spliceable(c)
            .filter(|_| c.eds.as_deref() == Some(&*a.name))
            .map(str::to_string)
    };
    let mut at: HashMap<u128, (), crate::xds::FastHash> = HashMap::default();
    at.reserve(decoded.assignments.len());
    let mut added = false;
    for a in &decoded.assignments {
        let k = name_key(&a.name);
        if at.insert(k, ()).is_some() {
            return None;
        }
        match l.assignment(k) {
            Some(o) if Arc::ptr_eq(o, a) => continue,
            Some(o) => {
                changes.hosts.insert(host(o, &old)?);
            }
            None => added = true,
        }
        changes.hosts.insert(host(a, &new)?);
    }
    if added || at.len() != l.assignments().len() {
        for o in l.assignments() {
            if !at.contains_key(&name_key(&o.name)) {
                changes.hosts.insert(host(o, &old)?);
            }
        }
    }
    // Of a changed cluster's name, each state has an EDS cluster and its assignment, or
    // neither: else that state warns (endpoints not received yet, an assignment no cluster
    // uses).
    for k in changed {
        let eds = |c: Option<&&Arc<ClusterPiece>>| c.is_some_and(|c| c.eds.is_some());
        if eds(old.get(&k)) != l.assignment(k).is_some() || eds(new.get(&k)) != at.contains_key(&k)
        {
            return None;
        }
    }
    Some(changes)
}

/// [`changed_pieces`] when both states' clusters and assignments are in name order, from their
/// differences ([`aligned::diff`]): names are compared only where the lists differ, and a piece
/// is found by a binary search.
fn changed_in_order(
    l: &Last,
    decoded: &Decoded,
    clusters: aligned::Diff<'_, ClusterPiece>,
    assignments: aligned::Diff<'_, AssignmentPiece>,
) -> Option<Changes> {
    let mut changes = Changes {
        hosts: BTreeSet::new(),
        names_changed: !clusters.added.is_empty() || !clusters.removed.is_empty(),
        eds_changed: false,
        sorted: true,
        added: if clusters.removed.is_empty() {
            clusters.added.iter().map(|c| c.name.to_string()).collect()
        } else {
            Vec::new()
        },
    };
    let mut changed: Vec<&str> = Vec::new();
    for (o, c) in &clusters.changed {
        changes.eds_changed |= o.eds != c.eds;
        changes.hosts.insert(spliceable(o)?.to_string());
        changes.hosts.insert(spliceable(c)?.to_string());
        changed.push(&c.name);
    }
    for c in clusters.added.iter().chain(&clusters.removed) {
        changes.hosts.insert(spliceable(c)?.to_string());
        changed.push(&c.name);
    }
    // As `changed_pieces`' `host`.
    let host = |a: &AssignmentPiece, clusters: &[Arc<ClusterPiece>]| {
        if !a.diag.is_empty() || l.irregular(&a.name) {
            return None;
        }
        let c = aligned::find(clusters, &a.name)?;
        spliceable(c)
            .filter(|_| c.eds.as_deref() == Some(&*a.name))
            .map(str::to_string)
    };
    for (o, a) in &assignments.changed {
        changes.hosts.insert(host(o, l.clusters())?);
        changes.hosts.insert(host(a, &decoded.clusters)?);
    }
    for a in &assignments.added {
        changes.hosts.insert(host(a, &decoded.clusters)?);
    }
    for o in &assignments.removed {
        changes.hosts.insert(host(o, l.clusters())?);
    }
    // As in `changed_pieces`: an EDS cluster and its assignment, or neither.
    let eds = |c: Option<&Arc<ClusterPiece>>| c.is_some_and(|c| c.eds.is_some());
    for name in changed {
        if eds(aligned::find(l.clusters(), name)) != aligned::find(l.assignments(), name).is_some()
            || eds(aligned::find(&decoded.clusters, name))
                != aligned::find(&decoded.assignments, name).is_some()
        {
            return None;
        }
    }
    Some(changes)
}
