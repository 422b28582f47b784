//! Counter benchmarks, dotkv-crdt against `crdts`: joining a one-entry delta
//! (one replica's increment) into a 16-replica GCounter and PNCounter. `crdts`
//! is measured both ways it can ship an increment: its op (`CmRDT::apply`) and
//! a one-entry state (`CvRDT::merge`).
//!
//! `cargo bench -p dotkv-crdt --bench counter -- --warm-up-time 1 --measurement-time 3`

mod common;

use common::{same_counter_values, time_deltas, CounterKind, CrdtsCounter, CrdtsWay, DotkvCounter};
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;

fn counters(c: &mut Criterion) {
    for (kind, name) in [(CounterKind::G, "gcounter"), (CounterKind::PN, "pncounter")] {
        same_counter_values(kind);
        let mut g = c.benchmark_group(format!("{name}_delta_into_16_replicas"));
        // Each target is built on first use, so a filter skips building it.
        let mut dotkv = None;
        g.bench_function("dotkv_join", |b| {
            let target = dotkv.get_or_insert_with(|| DotkvCounter::new(kind));
            b.iter_custom(|n| time_deltas(target, n))
        });
        let mut kept = None;
        g.bench_function("dotkv_join_delta_freed_untimed", |b| {
            let target = kept.get_or_insert_with(|| DotkvCounter::new(kind).keeping_deltas());
            b.iter_custom(|n| time_deltas(target, n))
        });
        let mut op = None;
        g.bench_function("crdts_apply_op", |b| {
            let target = op.get_or_insert_with(|| CrdtsCounter::new(kind, CrdtsWay::Op));
            b.iter_custom(|n| time_deltas(target, n))
        });
        let mut merge = None;
        g.bench_function("crdts_merge", |b| {
            let target = merge.get_or_insert_with(|| CrdtsCounter::new(kind, CrdtsWay::Merge));
            b.iter_custom(|n| time_deltas(target, n))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = counters
}
criterion_main!(benches);
