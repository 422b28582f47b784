//! The register (last-writer-wins) checker.
//!
//! Clients write unique values to one register and read it. The API does not
//! show a write's HLC timestamp, so the checker tests what the HLC rules
//! promise in terms a client can observe, using causal tokens:
//!
//! - A node's HLC stamps a write above everything the node had applied. So if
//!   write A had been applied at node N before write B was made there, B
//!   beats A. The history shows that A was applied at N when the token A's
//!   answer carried is covered by `K(B)`: the join of every token N answered
//!   with before B was invoked (a node's applied set only grows, also across a
//!   restart) and, for reads, the token the read waited for. We write A → B.
//! - The final value (every node, after the heal) must be a written value, and
//!   no `ok` write may follow it (F → W means W should have won).
//! - A read returns a value that was written (ok or info, never a failed
//!   write), and never one that an applied write follows: if W was applied at
//!   the node before the read (W's token within `K(read)`), the read returns
//!   W or a winner over W, not a value V with V → W; and not "unset".
//!
//! This is exactly what breaks under clock skew when a node stamps writes
//! with its wall clock alone: a node whose clock is behind makes a write that
//! loses to a value it had already seen.

use super::{examples, Report};
use crate::history::{pairs, Op, OpType, Pair};
use dotkv_crdt::{Lattice, VersionVector};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn vv(token: Option<&String>) -> Option<VersionVector> {
    token.and_then(|t| dotkv_node::token::decode(t).ok())
}

struct Write<'a> {
    pair: Pair<'a>,
    /// The token of the ok answer.
    token: Option<VersionVector>,
}

pub fn check(history: &[Op]) -> Report {
    let ps = pairs(history);
    // Per node: (completion time, answer token) of every ok client op.
    let mut answered: HashMap<&str, Vec<(u64, VersionVector)>> = HashMap::new();
    for p in &ps {
        if let (Some(c), Some(node)) = (p.complete, p.invoke.node.as_deref()) {
            if c.kind == OpType::Ok {
                if let Some(t) = vv(c.token.as_ref()) {
                    answered.entry(node).or_default().push((c.time, t));
                }
            }
        }
    }
    // Prefix joins, so K(op) is one binary search.
    let mut prefix: HashMap<&str, Vec<(u64, VersionVector)>> = HashMap::new();
    for (node, mut list) in answered {
        list.sort_by_key(|(t, _)| *t);
        let mut acc = VersionVector::new();
        let joined = list
            .into_iter()
            .map(|(t, v)| {
                acc.join(&v);
                (t, acc.clone())
            })
            .collect();
        prefix.insert(node, joined);
    }
    let k_of = |p: &Pair<'_>, with_invoke_token: bool| -> VersionVector {
        let mut k = VersionVector::new();
        if let Some(list) = p.invoke.node.as_deref().and_then(|n| prefix.get(n)) {
            let i = list.partition_point(|(t, _)| *t < p.invoke.time);
            if i > 0 {
                k.join(&list[i - 1].1);
            }
        }
        if with_invoke_token {
            if let Some(t) = vv(p.invoke.token.as_ref()) {
                k.join(&t);
            }
        }
        k
    };

    let mut writes: HashMap<String, Write<'_>> = HashMap::new();
    for p in &ps {
        if p.invoke.f == "write" {
            let token = p
                .complete
                .filter(|c| c.kind == OpType::Ok)
                .and_then(|c| vv(c.token.as_ref()));
            writes.insert(
                p.invoke.value.to_string(),
                Write {
                    pair: p.clone(),
                    token,
                },
            );
        }
    }
    // K of every ok write: what its node had applied when it was made.
    let write_k: HashMap<&str, VersionVector> = writes
        .iter()
        .map(|(v, w)| (v.as_str(), k_of(&w.pair, false)))
        .collect();
    let ok_writes: Vec<(&str, &VersionVector)> = writes
        .iter()
        .filter(|(_, w)| w.pair.is_ok())
        .filter_map(|(v, w)| w.token.as_ref().map(|t| (v.as_str(), t)))
        .collect();
    // a → b: a's answer token is within K(b).
    let follows = |a: &str, b: &str| -> bool {
        a != b
            && match (writes.get(a).and_then(|w| w.token.as_ref()), write_k.get(b)) {
                (Some(ta), Some(kb)) => ta.leq(kb),
                _ => false,
            }
    };

    let mut errors: Vec<Value> = Vec::new();
    let mut finals: BTreeMap<String, Value> = BTreeMap::new();
    let mut reads = 0usize;
    for p in &ps {
        if p.invoke.f != "read" {
            continue;
        }
        let Some(c) = p.complete.filter(|c| c.kind == OpType::Ok) else {
            continue;
        };
        reads += 1;
        let node = p.invoke.node.clone().unwrap_or_default();
        if c.final_read {
            finals.insert(node.clone(), c.value.clone());
        }
        let read = c.value.to_string();
        let written = writes.get(&read);
        if !c.value.is_null() {
            match written {
                None => {
                    errors.push(json!({"kind": "never-written", "node": node, "value": c.value, "index": c.index}));
                    continue;
                }
                Some(w) if w.pair.kind() == OpType::Fail => {
                    errors.push(json!({"kind": "failed-write-read", "node": node, "value": c.value, "index": c.index}));
                    continue;
                }
                _ => {}
            }
        }
        let k = k_of(p, true);
        for (w, tw) in &ok_writes {
            if !tw.leq(&k) {
                continue;
            }
            if c.value.is_null() {
                errors.push(json!({"kind": "applied-write-missing", "node": node, "applied": w, "index": c.index}));
                break;
            }
            if follows(&read, w) {
                errors.push(json!({"kind": "stale-read", "node": node, "value": c.value,
                    "superseded_by": w, "index": c.index}));
                break;
            }
        }
        if c.final_read && !c.value.is_null() {
            if let Some((w, _)) = ok_writes.iter().find(|(w, _)| follows(&read, w)) {
                errors.push(
                    json!({"kind": "final-superseded", "node": node, "value": c.value,
                    "superseded_by": w, "index": c.index}),
                );
            }
        }
    }
    if finals.values().any(Value::is_null) && !ok_writes.is_empty() {
        errors.push(json!({"kind": "final-unset", "finals": finals}));
    }
    let valid = errors.is_empty() && !finals.is_empty();
    Report::new(
        valid,
        json!({
            "write_count": writes.len(),
            "ok_write_count": ok_writes.len(),
            "reads_checked": reads,
            "final_values": finals,
            "error_count": errors.len(),
            "errors": examples(&errors),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use dotkv_crdt::ReplicaId;

    fn t(entries: &[(u64, u64)]) -> Option<String> {
        let v: VersionVector = entries.iter().map(|&(r, c)| (ReplicaId(r), c)).collect();
        Some(dotkv_node::token::encode(&v))
    }

    /// n1 writes 1; n2 reads it (waiting for its token), then writes 2, which
    /// must win.
    fn base() -> H {
        let mut h = H::default();
        h.invoke(0, "write", json!(1), "n1");
        h.ok(0, "write", json!(1), "n1").token = t(&[(1, 1)]);
        h.invoke(1, "read", Value::Null, "n2").token = t(&[(1, 1)]);
        h.ok(1, "read", json!(1), "n2").token = t(&[(1, 1)]);
        h.invoke(1, "write", json!(2), "n2");
        h.ok(1, "write", json!(2), "n2").token = t(&[(1, 1), (2, 1)]);
        h
    }

    #[test]
    fn the_causally_last_write_wins() {
        let mut h = base();
        h.final_read(5, "read", json!(2), "n1");
        h.final_read(6, "read", json!(2), "n2");
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn reports_a_final_value_that_a_later_write_superseded() {
        // What a node stamping with a lagging wall clock would produce.
        let mut h = base();
        h.final_read(5, "read", json!(1), "n1");
        h.final_read(6, "read", json!(1), "n2");
        let r = check(&h.ops);
        assert!(!r.valid);
        let kinds: Vec<&Value> = r.figures["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["kind"])
            .collect();
        assert!(kinds.contains(&&json!("final-superseded")), "{kinds:?}");
    }

    #[test]
    fn reports_a_value_never_written() {
        let mut h = base();
        h.call(3, "read", Value::Null, json!(42), "n1");
        h.final_read(5, "read", json!(2), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["errors"][0]["kind"], "never-written");
    }

    #[test]
    fn reports_a_stale_read_after_a_token_wait() {
        let mut h = base();
        h.invoke(3, "read", Value::Null, "n1").token = t(&[(1, 1), (2, 1)]);
        h.ok(3, "read", json!(1), "n1");
        h.final_read(5, "read", json!(2), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["errors"][0]["kind"], "stale-read");
    }
}
