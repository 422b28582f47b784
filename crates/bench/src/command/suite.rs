//! `dotkv-bench suite`: everything `make bench` measures, in one run, so the
//! figures are ratios taken side by side on one machine at one time.
//!
//! 1. **Servers.** One dotkv node (`durability = "wal"`, HTTP and QUIC on,
//!    its own CA and certificate) and one Redis (Debian's `redis-server`,
//!    `appendonly yes`, `appendfsync no`: written before the answer, not
//!    fsynced, as dotkv's `wal`), both child processes on free ports.
//! 2. **Load.** `--records` YCSB records of `--value-bytes` into each.
//! 3. **Closed loop** (`--connections`, one op in flight each: the peak).
//!    Per workload (YCSB A, B, C, F, counter add, set add), Redis, dotkv over
//!    HTTP and dotkv over QUIC one after the other, so that drift on a
//!    shared machine hits the three alike. Ratio = dotkv ÷ Redis.
//! 4. **Cross-check.** `redis-benchmark` against the same Redis (GET, SET,
//!    INCR, SADD at the same concurrency and value size): an independent
//!    client's view of Redis on this machine, next to ours.
//! 5. **Open loop** at `--open-loop-fraction` (½) of each dotkv transport's
//!    peak for that workload, latency corrected for coordinated omission and
//!    recorded over time (the plot); Redis at the same rate as dotkv QUIC.
//! 6. **fsync.** dotkv restarted on the same data with `durability =
//!    "fsync"` (group commit), Redis switched to `appendfsync always`; the
//!    write workloads again in closed loop.
//! 7. **Replication.** `dotkv-bench replication` as it stands (lag, bytes per
//!    update, catch-up after a partition), with its own two nodes.
//!
//! Writes `<out-dir>/<date>.json` (everything), `<out-dir>/<date>-latency.png`
//! (p99 over time, open loop) and the generated section of
//! `docs/PERFORMANCE.md` (between its `dotkv-bench suite` markers).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::time::{sleep, timeout, Instant};

use crate::command::replication::{self, cores, loadavg, machine, thousands};
use crate::command::run::warn_about;
use crate::command::single_node::serve_config;
use crate::generator::{self, LoadConfig};
use crate::plot::{Chart, Panel, Series};
use crate::process::{Server, Spawn};
use crate::stats::{fmt_us, Report, Table};
use crate::target::quic::QuicTarget;
use crate::target::resp::{RedisTarget, Reply};
use crate::target::{Answer, Connection, HttpTarget, Target};
use crate::workload::{Builtin, CounterAdd, SetAdd, Ycsb, YcsbKind};

/// dotkv over QUIC must reach this share of Redis's throughput.
const QUIC_TARGET: f64 = 0.8;
/// dotkv over HTTP must reach this share.
const HTTP_TARGET: f64 = 0.5;
/// Open loop at half the peak: p99 below this, in µs.
const OPEN_P99_TARGET_US: f64 = 2000.0;
/// Longest wait for a server to start and answer.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the load phase may take per server.
const LOAD_DEADLINE: Duration = Duration::from_secs(300);
/// Markers around the generated part of the Markdown report.
const BEGIN: &str = "<!-- dotkv-bench suite: generated section, begin -->";
const END: &str = "<!-- dotkv-bench suite: generated section, end -->";
/// The name the node's certificate is checked against (a default SAN).
const SERVER_NAME: &str = "localhost";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dotkv binary. Default: `dotkv` next to this executable.
    #[arg(long, env = "DOTKV_BIN")]
    pub dotkv: Option<PathBuf>,
    /// The Redis server binary (Debian's `redis-server`).
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// `redis-benchmark`, for the cross-check; skipped if it is missing.
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark: PathBuf,
    /// Requests per test of the `redis-benchmark` cross-check (0: skip it).
    #[arg(long, default_value_t = 200_000)]
    pub redis_benchmark_requests: u64,
    /// Concurrent connections (one op in flight each), every target.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// QUIC connections the dotkv QUIC cases multiplex their streams over.
    #[arg(long, default_value_t = 1)]
    pub quic_connections: usize,
    /// Measured seconds per case.
    #[arg(long, default_value_t = 8.0)]
    pub duration_secs: f64,
    /// Warm-up seconds before each case (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Longest wait for one connect or one op before it counts as an error.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// YCSB records (loaded into each server before the YCSB workloads).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Bytes per YCSB record (dotkv: a JSON string of this size, quotes
    /// included; Redis: the same bytes).
    #[arg(long, default_value_t = 1000)]
    pub value_bytes: usize,
    /// Counters the counter workload spreads over (uniformly).
    #[arg(long, default_value_t = 1000)]
    pub counters: u64,
    /// Sets the set workload adds unique elements to (uniformly).
    #[arg(long, default_value_t = 100)]
    pub sets: u64,
    /// Workloads, in order: a, b, c, f (YCSB), counter, set.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,f,counter,set")]
    pub workloads: Vec<String>,
    /// Workloads measured again with fsync (empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "a,counter,set")]
    pub fsync_workloads: Vec<String>,
    /// Open-loop rate as a share of each dotkv transport's closed-loop peak
    /// (0: skip the open loop).
    #[arg(long, default_value_t = 0.5)]
    pub open_loop_fraction: f64,
    /// Open loop: pace sends with tokio's 1 ms timer (bursts every
    /// millisecond) instead of a high-resolution timer, for comparison.
    #[arg(long)]
    pub coarse_timer: bool,
    /// Open loop: sends due within this many µs of one another go out
    /// together (0: each exactly when due).
    #[arg(long, default_value_t = crate::generator::DEFAULT_PACING_QUANTUM.as_micros() as u64)]
    pub pacing_quantum_us: u64,
    /// Interval of the latency-over-time series, in ms.
    #[arg(long, default_value_t = 500)]
    pub series_ms: u64,
    /// Skip the replication cases.
    #[arg(long)]
    pub skip_replication: bool,
    /// Replication: measured seconds of each lag case.
    #[arg(long, default_value_t = 20.0)]
    pub repl_duration: f64,
    /// Replication: seconds of partition (0: skip the catch-up case).
    #[arg(long, default_value_t = 60.0)]
    pub repl_partition_secs: f64,
    /// Where the JSON and the plot go.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// The date in file names (default: today, UTC).
    #[arg(long)]
    pub date: Option<String>,
    /// The Markdown report whose generated section is replaced (appended if
    /// it has none).
    #[arg(long, default_value = "docs/PERFORMANCE.md")]
    pub doc: PathBuf,
    /// Do not touch the Markdown report.
    #[arg(long)]
    pub no_doc: bool,
    /// Keep the temporary directory (configs, certificates, data, logs).
    #[arg(long)]
    pub keep: bool,
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Redis,
    DotkvHttp,
    DotkvQuic,
}

impl System {
    const ALL: [System; 3] = [System::Redis, System::DotkvHttp, System::DotkvQuic];

    fn name(self) -> &'static str {
        match self {
            System::Redis => "Redis",
            System::DotkvHttp => "dotkv HTTP",
            System::DotkvQuic => "dotkv QUIC",
        }
    }
}

/// A workload of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bench {
    Ycsb(YcsbKind),
    Counter,
    Set,
}

impl Bench {
    fn parse(s: &str) -> Result<Bench> {
        Ok(match s.trim() {
            "counter" => Bench::Counter,
            "set" => Bench::Set,
            other => Bench::Ycsb(
                YcsbKind::parse(other.trim_start_matches("ycsb-")).ok_or_else(|| {
                    anyhow!("unknown workload {other:?} (a, b, c, f, counter, set)")
                })?,
            ),
        })
    }

    fn name(self) -> String {
        match self {
            Bench::Ycsb(k) => format!("YCSB {}", k.letter()),
            Bench::Counter => "counter add".into(),
            Bench::Set => "set add".into(),
        }
    }

    /// Whether the issue's throughput targets cover it (F is reported only).
    fn has_throughput_target(self) -> bool {
        self != Bench::Ycsb(YcsbKind::F)
    }
}

/// Which configuration a case ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Closed loop, no fsync.
    Closed,
    /// Open loop at a share of the peak, no fsync.
    Open,
    /// Closed loop, fsync before every answer (group-committed).
    Fsync,
}

/// One measurement.
#[derive(Debug, Serialize)]
struct Case {
    phase: Phase,
    system: System,
    bench: Bench,
    report: Report,
}

#[derive(Debug, Serialize)]
struct Results {
    command: Vec<String>,
    date: String,
    machine: MachineInfo,
    settings: Settings,
    load: Vec<LoadPhase>,
    cases: Vec<Case>,
    ratios: Vec<Ratio>,
    targets: Vec<TargetCheck>,
    redis_benchmark: Option<RedisBenchmark>,
    replication: Option<replication::Results>,
    plot: Option<String>,
}

#[derive(Debug, Serialize)]
struct MachineInfo {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
    kernel: String,
    redis_version: String,
    dotkv: String,
    loadavg_start: String,
    loadavg_end: String,
    note: &'static str,
}

#[derive(Debug, Serialize)]
struct Settings {
    connections: usize,
    quic_connections: usize,
    duration_secs: f64,
    warmup_secs: f64,
    records: u64,
    value_bytes: usize,
    zipfian_constant: f64,
    counters: u64,
    sets: u64,
    open_loop_fraction: f64,
    series_ms: u64,
    redis: &'static str,
    dotkv: &'static str,
}

#[derive(Debug, Serialize)]
struct LoadPhase {
    system: &'static str,
    records: u64,
    secs: f64,
    records_per_sec: f64,
}

/// dotkv's throughput over Redis's for one workload and phase.
#[derive(Debug, Serialize)]
struct Ratio {
    phase: Phase,
    bench: Bench,
    redis_ops_per_sec: f64,
    quic_ops_per_sec: f64,
    http_ops_per_sec: f64,
    quic_ratio: f64,
    http_ratio: f64,
}

#[derive(Debug, Serialize)]
struct TargetCheck {
    what: String,
    figure: String,
    target: String,
    met: bool,
}

#[derive(Debug, Serialize)]
struct RedisBenchmark {
    command: String,
    /// `(test, requests per second, p50 ms, p99 ms)`.
    rows: Vec<(String, f64, f64, f64)>,
}

pub async fn run(args: Args) -> Result<()> {
    // On Ctrl-C, return an error so every server guard drops and kills its
    // child.
    tokio::select! {
        r = run_inner(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; servers stopped"),
    }
}

/// The servers of the single-node cases and the targets that reach them.
struct Rig {
    dir: PathBuf,
    dotkv_bin: PathBuf,
    dotkv: Option<Server>,
    quic_addr: SocketAddr,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    redis: Server,
    http: Arc<HttpTarget>,
    quic: Arc<QuicTarget>,
    redis_target: Arc<RedisTarget>,
}

impl Rig {
    fn dotkv_pid(&self) -> Option<u32> {
        self.dotkv.as_ref().map(|s| s.pid)
    }

    fn pid(&self, system: System) -> Option<u32> {
        match system {
            System::Redis => Some(self.redis.pid),
            _ => self.dotkv_pid(),
        }
    }

    async fn run(&self, system: System, workload: Builtin, cfg: &LoadConfig) -> Report {
        let w = Arc::new(workload);
        match system {
            System::Redis => generator::run(self.redis_target.clone(), w, cfg).await,
            System::DotkvHttp => generator::run(self.http.clone(), w, cfg).await,
            System::DotkvQuic => generator::run(self.quic.clone(), w, cfg).await,
        }
    }

    /// (Re)start dotkv on the same data and QUIC port.
    async fn start_dotkv(&mut self, durability: &str) -> Result<()> {
        if let Some(old) = self.dotkv.take() {
            old.stop().await?;
        }
        let server = start_dotkv(
            &self.dotkv_bin,
            &self.dir,
            durability,
            self.quic_addr,
            (&self.ca, &self.cert, &self.key),
        )
        .await?;
        self.http = Arc::new(HttpTarget::new(server.addr));
        self.dotkv = Some(server);
        Ok(())
    }
}

async fn run_inner(args: Args) -> Result<()> {
    check_args(&args)?;
    let benches: Vec<Bench> = args
        .workloads
        .iter()
        .map(|s| Bench::parse(s))
        .collect::<Result<_>>()?;
    let fsync_benches: Vec<Bench> = args
        .fsync_workloads
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Bench::parse(s))
        .collect::<Result<_>>()?;
    let me = std::env::current_exe().context("finding this executable")?;
    let dotkv_bin = args
        .dotkv
        .clone()
        .unwrap_or_else(|| me.with_file_name("dotkv"));
    if !dotkv_bin.is_file() {
        bail!(
            "no dotkv binary at {} (build it with `make build`, or pass --dotkv)",
            dotkv_bin.display()
        );
    }
    let redis_version = redis_version(&args.redis_server).await.with_context(|| {
        format!(
            "running `{} --version` (install Debian's redis-server: `apt-get install redis-server`)",
            args.redis_server.display()
        )
    })?;
    let date = args.date.clone().unwrap_or_else(today_utc);
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let (cpus, cpu_model) = machine();
    let loadavg_start = loadavg();
    eprintln!("machine: {cpus} CPUs, {cpu_model}; {redis_version}; load average {loadavg_start}");

    // 1. Servers.
    let tmp = tempfile::Builder::new()
        .prefix("dotkv-bench-suite-")
        .tempdir()
        .context("creating a temporary directory")?;
    let dir = tmp.path().to_owned();
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let ca = dotkv_replication::init_ca(&certs).context("making the CA")?;
    let node_cert = dotkv_replication::issue_node_cert(&certs, "bench-node", &[], &certs)
        .context("making the node certificate")?;
    let quic_addr = free_udp_addr()?;
    let dotkv = start_dotkv(
        &dotkv_bin,
        &dir,
        "wal",
        quic_addr,
        (&ca.cert, &node_cert.cert, &node_cert.key),
    )
    .await?;
    let redis_dir = dir.join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let redis = start_redis(&args.redis_server, &redis_dir, free_tcp_addr()?).await?;
    let request_timeout = Duration::from_millis(args.request_timeout_ms.max(1));
    let quic = QuicTarget::new(
        quic_addr,
        SERVER_NAME,
        &ca.cert,
        args.quic_connections,
        request_timeout,
    )?;
    let mut rig = Rig {
        dir: dir.clone(),
        dotkv_bin: dotkv_bin.clone(),
        http: Arc::new(HttpTarget::new(dotkv.addr)),
        dotkv: Some(dotkv),
        quic_addr,
        ca: ca.cert.clone(),
        cert: node_cert.cert.clone(),
        key: node_cert.key.clone(),
        redis_target: Arc::new(RedisTarget::new(redis.addr)),
        redis,
        quic: Arc::new(quic),
    };
    eprintln!(
        "dotkv (wal) at http://{} and quic://{quic_addr}, Redis at {}; files in {}",
        rig.http.describe().trim_start_matches("http://"),
        rig.redis.addr,
        dir.display()
    );

    // 2. Load.
    let mut load = Vec::new();
    if benches.iter().any(|b| matches!(b, Bench::Ycsb(_))) {
        let ycsb = Ycsb::new(YcsbKind::A, args.records, args.value_bytes);
        for (name, result) in [
            (
                "Redis",
                load_records(rig.redis_target.clone(), &ycsb, args.connections).await,
            ),
            (
                "dotkv (HTTP)",
                load_records(rig.http.clone(), &ycsb, args.connections).await,
            ),
        ] {
            let secs = result.with_context(|| format!("loading {name}"))?;
            eprintln!(
                "loaded {} records of {} B into {name} in {secs:.1} s",
                args.records, args.value_bytes
            );
            load.push(LoadPhase {
                system: name,
                records: args.records,
                secs,
                records_per_sec: args.records as f64 / secs.max(1e-9),
            });
        }
    }

    let total_cases = benches.len() * 3
        + if args.open_loop_fraction > 0.0 {
            benches.len() * 3
        } else {
            0
        }
        + fsync_benches.len() * 3;
    let mut n = 0;
    let mut cases: Vec<Case> = Vec::new();

    // 3. Closed loop.
    for &bench in &benches {
        for system in System::ALL {
            n += 1;
            let report = measure(
                &rig,
                &args,
                Phase::Closed,
                system,
                bench,
                None,
                n,
                total_cases,
            )
            .await?;
            cases.push(Case {
                phase: Phase::Closed,
                system,
                bench,
                report,
            });
        }
    }

    // 4. redis-benchmark, against the same Redis, still without fsync.
    let redis_benchmark = if args.redis_benchmark_requests > 0 {
        match run_redis_benchmark(&args, rig.redis.addr).await {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("warning: redis-benchmark cross-check skipped: {e:#}");
                None
            }
        }
    } else {
        None
    };

    // 5. Open loop at a share of each transport's peak.
    if args.open_loop_fraction > 0.0 {
        for &bench in &benches {
            let peak = |system: System| {
                cases
                    .iter()
                    .find(|c| c.phase == Phase::Closed && c.system == system && c.bench == bench)
                    .map_or(0.0, |c| c.report.ops_per_sec)
            };
            let quic_rate = args.open_loop_fraction * peak(System::DotkvQuic);
            let http_rate = args.open_loop_fraction * peak(System::DotkvHttp);
            for system in System::ALL {
                n += 1;
                let rate = if system == System::DotkvHttp {
                    http_rate
                } else {
                    quic_rate
                };
                if rate < 1.0 {
                    eprintln!(
                        "  skipping open loop of {} on {}: no peak",
                        bench.name(),
                        system.name()
                    );
                    continue;
                }
                let report = measure(
                    &rig,
                    &args,
                    Phase::Open,
                    system,
                    bench,
                    Some(rate),
                    n,
                    total_cases,
                )
                .await?;
                cases.push(Case {
                    phase: Phase::Open,
                    system,
                    bench,
                    report,
                });
            }
        }
    }

    // 6. fsync: dotkv restarted with group-committed fsync, Redis always.
    if !fsync_benches.is_empty() {
        eprintln!("restarting dotkv with durability = \"fsync\"; Redis appendfsync always");
        rig.start_dotkv("fsync").await?;
        redis_config(&rig.redis_target, "appendfsync", "always").await?;
        for &bench in &fsync_benches {
            for system in System::ALL {
                n += 1;
                let report = measure(
                    &rig,
                    &args,
                    Phase::Fsync,
                    system,
                    bench,
                    None,
                    n,
                    total_cases,
                )
                .await?;
                cases.push(Case {
                    phase: Phase::Fsync,
                    system,
                    bench,
                    report,
                });
            }
        }
    }
    rig.quic.close().await;
    if let Some(d) = rig.dotkv.take() {
        d.stop().await?;
    }
    let redis_stopped = rig.redis.stop().await?;
    if !redis_stopped.success() {
        eprintln!("warning: Redis exited with {redis_stopped} when stopped");
    }
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    } else {
        drop(tmp);
    }
    let single_loadavg_end = loadavg();

    // 7. Replication.
    let replication = if args.skip_replication {
        None
    } else {
        eprintln!("replication: two datacenters through WAN relays");
        let repl = replication::Args {
            dotkv: Some(dotkv_bin.clone()),
            rate: 5000.0,
            duration: args.repl_duration,
            warmup: 3.0,
            delays: vec![0, 50],
            connections: 16,
            keys: 1000,
            partition_secs: args.repl_partition_secs,
            partition_rate: 500.0,
            partition_keys: 1000,
            partition_delay_ms: 50,
            request_timeout_ms: args.request_timeout_ms,
            seed: args.seed,
            keep: args.keep,
            json: None,
        };
        Some(replication::measure(&repl).await?)
    };
    let loadavg_end = loadavg();

    // Report.
    let ratios = ratios(&cases);
    let targets = target_checks(&cases, &ratios);
    let plot_path = args.out_dir.join(format!("{date}-latency.png"));
    let plot = match draw_plot(&cases, &args, &plot_path) {
        Ok(true) => Some(plot_path.display().to_string()),
        Ok(false) => None,
        Err(e) => {
            eprintln!("warning: no plot: {e:#}");
            None
        }
    };
    let results = Results {
        command: std::env::args().collect(),
        date: date.clone(),
        machine: MachineInfo {
            cpus,
            cpu_model,
            memory_gib: memory_gib(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            redis_version,
            dotkv: dotkv_bin.display().to_string(),
            loadavg_start,
            loadavg_end: format!("{single_loadavg_end} (single-node cases), {loadavg_end} (end)"),
            note: "load generator and servers share the machine's CPUs",
        },
        settings: Settings {
            connections: args.connections,
            quic_connections: args.quic_connections,
            duration_secs: args.duration_secs,
            warmup_secs: args.warmup_secs,
            records: args.records,
            value_bytes: args.value_bytes,
            zipfian_constant: crate::workload::ZIPFIAN_CONSTANT,
            counters: args.counters,
            sets: args.sets,
            open_loop_fraction: args.open_loop_fraction,
            series_ms: args.series_ms,
            redis: "appendonly yes; appendfsync no (fsync phase: always); no RDB snapshots",
            dotkv:
                "durability = \"wal\" (fsync phase: \"fsync\", group commit); defaults otherwise",
        },
        load,
        cases,
        ratios,
        targets,
        redis_benchmark,
        replication,
        plot,
    };

    let markdown = render_markdown(&results, &args);
    println!();
    println!("{markdown}");
    for c in &results.cases {
        warn_about(&c.report);
    }
    let json_path = args.out_dir.join(format!("{date}.json"));
    let text = serde_json::to_string_pretty(&results)?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("wrote {}", json_path.display());
    if let Some(p) = &results.plot {
        eprintln!("wrote {p}");
    }
    if !args.no_doc {
        update_doc(&args.doc, &markdown)?;
        eprintln!("updated the generated section of {}", args.doc.display());
    }
    Ok(())
}

fn check_args(args: &Args) -> Result<()> {
    if args.connections == 0 || args.quic_connections == 0 {
        bail!("--connections and --quic-connections must be at least 1");
    }
    if args.records == 0 || args.counters == 0 || args.sets == 0 {
        bail!("--records, --counters and --sets must be at least 1");
    }
    if !(args.duration_secs > 0.0 && args.duration_secs.is_finite()) {
        bail!("--duration-secs must be positive");
    }
    if !(0.0..f64::INFINITY).contains(&args.warmup_secs) {
        bail!("--warmup-secs must be a non-negative number");
    }
    if !(0.0..=1.0).contains(&args.open_loop_fraction) {
        bail!("--open-loop-fraction must be within 0..=1");
    }
    if args.series_ms == 0 {
        bail!("--series-ms must be at least 1");
    }
    Ok(())
}

fn workload(args: &Args, bench: Bench) -> Builtin {
    match bench {
        Bench::Ycsb(kind) => Builtin::Ycsb(Ycsb::new(kind, args.records, args.value_bytes)),
        Bench::Counter => Builtin::CounterAdd(CounterAdd {
            keys: args.counters,
        }),
        Bench::Set => Builtin::SetAdd(SetAdd::new(args.sets)),
    }
}

/// Run one case and print a line about it.
#[allow(clippy::too_many_arguments)]
async fn measure(
    rig: &Rig,
    args: &Args,
    phase: Phase,
    system: System,
    bench: Bench,
    rate: Option<f64>,
    n: usize,
    total: usize,
) -> Result<Report> {
    let w = workload(args, bench);
    let label = match phase {
        Phase::Closed => "closed",
        Phase::Open => "open",
        Phase::Fsync => "fsync",
    };
    let case = format!("{label} {} on {}", bench.name(), system.name());
    let cfg = LoadConfig {
        case: case.clone(),
        connections: args.connections,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        duration: Duration::from_secs_f64(args.duration_secs),
        rate,
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        server_pid: rig.pid(system),
        seed: args.seed,
        series_interval: Some(Duration::from_millis(args.series_ms)),
        coarse_timer: args.coarse_timer,
        pacing_quantum: Duration::from_micros(args.pacing_quantum_us),
    };
    eprintln!(
        "[{n}/{total}] {case}{}, load average {}",
        rate.map(|r| format!(" at {r:.0}/s")).unwrap_or_default(),
        loadavg()
    );
    let report = rig.run(system, w, &cfg).await;
    eprintln!(
        "    {:.0} ops/s, p50 {}, p99 {}, p99.9 {}, {} errors, CPU bench {} server {} irq {} other {}",
        report.ops_per_sec,
        fmt_us(report.latency_us.p50),
        fmt_us(report.latency_us.p99),
        fmt_us(report.latency_us.p999),
        report.errors,
        cores(report.cpu.map(|c| c.bench_cores)),
        cores(report.cpu.and_then(|c| c.server_cores)),
        cores(report.cpu.and_then(|c| c.irq_cores)),
        cores(report.cpu.and_then(|c| c.other_cores)),
    );
    Ok(report)
}

/// Write every YCSB record once, `concurrency` writers in parallel; the
/// seconds it took.
async fn load_records<T: Target>(target: Arc<T>, ycsb: &Ycsb, concurrency: usize) -> Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let target = target.clone();
        let ycsb = ycsb.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = target.connect().await?;
            for op in ycsb.load_ops().skip(i).step_by(concurrency) {
                match conn.execute(&op).await? {
                    Answer::Ok => {}
                    Answer::Rejected { status, detail } => {
                        bail!("{op:?}: status {status}: {detail}")
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let all = async {
        for t in tasks {
            t.await.context("a loader task failed")??;
        }
        Ok::<_, anyhow::Error>(())
    };
    timeout(LOAD_DEADLINE, all)
        .await
        .map_err(|_| anyhow!("loading took over {LOAD_DEADLINE:?}"))??;
    Ok(start.elapsed().as_secs_f64())
}

/// Start dotkv on `dir` with HTTP on a free port and QUIC on `quic`, and
/// wait until it is healthy.
async fn start_dotkv(
    bin: &Path,
    dir: &Path,
    durability: &str,
    quic: SocketAddr,
    (ca, cert, key): (&Path, &Path, &Path),
) -> Result<Server> {
    let config = dir.join(format!("dotkv-{durability}.toml"));
    let text = format!(
        "[node]\nname = \"bench-node\"\ndata_dir = {data:?}\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [storage]\ndurability = {durability:?}\n\n\
         [log]\nlevel = \"warn\"\n\n\
         [quic]\nlisten = \"{quic}\"\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
        data = dir.join("dotkv-data").display().to_string(),
        ca = ca.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    serve_config(bin, dir, durability, config, &text).await
}

/// Start Redis with the AOF on and no fsync, no RDB snapshots, on `addr`,
/// and wait until it answers PING.
async fn start_redis(bin: &Path, dir: &Path, addr: SocketAddr) -> Result<Server> {
    let args: Vec<OsString> = [
        "--port",
        &addr.port().to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.display().to_string(),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--logfile",
        "",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let server = Server::start(Spawn {
        name: "redis-server",
        program: bin,
        args,
        ready_prefix: "Ready to accept connections",
        ready_within: STARTUP_DEADLINE,
        known_addr: Some(addr),
        log: Some(dir.join("redis-stderr.log")),
    })
    .await?;
    let target = RedisTarget::new(addr);
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let ping = async {
            let mut c = target.connect().await?;
            c.command(&[b"PING"]).await
        };
        match timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(Reply::Simple(s))) if s == "PONG" => return Ok(server),
            other if Instant::now() >= deadline => {
                bail!("Redis at {addr} does not answer PING: {other:?}")
            }
            _ => sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `CONFIG SET name value` on Redis.
async fn redis_config(target: &RedisTarget, name: &str, value: &str) -> Result<()> {
    let mut c = target.connect().await?;
    match c
        .command(&[b"CONFIG", b"SET", name.as_bytes(), value.as_bytes()])
        .await?
    {
        Reply::Simple(s) if s == "OK" => Ok(()),
        other => bail!("CONFIG SET {name} {value}: {other:?}"),
    }
}

async fn redis_version(bin: &Path) -> Result<String> {
    let out = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await?;
    if !out.status.success() {
        bail!("exited with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `redis-benchmark` against `addr`: GET, SET, INCR and SADD with the
/// suite's concurrency and value size, random keys over the record count.
async fn run_redis_benchmark(args: &Args, addr: SocketAddr) -> Result<RedisBenchmark> {
    let cli: Vec<String> = vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-c".into(),
        args.connections.to_string(),
        "-n".into(),
        args.redis_benchmark_requests.to_string(),
        "-d".into(),
        args.value_bytes.to_string(),
        "-r".into(),
        args.records.to_string(),
        "-t".into(),
        "get,set,incr,sadd".into(),
        "--csv".into(),
    ];
    let command = format!("{} {}", args.redis_benchmark.display(), cli.join(" "));
    eprintln!("cross-check: {command}");
    let out = timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&args.redis_benchmark)
            .args(&cli)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("redis-benchmark took over 300 s"))??;
    if !out.status.success() {
        bail!(
            "redis-benchmark exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = parse_redis_benchmark_csv(&String::from_utf8_lossy(&out.stdout));
    if rows.is_empty() {
        bail!("no results in its output");
    }
    for (test, rps, p50, p99) in &rows {
        eprintln!("    {test}: {rps:.0} requests/s, p50 {p50} ms, p99 {p99} ms");
    }
    Ok(RedisBenchmark { command, rows })
}

/// Rows of `redis-benchmark --csv`: `"test","rps","avg_latency_ms",
/// "min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",..`.
fn parse_redis_benchmark_csv(text: &str) -> Vec<(String, f64, f64, f64)> {
    let mut header: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<String> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"').to_owned())
            .collect();
        if cells.first().is_some_and(|c| c == "test") {
            header = cells;
            continue;
        }
        let col = |name: &str| -> Option<f64> {
            let i = header.iter().position(|h| h == name)?;
            cells.get(i)?.parse().ok()
        };
        if let (Some(rps), Some(test)) = (col("rps"), cells.first()) {
            rows.push((
                test.clone(),
                rps,
                col("p50_latency_ms").unwrap_or(f64::NAN),
                col("p99_latency_ms").unwrap_or(f64::NAN),
            ));
        }
    }
    rows
}

fn find(cases: &[Case], phase: Phase, system: System, bench: Bench) -> Option<&Case> {
    cases
        .iter()
        .find(|c| c.phase == phase && c.system == system && c.bench == bench)
}

fn ratios(cases: &[Case]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for phase in [Phase::Closed, Phase::Fsync] {
        let mut benches: Vec<Bench> = Vec::new();
        for c in cases.iter().filter(|c| c.phase == phase) {
            if !benches.contains(&c.bench) {
                benches.push(c.bench);
            }
        }
        for bench in benches {
            let ops = |s| find(cases, phase, s, bench).map_or(0.0, |c| c.report.ops_per_sec);
            let redis = ops(System::Redis);
            let ratio = |x: f64| if redis > 0.0 { x / redis } else { 0.0 };
            out.push(Ratio {
                phase,
                bench,
                redis_ops_per_sec: redis,
                quic_ops_per_sec: ops(System::DotkvQuic),
                http_ops_per_sec: ops(System::DotkvHttp),
                quic_ratio: ratio(ops(System::DotkvQuic)),
                http_ratio: ratio(ops(System::DotkvHttp)),
            });
        }
    }
    out
}

fn target_checks(cases: &[Case], ratios: &[Ratio]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for r in ratios
        .iter()
        .filter(|r| r.phase == Phase::Closed && r.bench.has_throughput_target())
    {
        out.push(TargetCheck {
            what: format!("{}: dotkv QUIC vs Redis", r.bench.name()),
            figure: format!(
                "{:.2}× ({:.0} vs {:.0} ops/s)",
                r.quic_ratio, r.quic_ops_per_sec, r.redis_ops_per_sec
            ),
            target: format!("≥ {QUIC_TARGET}×"),
            met: r.quic_ratio >= QUIC_TARGET,
        });
        out.push(TargetCheck {
            what: format!("{}: dotkv HTTP vs Redis", r.bench.name()),
            figure: format!(
                "{:.2}× ({:.0} vs {:.0} ops/s)",
                r.http_ratio, r.http_ops_per_sec, r.redis_ops_per_sec
            ),
            target: format!("≥ {HTTP_TARGET}×"),
            met: r.http_ratio >= HTTP_TARGET,
        });
    }
    for c in cases
        .iter()
        .filter(|c| c.phase == Phase::Open && c.system != System::Redis)
    {
        let r = &c.report;
        // Falling behind the rate means the latencies are a lower bound.
        let kept_up = r.unsent <= r.connections as u64 && r.errors == 0;
        out.push(TargetCheck {
            what: format!(
                "{} on {}, open loop at {:.0}/s",
                c.bench.name(),
                c.system.name(),
                r.rate.unwrap_or(0.0)
            ),
            figure: format!(
                "p99 {}{}",
                fmt_us(r.latency_us.p99),
                if kept_up { "" } else { " (did not keep up)" }
            ),
            target: "p99 < 2 ms".into(),
            met: kept_up && r.latency_us.p99 < OPEN_P99_TARGET_US,
        });
    }
    out
}

/// p99 over time of the open-loop cases, one panel per workload.
fn draw_plot(cases: &[Case], args: &Args, path: &Path) -> Result<bool> {
    let mut panels = Vec::new();
    let mut benches: Vec<Bench> = Vec::new();
    for c in cases.iter().filter(|c| c.phase == Phase::Open) {
        if !benches.contains(&c.bench) {
            benches.push(c.bench);
        }
    }
    let half = args.series_ms as f64 / 2000.0;
    for bench in benches {
        let mut series = Vec::new();
        let mut rates = Vec::new();
        for system in [System::DotkvQuic, System::DotkvHttp, System::Redis] {
            let Some(c) = find(cases, Phase::Open, system, bench) else {
                continue;
            };
            rates.push(format!(
                "{} {:.0}K/S",
                match system {
                    System::DotkvQuic => "Q",
                    System::DotkvHttp => "H",
                    System::Redis => "R",
                },
                c.report.rate.unwrap_or(0.0) / 1000.0
            ));
            series.push(Series {
                label: format!("{} p99", system.name()),
                color: match system {
                    System::DotkvQuic => [31, 100, 200],
                    System::DotkvHttp => [230, 130, 20],
                    System::Redis => [200, 40, 40],
                },
                points: c
                    .report
                    .series
                    .iter()
                    .filter(|p| p.ops > 0)
                    // Each point at the middle of its interval.
                    .map(|p| (p.t_secs + half, p.p99_us / 1000.0))
                    .collect(),
            });
        }
        panels.push(Panel {
            title: format!("{}  ({})", bench.name(), rates.join(", ")),
            series,
            target: Some((OPEN_P99_TARGET_US / 1000.0, "target 2 ms".into())),
        });
    }
    if panels.is_empty() {
        return Ok(false);
    }
    let title = format!(
        "p99 latency over time, open loop at {:.0}% of the dotkv peak ({} ms intervals)",
        args.open_loop_fraction * 100.0,
        args.series_ms
    );
    let png = Chart {
        title: &title,
        x_label: "seconds into the measured window",
        y_label: "ms (log)",
        panels: &panels,
        columns: 3,
        x_max: Some(args.duration_secs),
    }
    .to_png();
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

fn cpu_cells(r: &Report) -> [String; 4] {
    [
        cores(r.cpu.map(|c| c.bench_cores)),
        cores(r.cpu.and_then(|c| c.server_cores)),
        cores(r.cpu.and_then(|c| c.irq_cores)),
        cores(r.cpu.and_then(|c| c.other_cores)),
    ]
}

fn render_markdown(results: &Results, args: &Args) -> String {
    let m = &results.machine;
    let s = &results.settings;
    let mut out = String::new();
    out.push_str(&format!(
        "Generated by `dotkv-bench suite` on {} (UTC). Command: `{}`. Results: `{}`.\n\n",
        results.date,
        results.command.join(" "),
        args.out_dir
            .join(format!("{}.json", results.date))
            .display()
    ));
    out.push_str(&format!(
        "Machine: {} CPUs ({}), {:.0} GiB, Linux {}; {}. The load generator and the servers \
         share the CPUs. Load average (1, 5, 15 min) {} at the start, {}.\n\n",
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        m.redis_version,
        m.loadavg_start,
        m.loadavg_end
    ));
    out.push_str(&format!(
        "Settings: {} connections, one op in flight each (dotkv QUIC: {} streams over {} QUIC \
         connection{}); {} s warm-up and {} s measured per case; YCSB: {} records of {} B, \
         zipfian keys (constant {}); counters: {} keys, sets: {} sets, uniform; Redis: {}; \
         dotkv: {}.\n\n",
        s.connections,
        s.connections,
        s.quic_connections,
        if s.quic_connections == 1 { "" } else { "s" },
        s.warmup_secs,
        s.duration_secs,
        s.records,
        s.value_bytes,
        s.zipfian_constant,
        s.counters,
        s.sets,
        s.redis,
        s.dotkv
    ));
    if !results.load.is_empty() {
        let parts: Vec<String> = results
            .load
            .iter()
            .map(|l| {
                format!(
                    "{} in {:.1} s ({:.0} records/s)",
                    l.system, l.secs, l.records_per_sec
                )
            })
            .collect();
        out.push_str(&format!("Load phase: {}.\n\n", parts.join(", ")));
    }

    for (phase, title) in [
        (
            Phase::Closed,
            "Closed loop (peak throughput), no fsync: dotkv `wal`, Redis `appendfsync no`",
        ),
        (
            Phase::Fsync,
            "Closed loop with fsync: dotkv `fsync` (group commit), Redis `appendfsync always`",
        ),
    ] {
        if !results.cases.iter().any(|c| c.phase == phase) {
            continue;
        }
        out.push_str(&format!("#### {title}\n\n"));
        let mut t = Table::new(&[
            "workload",
            "QUIC ÷ Redis",
            "HTTP ÷ Redis",
            "Redis ops/s",
            "dotkv QUIC ops/s",
            "dotkv HTTP ops/s",
        ]);
        for r in results.ratios.iter().filter(|r| r.phase == phase) {
            t.row(vec![
                r.bench.name(),
                format!("**{:.2}×**", r.quic_ratio),
                format!("**{:.2}×**", r.http_ratio),
                thousands(r.redis_ops_per_sec as u64),
                thousands(r.quic_ops_per_sec as u64),
                thousands(r.http_ops_per_sec as u64),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
        let mut t = Table::new(&[
            "workload",
            "system",
            "ops/s",
            "p50",
            "p99",
            "p99.9",
            "errors",
            "CPU bench",
            "CPU server",
            "CPU irq",
            "CPU other",
        ]);
        for c in results.cases.iter().filter(|c| c.phase == phase) {
            let r = &c.report;
            let [b, sv, irq, o] = cpu_cells(r);
            t.row(vec![
                c.bench.name(),
                c.system.name().into(),
                thousands(r.ops_per_sec as u64),
                fmt_us(r.latency_us.p50),
                fmt_us(r.latency_us.p99),
                fmt_us(r.latency_us.p999),
                r.errors.to_string(),
                b,
                sv,
                irq,
                o,
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }

    if results.cases.iter().any(|c| c.phase == Phase::Open) {
        out.push_str(&format!(
            "#### Open loop at {:.0}% of dotkv's peak (Redis at dotkv QUIC's rate)\n\n",
            s.open_loop_fraction * 100.0
        ));
        let mut t = Table::new(&[
            "workload",
            "system",
            "rate asked",
            "ops/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "errors",
            "unsent",
            "CPU bench",
            "CPU server",
            "CPU other",
        ]);
        for c in results.cases.iter().filter(|c| c.phase == Phase::Open) {
            let r = &c.report;
            let [b, sv, _, o] = cpu_cells(r);
            t.row(vec![
                c.bench.name(),
                c.system.name().into(),
                format!("{:.0}", r.rate.unwrap_or(0.0)),
                thousands(r.ops_per_sec as u64),
                fmt_us(r.latency_us.p50),
                fmt_us(r.latency_us.p99),
                fmt_us(r.latency_us.p999),
                fmt_us(r.latency_us.max),
                r.errors.to_string(),
                r.unsent.to_string(),
                b,
                sv,
                o,
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
        if let Some(p) = &results.plot {
            out.push_str(&format!(
                "![p99 latency over time, open loop]({})\n\n",
                link_from(&args.doc, Path::new(p))
            ));
        }
    }

    if let Some(rb) = &results.redis_benchmark {
        out.push_str("#### Cross-check: `redis-benchmark` against the same Redis\n\n");
        out.push_str(&format!("`{}`\n\n", rb.command));
        let ours = |bench: Bench| {
            find(&results.cases, Phase::Closed, System::Redis, bench)
                .map_or_else(|| "-".into(), |c| thousands(c.report.ops_per_sec as u64))
        };
        let mut t = Table::new(&[
            "redis-benchmark test",
            "requests/s",
            "p50",
            "p99",
            "dotkv-bench on Redis, closest workload",
        ]);
        for (test, rps, p50, p99) in &rb.rows {
            let closest = match test.as_str() {
                "GET" => format!("YCSB C: {}", ours(Bench::Ycsb(YcsbKind::C))),
                "SET" => format!("YCSB A (half SET): {}", ours(Bench::Ycsb(YcsbKind::A))),
                "INCR" => format!("counter add: {}", ours(Bench::Counter)),
                "SADD" => format!("set add: {}", ours(Bench::Set)),
                _ => "-".into(),
            };
            t.row(vec![
                test.clone(),
                thousands(*rps as u64),
                format!("{p50:.3} ms"),
                format!("{p99:.3} ms"),
                closest,
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }

    if let Some(r) = &results.replication {
        out.push_str("#### Replication (two datacenters through WAN relays)\n\n");
        out.push_str(&replication::report_markdown(r));
        out.push('\n');
    }

    out.push_str("#### Targets\n\n");
    let mut t = Table::new(&["target", "figure", "required", "status"]);
    for c in &results.targets {
        t.row(vec![
            c.what.clone(),
            c.figure.clone(),
            c.target.clone(),
            if c.met { "met" } else { "**MISSED**" }.into(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `target` as a Markdown link from the directory of `doc` (both relative
/// to the working directory, as `make bench` passes them).
fn link_from(doc: &Path, target: &Path) -> String {
    let depth = doc.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count()
    });
    let mut s = "../".repeat(depth);
    s.push_str(&target.display().to_string());
    s
}

/// Replace the generated section of `doc` (between the markers) with
/// `markdown`, or append a section holding it.
fn update_doc(doc: &Path, markdown: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    let block = format!("{BEGIN}\n\n{}\n{END}", markdown.trim_end());
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + END.len()..]),
        _ => format!(
            "{}\n\n## dotkv and Redis side by side (`make bench`)\n\n{block}\n",
            text.trim_end()
        ),
    };
    std::fs::write(doc, new).with_context(|| format!("writing {}", doc.display()))
}

fn free_udp_addr() -> Result<SocketAddr> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free UDP port")?;
    Ok(s.local_addr()?)
}

fn free_tcp_addr() -> Result<SocketAddr> {
    let l = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port")?;
    Ok(l.local_addr()?)
}

fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / (1024.0 * 1024.0))
        })
        .unwrap_or(0.0)
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date `days` days after 1970-01-01: count whole
/// 400-year eras (146,097 days each) from 0000-03-01, so that the leap day
/// falls at the end of a year that starts in March.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month, March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn parses_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"81234.50\",\"0.400\",\"0.100\",\"0.391\",\"0.600\",\"0.800\",\"3.000\"\n\
                    \"GET\",\"90000.00\",\"0.300\",\"0.100\",\"0.295\",\"0.500\",\"0.700\",\"2.000\"\n";
        let rows = parse_redis_benchmark_csv(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "SET");
        assert_eq!(rows[0].1, 81234.5);
        assert_eq!(rows[0].2, 0.391);
        assert_eq!(rows[1].3, 0.7);
    }

    #[test]
    fn doc_section_is_replaced_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("P.md");
        std::fs::write(&doc, "# Title\n\nkeep me\n").unwrap();
        update_doc(&doc, "first").unwrap();
        let t = std::fs::read_to_string(&doc).unwrap();
        assert!(t.starts_with("# Title\n\nkeep me\n"));
        assert!(t.contains("first"));
        std::fs::write(&doc, format!("{t}\n## After\n\ntail\n")).unwrap();
        update_doc(&doc, "second").unwrap();
        let t = std::fs::read_to_string(&doc).unwrap();
        assert!(!t.contains("first") && t.contains("second"));
        assert!(t.contains("keep me") && t.ends_with("tail\n"));
        assert_eq!(t.matches(BEGIN).count(), 1);
    }

    #[test]
    fn links_climb_out_of_the_doc_directory() {
        assert_eq!(
            link_from(
                Path::new("docs/PERFORMANCE.md"),
                Path::new("bench/results/x.png")
            ),
            "../bench/results/x.png"
        );
    }

    #[test]
    fn benches_parse() {
        assert_eq!(Bench::parse("a").unwrap(), Bench::Ycsb(YcsbKind::A));
        assert_eq!(Bench::parse("ycsb-f").unwrap(), Bench::Ycsb(YcsbKind::F));
        assert_eq!(Bench::parse("counter").unwrap(), Bench::Counter);
        assert!(Bench::parse("d").is_err());
    }
}
