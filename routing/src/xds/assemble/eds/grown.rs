//! What a state asks for, found from what it changed since the last translation: the new
//! clusters' assignments added to the last translation's subscriptions, without reading the
//! clusters that stayed.

use super::Last;
use crate::xds::assemble::{aligned, index, listener};
use crate::xds::chain::{ClusterNames, Named};
use crate::xds::listener::ListenerMemo;
use crate::xds::listener::{ShallowListener, MAIN_INTERNAL};
use crate::xds::pieces::{name_key, AssignmentPiece, ClusterPiece, Decoded, Memo};
use crate::xds::{Diag, Encoded, Subscriptions, LISTENER_TYPE, ROUTE_TYPE};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::HashMap;
use std::sync::Arc;

impl Last {
    /// The assignments `decoded`'s clusters ask for, found from this translation's when
    /// `decoded` only adds clusters and assignments or changes some: the new clusters'
    /// assignments are added, nothing else is read again. `None` when that cannot tell (a
    /// cluster gone or asking for another assignment, a new piece that reported a rejection or
    /// whose endpoints are read at assembly): read every cluster. What
    /// [`Translator::subscriptions`](crate::xds::Translator::subscriptions) answers, and so the
    /// same answer (property-tested with it).
    pub(crate) fn grown_endpoints(&self, decoded: &Decoded) -> Option<crate::xds::Names> {
        if self.sorted {
            return self.grown_in_order(decoded);
        }
        let old: HashMap<u128, &Arc<ClusterPiece>, crate::xds::FastHash> = self
            .clusters
            .iter()
            .map(|c| (name_key(&c.name), c))
            .collect();
        let mut out = self.subscriptions.endpoints.clone();
        let mut kept = 0;
        for c in &decoded.clusters {
            let o = old.get(&name_key(&c.name)).copied();
            kept += usize::from(o.is_some());
            grow(&mut out, o, c)?;
        }
        // Every cluster of this state is still there (the chains that route to them stay valid).
        if kept != self.clusters.len() {
            return None;
        }
        let changed = |a: &&Arc<AssignmentPiece>| {
            self.at()
                .get(&name_key(&a.name))
                .is_none_or(|&i| !Arc::ptr_eq(&self.assignments[i], a))
        };
        if decoded
            .assignments
            .iter()
            .filter(changed)
            .any(|a| !a.diag.rejections.is_empty())
        {
            return None;
        }
        Some(out)
    }

    /// [`Last::grown_endpoints`] when this translation's lists are in name order: the
    /// differences found by walking them beside `decoded`'s, not by looking every name up.
    fn grown_in_order(&self, decoded: &Decoded) -> Option<crate::xds::Names> {
        let clusters = super::aligned::diff(&self.clusters, &decoded.clusters)?;
        // Every cluster of this state is still there (the chains that route to them stay valid).
        if !clusters.removed.is_empty() {
            return None;
        }
        let mut out = self.subscriptions.endpoints.clone();
        for (o, c) in &clusters.changed {
            grow(&mut out, Some(o), c)?;
        }
        for c in &clusters.added {
            grow(&mut out, None, c)?;
        }
        let assignments = super::aligned::diff(&self.assignments, &decoded.assignments)?;
        let new = assignments.changed.iter().map(|(_, a)| a);
        if new
            .chain(&assignments.added)
            .any(|a| !a.diag.rejections.is_empty())
        {
            return None;
        }
        Some(out)
    }

    /// What [`Translator::subscriptions`](crate::xds::Translator::subscriptions) answers for
    /// this translation's state with `clusters` added or put in place of those of their names,
    /// and `main`, if given, in place of its `main_internal` listener; nothing else changed. The
    /// new clusters' assignments are added to this translation's; the route configurations are
    /// its own, or what the new listener asks for, read as the whole state's question reads it
    /// (its chains found by digest). `None` where that question gives `None` (a cluster that
    /// asks for another assignment, a piece or a listener with a rejection, a cluster whose
    /// endpoints are read at assembly), or where this cannot tell (clusters not in name order,
    /// the other resources' digest not known, a resource that does not decode).
    pub(crate) fn asked(
        &self,
        memo: &mut Memo,
        clusters: &[Encoded<'_>],
        main: Option<&Encoded<'_>>,
    ) -> Option<Subscriptions> {
        if !self.sorted || self.others.is_none() {
            return None;
        }
        let pieces: Vec<Arc<ClusterPiece>> = clusters
            .iter()
            .map(|r| memo.cluster_piece(r))
            .collect::<Option<_>>()?;
        let mut endpoints = self.subscriptions.endpoints.clone();
        for c in &pieces {
            grow(&mut endpoints, aligned::find(&self.clusters, &c.name), c)?;
        }
        let Some(main) = main else {
            let routes = self.subscriptions.routes.clone();
            return Some(Subscriptions { endpoints, routes });
        };
        let routes = self.listener_asks(memo, &pieces, main)?;
        Some(Subscriptions { endpoints, routes })
    }

    /// The route configurations this translation's listeners ask for with `main` in place of
    /// `main_internal`, the clusters being its own and `added`; `None` when reading them
    /// rejects something (as [`Translator::subscriptions`](crate::xds::Translator::subscriptions)
    /// judges it).
    fn listener_asks(
        &self,
        memo: &mut Memo,
        added: &[Arc<ClusterPiece>],
        main: &Encoded<'_>,
    ) -> Option<crate::xds::Names> {
        if main.type_url != LISTENER_TYPE || **main.name != *MAIN_INTERNAL {
            return None;
        }
        let listeners = self.listeners_with(main)?;
        let mut known: ClusterNames<'_> = self.clusters.iter().map(|c| Named(&c.name)).collect();
        // The clusters this translation did not have (the memo's chains were last read with
        // its clusters, unless a question read them since).
        let new: Vec<&str> = added
            .iter()
            .filter(|c| known.insert(Named(&c.name)))
            .map(|c| &*c.name)
            .collect();
        let mut asked = crate::xds::Names::new();
        routes_asked(
            &listeners,
            &self.route_configurations,
            (&known, &new),
            &mut memo.listener,
            &mut asked,
        )
        .then_some(asked)
    }

    /// This translation's listeners with `main` (a `main_internal` listener's bytes) in place of
    /// its own; `None` when the bytes do not decode as one or it had no `main_internal`.
    pub(crate) fn listeners_with(&self, main: &Encoded<'_>) -> Option<Vec<ShallowListener>> {
        let bytes = crate::xds::stored::shallow(main.value).ok()?;
        let main = <ShallowListener as prost::Message>::decode(bytes).ok()?;
        // Its place among this translation's listeners (there once).
        if main.name != MAIN_INTERNAL || self.listeners.iter().filter(|x| x.is_none()).count() != 1
        {
            return None;
        }
        Some(
            self.listeners
                .iter()
                .map(|x| x.clone().unwrap_or_else(|| main.clone()))
                .collect(),
        )
    }
}

/// Add what cluster `c` asks for to `endpoints`, `old` being the cluster of its name that the
/// last translation had; `None` when the subscriptions cannot be grown so (it asks for
/// another assignment than `old`, or it is not [`subscribable`](ClusterPiece::subscribable)).
fn grow(
    endpoints: &mut crate::xds::Names,
    old: Option<&Arc<ClusterPiece>>,
    c: &Arc<ClusterPiece>,
) -> Option<()> {
    match old {
        Some(o) if Arc::ptr_eq(o, c) => return Some(()),
        Some(o) if o.eds != c.eds => return None,
        _ => {}
    }
    if !c.subscribable() {
        return None;
    }
    endpoints.extend(c.eds.iter().cloned());
    Some(())
}

/// Read `listeners` (with the route configurations `routes`, the cluster names `known`, of
/// which `added` are new since the listener memo's last read) for the RDS names they ask for,
/// added to `asked`; whether the state is answered so: `false` when reading them rejects
/// something, or a service chain's routes do (the translation judges those).
pub(crate) fn routes_asked(
    listeners: &[ShallowListener],
    routes: &[RouteConfiguration],
    (known, added): (&ClusterNames<'_>, &[&str]),
    memo: &mut ListenerMemo,
    asked: &mut crate::xds::Names,
) -> bool {
    let mut diag = Diag::default();
    let routes = index(routes, |r| &*r.name, ROUTE_TYPE, &mut diag);
    let read = listener::translate(
        listeners,
        &routes,
        known,
        (false, added),
        memo,
        asked,
        &mut diag,
    );
    diag.rejections.is_empty() && !read.routes_rejected()
}
