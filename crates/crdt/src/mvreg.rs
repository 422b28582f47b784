//! The multi-value register: a write replaces every value it has seen, so
//! concurrent writes are all kept until a write that saw them replaces them.

use crate::{Causal, CausalContext, DotFun, Lattice, ReplicaId};
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "V: Serialize",
    deserialize = "V: serde::de::DeserializeOwned"
))]
pub struct MVRegister<V> {
    inner: Causal<DotFun<V>>,
}

impl<V> Default for MVRegister<V> {
    fn default() -> Self {
        MVRegister {
            inner: Causal {
                store: DotFun::default(),
                ctx: CausalContext::default(),
            },
        }
    }
}

impl<V: Clone + PartialEq> MVRegister<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current values, oldest dot first; empty if never written or reset.
    pub fn values(&self) -> Vec<&V> {
        self.inner.store.iter().map(|(_, v)| v).collect()
    }

    pub fn store(&self) -> &DotFun<V> {
        &self.inner.store
    }

    pub fn context(&self) -> &CausalContext {
        &self.inner.ctx
    }

    /// The delta of writing `value` at `replica`.
    pub fn write_delta(&self, replica: ReplicaId, value: V) -> Self {
        let dot = self.inner.ctx.next_dot(replica);
        let mut ctx: CausalContext = self.inner.store.iter().map(|(d, _)| d).collect();
        ctx.insert(dot);
        MVRegister {
            inner: Causal {
                store: DotFun::single(dot, value),
                ctx,
            },
        }
    }

    /// The delta of removing every value seen here.
    pub fn reset_delta(&self) -> Self {
        MVRegister {
            inner: Causal {
                store: DotFun::new(),
                ctx: self.inner.store.iter().map(|(d, _)| d).collect(),
            },
        }
    }

    /// Write `value`, returning the delta to ship.
    pub fn write(&mut self, replica: ReplicaId, value: V) -> Self {
        let delta = self.write_delta(replica, value.clone());
        let dot = self.inner.ctx.next_dot(replica);
        self.inner.ctx.insert(dot);
        self.inner.store = DotFun::single(dot, value);
        delta
    }

    /// Remove every value seen here, returning the delta to ship.
    pub fn reset(&mut self) -> Self {
        let delta = self.reset_delta();
        self.inner.store.clear();
        delta
    }
}

impl<V: Clone + PartialEq> Lattice for MVRegister<V> {
    fn join(&mut self, other: &Self) {
        self.inner.join(&other.inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writes_are_kept_until_overwritten() {
        let (a_id, b_id) = (ReplicaId(1), ReplicaId(2));
        let mut a = MVRegister::new();
        let mut b = MVRegister::new();
        let da = a.write(a_id, "a");
        let db = b.write(b_id, "b");
        a.join(&db);
        b.join(&da);
        assert_eq!(a, b);
        assert_eq!(a.values(), vec![&"a", &"b"]);
        let dc = a.write(a_id, "c");
        b.join(&dc);
        assert_eq!(b.values(), vec![&"c"]);
    }
}
