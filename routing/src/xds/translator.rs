//! [`Translator`]: states of the world translated one after the other, each reusing what the
//! last one built; an EDS-only push patches the published snapshot instead (see
//! [`super::assemble::eds`]).

use super::assemble::{self, eds, routes, services};
use super::{pieces, Encoded, Rejection, Subscriptions, TranslateOptions, Translation};
use crate::snapshot::Snapshot;
use std::sync::Arc;

/// Translates states of the world one after the other, reusing what the last one translated:
/// a cluster, an EDS assignment or a `main_internal` filter chain whose bytes did not change is
/// neither decoded nor translated again (an EDS push rebuilds one assignment, a route change one
/// chain), and a service whose inputs are unchanged is not assembled again. The result is the
/// same as [`translate`]'s on the decoded resources (property-tested). It keeps the translated
/// pieces of the last state only, not its protos.
#[derive(Debug, Default)]
pub struct Translator {
    memo: pieces::Memo,
    /// What the last translation was made from and gave, while an EDS-only push may patch its
    /// snapshot (see [`eds::Last`]).
    last: Option<eds::Last>,
    /// Translations made ([`Translator::translations`]).
    translations: u64,
}

/// How much of the last translation was reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Clusters, assignments and `main_internal` chains whose pieces were reused.
    pub reused: usize,
    /// Clusters, assignments and chains decoded and translated.
    pub built: usize,
    /// Services whose inputs were all unchanged (their model objects reused).
    pub services_reused: usize,
    /// Services assembled again.
    pub services_built: usize,
    /// Services whose clusters the snapshot shares with the published one it follows (see
    /// [`Translator::published`]).
    pub clusters_shared: usize,
    /// Whether the snapshot is the published one patched (an EDS-only push: only the services
    /// whose assignments changed were built again, every other table is shared).
    pub patched: bool,
}

impl Translator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Translate one state of the world (as [`translate`](super::translate)).
    pub fn translate(
        &mut self,
        resources: &[Encoded<'_>],
        options: &TranslateOptions,
    ) -> Result<Translation, Vec<Rejection>> {
        self.translations += 1;
        // Until it succeeds, the last translation is not one to patch.
        let mut last = self.last.take();
        let decoded = self.memo.pieces(resources)?;
        let others = decoded.others;
        debug_assert_eq!(others, eds::others_digest(resources));
        if let Some(t) = eds::patch(&mut last, &mut self.memo, &decoded, others.0, options) {
            self.last = last;
            return Ok(t);
        }
        if let Some(t) = routes::patch(&mut last, &mut self.memo, &decoded, others, options) {
            self.last = last;
            return Ok(t);
        }
        if let Some(from) = &last {
            if let Some((t, sorted)) =
                services::patch(from, &mut self.memo, &decoded, others.1, options)
            {
                let spliced = eds::Last::spliced(&t, decoded, others, options, (from, sorted));
                self.last = Some(spliced.patched_from());
                return Ok(t);
            }
        }
        drop(last);
        let translation = assemble::translate(
            &assemble::Input {
                listeners: &decoded.listeners,
                routes: &decoded.resources.routes,
                clusters: &decoded.clusters,
                assignments: &decoded.assignments,
            },
            options,
            &mut self.memo.listener,
            &mut self.memo.services,
        )?;
        self.last = Some(eds::Last::new(&translation, decoded, others, options));
        Ok(translation)
    }

    /// An EDS push translated from the assignments it changed alone, without reading the rest
    /// of the state: `changed` replace the assignments of those names in the state the last
    /// [`translate`](Self::translate) (or this) translated, and the result is what `translate`
    /// gives for that whole state (property-tested). The caller vouches that this is the state:
    /// nothing else changed since, nothing was added or removed. A cost in what changed, not in
    /// the mesh's size (the published snapshot is patched as by an EDS-only `translate`).
    ///
    /// `None` when it cannot be done so (the last translation failed, its snapshot was not
    /// published, a name it did not have, bytes that do not decode, anything but the endpoints
    /// of ordinary services changed): translate the whole state instead.
    pub fn translate_assignments(
        &mut self,
        changed: &[Encoded<'_>],
        options: &TranslateOptions,
    ) -> Option<Translation> {
        let t = eds::patch_assignments(&mut self.last, &mut self.memo, changed, options)?;
        self.translations += 1;
        Some(t)
    }

    /// A route push (a VirtualService edit: istiod sends `main_internal` again) translated from
    /// that listener alone, without reading the rest of the state: `changed` is the new
    /// `main_internal`, in place of the one the last [`translate`](Self::translate) (or a
    /// patch) translated, and the result is what `translate` gives for that whole state
    /// (property-tested). The caller vouches that nothing else changed. The listener's chains
    /// are still read (found by digest), but not the clusters and assignments.
    ///
    /// `None` when it cannot be done so (as [`translate_assignments`](Self::translate_assignments),
    /// or more than service chains' routes changed): translate the whole state instead.
    pub fn translate_listener(
        &mut self,
        changed: &[Encoded<'_>],
        options: &TranslateOptions,
    ) -> Option<Translation> {
        let t = routes::patch_listener(&mut self.last, &mut self.memo, changed, options)?;
        self.translations += 1;
        Some(t)
    }

    /// How many translations [`translate`](Self::translate) and
    /// [`translate_assignments`](Self::translate_assignments) made (or tried): a caller that
    /// shares the translator tells by it whether the last one was its own.
    pub fn translations(&self) -> u64 {
        self.translations
    }

    /// What `resources` subscribe to (the EDS assignments of their clusters, the RDS route
    /// configurations of their listeners), found from their pieces and listeners alone, without
    /// assembling services or building a snapshot: what a state that is still incomplete needs
    /// to ask for, as Envoy warms new clusters while the current config serves. Equal to what
    /// [`Translator::translate`] would give in [`Translation::subscriptions`]; the pieces and
    /// chains it reads are kept, so the translation that follows reuses them.
    ///
    /// `None` when only the translation can tell whether the state is accepted: a resource that
    /// does not decode, a cluster, assignment or listener with a rejection, or a cluster whose
    /// endpoints are read at assembly (inline, DNS, `outbound|…`: what can reject them is
    /// checked there). `resources` are a state's: no name twice per type (a repeated name is
    /// rejected by the translation, not here).
    pub fn subscriptions(&mut self, resources: &[Encoded<'_>]) -> Option<Subscriptions> {
        let decoded = self.memo.pieces(resources).ok()?;
        let mut subscriptions = Subscriptions::default();
        let grown = self
            .last
            .as_ref()
            .and_then(|last| Some((last, last.grown_endpoints(&decoded)?)));
        if let Some((last, endpoints)) = grown {
            // Nothing but clusters and assignments changed: the last translation's routes.
            if let Some(routes) = last.routes_if_others_same(decoded.others.0) {
                return Some(Subscriptions { endpoints, routes });
            }
            // The listeners changed (a new service's `main_internal`): read below.
            subscriptions.endpoints = endpoints;
        } else {
            for c in &decoded.clusters {
                if !c.subscribable() {
                    return None;
                }
                subscriptions.endpoints.extend(c.eds.iter().cloned());
            }
            if decoded
                .assignments
                .iter()
                .any(|a| !a.diag.rejections.is_empty())
            {
                return None;
            }
        }
        let known: super::chain::ClusterNames<'_> = decoded
            .clusters
            .iter()
            .map(|c| super::chain::Named(&c.name))
            .collect();
        eds::routes_asked(
            &decoded.listeners,
            &decoded.resources.routes,
            (&known, &[]),
            &mut self.memo.listener,
            &mut subscriptions.routes,
        )
        .then_some(subscriptions)
    }

    /// What [`subscriptions`](Self::subscriptions) answers for the state the last
    /// [`translate`](Self::translate) (or a patch) translated with the clusters of `clusters`
    /// added or changed in it and, if given, `main` in place of its `main_internal` listener,
    /// found from those alone: no walk over the state. The caller vouches that nothing else
    /// changed: no cluster gone, no other resource changed. A new service's clusters and
    /// listener at 10 000 services cost those and the listener's chains, not the mesh's
    /// resources. The pieces read are kept, so the translation that follows reuses them.
    ///
    /// `None` when it cannot be told so (no last translation, a resource that does not decode,
    /// or where [`subscriptions`](Self::subscriptions) would give `None`): ask with the whole
    /// state.
    pub fn subscriptions_with(
        &mut self,
        clusters: &[Encoded<'_>],
        main: Option<&Encoded<'_>>,
    ) -> Option<Subscriptions> {
        self.last.as_ref()?.asked(&mut self.memo, clusters, main)
    }

    /// [`translate_refusing`](super::translate_refusing) on encoded resources: a resource that does not decode, or that
    /// the translation rejects, is refused alone and the rest translated again.
    pub fn translate_refusing(
        &mut self,
        resources: &[Encoded<'_>],
        options: &TranslateOptions,
    ) -> Result<(Translation, Vec<Rejection>), Vec<Rejection>> {
        super::refusing(
            resources.to_vec(),
            |kept| self.translate(kept, options),
            |kept| kept.len(),
            |kept, r| kept.retain(|e| e.type_url != r.type_url || **e.name != *r.name),
        )
    }

    /// `published` is live (carried over and serving). When it is the last translation's
    /// snapshot, the clusters it built are remembered, so that the next snapshot shares the
    /// clusters of every service that did not change, with their runtime state, instead of
    /// building them again. Any other snapshot is ignored: call it with what is live before
    /// each translation.
    pub fn published(&mut self, published: &Arc<Snapshot>) {
        self.memo.services.published(published);
        if let Some(last) = &mut self.last {
            last.published(published);
        }
    }

    /// What the last translation reused and built.
    pub fn reuse(&self) -> Reuse {
        Reuse {
            reused: self.memo.reused + self.memo.listener.reused,
            built: self.memo.built + self.memo.listener.built,
            services_reused: self.memo.services.reused,
            services_built: self.memo.services.built,
            clusters_shared: self.memo.services.shared,
            patched: self.last.as_ref().is_some_and(eds::Last::patched),
        }
    }
}
