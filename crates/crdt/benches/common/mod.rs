//! Workloads shared by the dotkv-crdt vs `crdts` benchmarks. Every builder here
//! drives both libraries with the same script (same elements, same replica ids,
//! same order of adds and removes), and checks that they end up holding the
//! same elements, so a ratio between them compares the libraries, not the data.

// Each bench binary includes this module and uses a different part of it.
#![allow(dead_code)]

use crdts::{CmRDT, CvRDT};
use dotkv_crdt::{CausalContext, Dot, DotMap, DotSet, Lattice, ORSet, ORSetDelta, ReplicaId};
use std::time::{Duration, Instant};

pub type DotkvSet = ORSet<u64>;
pub type CrdtsSet = crdts::Orswot<u64, u64>;
pub type CrdtsSetOp = crdts::orswot::Op<u64, u64>;

/// Elements per side in the join benchmark.
pub const JOIN_ELEMENTS: u64 = 100_000;
/// Elements in the set that one-element deltas are applied to.
pub const BIG_SET: u64 = 1_000_000;
/// Replicas that wrote the big set: a typical three-node cluster.
pub const BIG_SET_REPLICAS: usize = 3;
/// Replicas in the counter benchmarks.
pub const COUNTER_REPLICAS: usize = 16;
/// Deltas minted (untimed) per timed batch: few enough that they are still in
/// cache when applied, as a delta just decoded from the network would be, and
/// enough that reading the clock once per batch adds well under 1 ns a delta.
pub const CHUNK: u64 = 100;

/// SplitMix64: a tiny deterministic generator, so every run (and both
/// libraries) sees the same replica ids without a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct replica ids as dotkv makes them: 64 random bits of a UUID.
pub fn replica_ids(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let mut ids: Vec<u64> = Vec::with_capacity(n);
    while ids.len() < n {
        let id = rng.next_u64();
        if id != 0 && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The operations a benchmark script needs, over either library. Each call is
/// what a replica does locally through the library's public API.
pub trait SetLib: Clone {
    fn new_set() -> Self;
    fn add(&mut self, actor: u64, e: u64);
    fn remove(&mut self, e: u64);
    fn sorted_elements(&self) -> Vec<u64>;
}

impl SetLib for DotkvSet {
    fn new_set() -> Self {
        ORSet::new()
    }

    fn add(&mut self, actor: u64, e: u64) {
        ORSet::add(self, ReplicaId(actor), e);
    }

    fn remove(&mut self, e: u64) {
        ORSet::remove(self, &e);
    }

    fn sorted_elements(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.elements().copied().collect();
        v.sort_unstable();
        v
    }
}

impl SetLib for CrdtsSet {
    fn new_set() -> Self {
        crdts::Orswot::new()
    }

    fn add(&mut self, actor: u64, e: u64) {
        let op = crdts::Orswot::add(self, e, self.read_ctx().derive_add_ctx(actor));
        self.apply(op);
    }

    fn remove(&mut self, e: u64) {
        let op = self.rm(e, self.contains(&e).derive_rm_ctx());
        self.apply(op);
    }

    fn sorted_elements(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.iter().map(|r| *r.val).collect();
        v.sort_unstable();
        v
    }
}

/// `n` elements added round-robin by `replicas`, in one history.
pub fn filled_set<S: SetLib>(replicas: &[u64], n: u64) -> S {
    let mut s = S::new_set();
    for e in 0..n {
        s.add(replicas[(e % replicas.len() as u64) as usize], e);
    }
    s
}

/// Two divergent replicas of one set, as after a partition.
///
/// Common history: elements `0..n` added round-robin by every replica, then
/// every 20th removed. Then the replicas split in two groups (even and odd
/// positions in `replicas`; both groups write concurrently, so no dot is
/// reused). Side A re-adds `0..0.6n` and removes those ≡ 3 (mod 10) of them;
/// side B re-adds `0.4n..n` and removes those ≡ 7 (mod 10). In `0.4n..0.6n` both
/// sides wrote concurrently: after the join those elements carry two dots, and
/// one side's remove loses to the other side's concurrent add.
pub fn divergent_pair<S: SetLib>(replicas: &[u64], n: u64) -> (S, S) {
    assert!(replicas.len() >= 2, "each side needs its own replica");
    let mut common = filled_set::<S>(replicas, n);
    for e in (0..n).step_by(20) {
        common.remove(e);
    }
    let group_a: Vec<u64> = replicas.iter().copied().step_by(2).collect();
    let group_b: Vec<u64> = replicas.iter().copied().skip(1).step_by(2).collect();
    let mut a = common.clone();
    let mut b = common;
    let (a_end, b_start) = (n * 6 / 10, n * 4 / 10);
    for (i, e) in (0..a_end).enumerate() {
        a.add(group_a[i % group_a.len()], e);
    }
    for e in (0..a_end).filter(|e| e % 10 == 3) {
        a.remove(e);
    }
    for (i, e) in (b_start..n).enumerate() {
        b.add(group_b[i % group_b.len()], e);
    }
    for e in (b_start..n).filter(|e| e % 10 == 7) {
        b.remove(e);
    }
    (a, b)
}

/// The join workload, built identically for both libraries.
pub struct JoinCase {
    pub replicas: usize,
    pub dotkv: (DotkvSet, DotkvSet),
    pub crdts: (CrdtsSet, CrdtsSet),
}

impl JoinCase {
    pub fn new(replicas: usize) -> Self {
        let ids = replica_ids(replicas, 0xd07c_0000 + replicas as u64);
        let dotkv: (DotkvSet, DotkvSet) = divergent_pair(&ids, JOIN_ELEMENTS);
        let crdts: (CrdtsSet, CrdtsSet) = divergent_pair(&ids, JOIN_ELEMENTS);
        assert_eq!(dotkv.0.sorted_elements(), crdts.0.sorted_elements());
        assert_eq!(dotkv.1.sorted_elements(), crdts.1.sorted_elements());
        // Same dots issued: each side's context is the crdts clock.
        for (d, c) in [(&dotkv.0, &crdts.0), (&dotkv.1, &crdts.1)] {
            assert!(d.context().cloud().is_empty());
            let clock: Vec<(u64, u64)> = c.clock().dots.into_iter().collect();
            let vv: Vec<(u64, u64)> = d.context().vv().iter().map(|(r, n)| (r.0, n)).collect();
            assert_eq!(vv, clock);
        }
        // And the same merged set.
        let joined = dotkv.0.clone().joined(&dotkv.1);
        let mut merged = crdts.0.clone();
        merged.merge(crdts.1.clone());
        assert_eq!(joined.sorted_elements(), merged.sorted_elements());
        JoinCase {
            replicas,
            dotkv,
            crdts,
        }
    }

    /// Sizes for the report: elements on side A, on side B, after the join.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let joined = self.dotkv.0.clone().joined(&self.dotkv.1);
        (self.dotkv.0.len(), self.dotkv.1.len(), joined.len())
    }
}

/// Something that applies a stream of one-operation deltas and can be timed
/// batch by batch: mint a batch untimed, apply it timed, undo it untimed.
pub trait DeltaBench {
    type Delta;
    /// The next `n` deltas, each doing real work (never a re-apply).
    fn mint(&mut self, n: u64) -> Vec<Self::Delta>;
    /// Apply every delta: the timed part. By default each delta is dropped
    /// inside the loop, as `crdts` (which takes ops and states by value) must;
    /// what is returned is dropped after the clock stops.
    fn apply_all(&mut self, batch: Vec<Self::Delta>) -> Vec<Self::Delta>;
    /// Bring the target back to its nominal size, untimed.
    fn undo(&mut self) {}
}

/// Time `iters` delta applications, in batches of at most [`CHUNK`].
pub fn time_deltas<B: DeltaBench>(b: &mut B, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let batch = b.mint(n);
        let start = Instant::now();
        let left_over = b.apply_all(batch);
        total += start.elapsed();
        drop(left_over);
        b.undo();
        left -= n;
    }
    total
}

/// The delta replica `writer` ships when it adds the fresh element `e` with
/// its `counter`-th dot: exactly what `ORSet::add_delta` returns for an element
/// the writer has not seen (checked in [`DotkvInsert::new`]), built without a
/// second million-element replica to mint it from.
pub fn dotkv_add_delta(writer: u64, counter: u64, e: u64) -> ORSetDelta<u64> {
    let dot = Dot::new(ReplicaId(writer), counter);
    let mut entries = DotMap::with_capacity(1);
    entries.insert(e, DotSet::single(dot));
    let ctx: CausalContext = std::iter::once(dot).collect();
    ORSetDelta { entries, ctx }
}

/// The op `crdts` ships for the same add (checked in [`CrdtsInsert::new`]).
pub fn crdts_add_op(writer: u64, counter: u64, e: u64) -> CrdtsSetOp {
    CrdtsSetOp::Add {
        dot: crdts::Dot::new(writer, counter),
        members: vec![e],
    }
}

/// One-element add deltas applied to a [`BIG_SET`]-element dotkv set.
pub struct DotkvInsert {
    pub set: DotkvSet,
    /// Drop the deltas after timing rather than inside the loop.
    pub keep: bool,
    writer: u64,
    next_counter: u64,
    next_element: u64,
    pending: Vec<u64>,
}

impl DotkvInsert {
    pub fn new() -> Self {
        let ids = replica_ids(BIG_SET_REPLICAS, 0xb16_5e7);
        let set: DotkvSet = filled_set(&ids, BIG_SET);
        let writer = ids[0];
        let next_counter = set.context().vv().get(ReplicaId(writer)) + 1;
        assert_eq!(
            dotkv_add_delta(writer, next_counter, BIG_SET),
            set.add_delta(ReplicaId(writer), BIG_SET)
        );
        DotkvInsert {
            set,
            keep: false,
            writer,
            next_counter,
            next_element: BIG_SET,
            pending: Vec::new(),
        }
    }
}

impl DotkvInsert {
    /// Free the deltas after the clock stops: the cost of the join alone.
    pub fn keeping_deltas(mut self) -> Self {
        self.keep = true;
        self
    }
}

impl Default for DotkvInsert {
    fn default() -> Self {
        Self::new()
    }
}

impl DeltaBench for DotkvInsert {
    type Delta = ORSetDelta<u64>;

    fn mint(&mut self, n: u64) -> Vec<Self::Delta> {
        (0..n)
            .map(|_| {
                let d = dotkv_add_delta(self.writer, self.next_counter, self.next_element);
                self.pending.push(self.next_element);
                self.next_counter += 1;
                self.next_element += 1;
                d
            })
            .collect()
    }

    #[inline(never)]
    fn apply_all(&mut self, batch: Vec<Self::Delta>) -> Vec<Self::Delta> {
        if self.keep {
            for d in &batch {
                self.set.apply(d);
            }
            batch
        } else {
            for d in batch {
                self.set.apply(&d);
            }
            Vec::new()
        }
    }

    fn undo(&mut self) {
        debug_assert!(self.pending.iter().all(|e| self.set.contains(e)));
        for e in self.pending.drain(..) {
            self.set.remove(&e);
        }
    }
}

/// The same workload on a `crdts::Orswot`.
pub struct CrdtsInsert {
    pub set: CrdtsSet,
    writer: u64,
    next_counter: u64,
    next_element: u64,
    pending: Vec<u64>,
}

impl CrdtsInsert {
    pub fn new() -> Self {
        let ids = replica_ids(BIG_SET_REPLICAS, 0xb16_5e7);
        let set: CrdtsSet = filled_set(&ids, BIG_SET);
        let writer = ids[0];
        let next_counter = set.clock().get(&writer) + 1;
        assert!(
            crdts_add_op(writer, next_counter, BIG_SET)
                == set.add(BIG_SET, set.read_ctx().derive_add_ctx(writer))
        );
        CrdtsInsert {
            set,
            writer,
            next_counter,
            next_element: BIG_SET,
            pending: Vec::new(),
        }
    }
}

impl Default for CrdtsInsert {
    fn default() -> Self {
        Self::new()
    }
}

impl DeltaBench for CrdtsInsert {
    type Delta = CrdtsSetOp;

    fn mint(&mut self, n: u64) -> Vec<Self::Delta> {
        (0..n)
            .map(|_| {
                let op = crdts_add_op(self.writer, self.next_counter, self.next_element);
                self.pending.push(self.next_element);
                self.next_counter += 1;
                self.next_element += 1;
                op
            })
            .collect()
    }

    #[inline(never)]
    fn apply_all(&mut self, batch: Vec<Self::Delta>) -> Vec<Self::Delta> {
        for op in batch {
            self.set.apply(op);
        }
        Vec::new()
    }

    fn undo(&mut self) {
        for e in std::mem::take(&mut self.pending) {
            debug_assert!(self.set.contains(&e).val);
            SetLib::remove(&mut self.set, e);
        }
    }
}

/// Replica ids and starting totals of the counters: long-lived replicas with
/// about a million increments each.
fn counter_start() -> Vec<(u64, u64)> {
    let mut rng = Rng::new(0xc0_47e5);
    replica_ids(COUNTER_REPLICAS, 0xc0_47e5)
        .into_iter()
        .map(|r| (r, 1_000_000 + rng.next_u64() % 1_000))
        .collect()
}

/// Whether the PN-counter's `step`-th delta adds (else subtracts): every
/// replica in turn adds one, then every replica subtracts one, and so on.
fn counts_up(step: usize, replicas: usize) -> bool {
    (step / replicas) & 1 == 0
}

/// Which counter type a counter benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    G,
    PN,
}

/// dotkv: a writer replica adds one, round-robin over the replicas (the
/// PN-counter adds in one round and subtracts in the next, see [`counts_up`]),
/// and the target joins its delta.
pub struct DotkvCounter {
    kind: CounterKind,
    /// Drop the deltas after timing rather than inside the loop.
    pub keep: bool,
    g: (dotkv_crdt::GCounter, dotkv_crdt::GCounter),
    pn: (dotkv_crdt::PNCounter, dotkv_crdt::PNCounter),
    ids: Vec<u64>,
    step: usize,
}

pub enum DotkvCounterDelta {
    G(dotkv_crdt::GCounter),
    PN(dotkv_crdt::PNCounter),
}

impl DotkvCounter {
    pub fn new(kind: CounterKind) -> Self {
        let mut g = dotkv_crdt::GCounter::new();
        let mut pn = dotkv_crdt::PNCounter::new();
        let start = counter_start();
        for &(r, n) in &start {
            g.increment(ReplicaId(r), n).expect("in range");
            pn.add(ReplicaId(r), n as i64).expect("in range");
            pn.add(ReplicaId(r), -((n / 2) as i64)).expect("in range");
        }
        DotkvCounter {
            kind,
            keep: false,
            g: (g.clone(), g),
            pn: (pn.clone(), pn),
            ids: start.into_iter().map(|(r, _)| r).collect(),
            step: 0,
        }
    }

    /// Free the deltas after the clock stops: the cost of the join alone.
    pub fn keeping_deltas(mut self) -> Self {
        self.keep = true;
        self
    }

    pub fn value(&self) -> i64 {
        match self.kind {
            CounterKind::G => self.g.0.value().expect("in range"),
            CounterKind::PN => self.pn.0.value().expect("in range"),
        }
    }
}

impl DeltaBench for DotkvCounter {
    type Delta = DotkvCounterDelta;

    fn mint(&mut self, n: u64) -> Vec<Self::Delta> {
        (0..n)
            .map(|_| {
                let r = ReplicaId(self.ids[self.step % self.ids.len()]);
                self.step += 1;
                match self.kind {
                    CounterKind::G => {
                        DotkvCounterDelta::G(self.g.1.increment(r, 1).expect("in range"))
                    }
                    CounterKind::PN => {
                        let amount = if counts_up(self.step, self.ids.len()) {
                            1
                        } else {
                            -1
                        };
                        DotkvCounterDelta::PN(self.pn.1.add(r, amount).expect("in range"))
                    }
                }
            })
            .collect()
    }

    #[inline(never)]
    fn apply_all(&mut self, batch: Vec<Self::Delta>) -> Vec<Self::Delta> {
        let join = |this: &mut Self, d: &DotkvCounterDelta| match d {
            DotkvCounterDelta::G(d) => this.g.0.join(d),
            DotkvCounterDelta::PN(d) => this.pn.0.join(d),
        };
        if self.keep {
            for d in &batch {
                join(self, d);
            }
            batch
        } else {
            for d in batch {
                join(self, &d);
            }
            Vec::new()
        }
    }
}

/// How `crdts` ships one increment: its op (`CmRDT::apply`) or a one-entry
/// state (`CvRDT::merge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdtsWay {
    Op,
    Merge,
}

pub struct CrdtsCounter {
    kind: CounterKind,
    way: CrdtsWay,
    g: (crdts::GCounter<u64>, crdts::GCounter<u64>),
    pn: (crdts::PNCounter<u64>, crdts::PNCounter<u64>),
    ids: Vec<u64>,
    step: usize,
}

pub enum CrdtsCounterDelta {
    GOp(crdts::Dot<u64>),
    GState(crdts::GCounter<u64>),
    PNOp(crdts::pncounter::Op<u64>),
    PNState(crdts::PNCounter<u64>),
}

impl CrdtsCounter {
    pub fn new(kind: CounterKind, way: CrdtsWay) -> Self {
        let mut g = crdts::GCounter::new();
        let mut pn = crdts::PNCounter::new();
        let start = counter_start();
        for &(r, n) in &start {
            g.apply(g.inc_many(r, n));
            pn.apply(pn.inc_many(r, n));
            pn.apply(pn.dec_many(r, n / 2));
        }
        CrdtsCounter {
            kind,
            way,
            g: (g.clone(), g),
            pn: (pn.clone(), pn),
            ids: start.into_iter().map(|(r, _)| r).collect(),
            step: 0,
        }
    }

    pub fn value(&self) -> i64 {
        let v = match self.kind {
            CounterKind::G => self.g.0.read().to_string(),
            CounterKind::PN => self.pn.0.read().to_string(),
        };
        v.parse().expect("in range")
    }
}

impl DeltaBench for CrdtsCounter {
    type Delta = CrdtsCounterDelta;

    fn mint(&mut self, n: u64) -> Vec<Self::Delta> {
        (0..n)
            .map(|_| {
                let r = self.ids[self.step % self.ids.len()];
                self.step += 1;
                match self.kind {
                    CounterKind::G => {
                        let op = self.g.1.inc(r);
                        self.g.1.apply(op);
                        match self.way {
                            CrdtsWay::Op => CrdtsCounterDelta::GOp(op),
                            CrdtsWay::Merge => {
                                let mut d = crdts::GCounter::new();
                                d.apply(op);
                                CrdtsCounterDelta::GState(d)
                            }
                        }
                    }
                    CounterKind::PN => {
                        let w = &mut self.pn.1;
                        let op = if counts_up(self.step, self.ids.len()) {
                            w.inc(r)
                        } else {
                            w.dec(r)
                        };
                        w.apply(op.clone());
                        match self.way {
                            CrdtsWay::Op => CrdtsCounterDelta::PNOp(op),
                            CrdtsWay::Merge => {
                                let mut d = crdts::PNCounter::new();
                                d.apply(op);
                                CrdtsCounterDelta::PNState(d)
                            }
                        }
                    }
                }
            })
            .collect()
    }

    #[inline(never)]
    fn apply_all(&mut self, batch: Vec<Self::Delta>) -> Vec<Self::Delta> {
        for d in batch {
            match d {
                CrdtsCounterDelta::GOp(op) => self.g.0.apply(op),
                CrdtsCounterDelta::GState(s) => self.g.0.merge(s),
                CrdtsCounterDelta::PNOp(op) => self.pn.0.apply(op),
                CrdtsCounterDelta::PNState(s) => self.pn.0.merge(s),
            }
        }
        Vec::new()
    }
}

/// Check that both libraries' counters went through the same values.
pub fn same_counter_values(kind: CounterKind) {
    let mut d = DotkvCounter::new(kind);
    let mut c = CrdtsCounter::new(kind, CrdtsWay::Merge);
    let mut o = CrdtsCounter::new(kind, CrdtsWay::Op);
    time_deltas(&mut d, 1_000);
    time_deltas(&mut c, 1_000);
    time_deltas(&mut o, 1_000);
    assert_eq!(d.value(), c.value());
    assert_eq!(d.value(), o.value());
}

/// Encoded metadata of one set element, in bytes, for both libraries.
pub struct MetadataSizes {
    /// `dotkv_crdt::encode` of the element's `DotSet`: what dotkv stores per
    /// element row (format byte included).
    pub dotkv: Vec<usize>,
    /// postcard encoding of the element's `VClock` in an `Orswot`, the per-element
    /// metadata `crdts` keeps (no format byte: `crdts` has none).
    pub crdts: Vec<usize>,
}

/// Per-element metadata of `samples` elements, each added once (one dot) by a
/// random replica id whose counter is around a million; with `dots` > 1, the
/// element was added concurrently by that many replicas.
pub fn metadata_sizes(samples: usize, dots: usize) -> MetadataSizes {
    let mut rng = Rng::new(0x5123);
    let mut out = MetadataSizes {
        dotkv: Vec::with_capacity(samples),
        crdts: Vec::with_capacity(samples),
    };
    for e in 0..samples as u64 {
        let adds: Vec<(u64, u64)> = replica_ids(dots, rng.next_u64())
            .into_iter()
            .map(|r| (r, 900_000 + rng.next_u64() % 200_000))
            .collect();
        // dotkv: the element's dots, as the set holds them after the adds.
        let mut set = DotkvSet::new();
        for &(r, c) in &adds {
            set.apply(&dotkv_add_delta(r, c, e));
        }
        let dots_of_e = set.entries().get(&e).expect("added");
        assert_eq!(dots_of_e.len(), dots);
        out.dotkv
            .push(dotkv_crdt::encode(dots_of_e).expect("encodes").len());
        // crdts: the element's clock, as the Orswot holds it after the same adds.
        let mut orswot = CrdtsSet::new();
        for &(r, c) in &adds {
            orswot.apply(crdts_add_op(r, c, e));
        }
        let clock = orswot.contains(&e).rm_clock;
        assert_eq!(clock.dots.len(), dots);
        out.crdts
            .push(postcard::to_stdvec(&clock).expect("encodes").len());
    }
    out
}

/// Encoded bytes of a whole set state per element (postcard for both; dotkv
/// through its codec).
pub fn state_bytes_per_element(case: &JoinCase) -> (f64, f64) {
    let joined = case.dotkv.0.clone().joined(&case.dotkv.1);
    let mut merged = case.crdts.0.clone();
    merged.merge(case.crdts.1.clone());
    let d = dotkv_crdt::encode(&joined).expect("encodes").len() as f64 / joined.len() as f64;
    let c = postcard::to_stdvec(&merged).expect("encodes").len() as f64 / joined.len() as f64;
    (d, c)
}

/// Median of a list of figures.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median_usize(v: &[usize]) -> f64 {
    let mut f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    median(&mut f)
}
