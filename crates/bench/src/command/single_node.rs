//! `dotkv-bench single-node`: one dotkv node over HTTP, measured side by side
//! with the ceiling of its HTTP stack, in one run.
//!
//! 1. The `hello` server (axum, `GET /`) under the same generator and
//!    connection count gives the ceiling. It is measured before the dotkv
//!    cases and again after them, and the ceiling is the mean of the two:
//!    on a shared virtual machine the speed of both cores drifts by a fifth
//!    or more within minutes, and one hello run taken before all the cases
//!    would compare each of them with a machine that has since changed.
//! 2. dotkv with `durability = "wal"`: counter add, register put, set add of
//!    unique elements, register get; each as ops/s, latency and % of the
//!    ceiling (target: at least 60%).
//! 3. dotkv restarted on the same data with `durability = "fsync"`: counter
//!    add with one connection, then with many, then with one again. Group
//!    commit should make many writers share each fsync (target: at least 20×
//!    the single-writer rate). The single-writer rate is the mean of the two
//!    single-connection runs, taken on both sides of the many writers for the
//!    reason hello is: a virtual disk's fsync time drifts within minutes, and
//!    the ratio moves with it.
//!    For reference, the same single-connection case under `wal` (measured in
//!    step 2) shows what one writer reaches when the fsync is free, and
//!    dotkv's own `/metrics` give the writes per commit and the commit time.
//! 4. The same group commit in the storage layer: dotkv's writer, linked
//!    into this process and driven by 1, then many, then 1 task again, with
//!    no HTTP in between ([`crate::group_commit`]). Over HTTP on two shared cores,
//!    the many writers are bounded by the HTTP path's CPU before the fsync;
//!    this case shows what group commit does on its own (same target).
//!
//! All servers are child processes, stopped at the end and killed on any
//! error or interruption; only step 4 links dotkv's storage crate.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::command::run::{warn_about, LoadArgs};
use crate::generator::{self, LoadConfig};
use crate::group_commit::{self, WriterCase};
use crate::process::{Server, Spawn};
use crate::stats::{self, fmt_us, rate_cells, rate_columns, Report, Table};
use crate::target::{Answer, Connection, HttpTarget, Target};
use crate::workload::{CounterAdd, Ping, RegisterGet, RegisterPut, SetAdd, Workload};

/// The share of the HTTP ceiling each dotkv case should reach.
const CEILING_TARGET_PCT: f64 = 60.0;
/// How much faster many fsync writers should be than one.
const FSYNC_RATIO_TARGET: f64 = 20.0;
/// Longest wait for a server to print its address, and then to be healthy.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest time the register prefill may take.
const PREFILL_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dotkv binary. Default: `dotkv` next to this executable.
    #[arg(long, env = "DOTKV_BIN")]
    pub dotkv: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Connections of the many-writers fsync case.
    #[arg(long, default_value_t = 64)]
    pub fsync_connections: usize,
    /// Counters and registers the write and read cases spread over.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Sets the set-add case spreads over.
    #[arg(long, default_value_t = 100)]
    pub sets: u64,
    /// Register value size on the wire (a JSON string, quotes included).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Write all results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Everything one run measured, as written to `--json`.
#[derive(Debug, Serialize)]
struct Results {
    command: Vec<String>,
    machine: Machine,
    dotkv: String,
    /// The hello server before the dotkv cases, and after them.
    hello: Case,
    hello_after: Case,
    /// The mean of the two hello runs' ops/s: what `pct_of_hello` divides by.
    ceiling_ops_per_sec: f64,
    /// The HTTP cases under `durability = "wal"`, compared with the ceiling.
    wal: Vec<Case>,
    fsync: FsyncResult,
    /// Group commit in the storage layer, without HTTP (step 4).
    fsync_storage: StorageFsyncResult,
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct StorageFsyncResult {
    one: WriterCase,
    many: WriterCase,
    one_after: WriterCase,
    /// `many` writes/s ÷ the mean writes/s of `one` and `one_after`.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    note: &'static str,
}

/// One measurement, with what the server said about it.
#[derive(Debug, Serialize)]
struct Case {
    report: Report,
    /// ops/s as a percentage of the ceiling (the hello server's ops/s).
    pct_of_hello: Option<f64>,
    /// dotkv's write path during the case (warm-up included), from its
    /// `/metrics` before and after.
    storage: Option<StorageStats>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct StorageStats {
    write_requests: f64,
    commits: f64,
    /// Writes that shared one commit (one WAL write, one fsync), on average.
    writes_per_commit: f64,
    /// Mean time of one commit in the writer (WAL write, and fsync if asked).
    commit_us: f64,
}

#[derive(Debug, Serialize)]
struct FsyncResult {
    /// Reference: counter add on one connection without fsync (`wal`), the
    /// most the single fsync writer could reach if fsync were free.
    wal_one: Case,
    one: Case,
    many: Case,
    /// One connection again, after `many`.
    one_after: Case,
    /// `many` ops/s ÷ the mean ops/s of `one` and `one_after`.
    ratio: f64,
    /// The ratio the node's counter adds without fsync (the `wal` case at
    /// the suite's connections) would give over the same single writer: if
    /// every fsync were shared perfectly, the many writers would run at the
    /// node's write rate without fsync, so over HTTP `ratio` stays below it.
    ratio_at_wal_rate: f64,
    /// `many` ops/s as a percentage of those counter adds without fsync.
    many_pct_of_wal: f64,
}

#[derive(Debug, Serialize)]
struct Targets {
    pct_of_hello_min: f64,
    pct_of_hello_met: bool,
    fsync_ratio_min: f64,
    fsync_ratio_met: bool,
    /// The same target for group commit in the storage layer.
    fsync_storage_ratio_met: bool,
}

pub async fn run(args: Args) -> Result<()> {
    // On Ctrl-C, return an error so every `Server` guard drops and kills its
    // child (a signal would otherwise end the process without destructors).
    tokio::select! {
        r = run_inner(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; servers stopped"),
    }
}

async fn run_inner(args: Args) -> Result<()> {
    let me = std::env::current_exe().context("finding this executable")?;
    let dotkv = match &args.dotkv {
        Some(p) => p.clone(),
        None => me.with_file_name("dotkv"),
    };
    if !dotkv.is_file() {
        bail!(
            "no dotkv binary at {} (build it with `cargo build --release --bin dotkv`, or pass --dotkv)",
            dotkv.display()
        );
    }
    let machine = machine();
    let conns = args.load.connections;
    let many = args.fsync_connections;
    eprintln!(
        "machine: {} CPUs, {}; client and server share them",
        machine.cpus, machine.cpu_model
    );

    // 1. The ceiling (measured again after step 2).
    eprintln!("[1/4] hello ceiling, {conns} connections");
    let hello = measure_hello(&me, &args, "hello (GET /), before").await?;

    // 2. dotkv, durability = wal.
    let dir = tempfile::Builder::new()
        .prefix("dotkv-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    eprintln!(
        "[2/4] dotkv (wal) in {}, {conns} connections",
        dir.path().display()
    );
    let node = start_dotkv(&dotkv, dir.path(), "wal").await?;
    let target = HttpTarget::new(node.addr);
    let put = RegisterPut::new(args.keys, args.value_bytes);
    let counter = CounterAdd { keys: args.keys };
    let cfg = |case: &str, n: usize, pid: u32| args.load.config(case, n, Some(pid));
    let mut wal = vec![
        measure(
            &target,
            counter.clone(),
            cfg("counter add", conns, node.pid)?,
            true,
        )
        .await,
        measure(
            &target,
            put.clone(),
            cfg("register put", conns, node.pid)?,
            true,
        )
        .await,
        measure(
            &target,
            SetAdd::new(args.sets),
            cfg("set add", conns, node.pid)?,
            true,
        )
        .await,
    ];
    // Reads must find every key: write each once more, so a 404 can only be a bug.
    prefill(&target, &put).await?;
    wal.push(
        measure(
            &target,
            RegisterGet { keys: args.keys },
            cfg("register get", conns, node.pid)?,
            true,
        )
        .await,
    );
    let wal_one = measure(
        &target,
        counter.clone(),
        cfg("wal counter add, 1 conn", 1, node.pid)?,
        true,
    )
    .await;
    node.stop().await?;
    eprintln!("  the hello ceiling again, {conns} connections");
    let hello_after = measure_hello(&me, &args, "hello (GET /), after").await?;
    let ceiling = (hello.report.ops_per_sec + hello_after.report.ops_per_sec) / 2.0;
    for c in &mut wal {
        c.pct_of_hello = Some(stats::pct(c.report.ops_per_sec, ceiling));
    }

    // 3. The same node restarted with durability = fsync.
    eprintln!("[3/4] dotkv (fsync), counter add with 1, {many} and 1 connections");
    let node = start_dotkv(&dotkv, dir.path(), "fsync").await?;
    let target = HttpTarget::new(node.addr);
    let one = measure(
        &target,
        counter.clone(),
        cfg("fsync counter add, 1 conn", 1, node.pid)?,
        true,
    )
    .await;
    let many_r = measure(
        &target,
        counter.clone(),
        cfg(&format!("fsync counter add, {many} conns"), many, node.pid)?,
        true,
    )
    .await;
    let one_after = measure(
        &target,
        counter.clone(),
        cfg("fsync counter add, 1 conn, after", 1, node.pid)?,
        true,
    )
    .await;
    node.stop().await?;
    let ratio = group_commit::ratio(
        many_r.report.ops_per_sec,
        one.report.ops_per_sec,
        one_after.report.ops_per_sec,
    );
    // The first `wal` case is counter adds, the workload of the fsync cases.
    let wal_adds = wal[0].report.ops_per_sec;
    let ratio_at_wal_rate = group_commit::ratio(
        wal_adds,
        one.report.ops_per_sec,
        one_after.report.ops_per_sec,
    );
    let many_pct_of_wal = stats::pct(many_r.report.ops_per_sec, wal_adds);

    // 4. Group commit in the storage layer.
    eprintln!("[4/4] dotkv's writer in this process (fsync), 1, {many} and 1 writers, no HTTP");
    let load = args.load.config("storage", 1, None)?;
    let (s_one, s_many, s_one_after) = group_commit::one_many_one(
        &dir.path().join("storage"),
        many,
        args.keys,
        load.warmup,
        load.duration,
    )
    .await?;
    let s_ratio = group_commit::ratio(
        s_many.ops_per_sec,
        s_one.ops_per_sec,
        s_one_after.ops_per_sec,
    );

    // Report.
    let command: Vec<String> = std::env::args().collect();
    println!();
    println!("command: {}", command.join(" "));
    println!(
        "machine: {} CPUs, {} (client and server share them)",
        machine.cpus, machine.cpu_model
    );
    println!();
    let mut t = Table::new(&rate_columns(
        &["case", "conns"],
        &["% of hello", "CPU bench", "CPU server", "CPU other"],
    ));
    t.row(http_row(&hello));
    t.row(http_row(&hello_after));
    for c in &wal {
        t.row(http_row(c));
    }
    print!("{}", t.render());
    println!(
        "ceiling: {ceiling:.0} ops/s, the mean of the two hello runs ({:.0} before, {:.0} after)",
        hello.report.ops_per_sec, hello_after.report.ops_per_sec
    );
    println!();
    let mut t = Table::new(&rate_columns(
        &["durability case", "conns"],
        &["writes/commit", "commit time", "CPU bench", "CPU server"],
    ));
    for c in [&wal_one, &one, &many_r, &one_after] {
        t.row(durability_row(c));
    }
    print!("{}", t.render());
    println!();

    let worst = wal
        .iter()
        .filter_map(|c| c.pct_of_hello)
        .fold(f64::INFINITY, f64::min);
    let pct_met = worst >= CEILING_TARGET_PCT;
    let ratio_met = ratio >= FSYNC_RATIO_TARGET;
    println!(
        "HTTP ceiling: lowest dotkv case at {worst:.0}% of hello (target >= {CEILING_TARGET_PCT:.0}%): {}",
        if pct_met { "met" } else { "MISSED" }
    );
    println!(
        "fsync group commit: {many} conns / 1 conn (mean of before and after) = {ratio:.1}x (target >= {FSYNC_RATIO_TARGET:.0}x): {}",
        if ratio_met { "met" } else { "MISSED" }
    );
    println!(
        "  the {many} fsynced writers ran at {many_pct_of_wal:.0}% of the counter adds without fsync ({wal_adds:.0} ops/s, {conns} conns), which over the same single writer would be {ratio_at_wal_rate:.1}x, about the most group commit can give over HTTP on this machine"
    );
    let mut t = Table::new(&rate_columns(
        &["storage-layer case (fsync)", "writers"],
        &["writes/commit"],
    ));
    for (c, when) in [(&s_one, ""), (&s_many, ""), (&s_one_after, ", after")] {
        let mut row = vec![
            format!("counter add, {} writer(s), no HTTP{when}", c.writers),
            c.writers.to_string(),
        ];
        row.extend(rate_cells(c.ops_per_sec, &c.latency_us, c.errors));
        row.push(format!("{:.1}", c.writes_per_commit));
        t.row(row);
    }
    println!();
    print!("{}", t.render());
    let s_ratio_met = s_ratio >= FSYNC_RATIO_TARGET;
    println!(
        "fsync group commit in the storage layer: {many} writers / 1 writer (mean of before and after) = {s_ratio:.1}x (target >= {FSYNC_RATIO_TARGET:.0}x): {}",
        if s_ratio_met { "met" } else { "MISSED" }
    );
    for c in [&hello, &hello_after]
        .into_iter()
        .chain(&wal)
        .chain([&wal_one, &one, &many_r, &one_after])
    {
        warn_about(&c.report);
    }
    for c in [&s_one, &s_many, &s_one_after] {
        if c.errors > 0 || c.ops == 0 {
            eprintln!(
                "warning: the storage-layer case with {} writer(s) had {} errors and {} writes",
                c.writers, c.errors, c.ops
            );
        }
    }

    if let Some(path) = &args.json {
        let results = Results {
            command,
            machine,
            dotkv: dotkv.display().to_string(),
            hello,
            hello_after,
            ceiling_ops_per_sec: ceiling,
            wal,
            fsync: FsyncResult {
                wal_one,
                one,
                many: many_r,
                one_after,
                ratio,
                ratio_at_wal_rate,
                many_pct_of_wal,
            },
            fsync_storage: StorageFsyncResult {
                one: s_one,
                many: s_many,
                one_after: s_one_after,
                ratio: s_ratio,
            },
            targets: Targets {
                pct_of_hello_min: CEILING_TARGET_PCT,
                pct_of_hello_met: pct_met,
                fsync_ratio_min: FSYNC_RATIO_TARGET,
                fsync_ratio_met: ratio_met,
                fsync_storage_ratio_met: s_ratio_met,
            },
        };
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Start the hello server, measure it as `case`, and stop it.
async fn measure_hello(me: &Path, args: &Args, case: &str) -> Result<Case> {
    let conns = args.load.connections;
    let server = Server::start(Spawn {
        name: "hello",
        program: me,
        args: vec!["hello".into(), "--listen".into(), "127.0.0.1:0".into()],
        ready_prefix: "hello: listening on http://",
        ready_within: STARTUP_DEADLINE,
        known_addr: None,
        log: None,
    })
    .await?;
    let hello = measure(
        &HttpTarget::new(server.addr),
        Ping,
        args.load.config(case, conns, Some(server.pid))?,
        false,
    )
    .await;
    server.stop().await?;
    if hello.report.ops == 0 {
        bail!("the hello server answered nothing; no ceiling to compare with");
    }
    Ok(hello)
}

/// Run one case; with `storage`, also read dotkv's write-path counters
/// before and after.
async fn measure<W: Workload>(
    target: &HttpTarget,
    workload: W,
    cfg: LoadConfig,
    storage: bool,
) -> Case {
    eprintln!(
        "  {} [{}]: {:?} warm-up, {:?} measured ...",
        cfg.case,
        workload.name(),
        cfg.warmup,
        cfg.duration
    );
    let before = if storage { scrape(target).await } else { None };
    let report = generator::run(Arc::new(target.clone()), Arc::new(workload), &cfg).await;
    let after = if storage { scrape(target).await } else { None };
    eprintln!(
        "    {:.0} ops/s, p50 {}, p99 {}, p99.9 {}, {} errors",
        report.ops_per_sec,
        fmt_us(report.latency_us.p50),
        fmt_us(report.latency_us.p99),
        fmt_us(report.latency_us.p999),
        report.errors
    );
    Case {
        report,
        pct_of_hello: None,
        storage: before.zip(after).and_then(|(a, b)| storage_delta(&a, &b)),
    }
}

/// dotkv's unlabelled metrics (name → value), or `None` if unavailable.
async fn scrape(target: &HttpTarget) -> Option<HashMap<String, f64>> {
    let work = async {
        let mut c = target.connect().await.ok()?;
        match c.get("/metrics").await.ok()? {
            (200, body) => Some(parse_metrics(&String::from_utf8_lossy(&body))),
            _ => None,
        }
    };
    timeout(Duration::from_secs(5), work).await.ok().flatten()
}

/// The `name value` lines of a Prometheus text exposition (labelled series
/// and comments are skipped).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

fn storage_delta(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> Option<StorageStats> {
    let d = |name: &str| Some(b.get(name)? - a.get(name)?);
    let write_requests = d("dotkv_storage_write_requests_total")?;
    let commits = d("dotkv_storage_commits_total")?;
    let commit_secs = d("dotkv_storage_commit_seconds_total")?;
    Some(StorageStats {
        write_requests,
        commits,
        writes_per_commit: if commits > 0.0 {
            write_requests / commits
        } else {
            0.0
        },
        commit_us: if commits > 0.0 {
            1e6 * commit_secs / commits
        } else {
            0.0
        },
    })
}

fn cores(c: Option<f64>) -> String {
    c.map(|c| format!("{:.0}%", c * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn http_row(c: &Case) -> Vec<String> {
    let r = &c.report;
    let mut row = vec![r.case.clone(), r.connections.to_string()];
    row.extend(rate_cells(r.ops_per_sec, &r.latency_us, r.errors));
    row.extend([
        c.pct_of_hello
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "-".into()),
        cores(r.cpu.map(|c| c.bench_cores)),
        cores(r.cpu.and_then(|c| c.server_cores)),
        cores(r.cpu.and_then(|c| c.other_cores)),
    ]);
    row
}

fn durability_row(c: &Case) -> Vec<String> {
    let r = &c.report;
    let mut row = vec![r.case.clone(), r.connections.to_string()];
    row.extend(rate_cells(r.ops_per_sec, &r.latency_us, r.errors));
    row.extend([
        c.storage
            .map(|s| format!("{:.1}", s.writes_per_commit))
            .unwrap_or_else(|| "-".into()),
        c.storage
            .map(|s| fmt_us(s.commit_us))
            .unwrap_or_else(|| "-".into()),
        cores(r.cpu.map(|c| c.bench_cores)),
        cores(r.cpu.and_then(|c| c.server_cores)),
    ]);
    row
}

/// Start dotkv on `dir` (config and log in `dir`, data in `dir/data`) and
/// wait until it is healthy.
async fn start_dotkv(bin: &Path, dir: &Path, durability: &str) -> Result<Server> {
    let config = dir.join(format!("dotkv-{durability}.toml"));
    let text = format!(
        "[node]\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[storage]\ndurability = {durability:?}\n[log]\nlevel = \"warn\"\n",
        dir.join("data").display().to_string(),
    );
    serve_config(bin, dir, durability, config, &text).await
}

/// Write `text` to `config`, start `dotkv serve` on it (log in `dir`), and
/// wait until it is healthy.
pub(crate) async fn serve_config(
    bin: &Path,
    dir: &Path,
    durability: &str,
    config: PathBuf,
    text: &str,
) -> Result<Server> {
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let name = format!("dotkv ({durability})");
    let server = Server::start(Spawn {
        name: &name,
        program: bin,
        args: vec![
            OsString::from("serve"),
            OsString::from("--config"),
            config.into_os_string(),
        ],
        ready_prefix: "dotkv: listening on http://",
        ready_within: STARTUP_DEADLINE,
        known_addr: None,
        log: Some(dir.join(format!("dotkv-{durability}.log"))),
    })
    .await?;
    wait_healthy(
        &HttpTarget::new(server.addr),
        Instant::now() + STARTUP_DEADLINE,
    )
    .await
    .with_context(|| format!("{name} at {}", server.addr))?;
    Ok(server)
}

/// Poll `GET /health` until it answers 200, up to `deadline`.
pub(crate) async fn wait_healthy(target: &HttpTarget, deadline: Instant) -> Result<()> {
    let mut last = String::from("no answer");
    loop {
        let attempt = timeout_at(deadline, async {
            let mut c = target.connect().await?;
            c.get("/health").await.map(|(status, _)| status)
        })
        .await;
        match attempt {
            Ok(Ok(200)) => return Ok(()),
            Ok(Ok(status)) => last = format!("GET /health answered {status}"),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => bail!("not healthy before the deadline ({last})"),
        }
        if Instant::now() + Duration::from_millis(50) >= deadline {
            bail!("not healthy before the deadline ({last})");
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Write every register key once, on one connection, within a deadline.
async fn prefill(target: &HttpTarget, put: &RegisterPut) -> Result<()> {
    let work = async {
        let mut c = target.connect().await?;
        for op in put.all_keys() {
            match timeout(Duration::from_secs(10), c.execute(&op)).await {
                Ok(Ok(Answer::Ok)) => {}
                Ok(Ok(Answer::Rejected { status, detail })) => {
                    bail!("{op:?} -> HTTP {status}: {detail}")
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("{op:?}: no answer within 10s"),
            }
        }
        Ok(())
    };
    timeout(PREFILL_DEADLINE, work)
        .await
        .map_err(|_| {
            anyhow!(
                "prefilling {} registers took over {PREFILL_DEADLINE:?}",
                put.keys
            )
        })?
        .context("prefilling registers")
}

fn machine() -> Machine {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        cpus,
        cpu_model,
        note: "load generator and server run on the same machine and share its CPUs",
    }
}
