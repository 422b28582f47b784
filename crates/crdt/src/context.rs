//! Causal contexts: the set of dots a state has seen, as a version vector plus a
//! "dot cloud" of dots that are not contiguous with it yet.

use crate::{Dot, Lattice, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Anything that can say whether a dot has been seen.
///
/// Objects kept by a node under causal delivery use the node's [`VersionVector`]
/// as their context; free-standing states and deltas carry a [`CausalContext`].
pub trait Context {
    fn contains(&self, dot: Dot) -> bool;
}

impl Context for VersionVector {
    #[inline]
    fn contains(&self, dot: Dot) -> bool {
        VersionVector::contains(self, dot)
    }
}

/// A set of dots, kept compact: a version vector for the contiguous prefix of each
/// replica, and a cloud of the dots beyond it.
///
/// The representation is canonical: no cloud dot is covered by the vector or
/// directly follows it, so two contexts holding the same dots compare equal.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(from = "RawContext")]
pub struct CausalContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

#[derive(Deserialize)]
struct RawContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl From<RawContext> for CausalContext {
    fn from(raw: RawContext) -> Self {
        let mut ctx = CausalContext {
            vv: raw.vv,
            cloud: raw.cloud,
        };
        ctx.cloud.retain(|d| d.counter != 0);
        ctx.compact();
        ctx
    }
}

impl From<VersionVector> for CausalContext {
    fn from(vv: VersionVector) -> Self {
        CausalContext {
            vv,
            cloud: BTreeSet::new(),
        }
    }
}

impl Context for CausalContext {
    #[inline]
    fn contains(&self, dot: Dot) -> bool {
        self.vv.contains(dot) || (!self.cloud.is_empty() && self.cloud.contains(&dot))
    }
}

impl CausalContext {
    pub fn new() -> Self {
        Self::default()
    }

    /// The contiguous part.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The dots beyond the contiguous part.
    pub fn cloud(&self) -> &BTreeSet<Dot> {
        &self.cloud
    }

    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// Add one dot, keeping the representation compact.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let have = self.vv.get(dot.replica);
        if dot.counter <= have {
            return;
        }
        if dot.counter == have + 1 {
            self.vv.set_max(dot.replica, dot.counter);
            self.absorb(dot.replica);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Move the cloud dots of `replica` that are now contiguous into the vector.
    fn absorb(&mut self, replica: ReplicaId) {
        if self.cloud.is_empty() {
            return;
        }
        let mut have = self.vv.get(replica);
        loop {
            let next = Dot::new(replica, have + 1);
            if self.cloud.remove(&next) {
                have += 1;
            } else {
                break;
            }
        }
        self.vv.set_max(replica, have);
    }

    /// Restore the canonical form after the vector grew.
    pub fn compact(&mut self) {
        if self.cloud.is_empty() {
            return;
        }
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let have = self.vv.get(dot.replica);
            if dot.counter <= have {
                continue;
            }
            if dot.counter == have + 1 {
                self.vv.set_max(dot.replica, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
    }

    /// The next dot `replica` should use: one past every dot of it seen here.
    pub fn next_dot(&self, replica: ReplicaId) -> Dot {
        let in_cloud = self
            .cloud
            .range(Dot::new(replica, 0)..=Dot::new(replica, u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        Dot::new(replica, self.vv.get(replica).max(in_cloud) + 1)
    }

    /// Every dot in the context. Only meant for small contexts (tests, deltas):
    /// a long history makes this long too.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.vv
            .iter()
            .flat_map(|(r, c)| (1..=c).map(move |i| Dot::new(r, i)))
            .chain(self.cloud.iter().copied())
    }
}

impl Lattice for CausalContext {
    fn join(&mut self, other: &Self) {
        self.vv.join(&other.vv);
        // Only our own cloud can have become contiguous with the grown vector;
        // `compact` returns at once when it is empty, the usual case.
        self.compact();
        // `insert` extends the vector in place when a dot is the next one (a
        // delta's single dot, usually), so the cloud is neither allocated nor
        // rebuilt for it.
        for &dot in &other.cloud {
            self.insert(dot);
        }
    }
}

impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut ctx = CausalContext::new();
        for d in iter {
            ctx.insert(d);
        }
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ReplicaId = ReplicaId(7);

    #[test]
    fn out_of_order_dots_compact() {
        let mut ctx = CausalContext::new();
        ctx.insert(Dot::new(A, 3));
        ctx.insert(Dot::new(A, 2));
        assert_eq!(ctx.vv().get(A), 0);
        assert_eq!(ctx.cloud().len(), 2);
        ctx.insert(Dot::new(A, 1));
        assert_eq!(ctx.vv().get(A), 3);
        assert!(ctx.cloud().is_empty());
        assert_eq!(ctx.next_dot(A), Dot::new(A, 4));
    }

    #[test]
    fn join_is_canonical() {
        let a: CausalContext = [Dot::new(A, 1), Dot::new(A, 3)].into_iter().collect();
        let b: CausalContext = [Dot::new(A, 2)].into_iter().collect();
        let j = a.clone().joined(&b);
        let direct: CausalContext = (1..=3).map(|i| Dot::new(A, i)).collect();
        assert_eq!(j, direct);
        assert_eq!(j.next_dot(A), Dot::new(A, 4));
        assert_eq!(a.next_dot(A), Dot::new(A, 4));
    }
}
