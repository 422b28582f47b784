//! Causal delivery at the receiver, with no I/O: which received groups can be
//! applied now, which wait for their dependencies, and which are dropped
//! because the wait room is full.
//!
//! A group of origin `o` covering `first..=last` is ready once the replica has
//! applied `o` up to `first - 1` and everything in its dependencies. Ready
//! groups are handed out in an order that keeps that true for each of them,
//! so a batch (one group) becomes visible at once, and a write never shows
//! before one it depends on. The buffer is bounded in groups and bytes; a
//! group that does not fit is dropped and counted, and the sender, seeing the
//! count grow in our acknowledgements, sends again from what we have applied.

use dotkv_crdt::{ReplicaId, VersionVector};
use dotkv_storage::{DeltaGroup, DeltaOp};
use std::collections::BTreeMap;

/// What became of an offered group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Already applied (or handed out): ignored.
    Duplicate,
    /// Ready: the caller applies it now (it is returned by `offer`).
    Ready,
    /// Held until its dependencies arrive.
    Parked,
    /// Not ready and no room to hold it.
    Dropped,
}

/// Groups waiting for their dependencies.
#[derive(Debug)]
pub struct CausalBuffer {
    /// What is applied or handed out for applying.
    vv: VersionVector,
    parked: BTreeMap<(ReplicaId, u64), DeltaGroup>,
    bytes: usize,
    max_groups: usize,
    max_bytes: usize,
    drops: u64,
}

/// A rough size of a group in memory, for the byte bound.
pub fn group_size(g: &DeltaGroup) -> usize {
    let ops: usize = g
        .ops
        .iter()
        .map(|op| match op {
            DeltaOp::Counter { key, .. } => key.len() + 64,
            DeltaOp::Register { key, store, .. } => {
                key.len() + 96 + store.iter().map(|(_, v)| v.value.len()).sum::<usize>()
            }
            DeltaOp::MvRegister { key, store, .. } => {
                key.len() + 96 + store.iter().map(|(_, v)| v.len()).sum::<usize>()
            }
            DeltaOp::Flag { key, .. } => key.len() + 64,
            DeltaOp::Set { key, elems, .. } => {
                key.len() + 64 + elems.iter().map(|(e, _)| e.len() + 48).sum::<usize>()
            }
            DeltaOp::SetClear { key, .. } => key.len() + 64,
        })
        .sum();
    96 + g.deps.len() * 16 + ops
}

impl CausalBuffer {
    /// A buffer over a replica that has applied `vv`.
    pub fn new(vv: VersionVector, max_groups: usize, max_bytes: usize) -> CausalBuffer {
        CausalBuffer {
            vv,
            parked: BTreeMap::new(),
            bytes: 0,
            max_groups: max_groups.max(1),
            max_bytes: max_bytes.max(1),
            drops: 0,
        }
    }

    /// What is applied or handed out.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The replica applied more by other means (its own writes, anti-entropy).
    pub fn observe(&mut self, applied: &VersionVector) {
        dotkv_crdt::Lattice::join(&mut self.vv, applied);
    }

    /// Forget what was handed out but not applied (the apply failed), and go
    /// back to what the replica has really applied.
    pub fn reset(&mut self, applied: VersionVector) {
        self.vv = applied;
    }

    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    pub fn parked_bytes(&self) -> usize {
        self.bytes
    }

    pub fn drops(&self) -> u64 {
        self.drops
    }

    fn is_ready(&self, g: &DeltaGroup) -> bool {
        g.first == self.vv.get(g.origin) + 1 && g.deps.leq(&self.vv)
    }

    /// Offer a received group. When it is ready it is returned for applying
    /// (and counted as handed out); follow with [`CausalBuffer::pop_ready`]
    /// to collect what it unblocked.
    pub fn offer(&mut self, g: DeltaGroup) -> (Offer, Option<DeltaGroup>) {
        if g.last <= self.vv.get(g.origin) {
            return (Offer::Duplicate, None);
        }
        if self.is_ready(&g) {
            self.vv.set_max(g.origin, g.last);
            return (Offer::Ready, Some(g));
        }
        let key = (g.origin, g.first);
        if self.parked.contains_key(&key) {
            return (Offer::Duplicate, None);
        }
        let size = group_size(&g);
        if self.parked.len() >= self.max_groups || self.bytes + size > self.max_bytes {
            self.drops += 1;
            return (Offer::Dropped, None);
        }
        self.bytes += size;
        self.parked.insert(key, g);
        (Offer::Parked, None)
    }

    /// A parked group that is now ready, if any (handed out, like `offer`).
    /// Parked groups already covered are discarded on the way.
    pub fn pop_ready(&mut self) -> Option<DeltaGroup> {
        loop {
            let origins: Vec<ReplicaId> = {
                let mut o: Vec<ReplicaId> = self.parked.keys().map(|(r, _)| *r).collect();
                o.dedup();
                o
            };
            let mut discarded = false;
            for origin in origins {
                let have = self.vv.get(origin);
                // Drop what is already covered.
                let stale: Vec<(ReplicaId, u64)> = self
                    .parked
                    .range((origin, 0)..=(origin, have))
                    .map(|(k, _)| *k)
                    .collect();
                for k in stale {
                    if let Some(g) = self.parked.remove(&k) {
                        self.bytes = self.bytes.saturating_sub(group_size(&g));
                        discarded = true;
                    }
                }
                let key = (origin, have + 1);
                let ready = match self.parked.get(&key) {
                    Some(g) => g.deps.leq(&self.vv),
                    None => false,
                };
                if ready {
                    if let Some(g) = self.parked.remove(&key) {
                        self.bytes = self.bytes.saturating_sub(group_size(&g));
                        self.vv.set_max(g.origin, g.last);
                        return Some(g);
                    }
                }
            }
            if !discarded {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dotkv_crdt::Hlc;

    fn g(origin: u64, first: u64, last: u64, deps: &[(u64, u64)]) -> DeltaGroup {
        let mut d: Vec<(ReplicaId, u64)> = deps.iter().map(|(r, v)| (ReplicaId(*r), *v)).collect();
        if first > 1 {
            d.push((ReplicaId(origin), first - 1));
        }
        DeltaGroup {
            origin: ReplicaId(origin),
            first,
            last,
            deps: VersionVector::from(d),
            ts: Hlc(0),
            ops: Vec::new(),
        }
    }

    fn drain(b: &mut CausalBuffer) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(x) = b.pop_ready() {
            out.push((x.origin.0, x.first));
        }
        out
    }

    #[test]
    fn waits_for_the_origins_previous_group_and_the_dependencies() {
        let mut b = CausalBuffer::new(VersionVector::new(), 100, 1 << 20);
        // 2's group depends on 1's first group.
        assert_eq!(b.offer(g(2, 1, 1, &[(1, 1)])).0, Offer::Parked);
        assert_eq!(b.offer(g(1, 2, 3, &[])).0, Offer::Parked);
        assert!(drain(&mut b).is_empty());
        let (o, ready) = b.offer(g(1, 1, 1, &[]));
        assert_eq!(o, Offer::Ready);
        assert_eq!(ready.unwrap().first, 1);
        let mut out = drain(&mut b);
        out.sort();
        assert_eq!(out, vec![(1, 2), (2, 1)]);
        assert_eq!(b.offer(g(1, 2, 3, &[])).0, Offer::Duplicate);
        assert_eq!(b.parked(), 0);
        assert_eq!(b.parked_bytes(), 0);
    }

    #[test]
    fn drops_when_full_and_counts() {
        let mut b = CausalBuffer::new(VersionVector::new(), 2, 1 << 20);
        assert_eq!(b.offer(g(1, 2, 2, &[])).0, Offer::Parked);
        assert_eq!(b.offer(g(1, 3, 3, &[])).0, Offer::Parked);
        assert_eq!(b.offer(g(1, 4, 4, &[])).0, Offer::Dropped);
        assert_eq!(b.drops(), 1);
        // A ready group is never dropped.
        assert_eq!(b.offer(g(1, 1, 1, &[])).0, Offer::Ready);
        assert_eq!(drain(&mut b), vec![(1, 2), (1, 3)]);
        assert_eq!(b.offer(g(1, 4, 4, &[])).0, Offer::Ready);
    }

    #[test]
    fn covered_parked_groups_are_discarded_after_a_jump() {
        let mut b = CausalBuffer::new(VersionVector::new(), 10, 1 << 20);
        b.offer(g(1, 3, 3, &[]));
        b.offer(g(1, 5, 5, &[]));
        // Anti-entropy brought 1 up to 4.
        b.observe(&VersionVector::from(vec![(ReplicaId(1), 4)]));
        assert_eq!(drain(&mut b), vec![(1, 5)]);
        assert_eq!(b.parked(), 0);
    }

    /// Any arrival order of a causally consistent history is handed out in an
    /// order where each group finds its dependencies applied.
    #[test]
    fn every_arrival_order_is_delivered_causally() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        // Three origins writing in turn, each seeing all earlier writes.
        let mut history = Vec::new();
        let mut vv = VersionVector::new();
        for i in 0..60u64 {
            let origin = ReplicaId(1 + i % 3);
            let first = vv.get(origin) + 1;
            let last = first + i % 2;
            history.push(DeltaGroup {
                origin,
                first,
                last,
                deps: vv.clone(),
                ts: Hlc(i),
                ops: Vec::new(),
            });
            vv.set_max(origin, last);
        }
        for seed in 0..50 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut arrivals = history.clone();
            arrivals.shuffle(&mut rng);
            // Some arrive twice.
            let extra: Vec<DeltaGroup> = arrivals.iter().take(10).cloned().collect();
            arrivals.extend(extra);
            let mut b = CausalBuffer::new(VersionVector::new(), 1000, 1 << 24);
            let mut applied = VersionVector::new();
            let apply = |x: DeltaGroup, applied: &mut VersionVector| {
                assert!(x.deps.leq(applied), "dependencies missing");
                assert_eq!(x.first, applied.get(x.origin) + 1);
                applied.set_max(x.origin, x.last);
            };
            for a in arrivals {
                if let (_, Some(x)) = b.offer(a) {
                    apply(x, &mut applied);
                }
                while let Some(x) = b.pop_ready() {
                    apply(x, &mut applied);
                }
            }
            assert_eq!(applied, vv);
            assert_eq!(b.parked(), 0);
        }
    }
}
