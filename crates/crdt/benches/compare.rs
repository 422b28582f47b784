//! The summary `make bench-crdt` prints: dotkv-crdt against `crdts` 7.3 on every
//! benchmarked case, in one table, with dotkv's targets. Timings are medians of
//! several runs of a plain `Instant` loop, the two libraries' runs interleaved
//! so that load on the machine hits both alike. The criterion benches `orset`
//! and `counter` measure the same workloads with confidence intervals.
//!
//! `cargo bench -p dotkv-crdt --bench compare`

mod common;

use common::{
    median, median_usize, metadata_sizes, same_counter_values, time_deltas, CounterKind,
    CrdtsCounter, CrdtsInsert, CrdtsWay, DeltaBench, DotkvCounter, DotkvInsert, JoinCase,
};
use crdts::CvRDT;
use dotkv_crdt::Lattice;
use std::hint::black_box;
use std::time::Instant;

/// Runs per figure; the median is reported.
const RUNS: usize = 7;
/// Deltas per run in the delta cases.
const DELTAS: u64 = 50_000;

struct Row {
    case: String,
    unit: &'static str,
    dotkv: f64,
    /// dotkv with each delta freed after the clock stops (delta cases only).
    dotkv_join_only: Option<f64>,
    crdts: f64,
    /// The ratio crdts / dotkv must reach, and how to say so.
    target: Option<(f64, &'static str)>,
}

/// Milliseconds for one join of side B into a clone of side A, per library.
/// The clones are not timed; `crdts` merges by value, so B is cloned for it.
fn join_ms(case: &JoinCase) -> (f64, f64) {
    let (mut d, mut c) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let mut a = case.dotkv.0.clone();
        let start = Instant::now();
        a.join(black_box(&case.dotkv.1));
        d.push(start.elapsed().as_secs_f64() * 1e3);
        drop(black_box(a));

        let (mut a, b) = (case.crdts.0.clone(), case.crdts.1.clone());
        let start = Instant::now();
        a.merge(black_box(b));
        c.push(start.elapsed().as_secs_f64() * 1e3);
        drop(black_box(a));
    }
    (median(&mut d), median(&mut c))
}

/// Nanoseconds per delta in one run of [`DELTAS`] deltas.
fn run_ns<B: DeltaBench>(b: &mut B) -> f64 {
    time_deltas(b, DELTAS).as_nanos() as f64 / DELTAS as f64
}

/// Median ns per delta of dotkv (deltas freed in the loop), dotkv (freed after
/// the clock stops) and crdts, runs interleaved after one unmeasured warm-up.
fn delta_ns<D, C>(dotkv: &mut D, set_keep: fn(&mut D, bool), crdts: &mut C) -> (f64, f64, f64)
where
    D: DeltaBench,
    C: DeltaBench,
{
    run_ns(dotkv);
    run_ns(crdts);
    let (mut d, mut k, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        set_keep(dotkv, false);
        d.push(run_ns(dotkv));
        set_keep(dotkv, true);
        k.push(run_ns(dotkv));
        c.push(run_ns(crdts));
    }
    set_keep(dotkv, false);
    (median(&mut d), median(&mut k), median(&mut c))
}

fn main() {
    let mut rows = Vec::new();

    for replicas in [3, 16] {
        let case = JoinCase::new(replicas);
        let (a, b, joined) = case.sizes();
        let (d, c) = join_ms(&case);
        rows.push(Row {
            case: format!("OR-set join, {replicas} replicas ({a} ⊔ {b} → {joined})"),
            unit: "ms",
            dotkv: d,
            dotkv_join_only: None,
            crdts: c,
            target: Some((2.0, "≥ 2× crdts")),
        });
    }

    let delta_row = rows.len();
    {
        let mut d = DotkvInsert::new();
        let mut c = CrdtsInsert::new();
        let (d, k, c) = delta_ns(&mut d, |d, keep| d.keep = keep, &mut c);
        rows.push(Row {
            case: "OR-set one-element delta into 1M set".into(),
            unit: "ns",
            dotkv: d,
            dotkv_join_only: Some(k),
            crdts: c,
            target: None,
        });
    }

    for (kind, name) in [(CounterKind::G, "GCounter"), (CounterKind::PN, "PNCounter")] {
        same_counter_values(kind);
        for (way, how) in [(CrdtsWay::Op, "crdts op"), (CrdtsWay::Merge, "crdts merge")] {
            let mut d = DotkvCounter::new(kind);
            let mut c = CrdtsCounter::new(kind, way);
            let (d, k, c) = delta_ns(&mut d, |d, keep| d.keep = keep, &mut c);
            rows.push(Row {
                case: format!("{name} 1-entry delta into 16 replicas ({how})"),
                unit: "ns",
                dotkv: d,
                dotkv_join_only: Some(k),
                crdts: c,
                target: None,
            });
        }
    }

    let meta = metadata_sizes(10_000, 1);
    rows.push(Row {
        case: "metadata per one-dot element (median, encoded)".into(),
        unit: "B",
        dotkv: median_usize(&meta.dotkv),
        dotkv_join_only: None,
        crdts: median_usize(&meta.crdts),
        target: None,
    });
    let meta_max = *meta.dotkv.iter().max().expect("samples") as f64;

    println!(
        "dotkv-crdt vs crdts 7.3: median of {RUNS} runs, lower is better, \
         ratio = crdts / dotkv (> 1: dotkv is better)"
    );
    println!(
        "{:<58} {:>12} {:>12} {:>8}  {:>15}  target",
        "case", "dotkv", "crdts", "ratio", "dotkv join only"
    );
    for r in &rows {
        let ratio = r.crdts / r.dotkv;
        let target = match r.target {
            Some((min, text)) => {
                format!("{text}: {}", if ratio >= min { "met" } else { "MISSED" })
            }
            None => String::new(),
        };
        let join_only = r
            .dotkv_join_only
            .map_or_else(|| "-".to_string(), |k| format!("{k:.1} {}", r.unit));
        println!(
            "{:<58} {:>9.2} {:<2} {:>9.2} {:<2} {:>7.2}×  {join_only:>15}  {target}",
            r.case, r.dotkv, r.unit, r.crdts, r.unit, ratio
        );
    }
    println!(
        "Both libraries drop each delta inside the timed loop (crdts takes it by value); \
         \"dotkv join only\" frees it after the clock stops."
    );
    let delta = rows[delta_row].dotkv;
    println!(
        "target: one-element delta into 1M set < 1 µs: {} ({delta:.0} ns)",
        if delta < 1_000.0 { "met" } else { "MISSED" }
    );
    println!(
        "target: ≤ 24 B metadata per one-dot element: {} (worst of 10000: {meta_max} B)",
        if meta_max <= 24.0 { "met" } else { "MISSED" }
    );
}
