//! Encoded metadata per OR-set element, dotkv-crdt against `crdts`. Criterion
//! measures time, not size, so this binary prints a table instead.
//!
//! `cargo bench -p dotkv-crdt --bench metadata`

mod common;

use common::{median_usize, metadata_sizes, state_bytes_per_element, JoinCase};

/// Target: what dotkv may store per element with one dot.
const TARGET_BYTES: f64 = 24.0;
const SAMPLES: usize = 10_000;

fn main() {
    println!("Encoded metadata per OR-set element ({SAMPLES} elements, random u64 replica ids, counters ~1e6)");
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>12}",
        "case", "dotkv med", "dotkv max", "crdts med", "crdts max"
    );
    for dots in [1, 2, 3] {
        let s = metadata_sizes(SAMPLES, dots);
        println!(
            "{:<34} {:>10} B {:>10} B {:>10} B {:>10} B",
            format!("element with {dots} dot(s)"),
            median_usize(&s.dotkv),
            s.dotkv.iter().max().expect("samples"),
            median_usize(&s.crdts),
            s.crdts.iter().max().expect("samples"),
        );
    }
    for replicas in [3, 16] {
        let case = JoinCase::new(replicas);
        let (d, c) = state_bytes_per_element(&case);
        println!(
            "{:<34} {:>10.1} B {:>12} {:>10.1} B {:>12}",
            format!("whole joined set, {replicas} replicas"),
            d,
            "",
            c,
            ""
        );
    }
    let one = metadata_sizes(SAMPLES, 1);
    let worst = *one.dotkv.iter().max().expect("samples") as f64;
    println!(
        "dotkv: dotkv_crdt::encode(&DotSet) (1 format byte + postcard); crdts: postcard(VClock)"
    );
    println!(
        "target: dotkv <= {TARGET_BYTES} B per one-dot element: {} (worst case {worst} B)",
        if worst <= TARGET_BYTES {
            "met"
        } else {
            "MISSED"
        }
    );
}
