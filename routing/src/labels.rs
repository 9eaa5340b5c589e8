//! Workload labels as endpoints keep them ([`Labels`]), and one allocation per distinct label
//! map ([`LabelMaps`]): endpoints of a subset, and the pods of a workload, carry the same labels.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// A workload's labels: (key, value) pairs sorted by key, each key once, in one boxed slice.
///
/// Every endpoint has a label map, and a `BTreeMap` of three labels is a 544-byte node plus its
/// strings; this is 32 bytes a label plus its strings. Lookups are a binary search, iteration is
/// in key order, and it serializes as a map, as the `BTreeMap` did.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As a `BTreeMap`, e.g. to add labels.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

/// As a map collected in order: of a repeated key the last value is kept.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        iter.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<BTreeMap<String, String>>()
            .into()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One `Arc` per distinct value among those one pass builds: the pods of a workload have the
/// same names and the same workload record, and each is made once.
#[derive(Debug)]
pub(crate) struct Records<T: ?Sized>(HashSet<Arc<T>>);

impl<T: ?Sized> Default for Records<T> {
    fn default() -> Self {
        Records(HashSet::new())
    }
}

impl<T: ?Sized + std::hash::Hash + Eq> Records<T> {
    /// The set's value equal to `value`, or `value` itself, added to it.
    pub(crate) fn share(&mut self, value: &Arc<T>) -> Arc<T> {
        if let Some(shared) = self.0.get(value) {
            return shared.clone();
        }
        self.0.insert(value.clone());
        value.clone()
    }

    /// Whether the set has a value equal to `value`.
    pub(crate) fn contains(&self, value: &T) -> bool {
        self.0.contains(value)
    }
}

impl<T: std::hash::Hash + Eq> Records<T> {
    /// The set's record equal to `value`, or `value` added to it (allocated only then).
    pub(crate) fn record(&mut self, value: T) -> Arc<T> {
        if let Some(shared) = self.0.get(&value) {
            return shared.clone();
        }
        let shared = Arc::new(value);
        self.0.insert(shared.clone());
        shared
    }
}

/// One `Arc<str>` per distinct name (a namespace, a service account, an identity) among the
/// endpoints one pass builds: a workload's pods have the same ones.
pub(crate) type Names = Records<str>;

impl Records<str> {
    /// The set's string equal to `name`, or `name` added to it.
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(shared.clone());
        shared
    }
}

/// Below this many maps, [`LabelMaps::prune_grown`] keeps them all.
const PRUNE_FROM: usize = 64;

/// A set of shared label maps, and how many the last prune left.
#[derive(Debug, Default)]
pub(crate) struct LabelMaps(HashSet<Arc<Labels>>, usize);

impl LabelMaps {
    /// Make `labels` the set's map equal to it, adding it when the set has none. True when
    /// `labels` now points at another allocation than before.
    pub(crate) fn share(&mut self, labels: &mut Arc<Labels>) -> bool {
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
    pub(crate) fn intern(&mut self, labels: impl Into<Labels>) -> Arc<Labels> {
        let mut labels = Arc::new(labels.into());
        self.share(&mut labels);
        labels
    }

    /// Forget the maps only the set holds.
    pub(crate) fn prune(&mut self) {
        self.0.retain(|l| Arc::strong_count(l) > 1);
        self.1 = self.0.len();
    }

    /// [`prune`](Self::prune) once the set holds twice what the last one left (and more than
    /// [`PRUNE_FROM`]): a pass over every map costs as much as the maps, so a small change (an
    /// EDS push) does not pay for it each time, and the set stays within twice what is in use.
    pub(crate) fn prune_grown(&mut self) {
        if self.0.len() > PRUNE_FROM.max(2 * self.1) {
            self.prune();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lookups, key order and the last of a repeated key, as a `BTreeMap` collected in order.
    #[test]
    fn labels_behave_as_the_map_they_replace() {
        let pairs = [("version", "v1"), ("app", "reviews"), ("version", "v2")];
        let labels: Labels = pairs.into_iter().collect();
        let map: BTreeMap<&str, &str> = pairs.into_iter().collect();
        assert_eq!(labels.len(), map.len());
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            map.clone().into_iter().collect::<Vec<_>>()
        );
        assert_eq!(labels.get("version"), Some("v2"));
        assert_eq!(labels.get("app"), Some("reviews"));
        assert_eq!(labels.get("apps"), None);
        assert!(labels.contains_key("app") && !labels.contains_key(""));
        assert_eq!(
            serde_json::to_string(&labels).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        assert_eq!(format!("{labels:?}"), format!("{map:?}"));
        assert_eq!(Labels::from(labels.to_map()), labels);
        assert!(Labels::default().is_empty());
    }

    /// One boxed slice: two words inline (a `BTreeMap` is three) and one allocation of 32 bytes
    /// a label beside the strings, where a `BTreeMap` node is 544 bytes for up to eleven.
    #[test]
    fn labels_are_one_boxed_slice() {
        assert_eq!(std::mem::size_of::<Labels>(), 16);
        let labels: Labels = [("app", "reviews"), ("version", "v1")]
            .into_iter()
            .collect();
        assert_eq!(std::mem::size_of_val(&*labels.0), 2 * 32);
    }

    /// An EDS push does not walk every map: the set is pruned once it doubled, and then only
    /// the maps something still holds stay.
    #[test]
    fn maps_are_pruned_once_the_set_doubled() {
        let mut set = LabelMaps::default();
        let map = |i: usize| Labels::from_iter([("app", format!("svc-{i}").as_str())]);
        let held: Vec<Arc<Labels>> = (0..100).map(|i| set.intern(map(i))).collect();
        set.prune();
        assert_eq!(set.len(), 100);
        // 100 more that nothing holds: not yet twice what the last prune left.
        for i in 100..200 {
            set.intern(map(i));
        }
        set.prune_grown();
        assert_eq!(set.len(), 200, "not pruned before it doubled");
        set.intern(map(200));
        set.prune_grown();
        assert_eq!(set.len(), 100, "pruned to what is held");
        assert!(held.iter().all(|l| Arc::strong_count(l) == 2));
    }
}
