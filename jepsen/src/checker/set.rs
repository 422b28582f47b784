//! The set checker, with Jepsen's set-full semantics.
//!
//! Clients `add` unique elements to one set and `read` all of it. For every
//! element the checker finds when it became *known* (its add completed `ok`,
//! or a read saw it), then looks at every read invoked after that:
//! - **lost**: known, but missing from the final reads (one per node, after
//!   the heal). Without final reads, missing from the last read.
//! - **unexpected**: read, but never added, or added by an operation that
//!   *failed* (which means it certainly did not happen).
//! - **duplicated**: appears twice in one read.
//! - **stale**: some read invoked after the element was known lacked it. In
//!   an eventually consistent store that is expected (a remote node that has
//!   not received it yet); it is counted, not an error.
//! - **stable latency**: from known to the first read after the last read that
//!   lacked it: how long until every read saw it.
//!
//! Valid when nothing is lost, unexpected or duplicated.

use super::{elements, examples, percentiles, Report};
use crate::history::{pairs, Op, OpType};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};

struct Read<'a> {
    key: Option<&'a str>,
    invoke: u64,
    end: u64,
    elements: HashSet<String>,
    final_read: bool,
    node: Option<&'a str>,
}

pub fn check(history: &[Op]) -> Report {
    check_fs(history, "add", "read")
}

/// The set-full check over adds named `add_f` and reads named `read_f`.
pub fn check_fs(history: &[Op], add_f: &str, read_f: &str) -> Report {
    // element -> (key, add invoke time, add completion type, completion time)
    type Add<'a> = (Option<&'a str>, u64, OpType, u64);
    let mut adds: HashMap<String, Add<'_>> = HashMap::new();
    let mut reads: Vec<Read<'_>> = Vec::new();
    let mut duplicated: BTreeMap<String, usize> = BTreeMap::new();
    for p in pairs(history) {
        if p.invoke.f == add_f {
            adds.insert(
                p.invoke.value.to_string(),
                (p.invoke.key.as_deref(), p.invoke.time, p.kind(), p.end()),
            );
        } else if p.invoke.f == read_f && p.is_ok() {
            let c = p.complete.expect("ok has a completion");
            let list = elements(&c.value);
            let set: HashSet<String> = list.iter().cloned().collect();
            if set.len() != list.len() {
                let mut seen = HashSet::new();
                for e in list {
                    if !seen.insert(e.clone()) {
                        *duplicated.entry(e).or_default() += 1;
                    }
                }
            }
            reads.push(Read {
                key: p.invoke.key.as_deref(),
                invoke: p.invoke.time,
                end: c.time,
                elements: set,
                final_read: c.final_read || p.invoke.final_read,
                node: c.node.as_deref(),
            });
        }
    }
    reads.sort_by_key(|r| r.invoke);

    let mut unexpected: Vec<String> = Vec::new();
    let mut first_seen: HashMap<&str, u64> = HashMap::new();
    let mut unexpected_set: HashSet<&str> = HashSet::new();
    for r in &reads {
        for e in &r.elements {
            match adds.get(e) {
                Some((k, _, kind, _)) if *k == r.key && *kind != OpType::Fail => {
                    let t = first_seen.entry(e.as_str()).or_insert(r.end);
                    *t = (*t).min(r.end);
                }
                // Never added, added to another key, or certainly not added.
                _ => {
                    unexpected_set.insert(e.as_str());
                }
            }
        }
    }
    unexpected.extend(unexpected_set.into_iter().map(str::to_string));
    unexpected.sort();

    let finals: Vec<&Read<'_>> = reads.iter().filter(|r| r.final_read).collect();
    let mut lost: Vec<String> = Vec::new();
    let mut stale: Vec<String> = Vec::new();
    let mut never_read = 0usize;
    let mut stable_ok = 0usize;
    let mut latencies: Vec<f64> = Vec::new();
    let mut attempted: Vec<&String> = adds.keys().collect();
    attempted.sort();
    for e in attempted {
        let (key, _, kind, end) = adds[e];
        let finals: Vec<&&Read<'_>> = finals.iter().filter(|r| r.key == key).collect();
        let seen = first_seen.get(e.as_str()).copied();
        let known = match (kind, seen) {
            (OpType::Ok, Some(s)) => Some(end.min(s)),
            (OpType::Ok, None) => Some(end),
            (_, Some(s)) => Some(s),
            (_, None) => None,
        };
        let Some(known) = known else {
            never_read += 1;
            continue;
        };
        let after: Vec<&Read<'_>> = reads
            .iter()
            .filter(|r| r.key == key && r.invoke >= known)
            .collect();
        let is_lost = if !finals.is_empty() {
            finals.iter().any(|r| !r.elements.contains(e))
        } else {
            after.last().is_some_and(|r| !r.elements.contains(e))
        };
        if is_lost {
            lost.push(e.clone());
            continue;
        }
        let last_absent = after
            .iter()
            .rposition(|r| !r.elements.contains(e) && !r.final_read);
        match last_absent {
            Some(i) => {
                stale.push(e.clone());
                // Final reads come long after; they do not date stability.
                if let Some(next) = after[i + 1..]
                    .iter()
                    .find(|r| !r.final_read && r.elements.contains(e))
                {
                    latencies.push(next.invoke.saturating_sub(known) as f64 / 1e6);
                }
            }
            None => latencies.push(0.0),
        }
        stable_ok += 1;
    }
    let mut lost_nodes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &finals {
        *lost_nodes.entry(r.node.unwrap_or("?")).or_default() += lost
            .iter()
            .filter(|e| adds[*e].0 == r.key && !r.elements.contains(*e))
            .count();
    }
    let valid = lost.is_empty() && unexpected.is_empty() && duplicated.is_empty();
    Report::new(
        valid,
        json!({
            "attempt_count": adds.len(),
            "acknowledged_count": adds.values().filter(|a| a.2 == OpType::Ok).count(),
            "read_count": reads.len(),
            "final_read_count": finals.len(),
            "stable_count": stable_ok,
            "lost_count": lost.len(),
            "lost": examples(&lost),
            "lost_per_final_read": lost_nodes,
            "unexpected_count": unexpected.len(),
            "unexpected": examples(&unexpected),
            "duplicated_count": duplicated.len(),
            "duplicated": examples(duplicated.keys()),
            "stale_count": stale.len(),
            "never_read_count": never_read,
            "stable_latencies_ms": percentiles(latencies),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use serde_json::{json, Value};

    fn base() -> H {
        let mut h = H::default();
        h.call(0, "add", json!(1), json!(1), "n1");
        h.call(1, "add", json!(2), json!(2), "n2");
        h.call(0, "read", Value::Null, json!([1]), "n2"); // stale for 2
        h.call(1, "read", Value::Null, json!([1, 2]), "n1");
        h
    }

    #[test]
    fn valid_history_with_stale_read() {
        let mut h = base();
        h.final_read(2, "read", json!([1, 2]), "n1");
        h.final_read(3, "read", json!([2, 1]), "n2");
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.figures["stale_count"], 1);
        assert_eq!(r.figures["stable_count"], 2);
    }

    #[test]
    fn reports_a_lost_element() {
        let mut h = base();
        h.final_read(2, "read", json!([1, 2]), "n1");
        h.final_read(3, "read", json!([1]), "n2");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["lost"], json!(["2"]));
        assert_eq!(r.figures["lost_per_final_read"]["n2"], 1);
    }

    #[test]
    fn reports_an_unexpected_element_and_a_failed_add_that_appears() {
        let mut h = base();
        h.invoke(4, "add", json!(3), "n1");
        h.fail(4, "add", json!(3), "n1");
        h.final_read(2, "read", json!([1, 2, 3, 99]), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["unexpected"], json!(["3", "99"]));
    }

    #[test]
    fn reports_a_duplicated_element() {
        let mut h = base();
        h.final_read(2, "read", json!([1, 2, 2]), "n1");
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["duplicated"], json!(["2"]));
    }

    #[test]
    fn checks_each_key_on_its_own() {
        let mut h = H::default();
        h.invoke(0, "add", json!(1), "n1").key = Some("set-0".into());
        h.ok(0, "add", json!(1), "n1").key = Some("set-0".into());
        h.invoke(1, "read", Value::Null, "n1").key = Some("set-1".into());
        h.ok(1, "read", json!([1]), "n1").key = Some("set-1".into());
        h.invoke(2, "read", Value::Null, "n1").key = Some("set-0".into());
        h.ok(2, "read", json!([]), "n1").key = Some("set-0".into());
        let r = check(&h.ops);
        assert!(!r.valid);
        assert_eq!(r.figures["unexpected"], json!(["1"]));
        assert_eq!(r.figures["lost"], json!(["1"]));
    }

    #[test]
    fn an_indeterminate_add_may_be_absent_or_present() {
        let mut h = base();
        h.invoke(4, "add", json!(3), "n1");
        h.info(4, "add", json!(3), "n1");
        h.invoke(5, "add", json!(4), "n1");
        h.info(5, "add", json!(4), "n1");
        h.final_read(2, "read", json!([1, 2, 4]), "n1");
        let r = check(&h.ops);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.figures["never_read_count"], 1);
    }
}
