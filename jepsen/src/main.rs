//! `dotkv-jepsen`: run one test, re-check a stored history, or run the matrix.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dotkv_jepsen::run::{self, TestOpts};
use dotkv_jepsen::workload::Workload;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

#[derive(Parser)]
#[command(
    name = "dotkv-jepsen",
    about = "Fault-injection tests of dotkv (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct TestArgs {
    #[arg(long, value_enum, default_value = "set")]
    workload: Workload,
    /// Comma-separated: none, partition, partition-node, partition-dc,
    /// partition-majority, partition-ring, partition-bridge, kill, pause,
    /// clock, clock-bump, clock-strobe, loss, all.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// Seconds of workload (the heal, convergence and final reads follow).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    #[arg(long, default_value_t = 3)]
    datacenters: usize,
    #[arg(long, default_value_t = 2)]
    nodes_per_dc: usize,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Clients per node.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Mean pause between one client's operations, in milliseconds.
    #[arg(long, default_value_t = 40)]
    stagger_ms: u64,
    /// Results go to STORE/<workload>/<timestamp>/.
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// The dotkv binary (default: next to this one).
    #[arg(long)]
    dotkv: Option<PathBuf>,
    /// Run every node as `dotkv-faulty --fault FAULT` (lose-writes[:P],
    /// skip-causal-wait) to check that the checkers catch it.
    #[arg(long)]
    faulty: Option<String>,
    #[arg(long, default_value_t = 40)]
    wan_delay_ms: u64,
    #[arg(long, default_value_t = 10)]
    wan_jitter_ms: u64,
    /// Seconds the nodes get to converge after the final heal.
    #[arg(long, default_value_t = 60)]
    convergence_deadline: u64,
    /// How clients carry causal tokens (register, session): `latest` (what
    /// the API promises is enough) or `join` (the join of all received).
    #[arg(long, default_value = "latest", value_parser = ["latest", "join"])]
    tokens: String,
    /// Where the nodes run: `local` (processes in network namespaces, needs
    /// root) or `docker` (the Compose cluster of docker-compose.yml, as its
    /// own project; nemeses partition (= partition-dc), kill, pause).
    #[arg(long, value_enum, default_value = "local")]
    backend: run::Backend,
    /// The Compose project of `--backend docker` (its containers and volumes
    /// are removed before and after the run).
    #[arg(long, default_value = "dotkv-jepsen")]
    compose_project: String,
    /// The compose file of `--backend docker` (default: docker-compose.yml in
    /// the working directory or a parent).
    #[arg(long)]
    compose_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one test; exit 0 only if every checker says valid.
    Test(TestArgs),
    /// Run the checkers again on a stored test directory.
    Check { dir: PathBuf },
    /// Every workload under the main nemesis combinations, then a summary table.
    Matrix {
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        #[arg(long, default_value = "set,counter,register,session,batch,convergence")]
        workloads: String,
        /// Nemesis combinations, separated by `;`.
        #[arg(long, default_value = "partition;kill,pause;clock,loss;all")]
        nemeses: String,
        #[arg(long, default_value_t = 3)]
        datacenters: usize,
        #[arg(long, default_value_t = 2)]
        nodes_per_dc: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "store")]
        store: PathBuf,
    },
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn test(a: TestArgs) -> Result<bool> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let opts = TestOpts {
        workload: a.workload,
        nemesis: a.nemesis,
        time_limit_s: a.time_limit,
        datacenters: a.datacenters,
        nodes_per_dc: a.nodes_per_dc,
        seed,
        concurrency: a.concurrency,
        stagger_ms: a.stagger_ms,
        store: a.store,
        dotkv: a.dotkv.unwrap_or_else(|| sibling("dotkv")),
        faulty: a.faulty.map(|f| (sibling("dotkv-faulty"), f)),
        wan_delay_ms: a.wan_delay_ms,
        wan_jitter_ms: a.wan_jitter_ms,
        convergence_deadline_s: a.convergence_deadline,
        join_tokens: a.tokens == "join",
        backend: a.backend,
        compose_project: a.compose_project,
        compose_file: a.compose_file,
    };
    eprintln!("dotkv-jepsen: seed {seed}");
    let v = run::run_test(&opts)?;
    summarize(&v.results);
    println!("results: {} valid={}", v.dir.display(), v.valid);
    Ok(v.valid)
}

/// One line per checker.
fn summarize(results: &Value) {
    if let Some(checkers) = results["checkers"].as_object() {
        for (name, r) in checkers {
            let mut figures = r.clone();
            if let Some(m) = figures.as_object_mut() {
                m.remove("valid");
                m.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
            }
            let mut s = figures.to_string();
            if s.len() > 400 {
                s.truncate(400);
                s.push('…');
            }
            eprintln!("  {name:<12} valid={:<5} {s}", r["valid"]);
        }
    }
    if let Some(e) = results["error"].as_str() {
        eprintln!("  error: {e}");
    }
}

fn figure(r: &Value, workload: &str) -> String {
    let name = if workload == "convergence" {
        "final-state"
    } else {
        workload
    };
    let c = &r["checkers"][name];
    let keys = [
        "lost_count",
        "unexpected_count",
        "error_count",
        "half_visible_count",
        "read_your_writes_violations",
        "monotonic_read_violations",
    ];
    keys.iter()
        .filter_map(|k| {
            c.get(*k)
                .map(|v| format!("{}={v}", k.trim_end_matches("_count")))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn matrix(
    time_limit: u64,
    workloads: &str,
    nemeses: &str,
    dcs: usize,
    npd: usize,
    seed: u64,
    store: &Path,
) -> Result<bool> {
    let me = std::env::current_exe()?;
    let mut rows = Vec::new();
    let mut all_valid = true;
    for w in workloads
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        for n in nemeses.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            eprintln!("=== {w} × {n}");
            let out = Command::new(&me)
                .args(["test", "--workload", w, "--nemesis", n])
                .args(["--time-limit", &time_limit.to_string()])
                .args([
                    "--datacenters",
                    &dcs.to_string(),
                    "--nodes-per-dc",
                    &npd.to_string(),
                ])
                .args(["--seed", &seed.to_string()])
                .arg("--store")
                .arg(store)
                .stderr(Stdio::inherit())
                .output()
                .context("run a test")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let dir = stdout
                .lines()
                .find_map(|l| l.strip_prefix("results: "))
                .and_then(|l| l.rsplit_once(" valid="))
                .map(|(d, _)| PathBuf::from(d));
            let results: Value = dir
                .as_ref()
                .and_then(|d| std::fs::read(d.join("results.json")).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let valid = results["valid"].as_bool().unwrap_or(false);
            all_valid &= valid;
            let st = &results["checkers"]["stats"];
            rows.push(format!(
                "| {w:<11} | {n:<16} | {:<5} | {:>6} | {:>4} | {:>4} | {:>8} | {:>14} | {} |",
                valid,
                st["ok"].as_u64().unwrap_or(0),
                st["fail"].as_u64().unwrap_or(0),
                st["info"].as_u64().unwrap_or(0),
                results["convergence_time_ms"].to_string(),
                results["convergence_since_last_fault_ms"].to_string(),
                figure(&results, w)
            ));
        }
    }
    println!("\n| workload    | nemesis          | valid |     ok | fail | info | conv ms  | after fault ms | anomalies |");
    println!(
        "|-------------|------------------|-------|--------|------|------|----------|----------------|-----------|"
    );
    for r in rows {
        println!("{r}");
    }
    Ok(all_valid)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Test(a) => test(a),
        Cmd::Check { dir } => run::check_dir(&dir).map(|(valid, results)| {
            summarize(&results);
            println!(
                "{}",
                serde_json::to_string_pretty(&results).unwrap_or_default()
            );
            valid
        }),
        Cmd::Matrix {
            time_limit,
            workloads,
            nemeses,
            datacenters,
            nodes_per_dc,
            seed,
            store,
        } => {
            if workloads
                .split(',')
                .any(|w| Workload::from_name(w.trim()).is_none())
            {
                eprintln!("error: unknown workload in {workloads:?}");
                return ExitCode::from(2);
            }
            matrix(
                time_limit,
                &workloads,
                &nemeses,
                datacenters,
                nodes_per_dc,
                seed,
                &store,
            )
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
