//! A dot store together with the causal context that says what it has seen: the
//! general form of every causal CRDT state and delta.

use crate::{CausalContext, DotStore, Lattice};
use serde::{Deserialize, Serialize};

/// A causal CRDT: live dots in `store`, everything ever seen in `ctx`.
///
/// Invariant: every dot of `store` is in `ctx`. Mutators keep it; [`Causal::new`]
/// repairs it for states built by hand or decoded from untrusted bytes.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct Causal<S> {
    pub store: S,
    pub ctx: CausalContext,
}

impl<S: DotStore> Causal<S> {
    pub fn new(store: S, mut ctx: CausalContext) -> Self {
        store.for_each_dot(&mut |d| ctx.insert(d));
        Causal { store, ctx }
    }

    pub fn is_bottom(&self) -> bool {
        self.store.is_bottom() && self.ctx.is_empty()
    }
}

impl<S: DotStore> Lattice for Causal<S> {
    fn join(&mut self, other: &Self) {
        self.store.join_with(&self.ctx, &other.store, &other.ctx);
        self.ctx.join(&other.ctx);
    }
}
