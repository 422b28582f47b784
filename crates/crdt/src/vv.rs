//! Version vectors: for each replica, how many of its events are covered.

use crate::{Dot, Lattice, ReplicaId};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::cmp::Ordering;

/// A version vector, kept as a vector sorted by replica with no zero entries.
///
/// Clusters have a handful of replicas, so a sorted vector beats a tree map on
/// both lookup cost and encoded size. One entry is kept inline, in the space a
/// `Vec` header takes anyway: a delta (a counter increment, a single dot) then
/// needs no allocation to build or to free.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<(ReplicaId, u64)>")]
pub struct VersionVector {
    entries: SmallVec<[(ReplicaId, u64); 1]>,
}

/// Any list of per-replica numbers as a vector's entries: sorted, one entry
/// per replica (the largest), no zeros. Decoding untrusted bytes therefore
/// never yields a malformed vector.
pub(crate) fn normalise<C: Copy + Ord + Default>(
    mut entries: Vec<(ReplicaId, C)>,
) -> SmallVec<[(ReplicaId, C); 1]> {
    entries.retain(|&(_, c)| c > C::default());
    entries.sort_unstable();
    // After sorting, the largest number of a replica comes last.
    let mut out: SmallVec<[(ReplicaId, C); 1]> = SmallVec::with_capacity(entries.len());
    for (r, c) in entries {
        match out.last_mut() {
            Some(last) if last.0 == r => last.1 = c,
            _ => out.push((r, c)),
        }
    }
    out
}

impl From<Vec<(ReplicaId, u64)>> for VersionVector {
    /// Normalises any list (see [`normalise`]).
    fn from(entries: Vec<(ReplicaId, u64)>) -> Self {
        VersionVector {
            entries: normalise(entries),
        }
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, replica: ReplicaId) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&replica, |&(r, _)| r)
    }

    /// How many events of `replica` are covered.
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.index(replica) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Whether `dot` is covered.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter != 0 && dot.counter <= self.get(dot.replica)
    }

    /// Raise `replica`'s entry to at least `counter`.
    pub fn set_max(&mut self, replica: ReplicaId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.index(replica) {
            Ok(i) => {
                let e = &mut self.entries[i].1;
                *e = (*e).max(counter);
            }
            Err(i) => self.entries.insert(i, (replica, counter)),
        }
    }

    /// The next dot of `replica`, and cover it.
    pub fn increment(&mut self, replica: ReplicaId) -> Dot {
        let dot = Dot::new(replica, self.get(replica) + 1);
        self.set_max(replica, dot.counter);
        dot
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.entries.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every event covered by `self` is covered by `other`.
    pub fn leq(&self, other: &VersionVector) -> bool {
        self.entries.iter().all(|&(r, c)| c <= other.get(r))
    }

    /// The causal order of two vectors, or `None` when they are concurrent.
    pub fn partial_cmp_causal(&self, other: &VersionVector) -> Option<Ordering> {
        match (self.leq(other), other.leq(self)) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (false, false) => None,
        }
    }

    /// Total events covered: the sum of all entries (saturating).
    pub fn total(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |acc, &(_, c)| acc.saturating_add(c))
    }
}

impl Lattice for VersionVector {
    fn join(&mut self, other: &Self) {
        for &(r, c) in &other.entries {
            self.set_max(r, c);
        }
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        VersionVector::from(iter.into_iter().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    #[test]
    fn increment_and_contains() {
        let mut vv = VersionVector::new();
        assert_eq!(vv.increment(A), Dot::new(A, 1));
        assert_eq!(vv.increment(A), Dot::new(A, 2));
        assert!(vv.contains(Dot::new(A, 2)));
        assert!(!vv.contains(Dot::new(A, 3)));
        assert!(!vv.contains(Dot::new(B, 1)));
        assert!(!vv.contains(Dot::new(A, 0)));
    }

    #[test]
    fn normalises_untrusted_lists() {
        let vv = VersionVector::from(vec![(B, 3), (A, 0), (B, 5), (A, 2)]);
        assert_eq!(vv.iter().collect::<Vec<_>>(), vec![(A, 2), (B, 5)]);
    }

    #[test]
    fn causal_order() {
        let a: VersionVector = [(A, 2), (B, 1)].into_iter().collect();
        let b: VersionVector = [(A, 1), (B, 2)].into_iter().collect();
        assert_eq!(a.partial_cmp_causal(&b), None);
        let j = a.clone().joined(&b);
        assert_eq!(a.partial_cmp_causal(&j), Some(Ordering::Less));
        assert_eq!(j.get(A), 2);
        assert_eq!(j.get(B), 2);
    }
}
