//! Checkers: pure functions from a history to a verdict with figures. They
//! read only the history, so `dotkv-jepsen check DIR` can run them again on a
//! stored (or doctored) `history.jsonl`.
//!
//! Each workload is judged by its own checker, by the convergence checker
//! (every node identical after the final heal) and by a stats checker.

pub mod batch;
pub mod convergence;
pub mod counter;
pub mod register;
pub mod session;
pub mod set;

use crate::history::{pairs, Op, OpType};
use crate::workload::Workload;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Longest list of examples a report carries; the counts are always full.
pub const MAX_EXAMPLES: usize = 20;

/// One checker's verdict and figures.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub valid: bool,
    #[serde(flatten)]
    pub figures: Map<String, Value>,
}

impl Report {
    pub fn new(valid: bool, figures: Value) -> Report {
        let figures = match figures {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("figures".into(), other);
                m
            }
        };
        Report { valid, figures }
    }
}

/// Runs every checker that applies to `workload` and returns the combined
/// results (`results.json`'s `checkers` and `valid`).
pub fn check_all(workload: Workload, history: &[Op]) -> (bool, BTreeMap<String, Report>) {
    let mut reports = BTreeMap::new();
    let main = match workload {
        Workload::Set => set::check(history),
        Workload::Counter => counter::check(history),
        Workload::Register => register::check(history),
        Workload::Session => session::check(history),
        Workload::Batch => batch::check(history),
        Workload::Convergence => convergence::check_mixed(history),
    };
    // The convergence workload's own check is about the final state; the
    // name "convergence" belongs to the check every workload gets.
    let name = match workload {
        Workload::Convergence => "final-state",
        w => w.name(),
    };
    reports.insert(name.to_string(), main);
    reports.insert("convergence".into(), convergence::check(history));
    reports.insert("stats".into(), stats(history));
    let valid = reports.values().all(|r| r.valid);
    (valid, reports)
}

/// Counts of completions per function; invalid when no client operation
/// succeeded at all (a test that did nothing proves nothing).
pub fn stats(history: &[Op]) -> Report {
    let mut by_f: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut total = [0u64; 3];
    for p in pairs(history) {
        let i = match p.kind() {
            OpType::Ok => 0,
            OpType::Fail => 1,
            _ => 2,
        };
        by_f.entry(p.invoke.f.clone()).or_default()[i] += 1;
        total[i] += 1;
    }
    let by_f: Map<String, Value> = by_f
        .into_iter()
        .map(|(f, c)| (f, json!({"ok": c[0], "fail": c[1], "info": c[2]})))
        .collect();
    Report::new(
        total[0] > 0,
        json!({"ok": total[0], "fail": total[1], "info": total[2], "by_f": by_f}),
    )
}

/// Percentiles (0, 0.5, 0.95, 0.99, 1) of a list of milliseconds.
pub fn percentiles(mut xs: Vec<f64>) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let i = ((xs.len() - 1) as f64 * q).round() as usize;
        (xs[i] * 10.0).round() / 10.0
    };
    json!({"0": at(0.0), "0.5": at(0.5), "0.95": at(0.95), "0.99": at(0.99), "1": at(1.0)})
}

/// Elements of a set read, as canonical JSON texts (so `5` and `"5"` differ).
pub fn elements(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(|e| e.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The first `MAX_EXAMPLES` items, as JSON.
pub fn examples<T: Serialize>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Array(
        items
            .into_iter()
            .take(MAX_EXAMPLES)
            .map(|x| serde_json::to_value(x).unwrap_or(Value::Null))
            .collect(),
    )
}
