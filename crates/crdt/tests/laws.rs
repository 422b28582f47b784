//! The lattice laws and delta equivalence, for every type, on states reached by
//! random operation histories at a few replicas with random partial exchange.
//!
//! - join is commutative, associative and idempotent, and bottom is its unit;
//! - delta equivalence: `m(x) == x ⊔ mδ(x)` for every mutator, taking the delta
//!   in both as the type does (`apply`) and as a full join of the delta as a
//!   state; and the delta a mutator returns is the one its `_delta` twin builds;
//! - for the OR-set: the scoped `apply` of any delta equals the full join of
//!   `into_state()`, `into_state` maps the delta join to the state join, and
//!   `ORSetDelta` is a lattice itself;
//! - version vectors and causal contexts built from random entries and dots:
//!   the laws, and join is pointwise max / set union.

#[macro_use]
mod common;

use common::{config, picks, rid, schedule, Mode, Sim, Spec};
use dotkv_crdt::{CausalContext, Dot, Lattice, ORSetDelta, ReplicaId, VersionVector};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

/// Triples of states from one random history: three picked from everything it
/// produced (snapshots of any replica at any time, deltas as states, bottom),
/// and the final states of replicas 0, 1 and 2 (mod the replica count), which
/// usually hold concurrent updates, in two orders.
fn triples<S: Spec>(sched: &common::Schedule<S::Op>, picks: [Index; 3]) -> Vec<[S::State; 3]> {
    let sim = Sim::<S>::history(sched);
    let pool = sim.state_pool();
    let fin = |i: usize| sim.states[i % sim.replicas()].clone();
    vec![
        picks.map(|i| pool[i.index(pool.len())].clone()),
        [fin(0), fin(1), fin(2)],
        [fin(2), fin(0), fin(1)],
    ]
}

fn commutative<T: Lattice + Clone + PartialEq + std::fmt::Debug>(
    a: &T,
    b: &T,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.clone().joined(b), b.clone().joined(a), "a ⊔ b != b ⊔ a");
    Ok(())
}

fn associative<T: Lattice + Clone + PartialEq + std::fmt::Debug>(
    a: &T,
    b: &T,
    c: &T,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        a.clone().joined(b).joined(c),
        a.clone().joined(&b.clone().joined(c)),
        "(a ⊔ b) ⊔ c != a ⊔ (b ⊔ c)"
    );
    Ok(())
}

fn idempotent<T: Lattice + Clone + PartialEq + Default + std::fmt::Debug>(
    a: &T,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.clone().joined(a), a, "a ⊔ a != a");
    prop_assert_eq!(&a.clone().joined(&T::default()), a, "a ⊔ ⊥ != a");
    prop_assert_eq!(&T::default().joined(a), a, "⊥ ⊔ a != a");
    Ok(())
}

/// `m(x) == x ⊔ mδ(x)` at every state a history passes through, with random
/// mutators (each of the type's kinds) at random replicas.
fn delta_equivalence<S: Spec>(
    sched: &common::Schedule<S::Op>,
    ops: &[(usize, S::Op)],
) -> Result<(), TestCaseError> {
    let sim = Sim::<S>::history(sched);
    let bottom = S::State::default();
    for (i, x) in sim.snapshots.iter().chain([&bottom]).enumerate() {
        let (r, op) = &ops[i % ops.len()];
        let r = rid(*r);
        let mut mutated = x.clone();
        let shipped = S::mutate(&mut mutated, r, op);
        let delta = S::delta(x, r, op);
        prop_assert_eq!(
            &shipped,
            &delta,
            "mutator and delta mutator disagree on {:?}",
            op
        );
        let mut applied = x.clone();
        S::apply(&mut applied, &delta);
        prop_assert_eq!(&mutated, &applied, "m(x) != x ⊔ mδ(x) (apply) for {:?}", op);
        let joined = x.clone().joined(&S::delta_as_state(&delta));
        prop_assert_eq!(&mutated, &joined, "m(x) != x ⊔ mδ(x) (join) for {:?}", op);
    }
    Ok(())
}

macro_rules! laws {
    ($name:ident, $spec:ty) => {
        mod $name {
            use super::*;
            type S = $spec;

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn join_commutative(s in schedule::<S>(Mode::Grouped), p in picks()) {
                    for [a, b, c] in triples::<S>(&s, p) {
                        commutative(&a, &b)?;
                        commutative(&b, &c)?;
                    }
                }

                #[test]
                fn join_associative(s in schedule::<S>(Mode::Grouped), p in picks()) {
                    for [a, b, c] in triples::<S>(&s, p) {
                        associative(&a, &b, &c)?;
                    }
                }

                /// Every state of the history; bottom is the unit.
                #[test]
                fn join_idempotent(s in schedule::<S>(Mode::Grouped)) {
                    for a in Sim::<S>::history(&s).state_pool() {
                        idempotent(&a)?;
                    }
                }

                #[test]
                fn delta_equivalence(
                    s in schedule::<S>(Mode::Grouped),
                    ops in proptest::collection::vec((0..5usize, <S as Spec>::op()), 1..8),
                ) {
                    super::delta_equivalence::<S>(&s, &ops)?;
                }
            }
        }
    };
}

for_each_type!(laws);

/// Deltas of one OR-set history, as `ORSetDelta`s (single and grouped).
fn orset_deltas(
    sched: &common::Schedule<common::SetOp>,
) -> (Sim<common::OrSetDeltas>, Vec<ORSetDelta<u8>>) {
    let sim = Sim::<common::OrSetDeltas>::history(sched);
    let mut deltas = sim.deltas.clone();
    deltas.push(ORSetDelta::default());
    (sim, deltas)
}

proptest! {
    #![proptest_config(config())]

    /// Applying any delta of a history (scoped: touches only the elements it
    /// names) to any state of it equals the full join of the delta as a state.
    #[test]
    fn orset_apply_equals_join_of_into_state(
        s in schedule::<common::OrSetDeltas>(Mode::Grouped),
        p in picks(),
    ) {
        let (sim, deltas) = orset_deltas(&s);
        let pool = sim.state_pool();
        let x = &pool[p[0].index(pool.len())];
        let d = &deltas[p[1].index(deltas.len())];
        let mut applied = x.clone();
        applied.apply(d);
        prop_assert_eq!(applied, x.clone().joined(&d.clone().into_state()));
    }

    /// `into_state(d1 ⊔ d2) == into_state(d1) ⊔ into_state(d2)`: a group of
    /// deltas does to a state what its members do.
    #[test]
    fn orset_into_state_preserves_join(
        s in schedule::<common::OrSetDeltas>(Mode::Grouped),
        p in picks(),
    ) {
        let (_, deltas) = orset_deltas(&s);
        let d1 = &deltas[p[0].index(deltas.len())];
        let d2 = &deltas[p[1].index(deltas.len())];
        prop_assert_eq!(
            d1.clone().joined(d2).into_state(),
            d1.clone().into_state().joined(&d2.clone().into_state())
        );
    }

    #[test]
    fn orset_delta_join_commutative(s in schedule::<common::OrSetDeltas>(Mode::Grouped), p in picks()) {
        let (_, deltas) = orset_deltas(&s);
        let [a, b, _] = p.map(|i| &deltas[i.index(deltas.len())]);
        commutative(a, b)?;
    }

    #[test]
    fn orset_delta_join_associative(s in schedule::<common::OrSetDeltas>(Mode::Grouped), p in picks()) {
        let (_, deltas) = orset_deltas(&s);
        let [a, b, c] = p.map(|i| &deltas[i.index(deltas.len())]);
        associative(a, b, c)?;
    }

    #[test]
    fn orset_delta_join_idempotent(s in schedule::<common::OrSetDeltas>(Mode::Grouped), p in picks()) {
        let (_, deltas) = orset_deltas(&s);
        idempotent(&deltas[p[0].index(deltas.len())])?;
    }
}

// ------------------------------------------- vectors and contexts, built directly

fn vv() -> impl Strategy<Value = VersionVector> {
    proptest::collection::vec((0..5usize, 0..6u64), 0..6)
        .prop_map(|e| e.into_iter().map(|(r, c)| (rid(r), c)).collect())
}

fn dots() -> impl Strategy<Value = BTreeSet<Dot>> {
    proptest::collection::btree_set(
        (0..4usize, 1..10u64).prop_map(|(r, c)| Dot::new(rid(r), c)),
        0..14,
    )
}

fn as_map(v: &VersionVector) -> BTreeMap<ReplicaId, u64> {
    v.iter().collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn version_vector_laws_on_random_vectors(a in vv(), b in vv(), c in vv()) {
        commutative(&a, &b)?;
        associative(&a, &b, &c)?;
        idempotent(&a)?;
    }

    /// Join is pointwise maximum, and `leq` / `partial_cmp_causal` agree with it.
    #[test]
    fn version_vector_join_is_pointwise_max(a in vv(), b in vv()) {
        let j = a.clone().joined(&b);
        let (ma, mb) = (as_map(&a), as_map(&b));
        let mut want = ma.clone();
        for (r, c) in mb {
            let e = want.entry(r).or_insert(0);
            *e = (*e).max(c);
        }
        prop_assert_eq!(as_map(&j), want);
        prop_assert!(a.leq(&j) && b.leq(&j));
        prop_assert_eq!(a.leq(&b), j == b);
        let expected = match (a.leq(&b), b.leq(&a)) {
            (true, true) => Some(std::cmp::Ordering::Equal),
            (true, false) => Some(std::cmp::Ordering::Less),
            (false, true) => Some(std::cmp::Ordering::Greater),
            (false, false) => None,
        };
        prop_assert_eq!(a.partial_cmp_causal(&b), expected);
    }

    #[test]
    fn causal_context_laws_on_random_dot_sets(a in dots(), b in dots(), c in dots()) {
        let [a, b, c]: [CausalContext; 3] =
            [a, b, c].map(|d| d.into_iter().collect());
        commutative(&a, &b)?;
        associative(&a, &b, &c)?;
        idempotent(&a)?;
    }

    /// Join is set union, the result is canonical, and equal dot sets give
    /// equal contexts whatever order the dots came in.
    #[test]
    fn causal_context_join_is_union(a in dots(), b in dots(), seed in any::<u64>()) {
        let ca: CausalContext = a.iter().copied().collect();
        let cb: CausalContext = b.iter().copied().collect();
        let j = ca.clone().joined(&cb);
        let union: BTreeSet<Dot> = a.union(&b).copied().collect();
        prop_assert_eq!(j.dots().collect::<BTreeSet<_>>(), union.clone());
        prop_assert!(common::consistent(&j));
        let mut shuffled: Vec<Dot> = union.iter().copied().collect();
        common::XorShift(seed | 1).shuffle(&mut shuffled);
        let direct: CausalContext = shuffled.into_iter().collect();
        prop_assert_eq!(j, direct);
    }
}
