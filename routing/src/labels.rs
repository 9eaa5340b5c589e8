//! One allocation per distinct label map: endpoints of a subset, and the pods of a workload,
//! carry the same labels.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A set of shared label maps.
#[derive(Debug, Default)]
pub(crate) struct LabelMaps(HashSet<Arc<BTreeMap<String, String>>>);

impl LabelMaps {
    /// Make `labels` the set's map equal to it, adding it when the set has none. True when
    /// `labels` now points at another allocation than before.
    pub(crate) fn share(&mut self, labels: &mut Arc<BTreeMap<String, String>>) -> bool {
        match self.0.get(labels) {
            Some(shared) if Arc::ptr_eq(shared, labels) => false,
            Some(shared) => {
                *labels = shared.clone();
                true
            }
            None => {
                self.0.insert(labels.clone());
                false
            }
        }
    }

    /// The set's map equal to `labels`, or `labels` added to it.
    pub(crate) fn intern(
        &mut self,
        labels: BTreeMap<String, String>,
    ) -> Arc<BTreeMap<String, String>> {
        let mut labels = Arc::new(labels);
        self.share(&mut labels);
        labels
    }

    /// Forget the maps only the set holds.
    pub(crate) fn prune(&mut self) {
        self.0.retain(|l| Arc::strong_count(l) > 1);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
