//! The enable-wins flag: enabled while some enable has not been seen by a
//! disable. An enable concurrent with a disable wins.

use crate::{Causal, CausalContext, DotSet, DotStore, Lattice, ReplicaId};
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct EWFlag {
    inner: Causal<DotSet>,
}

impl EWFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn value(&self) -> bool {
        !self.inner.store.is_bottom()
    }

    pub fn store(&self) -> &DotSet {
        &self.inner.store
    }

    pub fn context(&self) -> &CausalContext {
        &self.inner.ctx
    }

    pub fn enable_delta(&self, replica: ReplicaId) -> Self {
        let dot = self.inner.ctx.next_dot(replica);
        let mut ctx: CausalContext = self.inner.store.iter().collect();
        ctx.insert(dot);
        EWFlag {
            inner: Causal {
                store: DotSet::single(dot),
                ctx,
            },
        }
    }

    pub fn disable_delta(&self) -> Self {
        EWFlag {
            inner: Causal {
                store: DotSet::new(),
                ctx: self.inner.store.iter().collect(),
            },
        }
    }

    /// Enable, returning the delta to ship.
    pub fn enable(&mut self, replica: ReplicaId) -> Self {
        let delta = self.enable_delta(replica);
        let dot = self.inner.ctx.next_dot(replica);
        self.inner.ctx.insert(dot);
        self.inner.store = DotSet::single(dot);
        delta
    }

    /// Disable (the enables seen here), returning the delta to ship. This is
    /// also the flag's reset.
    pub fn disable(&mut self) -> Self {
        let delta = self.disable_delta();
        self.inner.store = DotSet::new();
        delta
    }
}

impl Lattice for EWFlag {
    fn join(&mut self, other: &Self) {
        self.inner.join(&other.inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_wins() {
        let mut a = EWFlag::new();
        a.enable(ReplicaId(1));
        let mut b = a.clone();
        let off = b.disable();
        let on = a.enable(ReplicaId(1));
        a.join(&off);
        b.join(&on);
        assert!(a.value() && b.value());
        assert_eq!(a, b);
        let off = a.disable();
        b.join(&off);
        assert!(!b.value());
    }
}
