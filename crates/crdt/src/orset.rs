//! The add-wins observed-remove set. An element is present while some dot of an
//! add of it has not been seen by a remove. A remove drops only the dots it saw,
//! so an add concurrent with a remove wins. No tombstones are kept per element:
//! the causal context alone remembers what was removed.

use crate::{Causal, CausalContext, Context, DotMap, DotSet, DotStore, Lattice, ReplicaId};
use serde::{Deserialize, Serialize};
use std::hash::Hash;

/// An add-wins OR-set: elements → the dots of the adds that made them present.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "E: Serialize + Eq + Hash",
    deserialize = "E: Deserialize<'de> + Eq + Hash"
))]
pub struct ORSet<E> {
    entries: DotMap<E, DotSet>,
    ctx: CausalContext,
}

/// A delta of an [`ORSet`]: only the elements it touches, each with the dots it
/// adds (possibly none), and the dots it has seen of them. Applying it costs what
/// the delta costs, not what the set costs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "E: Serialize + Eq + Hash",
    deserialize = "E: Deserialize<'de> + Eq + Hash"
))]
pub struct ORSetDelta<E> {
    pub entries: DotMap<E, DotSet>,
    pub ctx: CausalContext,
}

impl<E: Eq + Hash> PartialEq for ORSet<E> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.ctx == other.ctx
    }
}

impl<E: Eq + Hash> PartialEq for ORSetDelta<E> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.ctx == other.ctx
    }
}

impl<E> Default for ORSet<E> {
    fn default() -> Self {
        ORSet {
            entries: DotMap::default(),
            ctx: CausalContext::default(),
        }
    }
}

impl<E> Default for ORSetDelta<E> {
    fn default() -> Self {
        ORSetDelta {
            entries: DotMap::default(),
            ctx: CausalContext::default(),
        }
    }
}

impl<E: Clone + Eq + Hash> ORSet<E> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, e: &E) -> bool {
        self.entries.contains_key(e)
    }

    pub fn elements(&self) -> impl Iterator<Item = &E> + '_ {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    pub fn entries(&self) -> &DotMap<E, DotSet> {
        &self.entries
    }

    /// The delta of adding `e` at `replica`: one new dot, replacing the dots of
    /// `e` seen here.
    pub fn add_delta(&self, replica: ReplicaId, e: E) -> ORSetDelta<E> {
        let dot = self.ctx.next_dot(replica);
        let mut ctx: CausalContext = self.dots_of(&e).collect();
        ctx.insert(dot);
        let mut entries = DotMap::with_capacity(1);
        entries.insert(e, DotSet::single(dot));
        ORSetDelta { entries, ctx }
    }

    /// The delta of removing `e`: the dots of `e` seen here, and none added.
    pub fn remove_delta(&self, e: E) -> ORSetDelta<E> {
        let ctx: CausalContext = self.dots_of(&e).collect();
        let mut entries = DotMap::with_capacity(1);
        entries.insert(e, DotSet::new());
        ORSetDelta { entries, ctx }
    }

    /// The delta of removing every element seen here.
    pub fn clear_delta(&self) -> ORSetDelta<E> {
        let mut entries = DotMap::with_capacity(self.entries.len());
        let mut ctx = CausalContext::new();
        for (e, dots) in self.entries.iter() {
            dots.iter().for_each(|d| ctx.insert(d));
            entries.insert(e.clone(), DotSet::new());
        }
        ORSetDelta { entries, ctx }
    }

    /// Add `e`, returning the delta to ship.
    pub fn add(&mut self, replica: ReplicaId, e: E) -> ORSetDelta<E> {
        let delta = self.add_delta(replica, e.clone());
        let dot = self.ctx.next_dot(replica);
        self.ctx.insert(dot);
        self.entries.insert(e, DotSet::single(dot));
        delta
    }

    /// Remove `e` (the adds seen here), returning the delta to ship.
    pub fn remove(&mut self, e: &E) -> ORSetDelta<E> {
        let delta = self.remove_delta(e.clone());
        self.entries.remove(e);
        delta
    }

    /// Remove every element seen here, returning the delta to ship.
    pub fn clear(&mut self) -> ORSetDelta<E> {
        let delta = self.clear_delta();
        self.entries = DotMap::new();
        delta
    }

    /// Apply a delta. Costs what the delta costs.
    pub fn apply(&mut self, delta: &ORSetDelta<E>) {
        self.entries
            .join_scoped(&self.ctx, &delta.entries, &delta.ctx);
        self.ctx.join(&delta.ctx);
    }

    fn dots_of<'a>(&'a self, e: &E) -> impl Iterator<Item = crate::Dot> + 'a {
        self.entries.get(e).into_iter().flat_map(|dots| dots.iter())
    }
}

impl<E: Clone + Eq + Hash> ORSetDelta<E> {
    /// The delta as a state, for a full join.
    pub fn into_state(self) -> ORSet<E> {
        let mut entries = self.entries;
        entries.remove_covered(&NothingSeen);
        let mut ctx = self.ctx;
        entries.for_each_dot(&mut |d| ctx.insert(d));
        ORSet { entries, ctx }
    }
}

/// A context that has seen nothing; `remove_covered` with it only prunes empty keys.
struct NothingSeen;

impl Context for NothingSeen {
    fn contains(&self, _: crate::Dot) -> bool {
        false
    }
}

impl<E: Clone + Eq + Hash> Lattice for ORSet<E> {
    fn join(&mut self, other: &Self) {
        self.entries
            .join_with(&self.ctx, &other.entries, &other.ctx);
        self.ctx.join(&other.ctx);
    }
}

impl<E: Clone + Eq + Hash> Lattice for ORSetDelta<E> {
    fn join(&mut self, other: &Self) {
        self.entries
            .join_delta(&self.ctx, &other.entries, &other.ctx);
        self.ctx.join(&other.ctx);
    }
}

impl<E: Clone + Eq + Hash> From<ORSet<E>> for Causal<DotMap<E, DotSet>> {
    fn from(s: ORSet<E>) -> Self {
        Causal {
            store: s.entries,
            ctx: s.ctx,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    #[test]
    fn concurrent_add_wins_over_remove() {
        let mut a = ORSet::new();
        a.add(A, "x");
        let mut b = a.clone();
        let rm = b.remove(&"x");
        let add = a.add(A, "x");
        a.apply(&rm);
        b.apply(&add);
        assert!(a.contains(&"x"));
        assert_eq!(a, b);
    }

    #[test]
    fn remove_of_observed_add() {
        let mut a = ORSet::new();
        let add = a.add(A, 1u32);
        let mut b = ORSet::new();
        b.apply(&add);
        let rm = b.remove(&1);
        a.apply(&rm);
        assert!(!a.contains(&1));
        assert!(a.is_empty());
        // A delta that arrives late and was removed stays removed.
        let mut c = ORSet::new();
        c.apply(&rm);
        c.apply(&add);
        assert!(c.is_empty());
        let mut d = ORSet::new();
        d.add(B, 2u32);
        let clear = d.clear();
        assert!(d.is_empty());
        assert_eq!(clear.entries.len(), 1);
    }
}
