//! The register (last-writer-wins) checker.
//!
//! Clients write unique values to one register and read it. The checker tests
//! the HLC rules twice: with the order keys the node shows, and in terms a
//! client can observe without them, using causal tokens.
//!
//! With the order keys (`X-Dotkv-Hlc`, recorded as `hlc` on the `ok` of
//! writes and reads; `<hlc>.<replica>`, compared by timestamp, then replica):
//!
//! - every final read (one per node, after the heal) shows the same value
//!   with the same key;
//! - the final value was written by an `ok` or `info` write (never a failed
//!   one, never a value nobody wrote), and its key is at least the key of
//!   every `ok` write: a write that saw another is stamped above it, so the
//!   greatest key is never replaced, and the register keeps it. If an `ok`
//!   write made the final value, it is the `ok` write with the greatest key;
//! - a read shows the key the `ok` write of its value reported (and all reads
//!   of one value show one key); no two `ok` writes report the same key.
//!
//! Ops without `hlc` (histories from before the header) are skipped by these
//! checks; the figures count them.
//!
//! With causal tokens:
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
use dotkv_api::LwwOrder;
use dotkv_crdt::{Lattice, VersionVector};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

fn vv(token: Option<&String>) -> Option<VersionVector> {
    token.and_then(|t| dotkv_node::token::decode(t).ok())
}

struct Write<'a> {
    pair: Pair<'a>,
    /// The token of the ok answer.
    token: Option<VersionVector>,
    /// The order key the ok answer reported.
    hlc: Option<LwwOrder>,
}

/// The order key an op recorded, if any; one that does not parse is an error.
fn order_of(op: &Op, errors: &mut Vec<Value>) -> Option<LwwOrder> {
    let text = op.hlc.as_deref()?;
    match text.parse() {
        Ok(k) => Some(k),
        Err(e) => {
            errors.push(json!({"kind": "bad-hlc", "hlc": text, "error": e, "index": op.index}));
            None
        }
    }
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

    let mut errors: Vec<Value> = Vec::new();
    let mut writes: HashMap<String, Write<'_>> = HashMap::new();
    for p in &ps {
        if p.invoke.f == "write" {
            let ok = p.complete.filter(|c| c.kind == OpType::Ok);
            let token = ok.and_then(|c| vv(c.token.as_ref()));
            let hlc = ok.and_then(|c| order_of(c, &mut errors));
            writes.insert(
                p.invoke.value.to_string(),
                Write {
                    pair: p.clone(),
                    token,
                    hlc,
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

    let mut finals: BTreeMap<String, Value> = BTreeMap::new();
    // Per node: the final read's order key (None: it carried none) and index.
    let mut final_keys: BTreeMap<String, (Option<LwwOrder>, u64)> = BTreeMap::new();
    let mut reads = 0usize;
    let mut hlcs = HlcFigures::default();
    // The first order key a read showed for each value, for the values whose
    // write reported none.
    let mut read_keys: HashMap<String, (LwwOrder, u64)> = HashMap::new();
    for p in &ps {
        if p.invoke.f != "read" {
            continue;
        }
        let Some(c) = p.complete.filter(|c| c.kind == OpType::Ok) else {
            continue;
        };
        reads += 1;
        let node = p.invoke.node.clone().unwrap_or_default();
        let key = order_of(c, &mut errors);
        if c.final_read {
            finals.insert(node.clone(), c.value.clone());
            final_keys.insert(node.clone(), (key, c.index));
        }
        let read = c.value.to_string();
        let written = writes.get(&read);
        if !c.value.is_null() {
            match key {
                None => hlcs.reads_without += 1,
                Some(k) => {
                    hlcs.reads_with += 1;
                    match written.filter(|w| w.pair.is_ok()).and_then(|w| w.hlc) {
                        Some(wk) => {
                            hlcs.reads_matched += 1;
                            if k != wk {
                                errors.push(json!({"kind": "hlc-mismatch", "node": node,
                                    "value": c.value, "read_hlc": k.to_string(),
                                    "write_hlc": wk.to_string(), "index": c.index}));
                            }
                        }
                        None => match read_keys.get(&read) {
                            Some((first, at)) if *first != k => {
                                errors.push(json!({"kind": "hlc-inconsistent", "node": node,
                                    "value": c.value, "read_hlc": k.to_string(),
                                    "earlier_hlc": first.to_string(), "earlier_index": at,
                                    "index": c.index}));
                            }
                            Some(_) => {}
                            None => {
                                read_keys.insert(read.clone(), (k, c.index));
                            }
                        },
                    }
                }
            }
        }
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

    // The order keys of the ok writes.
    let mut ok_keys: Vec<(LwwOrder, &str)> = Vec::new();
    for (v, w) in &writes {
        if w.pair.is_ok() {
            match w.hlc {
                Some(k) => ok_keys.push((k, v.as_str())),
                None => hlcs.ok_writes_without += 1,
            }
        }
    }
    ok_keys.sort();
    for pair in ok_keys.windows(2) {
        if pair[0].0 == pair[1].0 {
            errors.push(
                json!({"kind": "duplicate-write-hlc", "hlc": pair[0].0.to_string(),
                "values": [pair[0].1, pair[1].1]}),
            );
        }
    }
    let max_ok = ok_keys.last().copied();

    // Every node's final read: one value, one order key.
    let values: BTreeSet<String> = finals.values().map(Value::to_string).collect();
    if values.len() > 1 {
        errors.push(json!({"kind": "final-values-differ", "finals": finals}));
    }
    let shown: BTreeMap<&str, Option<String>> = final_keys
        .iter()
        .map(|(n, (k, _))| (n.as_str(), k.map(|k| k.to_string())))
        .collect();
    let with_key: BTreeSet<LwwOrder> = final_keys.values().filter_map(|(k, _)| *k).collect();
    let finals_without_key = finals
        .iter()
        .filter(|(n, v)| !v.is_null() && final_keys.get(*n).is_some_and(|(k, _)| k.is_none()))
        .count();
    if with_key.len() > 1 {
        errors.push(json!({"kind": "final-hlcs-differ", "final_hlcs": shown}));
    } else if !with_key.is_empty() && finals_without_key > 0 {
        // Some nodes showed a key and others did not: a node dropped it.
        errors.push(json!({"kind": "final-hlc-missing", "final_hlcs": shown}));
    }

    // The final value: who wrote it, and does its key beat every ok write's?
    let final_value = (values.len() == 1)
        .then(|| finals.values().next().cloned())
        .flatten();
    let final_write = final_value
        .as_ref()
        .filter(|v| !v.is_null())
        .map(|v| writes.get(&v.to_string()));
    let written_by = match &final_write {
        None if final_value.is_some() => "unset",
        None if finals.is_empty() => "no-final-read",
        None => "disagreed",
        Some(None) => "never-written",
        Some(Some(w)) => match w.pair.kind() {
            OpType::Ok => "ok",
            OpType::Fail => "failed-write",
            _ => "info",
        },
    };
    if let Some(max) = max_ok {
        let (max_key, max_value) = max;
        for (node, (key, index)) in &final_keys {
            let Some(k) = key else { continue };
            if *k < max_key {
                errors.push(json!({"kind": "final-below-ok-write", "node": node,
                    "value": finals.get(node), "final_hlc": k.to_string(),
                    "ok_write": max_value, "ok_write_hlc": max_key.to_string(),
                    "index": index}));
            }
        }
        if let Some(Some(w)) = &final_write {
            if let (true, Some(wk)) = (w.pair.is_ok(), w.hlc) {
                if wk != max_key {
                    errors.push(json!({"kind": "final-not-max-ok-write",
                        "value": final_value, "write_hlc": wk.to_string(),
                        "max_ok_write": max_value, "max_ok_hlc": max_key.to_string()}));
                }
            }
        }
    }
    // Final reads are reads too: `reads_without` counts them.
    let note = if hlcs.ok_writes_without + hlcs.reads_without == 0 {
        String::new()
    } else {
        format!(
            "{} ok writes and {} reads of a value ({} of them final) carry no hlc (a history \
             from before X-Dotkv-Hlc, or an answer without it): the order-key checks skip them",
            hlcs.ok_writes_without, hlcs.reads_without, finals_without_key
        )
    };

    let valid = errors.is_empty() && !finals.is_empty();
    Report::new(
        valid,
        json!({
            "write_count": writes.len(),
            "ok_write_count": ok_writes.len(),
            "reads_checked": reads,
            "final_values": finals,
            "final_hlcs": shown,
            "final_written_by": written_by,
            "max_ok_write_hlc": max_ok.map(|(k, _)| k.to_string()),
            "ok_writes_with_hlc": ok_keys.len(),
            "ok_writes_without_hlc": hlcs.ok_writes_without,
            "reads_with_hlc": hlcs.reads_with,
            "reads_without_hlc": hlcs.reads_without,
            "reads_hlc_matched": hlcs.reads_matched,
            "hlc_note": note,
            "error_count": errors.len(),
            "errors": examples(&errors),
        }),
    )
}

/// Counts of the order-key checks.
#[derive(Default)]
struct HlcFigures {
    ok_writes_without: usize,
    reads_with: usize,
    reads_without: usize,
    /// Reads compared with the key their ok write reported.
    reads_matched: usize,
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

    /// An order key as `X-Dotkv-Hlc` shows it.
    fn k(hlc: u64, replica: u64) -> Option<String> {
        Some(LwwOrder { hlc, replica }.to_string())
    }

    fn final_with(h: &mut H, p: u64, v: Value, node: &str, hlc: Option<String>) {
        h.invoke(p, "read", Value::Null, node).final_read = true;
        let op = h.ok(p, "read", v, node);
        op.final_read = true;
        op.hlc = hlc;
    }

    fn kinds(r: &Report) -> Vec<String> {
        r.figures["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }

    /// [`base`] with the order keys the nodes reported: 1 at (100, n1), 2 at
    /// (200, n2); and an `info` write of 3 on n3 that may have happened.
    fn base_hlc() -> H {
        let mut h = H::default();
        h.invoke(0, "write", json!(1), "n1");
        let w = h.ok(0, "write", json!(1), "n1");
        (w.token, w.hlc) = (t(&[(1, 1)]), k(100, 1));
        h.invoke(1, "read", Value::Null, "n2").token = t(&[(1, 1)]);
        let r = h.ok(1, "read", json!(1), "n2");
        (r.token, r.hlc) = (t(&[(1, 1)]), k(100, 1));
        h.invoke(1, "write", json!(2), "n2");
        let w = h.ok(1, "write", json!(2), "n2");
        (w.token, w.hlc) = (t(&[(1, 1), (2, 1)]), k(200, 2));
        h.invoke(2, "write", json!(3), "n3");
        h.info(2, "write", json!(3), "n3");
        h
    }

    #[test]
    fn the_greatest_order_key_wins() {
        let mut h = base_hlc();
        for (p, n) in [(5, "n1"), (6, "n2"), (7, "n3")] {
            final_with(&mut h, p, json!(2), n, k(200, 2));
        }
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.figures["final_written_by"], "ok");
        assert_eq!(r.figures["max_ok_write_hlc"], "200.0000000000000002");
        assert_eq!(r.figures["final_hlcs"]["n3"], "200.0000000000000002");
        assert_eq!(r.figures["ok_writes_with_hlc"], 2);
        assert_eq!(r.figures["reads_hlc_matched"], 4);
        assert_eq!(r.figures["hlc_note"], "");

        // The info write may have happened, and may win with a greater key.
        let mut h = base_hlc();
        for (p, n) in [(5, "n1"), (6, "n2")] {
            final_with(&mut h, p, json!(3), n, k(200, 3));
        }
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.figures["final_written_by"], "info");
    }

    #[test]
    fn reports_a_final_value_below_an_ok_write() {
        // The info write won although its key is below the ok write of 2:
        // what a node that ignores timestamps when joining would produce.
        // The tokens cannot tell (3's answer never came).
        let mut h = base_hlc();
        for (p, n) in [(5, "n1"), (6, "n2")] {
            final_with(&mut h, p, json!(3), n, k(150, 3));
        }
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(kinds(&r), ["final-below-ok-write"; 2], "{r:?}");
        let e = &r.figures["errors"][0];
        assert_eq!(e["ok_write"], "2");
        assert_eq!(e["final_hlc"], "150.0000000000000003");
        // Equal timestamps: the replica decides.
        let mut h = base_hlc();
        final_with(&mut h, 5, json!(3), "n1", k(200, 1));
        assert_eq!(kinds(&check(&h.ops)), ["final-below-ok-write"]);
    }

    #[test]
    fn reports_nodes_disagreeing_on_the_final_order_key() {
        let mut h = base_hlc();
        final_with(&mut h, 5, json!(2), "n1", k(200, 2));
        final_with(&mut h, 6, json!(2), "n2", k(201, 2));
        let r = check(&h.ops);
        assert!(!r.valid);
        let found = kinds(&r);
        assert!(found.contains(&"final-hlcs-differ".into()), "{found:?}");
        assert!(found.contains(&"hlc-mismatch".into()), "{found:?}");
        // A node that shows the value without its key.
        let mut h = base_hlc();
        final_with(&mut h, 5, json!(2), "n1", k(200, 2));
        final_with(&mut h, 6, json!(2), "n2", None);
        assert_eq!(kinds(&check(&h.ops)), ["final-hlc-missing"]);
        // Different values.
        let mut h = base_hlc();
        final_with(&mut h, 5, json!(2), "n1", k(200, 2));
        final_with(&mut h, 6, json!(3), "n2", k(300, 3));
        assert!(kinds(&check(&h.ops)).contains(&"final-values-differ".into()));
    }

    #[test]
    fn reports_a_read_whose_key_is_not_its_writes() {
        let mut h = base_hlc();
        h.invoke(3, "read", Value::Null, "n1");
        h.ok(3, "read", json!(1), "n1").hlc = k(100, 9);
        // Two reads of the info write must agree with each other.
        h.invoke(4, "read", Value::Null, "n3");
        h.ok(4, "read", json!(3), "n3").hlc = k(150, 3);
        h.invoke(4, "read", Value::Null, "n1");
        h.ok(4, "read", json!(3), "n1").hlc = k(151, 3);
        final_with(&mut h, 5, json!(2), "n1", k(200, 2));
        let r = check(&h.ops);
        assert_eq!(kinds(&r), ["hlc-mismatch", "hlc-inconsistent"], "{r:?}");
        // Two ok writes with one key, and a key that does not parse.
        let mut h = base_hlc();
        h.invoke(3, "write", json!(4), "n1");
        h.ok(3, "write", json!(4), "n1").hlc = k(200, 2);
        h.invoke(3, "write", json!(5), "n1");
        h.ok(3, "write", json!(5), "n1").hlc = Some("200".into());
        final_with(&mut h, 5, json!(2), "n1", k(200, 2));
        let found = kinds(&check(&h.ops));
        assert!(found.contains(&"duplicate-write-hlc".into()), "{found:?}");
        assert!(found.contains(&"bad-hlc".into()), "{found:?}");
    }

    #[test]
    fn histories_without_order_keys_still_check() {
        let mut h = base();
        h.final_read(5, "read", json!(2), "n1");
        h.final_read(6, "read", json!(2), "n2");
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.figures["ok_writes_without_hlc"], 2);
        assert_eq!(r.figures["reads_without_hlc"], 3);
        assert_eq!(r.figures["max_ok_write_hlc"], Value::Null);
        assert!(r.figures["hlc_note"].as_str().unwrap().contains("skip"));
        // An old history round-trips through JSON without an hlc field.
        let line = serde_json::to_string(&h.ops[1]).unwrap();
        assert!(!line.contains("hlc"), "{line}");
        let back: Op = serde_json::from_str(&line).unwrap();
        assert_eq!(back.hlc, None);
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
