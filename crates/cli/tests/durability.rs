//! Durability and concurrency against the real binary: concurrent adds sum up,
//! acknowledged writes survive SIGKILL, restarts keep the replica, and SIGTERM
//! shuts down cleanly.

mod common;

use common::{request, try_request, TestNode};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

#[test]
fn concurrent_counter_adds_sum_up() {
    let n = TestNode::start();
    let addr = n.addr;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut sum = 0i64;
                for i in 0..100 {
                    let amount = (t * 100 + i) % 7 - 2;
                    let body = format!("{{\"add\":{amount}}}");
                    let r = try_request(
                        addr,
                        "POST",
                        b"/v1/counter/total",
                        JSON,
                        Some(body.as_bytes()),
                    )
                    .expect("request");
                    assert_eq!(r.status, 200);
                    sum += amount;
                }
                sum
            })
        })
        .collect();
    let expected: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(n.get("/v1/counter/total").json()["value"], expected);
}

/// What the writers were acknowledged for, and what they attempted.
#[derive(Default)]
struct Ledger {
    acked_adds: i64,
    attempted_adds: i64,
    acked_elems: BTreeSet<u64>,
    attempted_elems: BTreeSet<u64>,
    acked_puts: Vec<u64>,
    attempted_puts: BTreeSet<u64>,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    sigkill_rounds(TestNode::start());
}

/// The same under `durability = "fsync"`, where every write goes through
/// the writer thread's group commit.
#[test]
fn acknowledged_fsync_writes_survive_sigkill() {
    sigkill_rounds(TestNode::start_with("[storage]\ndurability = \"fsync\"\n"));
}

fn sigkill_rounds(mut n: TestNode) {
    let mut seed: u64 = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next_id = 0u64;
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = n.addr;
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (stop, ledger) = (stop.clone(), ledger.clone());
                let base = next_id + w * 1_000_000;
                std::thread::spawn(move || {
                    let mut i = base;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let (path, body) = match w {
                            0 => {
                                ledger.lock().unwrap().attempted_adds += 1;
                                ("/v1/counter/crash".to_string(), "{\"add\":1}".to_string())
                            }
                            1 => {
                                ledger.lock().unwrap().attempted_elems.insert(i);
                                ("/v1/set/crash".to_string(), format!("{{\"add\":[{i}]}}"))
                            }
                            _ => {
                                ledger.lock().unwrap().attempted_puts.insert(i);
                                ("/v1/register/crash".to_string(), format!("{i}"))
                            }
                        };
                        match try_request(
                            addr,
                            if w == 2 { "PUT" } else { "POST" },
                            path.as_bytes(),
                            JSON,
                            Some(body.as_bytes()),
                        ) {
                            Ok(r) if r.status == 200 => {
                                let mut l = ledger.lock().unwrap();
                                match w {
                                    0 => l.acked_adds += 1,
                                    1 => {
                                        l.acked_elems.insert(i);
                                    }
                                    _ => l.acked_puts.push(i),
                                }
                            }
                            Ok(r) => panic!("unexpected answer {}: {}", r.status, r.text()),
                            // The node died mid-request: outcome unknown.
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        next_id += 10_000_000;
        std::thread::sleep(Duration::from_millis(150 + rand(600)));
        n.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        n.restart();

        let l = ledger.lock().unwrap();
        let value = n.get("/v1/counter/crash").json()["value"].as_i64().unwrap();
        assert!(
            value >= l.acked_adds && value <= l.attempted_adds,
            "round {round}: counter {value} outside [{}, {}]",
            l.acked_adds,
            l.attempted_adds
        );
        let mut present = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/set/crash?limit=5000&after={a}"),
                None => "/v1/set/crash?limit=5000".to_string(),
            };
            let page = n.get(&path).json();
            for e in page["elements"].as_array().unwrap() {
                present.insert(e.as_u64().unwrap());
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        let lost: Vec<_> = l.acked_elems.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged elements lost: {lost:?}"
        );
        let unexpected: Vec<_> = present.difference(&l.attempted_elems).collect();
        assert!(
            unexpected.is_empty(),
            "round {round}: elements never written: {unexpected:?}"
        );
        if let Some(&last_acked) = l.acked_puts.last() {
            let v = n.get("/v1/register/crash").json()["value"]
                .as_u64()
                .unwrap();
            assert!(
                l.attempted_puts.contains(&v),
                "round {round}: register holds {v}, never written"
            );
            assert!(
                v >= last_acked,
                "round {round}: register {v} older than acknowledged {last_acked}"
            );
        }
        assert!(
            l.acked_adds > 0 && !l.acked_elems.is_empty(),
            "round {round}: the writers got nothing acknowledged before the kill"
        );
    }
}

#[test]
fn restart_keeps_identity_and_sigterm_is_graceful() {
    let mut n = TestNode::start();
    n.post("/v1/counter/c", "{\"add\":41}");
    n.put("/v1/register/r", "\"before\"");
    let id = n.get("/v1/status").json()["node_id"].clone();
    let vv = n.get("/v1/status").json()["version_vector"].clone();

    // Requests in flight when SIGTERM arrives still complete.
    let addr = n.addr;
    let inflight = std::thread::spawn(move || {
        let token = unseen_token();
        let started = Instant::now();
        let r = try_request(
            addr,
            "GET",
            b"/v1/counter/c?timeout_ms=800",
            &[("x-dotkv-token", &token)],
            None,
        );
        (r.map(|r| r.status).ok(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let status = n.terminate();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    let (answer, took) = inflight.join().unwrap();
    assert_eq!(answer, Some(504), "the in-flight request was answered");
    assert!(took >= Duration::from_millis(700));

    n.restart();
    let s = n.get("/v1/status").json();
    assert_eq!(s["node_id"], id, "replica id changed across restart");
    assert_eq!(s["version_vector"], vv);
    assert_eq!(n.get("/v1/counter/c").json()["value"], 41);
    n.put("/v1/register/r", "\"after\"");
    assert_eq!(n.get("/v1/register/r").json()["value"], "after");
}

/// Unmounts the test's tmpfs, whatever happens to the test.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk: writes get 503 `not_ready` and nothing unacknowledged, reads
/// keep working, writes come back once there is space, and every write
/// acknowledged before the disk filled survives a SIGKILL and a restart.
/// Needs root, to mount a small tmpfs for the data directory.
#[test]
fn a_full_disk_refuses_writes_and_loses_nothing() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _mount = Mount(mnt.clone());
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        common::config_text(&mnt.join("data"), "127.0.0.1:0", ""),
    )
    .unwrap();
    let (child, addr) = common::spawn(&cfg);
    // Declared after the mount, so the node is killed before the unmount.
    let mut n = TestNode {
        child: Some(child),
        addr,
        dir: tempfile::tempdir().unwrap(),
        config: cfg,
    };
    let put = |addr, key: &str, value: &str| {
        request(
            addr,
            "PUT",
            &format!("/v1/register/{key}"),
            &[("content-type", "application/json")],
            Some(value.as_bytes()),
        )
    };
    // 900 KB values: the WAL fills the 40 MB disk long before a flush.
    let value = serde_json::to_string(&"v".repeat(900_000)).unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let key = format!("r{i}");
        let r = put(addr, &key, &value);
        match r.status {
            200 => acked.push(key),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("a 40 MB disk took 90 MB of writes");
    common::assert_error(&refused, 503, "not_ready", "not acknowledged");
    assert!(!acked.is_empty());
    // Reads are served from what is committed.
    let r = request(
        addr,
        "GET",
        &format!("/v1/register/{}", acked[0]),
        &[],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"].as_str().map(str::len), Some(900_000));

    // Room again: RocksDB resumes on its own, and writes are accepted.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=512m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(grown.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = put(addr, "after", "\"small\"");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    n.kill9();
    n.restart();
    for key in acked.iter().chain(std::iter::once(&"after".to_string())) {
        let r = request(n.addr, "GET", &format!("/v1/register/{key}"), &[], None);
        assert_eq!(r.status, 200, "acknowledged {key} lost: {}", r.text());
    }
}

/// Run `dotkv serve --config <config>` with `env` added, expecting it to
/// exit on its own within 60 s; its exit code and stderr.
fn serve_expecting_exit(
    config: &std::path::Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dotkv"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dotkv");
    let status = common::exit_within(&mut child, Duration::from_secs(60), "dotkv serve");
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn a_data_dir_in_use_or_a_misspelt_override_is_refused_clearly() {
    let n = TestNode::start();
    assert_eq!(n.post("/v1/counter/c", r#"{"add":3}"#).status, 200);
    // A second node on the same data directory (its own port) stops at
    // once, says why, and leaves the first one serving.
    let (code, stderr) = serve_expecting_exit(&n.config, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("data directory"), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(n.get("/v1/counter/c").json()["value"], 3);
    // A `DOTKV_*` override that names no option is refused like an unknown
    // field in the file (exit 2, before anything starts), and names the
    // variable that was probably meant.
    // A variable that is not UTF-8, not the node's, changes nothing.
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let (code, stderr) = serve_expecting_exit(
        &n.config,
        &[
            ("DOTKV_HTTP_MAX_BODY_BYTES", "10".as_ref()),
            ("SOME_OTHER_VARIABLE", not_utf8),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown variable DOTKV_HTTP_MAX_BODY_BYTES"),
        "{stderr}"
    );
    assert!(stderr.contains("DOTKV_LIMITS_MAX_BODY_BYTES"), "{stderr}");
    // One of the node's that is not UTF-8 is refused, and nothing panics.
    let (code, stderr) = serve_expecting_exit(&n.config, &[("DOTKV_NODE_NAME", not_utf8)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("DOTKV_NODE_NAME"), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    // A data directory that is a file.
    let file = n.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, stderr) =
        serve_expecting_exit(&n.config, &[("DOTKV_NODE_DATA_DIR", file.as_os_str())]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
    assert_eq!(n.get("/v1/counter/c").json()["value"], 3);
}

/// A causal token naming a write of a replica no test node has heard of: a
/// request carrying it waits out its `timeout_ms`.
fn unseen_token() -> String {
    let mut vv = dotkv_crdt::VersionVector::new();
    vv.set_max(dotkv_crdt::ReplicaId(7), 1);
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(dotkv_crdt::encode(&vv).unwrap())
}

#[test]
fn a_second_stop_signal_cuts_the_grace_period_short() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dotkv.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 60000\n[log]\nlevel = \"warn\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let (child, addr) = common::spawn(&config);
    let mut child = common::KillOnDrop(child);
    let r = request(
        addr,
        "POST",
        "/v1/counter/c",
        JSON,
        Some(r#"{"add":2}"#.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A read that would wait a minute for a write this node never sees.
    let inflight = std::thread::spawn(move || {
        try_request(
            addr,
            "GET",
            b"/v1/counter/c?timeout_ms=60000",
            &[("x-dotkv-token", &unseen_token())],
            None,
        )
        .map(|r| r.status)
        .ok()
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id() as i32;
    let sigterm = || unsafe {
        libc::kill(pid, libc::SIGTERM);
    };
    // The first signal waits for it, within the minute of grace.
    sigterm();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node stopped without waiting for the request in flight"
    );
    // The second does not: the node flushes and exits 0 at once.
    sigterm();
    let status = common::exit_within(
        &mut child,
        Duration::from_secs(20),
        "the node, after a second SIGTERM,",
    );
    assert!(
        status.success(),
        "exit status after two SIGTERMs: {status:?}"
    );
    // It was answered as at the end of the grace period, or cut off.
    let answer = inflight.join().unwrap();
    assert!(matches!(answer, None | Some(503)), "{answer:?}");
    // What was acknowledged is there after a restart.
    let (again, addr) = common::spawn(&config);
    let _again = common::KillOnDrop(again);
    let r = request(addr, "GET", "/v1/counter/c", &[], None);
    assert_eq!(r.json()["value"], 2);
}
