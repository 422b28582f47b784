//! The last-writer-wins register, ordered by hybrid logical clock and then by
//! replica id.
//!
//! It is a multi-value register whose read picks the greatest (timestamp,
//! replica) among the concurrent values. A write replaces every value it has
//! seen, whatever their timestamps, so a write always wins over everything its
//! node has seen even when that node's wall clock is behind; timestamps only
//! decide between writes that did not see each other. A reset (key delete) is an
//! observed remove: a concurrent write survives it. Losing concurrent values are
//! kept until a later write sees them; dropping them at join time would make the
//! outcome depend on the order in which a delete and a concurrent write arrive.

use crate::{Causal, CausalContext, DotFun, Hlc, Lattice, ReplicaId};
use serde::{Deserialize, Serialize};

/// A value with the timestamp of its write.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LwwValue<V> {
    pub ts: Hlc,
    pub value: V,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "V: Serialize",
    deserialize = "V: serde::de::DeserializeOwned"
))]
pub struct LwwRegister<V> {
    inner: Causal<DotFun<LwwValue<V>>>,
}

impl<V> Default for LwwRegister<V> {
    fn default() -> Self {
        LwwRegister {
            inner: Causal {
                store: DotFun::default(),
                ctx: CausalContext::default(),
            },
        }
    }
}

impl<V: Clone + PartialEq> LwwRegister<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The winning value and its timestamp: greatest (timestamp, replica id).
    pub fn read(&self) -> Option<(&V, Hlc)> {
        self.inner
            .store
            .iter()
            .max_by_key(|(d, v)| (v.ts, d.replica))
            .map(|(_, v)| (&v.value, v.ts))
    }

    pub fn value(&self) -> Option<&V> {
        self.read().map(|(v, _)| v)
    }

    pub fn store(&self) -> &DotFun<LwwValue<V>> {
        &self.inner.store
    }

    pub fn context(&self) -> &CausalContext {
        &self.inner.ctx
    }

    /// The delta of writing `value` at `replica` with timestamp `ts`.
    pub fn write_delta(&self, replica: ReplicaId, ts: Hlc, value: V) -> Self {
        let dot = self.inner.ctx.next_dot(replica);
        let mut ctx: CausalContext = self.inner.store.iter().map(|(d, _)| d).collect();
        ctx.insert(dot);
        LwwRegister {
            inner: Causal {
                store: DotFun::single(dot, LwwValue { ts, value }),
                ctx,
            },
        }
    }

    /// The delta of removing every value seen here.
    pub fn reset_delta(&self) -> Self {
        LwwRegister {
            inner: Causal {
                store: DotFun::new(),
                ctx: self.inner.store.iter().map(|(d, _)| d).collect(),
            },
        }
    }

    /// Write `value`, returning the delta to ship.
    pub fn write(&mut self, replica: ReplicaId, ts: Hlc, value: V) -> Self {
        let delta = self.write_delta(replica, ts, value.clone());
        let dot = self.inner.ctx.next_dot(replica);
        self.inner.ctx.insert(dot);
        self.inner.store = DotFun::single(dot, LwwValue { ts, value });
        delta
    }

    /// Remove every value seen here, returning the delta to ship.
    pub fn reset(&mut self) -> Self {
        let delta = self.reset_delta();
        self.inner.store.clear();
        delta
    }
}

impl<V: Clone + PartialEq> Lattice for LwwRegister<V> {
    fn join(&mut self, other: &Self) {
        self.inner.join(&other.inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writes_greatest_timestamp_then_replica_wins() {
        let (a_id, b_id) = (ReplicaId(1), ReplicaId(2));
        let mut a = LwwRegister::new();
        let mut b = LwwRegister::new();
        let da = a.write(a_id, Hlc::new(100, 0), "a");
        let db = b.write(b_id, Hlc::new(50, 0), "b");
        a.join(&db);
        b.join(&da);
        assert_eq!(a.value(), Some(&"a"));
        assert_eq!(b.value(), Some(&"a"));
        // Same timestamp: the greater replica id wins.
        let mut c = LwwRegister::new();
        c.join(&LwwRegister::new().write_delta(a_id, Hlc::new(7, 0), "x"));
        c.join(&LwwRegister::new().write_delta(b_id, Hlc::new(7, 0), "y"));
        assert_eq!(c.value(), Some(&"y"));
    }

    #[test]
    fn a_write_that_saw_a_value_replaces_it_even_with_an_older_clock() {
        let mut a = LwwRegister::new();
        a.write(ReplicaId(1), Hlc::new(100, 0), 1);
        let mut b = a.clone();
        let d = b.write(ReplicaId(2), Hlc::new(5, 0), 2);
        a.join(&d);
        assert_eq!(a.value(), Some(&2));
    }
}
