//! Model-based random test of the HTTP API against the real binary.
//!
//! A seeded generator draws thousands of operations of every type (single
//! writes, deletes, batches with and without an invalid op, counter adds that
//! overflow, sets large enough to be deleted by range) over a small pool of
//! keys, so that operations keep landing on the same objects. Each answer is
//! checked against a plain in-memory model of what a single node must hold,
//! and every object is read back (values, set pages, `contains`, key listings
//! by prefix and page) after each phase: after the sequential phase, after
//! `kill -9` and a restart, after clients writing concurrently, and after a
//! SIGTERM and a restart.
//!
//! A second test runs the same clients at two datacenters at once, each on
//! its own keys, and then reads the model of both writers back from each
//! node: replication must carry every kind of op (batches, counter resets,
//! large sets cleared by range) to the peer intact.
//!
//! A failure names its seed. `DOTKV_MODEL_SEED=<n>` runs one seed and
//! `DOTKV_MODEL_OPS=<n>` sets the operations per phase, to reproduce a failure
//! or to search further.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::cluster::{Cluster, DEADLINE};
use common::{parse_response, Resp, TestNode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The seeds `make test` runs (one node each).
const SEEDS: [u64; 3] = [1, 2, 3];
/// Operations per phase, by default.
const OPS: usize = 3_000;
/// Concurrent clients in the concurrent phase.
const CLIENTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Counter,
    Register,
    MvRegister,
    Set,
    Flag,
}

const KINDS: [Kind; 5] = [
    Kind::Counter,
    Kind::Register,
    Kind::MvRegister,
    Kind::Set,
    Kind::Flag,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Register => "register",
            Kind::MvRegister => "mvregister",
            Kind::Set => "set",
            Kind::Flag => "flag",
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    CounterAdd(String, i64),
    RegisterSet(String, Value),
    MvSet(String, Value),
    SetUpdate {
        key: String,
        add: Vec<Value>,
        remove: Vec<Value>,
    },
    Flag(String, bool),
    Delete(Kind, String),
}

impl Op {
    fn kind_and_key(&self) -> (Kind, &str) {
        match self {
            Op::CounterAdd(k, _) => (Kind::Counter, k),
            Op::RegisterSet(k, _) => (Kind::Register, k),
            Op::MvSet(k, _) => (Kind::MvRegister, k),
            Op::SetUpdate { key, .. } => (Kind::Set, key),
            Op::Flag(k, _) => (Kind::Flag, k),
            Op::Delete(kind, k) => (*kind, k),
        }
    }

    /// The op as a batch entry.
    fn batch_entry(&self) -> Value {
        let (kind, key) = self.kind_and_key();
        let op = match self {
            Op::CounterAdd(_, n) => json!({ "add": n }),
            Op::RegisterSet(_, v) | Op::MvSet(_, v) => json!({ "set": v }),
            Op::SetUpdate { add, remove, .. } => set_body(add, remove),
            Op::Flag(_, b) => json!({ "enable": b }),
            Op::Delete(..) => json!({ "delete": true }),
        };
        json!({ "type": kind.name(), "key": key, "op": op })
    }
}

fn set_body(add: &[Value], remove: &[Value]) -> Value {
    let mut body = serde_json::Map::new();
    // Either list may be left out; send both when both have elements, and an
    // empty `add` now and then.
    if !add.is_empty() || remove.is_empty() {
        body.insert("add".into(), Value::Array(add.to_vec()));
    }
    if !remove.is_empty() {
        body.insert("remove".into(), Value::Array(remove.to_vec()));
    }
    Value::Object(body)
}

#[derive(Clone, Copy, Debug, Default)]
struct Counter {
    value: i64,
    /// Listed by `GET /v1/counter`: a nonzero add since it was created or
    /// last deleted (an add of 0 to a counter that is not there stores
    /// nothing).
    listed: bool,
}

/// What a single node must hold.
#[derive(Clone, Debug, Default)]
struct Model {
    counters: BTreeMap<String, Counter>,
    registers: BTreeMap<String, Value>,
    mvregisters: BTreeMap<String, Value>,
    /// Elements by their canonical JSON text.
    sets: BTreeMap<String, BTreeMap<String, Value>>,
    /// Enabled flags.
    flags: BTreeSet<String>,
}

/// The identity of a set element: its JSON text, with `-0.0` read as `0.0`.
fn canon(e: &Value) -> String {
    match e.as_f64() {
        Some(f) if f == 0.0 && e.is_f64() => "0.0".to_string(),
        _ => e.to_string(),
    }
}

#[derive(Debug)]
struct Overflow;

impl Model {
    /// Apply one op; a counter overflow changes nothing.
    fn apply(&mut self, op: &Op) -> Result<(), Overflow> {
        match op {
            Op::CounterAdd(k, n) => {
                let c = self.counters.entry(k.clone()).or_default();
                c.value = c.value.checked_add(*n).ok_or(Overflow)?;
                c.listed |= *n != 0;
            }
            Op::RegisterSet(k, v) => {
                self.registers.insert(k.clone(), v.clone());
            }
            Op::MvSet(k, v) => {
                self.mvregisters.insert(k.clone(), v.clone());
            }
            Op::SetUpdate { key, add, remove } => {
                let set = self.sets.entry(key.clone()).or_default();
                for e in remove {
                    set.remove(&canon(e));
                }
                for e in add {
                    set.insert(canon(e), e.clone());
                }
                if set.is_empty() {
                    self.sets.remove(key);
                }
            }
            Op::Flag(k, b) => {
                if *b {
                    self.flags.insert(k.clone());
                } else {
                    self.flags.remove(k);
                }
            }
            Op::Delete(kind, k) => match kind {
                Kind::Counter => {
                    self.counters.insert(k.clone(), Counter::default());
                }
                Kind::Register => {
                    self.registers.remove(k);
                }
                Kind::MvRegister => {
                    self.mvregisters.remove(k);
                }
                Kind::Set => {
                    self.sets.remove(k);
                }
                Kind::Flag => {
                    self.flags.remove(k);
                }
            },
        }
        Ok(())
    }

    /// Keys `GET /v1/{kind}` lists, in byte order.
    fn listed(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Counter => self
                .counters
                .iter()
                .filter(|(_, c)| c.listed)
                .map(|(k, _)| k.clone())
                .collect(),
            Kind::Register => self.registers.keys().cloned().collect(),
            Kind::MvRegister => self.mvregisters.keys().cloned().collect(),
            Kind::Set => self.sets.keys().cloned().collect(),
            Kind::Flag => self.flags.iter().cloned().collect(),
        }
    }

    /// Every key the model has heard of, of one kind.
    fn known(&self, kind: Kind) -> BTreeSet<String> {
        match kind {
            Kind::Counter => self.counters.keys().cloned().collect(),
            _ => self.listed(kind).into_iter().collect(),
        }
    }

    /// Take in a model of disjoint keys.
    fn merge(&mut self, other: Model) {
        self.counters.extend(other.counters);
        self.registers.extend(other.registers);
        self.mvregisters.extend(other.mvregisters);
        self.sets.extend(other.sets);
        self.flags.extend(other.flags);
    }
}

/// Percent-encode all but unreserved characters (and `/`, when `slash`).
fn enc(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if slash => out.push('/'),
            _ => write!(out, "%{b:02X}").unwrap(),
        }
    }
    out
}

/// One request and its answer on a kept-alive connection. An error says
/// whether any byte of the answer had arrived.
fn exchange(c: &mut BufReader<TcpStream>, wire: &[u8]) -> Result<Resp, (bool, String)> {
    c.get_mut()
        .write_all(wire)
        .map_err(|e| (false, e.to_string()))?;
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        match c.read_until(b'\n', &mut raw) {
            Ok(0) => return Err((!raw.is_empty(), "closed mid-answer".into())),
            Ok(_) if raw.len() > 64 * 1024 => return Err((true, "headers over 64 KiB".into())),
            Ok(_) => {}
            Err(e) => return Err((!raw.is_empty(), e.to_string())),
        }
    }
    let head = parse_response(&raw).map_err(|e| (true, e.to_string()))?;
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| (true, format!("no content-length in {:?}", head.headers)))?;
    let mut body = vec![0; len];
    c.read_exact(&mut body).map_err(|e| (true, e.to_string()))?;
    Ok(Resp { body, ..head })
}

/// `s` with the longest keys abbreviated, for messages.
fn short(s: &str) -> String {
    s.replace(&"k".repeat(1000), "k…")
}

/// A set element as `contains=` takes it: a string quoted.
fn query_element(e: &Value) -> String {
    match e {
        Value::String(s) => serde_json::to_string(s).unwrap(),
        other => other.to_string(),
    }
}

fn path(kind: Kind, key: &str) -> String {
    format!("/v1/{}/{}", kind.name(), enc(key, true))
}

/// Key names that need every kind of care in a path.
const KEY_BASES: [&str; 12] = [
    "a",
    "b",
    "a/b",
    "a%b",
    "ü-ñ",
    "sp ace",
    "q?x=1&y",
    "#frag",
    "+",
    "\u{1F600}",
    "dot.",
    "A",
];

/// Strings for values and set elements, JSON's escapes among them.
const STRINGS: [&str; 12] = [
    "",
    "x",
    "5",
    "1.0",
    "null",
    "ü",
    "\"quoted\"",
    "back\\slash",
    "line\nbreak",
    "nul\u{0}",
    "\u{1F600}",
    "tab\there",
];

const INTS: [i64; 8] = [0, 1, -1, 5, 42, i64::MAX, i64::MIN, 1 << 53];
const FLOATS: [f64; 7] = [0.5, -2.25, 1.0, -0.0, 1e10, 3.0e-5, 1e300];

struct Gen {
    rng: StdRng,
    /// What every key of this generator starts with.
    prefix: String,
    keys: Vec<String>,
    /// Names for elements of large sets, so a delete goes by range.
    big: u32,
}

impl Gen {
    fn new(seed: u64, prefix: &str) -> Gen {
        let mut keys: Vec<String> = KEY_BASES.iter().map(|b| format!("{prefix}{b}")).collect();
        // The longest key there may be.
        keys.push(format!("{prefix}{}", "k".repeat(1024 - prefix.len())));
        Gen {
            rng: StdRng::seed_from_u64(seed),
            prefix: prefix.to_string(),
            keys,
            big: 0,
        }
    }

    fn key(&mut self) -> String {
        let i = self.rng.random_range(0..self.keys.len());
        self.keys[i].clone()
    }

    fn kind(&mut self) -> Kind {
        KINDS[self.rng.random_range(0..KINDS.len())]
    }

    fn amount(&mut self) -> i64 {
        match self.rng.random_range(0..10) {
            0..=5 => self.rng.random_range(-10..=10),
            6 => INTS[self.rng.random_range(0..INTS.len())],
            7 => INTS[self.rng.random_range(0..INTS.len())].saturating_neg(),
            _ => self.rng.random(),
        }
    }

    fn string(&mut self) -> String {
        STRINGS[self.rng.random_range(0..STRINGS.len())].to_string()
    }

    fn value(&mut self, depth: u32) -> Value {
        let arms = if depth >= 3 { 6 } else { 8 };
        match self.rng.random_range(0..arms) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.random()),
            2 => json!(INTS[self.rng.random_range(0..INTS.len())]),
            3 => json!(u64::MAX - self.rng.random_range(0..2)),
            4 => json!(FLOATS[self.rng.random_range(0..FLOATS.len())]),
            5 => Value::String(self.string()),
            6 => {
                let n = self.rng.random_range(0..4);
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ => {
                let n = self.rng.random_range(0..4);
                Value::Object(
                    (0..n)
                        .map(|_| (self.string(), self.value(depth + 1)))
                        .collect(),
                )
            }
        }
    }

    fn element(&mut self) -> Value {
        match self.rng.random_range(0..5) {
            0 | 1 => Value::String(self.string()),
            2 => json!(INTS[self.rng.random_range(0..INTS.len())]),
            3 => json!(FLOATS[self.rng.random_range(0..FLOATS.len())]),
            _ => json!(self.rng.random_range(-3..30)),
        }
    }

    fn elements(&mut self, max: usize) -> Vec<Value> {
        let n = self.rng.random_range(0..=max);
        (0..n).map(|_| self.element()).collect()
    }

    fn op(&mut self) -> Op {
        let key = self.key();
        match self.rng.random_range(0..20) {
            0..=4 => Op::CounterAdd(key, self.amount()),
            5..=6 => Op::RegisterSet(key, self.value(0)),
            7 => Op::MvSet(key, self.value(0)),
            8..=12 => {
                let (add, remove) = (self.elements(4), self.elements(3));
                Op::SetUpdate { key, add, remove }
            }
            13 => {
                // Past the size where a delete becomes one range deletion.
                let n = self.rng.random_range(60..140);
                let add = (0..n)
                    .map(|_| {
                        self.big += 1;
                        json!(format!("big-{}", self.big))
                    })
                    .collect();
                Op::SetUpdate {
                    key,
                    add,
                    remove: Vec::new(),
                }
            }
            14..=15 => Op::Flag(key, self.rng.random()),
            _ => Op::Delete(self.kind(), key),
        }
    }

    /// An op of the wrong shape for its type (422 `invalid_op`).
    fn invalid_op(&mut self) -> Value {
        let key = self.key();
        let (kind, op) = match self.rng.random_range(0..6) {
            0 => ("counter", json!({"add": "five"})),
            1 => ("counter", json!({"add": 1.5})),
            2 => ("set", json!({"add": [{"an": "object"}]})),
            3 => ("set", json!({"add": [[1]]})),
            4 => ("flag", json!({"enable": "yes"})),
            _ => ("register", json!({"put": 1})),
        };
        json!({"type": kind, "key": key, "op": op})
    }
}

/// One client: its generator, the model of its keys, and a log of recent ops
/// for the failure message.
struct Client {
    /// The node's address (it changes when the node restarts).
    addr: SocketAddr,
    /// One kept-alive connection: a connection per request would leave tens
    /// of thousands of sockets in TIME_WAIT and run out of local ports.
    conn: RefCell<Option<BufReader<TcpStream>>>,
    gen: Gen,
    model: Model,
    seed: u64,
    log: Vec<String>,
    /// Adds to the counter every client shares (concurrent phase).
    shared: Option<(String, i64)>,
}

impl Client {
    fn new(addr: SocketAddr, seed: u64, gen: Gen, shared: Option<String>) -> Client {
        Client {
            addr,
            conn: RefCell::new(None),
            gen,
            model: Model::default(),
            seed,
            log: Vec::new(),
            shared: shared.map(|k| (k, 0)),
        }
    }

    /// Point the client at a restarted node.
    fn reconnect(&mut self, addr: SocketAddr) {
        self.addr = addr;
        *self.conn.get_mut() = None;
    }

    fn req(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
        if let Some(b) = body {
            let len = b.len();
            write!(
                head,
                "content-type: application/json\r\ncontent-length: {len}\r\n"
            )
            .unwrap();
        }
        head.push_str("\r\n");
        let wire = [head.as_bytes(), body.unwrap_or_default().as_bytes()].concat();
        // A kept-alive connection the node has since closed fails before any
        // byte of an answer; then (only then) the request goes again on a
        // new one. The node is not stopped while requests are in flight, so
        // a request that was read was answered.
        for attempt in 0..2 {
            let mut conn = self.conn.borrow_mut();
            let reused = conn.is_some();
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| self.fail(&format!("connect: {e}")));
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                *conn = Some(BufReader::new(s));
            }
            let c = conn.as_mut().unwrap();
            match exchange(c, &wire) {
                Ok(r) => return r,
                Err((false, _)) if reused && attempt == 0 => *conn = None,
                Err((_, e)) => self.fail(&format!("{method} {path}: {e}")),
            }
        }
        unreachable!("the second attempt returns or fails")
    }

    fn fail(&self, what: &str) -> ! {
        let start = self.log.len().saturating_sub(12);
        panic!(
            "seed {}: {}\nlast ops:\n  {}",
            self.seed,
            short(what),
            self.log[start..].join("\n  ")
        );
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 10_000 {
            self.log.drain(..5_000);
        }
        self.log.push(short(&s));
    }

    fn expect(&self, r: &Resp, status: u16, what: &str) {
        if r.status != status {
            self.fail(&format!(
                "{what}: expected {status}, got {} {}",
                r.status,
                r.text()
            ));
        }
        if r.header("x-dotkv-token").is_none() {
            self.fail(&format!("{what}: no X-Dotkv-Token in {} answer", r.status));
        }
        if status >= 400 {
            let j = r.json();
            let ok = j["error"]["code"].is_string()
                && j["error"]["message"].is_string()
                && j.as_object().is_some_and(|o| o.len() == 1);
            if !ok {
                self.fail(&format!("{what}: not an error answer: {}", r.text()));
            }
        }
    }

    fn step(&mut self) {
        match self.gen.rng.random_range(0..10) {
            0 => self.batch(),
            1 => self.invalid_single(),
            2 => {
                let (kind, key) = (self.gen.kind(), self.gen.key());
                self.check_object(kind, &key);
            }
            _ => {
                let op = self.gen.op();
                self.single(op);
            }
        }
        if let Some((key, sum)) = self.shared.as_mut() {
            let n = self.gen.rng.random_range(1..=9);
            *sum += n;
            let (key, body) = (key.clone(), json!({ "add": n }).to_string());
            let r = self.req("POST", &path(Kind::Counter, &key), Some(&body));
            self.expect(&r, 200, "shared counter add");
        }
    }

    fn single(&mut self, op: Op) {
        self.note(format!("{op:?}"));
        let (kind, key) = op.kind_and_key();
        let p = path(kind, key);
        let what = format!("{op:?}");
        let body = match &op {
            Op::CounterAdd(_, n) => json!({ "add": n }).to_string(),
            Op::RegisterSet(_, v) | Op::MvSet(_, v) => v.to_string(),
            Op::SetUpdate { add, remove, .. } => set_body(add, remove).to_string(),
            Op::Flag(_, b) => json!({ "enable": b }).to_string(),
            Op::Delete(..) => String::new(),
        };
        let r = match &op {
            Op::RegisterSet(..) | Op::MvSet(..) => self.req("PUT", &p, Some(&body)),
            Op::Delete(..) => self.req("DELETE", &p, None),
            _ => self.req("POST", &p, Some(&body)),
        };
        match self.model.apply(&op) {
            Ok(()) => {
                self.expect(&r, 200, &what);
                let mut want = json!({ "key": key });
                if let Op::CounterAdd(k, _) = &op {
                    want["value"] = json!(self.model.counters[k].value);
                }
                if r.json() != want {
                    self.fail(&format!("{what}: answered {}, want {want}", r.text()));
                }
            }
            Err(Overflow) => {
                self.expect(&r, 409, &what);
                if r.code() != "conflict" {
                    self.fail(&format!("{what}: {}", r.text()));
                }
            }
        }
    }

    /// A write the node must refuse whole, on a key the model holds.
    fn invalid_single(&mut self) {
        let key = self.gen.key();
        let (kind, body) = match self.gen.rng.random_range(0..4) {
            0 => (Kind::Counter, r#"{"add":"5"}"#),
            1 => (Kind::Set, r#"{"add":["ok",{"no":1}]}"#),
            2 => (Kind::Flag, r#"{"enable":1}"#),
            _ => (Kind::Set, r#"{"remove":"x"}"#),
        };
        self.note(format!("invalid {} {key:?} {body}", kind.name()));
        let r = self.req("POST", &path(kind, &key), Some(body));
        self.expect(&r, 422, "an invalid op");
    }

    fn batch(&mut self) {
        let n = self.gen.rng.random_range(1..=6);
        let ops: Vec<Op> = (0..n).map(|_| self.gen.op()).collect();
        let mut entries: Vec<Value> = ops.iter().map(Op::batch_entry).collect();
        let invalid = self.gen.rng.random_ratio(1, 5);
        if invalid {
            let at = self.gen.rng.random_range(0..=entries.len());
            let bad = self.gen.invalid_op();
            entries.insert(at, bad);
        }
        self.note(format!("batch (invalid: {invalid}) {ops:?}"));
        let body = json!({ "ops": entries }).to_string();
        let r = self.req("POST", "/v1/batch", Some(&body));
        let mut after = self.model.clone();
        let overflow = ops.iter().any(|op| after.apply(op).is_err());
        let what = format!("batch of {} ops", entries.len());
        if invalid {
            self.expect(&r, 422, &what);
        } else if overflow {
            self.expect(&r, 409, &what);
        } else {
            self.expect(&r, 200, &what);
            if r.json() != json!({ "applied": entries.len() }) {
                self.fail(&format!("{what}: answered {}", r.text()));
            }
            self.model = after;
        }
    }

    fn check_object(&self, kind: Kind, key: &str) {
        let p = path(kind, key);
        let r = self.req("GET", &p, None);
        let what = format!("GET {} {key:?}", kind.name());
        let m = &self.model;
        match kind {
            Kind::Counter => {
                let v = m.counters.get(key).map_or(0, |c| c.value);
                self.expect(&r, 200, &what);
                self.same(&r, json!({ "key": key, "value": v }), &what);
            }
            Kind::Register => match m.registers.get(key) {
                Some(v) => {
                    self.expect(&r, 200, &what);
                    self.same(&r, json!({ "key": key, "value": v }), &what);
                }
                None => self.expect(&r, 404, &what),
            },
            Kind::MvRegister => {
                let values: Vec<&Value> = m.mvregisters.get(key).into_iter().collect();
                self.expect(&r, 200, &what);
                self.same(&r, json!({ "key": key, "values": values }), &what);
            }
            Kind::Flag => {
                self.expect(&r, 200, &what);
                self.same(
                    &r,
                    json!({ "key": key, "value": m.flags.contains(key) }),
                    &what,
                );
            }
            Kind::Set => self.check_set(key),
        }
    }

    fn same(&self, r: &Resp, want: Value, what: &str) {
        if r.json() != want {
            self.fail(&format!("{what}: read {}, want {want}", r.text()));
        }
    }

    /// Every page of a paged read: `base` (ending in `?` or `&`) with
    /// `limit=` and, after the first page, `after=` the previous page's
    /// `next` (the text to send back as it is). Returns each page's request
    /// and answer. Fails past `max_pages`, on a page with more than `limit`
    /// items in `field`, and on a `next` that is neither a string nor null.
    fn pages(
        &self,
        base: &str,
        field: &str,
        limit: usize,
        max_pages: usize,
    ) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            if out.len() > max_pages {
                self.fail(&format!("GET {base}: paging does not end"));
            }
            let mut q = format!("{base}limit={limit}");
            if let Some(a) = &after {
                write!(q, "&after={}", enc(a, false)).unwrap();
            }
            let r = self.req("GET", &q, None);
            let what = format!("GET {q}");
            self.expect(&r, 200, &what);
            let j = r.json();
            if j[field].as_array().is_none_or(|items| items.len() > limit) {
                self.fail(&format!("{what}: {}", r.text()));
            }
            after = match &j["next"] {
                Value::Null => None,
                Value::String(next) => Some(next.clone()),
                other => self.fail(&format!("{what}: next is {other}")),
            };
            out.push((what, j));
            if after.is_none() {
                return out;
            }
        }
    }

    /// A set read page by page, and `contains` for elements in and out of it.
    fn check_set(&self, key: &str) {
        let empty = BTreeMap::new();
        let want = self.model.sets.get(key).unwrap_or(&empty);
        let p = path(Kind::Set, key);
        // The generator is borrowed immutably here: page sizes come from the
        // key, so a check does not change the sequence of ops.
        let limit = 1 + key.len() % 7 + want.len() % 5;
        let mut got = BTreeMap::new();
        for (what, j) in self.pages(&format!("{p}?"), "elements", limit, want.len() + 2) {
            if j["key"] != json!(key) {
                self.fail(&format!("{what}: {j}"));
            }
            for e in j["elements"].as_array().into_iter().flatten() {
                if got.insert(canon(e), e.clone()).is_some() {
                    self.fail(&format!("{what}: an element twice: {j}"));
                }
            }
        }
        if got.keys().ne(want.keys()) {
            self.fail(&format!(
                "set {key:?}: read {:?}, want {:?}",
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            ));
        }
        let probes = want.values().take(3).cloned().chain([
            json!("absent"),
            json!(-7),
            json!(2.5),
            json!("5"),
            json!(5),
        ]);
        for e in probes {
            let q = format!("{p}?contains={}", enc(&query_element(&e), false));
            let r = self.req("GET", &q, None);
            let what = format!("GET {q}");
            self.expect(&r, 200, &what);
            let has = want.contains_key(&canon(&e));
            self.same(&r, json!({ "key": key, "contains": has }), &what);
        }
    }

    /// Every object of the model, and the key listings.
    fn check_all(&self, prefixes: &[&str]) {
        for kind in KINDS {
            for key in self.model.known(kind) {
                self.check_object(kind, &key);
            }
            for key in &self.gen.keys {
                if !self.model.known(kind).contains(key) {
                    self.check_object(kind, key);
                }
            }
            for prefix in prefixes {
                self.check_listing(kind, prefix);
            }
        }
    }

    fn check_listing(&self, kind: Kind, prefix: &str) {
        let want: Vec<String> = self
            .model
            .listed(kind)
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        let limit = 1 + (prefix.len() + want.len()) % 6;
        let base = format!("/v1/{}?prefix={}&", kind.name(), enc(prefix, false));
        let mut got = Vec::new();
        for (_, j) in self.pages(&base, "keys", limit, want.len() + 2) {
            let keys = j["keys"].as_array().into_iter().flatten();
            got.extend(keys.map(|k| k.as_str().unwrap_or("?").to_string()));
        }
        if got != want {
            self.fail(&format!(
                "{} listing under {prefix:?}: read {got:?}, want {want:?}",
                kind.name()
            ));
        }
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("DOTKV_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("DOTKV_MODEL_SEED is a u64")],
        Err(_) => SEEDS.to_vec(),
    }
}

fn ops_per_phase() -> usize {
    std::env::var("DOTKV_MODEL_OPS").map_or(OPS, |s| s.parse().expect("DOTKV_MODEL_OPS"))
}

fn run(seed: u64) {
    let ops = ops_per_phase();
    let mut node = TestNode::start();
    let mut main = Client::new(node.addr, seed, Gen::new(seed, "s/"), None);
    let prefixes = ["", "s/", "s/a", "t", "t1/", "zz"];

    // 1. One client, then every object read back.
    for _ in 0..ops {
        main.step();
    }
    main.check_all(&prefixes);

    // 2. kill -9 and restart: every acknowledged write is there.
    node.kill9();
    node.restart();
    main.reconnect(node.addr);
    main.check_all(&prefixes);

    // 3. Clients writing at once, each on its own keys, all adding to one
    //    shared counter.
    let shared = "shared";
    let clients: Vec<Client> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let addr = node.addr;
                s.spawn(move || {
                    let gen = Gen::new(seed ^ ((i as u64 + 1) << 32), &format!("t{i}/"));
                    let mut c = Client::new(addr, seed, gen, Some(shared.to_string()));
                    for _ in 0..ops / CLIENTS {
                        c.step();
                    }
                    c
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = 0;
    for c in clients {
        c.check_all(&[&c.gen.prefix]);
        total += c.shared.as_ref().map_or(0, |s| s.1);
        main.model.merge(c.model);
    }
    let counter = Counter {
        value: total,
        listed: true,
    };
    main.model.counters.insert(shared.to_string(), counter);
    main.check_all(&prefixes);

    // 4. More writes, SIGTERM and restart.
    for _ in 0..ops / 4 {
        main.step();
    }
    let status = node.terminate();
    assert!(status.success(), "seed {seed}: SIGTERM exit {status:?}");
    node.restart();
    main.reconnect(node.addr);
    main.check_all(&prefixes);
    let listed: usize = KINDS.iter().map(|k| main.model.listed(*k).len()).sum();
    assert!(
        listed > 40,
        "seed {seed}: the run left only {listed} objects; the generator is too weak"
    );
}

#[test]
fn random_operations_match_a_model_through_crashes_and_restarts() {
    for seed in seeds() {
        run(seed);
    }
}

/// Wait until every node of `c` has applied the same writes.
fn wait_same_version_vectors(c: &Cluster) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let vvs: Vec<Option<Value>> = c
            .nodes
            .iter()
            .map(|n| n.try_status().map(|s| s["version_vector"].clone()))
            .collect();
        if vvs[0].is_some() && vvs.iter().all(|v| *v == vvs[0]) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence within {DEADLINE:?}: {vvs:?}\n{}",
            c.log_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_datacenters_each_hold_the_model_of_both_writers() {
    let c = Cluster::builder().datacenters(2, 1).start();
    c.wait_connected();
    let ops = ops_per_phase();
    let mut all = Model::default();
    for seed in seeds() {
        // Two clients per node, each on its own keys, all adding to one
        // counter at both nodes.
        let shared = format!("shared-{seed}");
        let clients: Vec<Client> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2 * c.nodes.len())
                .map(|i| {
                    let node = &c.nodes[i % c.nodes.len()];
                    let (addr, shared) = (node.addr(), shared.clone());
                    let prefix = format!("{seed}/{}/{}/", node.name, i / c.nodes.len());
                    s.spawn(move || {
                        let gen = Gen::new(seed ^ ((i as u64 + 1) << 40), &prefix);
                        let mut c = Client::new(addr, seed, gen, Some(shared));
                        for _ in 0..ops / 2 {
                            c.step();
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut total = 0;
        for c in clients {
            total += c.shared.as_ref().map_or(0, |s| s.1);
            all.merge(c.model);
        }
        let counter = Counter {
            value: total,
            listed: true,
        };
        all.counters.insert(shared, counter);
        wait_same_version_vectors(&c);
        for node in &c.nodes {
            let mut check = Client::new(node.addr(), seed, Gen::new(seed, "x/"), None);
            check.model = all.clone();
            check.note(format!("(reading {} after every client's ops)", node.name));
            let own = format!("{seed}/{}/", node.name);
            check.check_all(&["", &own, &format!("{seed}/")]);
        }
    }
}
