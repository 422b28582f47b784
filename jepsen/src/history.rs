//! The history: every operation as Jepsen records it, an `invoke` followed by
//! its `ok`, `fail` or `info` completion, with nanosecond times since the start
//! of the test.
//!
//! The JSON shape is Jepsen's (and what elle-cli reads): `index`, `time`,
//! `type`, `process`, `f`, `value`. A few extra fields carry what our checkers
//! need: the node an operation went to, the causal token it sent (on the
//! invoke) or received (on the completion), an error message, a `final` mark on
//! the reads made after the final heal, `result` for a second value of an
//! answer (a counter's value after an add), and `hlc` for the last-writer-wins
//! order key a register answer showed (`X-Dotkv-Hlc`).
//!
//! Meaning of the completion types, as in Jepsen: `ok` happened, `fail`
//! certainly did not happen, `info` may or may not have happened. A process
//! whose operation ended in `info` never issues another one: the client takes
//! a new process id.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// The kind of a history entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who performed an operation: a client process (a number) or the nemesis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Named(String),
}

impl Process {
    pub fn nemesis() -> Process {
        Process::Named("nemesis".into())
    }

    pub fn is_client(&self) -> bool {
        matches!(self, Process::Client(_))
    }
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub index: u64,
    /// Nanoseconds since the test started.
    pub time: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub process: Process,
    pub f: String,
    #[serde(default)]
    pub value: Value,
    /// On the `ok` of a register write or read: the answer's `X-Dotkv-Hlc`,
    /// the order key of the value written or read (`<hlc>.<replica hex>`).
    /// Histories recorded before the header existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The key the operation touched, for workloads that spread over keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// On an invoke: the causal token sent. On a completion: the token the
    /// answer carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A read made after the final heal, one per node.
    #[serde(default, rename = "final", skip_serializing_if = "std::ops::Not::not")]
    pub final_read: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl Op {
    /// A bare entry; the recorder fills in `index` and `time`.
    pub fn new(kind: OpType, process: Process, f: &str, value: Value) -> Op {
        Op {
            index: 0,
            time: 0,
            kind,
            process,
            f: f.to_string(),
            value,
            hlc: None,
            node: None,
            key: None,
            token: None,
            error: None,
            final_read: false,
            result: None,
        }
    }

    pub fn node(mut self, node: &str) -> Op {
        self.node = Some(node.to_string());
        self
    }

    pub fn key(mut self, key: Option<String>) -> Op {
        self.key = key;
        self
    }

    pub fn token(mut self, token: Option<String>) -> Op {
        self.token = token;
        self
    }

    pub fn is_ok(&self) -> bool {
        self.kind == OpType::Ok
    }
}

/// Collects entries from many tasks, stamping index and time.
pub struct Recorder {
    start: Mutex<Instant>,
    ops: Mutex<Vec<Op>>,
    /// The latest nemesis entry, for the progress line.
    last_nemesis: Mutex<String>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start: Mutex::new(start),
            ops: Mutex::new(Vec::new()),
            last_nemesis: Mutex::new(String::new()),
        }
    }

    /// Nanoseconds since the start of the test.
    pub fn now(&self) -> u64 {
        self.start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            .as_nanos() as u64
    }

    /// Makes time zero now (call before the first operation).
    pub fn restart(&self) {
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn record(&self, mut op: Op) -> Op {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        // Stamped under the lock, so index order is time order.
        op.time = self.now();
        op.index = ops.len() as u64;
        ops.push(op.clone());
        drop(ops);
        if !op.process.is_client() {
            *self.last_nemesis.lock().unwrap_or_else(|e| e.into_inner()) =
                format!("{} {}", op.f, op.value);
        }
        op
    }

    /// The latest nemesis entry, as `f value`.
    pub fn last_nemesis(&self) -> String {
        self.last_nemesis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts of completions so far: (ok, fail, info).
    pub fn counts(&self) -> (usize, usize, usize) {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = (0, 0, 0);
        for op in ops.iter().filter(|o| o.process.is_client()) {
            match op.kind {
                OpType::Ok => c.0 += 1,
                OpType::Fail => c.1 += 1,
                OpType::Info => c.2 += 1,
                OpType::Invoke => {}
            }
        }
        c
    }
}

/// An invocation and its completion (`None` if the history ends first).
#[derive(Clone, Debug)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub complete: Option<&'a Op>,
}

impl Pair<'_> {
    /// The completion type; an operation that never completed is `info`.
    pub fn kind(&self) -> OpType {
        self.complete.map(|c| c.kind).unwrap_or(OpType::Info)
    }

    pub fn is_ok(&self) -> bool {
        self.kind() == OpType::Ok
    }

    /// When the operation completed, or the end of time if it never did.
    pub fn end(&self) -> u64 {
        self.complete.map(|c| c.time).unwrap_or(u64::MAX)
    }
}

/// Pairs each client invocation with the next completion of its process, in
/// invocation order.
pub fn pairs(history: &[Op]) -> Vec<Pair<'_>> {
    let mut open: HashMap<&Process, usize> = HashMap::new();
    let mut out: Vec<Pair<'_>> = Vec::new();
    for op in history.iter().filter(|o| o.process.is_client()) {
        if op.kind == OpType::Invoke {
            open.insert(&op.process, out.len());
            out.push(Pair {
                invoke: op,
                complete: None,
            });
        } else if let Some(i) = open.remove(&op.process) {
            out[i].complete = Some(op);
        }
    }
    out
}

/// Writes one JSON object per line.
pub fn write_jsonl(path: &Path, history: &[Op]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in history {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads a `history.jsonl`.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Op>> {
    let f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut ops = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        ops.push(op);
    }
    Ok(ops)
}

/// Hand-made histories for the checkers' unit tests.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// Builds a history one entry at a time, with time advancing by 1 ms per
    /// entry.
    #[derive(Default)]
    pub struct H {
        pub ops: Vec<Op>,
    }

    impl H {
        fn push(&mut self, mut op: Op) -> &mut Op {
            op.index = self.ops.len() as u64;
            op.time = (self.ops.len() as u64 + 1) * 1_000_000;
            self.ops.push(op);
            self.ops.last_mut().unwrap()
        }

        pub fn invoke(&mut self, p: u64, f: &str, v: Value, node: &str) -> &mut Op {
            self.push(Op::new(OpType::Invoke, Process::Client(p), f, v).node(node))
        }

        pub fn ok(&mut self, p: u64, f: &str, v: Value, node: &str) -> &mut Op {
            self.push(Op::new(OpType::Ok, Process::Client(p), f, v).node(node))
        }

        pub fn info(&mut self, p: u64, f: &str, v: Value, node: &str) -> &mut Op {
            self.push(Op::new(OpType::Info, Process::Client(p), f, v).node(node))
        }

        pub fn fail(&mut self, p: u64, f: &str, v: Value, node: &str) -> &mut Op {
            self.push(Op::new(OpType::Fail, Process::Client(p), f, v).node(node))
        }

        /// An invoke and its ok completion.
        pub fn call(&mut self, p: u64, f: &str, inv: Value, res: Value, node: &str) -> &mut Op {
            self.invoke(p, f, inv, node);
            self.ok(p, f, res, node)
        }

        /// A final read on `node`.
        pub fn final_read(&mut self, p: u64, f: &str, res: Value, node: &str) {
            self.invoke(p, f, Value::Null, node).final_read = true;
            self.ok(p, f, res, node).final_read = true;
        }

        pub fn converged(&mut self) {
            self.push(Op::new(
                OpType::Info,
                Process::nemesis(),
                "converge",
                serde_json::json!({"converged": true, "time_ms": 10, "deadline_ms": 60000}),
            ));
        }
    }
}
