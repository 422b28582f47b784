//! `dotkv-bench replication`: two dotkv nodes in two datacenters, each
//! reaching the other through a UDP relay in this process that adds the WAN
//! delay, measured in one run:
//!
//! 1. **Lag.** Open-loop HTTP counter adds at dc1-n1 (`--rate`, default
//!    5,000/s), once per relay delay (`--delays`, default 0 and 50 ms one
//!    way). The lag is dc2-n1's own histogram of it
//!    (`dotkv_replication_apply_lag_ms`: from a group's commit at its origin
//!    to its commit at dc2-n1), scraped before and after the measured window.
//!    Target: p99 ≤ one-way delay + 10 ms.
//! 2. **Bytes per update**, in the same windows: the relays' UDP payload bytes
//!    in both directions (QUIC and TLS overhead, acknowledgements of both
//!    layers, pings: everything the nodes exchange) over the updates
//!    committed at dc1-n1, next to the peer-protocol frame bytes the nodes
//!    count (`dotkv_replication_bytes_sent_total`) and the update's logical
//!    size (a 16-byte key and an 8-byte amount). Target: ≤ 1.5 × logical +
//!    64 B.
//! 3. **Catch-up after a partition.** The relays drop everything while both
//!    nodes take writes (counter adds, register puts and set adds) for
//!    `--partition-secs`; after the heal, the relays' bytes until both
//!    version vectors are equal are compared with the divergent deltas: the
//!    delta groups written during the partition, as the delta logs store
//!    them. Target: ≤ 1.2×, and no anti-entropy run (no state transfer).
//!
//! The delta logs are read by opening the nodes' stores, which RocksDB allows
//! only while the node is stopped; so both nodes are stopped at the end of
//! the partition and started again on the same data before the heal. That
//! changes nothing in the catch-up: a partition longer than the QUIC idle
//! timeout (5 s) has closed their connections anyway, so in both cases each
//! side dials the other on heal, learns what it has applied, and streams
//! what it lacks.
//!
//! Nodes are child processes ([`Server`]): stopped at the end, killed on any
//! error or interruption. Every wait has a deadline.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use dotkv_crdt::ReplicaId;
use dotkv_netsim::{spawn_relay, Direction, LinkConditions, RelayHandle, RelayStats};
use dotkv_replication::protocol::{PeerMsg, WireBatch};
use dotkv_storage::{DeltaGroup, Store, StoreOptions};
use serde::Serialize;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

use crate::command::run::warn_about;
use crate::generator::{self, LoadConfig};
use crate::process::{Server, Spawn};
use crate::stats::{self, fmt_us, Report, Table};
use crate::target::{HttpTarget, Target};
use crate::workload::{Op, OpStream, Workload};

/// The two nodes: name and datacenter. Index 0 takes the writes of the lag
/// cases; index 1 measures the lag.
const NODES: [(&str, &str); 2] = [("dc1-n1", "dc1"), ("dc2-n1", "dc2")];
/// Keys are `bench-` and ten digits: 16 bytes. Each type has its own range,
/// so a key never names objects of two types.
const KEY_BYTES: u64 = 16;
const COUNTER_BASE: u64 = 1_000_000_000;
const REGISTER_BASE: u64 = 2_000_000_000;
const SET_BASE: u64 = 3_000_000_000;
/// The value part of every update: a counter amount (an `i64`), an 8-byte
/// register value, an 8-byte set element.
const VALUE_BYTES: u64 = 8;
const LOGICAL_BYTES: u64 = KEY_BYTES + VALUE_BYTES;
/// Lag target: p99 at most the one-way delay plus this.
const LAG_SLACK_MS: f64 = 10.0;
/// Wire target: at most this times the logical size, plus `WIRE_EXTRA`.
const WIRE_FACTOR: f64 = 1.5;
const WIRE_EXTRA: f64 = 64.0;
/// Catch-up target: at most this times the divergent delta-log bytes.
const CATCHUP_RATIO: f64 = 1.2;
/// Groups per frame when estimating the divergent groups' wire form (the
/// default `replication.batch_max_groups`).
const BATCH_GROUPS: usize = 512;
/// Longest wait for a node to print its address, then to be healthy.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest wait for both peer sessions to be up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for the nodes to agree after a lag case.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for one `GET` of status or metrics.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two status polls.
const POLL_EVERY: Duration = Duration::from_millis(20);
const LAG_METRIC: &str = "dotkv_replication_apply_lag_ms";
const WRITES_METRIC: &str = "dotkv_storage_write_requests_total";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dotkv binary. Default: `dotkv` next to this executable.
    #[arg(long, env = "DOTKV_BIN")]
    pub dotkv: Option<PathBuf>,
    /// Writes per second at dc1-n1 in the lag cases (open loop).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Measured seconds of each lag case.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of writes before each lag case's measured window.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// One-way relay delays of the lag cases, in ms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    pub delays: Vec<u64>,
    /// HTTP connections of each load generator.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Counters the lag cases spread over.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Seconds of partition, with writes at both nodes throughout (0: skip
    /// the partition case).
    #[arg(long, default_value_t = 60.0)]
    pub partition_secs: f64,
    /// Writes per second at each node during the partition.
    #[arg(long, default_value_t = 500.0)]
    pub partition_rate: f64,
    /// Keys of each type (counter, register, set) the partition's writes
    /// spread over.
    #[arg(long, default_value_t = 1000)]
    pub partition_keys: u64,
    /// One-way relay delay of the partition case (before and after it), in ms.
    #[arg(long, default_value_t = 50)]
    pub partition_delay_ms: u64,
    /// Longest wait for one write before it counts as an error.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the temporary directory (configs, certificates, data, node logs).
    #[arg(long)]
    pub keep: bool,
    /// Write all results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Everything one run measured, as written to `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    command: Vec<String>,
    machine: Machine,
    dotkv: String,
    settings: Settings,
    lag: Vec<LagCase>,
    partition: Option<PartitionCase>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started and ended.
    loadavg_start: String,
    loadavg_end: String,
    note: &'static str,
}

#[derive(Debug, Serialize)]
struct Settings {
    rate: f64,
    duration_secs: f64,
    warmup_secs: f64,
    delays_ms: Vec<u64>,
    connections: usize,
    keys: u64,
    partition_secs: f64,
    partition_rate_per_node: f64,
    partition_keys_per_type: u64,
    partition_delay_ms: u64,
    logical_bytes_per_update: u64,
}

/// One lag case: the writes, the lag they saw, and what they cost on the wire.
#[derive(Debug, Serialize)]
struct LagCase {
    delay_ms: u64,
    /// The writes at dc1-n1 as the client saw them (latency from each
    /// write's scheduled send, open loop).
    writes: Report,
    /// Writes committed at dc1-n1 between the two snapshots (the measured
    /// window, then the wait until dc2-n1 had them all).
    updates: u64,
    window_secs: f64,
    /// What dc2-n1's histogram counted between the snapshots.
    lag: LagPercentiles,
    lag_target_ms: f64,
    lag_met: bool,
    wire: Wire,
    frames: Frames,
    logical_bytes_per_update: f64,
    wire_bytes_per_update: f64,
    frame_bytes_per_update: f64,
    wire_target_bytes: f64,
    wire_met: bool,
    cpu: CpuUse,
    loadavg_before: String,
    loadavg_after: String,
    /// Set when dc2-n1 had not caught up within the deadline after the writes.
    not_drained: Option<String>,
}

/// Percentiles of a bucketed histogram, each the upper bound of the bucket
/// it falls in (1 ms buckets to 100 ms, 10 ms to 1 s, coarser above).
#[derive(Debug, Clone, Serialize)]
struct LagPercentiles {
    groups: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    mean_ms: Option<f64>,
}

/// UDP payload bytes the relays forwarded between two snapshots.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Wire {
    dc1_to_dc2_bytes: u64,
    dc2_to_dc1_bytes: u64,
    bytes: u64,
    packets: u64,
    /// Datagrams the relays dropped (partition, full queue).
    dropped: u64,
}

/// Peer-protocol frame bytes the nodes counted as sent, between two snapshots.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Frames {
    dc1_to_dc2: u64,
    dc2_to_dc1: u64,
}

impl Frames {
    fn total(&self) -> u64 {
        self.dc1_to_dc2 + self.dc2_to_dc1
    }
}

/// Cores used between two snapshots (1.0 = one core busy throughout).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct CpuUse {
    /// This process: load generator and relays.
    bench: Option<f64>,
    dc1: Option<f64>,
    dc2: Option<f64>,
    /// Everything else on the machine.
    other: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PartitionCase {
    delay_ms: u64,
    secs: f64,
    rate_per_node: f64,
    /// The writes at dc1-n1 and dc2-n1 during the partition.
    writes: Vec<Report>,
    /// Per node: its own delta groups written during the partition.
    divergent: Vec<Divergent>,
    divergent_groups: u64,
    /// Logical bytes of those writes (key and value of each committed write).
    logical_bytes: u64,
    /// The groups as the delta logs store them (one format byte + postcard).
    delta_log_bytes: u64,
    /// The same groups in the peer protocol's frames (`Groups` messages of
    /// up to 512 groups): the least a replay can send, before QUIC.
    wire_form_bytes: u64,
    /// From the heal until both version vectors were equal.
    catchup: Wire,
    catchup_frames: Frames,
    /// From the heal until both nodes had both peer sessions up again.
    reconnect_secs: Option<f64>,
    catchup_secs: f64,
    converged: bool,
    /// `catchup.bytes ÷ delta_log_bytes`: the target's ratio.
    ratio: f64,
    /// `catchup.bytes ÷ wire_form_bytes`: what QUIC, acknowledgements and
    /// the handshake add to the groups' own frames.
    ratio_to_wire_form: f64,
    ratio_target: f64,
    ratio_met: bool,
    /// Anti-entropy runs (both nodes, both roles) during the partition and
    /// the catch-up; any is a state transfer.
    anti_entropy_runs: f64,
    anti_entropy_bytes: f64,
    /// Groups of one side the other side held before the heal (0 if the
    /// partition was tight).
    leaked_groups: u64,
    loadavg_before: String,
    loadavg_after: String,
    not_converged: Option<String>,
}

/// One node's own delta groups written during the partition.
#[derive(Debug, Serialize)]
struct Divergent {
    node: &'static str,
    first_seq: u64,
    last_seq: u64,
    groups: u64,
    ops: u64,
    delta_log_bytes: u64,
    wire_form_bytes: u64,
    /// This node's whole state after the partition (anti-entropy rows, key
    /// and value bytes): what a full state transfer would move.
    state_rows: u64,
    state_bytes: u64,
}

pub async fn run(args: Args) -> Result<()> {
    // On Ctrl-C, return an error so the cluster drops and kills its nodes.
    tokio::select! {
        r = run_inner(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; nodes stopped"),
    }
}

async fn run_inner(args: Args) -> Result<()> {
    let results = measure(&args).await?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Run every case `args` asks for, print the report, and return the results
/// (what `--json` writes). `dotkv-bench suite` calls this too.
pub(crate) async fn measure(args: &Args) -> Result<Results> {
    check_args(args)?;
    let bin = match &args.dotkv {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("dotkv"),
    };
    if !bin.is_file() {
        bail!(
            "no dotkv binary at {} (build it with `make build`, or pass --dotkv)",
            bin.display()
        );
    }
    let (cpus, cpu_model) = machine();
    let loadavg_start = loadavg();
    eprintln!("machine: {cpus} CPUs, {cpu_model}; load average {loadavg_start}");

    let mut cluster = Cluster::create(&bin, args.delays[0]).await?;
    eprintln!("cluster in {}", cluster.dir.path().display());
    for i in 0..NODES.len() {
        cluster.start(i).await?;
    }
    wait_connected(&cluster.probe()?).await?;

    let cases = args.delays.len() + usize::from(args.partition_secs > 0.0);
    let mut lag = Vec::new();
    for (i, &delay) in args.delays.iter().enumerate() {
        eprintln!(
            "[{}/{cases}] lag at {} writes/s, one-way delay {delay} ms: {} s warm-up, {} s measured",
            i + 1,
            args.rate,
            args.warmup,
            args.duration
        );
        let case = lag_case(&cluster, args, delay).await?;
        eprintln!(
            "    {:.0} writes/s, lag p50 {} p99 {} p99.9 {}, {:.1} B on the wire per update",
            case.writes.ops_per_sec,
            fmt_ms(case.lag.p50_ms),
            fmt_ms(case.lag.p99_ms),
            fmt_ms(case.lag.p999_ms),
            case.wire_bytes_per_update
        );
        lag.push(case);
    }
    let partition = if args.partition_secs > 0.0 {
        eprintln!(
            "[{cases}/{cases}] partition of {} s, {} writes/s at each node, one-way delay {} ms",
            args.partition_secs, args.partition_rate, args.partition_delay_ms
        );
        Some(partition_case(&mut cluster, args).await?)
    } else {
        None
    };
    cluster.shutdown(args.keep).await?;
    let loadavg_end = loadavg();

    let command: Vec<String> = std::env::args().collect();
    print_report(
        &command,
        args,
        &lag,
        partition.as_ref(),
        &loadavg_start,
        &loadavg_end,
    );

    Ok(Results {
        command,
        machine: Machine {
            cpus,
            cpu_model,
            loadavg_start,
            loadavg_end,
            note: "both nodes, the load generator and the relays run on this machine and share its CPUs",
        },
        dotkv: bin.display().to_string(),
        settings: Settings {
            rate: args.rate,
            duration_secs: args.duration,
            warmup_secs: args.warmup,
            delays_ms: args.delays.clone(),
            connections: args.connections,
            keys: args.keys,
            partition_secs: args.partition_secs,
            partition_rate_per_node: args.partition_rate,
            partition_keys_per_type: args.partition_keys,
            partition_delay_ms: args.partition_delay_ms,
            logical_bytes_per_update: LOGICAL_BYTES,
        },
        lag,
        partition,
    })
}

fn check_args(args: &Args) -> Result<()> {
    let positive = |name: &str, v: f64| {
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(anyhow!("{name} must be a positive number, not {v}"))
        }
    };
    positive("--rate", args.rate)?;
    positive("--duration", args.duration)?;
    positive("--partition-rate", args.partition_rate)?;
    if !(0.0..f64::INFINITY).contains(&args.warmup) {
        bail!("--warmup must be a non-negative number of seconds");
    }
    if !(0.0..f64::INFINITY).contains(&args.partition_secs) {
        bail!("--partition-secs must be a non-negative number of seconds");
    }
    if args.delays.is_empty() {
        bail!("--delays needs at least one delay");
    }
    if args.connections == 0 || args.keys == 0 || args.partition_keys == 0 {
        bail!("--connections, --keys and --partition-keys must be at least 1");
    }
    if args.keys > 1_000_000_000 || args.partition_keys > 1_000_000_000 {
        bail!("at most 1,000,000,000 keys (key names have ten digits)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The cluster.

/// Two nodes and the two relays between them, in a temporary directory.
struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// `relays[i]` sits in front of node `i`: the other node dials it.
    relays: Vec<RelayHandle>,
    /// Declared last, so it is removed only after the nodes are gone.
    dir: tempfile::TempDir,
}

struct Node {
    name: &'static str,
    config: PathBuf,
    data: PathBuf,
    starts: u32,
    server: Option<Server>,
}

/// What the measurements read, cloneable into tasks.
#[derive(Clone)]
struct Probe {
    http: Vec<HttpTarget>,
    pids: Vec<u32>,
    relays: Vec<RelayHandle>,
}

impl Cluster {
    /// Certificates, relays (`delay_ms` one way) and configs; no node runs yet.
    async fn create(bin: &Path, delay_ms: u64) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("dotkv-bench-repl-")
            .tempdir()
            .context("creating a temporary directory")?;
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs)?;
        let ca = dotkv_replication::init_ca(&certs).context("making the cluster CA")?;
        let quic = free_udp_addrs::<2>()?;
        let mut relays = Vec::new();
        for (i, &upstream) in quic.iter().enumerate() {
            let (_, handle) = spawn_relay(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                upstream,
                LinkConditions::delay(delay_ms),
                i as u64 + 1,
            )
            .await
            .with_context(|| format!("starting the relay in front of {}", NODES[i].0))?;
            relays.push(handle);
        }
        let mut nodes = Vec::new();
        for (i, &(name, dc)) in NODES.iter().enumerate() {
            let files = dotkv_replication::issue_node_cert(&certs, name, &[], &certs)
                .with_context(|| format!("making the certificate of {name}"))?;
            let other = 1 - i;
            let data = dir.path().join(name);
            let text = format!(
                "[node]\nname = {name:?}\ndatacenter = {dc:?}\ndata_dir = {data:?}\n\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n\n[log]\nlevel = \"warn\"\n\n\
                 [quic]\nlisten = \"{quic}\"\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
                 [[peers]]\nname = {pname:?}\ndatacenter = {pdc:?}\naddress = \"{paddr}\"\n",
                data = data.display().to_string(),
                quic = quic[i],
                ca = ca.cert.display().to_string(),
                cert = files.cert.display().to_string(),
                key = files.key.display().to_string(),
                pname = NODES[other].0,
                pdc = NODES[other].1,
                paddr = relays[other].local_addr(),
            );
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            nodes.push(Node {
                name,
                config,
                data,
                starts: 0,
                server: None,
            });
        }
        Ok(Cluster {
            bin: bin.to_owned(),
            nodes,
            relays,
            dir,
        })
    }

    /// Start node `i` (its log goes to `NAME-N.log`, N counting its starts)
    /// and wait until it is healthy.
    async fn start(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("{}-{}.log", node.name, node.starts));
        let server = Server::start(Spawn {
            name: node.name,
            program: &self.bin,
            args: vec![
                OsString::from("serve"),
                OsString::from("--config"),
                node.config.clone().into_os_string(),
            ],
            ready_prefix: "dotkv: listening on http://",
            ready_within: STARTUP_DEADLINE,
            known_addr: None,
            log: Some(log),
        })
        .await?;
        let target = HttpTarget::new(server.addr);
        node.server = Some(server);
        let target = &target;
        wait_for(
            &format!("{} healthy", node.name),
            STARTUP_DEADLINE,
            move || async move {
                get(target, "/health")
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}"))
            },
        )
        .await
    }

    /// Stop node `i` (SIGTERM, then SIGKILL past a grace period).
    async fn stop(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if let Some(server) = node.server.take() {
            let status = server.stop().await?;
            if !status.success() {
                eprintln!("warning: {} exited with {status} when stopped", node.name);
            }
        }
        Ok(())
    }

    fn probe(&self) -> Result<Probe> {
        let mut http = Vec::new();
        let mut pids = Vec::new();
        for n in &self.nodes {
            let s = n
                .server
                .as_ref()
                .ok_or_else(|| anyhow!("{} is not running", n.name))?;
            http.push(HttpTarget::new(s.addr));
            pids.push(s.pid);
        }
        Ok(Probe {
            http,
            pids,
            relays: self.relays.clone(),
        })
    }

    /// The same one-way delay on every link, both directions.
    fn set_delay(&self, delay_ms: u64) -> Result<()> {
        for r in &self.relays {
            for dir in Direction::BOTH {
                r.set_conditions(dir, LinkConditions::delay(delay_ms))?;
            }
        }
        Ok(())
    }

    /// Stop the nodes and the relays; keep the directory if asked.
    async fn shutdown(mut self, keep: bool) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.stop(i).await?;
        }
        for r in &self.relays {
            timeout(Duration::from_secs(10), r.shutdown())
                .await
                .map_err(|_| anyhow!("a relay did not stop within 10 s"))?;
        }
        if keep {
            let path = self.dir.keep();
            eprintln!("kept {}", path.display());
        }
        Ok(())
    }
}

/// `N` distinct free UDP ports on 127.0.0.1 (free when this returns; the
/// nodes bind them a moment later).
fn free_udp_addrs<const N: usize>() -> Result<[SocketAddr; N]> {
    let sockets: Vec<StdUdpSocket> = (0..N)
        .map(|_| StdUdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("finding free UDP ports")?;
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    addrs
        .try_into()
        .map_err(|_| anyhow!("expected {N} addresses"))
}

// ---------------------------------------------------------------------------
// Reading the nodes.

/// `GET path` on a node: the body of a 200 answer, within [`HTTP_TIMEOUT`].
async fn get(target: &HttpTarget, path: &str) -> Result<Bytes> {
    let work = async {
        let mut c = target.connect().await?;
        let (status, body) = c.get(path).await?;
        if status != 200 {
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
        Ok(body)
    };
    timeout(HTTP_TIMEOUT, work).await.map_err(|_| {
        anyhow!(
            "GET {path} at {}: no answer within {HTTP_TIMEOUT:?}",
            target.describe()
        )
    })?
}

/// What `GET /v1/status` says about replication.
#[derive(Debug, Clone, PartialEq)]
struct NodeStatus {
    /// This node's replica id as the version vector names it.
    replica: String,
    version_vector: BTreeMap<String, u64>,
    /// Each peer and whether its outgoing session is up.
    peers: Vec<(String, bool)>,
}

impl NodeStatus {
    fn parse(body: &[u8]) -> Result<NodeStatus> {
        let v: serde_json::Value = serde_json::from_slice(body).context("parsing /v1/status")?;
        let replica = v["replica"]
            .as_str()
            .ok_or_else(|| anyhow!("/v1/status has no `replica` string"))?
            .to_owned();
        let version_vector = v["version_vector"]
            .as_object()
            .ok_or_else(|| anyhow!("/v1/status has no `version_vector` object"))?
            .iter()
            .map(|(k, n)| Ok((k.clone(), n.as_u64().ok_or_else(|| anyhow!("{k}: {n}"))?)))
            .collect::<Result<_>>()?;
        let peers = v["peers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or("?").to_owned(),
                            p["connected"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(NodeStatus {
            replica,
            version_vector,
            peers,
        })
    }

    /// The highest sequence number of `replica` this node has applied.
    fn seq_of(&self, replica: &str) -> u64 {
        self.version_vector.get(replica).copied().unwrap_or(0)
    }

    fn own_seq(&self) -> u64 {
        self.seq_of(&self.replica)
    }
}

async fn status(target: &HttpTarget) -> Result<NodeStatus> {
    NodeStatus::parse(&get(target, "/v1/status").await?)
}

async fn statuses(probe: &Probe) -> Result<Vec<NodeStatus>> {
    let mut out = Vec::new();
    for t in &probe.http {
        out.push(status(t).await?);
    }
    Ok(out)
}

/// A Prometheus text exposition: series (name and labels, as written) → value.
#[derive(Debug, Clone, Default)]
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut out = HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Label values may hold spaces, so the series ends at the last `}`.
            let (series, rest) = match line.rfind('}') {
                Some(end) => line.split_at(end + 1),
                None => match line.split_once(' ') {
                    Some(parts) => parts,
                    None => continue,
                },
            };
            if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                out.insert(series.trim().to_owned(), v);
            }
        }
        Metrics(out)
    }

    /// A series' value, 0 when absent.
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The cumulative buckets of histogram `name`, by upper bound.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut out: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(series, v)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    fn bytes_sent_to(&self, peer: &str) -> f64 {
        self.get(&format!(
            "dotkv_replication_bytes_sent_total{{peer=\"{peer}\"}}"
        ))
    }

    fn anti_entropy_runs(&self) -> f64 {
        self.get("dotkv_anti_entropy_runs_total{role=\"sender\"}")
            + self.get("dotkv_anti_entropy_runs_total{role=\"receiver\"}")
    }
}

/// The lag dc2-n1's histogram counted between two scrapes.
fn lag_between(before: &Metrics, after: &Metrics) -> LagPercentiles {
    let b = before.buckets(LAG_METRIC);
    let delta: Vec<(f64, u64)> = after
        .buckets(LAG_METRIC)
        .into_iter()
        .map(|(le, cum)| {
            let was = b.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, (cum - was).max(0.0) as u64)
        })
        .collect();
    let groups = delta.last().map_or(0, |(_, c)| *c);
    let sum = after.get(&format!("{LAG_METRIC}_sum")) - before.get(&format!("{LAG_METRIC}_sum"));
    LagPercentiles {
        groups,
        p50_ms: quantile(&delta, 0.50),
        p99_ms: quantile(&delta, 0.99),
        p999_ms: quantile(&delta, 0.999),
        mean_ms: (groups > 0).then(|| sum / groups as f64),
    }
}

/// The upper bound of the bucket holding quantile `q` of cumulative
/// `buckets` (sorted by bound, the last one `+Inf`); `None` when empty.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

/// Everything read at one instant: relay counters, both nodes' metrics, CPU.
struct Snapshot {
    at: Instant,
    relays: Vec<RelayStats>,
    metrics: Vec<Metrics>,
    cpu_bench: Option<Duration>,
    cpu_nodes: Vec<Option<Duration>>,
    cpu_machine: Option<Duration>,
}

impl Probe {
    async fn snapshot(&self) -> Result<Snapshot> {
        let at = Instant::now();
        let relays = self.relays.iter().map(|r| r.stats()).collect();
        let cpu_bench = stats::cpu_time(None);
        let cpu_nodes = self
            .pids
            .iter()
            .map(|p| stats::cpu_time(Some(*p)))
            .collect();
        let cpu_machine = stats::machine_busy_time();
        let mut metrics = Vec::new();
        for t in &self.http {
            metrics.push(Metrics::parse(&String::from_utf8_lossy(
                &get(t, "/metrics").await?,
            )));
        }
        Ok(Snapshot {
            at,
            relays,
            metrics,
            cpu_bench,
            cpu_nodes,
            cpu_machine,
        })
    }
}

/// Relay traffic between two snapshots. `relays[0]` is in front of dc1-n1,
/// so its `ToUpstream` direction carries dc2→dc1 and `ToClient` dc1→dc2;
/// `relays[1]` the other way round.
fn wire_between(a: &Snapshot, b: &Snapshot) -> Wire {
    let link = |i: usize, dir: Direction, f: fn(&dotkv_netsim::LinkStats) -> u64| {
        f(b.relays[i].link(dir)).saturating_sub(f(a.relays[i].link(dir)))
    };
    let bytes = |i, dir| link(i, dir, |l| l.forwarded_bytes);
    let dc1_to_dc2 = bytes(1, Direction::ToUpstream) + bytes(0, Direction::ToClient);
    let dc2_to_dc1 = bytes(0, Direction::ToUpstream) + bytes(1, Direction::ToClient);
    let mut packets = 0;
    let mut dropped = 0;
    for i in 0..b.relays.len() {
        for dir in Direction::BOTH {
            packets += link(i, dir, |l| l.forwarded_packets);
            dropped += link(i, dir, |l| {
                l.dropped_loss + l.dropped_partition + l.dropped_queue_full
            });
        }
    }
    Wire {
        dc1_to_dc2_bytes: dc1_to_dc2,
        dc2_to_dc1_bytes: dc2_to_dc1,
        bytes: dc1_to_dc2 + dc2_to_dc1,
        packets,
        dropped,
    }
}

fn frames_between(a: &Snapshot, b: &Snapshot) -> Frames {
    let sent = |i: usize, peer: &str| {
        (b.metrics[i].bytes_sent_to(peer) - a.metrics[i].bytes_sent_to(peer)).max(0.0) as u64
    };
    Frames {
        dc1_to_dc2: sent(0, NODES[1].0),
        dc2_to_dc1: sent(1, NODES[0].0),
    }
}

fn cpu_between(a: &Snapshot, b: &Snapshot) -> CpuUse {
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return CpuUse::default();
    }
    let cores =
        |x: Option<Duration>, y: Option<Duration>| Some(y?.saturating_sub(x?).as_secs_f64() / wall);
    let bench = cores(a.cpu_bench, b.cpu_bench);
    let dc1 = cores(a.cpu_nodes[0], b.cpu_nodes[0]);
    let dc2 = cores(a.cpu_nodes[1], b.cpu_nodes[1]);
    let other = cores(a.cpu_machine, b.cpu_machine)
        .map(|all| (all - bench.unwrap_or(0.0) - dc1.unwrap_or(0.0) - dc2.unwrap_or(0.0)).max(0.0));
    CpuUse {
        bench,
        dc1,
        dc2,
        other,
    }
}

/// Poll `check` until it gives a value or `within` runs out; the error then
/// says what `check` saw last.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer yet");
    loop {
        if let Ok(r) = timeout_at(deadline, check()).await {
            match r {
                Ok(v) => return Ok(v),
                Err(why) => last = why,
            }
        }
        if Instant::now() + POLL_EVERY >= deadline {
            bail!("{what}: not within {within:?} (last seen: {last})");
        }
        sleep(POLL_EVERY).await;
    }
}

async fn wait_connected(probe: &Probe) -> Result<()> {
    wait_for(
        "both peer sessions up",
        CONNECT_DEADLINE,
        move || async move {
            let all = statuses(probe).await.map_err(|e| format!("{e:#}"))?;
            for (i, st) in all.iter().enumerate() {
                if st.peers.is_empty() || !st.peers.iter().all(|(_, up)| *up) {
                    return Err(format!("{} peers: {:?}", NODES[i].0, st.peers));
                }
            }
            Ok(())
        },
    )
    .await
}

/// Wait until both nodes have applied the same groups; their version vector.
async fn wait_synced(probe: &Probe, within: Duration) -> Result<BTreeMap<String, u64>> {
    wait_for(
        "both nodes at the same version vector",
        within,
        move || async move {
            let all = statuses(probe).await.map_err(|e| format!("{e:#}"))?;
            if all[0].version_vector == all[1].version_vector {
                Ok(all[0].version_vector.clone())
            } else {
                Err(format!(
                    "{} {:?}, {} {:?}",
                    NODES[0].0, all[0].version_vector, NODES[1].0, all[1].version_vector
                ))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Workloads.

/// `+1` on one of `keys` counters, each named with 16 bytes.
#[derive(Debug, Clone)]
struct SmallCounterAdds {
    keys: u64,
}

impl Workload for SmallCounterAdds {
    fn name(&self) -> String {
        format!("counter add ({} keys of {KEY_BYTES} B)", self.keys)
    }

    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        Op::CounterAdd {
            key: COUNTER_BASE + s.below(self.keys),
            delta: 1,
        }
    }
}

/// The partition's writes: a counter add, a register put and a set add in
/// turn, each on one of `keys` keys of its type; every update is a 16-byte
/// key and 8 bytes of value (the amount, the register value, the element).
#[derive(Debug, Clone)]
struct PartitionMix {
    keys: u64,
}

impl Workload for PartitionMix {
    fn name(&self) -> String {
        format!(
            "counter add, register put, set add in turn ({} keys each)",
            self.keys
        )
    }

    fn next_op(&self, s: &mut OpStream) -> Op {
        s.seq += 1;
        let key = s.below(self.keys);
        // Random 8-character values: concurrent puts to a register really
        // conflict, and set elements rarely repeat.
        let tag = s.below(1 << 32);
        match s.seq % 3 {
            0 => Op::CounterAdd {
                key: COUNTER_BASE + key,
                delta: 1,
            },
            1 => Op::RegisterPut {
                key: REGISTER_BASE + key,
                value: Bytes::from(format!("\"{tag:08x}\"")),
            },
            _ => Op::SetAdd {
                key: SET_BASE + key,
                element: format!("{tag:08x}"),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// The cases.

fn load_config(
    args: &Args,
    case: String,
    warmup: f64,
    duration: f64,
    rate: f64,
    pid: u32,
) -> LoadConfig {
    LoadConfig {
        case,
        connections: args.connections,
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(duration),
        rate: Some(rate),
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        server_pid: Some(pid),
        seed: args.seed,
        series_interval: None,
        // tokio's 1 ms timer, as when this benchmark's figures were set: the
        // bytes per update depend on how many writes share a packet, and
        // sends spread evenly share fewer (see PERFORMANCE.md, "make bench").
        coarse_timer: true,
        pacing_quantum: crate::generator::DEFAULT_PACING_QUANTUM,
    }
}

async fn lag_case(cluster: &Cluster, args: &Args, delay_ms: u64) -> Result<LagCase> {
    cluster.set_delay(delay_ms)?;
    let probe = cluster.probe()?;
    // Whatever the previous case left in flight lands first.
    wait_synced(&probe, DRAIN_DEADLINE).await?;
    let loadavg_before = loadavg();
    let cfg = load_config(
        args,
        format!("lag, one-way delay {delay_ms} ms"),
        args.warmup,
        args.duration,
        args.rate,
        probe.pids[0],
    );
    // The first snapshot is taken when the measured window opens.
    let window_start = Instant::now() + cfg.warmup;
    let first = tokio::spawn({
        let probe = probe.clone();
        async move {
            sleep_until(window_start).await;
            probe.snapshot().await
        }
    });
    let writes = generator::run(
        Arc::new(probe.http[0].clone()),
        Arc::new(SmallCounterAdds { keys: args.keys }),
        &cfg,
    )
    .await;
    let before = first.await.context("the snapshot task failed")??;
    // Close the window once dc2-n1 has everything dc1-n1 committed, so
    // every update's bytes and lag are in it.
    let not_drained = wait_synced(&probe, DRAIN_DEADLINE)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    if let Some(e) = &not_drained {
        eprintln!("warning: {e}");
    }
    let after = probe.snapshot().await?;

    let updates = (after.metrics[0].get(WRITES_METRIC) - before.metrics[0].get(WRITES_METRIC))
        .max(0.0) as u64;
    let lag = lag_between(&before.metrics[1], &after.metrics[1]);
    let wire = wire_between(&before, &after);
    let frames = frames_between(&before, &after);
    let per = |b: u64| {
        if updates > 0 {
            b as f64 / updates as f64
        } else {
            0.0
        }
    };
    let lag_target_ms = delay_ms as f64 + LAG_SLACK_MS;
    let wire_target_bytes = WIRE_FACTOR * LOGICAL_BYTES as f64 + WIRE_EXTRA;
    let wire_bytes_per_update = per(wire.bytes);
    Ok(LagCase {
        delay_ms,
        writes,
        updates,
        window_secs: after.at.saturating_duration_since(before.at).as_secs_f64(),
        lag_met: lag.p99_ms.is_some_and(|p| p <= lag_target_ms) && not_drained.is_none(),
        lag,
        lag_target_ms,
        wire,
        frames,
        logical_bytes_per_update: LOGICAL_BYTES as f64,
        wire_bytes_per_update,
        frame_bytes_per_update: per(frames.total()),
        wire_target_bytes,
        wire_met: updates > 0 && wire_bytes_per_update <= wire_target_bytes,
        cpu: cpu_between(&before, &after),
        loadavg_before,
        loadavg_after: loadavg(),
        not_drained,
    })
}

async fn partition_case(cluster: &mut Cluster, args: &Args) -> Result<PartitionCase> {
    cluster.set_delay(args.partition_delay_ms)?;
    let probe = cluster.probe()?;
    wait_synced(&probe, DRAIN_DEADLINE).await?;
    let loadavg_before = loadavg();
    let start = statuses(&probe).await?;
    let seq0: Vec<u64> = start.iter().map(NodeStatus::own_seq).collect();
    let ae0: Vec<f64> = probe_metrics(&probe)
        .await?
        .iter()
        .map(Metrics::anti_entropy_runs)
        .collect();

    for r in &cluster.relays {
        r.partition();
    }
    let runs = (0..NODES.len()).map(|i| {
        let cfg = LoadConfig {
            seed: args.seed.wrapping_add(1000 + i as u64),
            ..load_config(
                args,
                format!("partition writes at {}", NODES[i].0),
                0.0,
                args.partition_secs,
                args.partition_rate,
                probe.pids[i],
            )
        };
        let target = Arc::new(probe.http[i].clone());
        let workload = Arc::new(PartitionMix {
            keys: args.partition_keys,
        });
        async move { generator::run(target, workload, &cfg).await }
    });
    let writes: Vec<Report> = spawn_all(runs).await;

    let end = statuses(&probe).await?;
    let seq1: Vec<u64> = end.iter().map(NodeStatus::own_seq).collect();
    // What crossed despite the partition (groups in flight when it began
    // are dropped by the relays, so this should be 0).
    let leaked_groups = (0..2)
        .map(|i| end[1 - i].seq_of(&end[i].replica).saturating_sub(seq0[i]))
        .sum();
    let ae1: Vec<f64> = probe_metrics(&probe)
        .await?
        .iter()
        .map(Metrics::anti_entropy_runs)
        .collect();

    // Read the divergent groups from the stopped nodes' delta logs.
    for i in 0..NODES.len() {
        cluster.stop(i).await?;
    }
    let mut divergent = Vec::new();
    for i in 0..NODES.len() {
        let data = cluster.nodes[i].data.clone();
        let replica = start[i].replica.clone();
        let (from, to) = (seq0[i] + 1, seq1[i]);
        let node = NODES[i].0;
        let d =
            tokio::task::spawn_blocking(move || read_divergent(node, &data, &replica, from, to))
                .await
                .context("reading a delta log")??;
        divergent.push(d);
    }
    for i in 0..NODES.len() {
        cluster.start(i).await?;
    }

    // Heal, and count until both have everything.
    let probe = cluster.probe()?;
    let before = probe.snapshot().await?;
    for r in &cluster.relays {
        r.heal();
    }
    let healed = Instant::now();
    let within = Duration::from_secs_f64((4.0 * args.partition_secs).max(120.0));
    // When both peer sessions were seen up again (a `Cell`: the polls run
    // one at a time).
    let reconnected = std::cell::Cell::new(None);
    let (reconnected_at, polled) = (&reconnected, &probe);
    let not_converged = wait_for(
        "both nodes at the same version vector after the heal",
        within,
        move || {
            let (reconnected, probe) = (reconnected_at, polled);
            async move {
                let all = statuses(probe).await.map_err(|e| format!("{e:#}"))?;
                let connected = all
                    .iter()
                    .all(|st| !st.peers.is_empty() && st.peers.iter().all(|(_, up)| *up));
                if connected && reconnected.get().is_none() {
                    reconnected.set(Some(healed.elapsed().as_secs_f64()));
                }
                if all[0].version_vector == all[1].version_vector {
                    Ok(())
                } else {
                    Err(format!(
                        "{} {:?}, {} {:?}",
                        NODES[0].0, all[0].version_vector, NODES[1].0, all[1].version_vector
                    ))
                }
            }
        },
    )
    .await
    .err()
    .map(|e| format!("{e:#}"));
    let catchup_secs = healed.elapsed().as_secs_f64();
    let reconnect_secs = reconnected.get();
    if let Some(e) = &not_converged {
        eprintln!("warning: {e}");
    }
    let after = probe.snapshot().await?;

    let catchup = wire_between(&before, &after);
    let catchup_frames = frames_between(&before, &after);
    let ae_after_restart: f64 = (0..2)
        .map(|i| after.metrics[i].anti_entropy_runs() - before.metrics[i].anti_entropy_runs())
        .sum();
    let anti_entropy_runs = ae_after_restart + (0..2).map(|i| ae1[i] - ae0[i]).sum::<f64>();
    let anti_entropy_bytes = (0..2)
        .map(|i| {
            after.metrics[i].get("dotkv_anti_entropy_bytes_sent_total")
                - before.metrics[i].get("dotkv_anti_entropy_bytes_sent_total")
        })
        .sum();
    let delta_log_bytes: u64 = divergent.iter().map(|d| d.delta_log_bytes).sum();
    let ratio = if delta_log_bytes > 0 {
        catchup.bytes as f64 / delta_log_bytes as f64
    } else {
        0.0
    };
    let wire_form_bytes: u64 = divergent.iter().map(|d| d.wire_form_bytes).sum();
    let ratio_to_wire_form = if wire_form_bytes > 0 {
        catchup.bytes as f64 / wire_form_bytes as f64
    } else {
        0.0
    };
    let converged = not_converged.is_none();
    Ok(PartitionCase {
        delay_ms: args.partition_delay_ms,
        secs: args.partition_secs,
        rate_per_node: args.partition_rate,
        divergent_groups: divergent.iter().map(|d| d.groups).sum(),
        logical_bytes: writes.iter().map(|w| w.ops * LOGICAL_BYTES).sum(),
        delta_log_bytes,
        wire_form_bytes,
        writes,
        divergent,
        catchup,
        catchup_frames,
        reconnect_secs,
        catchup_secs,
        converged,
        ratio,
        ratio_to_wire_form,
        ratio_target: CATCHUP_RATIO,
        ratio_met: converged
            && delta_log_bytes > 0
            && ratio <= CATCHUP_RATIO
            && anti_entropy_runs == 0.0,
        anti_entropy_runs,
        anti_entropy_bytes,
        leaked_groups,
        loadavg_before,
        loadavg_after: loadavg(),
        not_converged,
    })
}

async fn probe_metrics(probe: &Probe) -> Result<Vec<Metrics>> {
    let mut out = Vec::new();
    for t in &probe.http {
        out.push(Metrics::parse(&String::from_utf8_lossy(
            &get(t, "/metrics").await?,
        )));
    }
    Ok(out)
}

/// Run futures concurrently and collect their outputs in order.
async fn spawn_all<F: Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a load generator task panicked"));
    }
    out
}

/// Read `origin`'s groups `from..=to` from the delta log of the (stopped)
/// node at `data`, and the size of its whole state.
fn read_divergent(
    node: &'static str,
    data: &Path,
    origin: &str,
    from: u64,
    to: u64,
) -> Result<Divergent> {
    let origin = ReplicaId(
        u64::from_str_radix(origin, 16).with_context(|| format!("replica id {origin:?}"))?,
    );
    let store = Store::open(
        data,
        &StoreOptions {
            block_cache_bytes: 8 << 20,
            write_buffer_bytes: 8 << 20,
        },
    )
    .with_context(|| format!("opening {node}'s store at {}", data.display()))?;
    let mut d = Divergent {
        node,
        first_seq: from,
        last_seq: to,
        groups: 0,
        ops: 0,
        delta_log_bytes: 0,
        wire_form_bytes: 0,
        state_rows: 0,
        state_bytes: 0,
    };
    let mut batch: Vec<DeltaGroup> = Vec::with_capacity(BATCH_GROUPS);
    // The frame one batch of groups makes, as the sender would send it.
    fn flush(batch: &mut Vec<DeltaGroup>, d: &mut Divergent) -> Result<()> {
        if !batch.is_empty() {
            let msg = PeerMsg::Groups(WireBatch::encode(std::mem::take(batch)));
            d.wire_form_bytes += msg.encode()?.len() as u64;
        }
        Ok(())
    }
    let mut next = from;
    'read: while next <= to {
        let groups = store.delta_groups(origin, next, 1024)?;
        if groups.is_empty() {
            bail!("{node}'s delta log ends before sequence {next} (expected up to {to})");
        }
        for g in groups {
            if g.first > to {
                break 'read;
            }
            if g.first != next {
                bail!(
                    "{node}'s delta log jumps from {next} to {} (expected every group up to {to})",
                    g.first
                );
            }
            next = g.last + 1;
            d.groups += 1;
            d.ops += g.ops.len() as u64;
            d.delta_log_bytes += dotkv_crdt::encode(&g)?.len() as u64;
            batch.push(g);
            if batch.len() == BATCH_GROUPS {
                flush(&mut batch, &mut d)?;
            }
        }
    }
    flush(&mut batch, &mut d)?;

    let mut start: Vec<u8> = Vec::new();
    loop {
        let rows = store.ae_rows(&start, None, 8192)?;
        d.state_rows += rows.len() as u64;
        d.state_bytes += rows
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        match rows.last() {
            Some((k, _)) if rows.len() == 8192 => {
                start = k.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Output.

fn print_report(
    command: &[String],
    args: &Args,
    lag: &[LagCase],
    partition: Option<&PartitionCase>,
    loadavg_start: &str,
    loadavg_end: &str,
) {
    let (cpus, cpu_model) = machine();
    println!();
    println!("command: {}", command.join(" "));
    println!(
        "machine: {cpus} CPUs, {cpu_model}; nodes, generator and relays share them; load average {loadavg_start} at the start, {loadavg_end} at the end"
    );
    println!();
    print!("{}", report_text(args, lag, partition));
    for c in lag {
        warn_about(&c.writes);
        if let Some(e) = &c.not_drained {
            eprintln!("warning: {} ms case: {e}", c.delay_ms);
        }
        if c.wire.dropped > 0 {
            eprintln!(
                "warning: {} ms case: the relays dropped {} datagrams",
                c.delay_ms, c.wire.dropped
            );
        }
    }
    if let Some(p) = partition {
        for w in &p.writes {
            warn_about(w);
        }
        if let Some(e) = &p.not_converged {
            eprintln!("warning: partition case: {e}");
        }
    }
}

/// The tables and the targets' verdicts (Markdown, also fine in a
/// terminal), as printed and as `dotkv-bench suite` puts them in its report.
pub(crate) fn report_markdown(results: &Results) -> String {
    let args = ArgsView {
        rate: results.settings.rate,
    };
    report_text_with(&args, &results.lag, results.partition.as_ref())
}

/// What the tables need of the arguments.
struct ArgsView {
    rate: f64,
}

fn report_text(args: &Args, lag: &[LagCase], partition: Option<&PartitionCase>) -> String {
    report_text_with(&ArgsView { rate: args.rate }, lag, partition)
}

fn report_text_with(args: &ArgsView, lag: &[LagCase], partition: Option<&PartitionCase>) -> String {
    let mut out = String::new();
    let mut t = Table::new(&[
        "one-way delay",
        "writes/s asked",
        "writes/s",
        "errors",
        "write p50",
        "write p99",
        "groups",
        "lag p50",
        "lag p99",
        "lag p99.9",
        "lag mean",
        "p99 target",
        "CPU bench",
        "CPU dc1",
        "CPU dc2",
        "CPU other",
    ]);
    for c in lag {
        t.row(vec![
            format!("{} ms", c.delay_ms),
            format!("{:.0}", args.rate),
            format!("{:.0}", c.writes.ops_per_sec),
            c.writes.errors.to_string(),
            fmt_us(c.writes.latency_us.p50),
            fmt_us(c.writes.latency_us.p99),
            c.lag.groups.to_string(),
            fmt_ms(c.lag.p50_ms),
            fmt_ms(c.lag.p99_ms),
            fmt_ms(c.lag.p999_ms),
            c.lag
                .mean_ms
                .map_or_else(|| "-".into(), |m| format!("{m:.1}ms")),
            format!("{:.0}ms", c.lag_target_ms),
            cores(c.cpu.bench),
            cores(c.cpu.dc1),
            cores(c.cpu.dc2),
            cores(c.cpu.other),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    let mut t = Table::new(&[
        "one-way delay",
        "updates",
        "UDP bytes dc1→dc2",
        "UDP bytes dc2→dc1",
        "packets",
        "wire B/update",
        "frame B/update",
        "logical B/update",
        "wire target",
    ]);
    for c in lag {
        t.row(vec![
            format!("{} ms", c.delay_ms),
            thousands(c.updates),
            thousands(c.wire.dc1_to_dc2_bytes),
            thousands(c.wire.dc2_to_dc1_bytes),
            thousands(c.wire.packets),
            format!("{:.1}", c.wire_bytes_per_update),
            format!("{:.1}", c.frame_bytes_per_update),
            c.logical_bytes_per_update.to_string(),
            format!("{:.0}", c.wire_target_bytes),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    if let Some(p) = partition {
        let mut t = Table::new(&[
            "partition",
            "writes dc1",
            "writes dc2",
            "groups",
            "logical bytes",
            "delta-log bytes",
            "wire-form bytes",
            "catch-up UDP bytes",
            "catch-up frame bytes",
            "ratio",
            "ratio to wire form",
            "reconnected in",
            "converged in",
            "anti-entropy runs",
            "state (dc1)",
        ]);
        t.row(vec![
            format!("{} s at {} ms", p.secs, p.delay_ms),
            thousands(p.writes[0].ops),
            thousands(p.writes[1].ops),
            thousands(p.divergent_groups),
            thousands(p.logical_bytes),
            thousands(p.delta_log_bytes),
            thousands(p.wire_form_bytes),
            thousands(p.catchup.bytes),
            thousands(p.catchup_frames.total()),
            format!("{:.2}x", p.ratio),
            format!("{:.2}x", p.ratio_to_wire_form),
            p.reconnect_secs
                .map_or_else(|| "-".into(), |s| format!("{s:.2}s")),
            format!("{:.2}s", p.catchup_secs),
            format!("{:.0}", p.anti_entropy_runs),
            format!(
                "{} B in {} rows",
                thousands(p.divergent[0].state_bytes),
                thousands(p.divergent[0].state_rows)
            ),
        ]);
        out.push_str(&t.render());
        out.push('\n');
    }

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    for c in lag {
        out.push_str(&format!(
            "- lag, {} ms one way: p99 {} (target <= {:.0} ms): {}\n",
            c.delay_ms,
            fmt_ms(c.lag.p99_ms),
            c.lag_target_ms,
            verdict(c.lag_met)
        ));
    }
    for c in lag {
        out.push_str(&format!(
            "- bytes per update, {} ms one way: {:.1} B on the wire for {} B logical (target <= {:.0} B): {}\n",
            c.delay_ms,
            c.wire_bytes_per_update,
            LOGICAL_BYTES,
            c.wire_target_bytes,
            verdict(c.wire_met)
        ));
    }
    if let Some(p) = partition {
        out.push_str(&format!(
            "- catch-up after {} s of partition: {} B on the wire for {} B of divergent delta groups = {:.2}x (target <= {CATCHUP_RATIO}x, no anti-entropy; runs: {:.0}): {}\n",
            p.secs,
            thousands(p.catchup.bytes),
            thousands(p.delta_log_bytes),
            p.ratio,
            p.anti_entropy_runs,
            verdict(p.ratio_met)
        ));
        if p.leaked_groups > 0 {
            out.push_str(&format!(
                "- note: {} groups crossed the partition before it took hold\n",
                p.leaked_groups
            ));
        }
    }
    out
}

/// A lag bucket bound for a table.
fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_infinite() => "over 60s".into(),
        // Lags are differences of millisecond timestamps: 0 is under 1 ms.
        Some(0.0) => "<1ms".into(),
        Some(v) => format!("{v:.0}ms"),
    }
}

pub(crate) fn cores(c: Option<f64>) -> String {
    c.map_or_else(|| "-".into(), |c| format!("{:.0}%", c * 100.0))
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (cpus, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP dotkv_replication_apply_lag_ms lag
# TYPE dotkv_replication_apply_lag_ms histogram
dotkv_replication_apply_lag_ms_bucket{le=\"0\"} 0
dotkv_replication_apply_lag_ms_bucket{le=\"1\"} 50
dotkv_replication_apply_lag_ms_bucket{le=\"2\"} 98
dotkv_replication_apply_lag_ms_bucket{le=\"3\"} 100
dotkv_replication_apply_lag_ms_bucket{le=\"+Inf\"} 100
dotkv_replication_apply_lag_ms_sum 160
dotkv_replication_apply_lag_ms_count 100
dotkv_replication_bytes_sent_total{peer=\"dc2-n1\"} 12345
dotkv_storage_write_requests_total 7
";

    #[test]
    fn parses_labelled_and_plain_series() {
        let m = Metrics::parse(SAMPLE);
        assert_eq!(m.bytes_sent_to("dc2-n1"), 12345.0);
        assert_eq!(m.get(WRITES_METRIC), 7.0);
        assert_eq!(m.get("absent"), 0.0);
        let b = m.buckets(LAG_METRIC);
        assert_eq!(b.len(), 5);
        assert_eq!(b[4], (f64::INFINITY, 100.0));
    }

    #[test]
    fn percentiles_come_from_the_difference_of_two_scrapes() {
        let before = Metrics::default();
        let after = Metrics::parse(SAMPLE);
        let lag = lag_between(&before, &after);
        assert_eq!(lag.groups, 100);
        assert_eq!(lag.p50_ms, Some(1.0));
        assert_eq!(lag.p99_ms, Some(3.0));
        assert_eq!(lag.mean_ms, Some(1.6));
        // Nothing new between two equal scrapes.
        let none = lag_between(&after, &after);
        assert_eq!(none.groups, 0);
        assert_eq!(none.p99_ms, None);
    }

    #[test]
    fn quantile_is_the_bound_of_the_bucket_holding_the_rank() {
        let b = [(1.0, 0), (2.0, 90), (5.0, 99), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.5), Some(2.0));
        assert_eq!(quantile(&b, 0.99), Some(5.0));
        assert_eq!(quantile(&b, 0.999), Some(f64::INFINITY));
        assert_eq!(quantile(&[(f64::INFINITY, 0)], 0.5), None);
    }

    #[test]
    fn status_gives_the_own_sequence() {
        let body =
            br#"{"node_id":"x","replica":"00000000000000ff","datacenter":"dc1","node":"dc1-n1",
            "version_vector":{"00000000000000ff":12,"0000000000000001":3},
            "peers":[{"name":"dc2-n1","connected":true}]}"#;
        let st = NodeStatus::parse(body).unwrap();
        assert_eq!(st.own_seq(), 12);
        assert_eq!(st.seq_of("0000000000000001"), 3);
        assert_eq!(st.peers, vec![("dc2-n1".to_owned(), true)]);
    }

    #[test]
    fn keys_are_sixteen_bytes_and_values_eight() {
        let w = PartitionMix { keys: 1000 };
        let mut s = OpStream::new(0, 1);
        for _ in 0..30 {
            match w.next_op(&mut s) {
                Op::CounterAdd { key, .. } => assert_eq!(format!("bench-{key}").len(), 16),
                Op::RegisterPut { key, value } => {
                    assert_eq!(format!("bench-{key}").len(), 16);
                    let v: String = serde_json::from_slice(&value).unwrap();
                    assert_eq!(v.len(), VALUE_BYTES as usize);
                }
                Op::SetAdd { key, element } => {
                    assert_eq!(format!("bench-{key}").len(), 16);
                    assert_eq!(element.len(), VALUE_BYTES as usize);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
