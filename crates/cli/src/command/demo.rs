//! `dotkv demo`: a whole geo-replicated cluster on one machine, for trying
//! dotkv out (in the spirit of `cockroach demo`).
//!
//! It starts N datacenters of M real `dotkv serve` processes (this same
//! executable) on 127.0.0.1, makes their certificates and config files, and
//! puts the WAN between datacenters into user-space UDP relays
//! (`dotkv-netsim`) that run inside the demo process and delay every datagram
//! by `--wan-delay-ms` in each direction. Nodes of one datacenter talk
//! directly. It runs until SIGINT or SIGTERM, then stops everything it
//! started.
//!
//! # Ports
//!
//! Everything listens on 127.0.0.1, on ports counted from `--base-port` P.
//! Nodes are numbered k = 0, 1, ... in the order dc1-n1, dc1-n2, ...,
//! dc2-n1, ...; with N datacenters of M nodes:
//!
//! - node k: HTTP on P + 2k, QUIC on P + 2k + 1;
//! - relays after the nodes: the j-th other datacenter (in order, skipping the
//!   node's own) reaches node k through the relay on P + 2NM + k(N-1) + j.
//!
//! So the demo uses the NM(N+1) ports P ..= P + NM(N+1) - 1 (24 for 3 × 2);
//! they are checked to be free before anything starts.
//!
//! # Files
//!
//! In the data directory (`--data-dir`, else a temporary one deleted at exit):
//! `certs/` (the cluster CA and one certificate per node), and per node
//! `NAME.toml` (its config, rewritten at every start), `NAME/` (its data) and
//! `NAME.log` (its stderr, appended to). A kept directory is reused by the
//! next demo: same CA, same certificates, same data.
//!
//! # Output
//!
//! When every node is up: one line per node on stdout, `DATACENTER NODE URL`
//! separated by tabs, or with `--json` a single line holding a JSON array of
//! `{"dc","node","http"}` objects. Everything else goes to stderr.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use clap::Args;
use dotkv_netsim::{spawn_relay, LinkConditions, RelayHandle};
use dotkv_node::Config;
use dotkv_replication::tls::CA_CERT_FILE;
use dotkv_replication::{init_ca, issue_node_cert};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use super::{stderr_line, stdout_line};

/// The first port when `--base-port` is not given: far from the single-node
/// defaults (7700, 7701) and from the example cluster in `config/cluster/`.
pub const DEFAULT_BASE_PORT: u16 = 27700;
/// Most datacenters, nodes per datacenter and nodes in all. Every node is a
/// process with its own RocksDB; beyond this a laptop mostly swaps.
pub const MAX_DATACENTERS: u16 = 16;
pub const MAX_NODES_PER_DC: u16 = 16;
pub const MAX_NODES: usize = 64;
/// Longest one-way WAN delay accepted. Earth's longest fibre paths are about
/// 150 ms one way; ten seconds leaves room for experiments and stays well
/// inside the relay's own limit.
pub const MAX_WAN_DELAY_MS: u64 = 10_000;

/// What a node prints on stdout once its HTTP listener is bound.
const READY_PREFIX: &str = "dotkv: listening on http://";
/// How long the nodes have, together, to print their ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node has to stop after SIGTERM before it gets SIGKILL. Its own
/// HTTP drain is set shorter (`NODE_SHUTDOWN_GRACE_MS`), so a healthy node
/// never reaches it.
const TERM_GRACE: Duration = Duration::from_secs(10);
const NODE_SHUTDOWN_GRACE_MS: i64 = 3_000;
/// How long to wait for a killed process to be reaped, or a relay to stop.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 15;

/// Flags of `dotkv demo`. With `--json` (a global flag) the node list is
/// printed as one JSON array.
#[derive(Debug, Args)]
#[command(next_help_heading = "Demo options")]
pub struct DemoArgs {
    /// Number of datacenters (dc1, dc2, ...).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_DATACENTERS)))]
    pub datacenters: u16,

    /// Nodes in each datacenter (dc1-n1, dc1-n2, ...).
    #[arg(long, value_name = "M", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_NODES_PER_DC)))]
    pub nodes_per_dc: u16,

    /// One-way delay between datacenters, in milliseconds (each direction).
    #[arg(long, value_name = "MS", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WAN_DELAY_MS))]
    pub wan_delay_ms: u64,

    /// First port of the range the demo uses: node k gets HTTP on
    /// BASE + 2k and QUIC on BASE + 2k + 1, relays follow.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_BASE_PORT,
          value_parser = clap::value_parser!(u16).range(1024..))]
    pub base_port: u16,

    /// Keep certificates, configs, data and logs here, and reuse what an
    /// earlier demo left. Without it: a temporary directory, deleted at exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Why the demo could not run.
#[derive(Debug)]
enum DemoError {
    /// Bad flags: exit code 2.
    Usage(String),
    /// Anything else: exit code 1.
    Failed(String),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Usage(m) | DemoError::Failed(m) => f.write_str(m),
        }
    }
}

/// Runs the demo until SIGINT or SIGTERM: 0 after a clean stop, 1 when the
/// cluster could not start (or every node died), 2 for unusable flags.
pub fn run(args: DemoArgs, json: bool) -> ExitCode {
    let result = Plan::new(args.datacenters, args.nodes_per_dc, args.base_port).and_then(|plan| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("dotkv-demo")
            .build()
            .map_err(|e| DemoError::Failed(format!("cannot start the async runtime: {e}")))?;
        // The demo's own future runs on this (the main) thread, so children
        // are forked by a thread that lives as long as the process; that is
        // what their parent-death signal is tied to.
        runtime.block_on(demo(&args, &plan, json))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ DemoError::Usage(_)) => {
            stderr_line(&format!("error: {e}"));
            ExitCode::from(2)
        }
        Err(e @ DemoError::Failed(_)) => {
            stderr_line(&format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}

/// One node of the plan.
#[derive(Clone, Debug, PartialEq)]
struct PlannedNode {
    name: String,
    /// Index of its datacenter, 0-based (`dc1` is 0).
    dc: usize,
    http: SocketAddr,
    quic: SocketAddr,
}

impl PlannedNode {
    fn datacenter(&self) -> String {
        dc_name(self.dc)
    }
}

/// A relay in front of node `node`, for the nodes of datacenter `for_dc`.
#[derive(Clone, Debug, PartialEq)]
struct PlannedRelay {
    listen: SocketAddr,
    node: usize,
    for_dc: usize,
}

/// The whole topology and its ports, decided before anything starts.
#[derive(Debug)]
struct Plan {
    datacenters: usize,
    nodes: Vec<PlannedNode>,
    relays: Vec<PlannedRelay>,
    first_port: u16,
    last_port: u16,
}

fn dc_name(dc: usize) -> String {
    format!("dc{}", dc + 1)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Plan {
    fn new(datacenters: u16, per_dc: u16, base: u16) -> Result<Plan, DemoError> {
        let (n, m) = (usize::from(datacenters), usize::from(per_dc));
        if n == 0 || m == 0 {
            return Err(DemoError::Usage(
                "--datacenters and --nodes-per-dc must be at least 1".into(),
            ));
        }
        let total = n * m;
        if total > MAX_NODES {
            return Err(DemoError::Usage(format!(
                "{n} datacenters of {m} nodes is {total} nodes; the demo runs at most {MAX_NODES}"
            )));
        }
        let ports = total * (n + 1);
        let last = usize::from(base) + ports - 1;
        let last_port = u16::try_from(last).map_err(|_| {
            DemoError::Usage(format!(
                "--base-port {base} is too high: {total} nodes in {n} datacenters need \
                 {ports} ports ({base}..={last}), beyond 65535"
            ))
        })?;
        let port = |offset: usize| base + offset as u16;
        let nodes: Vec<PlannedNode> = (0..total)
            .map(|k| PlannedNode {
                name: format!("dc{}-n{}", k / m + 1, k % m + 1),
                dc: k / m,
                http: loopback(port(2 * k)),
                quic: loopback(port(2 * k + 1)),
            })
            .collect();
        let mut relays = Vec::with_capacity(total * (n - 1));
        for (k, node) in nodes.iter().enumerate() {
            let others = (0..n).filter(|&d| d != node.dc);
            for (j, for_dc) in others.enumerate() {
                relays.push(PlannedRelay {
                    listen: loopback(port(2 * total + k * (n - 1) + j)),
                    node: k,
                    for_dc,
                });
            }
        }
        Ok(Plan {
            datacenters: n,
            nodes,
            relays,
            first_port: base,
            last_port,
        })
    }

    /// Where node `from` reaches node `to`: directly within a datacenter,
    /// else through the relay in front of `to` for `from`'s datacenter.
    fn peer_address(&self, from: usize, to: usize) -> SocketAddr {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        if a.dc == b.dc {
            return b.quic;
        }
        self.relays
            .iter()
            .find(|r| r.node == to && r.for_dc == a.dc)
            .map(|r| r.listen)
            .unwrap_or(b.quic)
    }

    /// Fails, naming the port and what it was for, if any port of the plan
    /// is taken. (Another process may still take one before we bind it;
    /// then the node or relay fails to start and says so.)
    fn check_ports_free(&self) -> Result<(), DemoError> {
        let taken = |port: u16, what: String, e: std::io::Error| {
            DemoError::Failed(format!(
                "port {port} ({what}) is not free: {e}. The demo needs ports {}..={}; \
                 pick another range with --base-port",
                self.first_port, self.last_port
            ))
        };
        for node in &self.nodes {
            TcpListener::bind(node.http)
                .map_err(|e| taken(node.http.port(), format!("HTTP of {}", node.name), e))?;
            UdpSocket::bind(node.quic)
                .map_err(|e| taken(node.quic.port(), format!("QUIC of {}", node.name), e))?;
        }
        for relay in &self.relays {
            UdpSocket::bind(relay.listen).map_err(|e| {
                let what = format!(
                    "relay from {} to {}",
                    dc_name(relay.for_dc),
                    self.nodes[relay.node].name
                );
                taken(relay.listen.port(), what, e)
            })?;
        }
        Ok(())
    }

    /// The config file of node `k`, as a TOML table.
    fn node_config(&self, k: usize, dir: &Path, certs: &Path) -> Result<toml::Table, DemoError> {
        use toml::Value;
        let node = &self.nodes[k];
        let path = |p: PathBuf| -> Result<Value, DemoError> {
            p.to_str()
                .map(|s| Value::String(s.to_owned()))
                .ok_or_else(|| DemoError::Failed(format!("{} is not valid UTF-8", p.display())))
        };
        let s = |text: String| Value::String(text);
        let table = |pairs: Vec<(&str, Value)>| -> Value {
            Value::Table(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        };
        let peers = (0..self.nodes.len())
            .filter(|&other| other != k)
            .map(|other| {
                let peer = &self.nodes[other];
                table(vec![
                    ("name", s(peer.name.clone())),
                    ("datacenter", s(peer.datacenter())),
                    ("address", s(self.peer_address(k, other).to_string())),
                ])
            })
            .collect();
        let mut config = toml::Table::new();
        config.insert(
            "node".into(),
            table(vec![
                ("name", s(node.name.clone())),
                ("datacenter", s(node.datacenter())),
                ("data_dir", path(dir.join(&node.name))?),
            ]),
        );
        config.insert(
            "http".into(),
            table(vec![
                ("listen", s(node.http.to_string())),
                ("shutdown_grace_ms", Value::Integer(NODE_SHUTDOWN_GRACE_MS)),
            ]),
        );
        config.insert(
            "quic".into(),
            table(vec![
                ("listen", s(node.quic.to_string())),
                ("ca", path(certs.join(CA_CERT_FILE))?),
                ("cert", path(certs.join(format!("{}.pem", node.name)))?),
                ("key", path(certs.join(format!("{}.key", node.name)))?),
            ]),
        );
        config.insert("peers".into(), Value::Array(peers));
        Ok(config)
    }
}

/// Levels of stopping, in order; a supervisor only ever moves up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Run,
    Term,
    Kill,
}

/// A node that exited while it was meant to be running.
struct NodeExit {
    index: usize,
    status: std::io::Result<ExitStatus>,
}

/// What the demo started, so it can all be stopped on every path out.
struct Cluster {
    relays: Vec<RelayHandle>,
    supervisors: JoinSet<()>,
    stop: watch::Sender<Stop>,
    /// Supervisors report nodes that exit on their own here.
    exits: mpsc::UnboundedSender<NodeExit>,
    exit_events: mpsc::UnboundedReceiver<NodeExit>,
}

/// SIGINT and SIGTERM, registered before anything starts.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals, DemoError> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| DemoError::Failed(format!("cannot listen for {name}: {e}")))
        };
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
            terminate: listen(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

async fn demo(args: &DemoArgs, plan: &Plan, json: bool) -> Result<(), DemoError> {
    let mut signals = Signals::new()?;
    let (dir, temp) = prepare_dir(args.data_dir.as_deref())?;
    plan.check_ports_free()?;
    let certs = dir.join("certs");
    ensure_certs(&certs, plan)?;
    let mut configs = Vec::with_capacity(plan.nodes.len());
    for k in 0..plan.nodes.len() {
        configs.push(write_config(plan, k, &dir, &certs)?);
    }

    let (stop, _) = watch::channel(Stop::Run);
    let (exits, exit_events) = mpsc::unbounded_channel();
    let mut cluster = Cluster {
        relays: Vec::new(),
        supervisors: JoinSet::new(),
        stop,
        exits,
        exit_events,
    };
    let started = run_cluster(&mut cluster, &mut signals, args, plan, &dir, &configs, json);
    let result = started.await;
    cluster.shutdown(&mut signals, plan.nodes.len()).await;
    match temp {
        Some(temp) => {
            if let Err(e) = temp.close() {
                stderr_line(&format!("demo: cannot remove {}: {e}", dir.display()));
            }
        }
        None => stderr_line(&format!("demo: data kept in {}", dir.display())),
    }
    stderr_line("demo: stopped");
    result
}

/// Starts relays and nodes, prints the node list, and waits for a signal.
/// Whatever it started is in `cluster`, which the caller stops.
async fn run_cluster(
    cluster: &mut Cluster,
    signals: &mut Signals,
    args: &DemoArgs,
    plan: &Plan,
    dir: &Path,
    configs: &[PathBuf],
    json: bool,
) -> Result<(), DemoError> {
    for (i, relay) in plan.relays.iter().enumerate() {
        let upstream = plan.nodes[relay.node].quic;
        let conditions = LinkConditions::delay(args.wan_delay_ms);
        let (_, handle) = spawn_relay(relay.listen, upstream, conditions, i as u64)
            .await
            .map_err(|e| {
                DemoError::Failed(format!(
                    "cannot start the relay on {} (to {}): {e}",
                    relay.listen, plan.nodes[relay.node].name
                ))
            })?;
        cluster.relays.push(handle);
    }

    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Failed(format!("cannot find the dotkv executable: {e}")))?;
    let mut ready = Vec::with_capacity(plan.nodes.len());
    for (k, node) in plan.nodes.iter().enumerate() {
        let log = log_path(dir, &node.name);
        let (child, stdout) = spawn_node(&exe, &configs[k], &log)
            .map_err(|e| DemoError::Failed(format!("cannot start node {}: {e}", node.name)))?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(watch_stdout(stdout, tx));
        cluster.supervisors.spawn(supervise(
            k,
            node.name.clone(),
            child,
            cluster.stop.subscribe(),
            cluster.exits.clone(),
        ));
        ready.push(rx);
    }

    let deadline = Instant::now() + READY_TIMEOUT;
    let mut urls = Vec::with_capacity(plan.nodes.len());
    for (node, rx) in plan.nodes.iter().zip(ready) {
        let log = log_path(dir, &node.name);
        let addr = tokio::select! {
            name = signals.recv() => {
                stderr_line(&format!("demo: {name} before every node was up; stopping"));
                return Ok(());
            }
            addr = timeout_at(deadline, rx) => match addr {
                Ok(Ok(addr)) => addr,
                Ok(Err(_)) => {
                    return Err(DemoError::Failed(format!(
                        "node {} exited before it was ready{}",
                        node.name,
                        log_tail(&log)
                    )))
                }
                Err(_) => {
                    return Err(DemoError::Failed(format!(
                        "node {} was not ready within {} s{}",
                        node.name,
                        READY_TIMEOUT.as_secs(),
                        log_tail(&log)
                    )))
                }
            },
        };
        urls.push(format!("http://{addr}"));
    }

    print_nodes(plan, &urls, json);
    let total = plan.nodes.len();
    stderr_line(&format!(
        "demo: {total} node{} in {} datacenter{} are up; one-way delay between datacenters {} ms",
        plural(total),
        plan.datacenters,
        plural(plan.datacenters),
        args.wan_delay_ms
    ));
    let kept = if args.data_dir.is_some() {
        "kept"
    } else {
        "deleted at exit"
    };
    stderr_line(&format!(
        "demo: data directory {} ({kept}); node logs are NAME.log in it",
        dir.display()
    ));
    stderr_line(&format!(
        "demo: try `dotkv --url {} counter add visits 1`; Ctrl-C stops the cluster",
        urls[0]
    ));

    let mut alive = total;
    loop {
        tokio::select! {
            name = signals.recv() => {
                stderr_line(&format!("demo: {name}: stopping the cluster"));
                return Ok(());
            }
            Some(exit) = cluster.exit_events.recv() => {
                let node = &plan.nodes[exit.index];
                let status = match exit.status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                stderr_line(&format!(
                    "demo: node {} ({}) exited on its own ({status}); its log: {}",
                    node.name,
                    urls[exit.index],
                    log_path(dir, &node.name).display()
                ));
                stderr_line(&format!(
                    "demo: to start it again (it catches up with the others): {} serve --config {} (stop it yourself; the demo stops only the nodes it started)",
                    std::env::current_exe()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "dotkv".into()),
                    configs[exit.index].display()
                ));
                alive -= 1;
                if alive == 0 {
                    return Err(DemoError::Failed("every node has exited".into()));
                }
            }
        }
    }
}

impl Cluster {
    /// SIGTERM to every node, SIGKILL to those still there after
    /// [`TERM_GRACE`] (or at once on a second signal), then the relays.
    async fn shutdown(&mut self, signals: &mut Signals, nodes: usize) {
        if !self.supervisors.is_empty() {
            stderr_line(&format!("demo: stopping {nodes} node{}", plural(nodes)));
        }
        self.stop.send_replace(Stop::Term);
        let supervisors = &mut self.supervisors;
        tokio::select! {
            _ = async { while supervisors.join_next().await.is_some() {} } => {}
            name = signals.recv() => {
                stderr_line(&format!("demo: {name} again: killing the nodes"));
                self.stop.send_replace(Stop::Kill);
            }
        }
        while self.supervisors.join_next().await.is_some() {}
        for relay in self.relays.drain(..) {
            if timeout(KILL_WAIT, relay.shutdown()).await.is_err() {
                stderr_line(&format!(
                    "demo: the relay on {} did not stop in time",
                    relay.local_addr()
                ));
            }
        }
    }
}

/// Owns one node process: reports it if it exits on its own, stops it when
/// told (SIGTERM, then SIGKILL). Every wait is bounded.
async fn supervise(
    index: usize,
    name: String,
    mut child: Child,
    mut stop: watch::Receiver<Stop>,
    exits: mpsc::UnboundedSender<NodeExit>,
) {
    let pid = child.id();
    let level = tokio::select! {
        status = child.wait() => {
            // Nobody listens once the demo is stopping; that is fine.
            let _ = exits.send(NodeExit { index, status });
            return;
        }
        level = stop_at_least(&mut stop, Stop::Term) => level,
    };
    if level == Stop::Term {
        if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory effects. The child is not reaped
            // yet (only this task waits for it), so the pid is still its own.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        tokio::select! {
            _ = child.wait() => return,
            _ = tokio::time::sleep(TERM_GRACE) => stderr_line(&format!(
                "demo: node {name} did not stop within {} s of SIGTERM; killing it",
                TERM_GRACE.as_secs()
            )),
            _ = stop_at_least(&mut stop, Stop::Kill) => {}
        }
    }
    let _ = child.start_kill();
    if timeout(KILL_WAIT, child.wait()).await.is_err() {
        stderr_line(&format!("demo: node {name} did not exit after SIGKILL"));
    }
}

/// Waits until the stop level reaches `level`; a dropped sender means kill.
async fn stop_at_least(stop: &mut watch::Receiver<Stop>, level: Stop) -> Stop {
    loop {
        let now = *stop.borrow_and_update();
        if now >= level {
            return now;
        }
        if stop.changed().await.is_err() {
            return Stop::Kill;
        }
    }
}

/// Sends the node's HTTP address once it prints its ready line, then keeps
/// reading so the node never blocks on a full pipe. Dropping `ready` unsent
/// (end of output) means the node exited first.
async fn watch_stdout(stdout: ChildStdout, ready: oneshot::Sender<SocketAddr>) {
    let mut ready = Some(ready);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let addr = line
            .strip_prefix(READY_PREFIX)
            .and_then(|rest| rest.trim().parse().ok());
        if let (Some(addr), Some(tx)) = (addr, ready.take()) {
            let _ = tx.send(addr);
        }
    }
}

/// Starts `dotkv serve --config CONFIG` with stdout piped and stderr appended
/// to `log`. The node gets its own process group, so a Ctrl-C in the
/// terminal reaches only the demo, which then stops the nodes in order; and
/// on Linux it gets SIGTERM if the demo dies without cleaning up.
fn spawn_node(exe: &Path, config: &Path, log: &Path) -> std::io::Result<(Child, ChildStdout)> {
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true)
        // The log is a file: no terminal colour codes in it.
        .env("NO_COLOR", "1");
    // The generated config must win over the demo's own environment.
    for (var, _) in std::env::vars_os() {
        let Some(var) = var.to_str() else { continue };
        let ours = ["DOTKV_NODE_", "DOTKV_HTTP_LISTEN", "DOTKV_QUIC_"]
            .iter()
            .any(|prefix| var.starts_with(prefix));
        if ours || var == "DOTKV_CONFIG" {
            command.env_remove(var);
        }
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the closure runs in the forked child before exec and makes
        // only async-signal-safe system calls (prctl, getppid).
        let parent = std::process::id();
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The demo died between fork and prctl: do not outlive it.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the demo exited"));
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("stdout is not piped"))?;
    Ok((child, stdout))
}

/// The data directory: `given` (created if missing, made absolute, kept), or
/// a fresh temporary one (returned too, so the caller removes it).
fn prepare_dir(given: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>), DemoError> {
    match given {
        Some(dir) => {
            fs::create_dir_all(dir)
                .map_err(|e| DemoError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let dir = fs::canonicalize(dir)
                .map_err(|e| DemoError::Failed(format!("cannot resolve {}: {e}", dir.display())))?;
            Ok((dir, None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("dotkv-demo-")
                .tempdir()
                .map_err(|e| {
                    DemoError::Failed(format!("cannot create a temporary directory: {e}"))
                })?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// Makes the CA and each node's certificate unless they already exist.
fn ensure_certs(certs: &Path, plan: &Plan) -> Result<(), DemoError> {
    let failed = |e: dotkv_replication::TlsError| {
        DemoError::Failed(format!("certificates in {}: {e}", certs.display()))
    };
    if !certs.join(CA_CERT_FILE).exists() {
        init_ca(certs).map_err(failed)?;
    }
    for node in &plan.nodes {
        let cert = certs.join(format!("{}.pem", node.name));
        let key = certs.join(format!("{}.key", node.name));
        if !(cert.exists() && key.exists()) {
            issue_node_cert(certs, &node.name, &[], certs).map_err(failed)?;
        }
    }
    Ok(())
}

/// Writes node `k`'s config to DIR/NAME.toml and checks that the node will
/// accept it.
fn write_config(plan: &Plan, k: usize, dir: &Path, certs: &Path) -> Result<PathBuf, DemoError> {
    let name = &plan.nodes[k].name;
    let table = plan.node_config(k, dir, certs)?;
    let body = toml::to_string(&table)
        .map_err(|e| DemoError::Failed(format!("cannot write the config of {name}: {e}")))?;
    let text =
        format!("# Written by `dotkv demo` for node {name}; rewritten at every start.\n\n{body}");
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, text)
        .map_err(|e| DemoError::Failed(format!("cannot write {}: {e}", path.display())))?;
    Config::load_with_env(Some(&path), Vec::new())
        .map_err(|e| DemoError::Failed(format!("the generated config is not usable: {e}")))?;
    Ok(path)
}

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// The last lines of a node's log, indented, for an error message.
fn log_tail(log: &Path) -> String {
    let Ok(text) = fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        return format!("; its log {} is empty", log.display());
    }
    format!(
        "; the end of its log {}:\n  {}",
        log.display(),
        tail.join("\n  ")
    )
}

#[derive(Serialize)]
struct NodeLine<'a> {
    dc: String,
    node: &'a str,
    http: &'a str,
}

fn print_nodes(plan: &Plan, urls: &[String], json: bool) {
    let lines: Vec<NodeLine<'_>> = plan
        .nodes
        .iter()
        .zip(urls)
        .map(|(node, url)| NodeLine {
            dc: node.datacenter(),
            node: &node.name,
            http: url,
        })
        .collect();
    if json {
        match serde_json::to_string(&lines) {
            Ok(text) => stdout_line(&text),
            Err(e) => stderr_line(&format!("error: cannot print the nodes as JSON: {e}")),
        }
    } else {
        for line in &lines {
            stdout_line(&format!("{}\t{}\t{}", line.dc, line.node, line.http));
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeSet;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: DemoArgs,
    }

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("demo").chain(args.iter().copied())).map(|w| w.args)
    }

    #[test]
    fn flags_are_bounded() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.datacenters, a.nodes_per_dc, a.wan_delay_ms, a.base_port),
            (3, 1, 40, DEFAULT_BASE_PORT)
        );
        for bad in [
            &["--datacenters", "0"][..],
            &["--datacenters", "17"],
            &["--nodes-per-dc", "0"],
            &["--nodes-per-dc", "-1"],
            &["--wan-delay-ms", "10001"],
            &["--wan-delay-ms", "-5"],
            &["--base-port", "80"],
            &["--base-port", "70000"],
            &["--datacenters", "x"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn port_scheme() {
        let plan = Plan::new(3, 2, 30000).unwrap();
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["dc1-n1", "dc1-n2", "dc2-n1", "dc2-n2", "dc3-n1", "dc3-n2"]
        );
        assert_eq!(plan.nodes[2].datacenter(), "dc2");
        assert_eq!(plan.nodes[3].http, loopback(30006));
        assert_eq!(plan.nodes[3].quic, loopback(30007));
        // 6 nodes × 2 ports, then 6 nodes × 2 other datacenters.
        assert_eq!(plan.relays.len(), 12);
        assert_eq!((plan.first_port, plan.last_port), (30000, 30023));
        let mut ports = BTreeSet::new();
        for n in &plan.nodes {
            assert!(ports.insert(n.http.port()) && ports.insert(n.quic.port()));
        }
        for r in &plan.relays {
            assert!(ports.insert(r.listen.port()));
            assert_ne!(plan.nodes[r.node].dc, r.for_dc);
        }
        assert_eq!(ports.len(), 24);
        assert_eq!(*ports.last().unwrap(), plan.last_port);
        // dc1-n1 reaches dc1-n2 directly and dc2-n2 (k = 3) through the relay
        // for dc1 in front of it: P + 12 + 3·2 + 0.
        assert_eq!(plan.peer_address(0, 1), plan.nodes[1].quic);
        assert_eq!(plan.peer_address(0, 3), loopback(30018));
        // dc3-n1 reaches it through its second relay (for dc3).
        assert_eq!(plan.peer_address(4, 3), loopback(30019));
        // One datacenter: no relays.
        let single = Plan::new(1, 3, 30000).unwrap();
        assert!(single.relays.is_empty());
        assert_eq!(single.last_port, 30005);
    }

    #[test]
    fn plans_that_do_not_fit_are_usage_errors() {
        assert!(matches!(Plan::new(16, 16, 30000), Err(DemoError::Usage(_))));
        assert!(matches!(Plan::new(3, 2, 65530), Err(DemoError::Usage(_))));
        assert!(Plan::new(3, 2, 65512).is_ok());
        assert!(matches!(Plan::new(0, 1, 30000), Err(DemoError::Usage(_))));
    }

    #[test]
    fn generated_configs_are_full_meshes_that_parse() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(2, 2, 31000).unwrap();
        let certs = dir.path().join("certs");
        for k in 0..plan.nodes.len() {
            let path = write_config(&plan, k, dir.path(), &certs).unwrap();
            let cfg = Config::load_with_env(Some(&path), Vec::new()).unwrap();
            assert_eq!(cfg.node.name, plan.nodes[k].name);
            assert_eq!(cfg.http.listen, plan.nodes[k].http);
            assert_eq!(cfg.quic.listen, plan.nodes[k].quic);
            assert_eq!(cfg.node.data_dir, dir.path().join(&plan.nodes[k].name));
            assert_eq!(cfg.peers.len(), 3);
            for peer in &cfg.peers {
                let to = plan.nodes.iter().position(|n| n.name == peer.name).unwrap();
                assert_eq!(peer.datacenter, plan.nodes[to].datacenter());
                assert_eq!(peer.address, plan.peer_address(k, to).to_string());
            }
        }
    }

    #[test]
    fn certs_are_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(1, 2, 31000).unwrap();
        let certs = dir.path().join("certs");
        ensure_certs(&certs, &plan).unwrap();
        let ca = fs::read(certs.join(CA_CERT_FILE)).unwrap();
        let node = fs::read(certs.join("dc1-n2.pem")).unwrap();
        let bigger = Plan::new(1, 3, 31000).unwrap();
        ensure_certs(&certs, &bigger).unwrap();
        assert_eq!(fs::read(certs.join(CA_CERT_FILE)).unwrap(), ca);
        assert_eq!(fs::read(certs.join("dc1-n2.pem")).unwrap(), node);
        assert!(certs.join("dc1-n3.key").exists());
    }
}
