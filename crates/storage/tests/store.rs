//! The storage layer on a real RocksDB in a temporary directory: local
//! operations, atomic batches, restarts, and two replicas converging through
//! their delta logs.

use dotkv_crdt::{DotStore, Hlc, ManualClock};
use dotkv_storage::{
    DeltaGroup, Durability, ObjectKind, Op, OpOutput, StorageError, Store, StoreOptions, Writer,
    WriterOptions,
};

fn open(dir: &std::path::Path) -> (Store, Writer) {
    open_with(dir, WriterOptions::default())
}

fn open_with(dir: &std::path::Path, opts: WriterOptions) -> (Store, Writer) {
    let store = Store::open(dir, &StoreOptions::default()).expect("open store");
    let writer = Writer::start(store.clone(), opts).expect("start writer");
    (store, writer)
}

fn add(key: &str, amount: i64) -> Op {
    Op::CounterAdd {
        key: key.into(),
        amount,
    }
}

fn set_add(key: &str, elems: &[&str]) -> Op {
    Op::SetUpdate {
        key: key.into(),
        add: elems.iter().map(|e| e.as_bytes().to_vec()).collect(),
        remove: vec![],
    }
}

fn set_remove(key: &str, elems: &[&str]) -> Op {
    Op::SetUpdate {
        key: key.into(),
        add: vec![],
        remove: elems.iter().map(|e| e.as_bytes().to_vec()).collect(),
    }
}

/// The sum of counters `c0` to `c{n-1}`, each of which must exist.
fn sum_of_counters(store: &Store, n: usize) -> i64 {
    (0..n)
        .map(|k| {
            store
                .counter(&format!("c{k}"))
                .unwrap()
                .unwrap()
                .value()
                .unwrap()
        })
        .sum()
}

fn register_value(store: &Store, key: &str) -> Option<String> {
    let state = store.register(key).unwrap()?;
    state
        .iter()
        .max_by_key(|(d, v)| (v.ts, d.replica))
        .map(|(_, v)| v.value.clone())
}

fn set_elems(store: &Store, key: &str) -> Vec<String> {
    let (page, more) = store.set_page(key, None, 10_000).unwrap();
    assert!(!more);
    page.into_iter()
        .map(|e| String::from_utf8(e).unwrap())
        .collect()
}

#[tokio::test]
async fn local_operations_of_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let (store, w) = open(dir.path());
    let out = w.write(vec![add("c", 5)]).await.unwrap();
    assert_eq!(out.outputs, vec![OpOutput::Counter(5)]);
    let out = w.write(vec![add("c", -7)]).await.unwrap();
    assert_eq!(out.outputs, vec![OpOutput::Counter(-2)]);
    assert!(out.vv.get(store.replica()) >= out.last);

    let first = w
        .write(vec![Op::RegisterSet {
            key: "r".into(),
            json: "1".into(),
        }])
        .await
        .unwrap();
    let second = w
        .write(vec![Op::RegisterSet {
            key: "r".into(),
            json: "\"two\"".into(),
        }])
        .await
        .unwrap();
    assert_eq!(register_value(&store, "r").as_deref(), Some("\"two\""));
    // A register write reports its order key, and the stored value has it.
    let key = |out: &dotkv_storage::WriteOutcome| match out.outputs.as_slice() {
        [OpOutput::Register { ts, replica }] => (*ts, *replica),
        other => panic!("a register write answered {other:?}"),
    };
    let (ts1, r1) = key(&first);
    let (ts2, r2) = key(&second);
    assert_eq!((r1, r2), (store.replica(), store.replica()));
    assert!(ts2 > ts1, "{ts2:?} after {ts1:?}");
    let state = store.register("r").unwrap().unwrap();
    let (dot, stored) = state.iter().next().unwrap();
    assert_eq!((stored.ts, dot.replica), (ts2, r2));
    assert_eq!(store.register("r").unwrap().unwrap().len(), 1);

    w.write(vec![Op::FlagSet {
        key: "f".into(),
        enable: true,
    }])
    .await
    .unwrap();
    assert!(!store.flag("f").unwrap().unwrap().is_bottom());
    w.write(vec![Op::FlagSet {
        key: "f".into(),
        enable: false,
    }])
    .await
    .unwrap();
    assert!(store.flag("f").unwrap().is_none());

    w.write(vec![set_add("s", &["a", "b", "c"])]).await.unwrap();
    w.write(vec![set_remove("s", &["b", "zz"])]).await.unwrap();
    assert_eq!(set_elems(&store, "s"), vec!["a", "c"]);
    assert_eq!(store.set_len("s").unwrap(), 2);
    let (page, more) = store.set_page("s", None, 1).unwrap();
    assert_eq!((page, more), (vec![b"a".to_vec()], true));
    let (page, more) = store.set_page("s", Some(b"a"), 1).unwrap();
    assert_eq!((page, more), (vec![b"c".to_vec()], false));
    assert!(store.set_elem("s", b"a").unwrap().is_some());
    assert!(store.set_elem("s", b"b").unwrap().is_none());

    // Listing by prefix, with paging.
    for k in ["user/1", "user/2", "user/3", "other"] {
        w.write(vec![add(k, 1)]).await.unwrap();
    }
    let (keys, more) = store
        .list_keys(ObjectKind::Counter, "user/", None, 2)
        .unwrap();
    assert_eq!(
        (keys, more),
        (vec!["user/1".to_string(), "user/2".into()], true)
    );
    let (keys, more) = store
        .list_keys(ObjectKind::Counter, "user/", Some("user/2"), 2)
        .unwrap();
    assert_eq!((keys, more), (vec!["user/3".to_string()], false));

    // Deletes, of every type.
    for kind in ObjectKind::ALL {
        let key = match kind {
            ObjectKind::Counter => "c",
            ObjectKind::Register => "r",
            ObjectKind::MvRegister => "m",
            ObjectKind::Set => "s",
            ObjectKind::Flag => "f",
        };
        w.write(vec![Op::Delete {
            kind,
            key: key.into(),
        }])
        .await
        .unwrap();
    }
    assert_eq!(store.counter("c").unwrap().unwrap().value(), Ok(0));
    assert!(store.register("r").unwrap().is_none());
    assert!(set_elems(&store, "s").is_empty());
    assert_eq!(store.set_len("s").unwrap(), 0);
    let (keys, _) = store.list_keys(ObjectKind::Counter, "", None, 100).unwrap();
    assert!(
        !keys.contains(&"c".to_string()),
        "deleted counter listed: {keys:?}"
    );
    let (keys, _) = store.list_keys(ObjectKind::Set, "", None, 100).unwrap();
    assert!(keys.is_empty());
    w.stop().await;
}

#[tokio::test]
async fn a_failing_op_rejects_its_whole_batch_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (store, w) = open(dir.path());
    w.write(vec![add("big", i64::MAX)]).await.unwrap();
    let before = store.load_vv().unwrap();
    let err = w
        .write(vec![add("small", 1), set_add("s", &["x"]), add("big", 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::CounterOverflow { .. }), "{err}");
    assert!(store.counter("small").unwrap().is_none());
    assert!(store.set_elem("s", b"x").unwrap().is_none());
    assert_eq!(store.load_vv().unwrap(), before);
    // Requests committed in the same group as a failing one still land.
    let (a, b) = tokio::join!(w.write(vec![add("big", 1)]), w.write(vec![add("small", 2)]));
    assert!(a.is_err());
    assert_eq!(b.unwrap().outputs, vec![OpOutput::Counter(2)]);
    w.stop().await;
}

#[test]
fn unusable_data_directories_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open(&file, &StoreOptions::default())
        .err()
        .expect("a file is no data dir");
    assert!(matches!(e, StorageError::DataDir { .. }), "{e}");
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    // A directory whose parent is a file cannot be created.
    let e = Store::open(file.join("sub"), &StoreOptions::default())
        .err()
        .expect("under a file");
    assert!(e.to_string().contains("cannot create it"), "{e}");
    // A directory another holder has open: the database is locked.
    let data = dir.path().join("data");
    let first = Store::open(&data, &StoreOptions::default()).expect("first open");
    let e = Store::open(&data, &StoreOptions::default())
        .err()
        .expect("second open");
    assert!(matches!(e, StorageError::DataDir { .. }), "{e}");
    assert!(e.to_string().contains("in use"), "{e}");
    let replica = first.replica_uuid();
    drop(first);
    // Once it is closed, it opens again, as the same replica.
    let again = Store::open(&data, &StoreOptions::default()).expect("open after close");
    assert_eq!(again.replica_uuid(), replica);
}

#[tokio::test]
async fn restart_keeps_replica_id_hlc_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let (store, w) = open(dir.path());
    let id = store.replica_uuid();
    w.write(vec![Op::RegisterSet {
        key: "r".into(),
        json: "1".into(),
    }])
    .await
    .unwrap();
    let hlc = store.load_hlc().unwrap();
    let vv = store.load_vv().unwrap();
    assert!(hlc > Hlc::default());
    w.stop().await;
    drop(store);

    // A clock far behind: the HLC still never goes back.
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let w = Writer::start_with_clock(store.clone(), WriterOptions::default(), ManualClock::new(1))
        .unwrap();
    assert_eq!(store.replica_uuid(), id);
    assert_eq!(store.load_vv().unwrap(), vv);
    w.write(vec![Op::RegisterSet {
        key: "r".into(),
        json: "2".into(),
    }])
    .await
    .unwrap();
    let state = store.register("r").unwrap().unwrap();
    let (_, v) = state.iter().next().unwrap();
    assert!(v.ts > hlc, "{} should exceed {}", v.ts, hlc);
    assert_eq!(register_value(&store, "r").as_deref(), Some("2"));
    w.stop().await;
}

/// Two requests polled in one turn, until they share one commit (so the
/// second sees the first's rows in the group, not in the database). They
/// normally do at once; after a commit slower than the writer's threshold
/// (a busy machine) writes go through its thread for a while and may not.
/// Both ops must be idempotent, since they may run more than once.
async fn in_one_commit(w: &Writer, a: Op, b: Op) {
    let commits = || w.stats().commits.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..20 {
        let before = commits();
        let (ra, rb) = tokio::join!(w.write(vec![a.clone()]), w.write(vec![b.clone()]));
        ra.unwrap();
        rb.unwrap();
        if commits() - before == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("two requests polled in one turn never shared a commit");
}

/// Whether listing sets finds `key`.
fn set_listed(store: &Store, key: &str) -> bool {
    let (keys, _) = store.list_keys(ObjectKind::Set, key, None, 10).unwrap();
    keys.iter().any(|k| k == key)
}

#[tokio::test]
async fn a_set_is_listed_exactly_while_it_has_elements() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, wa) = open(da.path());
    let (sb, wb) = open(db.path());
    let listed = |s: &Store, want: bool, why: &str| {
        assert_eq!(set_listed(s, "s"), want, "{why}");
        assert_eq!(s.set_len("s").unwrap() > 0, want, "{why}: set_len");
    };
    listed(&sa, false, "never written");
    wa.write(vec![set_add("s", &["a", "b"])]).await.unwrap();
    listed(&sa, true, "two elements");
    wa.write(vec![set_remove("s", &["a"])]).await.unwrap();
    listed(&sa, true, "one left");
    wa.write(vec![set_remove("s", &["nope"])]).await.unwrap();
    listed(&sa, true, "removing an absent element changes nothing");
    wa.write(vec![set_remove("s", &["b"])]).await.unwrap();
    listed(&sa, false, "the last one removed");
    // One request: the overlay's staged rows.
    wa.write(vec![set_add("s", &["c"]), set_remove("s", &["c"])])
        .await
        .unwrap();
    listed(&sa, false, "added and removed in one batch");
    wa.write(vec![set_add("s", &["d", "e"])]).await.unwrap();
    wa.write(vec![set_remove("s", &["d"]), set_remove("s", &["e"])])
        .await
        .unwrap();
    listed(&sa, false, "both removed in one batch, by two ops");
    // Requests polled in one turn share a commit: the group's rows.
    wa.write(vec![set_add("s", &["f", "g"])]).await.unwrap();
    in_one_commit(&wa, set_remove("s", &["f"]), set_remove("s", &["g"])).await;
    listed(&sa, false, "both removed by two requests");
    in_one_commit(&wa, set_remove("s", &["f"]), set_add("s", &["h"])).await;
    listed(&sa, true, "re-added beside a remove");
    // Remote groups keep B's row the same way: h arrives, then its removal.
    let next = ship(&sa, &wb, 1).await;
    listed(&sb, true, "h, from A");
    wa.write(vec![set_remove("s", &["h"])]).await.unwrap();
    listed(&sa, false, "h removed on A");
    let next = ship(&sa, &wb, next).await;
    listed(&sb, false, "h's removal, from A");
    // A clear that leaves a concurrent add in place keeps the row.
    wa.write(vec![set_add("s", &["i"])]).await.unwrap();
    let next = ship(&sa, &wb, next).await;
    wb.write(vec![Op::Delete {
        kind: ObjectKind::Set,
        key: "s".into(),
    }])
    .await
    .unwrap();
    listed(&sb, false, "deleted on B");
    wa.write(vec![set_add("s", &["j"])]).await.unwrap();
    ship(&sb, &wa, 1).await;
    listed(&sa, true, "j was concurrent with the clear");
    assert_eq!(set_elems(&sa, "s"), vec!["j"]);
    ship(&sa, &wb, next).await;
    listed(&sb, true, "j, from A, after the clear");
    wa.stop().await;
    wb.stop().await;
}

/// A delete of a large set removes its elements with one range deletion
/// (a commit of a few RocksDB entries, not one per element), at the node
/// that takes it and at a peer, which puts back what it added concurrently;
/// with the same result as a delete row by row: within a batch, next to sets
/// whose names share a prefix, and after a restart.
#[tokio::test]
async fn a_large_set_is_deleted_in_one_range_deletion() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, wa) = open(da.path());
    let (sb, wb) = open(db.path());
    let many: Vec<String> = (0..500).map(|i| format!("e{i:03}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let delete = |key: &str| Op::Delete {
        kind: ObjectKind::Set,
        key: key.into(),
    };
    for key in ["big", "bi", "bigx"] {
        wa.write(vec![set_add(key, &many)]).await.unwrap();
    }
    // Added, cleared and added again in one batch: only the last add stays.
    let before = sa.latest_seq();
    wa.write(vec![
        set_add("big", &["late"]),
        delete("big"),
        set_add("big", &["new"]),
    ])
    .await
    .unwrap();
    let entries = sa.latest_seq() - before;
    assert!(
        entries < 20,
        "the batch took {entries} RocksDB entries; 500 elements were deleted one by one"
    );
    assert_eq!(set_elems(&sa, "big"), vec!["new"]);
    assert!(set_listed(&sa, "big"));
    for key in ["bi", "bigx"] {
        assert_eq!(sa.set_len(key).unwrap(), 500, "{key} lost elements");
    }
    // A small set goes row by row, with the same result.
    wa.write(vec![delete("big")]).await.unwrap();
    assert!(set_elems(&sa, "big").is_empty());
    assert!(!set_listed(&sa, "big"));

    // At a peer: what A had seen goes, B's concurrent add stays.
    wa.write(vec![set_add("big", &many)]).await.unwrap();
    let next = ship(&sa, &wb, 1).await;
    assert_eq!(sb.set_len("big").unwrap(), 500);
    wb.write(vec![set_add("big", &["zb"])]).await.unwrap();
    wa.write(vec![delete("big")]).await.unwrap();
    assert!(set_elems(&sa, "big").is_empty());
    // B clears by range too, and puts back the element it added.
    let before = sb.latest_seq();
    ship(&sa, &wb, next).await;
    let entries = sb.latest_seq() - before;
    assert!(
        entries < 20,
        "B applied the delete with {entries} RocksDB entries"
    );
    assert_eq!(set_elems(&sb, "big"), vec!["zb"]);
    ship(&sb, &wa, 1).await;
    for s in [&sa, &sb] {
        assert_eq!(set_elems(s, "big"), vec!["zb"]);
        assert_eq!(s.set_len("bigx").unwrap(), 500);
    }
    wa.stop().await;
    wb.stop().await;
    drop(sa);
    let (sa, wa) = open(da.path());
    assert_eq!(set_elems(&sa, "big"), vec!["zb"]);
    assert_eq!(sa.set_len("bi").unwrap(), 500);
    wa.stop().await;
}

async fn ship(from: &Store, to: &Writer, origin_from: u64) -> u64 {
    let groups = from
        .delta_groups(from.replica(), origin_from, 10_000)
        .unwrap();
    let mut next = origin_from;
    for g in groups {
        next = g.last + 1;
        to.apply_remote(g).await.unwrap();
    }
    next
}

#[tokio::test]
async fn two_replicas_converge_through_their_delta_logs() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, wa) = open(da.path());
    let (sb, wb) = open(db.path());
    assert_ne!(sa.replica(), sb.replica());

    wa.write(vec![set_add("s", &["x", "y"]), add("c", 3)])
        .await
        .unwrap();
    let a_next = ship(&sa, &wb, 1).await;
    // Concurrently: B removes x and clears nothing else; A re-adds x.
    wb.write(vec![set_remove("s", &["x"]), add("c", 10)])
        .await
        .unwrap();
    wa.write(vec![set_add("s", &["x"]), add("c", 1)])
        .await
        .unwrap();
    // Concurrent register writes: the greater (timestamp, replica) wins.
    wa.write(vec![Op::RegisterSet {
        key: "r".into(),
        json: "\"a\"".into(),
    }])
    .await
    .unwrap();
    wb.write(vec![Op::RegisterSet {
        key: "r".into(),
        json: "\"b\"".into(),
    }])
    .await
    .unwrap();
    // B deletes the whole set concurrently with A's add of z.
    wb.write(vec![Op::Delete {
        kind: ObjectKind::Set,
        key: "s".into(),
    }])
    .await
    .unwrap();
    wa.write(vec![set_add("s", &["z"])]).await.unwrap();

    ship(&sa, &wb, a_next).await;
    ship(&sb, &wa, 1).await;

    for s in [&sa, &sb] {
        // x: A's re-add was concurrent with B's remove and the clear: add wins.
        // y: seen by both the remove-x (untouched) and the clear: gone.
        // z: concurrent with the clear: stays.
        assert_eq!(set_elems(s, "s"), vec!["x", "z"]);
        assert_eq!(s.set_len("s").unwrap(), 2);
        assert_eq!(s.counter("c").unwrap().unwrap().value(), Ok(14));
        assert_eq!(s.register("r").unwrap().unwrap().len(), 2);
    }
    assert_eq!(register_value(&sa, "r"), register_value(&sb, "r"));
    assert_eq!(sa.load_vv().unwrap(), sb.load_vv().unwrap());
    wa.stop().await;
    wb.stop().await;
}

#[tokio::test]
async fn remote_groups_wait_for_their_causal_past() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, wa) = open(da.path());
    let (_sb, wb) = open(db.path());
    wa.write(vec![add("c", 1)]).await.unwrap();
    wa.write(vec![add("c", 1)]).await.unwrap();
    let groups: Vec<DeltaGroup> = sa.delta_groups(sa.replica(), 1, 10).unwrap();
    assert_eq!(groups.len(), 2);
    let err = wb.apply_remote(groups[1].clone()).await.unwrap_err();
    assert!(matches!(err, StorageError::NotReady { .. }), "{err}");
    assert!(wb.apply_remote(groups[0].clone()).await.unwrap());
    assert!(
        !wb.apply_remote(groups[0].clone()).await.unwrap(),
        "duplicate applied twice"
    );
    assert!(wb.apply_remote(groups[1].clone()).await.unwrap());
    wa.stop().await;
    wb.stop().await;
}

/// Under fsync, concurrent writes share commits (and fsyncs), and an
/// answered write is already published in `committed`, so the answered
/// client's next read has a token covering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_durability_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let w = Writer::start(
        store.clone(),
        WriterOptions {
            durability: Durability::Fsync,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let me = w.replica();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let out = w.write(vec![add("c", 1)]).await.unwrap();
                    let published = w.committed().borrow().vv.get(me);
                    assert!(
                        published >= out.last,
                        "answered write {} not yet published ({published})",
                        out.last
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.counter("c").unwrap().unwrap().value(), Ok(64 * 20));
    let stats = w.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(commits < 64 * 20, "no commit was shared: {commits}");
    w.stop().await;
    drop(w);
    drop(store);
    let (store, w) = open(dir.path());
    assert_eq!(store.counter("c").unwrap().unwrap().value(), Ok(64 * 20));
    w.stop().await;
}

/// Many tasks writing the same counters and sets at once, so that each
/// commit group holds many of them and builds on the rows of the group
/// before (under fsync the writer thread commits them, under the default
/// durability the tasks commit inline), with and without the row cache.
/// Each task owns its set elements and a counter of its own; two tasks
/// share a small set that they fill and empty, so its listing row is
/// written and deleted by either. The outcome is known exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_groups_on_shared_rows_leave_exactly_what_was_written() {
    const TASKS: usize = 32;
    const ROUNDS: u64 = 60;
    for (durability, budget) in [
        (Durability::Fsync, 0),
        (Durability::Fsync, 32 << 20),
        (Durability::Wal, 32 << 20),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (store, w) = open_with(
            dir.path(),
            WriterOptions {
                durability,
                row_cache_bytes: budget,
                ..WriterOptions::default()
            },
        );
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let w = w.clone();
                tokio::spawn(async move {
                    // What this task's writes leave: the shared counters'
                    // sums it added, its own counter, its elements in the
                    // shared sets and in its pair's set.
                    let mut shared = [0i64; 3];
                    let mut own_counter = 0i64;
                    let mut elems = std::collections::BTreeMap::<(String, String), bool>::new();
                    let mut own_set = std::collections::BTreeSet::<String>::new();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                    for round in 0..ROUNDS {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = format!("s{}", x % 3);
                        let elem = format!("t{t}-{}", (x >> 8) % 3);
                        let mine = format!("own{t}");
                        let pair = format!("pair{}", t / 2);
                        let op = match round % 8 {
                            0 | 1 => {
                                let k = (x >> 16) as usize % 3;
                                shared[k] += 1;
                                own_counter += 2;
                                w.write(vec![add(&format!("c{k}"), 1), add(&mine, 2)]).await
                            }
                            2 => {
                                elems.insert((key.clone(), elem.clone()), true);
                                w.write(vec![set_add(&key, &[&elem])]).await
                            }
                            3 => {
                                elems.insert((key.clone(), elem.clone()), false);
                                w.write(vec![set_remove(&key, &[&elem])]).await
                            }
                            4..=6 => {
                                let e = format!("t{t}-e{}", (x >> 24) % 2);
                                if own_set.remove(&e) {
                                    w.write(vec![set_remove(&pair, &[&e])]).await
                                } else {
                                    own_set.insert(e.clone());
                                    w.write(vec![set_add(&pair, &[&e])]).await
                                }
                            }
                            _ => {
                                if round % 16 == 7 {
                                    own_counter = 0;
                                    w.write(vec![Op::Delete {
                                        kind: ObjectKind::Counter,
                                        key: mine.clone(),
                                    }])
                                    .await
                                } else {
                                    // Rejected: nothing of it may stay.
                                    let err = w
                                        .write(vec![add(&mine, 1), add(&mine, i64::MAX)])
                                        .await
                                        .unwrap_err();
                                    assert!(
                                        matches!(err, StorageError::CounterOverflow { .. }),
                                        "{err}"
                                    );
                                    continue;
                                }
                            }
                        };
                        op.unwrap();
                    }
                    (shared, own_counter, elems, own_set)
                })
            })
            .collect();
        let mut shared = [0i64; 3];
        let mut results = Vec::new();
        for task in tasks {
            let (s, own_counter, elems, own_set) = task.await.unwrap();
            for k in 0..3 {
                shared[k] += s[k];
            }
            results.push((own_counter, elems, own_set));
        }
        let commits = w.stats().commits.load(std::sync::atomic::Ordering::Relaxed);
        let requests = w
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            commits < requests,
            "no commit was shared: {commits} of {requests}"
        );
        w.stop().await;
        drop(w);
        drop(store);
        let (store, w) = open(dir.path());
        let case = format!("{durability:?} with a {budget}-byte row cache");
        for (k, want) in shared.iter().enumerate() {
            let got = store.counter(&format!("c{k}")).unwrap().map(|c| c.value());
            assert_eq!(got, Some(Ok(*want)), "counter c{k}, {case}");
        }
        let mut in_sets = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (t, (own_counter, elems, own_set)) in results.into_iter().enumerate() {
            let mine = format!("own{t}");
            let got = store.counter(&mine).unwrap().map(|c| c.value());
            assert_eq!(got, Some(Ok(own_counter)), "counter {mine}, {case}");
            let pair = in_sets.entry(format!("pair{}", t / 2)).or_default();
            pair.extend(own_set);
            for ((key, elem), present) in elems {
                let list = in_sets.entry(key).or_default();
                if present {
                    list.push(elem);
                }
            }
        }
        for (key, mut want) in in_sets {
            want.sort();
            assert_eq!(set_elems(&store, &key), want, "set {key}, {case}");
            assert_eq!(
                set_listed(&store, &key),
                !want.is_empty(),
                "{key} listed, {case}"
            );
        }
        w.stop().await;
    }
}

#[tokio::test]
async fn the_log_is_trimmed_to_a_given_position() {
    let dir = tempfile::tempdir().unwrap();
    let (store, w) = open(dir.path());
    let me = store.replica();
    for i in 0..10 {
        w.write(vec![add("c", i)]).await.unwrap();
    }
    assert_eq!(store.log_first(me).unwrap(), Some(1));
    w.trim_log(dotkv_crdt::VersionVector::from(vec![(me, 6)]))
        .await
        .unwrap();
    // The writer thread commits the trim on its own, with whatever else it
    // has queued; nothing waits for it.
    w.write(vec![add("c", 1)]).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.log_first(me).unwrap() != Some(7) {
        assert!(
            std::time::Instant::now() < deadline,
            "the trim was not committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(store.delta_group(me, 6).unwrap().is_none());
    assert_eq!(store.delta_group(me, 7).unwrap().unwrap().first, 7);
    assert_eq!(store.delta_groups(me, 1, 100).unwrap().len(), 5);
}

/// Anti-entropy's building blocks: the sender's rows, joined at a receiver as
/// deltas under the sender's version vector, plus the receiver's rows the
/// sender does not hold, bring the receiver to the sender's state without
/// losing what the receiver wrote concurrently.
#[tokio::test]
async fn state_transfer_joins_rows_under_the_senders_context() {
    use dotkv_crdt::CausalContext;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, wa) = open(da.path());
    let (b, wb) = open(db.path());
    wa.write(vec![set_add("s", &["x", "y"]), add("n", 2)])
        .await
        .unwrap();
    wa.write(vec![Op::RegisterSet {
        key: "r".into(),
        json: "1".into(),
    }])
    .await
    .unwrap();
    // B sees A's first two writes, then A removes y and B concurrently adds z
    // and writes its own counter.
    ship(&a, &wb, 1).await;
    wa.write(vec![set_remove("s", &["y"])]).await.unwrap();
    wa.write(vec![Op::Delete {
        kind: ObjectKind::Register,
        key: "r".into(),
    }])
    .await
    .unwrap();
    wb.write(vec![set_add("s", &["z"]), add("m", 1)])
        .await
        .unwrap();
    assert_eq!(set_elems(&b, "s"), vec!["x", "y", "z"]);

    // Transfer: A's context first, then its rows; B also offers its own rows
    // A lacks, as empty rows under A's context.
    let ctx = wa.committed().borrow().vv.clone();
    let cctx = CausalContext::from(ctx.clone());
    let theirs = a.ae_rows(&[], None, 10_000).unwrap();
    let ours = b.ae_rows(&[], None, 10_000).unwrap();
    let mut ops = Vec::new();
    for (k, v) in &theirs {
        ops.extend(dotkv_storage::ae_row_delta(k, Some(v), &cctx).unwrap());
    }
    for (k, _) in &ours {
        if !theirs.iter().any(|(t, _)| t == k) {
            ops.extend(dotkv_storage::ae_row_delta(k, None, &cctx).unwrap());
        }
    }
    wb.merge(ops, Some(ctx.clone())).await.unwrap();

    assert_eq!(set_elems(&b, "s"), vec!["x", "z"], "y removed, z kept");
    assert_eq!(register_value(&b, "r"), None, "the delete reached B");
    assert_eq!(b.counter("n").unwrap().unwrap().value().unwrap(), 2);
    assert_eq!(b.counter("m").unwrap().unwrap().value().unwrap(), 1);
    assert_eq!(b.set_len("s").unwrap(), 2);
    let vb = wb.committed().borrow().vv.clone();
    assert!(ctx.leq(&vb), "B covers A's context after the transfer");
    // Doing it again changes nothing.
    let theirs2 = a.ae_rows(&[], None, 10_000).unwrap();
    let ops: Vec<_> = theirs2
        .iter()
        .flat_map(|(k, v)| dotkv_storage::ae_row_delta(k, Some(v), &cctx).unwrap())
        .collect();
    wb.merge(ops, Some(ctx)).await.unwrap();
    assert_eq!(set_elems(&b, "s"), vec!["x", "z"]);
}

/// The writer's row cache is exact: with a budget so small that rows are
/// evicted all the time, and with none at all, the same writes (counters,
/// set adds and removes, deletes, a rejected overflow) leave the same state
/// as a model of them, read back from RocksDB after a restart.
#[tokio::test]
async fn the_row_cache_never_changes_what_is_stored() {
    for budget in [0, 4 << 10, 32 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let (store, w) = open_with(
            dir.path(),
            WriterOptions {
                row_cache_bytes: budget,
                ..WriterOptions::default()
            },
        );
        let mut counters = std::collections::BTreeMap::<String, i64>::new();
        let mut sets =
            std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
        // A fixed pseudo-random sequence (xorshift), so every budget sees the
        // same writes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2_000u64 {
            let r = next();
            let c = format!("c{}", r % 50);
            let s = format!("s{}", (r >> 8) % 10);
            let e = format!("e{}", (r >> 16) % 40);
            match round % 7 {
                0..=2 => {
                    let amount = (r >> 24) as i64 % 100;
                    w.write(vec![add(&c, amount)]).await.unwrap();
                    *counters.entry(c).or_default() += amount;
                }
                3 | 4 => {
                    w.write(vec![set_add(&s, &[&e])]).await.unwrap();
                    sets.entry(s).or_default().insert(e);
                }
                5 => {
                    w.write(vec![set_remove(&s, &[&e])]).await.unwrap();
                    sets.entry(s).or_default().remove(&e);
                }
                _ => {
                    // A few of these rounds delete a counter or a set; the
                    // others add to a counter past i64::MAX, in a batch whose
                    // first add is then rejected too: nothing is applied.
                    if round % 50 == 6 {
                        w.write(vec![Op::Delete {
                            kind: ObjectKind::Counter,
                            key: c.clone(),
                        }])
                        .await
                        .unwrap();
                        counters.insert(c, 0);
                    } else if round % 50 == 13 {
                        w.write(vec![Op::Delete {
                            kind: ObjectKind::Set,
                            key: s.clone(),
                        }])
                        .await
                        .unwrap();
                        sets.remove(&s);
                    } else {
                        let err = w
                            .write(vec![add(&c, 1), add(&c, i64::MAX)])
                            .await
                            .unwrap_err();
                        assert!(matches!(err, StorageError::CounterOverflow { .. }), "{err}");
                    }
                }
            }
        }
        w.stop().await;
        drop(store);
        let (store, w) = open(dir.path());
        for i in 0..50 {
            let key = format!("c{i}");
            let got = store.counter(&key).unwrap().map(|s| s.value().unwrap());
            // A deleted counter keeps its row, at 0.
            let want = counters.get(&key).copied();
            assert_eq!(got, want, "counter {key} with a {budget}-byte row cache");
        }
        for i in 0..10 {
            let key = format!("s{i}");
            let want: Vec<String> = sets
                .get(&key)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            assert_eq!(
                set_elems(&store, &key),
                want,
                "set {key} with a {budget}-byte row cache"
            );
        }
        w.stop().await;
    }
}

/// Local writes committed inline by many tasks at once, while the writer
/// thread commits a peer's groups into the same rows: nothing is lost or
/// applied twice, every write gets its own sequence numbers, and the rows
/// read back equal the sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commits_and_the_writer_thread_share_the_worker() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, wa) = open(da.path());
    let (sb, wb) = open(db.path());
    // The peer's history, to be applied through the thread while A writes.
    for i in 0..200 {
        wb.write(vec![add(&format!("c{}", i % 4), 1000)])
            .await
            .unwrap();
    }
    let groups = sb.delta_groups(sb.replica(), 1, 10_000).unwrap();
    assert_eq!(groups.len(), 200);
    let remote = {
        let wa = wa.clone();
        tokio::spawn(async move {
            for g in groups {
                assert!(wa.apply_remote(g).await.unwrap());
            }
        })
    };
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let wa = wa.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..300 {
                    // A request left in the queue with no one to commit it
                    // would hang here.
                    let out = tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        wa.write(vec![add(&format!("c{}", (t + i) % 4), 1)]),
                    )
                    .await
                    .expect("a write was never committed")
                    .unwrap();
                    assert!(out.vv.get(out.origin) >= out.last);
                    seqs.push((out.first, out.last));
                }
                seqs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    remote.await.unwrap();
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        assert!(w[0].1 < w[1].0, "overlapping sequence numbers: {w:?}");
    }
    assert_eq!(seqs.len(), 16 * 300);
    assert_eq!(sum_of_counters(&sa, 4), 16 * 300 + 200 * 1000);
    assert_eq!(wa.queued(), 0);
    wa.stop().await;
    wb.stop().await;
    drop((sa, sb));
}

/// Writes that are ready in the same turn of the runtime share one inline
/// commit: each task queues its write and yields before it commits, so the
/// first to commit takes the others' writes too, instead of each paying its
/// own WAL write.
#[tokio::test(flavor = "current_thread")]
async fn writes_ready_in_one_turn_share_an_inline_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    const WRITES: usize = 64;
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let w = writer.clone();
            tokio::spawn(async move { w.write(vec![add(&format!("c{}", i % 8), 1)]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let commits = writer
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let inline = writer
        .stats()
        .inline_commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        commits <= 2,
        "{WRITES} writes ready together took {commits} commits"
    );
    assert_eq!(inline, commits, "the writer thread committed local writes");
    assert_eq!(sum_of_counters(&store, 8), WRITES as i64);
    writer.stop().await;
}

/// A write whose caller goes away while it waits for its turn to commit
/// (an HTTP client that disconnected) is still committed, without another
/// write coming to take it along.
#[tokio::test(flavor = "current_thread")]
async fn a_write_dropped_while_it_waits_to_commit_is_still_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    // Poll the write once (it queues its request and yields), then drop it.
    let mut write = Box::pin(writer.write(vec![add("gone", 7)]));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        std::future::Future::poll(write.as_mut(), &mut cx).is_pending(),
        "the write finished in its first poll"
    );
    drop(write);
    let mut committed = writer.committed();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        committed.wait_for(|c| c.vv.get(store.replica()) >= 1),
    )
    .await
    .expect("the dropped write was never committed")
    .unwrap();
    assert_eq!(store.counter("gone").unwrap().unwrap().value().unwrap(), 7);
    assert_eq!(writer.queued(), 0);
    writer.stop().await;
}

/// Stopping the writer while tasks keep writing: every write is either
/// acknowledged, and then present after a restart, or refused with
/// `WriterStopped`; none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_under_inline_load_keeps_every_acknowledged_write() {
    stop_under_load_keeps_every_acknowledged_write(Durability::Wal).await;
}

/// The same under fsync, where the writer thread commits everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_under_fsync_load_keeps_every_acknowledged_write() {
    stop_under_load_keeps_every_acknowledged_write(Durability::Fsync).await;
}

async fn stop_under_load_keeps_every_acknowledged_write(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let w = Writer::start(
        store.clone(),
        WriterOptions {
            durability,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move {
                let mut acked = 0i64;
                loop {
                    match w.write(vec![add("c", 1)]).await {
                        Ok(_) => acked += 1,
                        Err(StorageError::WriterStopped) => return acked,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    w.stop().await;
    let mut acked = 0;
    for t in tasks {
        acked += tokio::time::timeout(std::time::Duration::from_secs(30), t)
            .await
            .expect("a write hung after the stop")
            .unwrap();
    }
    assert!(acked > 0);
    drop(w);
    drop(store);
    let (store, w) = open(dir.path());
    let stored = store.counter("c").unwrap().unwrap().value().unwrap();
    // A write can be committed and then refused only if its answer was
    // lost, which never happens: the two counts are equal.
    assert_eq!(stored, acked);
    w.stop().await;
}

/// A node without peers keeps no delta log, so a write that replaces a row
/// does not read the row first (only the delta's context needed it). The
/// stored state must be what a logging node stores: one dot per overwritten
/// register, flag and set element, and the same values.
#[tokio::test]
async fn overwrites_without_a_delta_log_store_what_a_logging_node_stores() {
    let register = |key: &str, json: &str| Op::RegisterSet {
        key: key.into(),
        json: json.into(),
    };
    let mvregister = |json: &str| Op::MvRegisterSet {
        key: "m".into(),
        json: json.into(),
    };
    let flag = |enable| Op::FlagSet {
        key: "f".into(),
        enable,
    };
    let writes: Vec<Vec<Op>> = vec![
        vec![register("r", "1"), mvregister("\"a\""), flag(true)],
        vec![register("r", "2"), set_add("s", &["x", "y"])],
        // Two overwrites of one row in one request, and again in a request
        // that shares its commit group with the one before.
        vec![register("r", "3"), register("r", "4"), set_add("s", &["x"])],
        vec![mvregister("\"b\""), flag(true), set_add("s", &["x", "z"])],
        vec![flag(false), set_remove("s", &["y"])],
        vec![flag(true), set_add("s", &["z"]), register("q", "[]")],
    ];
    let mut seen = Vec::new();
    for logged in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (store, w) = open_with(
            dir.path(),
            WriterOptions {
                log_local_groups: logged,
                ..WriterOptions::default()
            },
        );
        for ops in &writes {
            w.write(ops.clone()).await.unwrap();
        }
        in_one_commit(&w, register("r", "5"), register("r", "6")).await;
        let r = store.register("r").unwrap().unwrap();
        assert_eq!(r.len(), 1, "one dot after overwrites (logged: {logged})");
        assert_eq!(register_value(&store, "r").as_deref(), Some("6"));
        assert_eq!(store.mvregister("m").unwrap().unwrap().len(), 1);
        assert_eq!(store.flag("f").unwrap().unwrap().len(), 1);
        for e in ["x", "z"] {
            let dots = store.set_elem("s", e.as_bytes()).unwrap().unwrap();
            assert_eq!(dots.len(), 1, "element {e} re-added (logged: {logged})");
        }
        assert_eq!(store.set_elem("s", b"y").unwrap(), None);
        assert_eq!(
            store
                .delta_groups(store.replica(), 1, 100)
                .unwrap()
                .is_empty(),
            !logged
        );
        seen.push((
            set_elems(&store, "s"),
            register_value(&store, "q"),
            set_listed(&store, "s"),
        ));
        w.stop().await;
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].0, vec!["x", "z"]);
}
