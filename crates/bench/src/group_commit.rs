//! Group commit measured in the storage layer: dotkv's writer
//! (`dotkv_storage::Writer`, real RocksDB in a temporary directory, under
//! `durability = "fsync"`) driven by tasks in this process, with no HTTP in
//! between. The one place the bench measures a part of dotkv in its own
//! process rather than through the binary: over HTTP on a machine whose
//! cores the generator shares, what 64
//! fsynced writers reach is bounded by the HTTP path's CPU before the fsync
//! (docs/PERFORMANCE.md), and this case shows what group commit itself does
//! with the same writer, the same store options and the same disk.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use dotkv_storage::{Durability, Op, Store, StoreOptions, Writer, WriterOptions};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::stats::Latency;

/// Longest wait for one write; one that takes longer counts as an error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One case: `writers` tasks, each with one write in flight at a time.
#[derive(Debug, Clone, Serialize)]
pub struct WriterCase {
    pub writers: usize,
    /// Writes answered within the measured window.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_us: Latency,
    pub errors: u64,
    /// Writes that shared one commit (one WAL write and one fsync), on
    /// average over the measured window.
    pub writes_per_commit: f64,
}

/// Run `writers` tasks against a fresh store in `dir` for `warmup` then
/// `duration`; each adds 1 to one of `keys` counters, as a node with no
/// peers would (no delta log).
pub async fn measure(
    dir: &Path,
    writers: usize,
    keys: u64,
    warmup: Duration,
    duration: Duration,
) -> Result<WriterCase> {
    let store = Store::open(dir, &StoreOptions::default())
        .with_context(|| format!("opening a store in {}", dir.display()))?;
    let writer = Writer::start(
        store,
        WriterOptions {
            durability: Durability::Fsync,
            log_local_groups: false,
            ..WriterOptions::default()
        },
    )
    .context("starting the writer")?;
    let start = Instant::now();
    let from = start + warmup;
    let until = from + duration;
    let keys = keys.max(1);
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)
                    .expect("constant bounds");
                let (mut ops, mut errors) = (0u64, 0u64);
                let mut n = i as u64;
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let key = format!("c{}", n % keys);
                    n += writers as u64;
                    let write = writer.write(vec![Op::CounterAdd { key, amount: 1 }]);
                    let result = tokio::time::timeout(WRITE_TIMEOUT, write).await;
                    let done = Instant::now();
                    if done < from || done >= until {
                        continue;
                    }
                    match result {
                        Ok(Ok(_)) => {
                            ops += 1;
                            let ns = (done - sent).as_nanos().min(u64::MAX as u128) as u64;
                            hist.saturating_record(ns.max(1));
                        }
                        Ok(Err(_)) | Err(_) => errors += 1,
                    }
                }
                (hist, ops, errors)
            })
        })
        .collect();
    // The commits counter at the window's edges, read by a task of its own.
    let stats_writer = writer.clone();
    let commits_at = tokio::spawn(async move {
        let commits = || {
            stats_writer
                .stats()
                .commits
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        tokio::time::sleep_until(from).await;
        let first = commits();
        tokio::time::sleep_until(until).await;
        (first, commits())
    });
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("constant bounds");
    let (mut ops, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (h, o, e) = t.await.context("a writer task failed")?;
        hist.add(&h).context("merging latency histograms")?;
        ops += o;
        errors += e;
    }
    let (c0, c1) = commits_at.await.context("the commit counter task failed")?;
    writer.stop().await;
    let commits = c1.saturating_sub(c0);
    Ok(WriterCase {
        writers,
        ops,
        ops_per_sec: ops as f64 / duration.as_secs_f64().max(1e-9),
        latency_us: Latency::of(&hist),
        errors,
        writes_per_commit: if commits > 0 {
            ops as f64 / commits as f64
        } else {
            0.0
        },
    })
}

/// The three cases, each on a fresh store under `dir`: one writer, then
/// `many`, then one writer again, so that the single-writer rate the ratio
/// divides by is taken on both sides of the many writers (a virtual disk's
/// fsync time drifts within minutes).
pub async fn one_many_one(
    dir: &Path,
    many: usize,
    keys: u64,
    warmup: Duration,
    duration: Duration,
) -> Result<(WriterCase, WriterCase, WriterCase)> {
    let one = measure(&dir.join("one"), 1, keys, warmup, duration).await?;
    let many = measure(&dir.join("many"), many, keys, warmup, duration).await?;
    let one_after = measure(&dir.join("one-after"), 1, keys, warmup, duration).await?;
    Ok((one, many, one_after))
}

/// Writes/s of `many` over the mean writes/s of the single writer before
/// and after it; 0 if either single-writer run wrote nothing (a failed run
/// must not halve the divisor).
pub fn ratio(many: f64, one_before: f64, one_after: f64) -> f64 {
    if one_before > 0.0 && one_after > 0.0 {
        many / ((one_before + one_after) / 2.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_divides_by_the_mean_single_writer() {
        assert_eq!(ratio(40_000.0, 1_500.0, 2_500.0), 20.0);
        assert_eq!(ratio(40_000.0, 2_000.0, 2_000.0), 20.0);
        assert_eq!(ratio(40_000.0, 0.0, 0.0), 0.0);
        assert_eq!(ratio(40_000.0, 0.0, 4_000.0), 0.0);
        assert_eq!(ratio(40_000.0, 4_000.0, 0.0), 0.0);
    }

    /// The case measures real fsynced writes: every one answered, none
    /// failed, and each commit carried at least one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_are_measured_against_a_real_store() {
        let dir = tempfile::tempdir().unwrap();
        let case = measure(
            dir.path(),
            8,
            16,
            Duration::from_millis(100),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        assert_eq!(case.writers, 8);
        assert_eq!(case.errors, 0);
        assert!(case.ops > 0, "no write was answered in the window");
        assert!(case.writes_per_commit >= 1.0, "{case:?}");
        assert!(case.latency_us.p50 > 0.0 && case.latency_us.max >= case.latency_us.p50);
        // What was written is there: reopen the store and add up the
        // counters; the window's writes are a part of them.
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let total: i64 = (0..16)
            .map(|k| {
                store
                    .counter(&format!("c{k}"))
                    .unwrap()
                    .map_or(0, |c| c.value().unwrap())
            })
            .sum();
        assert!(total >= case.ops as i64, "{total} < {}", case.ops);
    }
}
