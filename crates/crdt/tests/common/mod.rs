//! Shared machinery for the property tests: one [`Spec`] per type (its
//! operations, how to run them, and a reference model of its value), random
//! schedules of operations and message delivery over a few replicas, and a
//! simulator that runs a schedule while checking every replica against the model.
//!
//! The reference model knows nothing of dots, contexts or dot stores. Each
//! operation gets an id, a bit of a `u128`, and each replica knows a set of ids.
//! The delta of an operation carries a set of ids to whoever receives it (the
//! operation itself, plus, for the counters, the earlier operations its running
//! totals imply), and a full-state merge carries everything the sender knows. A
//! type's model computes the value a replica should show from the operations it
//! knows, following the type's specification.

#![allow(dead_code)]

use dotkv_crdt::{
    CausalContext, Context, Dot, EWFlag, GCounter, Hlc, Lattice, LwwRegister, MVRegister, ORSet,
    ORSetDelta, PNCounter, ReplicaId, VersionVector,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Debug;

/// Cases per property.
pub const CASES: u32 = 1000;

/// Longest schedule. Every operation takes a bit of a `u128` in the model, so
/// a schedule holds at most 128 operations.
pub const MAX_STEPS: usize = 80;

pub fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

/// A set of operation ids: bit `i` is operation `i`.
pub type Known = u128;

pub fn bit(i: usize) -> Known {
    1 << i
}

/// The ids in `k`, smallest first.
pub fn bits(mut k: Known) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (k != 0).then(|| {
            let i = k.trailing_zeros() as usize;
            k &= k - 1;
            i
        })
    })
}

/// The replica id of replica `i`: large, and not in the order of `i`, so that
/// nothing can lean on ids being small or on index order matching id order.
pub fn rid(i: usize) -> ReplicaId {
    ReplicaId((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// One operation as the model remembers it.
#[derive(Clone, Debug)]
pub struct ModelOp<R> {
    pub replica: usize,
    pub rec: R,
}

/// A type under test, its operations and its reference model.
pub trait Spec: 'static {
    type State: Lattice + Clone + PartialEq + Debug + Default + Serialize + DeserializeOwned;
    type Delta: Lattice + Clone + PartialEq + Debug + Serialize + DeserializeOwned;
    type Op: Clone + Debug + 'static;
    type Value: PartialEq + Debug;
    /// What the model remembers of one operation.
    type Rec: Clone + Debug;

    fn op() -> BoxedStrategy<Self::Op>;
    /// Run `op` at replica `r`, returning the delta to ship.
    fn mutate(s: &mut Self::State, r: ReplicaId, op: &Self::Op) -> Self::Delta;
    /// The delta of `op`, leaving `s` alone.
    fn delta(s: &Self::State, r: ReplicaId, op: &Self::Op) -> Self::Delta;
    /// Take in a received delta.
    fn apply(s: &mut Self::State, d: &Self::Delta);
    /// A delta as a state of the lattice, for a full join.
    fn delta_as_state(d: &Self::Delta) -> Self::State;
    fn value(s: &Self::State) -> Self::Value;

    /// The model's record of `op` run at replica `at`, which knows `known`, and
    /// the ids its delta carries besides its own.
    fn record(
        ops: &[ModelOp<Self::Rec>],
        known: Known,
        at: usize,
        op: &Self::Op,
    ) -> (Self::Rec, Known);
    /// The value of a replica that knows `known`.
    fn model(ops: &[ModelOp<Self::Rec>], known: Known) -> Self::Value;
}

/// The model of a run: every operation, and what each replica knows.
pub struct Model<S: Spec> {
    pub ops: Vec<ModelOp<S::Rec>>,
    pub known: Vec<Known>,
}

impl<S: Spec> Model<S> {
    pub fn new(replicas: usize) -> Self {
        Model {
            ops: Vec::new(),
            known: vec![0; replicas],
        }
    }

    /// Record `op` run at `at`; returns what its delta carries.
    pub fn op(&mut self, at: usize, op: &S::Op) -> Known {
        let id = self.ops.len();
        assert!(
            id < Known::BITS as usize,
            "the model holds at most 128 operations"
        );
        let (rec, extra) = S::record(&self.ops, self.known[at], at, op);
        self.ops.push(ModelOp { replica: at, rec });
        let carry = extra | bit(id);
        self.known[at] |= carry;
        carry
    }

    pub fn value(&self, at: usize) -> S::Value {
        S::model(&self.ops, self.known[at])
    }

    pub fn everything(&self) -> Known {
        match self.ops.len() {
            n if n == Known::BITS as usize => !0,
            n => bit(n) - 1,
        }
    }
}

/// Observed-remove types (OR-set, registers, flag): an operation may add a tag
/// carrying `adds`, and it removes every tag live at its replica that it saw
/// (`obs`). A write or an enable sees all live tags; an add or remove of an
/// element sees that element's live tags.
#[derive(Clone, Debug)]
pub struct ObsRec<P> {
    pub adds: Option<P>,
    pub obs: Known,
}

/// The tags live at a replica that knows `known`: adds it knows that no
/// operation it knows has seen.
pub fn live<P>(ops: &[ModelOp<ObsRec<P>>], known: Known) -> Known {
    let (mut adds, mut removed) = (0, 0);
    for i in bits(known) {
        if ops[i].rec.adds.is_some() {
            adds |= bit(i);
        }
        removed |= ops[i].rec.obs;
    }
    adds & !removed
}

/// The operations of `at` before now, of which `same` holds.
fn own_earlier<R>(ops: &[ModelOp<R>], at: usize, same: impl Fn(&R) -> bool) -> Known {
    ops.iter()
        .enumerate()
        .filter(|(_, o)| o.replica == at && same(&o.rec))
        .fold(0, |k, (i, _)| k | bit(i))
}

// ---------------------------------------------------------------- OR-set

#[derive(Clone, Debug)]
pub enum SetOp {
    Add(u8),
    Remove(u8),
    Clear,
}

fn set_op() -> BoxedStrategy<SetOp> {
    prop_oneof![
        5 => (0..6u8).prop_map(SetOp::Add),
        3 => (0..6u8).prop_map(SetOp::Remove),
        1 => Just(SetOp::Clear),
    ]
    .boxed()
}

fn set_record(ops: &[ModelOp<ObsRec<u8>>], known: Known, op: &SetOp) -> (ObsRec<u8>, Known) {
    let live = live(ops, known);
    let of = |e: u8| {
        bits(live)
            .filter(|&i| ops[i].rec.adds == Some(e))
            .fold(0, |k, i| k | bit(i))
    };
    let rec = match *op {
        SetOp::Add(e) => ObsRec {
            adds: Some(e),
            obs: of(e),
        },
        SetOp::Remove(e) => ObsRec {
            adds: None,
            obs: of(e),
        },
        SetOp::Clear => ObsRec {
            adds: None,
            obs: live,
        },
    };
    (rec, 0)
}

/// An element is present iff some add of it is live.
fn set_model(ops: &[ModelOp<ObsRec<u8>>], known: Known) -> BTreeSet<u8> {
    bits(live(ops, known))
        .filter_map(|i| ops[i].rec.adds)
        .collect()
}

/// The OR-set shipping [`ORSetDelta`]s, taken in with the scoped `apply` and
/// grouped with the delta join.
pub struct OrSetDeltas;

impl Spec for OrSetDeltas {
    type State = ORSet<u8>;
    type Delta = ORSetDelta<u8>;
    type Op = SetOp;
    type Value = BTreeSet<u8>;
    type Rec = ObsRec<u8>;

    fn op() -> BoxedStrategy<SetOp> {
        set_op()
    }
    fn mutate(s: &mut ORSet<u8>, r: ReplicaId, op: &SetOp) -> ORSetDelta<u8> {
        match *op {
            SetOp::Add(e) => s.add(r, e),
            SetOp::Remove(e) => s.remove(&e),
            SetOp::Clear => s.clear(),
        }
    }
    fn delta(s: &ORSet<u8>, r: ReplicaId, op: &SetOp) -> ORSetDelta<u8> {
        match *op {
            SetOp::Add(e) => s.add_delta(r, e),
            SetOp::Remove(e) => s.remove_delta(e),
            SetOp::Clear => s.clear_delta(),
        }
    }
    fn apply(s: &mut ORSet<u8>, d: &ORSetDelta<u8>) {
        s.apply(d);
    }
    fn delta_as_state(d: &ORSetDelta<u8>) -> ORSet<u8> {
        d.clone().into_state()
    }
    fn value(s: &ORSet<u8>) -> BTreeSet<u8> {
        s.elements().copied().collect()
    }
    fn record(
        ops: &[ModelOp<ObsRec<u8>>],
        known: Known,
        _: usize,
        op: &SetOp,
    ) -> (ObsRec<u8>, Known) {
        set_record(ops, known, op)
    }
    fn model(ops: &[ModelOp<ObsRec<u8>>], known: Known) -> BTreeSet<u8> {
        set_model(ops, known)
    }
}

/// The OR-set shipping its deltas as states (`into_state`), taken in and
/// grouped with the full join.
pub struct OrSetStates;

impl Spec for OrSetStates {
    type State = ORSet<u8>;
    type Delta = ORSet<u8>;
    type Op = SetOp;
    type Value = BTreeSet<u8>;
    type Rec = ObsRec<u8>;

    fn op() -> BoxedStrategy<SetOp> {
        set_op()
    }
    fn mutate(s: &mut ORSet<u8>, r: ReplicaId, op: &SetOp) -> ORSet<u8> {
        OrSetDeltas::mutate(s, r, op).into_state()
    }
    fn delta(s: &ORSet<u8>, r: ReplicaId, op: &SetOp) -> ORSet<u8> {
        OrSetDeltas::delta(s, r, op).into_state()
    }
    fn apply(s: &mut ORSet<u8>, d: &ORSet<u8>) {
        s.join(d);
    }
    fn delta_as_state(d: &ORSet<u8>) -> ORSet<u8> {
        d.clone()
    }
    fn value(s: &ORSet<u8>) -> BTreeSet<u8> {
        s.elements().copied().collect()
    }
    fn record(
        ops: &[ModelOp<ObsRec<u8>>],
        known: Known,
        _: usize,
        op: &SetOp,
    ) -> (ObsRec<u8>, Known) {
        set_record(ops, known, op)
    }
    fn model(ops: &[ModelOp<ObsRec<u8>>], known: Known) -> BTreeSet<u8> {
        set_model(ops, known)
    }
}

// ---------------------------------------------------------------- MVRegister

#[derive(Clone, Debug)]
pub enum RegOp<V> {
    Write(V),
    Reset,
}

/// Operations that replace every live tag (register writes and resets, flag
/// enables and disables): the record of one adding `adds`.
fn replace_all<P>(ops: &[ModelOp<ObsRec<P>>], known: Known, adds: Option<P>) -> (ObsRec<P>, Known) {
    (
        ObsRec {
            adds,
            obs: live(ops, known),
        },
        0,
    )
}

pub struct MvReg;

impl Spec for MvReg {
    type State = MVRegister<u8>;
    type Delta = MVRegister<u8>;
    type Op = RegOp<u8>;
    /// The values, sorted.
    type Value = Vec<u8>;
    type Rec = ObsRec<u8>;

    fn op() -> BoxedStrategy<RegOp<u8>> {
        prop_oneof![4 => (0..4u8).prop_map(RegOp::Write), 1 => Just(RegOp::Reset)].boxed()
    }
    fn mutate(s: &mut MVRegister<u8>, r: ReplicaId, op: &RegOp<u8>) -> MVRegister<u8> {
        match *op {
            RegOp::Write(v) => s.write(r, v),
            RegOp::Reset => s.reset(),
        }
    }
    fn delta(s: &MVRegister<u8>, r: ReplicaId, op: &RegOp<u8>) -> MVRegister<u8> {
        match *op {
            RegOp::Write(v) => s.write_delta(r, v),
            RegOp::Reset => s.reset_delta(),
        }
    }
    fn apply(s: &mut MVRegister<u8>, d: &MVRegister<u8>) {
        s.join(d);
    }
    fn delta_as_state(d: &MVRegister<u8>) -> MVRegister<u8> {
        d.clone()
    }
    fn value(s: &MVRegister<u8>) -> Vec<u8> {
        let mut v: Vec<u8> = s.values().into_iter().copied().collect();
        v.sort_unstable();
        v
    }
    fn record(
        ops: &[ModelOp<ObsRec<u8>>],
        known: Known,
        _: usize,
        op: &RegOp<u8>,
    ) -> (ObsRec<u8>, Known) {
        match *op {
            RegOp::Write(v) => replace_all(ops, known, Some(v)),
            RegOp::Reset => replace_all(ops, known, None),
        }
    }
    /// The writes that no later write or reset has seen.
    fn model(ops: &[ModelOp<ObsRec<u8>>], known: Known) -> Vec<u8> {
        let mut v: Vec<u8> = bits(live(ops, known))
            .filter_map(|i| ops[i].rec.adds)
            .collect();
        v.sort_unstable();
        v
    }
}

// ---------------------------------------------------------------- LwwRegister

#[derive(Clone, Debug)]
pub enum LwwOp {
    /// A write with a timestamp drawn from a tiny range: equal timestamps, and
    /// timestamps behind what the writer has already seen, are common.
    Write(Hlc, u8),
    Reset,
}

pub struct Lww;

impl Spec for Lww {
    type State = LwwRegister<u8>;
    type Delta = LwwRegister<u8>;
    type Op = LwwOp;
    type Value = Option<(u8, Hlc)>;
    type Rec = ObsRec<(Hlc, u8)>;

    fn op() -> BoxedStrategy<LwwOp> {
        let ts = (0..4u64, 0..2u64).prop_map(|(p, l)| Hlc::new(p, l));
        prop_oneof![
            4 => (ts, 0..4u8).prop_map(|(t, v)| LwwOp::Write(t, v)),
            1 => Just(LwwOp::Reset),
        ]
        .boxed()
    }
    fn mutate(s: &mut LwwRegister<u8>, r: ReplicaId, op: &LwwOp) -> LwwRegister<u8> {
        match *op {
            LwwOp::Write(t, v) => s.write(r, t, v),
            LwwOp::Reset => s.reset(),
        }
    }
    fn delta(s: &LwwRegister<u8>, r: ReplicaId, op: &LwwOp) -> LwwRegister<u8> {
        match *op {
            LwwOp::Write(t, v) => s.write_delta(r, t, v),
            LwwOp::Reset => s.reset_delta(),
        }
    }
    fn apply(s: &mut LwwRegister<u8>, d: &LwwRegister<u8>) {
        s.join(d);
    }
    fn delta_as_state(d: &LwwRegister<u8>) -> LwwRegister<u8> {
        d.clone()
    }
    fn value(s: &LwwRegister<u8>) -> Option<(u8, Hlc)> {
        s.read().map(|(v, t)| (*v, t))
    }
    fn record(
        ops: &[ModelOp<ObsRec<(Hlc, u8)>>],
        known: Known,
        _: usize,
        op: &LwwOp,
    ) -> (ObsRec<(Hlc, u8)>, Known) {
        match *op {
            LwwOp::Write(t, v) => replace_all(ops, known, Some((t, v))),
            LwwOp::Reset => replace_all(ops, known, None),
        }
    }
    /// Among the writes no later write or reset has seen, the greatest
    /// (timestamp, writer's replica id). Two live writes of one replica exist
    /// only while a delta that replaced the earlier one is still in flight;
    /// between those, on equal timestamps, the later one wins.
    fn model(ops: &[ModelOp<ObsRec<(Hlc, u8)>>], known: Known) -> Option<(u8, Hlc)> {
        bits(live(ops, known))
            .filter_map(|i| ops[i].rec.adds.map(|(t, v)| (t, rid(ops[i].replica), i, v)))
            .max()
            .map(|(t, _, _, v)| (v, t))
    }
}

// ---------------------------------------------------------------- EWFlag

#[derive(Clone, Debug)]
pub enum FlagOp {
    Enable,
    Disable,
}

pub struct Flag;

impl Spec for Flag {
    type State = EWFlag;
    type Delta = EWFlag;
    type Op = FlagOp;
    type Value = bool;
    type Rec = ObsRec<()>;

    fn op() -> BoxedStrategy<FlagOp> {
        prop_oneof![Just(FlagOp::Enable), Just(FlagOp::Disable)].boxed()
    }
    fn mutate(s: &mut EWFlag, r: ReplicaId, op: &FlagOp) -> EWFlag {
        match op {
            FlagOp::Enable => s.enable(r),
            FlagOp::Disable => s.disable(),
        }
    }
    fn delta(s: &EWFlag, r: ReplicaId, op: &FlagOp) -> EWFlag {
        match op {
            FlagOp::Enable => s.enable_delta(r),
            FlagOp::Disable => s.disable_delta(),
        }
    }
    fn apply(s: &mut EWFlag, d: &EWFlag) {
        s.join(d);
    }
    fn delta_as_state(d: &EWFlag) -> EWFlag {
        d.clone()
    }
    fn value(s: &EWFlag) -> bool {
        s.value()
    }
    fn record(
        ops: &[ModelOp<ObsRec<()>>],
        known: Known,
        _: usize,
        op: &FlagOp,
    ) -> (ObsRec<()>, Known) {
        match op {
            FlagOp::Enable => replace_all(ops, known, Some(())),
            FlagOp::Disable => replace_all(ops, known, None),
        }
    }
    /// Enabled iff some enable has not been seen by a disable (or a later enable).
    fn model(ops: &[ModelOp<ObsRec<()>>], known: Known) -> bool {
        live(ops, known) != 0
    }
}

// ---------------------------------------------------------------- GCounter

pub struct GCount;

impl Spec for GCount {
    type State = GCounter;
    type Delta = GCounter;
    type Op = u64;
    type Value = i64;
    /// The amount added.
    type Rec = u64;

    fn op() -> BoxedStrategy<u64> {
        (0..5u64).boxed()
    }
    fn mutate(s: &mut GCounter, r: ReplicaId, n: &u64) -> GCounter {
        s.increment(r, *n).expect("small increments never overflow")
    }
    fn delta(s: &GCounter, r: ReplicaId, n: &u64) -> GCounter {
        s.increment_delta(r, *n)
            .expect("small increments never overflow")
    }
    fn apply(s: &mut GCounter, d: &GCounter) {
        s.join(d);
    }
    fn delta_as_state(d: &GCounter) -> GCounter {
        d.clone()
    }
    fn value(s: &GCounter) -> i64 {
        s.value().expect("small sums fit")
    }
    /// A delta carries its replica's running total: every earlier increment there.
    fn record(ops: &[ModelOp<u64>], _: Known, at: usize, n: &u64) -> (u64, Known) {
        (*n, own_earlier(ops, at, |_| true))
    }
    fn model(ops: &[ModelOp<u64>], known: Known) -> i64 {
        bits(known).map(|i| ops[i].rec as i64).sum()
    }
}

// ---------------------------------------------------------------- PNCounter

#[derive(Clone, Debug)]
pub enum PnOp {
    Add(i64),
    Reset,
}

#[derive(Clone, Debug)]
pub enum PnRec {
    Add(i64),
    /// The adds the reset saw.
    Reset(Known),
}

pub struct PnCount;

impl Spec for PnCount {
    type State = PNCounter;
    type Delta = PNCounter;
    type Op = PnOp;
    type Value = i64;
    type Rec = PnRec;

    fn op() -> BoxedStrategy<PnOp> {
        prop_oneof![4 => (-5..=5i64).prop_map(PnOp::Add), 1 => Just(PnOp::Reset)].boxed()
    }
    fn mutate(s: &mut PNCounter, r: ReplicaId, op: &PnOp) -> PNCounter {
        match *op {
            PnOp::Add(a) => s.add(r, a).expect("small adds never overflow"),
            PnOp::Reset => s.reset(),
        }
    }
    fn delta(s: &PNCounter, r: ReplicaId, op: &PnOp) -> PNCounter {
        match *op {
            PnOp::Add(a) => s.add_delta(r, a).expect("small adds never overflow"),
            PnOp::Reset => s.reset_delta(),
        }
    }
    fn apply(s: &mut PNCounter, d: &PNCounter) {
        s.join(d);
    }
    fn delta_as_state(d: &PNCounter) -> PNCounter {
        d.clone()
    }
    fn value(s: &PNCounter) -> i64 {
        s.value().expect("small sums fit")
    }
    /// An add's delta carries its replica's running total of adds of the same
    /// sign: every earlier such add there. A reset's delta carries every add it
    /// saw.
    fn record(ops: &[ModelOp<PnRec>], known: Known, at: usize, op: &PnOp) -> (PnRec, Known) {
        match *op {
            PnOp::Add(a) => {
                let same = |r: &PnRec| matches!(r, PnRec::Add(b) if (*b < 0) == (a < 0));
                (PnRec::Add(a), own_earlier(ops, at, same))
            }
            PnOp::Reset => {
                let adds = bits(known)
                    .filter(|&i| matches!(ops[i].rec, PnRec::Add(_)))
                    .fold(0, |k, i| k | bit(i));
                (PnRec::Reset(adds), adds)
            }
        }
    }
    /// The sum of the adds no known reset has seen.
    fn model(ops: &[ModelOp<PnRec>], known: Known) -> i64 {
        let reset = bits(known).fold(0, |k, i| match ops[i].rec {
            PnRec::Reset(obs) => k | obs,
            PnRec::Add(_) => k,
        });
        bits(known & !reset)
            .map(|i| match ops[i].rec {
                PnRec::Add(a) => a,
                PnRec::Reset(_) => 0,
            })
            .sum()
    }
}

// ---------------------------------------------------------------- VersionVector

/// Version vectors as a replicated state: each replica counts its own events
/// (`increment`) and merges the others' by join.
pub struct Vv;

impl Spec for Vv {
    type State = VersionVector;
    type Delta = VersionVector;
    type Op = ();
    type Value = Vec<(ReplicaId, u64)>;
    type Rec = ();

    fn op() -> BoxedStrategy<()> {
        Just(()).boxed()
    }
    fn mutate(s: &mut VersionVector, r: ReplicaId, _: &()) -> VersionVector {
        let dot = s.increment(r);
        [(r, dot.counter)].into_iter().collect()
    }
    fn delta(s: &VersionVector, r: ReplicaId, _: &()) -> VersionVector {
        [(r, s.get(r) + 1)].into_iter().collect()
    }
    fn apply(s: &mut VersionVector, d: &VersionVector) {
        s.join(d);
    }
    fn delta_as_state(d: &VersionVector) -> VersionVector {
        d.clone()
    }
    fn value(s: &VersionVector) -> Vec<(ReplicaId, u64)> {
        s.iter().collect()
    }
    fn record(ops: &[ModelOp<()>], _: Known, at: usize, _: &()) -> ((), Known) {
        ((), own_earlier(ops, at, |_| true))
    }
    /// Per replica, how many of its events are known, in replica order.
    fn model(ops: &[ModelOp<()>], known: Known) -> Vec<(ReplicaId, u64)> {
        let mut counts = std::collections::BTreeMap::new();
        for i in bits(known) {
            *counts.entry(rid(ops[i].replica)).or_insert(0u64) += 1;
        }
        counts.into_iter().collect()
    }
}

// ---------------------------------------------------------------- CausalContext

#[derive(Clone, Debug)]
pub enum CtxOp {
    /// The replica's next dot.
    Next,
    /// Any dot, of any replica: a context is any set of dots.
    Insert(usize, u64),
}

/// Causal contexts as a replicated state: sets of dots that grow by single
/// dots, delivered out of order so that clouds form and fill.
pub struct Ctx;

/// Whether a context is in the canonical form its docs promise: no zero entry
/// in the vector, no cloud dot covered by the vector or next to it. Cheap even
/// for decoded contexts with huge counters.
pub fn canonical(c: &CausalContext) -> bool {
    c.vv().iter().all(|(_, n)| n > 0)
        && c.cloud()
            .iter()
            .all(|d| d.counter > c.vv().get(d.replica).saturating_add(1))
}

/// [`canonical`], and the context agrees with itself on membership and gives a
/// next dot past all of a replica's dots. Walks every dot: small contexts only.
pub fn consistent(c: &CausalContext) -> bool {
    canonical(c)
        && c.dots()
            .all(|d| c.contains(d) && c.next_dot(d.replica).counter > d.counter)
}

impl Spec for Ctx {
    type State = CausalContext;
    type Delta = CausalContext;
    type Op = CtxOp;
    /// The dots, and whether the representation is canonical and consistent.
    type Value = (BTreeSet<Dot>, bool);
    /// The dot the operation inserted.
    type Rec = Dot;

    fn op() -> BoxedStrategy<CtxOp> {
        prop_oneof![
            2 => Just(CtxOp::Next),
            1 => (0..5usize, 1..10u64).prop_map(|(r, c)| CtxOp::Insert(r, c)),
        ]
        .boxed()
    }
    fn mutate(s: &mut CausalContext, r: ReplicaId, op: &CtxOp) -> CausalContext {
        let d = Self::delta(s, r, op);
        d.dots().for_each(|dot| s.insert(dot));
        d
    }
    fn delta(s: &CausalContext, r: ReplicaId, op: &CtxOp) -> CausalContext {
        let dot = match *op {
            CtxOp::Next => s.next_dot(r),
            CtxOp::Insert(i, c) => Dot::new(rid(i), c),
        };
        std::iter::once(dot).collect()
    }
    fn apply(s: &mut CausalContext, d: &CausalContext) {
        s.join(d);
    }
    fn delta_as_state(d: &CausalContext) -> CausalContext {
        d.clone()
    }
    fn value(s: &CausalContext) -> (BTreeSet<Dot>, bool) {
        (s.dots().collect(), consistent(s))
    }
    /// `Next` is one past the largest dot of the replica it knows.
    fn record(ops: &[ModelOp<Dot>], known: Known, at: usize, op: &CtxOp) -> (Dot, Known) {
        let dot = match *op {
            CtxOp::Next => {
                let top = bits(known)
                    .map(|i| ops[i].rec)
                    .filter(|d| d.replica == rid(at))
                    .map(|d| d.counter)
                    .max()
                    .unwrap_or(0);
                Dot::new(rid(at), top + 1)
            }
            CtxOp::Insert(i, c) => Dot::new(rid(i), c),
        };
        (dot, 0)
    }
    fn model(ops: &[ModelOp<Dot>], known: Known) -> (BTreeSet<Dot>, bool) {
        (bits(known).map(|i| ops[i].rec).collect(), true)
    }
}

// ---------------------------------------------------------------- schedules

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Apply,
    /// Apply, and keep a copy in the queue to deliver again.
    Duplicate,
    /// Move to the lost pile, resent at the end.
    Drop,
}

#[derive(Clone, Debug)]
pub enum Step<Op> {
    /// Run an operation; its delta is queued to every other replica (or, when
    /// grouping, joined into the replica's outgoing group).
    Op { at: usize, op: Op },
    /// Take one queued delta for `to`, chosen by `pick`.
    Deliver { to: usize, pick: Index, fate: Fate },
    /// Ship `at`'s outgoing group.
    Flush { at: usize },
    /// Full-state join of `from` into `to`.
    Merge { from: usize, to: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One delta per operation, delivered in any order, duplicated or lost.
    Deltas,
    /// No deltas: full-state merges only.
    States,
    /// Deltas grouped per replica before shipping, plus full-state merges.
    Grouped,
}

#[derive(Clone, Debug)]
pub struct Schedule<Op> {
    pub replicas: usize,
    pub mode: Mode,
    pub steps: Vec<Step<Op>>,
    /// Orders the final delivery of what is still queued or lost.
    pub seed: u64,
}

pub fn schedule<S: Spec>(mode: Mode) -> impl Strategy<Value = Schedule<S::Op>> {
    (2..=5usize).prop_flat_map(move |n| {
        let op = (0..n, S::op()).prop_map(|(at, op)| Step::Op { at, op });
        let fate = prop_oneof![
            6 => Just(Fate::Apply),
            2 => Just(Fate::Duplicate),
            2 => Just(Fate::Drop),
        ];
        let deliver = (0..n, any::<Index>(), fate).prop_map(|(to, pick, fate)| Step::Deliver {
            to,
            pick,
            fate,
        });
        let flush = (0..n).prop_map(|at| Step::Flush { at });
        let merge = (0..n, 0..n).prop_map(|(from, to)| Step::Merge { from, to });
        let step = match mode {
            Mode::Deltas => prop_oneof![2 => op, 3 => deliver].boxed(),
            Mode::States => prop_oneof![1 => op, 1 => merge].boxed(),
            Mode::Grouped => prop_oneof![4 => op, 4 => deliver, 2 => flush, 1 => merge].boxed(),
        };
        (proptest::collection::vec(step, 0..=MAX_STEPS), any::<u64>()).prop_map(
            move |(steps, seed)| Schedule {
                replicas: n,
                mode,
                steps,
                seed,
            },
        )
    })
}

/// A delta in flight, with what it tells the model.
pub struct Msg<S: Spec> {
    pub delta: S::Delta,
    pub carry: Known,
}

impl<S: Spec> Clone for Msg<S> {
    fn clone(&self) -> Self {
        Msg {
            delta: self.delta.clone(),
            carry: self.carry,
        }
    }
}

/// Replicas, their message queues and the model, driven by a [`Schedule`].
pub struct Sim<S: Spec> {
    pub states: Vec<S::State>,
    pub model: Model<S>,
    /// Per destination, the deltas in flight.
    pub queues: Vec<Vec<Msg<S>>>,
    /// Per destination, the deltas lost on the way.
    pub lost: Vec<Vec<Msg<S>>>,
    /// Per source, the group of deltas not shipped yet.
    pub outbox: Vec<Option<Msg<S>>>,
    /// Every state any replica passed through.
    pub snapshots: Vec<S::State>,
    /// Every delta produced or shipped (single and grouped).
    pub deltas: Vec<S::Delta>,
    grouped: bool,
    /// Whether to hold every touched replica against the model.
    checked: bool,
}

impl<S: Spec> Sim<S> {
    pub fn new(replicas: usize, grouped: bool) -> Self {
        Sim {
            states: vec![S::State::default(); replicas],
            model: Model::new(replicas),
            queues: vec![Vec::new(); replicas],
            lost: vec![Vec::new(); replicas],
            outbox: vec![None; replicas],
            snapshots: Vec::new(),
            deltas: Vec::new(),
            grouped,
            checked: true,
        }
    }

    /// Run every step of `schedule`, checking each touched replica against the
    /// model as it goes.
    pub fn run(schedule: &Schedule<S::Op>) -> Result<Self, TestCaseError> {
        let mut sim = Sim::new(schedule.replicas, schedule.mode == Mode::Grouped);
        for step in &schedule.steps {
            sim.step(step)?;
        }
        Ok(sim)
    }

    /// Run every step of `schedule` without consulting the model: a source of
    /// states and deltas for properties that say nothing of values.
    pub fn history(schedule: &Schedule<S::Op>) -> Self {
        let mut sim = Sim::new(schedule.replicas, schedule.mode == Mode::Grouped);
        sim.checked = false;
        for step in &schedule.steps {
            sim.step(step).expect("unchecked steps cannot fail");
        }
        sim
    }

    pub fn replicas(&self) -> usize {
        self.states.len()
    }

    pub fn step(&mut self, step: &Step<S::Op>) -> Result<(), TestCaseError> {
        match *step {
            Step::Op { at, ref op } => {
                let delta = S::mutate(&mut self.states[at], rid(at), op);
                let carry = self.model.op(at, op);
                self.deltas.push(delta.clone());
                let msg = Msg { delta, carry };
                if self.grouped {
                    match &mut self.outbox[at] {
                        Some(group) => {
                            group.delta.join(&msg.delta);
                            group.carry |= msg.carry;
                        }
                        none => *none = Some(msg),
                    }
                } else {
                    self.ship(at, msg);
                }
                self.touched(at)
            }
            Step::Deliver { to, pick, fate } => {
                if self.queues[to].is_empty() {
                    return Ok(());
                }
                let i = pick.index(self.queues[to].len());
                let msg = self.queues[to].remove(i);
                match fate {
                    Fate::Apply => {}
                    Fate::Duplicate => self.queues[to].push(msg.clone()),
                    Fate::Drop => {
                        self.lost[to].push(msg);
                        return Ok(());
                    }
                }
                self.deliver(to, &msg)
            }
            Step::Flush { at } => {
                self.flush(at);
                Ok(())
            }
            Step::Merge { from, to } => self.merge(from, to),
        }
    }

    fn flush(&mut self, at: usize) {
        if let Some(group) = self.outbox[at].take() {
            self.deltas.push(group.delta.clone());
            self.ship(at, group);
        }
    }

    fn ship(&mut self, from: usize, msg: Msg<S>) {
        for (to, q) in self.queues.iter_mut().enumerate() {
            if to != from {
                q.push(msg.clone());
            }
        }
    }

    pub fn deliver(&mut self, to: usize, msg: &Msg<S>) -> Result<(), TestCaseError> {
        S::apply(&mut self.states[to], &msg.delta);
        self.model.known[to] |= msg.carry;
        self.touched(to)
    }

    pub fn merge(&mut self, from: usize, to: usize) -> Result<(), TestCaseError> {
        if from == to {
            return Ok(());
        }
        let src = self.states[from].clone();
        self.states[to].join(&src);
        self.model.known[to] |= self.model.known[from];
        self.touched(to)
    }

    fn touched(&mut self, at: usize) -> Result<(), TestCaseError> {
        self.snapshots.push(self.states[at].clone());
        if !self.checked {
            return Ok(());
        }
        prop_assert_eq!(
            S::value(&self.states[at]),
            self.model.value(at),
            "replica {} disagrees with the model",
            at
        );
        Ok(())
    }

    /// Ship every group, then deliver everything still queued and then
    /// everything lost, each in an order drawn from `seed`.
    pub fn deliver_all(&mut self, seed: u64) -> Result<(), TestCaseError> {
        for at in 0..self.replicas() {
            self.flush(at);
        }
        let mut rng = XorShift(seed | 1);
        for to in 0..self.replicas() {
            let mut queued = std::mem::take(&mut self.queues[to]);
            let mut lost = std::mem::take(&mut self.lost[to]);
            rng.shuffle(&mut queued);
            rng.shuffle(&mut lost);
            for msg in queued.iter().chain(&lost) {
                self.deliver(to, msg)?;
            }
        }
        Ok(())
    }

    /// Every replica joins every other's full state.
    pub fn merge_all(&mut self) -> Result<(), TestCaseError> {
        for to in 0..self.replicas() {
            for from in 0..self.replicas() {
                self.merge(from, to)?;
            }
        }
        Ok(())
    }

    /// All replicas know every operation, hold equal states, show the model's
    /// final value, and hold exactly the join of every delta of the history.
    pub fn check_converged(&self) -> Result<(), TestCaseError> {
        let all = self.model.everything();
        let want = S::model(&self.model.ops, all);
        for (i, s) in self.states.iter().enumerate() {
            prop_assert_eq!(self.model.known[i], all, "replica {} missed operations", i);
            prop_assert_eq!(s, &self.states[0], "replicas {} and 0 differ", i);
            prop_assert_eq!(
                &S::value(s),
                &want,
                "replica {} has the wrong final value",
                i
            );
        }
        let joined = self.deltas.iter().fold(S::State::default(), |acc, d| {
            acc.joined(&S::delta_as_state(d))
        });
        prop_assert_eq!(
            &joined,
            &self.states[0],
            "the state is not the join of its deltas"
        );
        Ok(())
    }

    /// Every state seen, every delta as a state, and bottom.
    pub fn state_pool(&self) -> Vec<S::State> {
        let mut pool = self.snapshots.clone();
        pool.extend(self.deltas.iter().map(S::delta_as_state));
        pool.push(S::State::default());
        pool
    }
}

/// A tiny deterministic generator for shuffles.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Three indices into a pool.
pub fn picks() -> impl Strategy<Value = [Index; 3]> {
    any::<[Index; 3]>()
}

/// Run the generator macro body once per type, naming each module after it.
#[macro_export]
macro_rules! for_each_type {
    ($mac:ident) => {
        $mac!(orset_deltas, $crate::common::OrSetDeltas);
        $mac!(orset_states, $crate::common::OrSetStates);
        $mac!(mvregister, $crate::common::MvReg);
        $mac!(lwwregister, $crate::common::Lww);
        $mac!(ewflag, $crate::common::Flag);
        $mac!(gcounter, $crate::common::GCount);
        $mac!(pncounter, $crate::common::PnCount);
        $mac!(version_vector, $crate::common::Vv);
        $mac!(causal_context, $crate::common::Ctx);
    };
}
