//! Multi-node harness: a whole cluster of real `dotkv serve` processes on
//! loopback, with certificates from a fresh cluster CA, fixed QUIC ports, and
//! a fault-injecting UDP relay (dotkv-netsim) on every path between two
//! datacenters.
//!
//! Topology: for each node Y and each other datacenter d, one relay listens in
//! front of Y's QUIC port, and the nodes of d reach Y through it. Nodes of the
//! same datacenter talk directly. So a partition between two datacenters is
//! `partition()` on every relay between them (both directions, whichever node
//! dialled), and WAN conditions are set per pair of datacenters.
//!
//! The relays run on a tokio runtime owned by the [`Cluster`]. Every process
//! the harness starts is killed when the cluster is dropped, also on panic.
//! Each node's stderr (its log) goes to `<dir>/<name>.log`, appended across
//! restarts, so tests can look for log lines and failures can show them.
//!
//! Everything is reachable through `&Cluster` (processes and addresses sit
//! behind mutexes), so writer and reader threads can run in a
//! `std::thread::scope` while the test kills and restarts nodes.

use super::{try_request, Resp};
use dotkv_netsim::{spawn_relay, Direction, LinkConditions, RelayHandle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a test waits for a cluster to do something (connect, converge,
/// catch up) before it fails. Generous: the machine may be small and busy.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// What a cluster looks like before it starts.
pub struct ClusterBuilder {
    /// Datacenter name and node count, in order.
    datacenters: Vec<(String, usize)>,
    wan: LinkConditions,
    log_level: String,
    /// Lines under `[replication]` in every node's config.
    replication: String,
    /// Nodes whose certificate comes from a second, unrelated CA (which they
    /// also trust), so the cluster must refuse them.
    foreign: Vec<String>,
    seed: u64,
}

impl ClusterBuilder {
    /// `dcs` datacenters `dc1..`, each with `nodes` nodes `dcN-n1..`.
    pub fn datacenters(mut self, dcs: usize, nodes: usize) -> Self {
        self.datacenters = (1..=dcs).map(|d| (format!("dc{d}"), nodes)).collect();
        self
    }

    /// One datacenter with `nodes` nodes (named as in [`Self::datacenters`]).
    pub fn datacenter(mut self, name: &str, nodes: usize) -> Self {
        self.datacenters.push((name.to_string(), nodes));
        self
    }

    /// Conditions of every WAN link (both directions) from the start.
    pub fn wan(mut self, conditions: LinkConditions) -> Self {
        self.wan = conditions;
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Extra `key = value` lines for `[replication]`.
    pub fn replication(mut self, lines: &str) -> Self {
        self.replication.push_str(lines);
        self.replication.push('\n');
        self
    }

    /// Give `name` a certificate from a different CA.
    pub fn foreign_ca(mut self, name: &str) -> Self {
        self.foreign.push(name.to_string());
        self
    }

    pub fn start(self) -> Cluster {
        Cluster::start(self)
    }
}

/// One `dotkv serve` process of the cluster.
pub struct Node {
    pub name: String,
    pub dc: String,
    /// The node's own QUIC port (fixed across restarts).
    pub quic: SocketAddr,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    /// Its stderr, appended across restarts.
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
    http: Mutex<SocketAddr>,
}

/// One relay: in front of node `to`, used by the nodes of datacenter `from_dc`.
struct WanRelay {
    from_dc: String,
    to_dc: String,
    handle: RelayHandle,
}

pub struct Cluster {
    // Drop order is declaration order: processes first, then relays, then the
    // runtime that runs the relays, then the files.
    pub nodes: Vec<Node>,
    relays: Vec<WanRelay>,
    rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            datacenters: Vec::new(),
            wan: LinkConditions::default(),
            log_level: "warn".into(),
            replication: String::new(),
            foreign: Vec::new(),
            seed: 1,
        }
    }

    fn start(b: ClusterBuilder) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let foreign_certs = dir.path().join("foreign-certs");
        dotkv_replication::init_ca(&certs).expect("cluster CA");
        if !b.foreign.is_empty() {
            dotkv_replication::init_ca(&foreign_certs).expect("foreign CA");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("harness-relay")
            .build()
            .expect("relay runtime");

        // Fixed QUIC ports: hold the sockets until the relays are bound, so
        // no relay (nor anything else) takes one of them meanwhile.
        let mut held = Vec::new();
        let mut specs = Vec::new();
        for (dc, count) in &b.datacenters {
            for i in 1..=*count {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("free UDP port");
                specs.push((format!("{dc}-n{i}"), dc.clone(), sock.local_addr().unwrap()));
                held.push(sock);
            }
        }
        let dcs: Vec<String> = b.datacenters.iter().map(|(d, _)| d.clone()).collect();

        // address_of[(from_dc, node)] = where nodes of from_dc dial node.
        let mut address_of: BTreeMap<(String, String), SocketAddr> = BTreeMap::new();
        let mut relays = Vec::new();
        let mut seed = b.seed;
        for (name, dc, quic) in &specs {
            for from in dcs.iter().filter(|d| *d != dc) {
                seed += 1;
                let (addr, handle) = rt
                    .block_on(spawn_relay(
                        "127.0.0.1:0".parse().unwrap(),
                        *quic,
                        b.wan.clone(),
                        seed,
                    ))
                    .expect("start relay");
                address_of.insert((from.clone(), name.clone()), addr);
                relays.push(WanRelay {
                    from_dc: from.clone(),
                    to_dc: dc.clone(),
                    handle,
                });
            }
            address_of.insert((dc.clone(), name.clone()), *quic);
        }

        let mut nodes = Vec::new();
        for (name, dc, quic) in &specs {
            let foreign = b.foreign.contains(name);
            let ca_dir = if foreign { &foreign_certs } else { &certs };
            let files = dotkv_replication::issue_node_cert(ca_dir, name, &[], ca_dir)
                .expect("node certificate");
            let data_dir = dir.path().join(name);
            let mut text = format!(
                "[node]\nname = {name:?}\ndatacenter = {dc:?}\ndata_dir = {data:?}\n\
                 [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 2000\n\
                 [log]\nlevel = {level:?}\n\
                 [quic]\nlisten = \"{quic}\"\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\
                 [replication]\nforward_delay_ms = 300\nreconnect_ms = 200\n{repl}",
                data = data_dir.display().to_string(),
                level = b.log_level,
                ca = ca_dir.join("ca.pem").display().to_string(),
                cert = files.cert.display().to_string(),
                key = files.key.display().to_string(),
                repl = b.replication,
            );
            for (peer, peer_dc, _) in specs.iter().filter(|(p, _, _)| p != name) {
                let addr = address_of[&(dc.clone(), peer.clone())];
                text.push_str(&format!(
                    "[[peers]]\nname = {peer:?}\ndatacenter = {peer_dc:?}\naddress = \"{addr}\"\n"
                ));
            }
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, text).expect("write config");
            nodes.push(Node {
                name: name.clone(),
                dc: dc.clone(),
                quic: *quic,
                data_dir,
                config,
                log: dir.path().join(format!("{name}.log")),
                child: Mutex::new(None),
                http: Mutex::new("127.0.0.1:1".parse().unwrap()),
            });
        }
        let cluster = Cluster {
            nodes,
            relays,
            rt,
            dir,
        };
        drop(held);
        for n in &cluster.nodes {
            n.restart();
        }
        cluster
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn relays_between(&self, a: &[&str], b: &[&str]) -> Vec<&WanRelay> {
        self.relays
            .iter()
            .filter(|r| {
                let (f, t) = (r.from_dc.as_str(), r.to_dc.as_str());
                (a.contains(&f) && b.contains(&t)) || (b.contains(&f) && a.contains(&t))
            })
            .collect()
    }

    /// Cut every path between the datacenters in `a` and those in `b`.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        for r in self.relays_between(a, b) {
            r.handle.partition();
        }
    }

    /// Cut `dc` from every other datacenter.
    pub fn isolate(&self, dc: &str) {
        let others: Vec<&str> = self.dcs().into_iter().filter(|d| *d != dc).collect();
        self.partition(&[dc], &others);
    }

    /// Heal every partition (other link conditions stay).
    pub fn heal(&self) {
        for r in &self.relays {
            r.handle.heal();
        }
    }

    /// Set the conditions of every path between datacenters `a` and `b`,
    /// both directions.
    pub fn set_link(&self, a: &str, b: &str, conditions: LinkConditions) {
        for r in self.relays_between(&[a], &[b]) {
            for dir in Direction::BOTH {
                r.handle
                    .set_conditions(dir, conditions.clone())
                    .expect("valid link conditions");
            }
        }
    }

    pub fn dcs(&self) -> Vec<&str> {
        let mut dcs: Vec<&str> = Vec::new();
        for n in &self.nodes {
            if !dcs.contains(&n.dc.as_str()) {
                dcs.push(&n.dc);
            }
        }
        dcs
    }

    /// Datagrams the relays dropped because of a partition (all relays).
    pub fn dropped_by_partitions(&self) -> u64 {
        self.relays
            .iter()
            .map(|r| {
                let s = r.handle.stats();
                s.to_upstream.dropped_partition + s.to_client.dropped_partition
            })
            .sum()
    }

    /// Wait until every node in `names` shows every other node in `names` as
    /// connected in its `/v1/status`.
    pub fn wait_connected_among(&self, names: &[&str]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut missing = Vec::new();
            for &n in names {
                match self.node(n).try_status() {
                    Some(st) => {
                        for &p in names.iter().filter(|p| **p != n) {
                            if !peer_connected(&st, p) {
                                missing.push(format!("{n} -> {p}"));
                            }
                        }
                    }
                    None => missing.push(format!("{n} (no status)")),
                }
            }
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "peers not connected within {DEADLINE:?}: {missing:?}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until every node shows every peer as connected.
    pub fn wait_connected(&self) {
        let names = self.names();
        self.wait_connected_among(&names);
    }

    /// Every node's value of every key in `keys`, plus its version vector,
    /// or the first difference found.
    pub fn compare(&self, names: &[&str], keys: &[Key]) -> Result<BTreeMap<Key, Value>, String> {
        let mut vv: Option<(String, Value)> = None;
        for &n in names {
            let st = self
                .node(n)
                .try_status()
                .ok_or_else(|| format!("{n}: no status"))?;
            let v = st["version_vector"].clone();
            match &vv {
                None => vv = Some((n.to_string(), v)),
                Some((first, seen)) if *seen != v => {
                    return Err(format!("version vectors differ: {first} {seen} vs {n} {v}"))
                }
                Some(_) => {}
            }
        }
        let mut first: Option<BTreeMap<Key, Value>> = None;
        for &n in names {
            let node = self.node(n);
            let mut values = BTreeMap::new();
            for k in keys {
                let v = node
                    .try_read(k)
                    .ok_or_else(|| format!("{n}: cannot read {k:?}"))?;
                values.insert(k.clone(), v);
            }
            match &first {
                None => first = Some(values),
                Some(f) => {
                    for (k, v) in f {
                        if values[k] != *v {
                            return Err(format!(
                                "{k:?}: {} has {v} but {n} has {}",
                                names[0], values[k]
                            ));
                        }
                    }
                }
            }
        }
        Ok(first.unwrap_or_default())
    }

    /// Wait until the nodes in `names` agree on every key and on their
    /// version vectors; returns the agreed values.
    pub fn wait_converged_among(&self, names: &[&str], keys: &[Key]) -> BTreeMap<Key, Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.compare(names, keys) {
                Ok(values) => return values,
                Err(why) if Instant::now() > deadline => {
                    let statuses: Vec<String> = names
                        .iter()
                        .map(|n| {
                            format!(
                                "{n}: {}",
                                self.node(n)
                                    .try_status()
                                    .map(|s| s.to_string())
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    panic!(
                        "no convergence within {DEADLINE:?}: {why}\nstatus:\n{}\n{}",
                        statuses.join("\n"),
                        self.log_tails()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Wait until every node agrees (see [`Self::wait_converged_among`]).
    pub fn wait_converged(&self, keys: &[Key]) -> BTreeMap<Key, Value> {
        let names = self.names();
        self.wait_converged_among(&names, keys)
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = n.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {} log (last {} lines)\n", n.name, tail.len()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Run a future on the harness runtime (for relay calls that are async).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

fn peer_connected(status: &Value, peer: &str) -> bool {
    status["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .any(|p| p["name"] == peer && p["connected"] == json!(true))
        })
        .unwrap_or(false)
}

/// One object: a type namespace and a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub ty: &'static str,
    pub key: String,
}

impl Key {
    pub fn new(ty: &'static str, key: &str) -> Key {
        Key {
            ty,
            key: key.to_string(),
        }
    }

    pub fn path(&self) -> String {
        format!("/v1/{}/{}", self.ty, self.key)
    }
}

impl Node {
    /// The current HTTP address (it changes on restart).
    pub fn addr(&self) -> SocketAddr {
        *lock(&self.http)
    }

    pub fn is_running(&self) -> bool {
        lock(&self.child).is_some()
    }

    /// Start the process (again), on the same config and data directory.
    pub fn restart(&self) {
        let mut child = lock(&self.child);
        assert!(child.is_none(), "{} is running; stop it first", self.name);
        let (c, addr) = spawn_logged(&self.config, &self.log);
        *lock(&self.http) = addr;
        *child = Some(c);
    }

    pub fn kill9(&self) {
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn stop(&self) {
        let Some(mut c) = lock(&self.child).take() else {
            return;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not exit within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<Resp> {
        let mut hs: Vec<(&str, &str)> = headers.to_vec();
        if body.is_some() {
            hs.push(("content-type", "application/json"));
        }
        try_request(
            self.addr(),
            method,
            path.as_bytes(),
            &hs,
            body.map(str::as_bytes),
        )
    }

    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        self.try_req(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.name))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None)
    }

    /// GET carrying a causal token.
    pub fn get_with_token(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path, &[("x-dotkv-token", token)], None)
    }

    /// A write that must answer 200.
    pub fn write_ok(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let r = self.req(method, path, &[], body);
        assert_eq!(
            r.status,
            200,
            "{}: {method} {path} {body:?}: {}",
            self.name,
            r.text()
        );
        r
    }

    pub fn try_status(&self) -> Option<Value> {
        let r = self.try_req("GET", "/v1/status", &[], None).ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("{}: no /v1/status", self.name))
    }

    /// Whether this node's status shows `peer` as connected.
    pub fn sees_connected(&self, peer: &str) -> bool {
        self.try_status()
            .map(|s| peer_connected(&s, peer))
            .unwrap_or(false)
    }

    /// The sum of a Prometheus metric over all its label sets (0 if absent).
    pub fn metric_sum(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A comparable reading of one object (see [`read_value`]); `None` if
    /// the node did not answer.
    pub fn try_read(&self, k: &Key) -> Option<Value> {
        read_value(self, k)
    }

    pub fn read(&self, k: &Key) -> Value {
        self.try_read(k)
            .unwrap_or_else(|| panic!("{}: cannot read {k:?}", self.name))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One object's value in a form that compares equal on two nodes exactly when
/// they hold the same value: counter and flag values, a register's value or
/// `{"unset":true}`, an mvregister's values and a set's elements sorted (all
/// pages of the set).
pub fn read_value(node: &Node, k: &Key) -> Option<Value> {
    let path = k.path();
    match k.ty {
        "set" => {
            let mut elements = Vec::new();
            let mut after: Option<Value> = None;
            loop {
                let p = match &after {
                    None => format!("{path}?limit=10000"),
                    Some(Value::String(a)) => format!("{path}?limit=10000&after={}", percent(a)),
                    Some(a) => format!("{path}?limit=10000&after={}", percent(&a.to_string())),
                };
                let r = node.try_req("GET", &p, &[], None).ok()?;
                if r.status != 200 {
                    return None;
                }
                let v: Value = serde_json::from_slice(&r.body).ok()?;
                elements.extend(v["elements"].as_array()?.iter().cloned());
                match &v["next"] {
                    Value::Null => break,
                    n => after = Some(n.clone()),
                }
            }
            elements.sort_by_key(|e| e.to_string());
            Some(Value::Array(elements))
        }
        "register" => {
            let r = node.try_req("GET", &path, &[], None).ok()?;
            match r.status {
                200 => Some(serde_json::from_slice::<Value>(&r.body).ok()?["value"].clone()),
                404 => Some(json!({"unset": true})),
                _ => None,
            }
        }
        "mvregister" => {
            let r = node.try_req("GET", &path, &[], None).ok()?;
            if r.status != 200 {
                return None;
            }
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            let mut values = v["values"].as_array()?.clone();
            values.sort_by_key(|e| e.to_string());
            Some(Value::Array(values))
        }
        _ => {
            let r = node.try_req("GET", &path, &[], None).ok()?;
            if r.status != 200 {
                return None;
            }
            Some(serde_json::from_slice::<Value>(&r.body).ok()?["value"].clone())
        }
    }
}

/// Percent-encode everything but unreserved characters (for query values).
pub fn percent(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Spawn `dotkv serve --config`, its stderr appended to `log`; wait for its
/// "listening" line.
fn spawn_logged(config: &Path, log: &Path) -> (Child, SocketAddr) {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open node log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dotkv"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
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
    match rx.recv_timeout(DEADLINE) {
        Ok(addr) => (child, addr.parse().expect("socket address")),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dotkv ({}) did not report its address within {DEADLINE:?}; log:\n{}",
                config.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// A small deterministic random generator (SplitMix64), so a failing run can
/// be repeated from its printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A seed from the clock, printed so a failure can be replayed with
/// `DOTKV_TEST_SEED`.
pub fn seed() -> u64 {
    let seed = std::env::var("DOTKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("seed: {seed} (DOTKV_TEST_SEED={seed} to repeat)");
    seed
}
