//! [`Chunked`]: a list split into chunks that snapshots share, so that a snapshot patched from
//! another (an EDS push) copies the one chunk it changes, not a pointer per service.

use std::sync::Arc;

/// Items per chunk: a clone costs one pointer per this many items, a change copies this many.
const CHUNK: usize = 64;

/// A list in chunks of [`CHUNK`] items, each shared (`Arc`) with the copies that did not change
/// it. Indexing costs one more pointer than a `Vec`'s.
#[derive(Clone)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Arc<[T]>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> Chunked<T> {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T: Clone> Chunked<T> {
    /// Replace item `i` (which must exist), copying its chunk first if another list shares it.
    pub(crate) fn set(&mut self, i: usize, item: T) {
        let chunk = &mut self.chunks[i / CHUNK];
        match Arc::get_mut(chunk) {
            Some(own) => own[i % CHUNK] = item,
            None => {
                let mut copy: Vec<T> = chunk.to_vec();
                copy[i % CHUNK] = item;
                *chunk = copy.into();
            }
        }
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> FromIterator<T> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut chunks = Vec::new();
        let mut iter = iter.into_iter().peekable();
        while iter.peek().is_some() {
            chunks.push(iter.by_ref().take(CHUNK).collect());
        }
        Self { chunks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items read back in order, and a change copies one chunk and leaves the list it was
    /// cloned from as it was.
    #[test]
    fn a_change_copies_one_chunk() {
        let a: Chunked<u32> = (0..1000).collect();
        assert_eq!(a.len(), 1000);
        assert!(a.iter().copied().eq(0..1000));
        assert_eq!((a[0], a[999]), (0, 999));
        let mut b = a.clone();
        b.set(130, 7);
        b.set(131, 8);
        assert_eq!((a[130], b[130], b[131]), (130, 7, 8));
        let shared = a
            .chunks
            .iter()
            .zip(&b.chunks)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, a.chunks.len() - 1, "one chunk copied");
        assert!(Chunked::<u32>::default().iter().next().is_none());
        let short: Chunked<u32> = (0..64).collect();
        assert_eq!((short.chunks.len(), short.len()), (1, 64));
    }
}
