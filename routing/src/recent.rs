//! Sharing equal values that a translation makes many times over (a waypoint's clusters have a
//! few distinct policies for thousands of services) without keeping any of them alive.

use std::sync::{Arc, Weak};

/// The last few distinct values a thread made, held weakly: [`Recent::find`] gives an equal
/// live one again instead of a new allocation. A snapshot is built on one thread, so each
/// user keeps one of these in a `thread_local!`.
pub(crate) struct Recent<T> {
    items: Vec<Weak<T>>,
    capacity: usize,
}

impl<T> Recent<T> {
    /// Remembers at most `capacity` values (the oldest is forgotten first).
    pub(crate) const fn new(capacity: usize) -> Self {
        Recent {
            items: Vec::new(),
            capacity,
        }
    }

    /// A live value that `is` accepts.
    pub(crate) fn find(&self, is: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.items.iter().filter_map(Weak::upgrade).find(|v| is(v))
    }

    /// A live value equal to `value`, else `value`, remembered from now on.
    pub(crate) fn shared(&mut self, value: T) -> Arc<T>
    where
        T: PartialEq,
    {
        match self.find(|v| *v == value) {
            Some(found) => found,
            None => self.insert(value),
        }
    }

    /// `value`, remembered from now on.
    pub(crate) fn insert(&mut self, value: T) -> Arc<T> {
        let made = Arc::new(value);
        self.items.retain(|w| w.strong_count() > 0);
        if self.items.len() >= self.capacity {
            self.items.remove(0);
        }
        self.items.push(Arc::downgrade(&made));
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_one_allocation_and_none_is_kept_alive() {
        let mut recent = Recent::new(2);
        let mut shared = |v: &str| recent.shared(v.to_string());
        let a = shared("a");
        assert!(Arc::ptr_eq(&a, &shared("a")));
        let b = shared("b");
        assert!(!Arc::ptr_eq(&a, &b));
        // A third value forgets the oldest.
        let _c = shared("c");
        assert!(!Arc::ptr_eq(&a, &shared("a")));
        // Nothing is held: a value no one holds is made again.
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(weak.upgrade().is_none());
    }
}
