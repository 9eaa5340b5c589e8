//! An EDS push of assignments the last published state had, translated from those assignments
//! alone ([`Translator::translate_assignments`]): at thousands of services, a push of one pod's
//! change costs what changed, not the size of the mesh. No walk over every resource, no
//! subscription sets built again, nothing the client has to compare name by name. A route push
//! (istiod sends `main_internal` again for a VirtualService edit) is read the same way from that
//! listener alone ([`Translator::translate_listener`]): its chains are still read, the clusters
//! and assignments are not.

use super::{Latest, XdsHandler};
use routing::xds::{Encoded, Translator};
use std::collections::BTreeSet;
use tracing::info;
use xds_client::{type_url, Applied, ResourceState, Subscriptions, Update};

/// What lets the next EDS or route push be read alone: the handler's last published state,
/// translated whole or patched, with nothing refused, holding only what it subscribes to (so the
/// client keeps it as it is), and the translator's last translation (a DNS rebuild or a
/// deferred state's warm timeout translates on the same translator and ends it).
pub(super) struct AloneBase {
    /// [`Translator::translations`] after it.
    translations: u64,
    /// What the handler handed back for it: handed back again, shared.
    pub(super) subscriptions: Subscriptions,
}

impl XdsHandler {
    /// After a state translated whole was published (`refused_any`: something was set aside),
    /// whether the next EDS or route push may be read alone.
    pub(super) fn remember_alone_base(
        &mut self,
        translator: &Translator,
        state: &ResourceState,
        needed: &routing::xds::Subscriptions,
        subscriptions: &Subscriptions,
        refused_any: bool,
    ) {
        let held_only = |t: &str, wanted: &routing::xds::Names| {
            let held = state.resources(t).map(|r| &*r.name);
            super::state::not_in(held, wanted.iter().map(|n| &**n))
                .next()
                .is_none()
        };
        let exact = held_only(type_url::CLUSTER_LOAD_ASSIGNMENT, &needed.endpoints)
            && held_only(type_url::ROUTE_CONFIGURATION, &needed.routes);
        self.alone_base = (!refused_any && exact).then(|| AloneBase {
            translations: translator.translations(),
            subscriptions: subscriptions.clone(),
        });
    }

    /// What a state that only adds or changes clusters and `main_internal` since the last
    /// published one asks for, found from those alone ([`Translator::subscriptions_with`])
    /// while that state is still the translator's ([`AloneBase`]): a new service's clusters,
    /// and its listener while the state waits for its assignments, are asked of without a walk
    /// over the mesh's resources. What changed is found from the client's two states without
    /// visiting what they share. `None`: ask with the whole state.
    pub(super) fn clusters_alone(
        &self,
        state: &ResourceState,
        translator: &mut Translator,
    ) -> Option<routing::xds::Subscriptions> {
        const CDS: &str = type_url::CLUSTER;
        const LDS: &str = type_url::LISTENER;
        let base = self.alone_base.as_ref()?;
        if translator.translations() != base.translations {
            return None;
        }
        let others_changed = super::TYPES.iter().any(|t| {
            ![CDS, LDS].contains(t) && !state.changed_since(&self.last_good, t).is_empty()
        });
        if others_changed {
            return None;
        }
        // `main_internal` changed (a new service's chains), or no listener.
        let main = match &state.changed_since(&self.last_good, LDS)[..] {
            [] => None,
            [("main_internal", Some(r))] => Some(Encoded {
                type_url: LDS,
                name: &r.name,
                value: &r.value.value,
            }),
            _ => return None,
        };
        let changed = state.changed_since(&self.last_good, CDS);
        // A cluster gone: the whole state is asked.
        let changed: Vec<Encoded<'_>> = changed
            .iter()
            .map(|(_, r)| {
                let r = (*r)?;
                Some(Encoded {
                    type_url: CDS,
                    name: &r.name,
                    value: &r.value.value,
                })
            })
            .collect::<Option<_>>()?;
        translator.subscriptions_with(&changed, main.as_ref())
    }

    /// [`missing`](super::state::missing) for `state`, found from what changed since the
    /// base's state when there is one ([`super::state::missing_since`]): the base lacked
    /// nothing it subscribed to.
    pub(super) fn missing(
        &self,
        state: &ResourceState,
        needed: &routing::xds::Subscriptions,
    ) -> Option<String> {
        let base = self.alone_base.as_ref();
        super::state::missing_from(
            state,
            needed,
            base.map(|b| (&self.last_good, &b.subscriptions)),
        )
    }

    /// `update` translated from what it changed alone, when it is an EDS push of assignments the
    /// last published state had, or a route push (`main_internal` again, nothing else), and that
    /// state is still the translator's ([`AloneBase`]). `None`: translate the state whole.
    pub(super) fn push_alone(
        &mut self,
        update: &Update<'_>,
        latest: &mut Latest,
    ) -> Option<Applied> {
        const EDS: &str = type_url::CLUSTER_LOAD_ASSIGNMENT;
        const LDS: &str = type_url::LISTENER;
        let base = self.alone_base.as_mut()?;
        if latest.translator.translations() != base.translations || self.deferred.is_some() {
            return None;
        }
        let kind = update.changes.first()?.type_url.as_str();
        let mut names = BTreeSet::new();
        for c in update.changes {
            if c.type_url != kind || !c.removed.is_empty() {
                return None;
            }
            for name in &c.updated {
                self.last_good.get(kind, name)?;
                names.insert(name.as_str());
            }
        }
        let state = update.state;
        let changed: Vec<Encoded<'_>> = names
            .iter()
            .map(|name| {
                let r = state.get(kind, name)?;
                Some(Encoded {
                    type_url: kind,
                    name: &r.name,
                    value: &r.value.value,
                })
            })
            .collect::<Option<_>>()?;
        let translation = match kind {
            EDS => latest
                .translator
                .translate_assignments(&changed, &self.options)?,
            LDS => latest
                .translator
                .translate_listener(&changed, &self.options)?,
            _ => return None,
        };
        base.translations = latest.translator.translations();
        let subscriptions = base.subscriptions.clone();
        self.last_good = state.clone();
        latest.state = Some(self.last_good.clone());
        self.status.set_xds_resources(self.last_good.clone());
        let snapshot = translation.snapshot;
        let reuse = latest.translator.reuse();
        if kind == EDS {
            // The line's fields describe this push; the count, those patched since the last line.
            if let Some(left_out) = self.patched_lines.allow("xDS endpoints patched") {
                info!(
                    version = snapshot.version(),
                    assignments = changed.len(),
                    services_rebuilt = reuse.services_built,
                    clusters_shared = reuse.clusters_shared,
                    pushes_not_logged = left_out,
                    "xDS endpoints patched"
                );
            }
        } else {
            info!(
                version = snapshot.version(),
                chains_rebuilt = reuse.built,
                "xDS routes patched"
            );
        }
        self.sink.offer(snapshot);
        Some(subscriptions.into())
    }
}
