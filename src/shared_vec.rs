//! A vector that successive versions of the table share.
//!
//! A table of ten thousand routes exists three times over (the document as
//! written, the validated config, the compiled table), and every change of
//! one route's weights makes a new version of each. With plain vectors of
//! `Arc`s a change touched all thirty thousand reference counts to copy them
//! and again to drop the version it replaced, each on its own cache line:
//! about 3 ms on the control thread, long enough to hold up a data-plane
//! worker sharing its core. Here elements live in chunks of [`CHUNK`]; a
//! clone shares every chunk and changing one element copies only its chunk
//! and the list of chunks.

use std::fmt;
use std::iter::FlatMap;
use std::ops::Index;
use std::slice;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Elements per chunk: a change copies this many elements plus one pointer
/// per chunk, so ten thousand elements cost 64 + 157 copies.
const CHUNK: usize = 64;

/// Every chunk but the last holds exactly [`CHUNK`] elements, so an index
/// finds its chunk by division and the length follows from the last chunk.
pub struct SharedVec<T> {
    chunks: Arc<Vec<Arc<Vec<T>>>>,
}

impl<T> SharedVec<T> {
    pub fn new() -> Self {
        SharedVec {
            chunks: Arc::new(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn iter(&self) -> Iter<'_, T> {
        let each: fn(&Arc<Vec<T>>) -> slice::Iter<'_, T> = chunk_iter;
        self.chunks.iter().flat_map(each)
    }
}

pub type Iter<'a, T> = FlatMap<
    slice::Iter<'a, Arc<Vec<T>>>,
    slice::Iter<'a, T>,
    fn(&'a Arc<Vec<T>>) -> slice::Iter<'a, T>,
>;

fn chunk_iter<T>(chunk: &Arc<Vec<T>>) -> slice::Iter<'_, T> {
    chunk.iter()
}

impl<T: Clone> SharedVec<T> {
    /// The element at `i`, for changing: its chunk is copied first if another
    /// version shares it, so no other version sees the change.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len() {
            return None;
        }
        let chunk = &mut Arc::make_mut(&mut self.chunks)[i / CHUNK];
        Some(&mut Arc::make_mut(chunk)[i % CHUNK])
    }

    pub fn push(&mut self, value: T) {
        let chunks = Arc::make_mut(&mut self.chunks);
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                chunks.push(Arc::new(chunk));
            }
        }
    }
}

impl<T> Clone for SharedVec<T> {
    fn clone(&self) -> Self {
        SharedVec {
            chunks: self.chunks.clone(),
        }
    }
}

impl<T> Default for SharedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Index<usize> for SharedVec<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T: Clone> FromIterator<T> for SharedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut v = SharedVec::new();
        items.into_iter().for_each(|item| v.push(item));
        v
    }
}

impl<T: Clone> From<Vec<T>> for SharedVec<T> {
    fn from(items: Vec<T>) -> Self {
        items.into_iter().collect()
    }
}

impl<'a, T> IntoIterator for &'a SharedVec<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: PartialEq> PartialEq for SharedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: fmt::Debug> fmt::Debug for SharedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Serialize> Serialize for SharedVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de, T: Deserialize<'de> + Clone> Deserialize<'de> for SharedVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_a_vector_holds_across_chunk_boundaries() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let v: SharedVec<usize> = (0..n).collect();
            assert_eq!(v.len(), n);
            assert_eq!(
                v.iter().copied().collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>()
            );
            assert_eq!(v.iter().next_back(), n.checked_sub(1).as_ref());
            assert!((0..n).all(|i| v[i] == i));
            assert_eq!(v.clone().get_mut(n), None);
            let mut pushed = SharedVec::new();
            (0..n).for_each(|i| pushed.push(i));
            assert_eq!(pushed, v);
        }
    }

    #[test]
    fn a_change_to_a_clone_leaves_the_original_and_shares_the_other_chunks() {
        let original: SharedVec<usize> = (0..10 * CHUNK).collect();
        let mut changed = original.clone();
        *changed.get_mut(3 * CHUNK + 1).unwrap() = 7;
        assert_eq!(original[3 * CHUNK + 1], 3 * CHUNK + 1);
        assert_eq!(changed[3 * CHUNK + 1], 7);
        assert_ne!(original, changed);
        let shared = (0..10)
            .filter(|&c| Arc::ptr_eq(&original.chunks[c], &changed.chunks[c]))
            .count();
        assert_eq!(shared, 9);
        assert_eq!(changed.get_mut(10 * CHUNK), None);
    }

    #[test]
    fn serializes_as_a_plain_list() {
        let v: SharedVec<u32> = (0..100).collect();
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(
            json,
            serde_json::to_string(&(0..100).collect::<Vec<_>>()).unwrap()
        );
        assert_eq!(serde_json::from_str::<SharedVec<u32>>(&json).unwrap(), v);
    }
}
