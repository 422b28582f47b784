//! The peer protocol's messages, and the compact wire form of delta groups.
//!
//! A sender opens one bidirectional stream per session on its own connection
//! to the receiver and speaks first:
//!
//! ```text
//! sender                               receiver
//!   Hello {name, replica, vv}  ──────▶
//!                              ◀──────  Welcome {replica, vv}     (what it has applied)
//!   [anti-entropy, when the receiver is new or behind the sender's log:
//!   AeOffer {ctx, chunks}      ──────▶
//!                              ◀──────  AeNeed {chunks}
//!   AeRows {chunk, rows, done} ──────▶  (for each chunk asked for)
//!   AeEnd                      ──────▶
//!                              ◀──────  Ack {vv}]
//!   Groups {..} | Ping         ──────▶
//!                              ◀──────  Ack {vv, drops}           (every ack interval, and a heartbeat)
//! ```
//!
//! Every message is one frame: the format-version byte and postcard
//! ([`dotkv_crdt::codec`]). Groups travel in [`WireBatch`]es, which name each
//! origin once and give each group's dependencies as the change from the
//! previous group's, so a small update costs little more than its ops.

use dotkv_crdt::{CodecError, Hlc, ReplicaId, VersionVector};
use dotkv_storage::{DeltaGroup, DeltaOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One peer-protocol message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    Hello {
        /// The sender's node name (also the common name of its certificate).
        name: String,
        replica: ReplicaId,
        vv: VersionVector,
    },
    Welcome {
        replica: ReplicaId,
        /// What the receiver has applied: the sender starts after it.
        vv: VersionVector,
    },
    Groups(WireBatch),
    /// Sent by an idle sender so the receiver's read timeout does not fire.
    Ping,
    Ack {
        /// What the receiver has applied.
        vv: VersionVector,
        /// How many groups the receiver has ever dropped (its causal buffer
        /// was full). When it grows, the sender resends from `vv`.
        drops: u64,
    },
    AeOffer {
        /// The sender's version vector, read before its state: the context
        /// of every transferred row, and what the receiver covers afterwards.
        ctx: VersionVector,
        chunks: Vec<AeChunk>,
    },
    AeNeed {
        chunks: Vec<u32>,
    },
    AeRows {
        chunk: u32,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        /// The last frame of this chunk.
        done: bool,
    },
    AeEnd,
}

/// A range of the state's ordered rows: from `start` to the next chunk's
/// start, and the digest of the rows the sender holds there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeChunk {
    pub start: Vec<u8>,
    pub digest: u64,
}

impl PeerMsg {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        dotkv_crdt::encode(self)
    }

    pub fn decode(raw: &[u8]) -> Result<PeerMsg, CodecError> {
        dotkv_crdt::decode(raw)
    }
}

/// Delta groups in transit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WireBatch {
    origins: Vec<ReplicaId>,
    groups: Vec<WireGroup>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct WireGroup {
    /// Index into the batch's origins.
    origin: u32,
    first: u64,
    /// `last - first`.
    span: u64,
    /// Entries of the dependencies that differ from the previous group's in
    /// this batch (the first group: from an empty vector), as (origin index,
    /// value; 0 for an entry that is gone). The origin's own entry is left
    /// out: it is always `first - 1`.
    deps: Vec<(u32, u64)>,
    /// `ts` minus the previous group's `ts` in this batch.
    ts_delta: i64,
    ops: Vec<DeltaOp>,
}

/// Why a batch could not be decoded into groups.
#[derive(Debug, thiserror::Error)]
#[error("malformed delta batch: {0}")]
pub struct BatchError(String);

impl WireBatch {
    /// The compact form of `groups` (consumed: their ops move).
    pub fn encode(groups: Vec<DeltaGroup>) -> WireBatch {
        let mut origins: Vec<ReplicaId> = Vec::new();
        let index = |r: ReplicaId, origins: &mut Vec<ReplicaId>| -> u32 {
            match origins.iter().position(|o| *o == r) {
                Some(i) => i as u32,
                None => {
                    origins.push(r);
                    (origins.len() - 1) as u32
                }
            }
        };
        let mut prev: BTreeMap<ReplicaId, u64> = BTreeMap::new();
        let mut prev_ts: u64 = 0;
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let origin = index(g.origin, &mut origins);
            let mut cur: BTreeMap<ReplicaId, u64> =
                g.deps.iter().filter(|(r, _)| *r != g.origin).collect();
            cur.retain(|_, v| *v > 0);
            let mut deps = Vec::new();
            for (r, v) in &cur {
                if prev.get(r) != Some(v) {
                    deps.push((index(*r, &mut origins), *v));
                }
            }
            for r in prev.keys() {
                if !cur.contains_key(r) {
                    deps.push((index(*r, &mut origins), 0));
                }
            }
            let ts = g.ts.0;
            out.push(WireGroup {
                origin,
                first: g.first,
                span: g.last.saturating_sub(g.first),
                deps,
                ts_delta: ts.wrapping_sub(prev_ts) as i64,
                ops: g.ops,
            });
            prev_ts = ts;
            prev = cur;
        }
        WireBatch {
            origins,
            groups: out,
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The groups back, checked for well-formedness.
    pub fn decode(self) -> Result<Vec<DeltaGroup>, BatchError> {
        let origin_of = |i: u32| -> Result<ReplicaId, BatchError> {
            self.origins
                .get(i as usize)
                .copied()
                .ok_or_else(|| BatchError(format!("origin index {i} out of range")))
        };
        let mut prev: BTreeMap<ReplicaId, u64> = BTreeMap::new();
        let mut prev_ts: u64 = 0;
        let mut out = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let origin = origin_of(g.origin)?;
            if g.first == 0 {
                return Err(BatchError("a group starts at sequence 0".into()));
            }
            let last = g
                .first
                .checked_add(g.span)
                .ok_or_else(|| BatchError("a group's sequence range overflows".into()))?;
            let mut cur = prev.clone();
            for (i, v) in &g.deps {
                let r = origin_of(*i)?;
                if *v == 0 {
                    cur.remove(&r);
                } else {
                    cur.insert(r, *v);
                }
            }
            cur.remove(&origin);
            let mut deps: Vec<(ReplicaId, u64)> = cur.iter().map(|(r, v)| (*r, *v)).collect();
            if g.first > 1 {
                deps.push((origin, g.first - 1));
            }
            let ts = prev_ts.wrapping_add(g.ts_delta as u64);
            out.push(DeltaGroup {
                origin,
                first: g.first,
                last,
                deps: VersionVector::from(deps),
                ts: Hlc(ts),
                ops: Vec::new(),
            });
            prev_ts = ts;
            prev = cur;
        }
        for (dst, src) in out.iter_mut().zip(self.groups) {
            dst.ops = src.ops;
        }
        Ok(out)
    }
}

/// FNV-1a, 64 bits: a digest that is the same in every process and version.
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The digest of one row, folded into a chunk's running digest.
pub fn fold_row(digest: u64, key: &[u8], value: &[u8]) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, &(key.len() as u32).to_be_bytes());
    h = fnv1a(h, key);
    h = fnv1a(h, value);
    digest.rotate_left(7) ^ h
}

#[cfg(test)]
mod tests {
    use super::*;
    use dotkv_crdt::PNCounter;

    fn group(origin: u64, first: u64, last: u64, deps: &[(u64, u64)], ts: u64) -> DeltaGroup {
        DeltaGroup {
            origin: ReplicaId(origin),
            first,
            last,
            deps: deps.iter().map(|(r, v)| (ReplicaId(*r), *v)).collect(),
            ts: Hlc(ts),
            ops: vec![DeltaOp::Counter {
                key: format!("k{first}"),
                delta: PNCounter::default(),
            }],
        }
    }

    #[test]
    fn batches_round_trip() {
        let groups = vec![
            group(7, 1, 1, &[], 1000 << 16),
            group(7, 2, 3, &[(7, 1)], (1000 << 16) + 1),
            group(9, 5, 5, &[(9, 4), (7, 3), (11, 2)], 999 << 16),
            group(7, 4, 4, &[(7, 3), (9, 5)], 1002 << 16),
            group(11, 1, 1, &[], 5),
        ];
        let batch = WireBatch::encode(groups.clone());
        let raw = PeerMsg::Groups(batch).encode().unwrap();
        let PeerMsg::Groups(back) = PeerMsg::decode(&raw).unwrap() else {
            panic!("not groups");
        };
        assert_eq!(back.decode().unwrap(), groups);
    }

    #[test]
    fn consecutive_groups_of_one_origin_cost_little() {
        let groups: Vec<DeltaGroup> = (1..=100)
            .map(|i| {
                group(
                    0xdead_beef_dead_beef,
                    i,
                    i,
                    &[(0xdead_beef_dead_beef, i - 1), (0x1234_5678_9abc_def0, 40)],
                    (1_700_000_000_000 << 16) + i,
                )
            })
            .collect();
        let raw = PeerMsg::Groups(WireBatch::encode(groups)).encode().unwrap();
        // Each group: origin index, first, span, no dependency change, a
        // one-byte timestamp delta and its op (the op itself is ~8 bytes).
        assert!(raw.len() < 100 * 20, "{} bytes", raw.len());
    }

    #[test]
    fn malformed_batches_are_errors() {
        let mut b = WireBatch::encode(vec![group(1, 1, 1, &[], 0)]);
        b.groups[0].origin = 5;
        assert!(b.clone().decode().is_err());
        b.groups[0].origin = 0;
        b.groups[0].first = 0;
        assert!(b.clone().decode().is_err());
        b.groups[0].first = u64::MAX;
        b.groups[0].span = 1;
        assert!(b.decode().is_err());
    }
}
