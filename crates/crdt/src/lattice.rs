//! The join-semilattice trait every CRDT state (and every delta) implements.

/// A join-semilattice: a state that replicas exchange and merge.
///
/// `join` must be
/// - commutative: `a ⊔ b == b ⊔ a`,
/// - associative: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`,
/// - idempotent: `a ⊔ a == a`.
///
/// Those three laws are what make delivery order, duplication and re-sending
/// harmless; `tests/laws.rs` checks each of them for every type. Deltas produced
/// by a type's mutators are states of the same lattice, so for a mutator `m` with
/// delta mutator `mδ`, `m(x) == x ⊔ mδ(x)` (delta equivalence, also tested).
pub trait Lattice {
    /// Merge `other` into `self`, giving the least upper bound of both.
    fn join(&mut self, other: &Self);

    /// The join of two states, by value.
    fn joined(mut self, other: &Self) -> Self
    where
        Self: Sized,
    {
        self.join(other);
        self
    }
}
