//! [`Shards`]: a hash map split into shards that snapshots share, so that a snapshot patched
//! from another (an EDS push, a route change) copies the shards it changes, not the whole table.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::xds::FastHash;

/// The fewest shards a table has once it holds anything (as a power of two).
const MIN_BITS: u32 = 6;
/// The most shards a table has (as a power of two): 4 096.
const MAX_BITS: u32 = 12;

/// A hash map in shards, each shared (`Arc`) with the copies that did not change it: a clone
/// costs a pointer per shard, and a change copies the one shard it lands in. A table built at
/// once has about √(2n) shards for n entries ([`shards_for`]); one grown by inserts is split
/// again when it should have four times the shards it has. A lookup hashes the key twice (the
/// shard, then in it). Empty tables hold no shards.
pub(crate) struct Shards<K, V> {
    shards: Vec<Arc<HashMap<K, V, FastHash>>>,
    /// Entries in all shards.
    len: usize,
}

impl<K, V> Clone for Shards<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self {
            shards: Vec::new(),
            len: 0,
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for Shards<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The shard of a key among `count` (a power of two): the same for a key and its borrowed form
/// (`Borrow` hashes alike).
fn shard<Q: Hash + ?Sized>(key: &Q, count: usize) -> usize {
    let hash = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key);
    // The hash's top bits; `count` is at least 2^MIN_BITS, so the shift is below 64.
    (hash >> (64 - count.trailing_zeros())) as usize
}

/// How many shards suit `len` entries: about √(2·len), so that a patch pays about as much for
/// copying the shard pointers (a new snapshot's clone, and its drop) as for copying the two or
/// so shards a small change lands in (an EDS push that moves one pod: its old and new address).
/// The pod index of 5 000 services (50 000 addresses) has 512 shards of about 100.
fn shards_for(len: usize) -> usize {
    let bits = (2 * len)
        .isqrt()
        .next_power_of_two()
        .trailing_zeros()
        .clamp(MIN_BITS, MAX_BITS);
    1 << bits
}

impl<K, V> Shards<K, V> {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
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
        if self.shards.is_empty() {
            return None;
        }
        self.shards[shard(key, self.shards.len())].get(key)
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
            self.shards = (0..1 << MIN_BITS).map(|_| Arc::default()).collect();
        } else if shards_for(self.len) >= 4 * self.shards.len() {
            // Grown by inserts: split again (every shard copied once, then shared again).
            let entries: Vec<(K, V)> = self.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            *self = entries.into_iter().collect();
        }
        let at = shard(&key, self.shards.len());
        let old = Arc::make_mut(&mut self.shards[at]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove, copying the key's shard first (only when it holds the key) if another table
    /// shares it.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let count = self.shards.len();
        if count == 0 {
            return None;
        }
        let s = &mut self.shards[shard(key, count)];
        if !s.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(s).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }
}

/// Each shard sized once for what lands in it (no growth on the way); a key given twice keeps
/// its last value.
impl<K: Hash + Eq, V> FromIterator<(K, V)> for Shards<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let all: Vec<(K, V)> = iter.into_iter().collect();
        if all.is_empty() {
            return Self::default();
        }
        let count = shards_for(all.len());
        let mut parts: Vec<Vec<(K, V)>> = (0..count).map(|_| Vec::new()).collect();
        for (k, v) in all {
            parts[shard(&k, count)].push((k, v));
        }
        let mut len = 0;
        let shards = parts
            .into_iter()
            .map(|part| {
                let mut map = HashMap::with_capacity_and_hasher(part.len(), FastHash::default());
                map.extend(part);
                len += map.len();
                Arc::new(map)
            })
            .collect();
        Self { shards, len }
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
        let n = a.shards.len();
        assert_eq!(n, 64, "1 000 entries: the fewest shards");
        let touched = if shard("host-7", n) == shard("host-8", n) {
            1
        } else {
            2
        };
        assert_eq!(shared, n - touched);
        // What b may change in place: the entries of the shards it copied.
        let copied: usize = [shard("host-7", n), shard("host-8", n)]
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

    /// A change to a big table copies about √(n/2) entries, not 1/64 of the table (the pod
    /// index of 5 000 services is 50 000 addresses).
    #[test]
    fn a_big_table_has_small_shards_and_one_grown_by_inserts_is_split_again() {
        let a: Shards<u32, u32> = (0..50_000).map(|i| (i, i)).collect();
        assert_eq!((a.len(), a.shards.len()), (50_000, 512));
        let mut b = a.clone();
        b.insert(7, 70);
        let copied = b.unshared_values_mut().count();
        assert!(
            copied <= 2 * 50_000 / 512,
            "one change copied {copied} entries"
        );
        assert_eq!((a.get(&7), b.get(&7)), (Some(&7), Some(&70)));

        let mut grown: Shards<u32, u32> = Shards::default();
        for i in 0..20_000 {
            assert_eq!(grown.insert(i, i), None);
        }
        assert_eq!(grown.insert(5, 50), Some(5), "a key again is no new entry");
        assert_eq!(grown.len(), 20_000);
        assert_eq!(grown.shards.len(), 256, "split again at 8 192");
        assert!((0..20_000).all(|i| grown.get(&i) == Some(&if i == 5 { 50 } else { i })));
        assert_eq!(grown.remove(&5), Some(50));
        assert_eq!((grown.len(), grown.remove(&5)), (19_999, None));
    }
}
