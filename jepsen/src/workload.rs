//! Workloads: what the clients do, and the final reads after the heal.
//!
//! Each client is a loop: pick an operation, record its `invoke`, run it over
//! HTTP, record `ok`, `fail` or `info`. A client whose operation ended in
//! `info` takes a new process id (its old one may still have an operation in
//! flight, as far as anyone knows) and drops its causal token.
//!
//! | workload | operations | node per op |
//! |---|---|---|
//! | set | add a unique integer e to `set-G`, read all of `set-G` | bound |
//! | counter | add 1..=5 to `counter`, read it | bound |
//! | register | write a unique integer to `register`, read it (with token); record `X-Dotkv-Hlc` | random |
//! | session | add e to / read `session-G` with the previous token | random |
//! | batch | one batch adding e to `batch-G-a` and `batch-G-b`, read a then b | bound |
//! | convergence | set add, counter add, register write on `conv-*` | bound |
//!
//! Growing sets are spread over generations of keys, `G = e / KEY_SPAN`, as
//! Jepsen's set-full spreads over keys, so a read stays small however long the
//! test runs. Reads go to the current generation (sometimes the previous one);
//! the final reads read every generation on every node.

use crate::history::{Op, OpType, Process, Recorder};
use crate::http1;
use dotkv_api::{Batch, SetUpdate, HLC_HEADER, TOKEN_HEADER};
use dotkv_client::{Client, ClientError, Page, ReadOptions, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Set,
    Counter,
    Register,
    Session,
    Batch,
    Convergence,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Set,
        Workload::Counter,
        Workload::Register,
        Workload::Session,
        Workload::Batch,
        Workload::Convergence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Counter => "counter",
            Workload::Register => "register",
            Workload::Session => "session",
            Workload::Batch => "batch",
            Workload::Convergence => "convergence",
        }
    }

    pub fn from_name(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Whether each operation goes to a random node (instead of the client's
    /// own).
    fn roams(self) -> bool {
        matches!(self, Workload::Register | Workload::Session)
    }

    /// Whether clients carry their latest token into the next request.
    fn carries_token(self) -> bool {
        matches!(self, Workload::Register | Workload::Session)
    }
}

/// The result of one operation.
pub enum Outcome {
    Ok {
        value: Value,
        token: Option<String>,
        result: Option<Value>,
        /// A register answer's `X-Dotkv-Hlc`.
        hlc: Option<String>,
    },
    Fail(String),
    Info(String),
}

/// Elements per key generation.
pub const KEY_SPAN: u64 = 500;

/// A node as the clients see it.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub client: Client,
}

/// What every client shares.
pub struct Shared {
    pub workload: Workload,
    pub recorder: Arc<Recorder>,
    pub targets: Vec<Target>,
    /// Unique values for adds and writes.
    pub next_value: AtomicU64,
    pub stop: AtomicBool,
    /// Mean pause between one client's operations.
    pub stagger: Duration,
    /// Clients keep the join of every token they received instead of the
    /// latest one (see [`join_tokens`]).
    pub join_tokens: bool,
}

/// The join of two causal tokens (decoded as version vectors), or `b` if
/// either does not decode.
///
/// The API promises read-your-writes and monotonic reads to a client that
/// carries the *latest* token, which is what the session workload checks by
/// default. Joining on the client side instead isolates the read path (the
/// causal wait) from the token a write answers with.
pub fn join_tokens(a: Option<&str>, b: String) -> String {
    use dotkv_crdt::Lattice;
    let (Some(a), Ok(vb)) = (a, dotkv_node::token::decode(&b)) else {
        return b;
    };
    match dotkv_node::token::decode(a) {
        Ok(mut va) => {
            va.join(&vb);
            dotkv_node::token::encode(&va)
        }
        Err(_) => b,
    }
}

/// A failed read changed nothing; a failed write is `fail` only when it
/// certainly did not happen (refused, or a 4xx/503 answer), else `info`.
fn classify(e: ClientError, write: bool) -> Outcome {
    let msg = e.to_string();
    if !write {
        return Outcome::Fail(msg);
    }
    let certain = match &e {
        ClientError::Api { status, .. } => *status < 500 || *status == 503,
        ClientError::Transport { message, .. } => message.contains("Connection refused"),
        ClientError::Config(_) | ClientError::InvalidRequest(_) => true,
        _ => false,
    };
    if certain {
        Outcome::Fail(msg)
    } else {
        Outcome::Info(msg)
    }
}

/// Reads every page of a set.
async fn read_set(
    c: &Client,
    key: &str,
    token: Option<String>,
) -> Result<(Value, Option<String>), ClientError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let opts = ReadOptions { token };
    let mut last_token = None;
    loop {
        let page = Page {
            limit: Some(10_000),
            after: after.clone(),
        };
        let r = c.set_get(key, &page, &opts).await?;
        last_token = r.token.or(last_token);
        out.extend(
            r.value
                .elements
                .into_iter()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null)),
        );
        match r.value.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok((Value::Array(out), last_token))
}

/// Bounds of the register workload's own exchanges: the same as the
/// harness's clients (`run::client_for`).
const REGISTER_TIMEOUTS: http1::Timeouts = http1::Timeouts {
    connect: Duration::from_secs(2),
    total: Duration::from_secs(6),
};

/// `PUT` or `GET /v1/register/{key}` over [`http1`], which keeps the
/// answer's `X-Dotkv-Hlc` (`dotkv-client` shows only the token). `key` must
/// be a plain path segment.
async fn register_exchange(
    c: &Client,
    key: &str,
    put: Option<&Value>,
    token: Option<&str>,
) -> Result<http1::Answer, http1::Error> {
    let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
    let body = put.map(Value::to_string);
    http1::exchange(
        c.base_url(),
        if put.is_some() { "PUT" } else { "GET" },
        &format!("/v1/register/{key}"),
        &headers,
        body.as_deref().map(str::as_bytes),
        REGISTER_TIMEOUTS,
    )
    .await
}

/// The `error` object of an error answer (null if there is none).
fn api_error_of(a: &http1::Answer) -> Value {
    let mut body: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    body.get_mut("error")
        .map(Value::take)
        .unwrap_or(Value::Null)
}

fn api_error(a: &http1::Answer) -> String {
    let e = api_error_of(a);
    format!(
        "status {}: {}: {}",
        a.status,
        e["code"].as_str().unwrap_or("?"),
        e["message"].as_str().unwrap_or("")
    )
}

fn header(a: &http1::Answer, name: &str) -> Option<String> {
    a.header(name).map(str::to_owned)
}

/// A register write, classified as [`classify`] does for the client's.
async fn register_put(c: &Client, key: &str, v: &Value, token: Option<&str>) -> Outcome {
    match register_exchange(c, key, Some(v), token).await {
        Ok(a) if (200..300).contains(&a.status) => Outcome::Ok {
            value: v.clone(),
            token: header(&a, TOKEN_HEADER),
            result: None,
            hlc: header(&a, HLC_HEADER),
        },
        Ok(a) if a.status < 500 || a.status == 503 => Outcome::Fail(api_error(&a)),
        Ok(a) => Outcome::Info(api_error(&a)),
        Err(http1::Error::Refused(m)) => Outcome::Fail(m),
        Err(http1::Error::Other(m)) => Outcome::Info(m),
    }
}

/// A register read: the value (null if unset) with its order key.
async fn register_get(c: &Client, key: &str, token: Option<&str>) -> Outcome {
    match register_exchange(c, key, None, token).await {
        Ok(a) if (200..300).contains(&a.status) => match serde_json::from_slice::<Value>(&a.body) {
            Ok(body) if body.get("value").is_some() => Outcome::Ok {
                value: body["value"].clone(),
                token: header(&a, TOKEN_HEADER),
                result: None,
                hlc: header(&a, HLC_HEADER),
            },
            _ => Outcome::Fail(format!(
                "status {}: not a register answer: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            )),
        },
        // Unset, as `ClientError::is_not_found` tells it.
        Ok(a) if a.status == 404 && api_error_of(&a)["code"] == "not_found" => Outcome::Ok {
            value: Value::Null,
            token: None,
            result: None,
            hlc: None,
        },
        Ok(a) => Outcome::Fail(api_error(&a)),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

fn set_update(e: &Value) -> SetUpdate {
    serde_json::from_value(json!({"add": [e]})).expect("a set update")
}

impl Shared {
    /// The key of generation `g`, for workloads that use generations.
    fn generation_key(&self, g: u64) -> Option<String> {
        match self.workload {
            Workload::Set => Some(format!("set-{g}")),
            Workload::Session => Some(format!("session-{g}")),
            Workload::Batch => Some(format!("batch-{g}")),
            _ => None,
        }
    }

    /// Every key used so far, for the final reads (`[None]` for workloads
    /// with fixed keys).
    pub fn all_keys(&self) -> Vec<Option<String>> {
        let n = self.next_value.load(Ordering::Relaxed);
        match self.generation_key(0) {
            None => vec![None],
            Some(_) => (0..=n.saturating_sub(1) / KEY_SPAN)
                .map(|g| self.generation_key(g))
                .collect(),
        }
    }

    /// Runs operation `f` with invocation value `v` on `c`.
    async fn exec(
        &self,
        c: &Client,
        f: &str,
        v: &Value,
        key: Option<&str>,
        token: Option<String>,
    ) -> Outcome {
        let key = key.unwrap_or("none");
        let w = WriteOptions {
            token: token.clone(),
            ..Default::default()
        };
        let r = ReadOptions {
            token: token.clone(),
        };
        let ok = |value: Value, token: Option<String>| Outcome::Ok {
            value,
            token,
            result: None,
            hlc: None,
        };
        match (self.workload, f) {
            (Workload::Set | Workload::Session, "add") => {
                match c.set_update(key, &set_update(v), &w).await {
                    Ok(a) => ok(v.clone(), a.token),
                    Err(e) => classify(e, true),
                }
            }
            (Workload::Set | Workload::Session, "read") => match read_set(c, key, token).await {
                Ok((v, t)) => ok(v, t),
                Err(e) => classify(e, false),
            },
            (Workload::Counter, "add") => {
                match c.counter_add("counter", v.as_i64().unwrap_or(1), &w).await {
                    Ok(a) => Outcome::Ok {
                        value: v.clone(),
                        token: a.token,
                        result: Some(json!(a.value.value)),
                        hlc: None,
                    },
                    Err(e) => classify(e, true),
                }
            }
            (Workload::Counter, "read") => match c.counter_get("counter", &r).await {
                Ok(a) => ok(json!(a.value.value), a.token),
                Err(e) => classify(e, false),
            },
            (Workload::Register, "write") => register_put(c, "register", v, token.as_deref()).await,
            (Workload::Register, "read") => register_get(c, "register", token.as_deref()).await,
            (Workload::Batch, "batch") => {
                let b: Batch = serde_json::from_value(json!({"ops": [
                    {"type": "set", "key": format!("{key}-a"), "op": {"add": [v]}},
                    {"type": "set", "key": format!("{key}-b"), "op": {"add": [v]}},
                ]}))
                .expect("a batch");
                match c.batch(&b, &w).await {
                    Ok(a) => ok(v.clone(), a.token),
                    Err(e) => classify(e, true),
                }
            }
            (Workload::Batch, "read") => {
                let a = match read_set(c, &format!("{key}-a"), None).await {
                    Ok(a) => a,
                    Err(e) => return classify(e, false),
                };
                match read_set(c, &format!("{key}-b"), None).await {
                    Ok(b) => ok(json!({"a": a.0, "b": b.0}), b.1),
                    Err(e) => classify(e, false),
                }
            }
            (Workload::Convergence, "set-add") => {
                match c.set_update("conv-set", &set_update(v), &w).await {
                    Ok(a) => ok(v.clone(), a.token),
                    Err(e) => classify(e, true),
                }
            }
            (Workload::Convergence, "counter-add") => match c
                .counter_add("conv-counter", v.as_i64().unwrap_or(1), &w)
                .await
            {
                Ok(a) => ok(v.clone(), a.token),
                Err(e) => classify(e, true),
            },
            (Workload::Convergence, "register-write") => {
                match c.register_put("conv-register", v, &w).await {
                    Ok(a) => ok(v.clone(), a.token),
                    Err(e) => classify(e, true),
                }
            }
            (Workload::Convergence, "read") => {
                let set = match read_set(c, "conv-set", None).await {
                    Ok(s) => s.0,
                    Err(e) => return classify(e, false),
                };
                let counter = match c.counter_get("conv-counter", &r).await {
                    Ok(a) => a.value.value,
                    Err(e) => return classify(e, false),
                };
                match c.register_get("conv-register", &r).await {
                    Ok(a) => ok(
                        json!({"set": set, "counter": counter, "register": a.value.value}),
                        a.token,
                    ),
                    Err(e) if e.is_not_found() => ok(
                        json!({"set": set, "counter": counter, "register": null}),
                        None,
                    ),
                    Err(e) => classify(e, false),
                }
            }
            _ => Outcome::Fail(format!("unknown operation {f}")),
        }
    }

    /// The next operation of a client, and its key.
    fn generate(&self, rng: &mut StdRng) -> (&'static str, Value, Option<String>) {
        let (f, v) = self.generate_op(rng);
        if self.generation_key(0).is_none() {
            return (f, v, None);
        }
        let key = if f == "read" {
            let mut cur = self.next_value.load(Ordering::Relaxed) / KEY_SPAN;
            if cur > 0 && rng.random_bool(0.25) {
                cur -= 1;
            }
            self.generation_key(cur)
        } else {
            v.as_u64().and_then(|e| self.generation_key(e / KEY_SPAN))
        };
        (f, v, key)
    }

    fn generate_op(&self, rng: &mut StdRng) -> (&'static str, Value) {
        let unique = || json!(self.next_value.fetch_add(1, Ordering::Relaxed));
        let x: f64 = rng.random();
        match self.workload {
            Workload::Set if x < 0.85 => ("add", unique()),
            Workload::Set => ("read", Value::Null),
            Workload::Counter if x < 0.8 => ("add", json!(rng.random_range(1..=5))),
            Workload::Counter => ("read", Value::Null),
            Workload::Register | Workload::Session if x < 0.5 => (
                if self.workload == Workload::Register {
                    "write"
                } else {
                    "add"
                },
                unique(),
            ),
            Workload::Register | Workload::Session => ("read", Value::Null),
            Workload::Batch if x < 0.7 => ("batch", unique()),
            Workload::Batch => ("read", Value::Null),
            Workload::Convergence if x < 0.4 => ("set-add", unique()),
            Workload::Convergence if x < 0.8 => ("counter-add", json!(rng.random_range(1..=5))),
            Workload::Convergence => ("register-write", unique()),
        }
    }

    /// One operation, recorded. Returns the completion.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_one(
        &self,
        process: u64,
        target: &Target,
        f: &str,
        v: Value,
        key: Option<String>,
        token: Option<String>,
        final_read: bool,
    ) -> Op {
        let mut inv = Op::new(OpType::Invoke, Process::Client(process), f, v.clone())
            .node(&target.name)
            .key(key.clone())
            .token(token.clone());
        inv.final_read = final_read;
        self.recorder.record(inv);
        let outcome = self
            .exec(&target.client, f, &v, key.as_deref(), token)
            .await;
        let mut done = match outcome {
            Outcome::Ok {
                value,
                token,
                result,
                hlc,
            } => {
                let mut op = Op::new(OpType::Ok, Process::Client(process), f, value).token(token);
                op.result = result;
                op.hlc = hlc;
                op
            }
            Outcome::Fail(e) => {
                let mut op = Op::new(OpType::Fail, Process::Client(process), f, v);
                op.error = Some(e);
                op
            }
            Outcome::Info(e) => {
                let mut op = Op::new(OpType::Info, Process::Client(process), f, v);
                op.error = Some(e);
                op
            }
        };
        done = done.node(&target.name).key(key);
        done.final_read = final_read;
        self.recorder.record(done)
    }
}

/// One client: `slot` numbers it among `clients`; its process ids are
/// `slot`, `slot + clients`, `slot + 2 * clients`, ...
pub async fn client_loop(shared: Arc<Shared>, slot: usize, clients: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (slot as u64).wrapping_mul(0x9e37_79b9));
    let mut process = slot as u64;
    let mut token: Option<String> = None;
    let home = slot % shared.targets.len();
    while !shared.stop.load(Ordering::Relaxed) {
        let (f, v, key) = shared.generate(&mut rng);
        let t = if shared.workload.roams() {
            rng.random_range(0..shared.targets.len())
        } else {
            home
        };
        let target = shared.targets[t].clone();
        let sent = if shared.workload.carries_token() {
            token.clone()
        } else {
            None
        };
        let done = shared
            .run_one(process, &target, f, v, key, sent, false)
            .await;
        match done.kind {
            OpType::Info => {
                process += clients as u64;
                token = None;
            }
            OpType::Ok => {
                if let Some(t) = done.token {
                    token = Some(if shared.join_tokens {
                        join_tokens(token.as_deref(), t)
                    } else {
                        t
                    });
                }
            }
            _ => {}
        }
        let ms = shared.stagger.as_millis() as u64;
        let pause = rng.random_range(0..=ms * 2);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The final reads of the workload: every key on every node (process ids
/// above every client's), each retried a few times if a node answers with an
/// error. Returns how many could not be made.
pub async fn final_reads(shared: &Shared, first_process: u64) -> usize {
    let mut failed = 0;
    let mut process = first_process;
    for key in shared.all_keys() {
        for target in &shared.targets {
            let mut ok = false;
            for _ in 0..5 {
                let done = shared
                    .run_one(
                        process,
                        target,
                        "read",
                        Value::Null,
                        key.clone(),
                        None,
                        true,
                    )
                    .await;
                process += 1;
                if done.kind == OpType::Ok {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !ok {
                failed += 1;
            }
        }
    }
    failed
}
