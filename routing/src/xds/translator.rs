//! [`Translator`]: states of the world translated one after the other, each reusing what the
//! last one built; an EDS-only push patches the published snapshot instead (see
//! [`super::assemble::eds`]).

use super::assemble::{self, eds, routes};
use super::{pieces, Encoded, Rejection, TranslateOptions, Translation};
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
        let others = eds::others_digest(resources);
        let decoded = self.memo.pieces(resources)?;
        if let Some(t) = eds::patch(&mut self.last, &mut self.memo, &decoded, others.0, options) {
            return Ok(t);
        }
        if let Some(t) = routes::patch(&mut self.last, &mut self.memo, &decoded, others, options) {
            return Ok(t);
        }
        self.last = None;
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
            |kept, r| kept.retain(|e| e.type_url != r.type_url || e.name != r.name),
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
