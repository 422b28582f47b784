//! `dotkv demo` as a user runs it: the real binary starts a local cluster of
//! real node processes behind WAN relays, prints where they are, serves, and
//! on SIGTERM stops every process it started and removes its temporary
//! directory.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{request, try_request};
use serde_json::Value;

/// A running `dotkv demo`, its output as it comes, line by line.
struct Demo {
    child: Option<Child>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stderr line seen so far, for failure messages.
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dotkv"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dotkv demo starts");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Demo {
            child: Some(child),
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The first line on stdout: the node list.
    fn first_line(&mut self, within: Duration) -> String {
        match self.stdout.recv_timeout(within) {
            Ok(line) => line,
            Err(e) => {
                self.drain_stderr();
                panic!(
                    "no line on stdout within {within:?} ({e}); stderr:\n{}",
                    self.seen.join("\n")
                )
            }
        }
    }

    /// Waits for a stderr line that satisfies `pred`, and returns it.
    fn stderr_line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("[demo] {line}");
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "no such line on stderr within {within:?}; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            eprintln!("[demo] {line}");
            self.seen.push(line);
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends SIGTERM and waits (bounded) for the demo to exit.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait(within)
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.drain_stderr();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                self.drain_stderr();
                panic!(
                    "dotkv demo did not exit within {within:?}; stderr:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    /// A failed test must not leave a cluster behind: SIGTERM lets the demo
    /// stop its nodes; if it does not, SIGKILL (its nodes then get SIGTERM
    /// from the kernel, as their parent died).
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A base port with `len` consecutive ports free for TCP and UDP on
/// 127.0.0.1, below Linux's ephemeral range (32768 and up) so no outgoing
/// connection takes one meanwhile. Tests of this file run in parallel, so
/// each call starts somewhere else.
fn free_range(len: u16) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(call * 1999);
    for attempt in 0..500u32 {
        let base = 20_000 + (seed.wrapping_add(attempt * 104_729) % 12_000) as u16;
        let free = (base..base + len).all(|port| {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no {len} free consecutive ports between 20000 and 32000");
}

fn addr_of(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url} is not an http:// URL"))
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The node list printed with `--json`: (dc, node, http address).
fn parse_nodes(line: &str) -> Vec<(String, String, SocketAddr)> {
    let nodes: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    nodes
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {line}"))
        .iter()
        .map(|n| {
            let field = |k: &str| {
                n[k].as_str()
                    .unwrap_or_else(|| panic!("no {k} in {n}"))
                    .to_owned()
            };
            (field("dc"), field("node"), addr_of(&field("http")))
        })
        .collect()
}

fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

/// The data directory the demo announced on stderr.
fn announced_dir(demo: &mut Demo) -> PathBuf {
    let line = demo.stderr_line(Duration::from_secs(10), |l| {
        l.starts_with("demo: data directory ")
    });
    let rest = line.strip_prefix("demo: data directory ").unwrap();
    PathBuf::from(rest.split(" (").next().unwrap())
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let resp = request(addr, "GET", path, &[], None);
    assert_eq!(resp.status, 200, "GET {path} at {addr}: {}", resp.text());
    resp.json()
}

fn counter_add(addr: SocketAddr, key: &str, n: i64) {
    let body = format!("{{\"add\":{n}}}");
    let resp = request(
        addr,
        "POST",
        &format!("/v1/counter/{key}"),
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(resp.status, 200, "add at {addr}: {}", resp.text());
}

/// Pids of the `dotkv serve` processes started with this config file.
fn node_pids(config: &Path) -> Vec<i32> {
    let config = config.to_str().unwrap();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&&b"serve"[..]) && args.contains(&config.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn two_datacenters_start_serve_and_stop_cleanly() {
    // 4 nodes × (HTTP, QUIC) and 4 nodes × 1 other datacenter's relay.
    let base = free_range(12);
    let base_arg = base.to_string();
    let mut demo = Demo::start(&[
        "--datacenters",
        "2",
        "--nodes-per-dc",
        "2",
        "--wan-delay-ms",
        "20",
        "--json",
        "--base-port",
        &base_arg,
    ]);
    let nodes = parse_nodes(&demo.first_line(Duration::from_secs(90)));
    let expected = [
        ("dc1", "dc1-n1"),
        ("dc1", "dc1-n2"),
        ("dc2", "dc2-n1"),
        ("dc2", "dc2-n2"),
    ];
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    for (k, ((dc, node, addr), (want_dc, want_node))) in nodes.iter().zip(expected).enumerate() {
        assert_eq!((dc.as_str(), node.as_str()), (want_dc, want_node));
        // The documented scheme: node k serves HTTP on BASE + 2k.
        assert_eq!(
            *addr,
            SocketAddr::from(([127, 0, 0, 1], base + 2 * k as u16))
        );
        let health = request(*addr, "GET", "/health", &[], None);
        assert_eq!(health.status, 200, "{node}: {}", health.text());
    }
    let dir = announced_dir(&mut demo);
    assert!(dir.join("certs/ca.pem").exists() && dir.join("dc2-n2.toml").exists());

    let status = demo.terminate(Duration::from_secs(30));
    assert!(status.success(), "demo exited with {status}");
    for (_, node, addr) in &nodes {
        assert!(refuses_connections(*addr), "{node} still answers on {addr}");
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn busy_ports_and_bad_flags_are_refused_clearly() {
    // Someone else holds the HTTP port of dc1-n2 (BASE + 2). Another process
    // may take a port between `free_range`'s probe and this bind, so a range
    // whose squatter cannot bind is passed over for the next one.
    let (base, _squatter) = (0..20)
        .find_map(|_| {
            let base = free_range(6);
            TcpListener::bind(("127.0.0.1", base + 2))
                .ok()
                .map(|held| (base, held))
        })
        .expect("20 free ranges in a row lost their port before it was held");
    let mut demo = Demo::start(&[
        "--datacenters",
        "1",
        "--nodes-per-dc",
        "3",
        "--base-port",
        &base.to_string(),
    ]);
    let status = demo.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{:?}", demo.seen);
    let message = demo.seen.join("\n");
    assert!(
        message.contains(&format!("port {} (HTTP of dc1-n2)", base + 2))
            && message.contains("--base-port"),
        "{message}"
    );

    for args in [
        &["--datacenters", "0"][..],
        &["--nodes-per-dc", "17"],
        &["--wan-delay-ms", "999999"],
        &[
            "--base-port",
            "65530",
            "--datacenters",
            "3",
            "--nodes-per-dc",
            "2",
        ],
        &["--datacenters", "8", "--nodes-per-dc", "9"],
    ] {
        let mut demo = Demo::start(args);
        let status = demo.wait(Duration::from_secs(30));
        assert_eq!(status.code(), Some(2), "{args:?}: {:?}", demo.seen);
        assert!(
            demo.seen.iter().any(|l| l.contains("error")),
            "{args:?}: {:?}",
            demo.seen
        );
    }
}

#[test]
fn a_kept_data_dir_is_reused_and_a_dead_node_is_reported() {
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("demo");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let base = free_range(4);
    let base_arg = base.to_string();
    let args = [
        "--datacenters",
        "1",
        "--nodes-per-dc",
        "2",
        "--json",
        "--base-port",
        &base_arg,
        "--data-dir",
        &dir_arg,
    ];

    let mut demo = Demo::start(&args);
    let nodes = parse_nodes(&demo.first_line(Duration::from_secs(90)));
    counter_add(nodes[0].2, "kept", 7);
    let ca = std::fs::read(dir.join("certs/ca.pem")).unwrap();
    assert!(demo.terminate(Duration::from_secs(30)).success());
    assert!(dir.join("dc1-n1").is_dir() && dir.join("dc1-n1.log").exists());

    // Again on the same directory: same CA, same data.
    let mut demo = Demo::start(&args);
    let nodes = parse_nodes(&demo.first_line(Duration::from_secs(90)));
    assert_eq!(std::fs::read(dir.join("certs/ca.pem")).unwrap(), ca);
    assert_eq!(get_json(nodes[0].2, "/v1/counter/kept")["value"], 7);

    // A node that dies is reported; the other keeps serving.
    let config = std::fs::canonicalize(&dir).unwrap().join("dc1-n2.toml");
    let pids = node_pids(&config);
    assert_eq!(pids.len(), 1, "dc1-n2 processes: {pids:?}");
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    let line = demo.stderr_line(Duration::from_secs(10), |l| l.contains("exited on its own"));
    assert!(line.contains("dc1-n2"), "{line}");
    assert_eq!(request(nodes[0].2, "GET", "/health", &[], None).status, 200);

    assert!(demo.terminate(Duration::from_secs(30)).success());
    assert!(refuses_connections(nodes[0].2));
    assert!(dir.exists(), "a kept directory stays");
}

/// Needs replication between nodes (issue 4). A counter written in dc1 shows
/// up in both nodes of dc2, across the 20 ms relays.
#[test]
fn replication_crosses_the_wan_relays() {
    let base = free_range(12);
    let base_arg = base.to_string();
    let mut demo = Demo::start(&[
        "--datacenters",
        "2",
        "--nodes-per-dc",
        "2",
        "--wan-delay-ms",
        "20",
        "--json",
        "--base-port",
        &base_arg,
    ]);
    let nodes = parse_nodes(&demo.first_line(Duration::from_secs(90)));
    counter_add(nodes[0].2, "across", 5);
    counter_add(nodes[1].2, "across", 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, node, addr) in &nodes[2..] {
        loop {
            let value = try_request(*addr, "GET", b"/v1/counter/across", &[], None)
                .ok()
                .filter(|r| r.status == 200)
                .map(|r| r.json()["value"].clone());
            if value == Some(Value::from(7)) {
                break;
            }
            if Instant::now() > deadline {
                let status = get_json(*addr, "/v1/status");
                panic!("{node} has {value:?}, not 7, after 30 s; status: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Once dc1-n1 has every peer connected (through the relays for dc2),
    // w=all waits until dc2 has applied a write: at least one trip through
    // a relay for the delta and one back for the acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_json(nodes[0].2, "/v1/status");
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        if peers.len() == 3 && peers.iter().all(|p| p["connected"] == true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dc1-n1's peers are not all connected after 30 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let resp = request(
        nodes[0].2,
        "POST",
        "/v1/counter/all?w=all&timeout_ms=10000",
        &[("content-type", "application/json")],
        Some(b"{\"add\":1}"),
    );
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "w=all: {}", resp.text());
    assert!(
        took >= Duration::from_millis(40),
        "w=all answered in {took:?}, faster than two 20 ms WAN trips"
    );
    assert!(demo.terminate(Duration::from_secs(30)).success());
}
