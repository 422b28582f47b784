//! OR-set benchmarks, dotkv-crdt against `crdts::Orswot` on identical data:
//! the join of two divergent 100k-element replicas, and one-element deltas
//! applied to a million-element set.
//!
//! `cargo bench -p dotkv-crdt --bench orset -- --warm-up-time 1 --measurement-time 3`

mod common;

use common::{time_deltas, CrdtsInsert, DotkvInsert, JoinCase};
use crdts::CvRDT;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dotkv_crdt::Lattice;
use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

fn join(c: &mut Criterion) {
    for replicas in [3, 16] {
        // Built on first use, so a filter that skips this group skips building it.
        let case = OnceCell::new();
        let case = || case.get_or_init(|| JoinCase::new(replicas));
        let mut g = c.benchmark_group(format!("orset_join_100k/{replicas}_replicas"));
        // One join takes milliseconds; ten samples are plenty.
        g.sample_size(10);
        // The clones are setup, so only the join is timed. `crdts` merges by
        // value, so its setup clones side B too.
        g.bench_function("dotkv", |b| {
            let case = case();
            b.iter_batched(
                || case.dotkv.0.clone(),
                |mut a| {
                    a.join(black_box(&case.dotkv.1));
                    a
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function("crdts", |b| {
            let case = case();
            b.iter_batched(
                || (case.crdts.0.clone(), case.crdts.1.clone()),
                |(mut a, other)| {
                    a.merge(black_box(other));
                    a
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

fn delta_into_big_set(c: &mut Criterion) {
    let mut g = c.benchmark_group("orset_delta_into_1M");
    // Each target is built on first use and dropped after its benchmark.
    let mut dotkv = None;
    g.bench_function("dotkv", |b| {
        let target = dotkv.get_or_insert_with(DotkvInsert::new);
        b.iter_custom(|n| time_deltas(target, n))
    });
    drop(dotkv);
    // The same, with each delta freed after the clock stops: the apply alone.
    let mut dotkv = None;
    g.bench_function("dotkv_delta_freed_untimed", |b| {
        let target = dotkv.get_or_insert_with(|| DotkvInsert::new().keeping_deltas());
        b.iter_custom(|n| time_deltas(target, n))
    });
    drop(dotkv);
    let mut crdts = None;
    g.bench_function("crdts", |b| {
        let target = crdts.get_or_insert_with(CrdtsInsert::new);
        b.iter_custom(|n| time_deltas(target, n))
    });
    drop(crdts);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = join, delta_into_big_set
}
criterion_main!(benches);
