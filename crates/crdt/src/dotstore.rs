//! Dot stores: what an object keeps of its live dots. A set of dots ([`DotSet`]),
//! a map from dot to value ([`DotFun`]) and a map from key to dot store
//! ([`DotMap`]). Joining two of them needs the contexts of both sides: a dot that
//! one side lacks but the other's context covers was removed, and stays removed.

use crate::{Context, Dot};
use serde::de::DeserializeOwned;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::hash::Hash;

/// The hasher for keyed stores: fast, and seeded per process so that keys chosen
/// by clients cannot be crafted to collide.
pub type Hasher = foldhash::fast::RandomState;

/// A dot store: the live dots of an object, with some payload per dot.
///
/// `join` follows the causal join of delta-state CRDTs: a dot survives if both
/// sides have it, or if one side has it and the other side's context has not seen
/// it (had it seen the dot and not kept it, the dot was removed there).
pub trait DotStore: Clone + Default + PartialEq {
    /// Whether the store holds no dot.
    fn is_bottom(&self) -> bool;

    /// Call `f` with every live dot.
    fn for_each_dot(&self, f: &mut dyn FnMut(Dot));

    /// Causal join: `self` (seen `ctx`) with `other` (seen `other_ctx`).
    fn join_with<C1, C2>(&mut self, ctx: &C1, other: &Self, other_ctx: &C2)
    where
        C1: Context + ?Sized,
        C2: Context + ?Sized;

    /// Drop every dot `ctx` covers: the effect of an observed remove.
    fn remove_covered<C: Context + ?Sized>(&mut self, ctx: &C);

    /// Every live dot, collected.
    fn dots(&self) -> Vec<Dot> {
        let mut out = Vec::new();
        self.for_each_dot(&mut |d| out.push(d));
        out
    }
}

/// A set of dots, sorted. Nearly always one dot, which is stored inline.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct DotSet(SmallVec<[Dot; 1]>);

impl DotSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(dot: Dot) -> Self {
        DotSet(smallvec::smallvec![dot])
    }

    pub fn contains(&self, dot: Dot) -> bool {
        self.0.binary_search(&dot).is_ok()
    }

    pub fn insert(&mut self, dot: Dot) {
        if let Err(i) = self.0.binary_search(&dot) {
            self.0.insert(i, dot);
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Dot> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Dot> for DotSet {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut v: SmallVec<[Dot; 1]> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        DotSet(v)
    }
}

impl DotStore for DotSet {
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        self.0.iter().for_each(|&d| f(d));
    }

    fn join_with<C1, C2>(&mut self, ctx: &C1, other: &Self, other_ctx: &C2)
    where
        C1: Context + ?Sized,
        C2: Context + ?Sized,
    {
        if self.0 == other.0 {
            return;
        }
        let (a, b) = (&self.0, &other.0);
        let mut out: SmallVec<[Dot; 1]> = SmallVec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) if x == y => {
                    out.push(x);
                    i += 1;
                    j += 1;
                }
                (Some(&x), Some(&y)) if x < y => {
                    if !other_ctx.contains(x) {
                        out.push(x);
                    }
                    i += 1;
                }
                (Some(&x), None) => {
                    if !other_ctx.contains(x) {
                        out.push(x);
                    }
                    i += 1;
                }
                (_, Some(&y)) => {
                    if !ctx.contains(y) {
                        out.push(y);
                    }
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.0 = out;
    }

    fn remove_covered<C: Context + ?Sized>(&mut self, ctx: &C) {
        self.0.retain(|d| !ctx.contains(*d));
    }
}

impl Serialize for DotSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for d in &self.0 {
            seq.serialize_element(d)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for DotSet {
    /// Through a `Vec`, whose visitor caps what an untrusted length may
    /// preallocate, then sorted and deduplicated.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<Dot> = Vec::deserialize(d)?;
        Ok(v.into_iter().filter(|d| d.counter != 0).collect())
    }
}

/// A map from dot to value, sorted by dot. A dot's value never changes, so two
/// sides holding the same dot hold the same value.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DotFun<V>(SmallVec<[(Dot, V); 1]>);

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        DotFun(SmallVec::new())
    }
}

impl<V> DotFun<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(dot: Dot, value: V) -> Self {
        DotFun(smallvec::smallvec![(dot, value)])
    }

    pub fn get(&self, dot: Dot) -> Option<&V> {
        self.0
            .binary_search_by_key(&dot, |(d, _)| *d)
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn insert(&mut self, dot: Dot, value: V) {
        match self.0.binary_search_by_key(&dot, |(d, _)| *d) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (dot, value)),
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Dot, &V)> + '_ {
        self.0.iter().map(|(d, v)| (*d, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl<V: Clone + PartialEq> DotStore for DotFun<V> {
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        self.0.iter().for_each(|(d, _)| f(*d));
    }

    fn join_with<C1, C2>(&mut self, ctx: &C1, other: &Self, other_ctx: &C2)
    where
        C1: Context + ?Sized,
        C2: Context + ?Sized,
    {
        if self.0 == other.0 {
            return;
        }
        let a = std::mem::take(&mut self.0);
        let b = &other.0;
        let mut out: SmallVec<[(Dot, V); 1]> = SmallVec::with_capacity(a.len().max(b.len()));
        let mut bi = b.iter().peekable();
        for (x, v) in a {
            while let Some((y, w)) = bi.next_if(|(y, _)| *y < x) {
                if !ctx.contains(*y) {
                    out.push((*y, w.clone()));
                }
            }
            if bi.next_if(|(y, _)| *y == x).is_some() || !other_ctx.contains(x) {
                out.push((x, v));
            }
        }
        for (y, w) in bi {
            if !ctx.contains(*y) {
                out.push((*y, w.clone()));
            }
        }
        self.0 = out;
    }

    fn remove_covered<C: Context + ?Sized>(&mut self, ctx: &C) {
        self.0.retain(|(d, _)| !ctx.contains(*d));
    }
}

impl<V: Serialize> Serialize for DotFun<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for e in &self.0 {
            seq.serialize_element(e)?;
        }
        seq.end()
    }
}

impl<'de, V: DeserializeOwned> Deserialize<'de> for DotFun<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v: Vec<(Dot, V)> = Vec::deserialize(d)?;
        v.retain(|(d, _)| d.counter != 0);
        v.sort_by_key(|(d, _)| *d);
        v.dedup_by_key(|(d, _)| *d);
        Ok(DotFun(v.into_iter().collect()))
    }
}

/// A map from key to dot store. In a state, no key maps to an empty store. In a
/// delta, a key may map to an empty store: it names a key whose dots the delta's
/// context removes, so that applying the delta touches only the keys it names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize + Eq + Hash, S: Serialize",
    deserialize = "K: Deserialize<'de> + Eq + Hash, S: Deserialize<'de>"
))]
pub struct DotMap<K, S>(HashMap<K, S, Hasher>);

impl<K, S> Default for DotMap<K, S> {
    fn default() -> Self {
        DotMap(HashMap::with_hasher(Hasher::default()))
    }
}

impl<K: Eq + Hash, S: PartialEq> PartialEq for DotMap<K, S> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Eq + Hash, S: Eq> Eq for DotMap<K, S> {}

impl<K: Eq + Hash + Clone, S: DotStore> DotMap<K, S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        DotMap(HashMap::with_capacity_and_hasher(n, Hasher::default()))
    }

    pub fn get(&self, key: &K) -> Option<&S> {
        self.0.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut S> {
        self.0.get_mut(key)
    }

    pub fn insert(&mut self, key: K, store: S) -> Option<S> {
        self.0.insert(key, store)
    }

    pub fn remove(&mut self, key: &K) -> Option<S> {
        self.0.remove(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> + '_ {
        self.0.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.0.keys()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Join only the keys `other` names. Equal to [`DotStore::join_with`] when
    /// `other_ctx` covers no dot of a key absent from `other`, which holds for
    /// every delta built by this crate's mutators and for joins of such deltas.
    /// Costs what `other` costs, however large `self` is.
    pub fn join_scoped<C1, C2>(&mut self, ctx: &C1, other: &Self, other_ctx: &C2)
    where
        C1: Context + ?Sized,
        C2: Context + ?Sized,
    {
        for (k, os) in &other.0 {
            match self.0.get_mut(k) {
                Some(s) => {
                    s.join_with(ctx, os, other_ctx);
                    if s.is_bottom() {
                        self.0.remove(k);
                    }
                }
                None => {
                    let mut s = os.clone();
                    s.remove_covered(ctx);
                    if !s.is_bottom() {
                        self.0.insert(k.clone(), s);
                    }
                }
            }
        }
    }

    /// Join two deltas: like [`DotStore::join_with`], but every key named on
    /// either side stays named, so the result is still a scoped delta.
    pub fn join_delta<C1, C2>(&mut self, ctx: &C1, other: &Self, other_ctx: &C2)
    where
        C1: Context + ?Sized,
        C2: Context + ?Sized,
    {
        for (k, s) in self.0.iter_mut() {
            match other.0.get(k) {
                Some(os) => s.join_with(ctx, os, other_ctx),
                None => s.remove_covered(other_ctx),
            }
        }
        for (k, os) in &other.0 {
            if !self.0.contains_key(k) {
                let mut s = os.clone();
                s.remove_covered(ctx);
                self.0.insert(k.clone(), s);
            }
        }
    }
}

impl<K: Eq + Hash + Clone, S: DotStore> DotStore for DotMap<K, S> {
    fn is_bottom(&self) -> bool {
        self.0.values().all(|s| s.is_bottom())
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        for s in self.0.values() {
            s.for_each_dot(f);
        }
    }

    fn join_with<C1, C2>(&mut self, ctx: &C1, other: &Self, other_ctx: &C2)
    where
        C1: Context + ?Sized,
        C2: Context + ?Sized,
    {
        self.0.retain(|k, s| {
            match other.0.get(k) {
                Some(os) => s.join_with(ctx, os, other_ctx),
                None => s.remove_covered(other_ctx),
            }
            !s.is_bottom()
        });
        for (k, os) in &other.0 {
            if !self.0.contains_key(k) {
                let mut s = os.clone();
                s.remove_covered(ctx);
                if !s.is_bottom() {
                    self.0.insert(k.clone(), s);
                }
            }
        }
    }

    fn remove_covered<C: Context + ?Sized>(&mut self, ctx: &C) {
        self.0.retain(|_, s| {
            s.remove_covered(ctx);
            !s.is_bottom()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CausalContext, ReplicaId};

    fn d(r: u64, c: u64) -> Dot {
        Dot::new(ReplicaId(r), c)
    }

    #[test]
    fn dotset_join_keeps_unseen_and_drops_removed() {
        // Left saw (1,1) and (1,2) but keeps only (1,2): (1,1) was removed.
        let mut left = DotSet::single(d(1, 2));
        let lctx: CausalContext = [d(1, 1), d(1, 2)].into_iter().collect();
        // Right has (1,1) and its own (2,1), never saw (1,2).
        let right: DotSet = [d(1, 1), d(2, 1)].into_iter().collect();
        let rctx: CausalContext = [d(1, 1), d(2, 1)].into_iter().collect();
        left.join_with(&lctx, &right, &rctx);
        assert_eq!(left.dots(), vec![d(1, 2), d(2, 1)]);
    }

    #[test]
    fn dotfun_join_matches_dotset_join() {
        let mut left: DotFun<&str> = DotFun::single(d(1, 2), "b");
        let lctx: CausalContext = [d(1, 1), d(1, 2)].into_iter().collect();
        let mut right = DotFun::single(d(1, 1), "a");
        right.insert(d(2, 1), "c");
        let rctx: CausalContext = [d(1, 1), d(2, 1)].into_iter().collect();
        left.join_with(&lctx, &right, &rctx);
        let got: Vec<_> = left.iter().map(|(d, v)| (d, *v)).collect();
        assert_eq!(got, vec![(d(1, 2), "b"), (d(2, 1), "c")]);
    }
}
