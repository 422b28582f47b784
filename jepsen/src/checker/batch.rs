//! The batch checker: atomic visibility.
//!
//! Each `batch` operation adds one unique element to two sets, `a` and `b`, in
//! one `POST /v1/batch`. A read fetches `a` and then `b` from the same node.
//! Sets only grow, so if the batch is visible atomically, an element in the
//! `a` read is also in the later `b` read: **half-visible** otherwise. The
//! final reads (after the heal) must hold every `ok` batch's element in both
//! sets, nothing that was never added, and `a == b`.

use super::{elements, examples, Report};
use crate::history::{pairs, Op, OpType};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};

pub fn check(history: &[Op]) -> Report {
    let mut attempts: HashMap<String, (Option<&str>, OpType)> = HashMap::new();
    let ps = pairs(history);
    for p in &ps {
        if p.invoke.f == "batch" {
            attempts.insert(
                p.invoke.value.to_string(),
                (p.invoke.key.as_deref(), p.kind()),
            );
        }
    }
    let mut half = Vec::new();
    let mut lost = BTreeSet::new();
    let mut unexpected = BTreeSet::new();
    let mut final_mismatch = Vec::new();
    let mut reads = 0usize;
    for p in &ps {
        let Some(c) = p.complete.filter(|c| c.kind == OpType::Ok) else {
            continue;
        };
        if p.invoke.f != "read" {
            continue;
        }
        reads += 1;
        let key = p.invoke.key.as_deref();
        let a: BTreeSet<String> = elements(&c.value["a"]).into_iter().collect();
        let b: BTreeSet<String> = elements(&c.value["b"]).into_iter().collect();
        for e in a.union(&b) {
            let fine =
                matches!(attempts.get(e), Some((k, kind)) if *k == key && *kind != OpType::Fail);
            if !fine {
                unexpected.insert(e.clone());
            }
        }
        let only_a: Vec<&String> = a.difference(&b).collect();
        if !only_a.is_empty() {
            half.push(json!({"node": c.node, "index": c.index, "in_a_not_b": examples(&only_a)}));
        }
        if c.final_read {
            if a != b {
                final_mismatch.push(json!({"node": c.node, "index": c.index}));
            }
            for (e, (k, kind)) in &attempts {
                if *k == key && *kind == OpType::Ok && !(a.contains(e) && b.contains(e)) {
                    lost.insert(e.clone());
                }
            }
        }
    }
    let valid =
        half.is_empty() && lost.is_empty() && unexpected.is_empty() && final_mismatch.is_empty();
    Report::new(
        valid,
        json!({
            "batch_count": attempts.len(),
            "reads_checked": reads,
            "half_visible_count": half.len(),
            "half_visible": examples(&half),
            "lost_count": lost.len(),
            "lost": examples(&lost),
            "unexpected_count": unexpected.len(),
            "unexpected": examples(&unexpected),
            "final_mismatch": final_mismatch,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use serde_json::Value;

    fn base() -> H {
        let mut h = H::default();
        h.call(0, "batch", json!(1), json!(1), "n1");
        h.call(1, "batch", json!(2), json!(2), "n2");
        // Between the two GETs, batch 2 arrived: in b but not yet in a is fine.
        h.call(2, "read", Value::Null, json!({"a": [1], "b": [1, 2]}), "n1");
        h
    }

    #[test]
    fn atomic_batches_pass() {
        let mut h = base();
        h.final_read(3, "read", json!({"a": [1, 2], "b": [1, 2]}), "n1");
        assert!(check(&h.ops).valid);
    }

    #[test]
    fn reports_a_half_visible_batch() {
        let mut h = base();
        h.call(2, "read", Value::Null, json!({"a": [1, 2], "b": [1]}), "n2");
        h.final_read(3, "read", json!({"a": [1, 2], "b": [1, 2]}), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["half_visible_count"], 1);
    }

    #[test]
    fn reports_a_lost_batch() {
        let mut h = base();
        h.final_read(3, "read", json!({"a": [1], "b": [1]}), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["lost"], json!(["2"]));
    }
}
