//! The `dotkv` client subcommands over QUIC (`--quic`), against the real
//! binary serving with a `[quic]` section and certificates from
//! `dotkv certs`: same output and exit codes as over HTTP, errors included,
//! and a client that does not trust the node's CA is refused.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestNode;

#[derive(Debug, PartialEq, Eq)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `dotkv args...` with `stdin` and no `DOTKV_*` from the environment.
fn dotkv(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Run {
    use std::io::Write;
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotkv"));
    for var in [
        "DOTKV_URL",
        "DOTKV_QUIC",
        "DOTKV_CA",
        "DOTKV_SERVER_NAME",
        "DOTKV_API_TOKEN",
    ] {
        command.env_remove(var);
    }
    let mut child = command
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dotkv starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().expect("dotkv runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A node with QUIC on, and what a client needs to reach it.
struct QuicNode {
    node: TestNode,
    quic: SocketAddr,
    /// The CA and the node's certificate.
    certs: tempfile::TempDir,
}

impl QuicNode {
    fn start(extra: &str) -> QuicNode {
        let certs = tempfile::tempdir().unwrap();
        let dir = certs.path().to_str().unwrap();
        for args in [
            &["certs", "init", "--out", dir][..],
            &[
                "certs", "node", "--name", "n1", "--ca-dir", dir, "--out", dir,
            ],
        ] {
            let run = dotkv(args, &[], "");
            assert_eq!(run.code, 0, "{args:?}: {run:?}");
        }
        let quic = free_udp_port();
        let section = format!(
            "[quic]\nlisten = \"{quic}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{extra}",
            certs.path().join("ca.pem").display().to_string(),
            certs.path().join("n1.pem").display().to_string(),
            certs.path().join("n1.key").display().to_string(),
        );
        let node = TestNode::start_with(&section);
        let started = QuicNode { node, quic, certs };
        started.wait_for_quic();
        started
    }

    fn ca(&self) -> String {
        self.certs.path().join("ca.pem").display().to_string()
    }

    fn url(&self) -> String {
        format!("http://{}", self.node.addr)
    }

    /// `dotkv --quic ADDR --ca CA args...`.
    fn quic(&self, args: &[&str], stdin: &str) -> Run {
        let quic = self.quic.to_string();
        let ca = self.ca();
        let mut all = vec!["--quic", quic.as_str(), "--ca", ca.as_str()];
        all.extend_from_slice(args);
        dotkv(&all, &[], stdin)
    }

    /// `dotkv --url URL args...`.
    fn http(&self, args: &[&str], stdin: &str) -> Run {
        let url = self.url();
        let mut all = vec!["--url", url.as_str()];
        all.extend_from_slice(args);
        dotkv(&all, &[], stdin)
    }

    /// The node binds QUIC while it starts; wait until it answers.
    fn wait_for_quic(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.quic(&["health"], "");
            if run.code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "QUIC on {} never answered: {run:?}",
                self.quic
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A UDP port free right now on 127.0.0.1 (the node binds it moments later).
fn free_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[test]
fn every_subcommand_works_over_quic_as_over_http() {
    let n = QuicNode::start("");

    let run = n.quic(&["counter", "add", "visits", "5", "--show-token"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "counter/visits = 5\n");
    let token = run
        .stderr
        .strip_prefix("token: ")
        .expect("--show-token prints the token")
        .trim()
        .to_owned();
    // The causal token of a QUIC answer is good over HTTP, and back.
    let run = n.http(&["counter", "get", "visits", "--causal-token", &token], "");
    assert_eq!((run.code, run.stdout.as_str()), (0, "counter/visits = 5\n"));
    let run = n.quic(&["counter", "get", "visits", "--causal-token", &token], "");
    assert_eq!((run.code, run.stdout.as_str()), (0, "counter/visits = 5\n"));

    for write in [
        &["register", "put", "cfg", r#"{"a":1}"#][..],
        &["mvregister", "put", "m", "-"],
        &["set", "add", "s", "x", "5"],
        &["set", "remove", "s", "5"],
        &["flag", "enable", "f"],
        &["counter", "add", "gone", "1"],
        &["delete", "counter", "gone"],
        &["batch", "-"],
    ] {
        let stdin = match write[0] {
            "mvregister" => r#""v""#,
            "batch" => r#"{"ops":[{"type":"counter","key":"b","op":{"add":2}}]}"#,
            _ => "",
        };
        let run = n.quic(write, stdin);
        assert_eq!(run.code, 0, "{write:?}: {run:?}");
    }

    // Reads and error answers: the same output and exit code either way.
    let bad_batch = r#"{"ops":[{"type":"flag","key":"f","op":{"add":5}}]}"#;
    for (args, stdin, code) in [
        (&["counter", "get", "visits"][..], "", 0),
        (&["counter", "get", "b"], "", 0),
        (&["--json", "register", "get", "cfg"], "", 0),
        (&["mvregister", "get", "m"], "", 0),
        (&["set", "get", "s"], "", 0),
        (&["set", "contains", "s", "x"], "", 0),
        (&["flag", "get", "f"], "", 0),
        (&["keys", "counter"], "", 0),
        (&["--json", "keys", "counter", "--prefix", "vis"], "", 0),
        (&["health"], "", 0),
        (&["register", "get", "missing"], "", 1),
        (&["batch", "-"], bad_batch, 1),
        (&["--w", "never", "flag", "enable", "f"], "", 1),
        (&["counter", "add", &"k".repeat(2000), "1"], "", 1),
    ] {
        let over_quic = n.quic(args, stdin);
        let over_http = n.http(args, stdin);
        assert_eq!(over_quic.code, code, "{args:?}: {over_quic:?}");
        assert_eq!(over_quic, over_http, "{args:?}");
    }
    let missing = n.quic(&["register", "get", "missing"], "");
    assert!(
        missing.stderr.starts_with("error: not_found: "),
        "{missing:?}"
    );
    let invalid = n.quic(&["batch", "-"], bad_batch);
    assert!(
        invalid.stderr.starts_with("error: invalid_op: "),
        "{invalid:?}"
    );

    let status = n.quic(&["--json", "status"], "");
    assert_eq!(status.code, 0, "{status:?}");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(status.is_object(), "{status}");
}

#[test]
fn flags_come_from_the_environment_too() {
    let n = QuicNode::start("");
    let quic = n.quic.to_string();
    let ca = n.ca();
    let envs = [
        ("DOTKV_QUIC", quic.as_str()),
        ("DOTKV_CA", ca.as_str()),
        ("DOTKV_SERVER_NAME", "localhost"),
        // Unused with --quic: nothing listens here.
        ("DOTKV_URL", "http://127.0.0.1:9"),
    ];
    let run = dotkv(&["counter", "add", "e", "3"], &envs, "");
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "counter/e = 3\n"),
        "{run:?}"
    );
    // The node's name is in its certificate too.
    let run = dotkv(&["--server-name", "n1", "counter", "get", "e"], &envs, "");
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "counter/e = 3\n"),
        "{run:?}"
    );
}

#[test]
fn bearer_tokens_over_quic() {
    let n = QuicNode::start("[auth]\ntokens = [\"s3cret\"]\n");
    let run = n.quic(&["counter", "get", "c"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: unauthorized: "), "{run:?}");
    let run = n.quic(&["--token", "s3cret", "counter", "get", "c"], "");
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "counter/c = 0\n"),
        "{run:?}"
    );
}

#[test]
fn a_client_that_does_not_trust_the_node_is_refused() {
    let n = QuicNode::start("");
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().to_str().unwrap();
    assert_eq!(
        dotkv(&["certs", "init", "--out", other_dir], &[], "").code,
        0
    );
    let other_ca = other.path().join("ca.pem");
    let quic = n.quic.to_string();

    let run = dotkv(
        &[
            "--quic",
            &quic,
            "--ca",
            other_ca.to_str().unwrap(),
            "counter",
            "get",
            "k",
        ],
        &[],
        "",
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&format!("quic://{quic}")), "{run:?}");
    assert!(run.stdout.is_empty());

    // The right CA, but a name the node's certificate does not carry.
    let run = n.quic(&["--server-name", "elsewhere.example", "health"], "");
    assert_eq!(run.code, 1, "{run:?}");

    // Nothing was refused for the right client.
    assert_eq!(n.quic(&["health"], "").code, 0);
}

#[test]
fn bad_quic_flags_are_usage_errors() {
    let missing_ca = Path::new("/nonexistent/ca.pem");
    for (args, code) in [
        (
            vec!["--quic", "nonsense", "health"],
            2, // no port
        ),
        (vec!["--quic", "127.0.0.1:notaport", "health"], 2),
        (
            vec![
                "--quic",
                "127.0.0.1:7701",
                "--ca",
                missing_ca.to_str().unwrap(),
                "health",
            ],
            2,
        ),
    ] {
        let run = dotkv(&args, &[], "");
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error: "), "{run:?}");
    }
}

/// `quic.max_client_connections` bounds the API clients' connections: one
/// more is closed with the reason, which the CLI shows, and a slot freed by a
/// client that closes is taken by the next.
#[test]
fn client_connections_are_bounded() {
    let n = QuicNode::start("max_client_connections = 1\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = n.certs.path().join("ca.pem");
    let holder = rt.block_on(async {
        let c = dotkv_client::Client::quic(n.quic, "localhost", &ca).unwrap();
        c.health().await.expect("the first client is served");
        c
    });
    let refused = n.quic(&["counter", "get", "c"], "");
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("max_client_connections = 1"),
        "{refused:?}"
    );
    // HTTP is not affected.
    assert_eq!(n.http(&["counter", "get", "c"], "").code, 0);
    rt.block_on(holder.close());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = n.quic(&["counter", "get", "c"], "");
        if run.code == 0 {
            assert_eq!(run.stdout, "counter/c = 0\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never came back: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
