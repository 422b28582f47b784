//! The convergence checker, which judges every test: after the final heal,
//! every node must hold the same state within a deadline.
//!
//! The harness records a `converge` entry (process `nemesis`) with whether
//! every node's version vector became equal before the deadline and how long
//! it took, then one final read per node. Final reads of the same function
//! must be identical on every node (sets compared as sets).
//!
//! [`check_mixed`] is the main checker of the `convergence` workload, whose
//! clients write a set, a counter and a register at once.

use super::{elements, examples, Report};
use crate::history::{pairs, Op, OpType};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Sorts arrays, recursively, so sets read in different orders compare equal.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(normalize).collect();
            items.sort_by_key(|x| x.to_string());
            Value::Array(items)
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (k.clone(), normalize(x))).collect())
        }
        other => other.clone(),
    }
}

pub fn check(history: &[Op]) -> Report {
    let converge = history
        .iter()
        .rev()
        .find(|o| !o.process.is_client() && o.f == "converge");
    let (converged, time_ms, since_fault_ms) = match converge {
        Some(op) => (
            op.value["converged"].as_bool().unwrap_or(false),
            op.value["time_ms"].clone(),
            op.value
                .get("since_last_fault_ms")
                .cloned()
                .unwrap_or(Value::Null),
        ),
        None => (false, Value::Null, Value::Null),
    };
    // (f, key) -> node -> normalized final value
    let mut finals: BTreeMap<(&str, Option<&str>), BTreeMap<String, Value>> = BTreeMap::new();
    for op in history {
        if op.final_read && op.kind == OpType::Ok && op.process.is_client() {
            finals
                .entry((op.f.as_str(), op.key.as_deref()))
                .or_default()
                .insert(op.node.clone().unwrap_or_default(), normalize(&op.value));
        }
    }
    let mut divergent = Vec::new();
    for ((f, key), per_node) in &finals {
        let distinct: BTreeSet<String> = per_node.values().map(Value::to_string).collect();
        if distinct.len() > 1 {
            let summary: BTreeMap<&String, String> = per_node
                .iter()
                .map(|(n, v)| {
                    let s = v.to_string();
                    let short = if s.len() > 200 {
                        format!("{}…", &s[..200])
                    } else {
                        s
                    };
                    (n, short)
                })
                .collect();
            divergent.push(json!({"f": f, "key": key, "per_node": summary}));
        }
    }
    let nodes: BTreeSet<&String> = finals.values().flat_map(|m| m.keys()).collect();
    let valid = converged && !finals.is_empty() && divergent.is_empty();
    Report::new(
        valid,
        json!({
            "converged": converged,
            "time_ms": time_ms,
            "since_last_fault_ms": since_fault_ms,
            "nodes_with_final_reads": nodes.len(),
            "divergent": divergent,
        }),
    )
}

/// The `convergence` workload's own checks on the final state: no acknowledged
/// set element lost, nothing unexpected, the counter within its bounds, the
/// register holding a written value.
pub fn check_mixed(history: &[Op]) -> Report {
    let mut set_adds: BTreeMap<String, OpType> = BTreeMap::new();
    let (mut lower, mut unknown) = (0i64, 0i64);
    let mut reg_writes: BTreeMap<String, OpType> = BTreeMap::new();
    for p in pairs(history) {
        let v = &p.invoke.value;
        match (p.invoke.f.as_str(), p.kind()) {
            ("set-add", k) => {
                set_adds.insert(v.to_string(), k);
            }
            ("counter-add", OpType::Ok) => lower += v.as_i64().unwrap_or(0),
            ("counter-add", OpType::Fail) => {}
            ("counter-add", _) => unknown += v.as_i64().unwrap_or(0),
            ("register-write", k) => {
                reg_writes.insert(v.to_string(), k);
            }
            _ => {}
        }
    }
    let mut errors = Vec::new();
    let mut finals = 0;
    for op in history
        .iter()
        .filter(|o| o.final_read && o.kind == OpType::Ok && o.process.is_client())
    {
        finals += 1;
        let node = op.node.clone().unwrap_or_default();
        let set: BTreeSet<String> = elements(&op.value["set"]).into_iter().collect();
        let lost: Vec<&String> = set_adds
            .iter()
            .filter(|(e, k)| **k == OpType::Ok && !set.contains(*e))
            .map(|(e, _)| e)
            .collect();
        let unexpected: Vec<&String> = set
            .iter()
            .filter(|e| matches!(set_adds.get(*e), None | Some(OpType::Fail)))
            .collect();
        if !lost.is_empty() || !unexpected.is_empty() {
            errors.push(json!({"kind": "set", "node": node, "lost": examples(&lost),
                "unexpected": examples(&unexpected)}));
        }
        let c = op.value["counter"].as_i64().unwrap_or(i64::MIN);
        if c < lower || c > lower + unknown {
            errors.push(
                json!({"kind": "counter", "node": node, "value": op.value["counter"],
                "bounds": [lower, lower + unknown]}),
            );
        }
        let r = &op.value["register"];
        let r_ok = if r.is_null() {
            !reg_writes.values().any(|k| *k == OpType::Ok)
        } else {
            matches!(reg_writes.get(&r.to_string()), Some(k) if *k != OpType::Fail)
        };
        if !r_ok {
            errors.push(json!({"kind": "register", "node": node, "value": r}));
        }
    }
    Report::new(
        errors.is_empty() && finals > 0,
        json!({
            "final_reads": finals,
            "set_adds": set_adds.len(),
            "counter_bounds": [lower, lower + unknown],
            "register_writes": reg_writes.len(),
            "error_count": errors.len(),
            "errors": examples(&errors),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;

    #[test]
    fn identical_final_reads_converge() {
        let mut h = H::default();
        h.converged();
        h.final_read(0, "read", json!([1, 2]), "n1");
        h.final_read(1, "read", json!([2, 1]), "n2");
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn reports_divergent_nodes_and_a_missing_convergence() {
        let mut h = H::default();
        h.final_read(0, "read", json!([1, 2]), "n1");
        h.final_read(1, "read", json!([1]), "n2");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["converged"], false);
        assert_eq!(r.figures["divergent"][0]["f"], "read");
    }

    #[test]
    fn mixed_final_state() {
        let mut h = H::default();
        h.call(0, "set-add", json!(1), json!(1), "n1");
        h.call(0, "counter-add", json!(2), json!(2), "n1");
        h.call(0, "register-write", json!(9), json!(9), "n1");
        h.final_read(
            1,
            "read",
            json!({"set": [1], "counter": 2, "register": 9}),
            "n1",
        );
        assert!(check_mixed(&h.ops).valid);
        h.final_read(
            2,
            "read",
            json!({"set": [], "counter": 3, "register": 8}),
            "n2",
        );
        let r = check_mixed(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["error_count"], 3);
    }
}
