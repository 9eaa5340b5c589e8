//! [`Shards`]: a hash map split into shards that snapshots share, so that a snapshot patched
//! from another (an EDS push, a route change) copies the shards it changes, not the whole table.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::xds::FastHash;

/// How many shards a table has once it holds anything: a change copies about 1/64 of it.
const SHARDS: usize = 64;

/// A hash map in [`SHARDS`] shards, each shared (`Arc`) with the copies that did not change it:
/// a clone costs 64 pointers, and a change copies the one shard it lands in. A lookup hashes the
/// key twice (the shard, then in it). Empty tables hold no shards.
pub(crate) struct Shards<K, V> {
    shards: Vec<Arc<HashMap<K, V, FastHash>>>,
}

impl<K, V> Clone for Shards<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
        }
    }
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self { shards: Vec::new() }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for Shards<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The shard of a key: the same for a key and its borrowed form (`Borrow` hashes alike).
fn shard<Q: Hash + ?Sized>(key: &Q) -> usize {
    let hash = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key);
    (hash >> (64 - SHARDS.trailing_zeros())) as usize
}

impl<K, V> Shards<K, V> {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Every entry, unordered.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// The values of the shards no other table shares (those this table built or changed).
    pub(crate) fn unshared_values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards
            .iter_mut()
            .filter_map(Arc::get_mut)
            .flat_map(|s| s.values_mut())
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards.get(shard(key))?.get(key)
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Shards<K, V> {
    /// Insert, copying the key's shard first if another table shares it.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.shards[shard(&key)]).insert(key, value)
    }

    /// Remove, copying the key's shard first (only when it holds the key) if another table
    /// shares it.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let s = self.shards.get_mut(shard(key))?;
        if !s.contains_key(key) {
            return None;
        }
        Arc::make_mut(s).remove(key)
    }
}

/// Each shard sized once for what lands in it (no growth on the way); a key given twice keeps
/// its last value.
impl<K: Hash + Eq, V> FromIterator<(K, V)> for Shards<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut parts: Vec<Vec<(K, V)>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for (k, v) in iter {
            parts[shard(&k)].push((k, v));
        }
        if parts.iter().all(Vec::is_empty) {
            return Self::default();
        }
        let shards = parts
            .into_iter()
            .map(|part| {
                let mut map = HashMap::with_capacity_and_hasher(part.len(), FastHash::default());
                map.extend(part);
                Arc::new(map)
            })
            .collect();
        Self { shards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_one_shard_and_leaves_the_copy_it_came_from_as_it_was() {
        let a: Shards<String, u32> = (0..1000).map(|i| (format!("host-{i}"), i)).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(a.get("host-7"), Some(&7));
        let mut b = a.clone();
        b.insert("host-7".into(), 70);
        assert_eq!(b.remove("host-8"), Some(8));
        assert_eq!(b.remove("nowhere"), None);
        assert_eq!((a.get("host-7"), b.get("host-7")), (Some(&7), Some(&70)));
        assert!(a.contains_key("host-8") && !b.contains_key("host-8"));
        // Only the shards of host-7 and host-8 were copied.
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        let touched = if shard("host-7") == shard("host-8") {
            1
        } else {
            2
        };
        assert_eq!(shared, SHARDS - touched);
        // What b may change in place: the entries of the shards it copied.
        let copied: usize = [shard("host-7"), shard("host-8")]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|i| b.shards[i].len())
            .sum();
        assert_eq!(b.unshared_values_mut().count(), copied);
        drop(b);
        let mut a = a;
        assert_eq!(a.unshared_values_mut().count(), 1000, "no other copy");
    }
}
