//! The session checker: read-your-writes and monotonic reads with causal
//! tokens.
//!
//! Every client adds unique elements to one shared set and reads it, sending
//! the token of its previous answer each time and moving to a random node (in
//! any datacenter) for every operation. Per process, in order:
//! - **read-your-writes**: a read contains every element the process added
//!   with an `ok` answer before;
//! - **monotonic reads**: a read contains every element an earlier read of the
//!   process returned.
//!
//! Both are checked per key (the set's generation, see `workload`).
//!
//! A process whose operation ended in `info` starts a new session (a new
//! process id without a token), as in Jepsen.

use super::{elements, examples, Report};
use crate::history::{pairs, Op, OpType, Process};
use serde_json::json;
use std::collections::{HashMap, HashSet};

pub fn check(history: &[Op]) -> Report {
    // Per process: own ok adds, elements of earlier reads.
    type Session<'a> = (&'a Process, Option<&'a str>);
    let mut own: HashMap<Session<'_>, HashSet<String>> = HashMap::new();
    let mut seen: HashMap<Session<'_>, HashSet<String>> = HashMap::new();
    let mut ryw = Vec::new();
    let mut monotonic = Vec::new();
    let mut reads = 0usize;
    for p in pairs(history) {
        let Some(c) = p.complete.filter(|c| c.kind == OpType::Ok) else {
            continue;
        };
        if c.final_read {
            continue;
        }
        let proc_ = &p.invoke.process;
        let session = (proc_, p.invoke.key.as_deref());
        match p.invoke.f.as_str() {
            "add" => {
                own.entry(session)
                    .or_default()
                    .insert(p.invoke.value.to_string());
            }
            "read" => {
                reads += 1;
                let got: HashSet<String> = elements(&c.value).into_iter().collect();
                let mine = own.entry(session).or_default();
                let mut missing_own: Vec<&String> = mine.difference(&got).collect();
                let before = seen.entry(session).or_default();
                let mut missing_seen: Vec<&String> = before
                    .difference(&got)
                    .filter(|e| !mine.contains(*e))
                    .collect();
                missing_own.sort();
                missing_seen.sort();
                if !missing_own.is_empty() {
                    ryw.push(json!({"process": proc_, "node": c.node, "index": c.index,
                        "missing": examples(&missing_own)}));
                }
                if !missing_seen.is_empty() {
                    monotonic.push(json!({"process": proc_, "node": c.node, "index": c.index,
                        "missing": examples(&missing_seen)}));
                }
                before.extend(got);
            }
            _ => {}
        }
    }
    let valid = ryw.is_empty() && monotonic.is_empty() && reads > 0;
    Report::new(
        valid,
        json!({
            "reads_checked": reads,
            "read_your_writes_violations": ryw.len(),
            "monotonic_read_violations": monotonic.len(),
            "read_your_writes": examples(&ryw),
            "monotonic_reads": examples(&monotonic),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use serde_json::Value;

    #[test]
    fn tokens_kept_their_promises() {
        let mut h = H::default();
        h.call(0, "add", json!(1), json!(1), "n1");
        h.call(0, "read", Value::Null, json!([1]), "n2");
        h.call(1, "read", Value::Null, json!([]), "n3"); // another session
        h.call(1, "read", Value::Null, json!([1]), "n1");
        assert!(check(&h.ops).valid);
    }

    #[test]
    fn reports_a_monotonic_read_violation() {
        let mut h = H::default();
        h.call(0, "add", json!(1), json!(1), "n1");
        h.call(1, "read", Value::Null, json!([1]), "n1");
        h.call(1, "read", Value::Null, json!([]), "n2");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["monotonic_read_violations"], 1);
        assert_eq!(r.figures["read_your_writes_violations"], 0);
    }

    #[test]
    fn reports_a_read_your_writes_violation() {
        let mut h = H::default();
        h.call(0, "add", json!(7), json!(7), "n1");
        h.call(0, "read", Value::Null, json!([]), "n2");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["read_your_writes_violations"], 1);
    }
}
