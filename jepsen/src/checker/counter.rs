//! The counter checker.
//!
//! Clients add positive amounts to one counter and read it. Then:
//! - every final read (one per node, after the heal) lies within
//!   `[sum of ok adds, sum of ok adds + sum of info adds]`;
//! - every read, and the value an add answers with, is at most the sum of
//!   every add (ok or info) invoked before it completed: a counter cannot
//!   show more than was ever added;
//! - every read is at least the sum of the adds that completed `ok` on the
//!   same node before it was invoked: a node never loses its own writes.
//!
//! Reads in between are not held to the global lower bound: a node that has
//! not heard from the others yet reads less, which is allowed.

use super::{examples, Report};
use crate::history::{pairs, Op, OpType};
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn check(history: &[Op]) -> Report {
    let ps = pairs(history);
    let mut lower: i64 = 0;
    let mut unknown: i64 = 0;
    // (invoke time, amount) of every add that may have happened, and
    // (completion time, node, amount) of every ok add.
    let mut invoked: Vec<(u64, i64)> = Vec::new();
    let mut ok_adds: Vec<(u64, &str, i64)> = Vec::new();
    for p in &ps {
        if p.invoke.f != "add" {
            continue;
        }
        let n = p.invoke.value.as_i64().unwrap_or(0);
        match p.kind() {
            OpType::Ok => {
                lower += n;
                ok_adds.push((p.end(), p.invoke.node.as_deref().unwrap_or(""), n));
                invoked.push((p.invoke.time, n));
            }
            OpType::Fail => {}
            _ => {
                unknown += n;
                invoked.push((p.invoke.time, n));
            }
        }
    }
    invoked.sort();
    ok_adds.sort();
    let upper = lower + unknown;
    let invoked_before = |t: u64| -> i64 {
        invoked
            .iter()
            .take_while(|(ti, _)| *ti <= t)
            .map(|(_, n)| n)
            .sum()
    };
    let own_before = |t: u64, node: &str| -> i64 {
        ok_adds
            .iter()
            .take_while(|(te, _, _)| *te < t)
            .filter(|(_, nd, _)| *nd == node)
            .map(|(_, _, n)| n)
            .sum()
    };

    let mut errors: Vec<Value> = Vec::new();
    let mut final_values: HashMap<String, i64> = HashMap::new();
    let mut reads = 0usize;
    for p in &ps {
        let Some(c) = p.complete.filter(|c| c.kind == OpType::Ok) else {
            continue;
        };
        let node = p.invoke.node.as_deref().unwrap_or("");
        let (value, own_extra) = match p.invoke.f.as_str() {
            "read" => (c.value.as_i64(), 0),
            // The value after the add includes the add itself.
            "add" => (
                c.result.as_ref().and_then(Value::as_i64),
                p.invoke.value.as_i64().unwrap_or(0),
            ),
            _ => continue,
        };
        let Some(value) = value else { continue };
        reads += 1;
        if c.final_read {
            final_values.insert(node.to_string(), value);
            if value < lower || value > upper {
                errors.push(
                    json!({"kind": "final-out-of-bounds", "node": node, "value": value,
                    "bounds": [lower, upper], "index": c.index}),
                );
            }
            continue;
        }
        let hi = invoked_before(c.time);
        if value > hi {
            errors.push(
                json!({"kind": "above-upper-bound", "node": node, "value": value,
                "upper": hi, "index": c.index}),
            );
        }
        let lo = own_before(p.invoke.time, node) + own_extra;
        if value < lo {
            errors.push(
                json!({"kind": "below-own-writes", "node": node, "value": value,
                "lower": lo, "index": c.index}),
            );
        }
    }
    let valid = errors.is_empty() && !final_values.is_empty();
    Report::new(
        valid,
        json!({
            "lower_bound": lower,
            "upper_bound": upper,
            "final_values": final_values,
            "reads_checked": reads,
            "error_count": errors.len(),
            "errors": examples(&errors),
            "note": if final_values.is_empty() { "no final read" } else { "" },
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
        h.call(0, "add", json!(5), json!(5), "n1").result = Some(json!(5));
        h.invoke(1, "add", json!(3), "n2");
        h.info(1, "add", json!(3), "n2");
        h.call(2, "read", Value::Null, json!(5), "n1");
        h.call(3, "read", Value::Null, json!(0), "n2"); // not replicated yet: fine
        h
    }

    #[test]
    fn valid_counter() {
        let mut h = base();
        h.final_read(4, "read", json!(8), "n1");
        h.final_read(5, "read", json!(8), "n2");
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.figures["lower_bound"], 5);
        assert_eq!(r.figures["upper_bound"], 8);
    }

    #[test]
    fn reports_a_final_value_out_of_bounds() {
        let mut h = base();
        h.final_read(4, "read", json!(9), "n1");
        h.final_read(5, "read", json!(4), "n2");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["error_count"], 2);
    }

    #[test]
    fn reports_a_read_above_what_was_added() {
        let mut h = base();
        h.call(6, "read", Value::Null, json!(100), "n2");
        h.final_read(4, "read", json!(8), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["errors"][0]["kind"], "above-upper-bound");
    }

    #[test]
    fn reports_a_node_that_lost_its_own_write() {
        let mut h = base();
        h.call(6, "read", Value::Null, json!(0), "n1");
        h.final_read(4, "read", json!(5), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["errors"][0]["kind"], "below-own-writes");
    }
}
