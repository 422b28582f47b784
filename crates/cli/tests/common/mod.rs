//! Test harness: starts the real `dotkv` binary on a free port with a temporary
//! data directory, and talks raw HTTP/1.1 to it over TCP, so tests see exactly
//! what a client on the wire sees.

#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestNode {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// Config text for a test node; `extra` is appended (more sections).
pub fn config_text(data_dir: &Path, listen: &str, extra: &str) -> String {
    format!(
        "[node]\ndata_dir = {:?}\n[http]\nlisten = {:?}\nshutdown_grace_ms = 5000\n[log]\nlevel = \"warn\"\n{}",
        data_dir.display().to_string(),
        listen,
        extra
    )
}

impl TestNode {
    pub fn start() -> TestNode {
        Self::start_with("")
    }

    /// Start with extra config sections (must not repeat [node], [http], [log]).
    pub fn start_with(extra: &str) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("dotkv.toml");
        std::fs::write(
            &config,
            config_text(&dir.path().join("data"), "127.0.0.1:0", extra),
        )
        .unwrap();
        let (child, addr) = spawn(&config);
        TestNode {
            child: Some(child),
            addr,
            dir,
            config,
        }
    }

    /// Start again on the same data directory (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        let (child, addr) = spawn(&self.config);
        self.child = Some(child);
        self.addr = addr;
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit status (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        exit_within(&mut c, Duration::from_secs(20), "the node, after SIGTERM,")
    }

    pub fn req(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        request(self.addr, method, path, headers, body.map(str::as_bytes))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        self.req("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &str) -> Resp {
        self.req("PUT", path, Some(body))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Wait for `child` to exit; past `limit`, kill it and fail the test.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node process killed when the guard goes, so a failing test does not
/// leave it running (it would hold the test's output pipe open, and with it
/// `make test`).
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn `dotkv serve --config`, wait for its "listening" line.
pub fn spawn(config: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dotkv"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dotkv");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("dotkv: listening on http://") {
                let _ = tx.send(addr.trim().to_string());
                break;
            }
        }
        // Keep draining so the node never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => (child, addr.parse().expect("socket address")),
        Err(_) => {
            let _ = child.kill();
            panic!("dotkv did not report its address within 60 s");
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of a JSON error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "not an error answer: {}",
                    String::from_utf8_lossy(&self.body)
                )
            })
            .to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Asserts an error answer: its status, its code, and words of its message.
pub fn assert_error(r: &Resp, status: u16, code: &str, says: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{}",
        r.text()
    );
    assert!(r.text().contains(says), "{}", r.text());
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`). `path`
/// goes on the wire as given, so tests can send any bytes.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    try_request(addr, method, path.as_bytes(), headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &[u8],
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path);
    req.extend_from_slice(b" HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if let Some(b) = body {
        req.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        req.extend_from_slice(b);
    }
    s.write_all(&req)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
