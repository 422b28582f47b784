//! `dotkv-bench run`: one workload against a server that is already running,
//! closed loop or open loop (`--rate`), over HTTP (`http://`), dotkv's QUIC
//! protocol (`quic://`, with `--ca`) or RESP (`redis://`). The building block
//! of the suites, for ad hoc measurements and profiling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::generator::{self, LoadConfig};
use crate::stats::{rate_cells, rate_columns, Report, Table};
use crate::target::quic::QuicTarget;
use crate::target::resp::RedisTarget;
use crate::target::HttpTarget;
use crate::workload::Builtin;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server: `http://127.0.0.1:7700`, `quic://127.0.0.1:7701` (dotkv's
    /// QUIC API; needs `--ca`) or `redis://127.0.0.1:6379`.
    #[arg(long)]
    pub url: String,
    /// The cluster CA certificate, for `quic://`.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The name the node's certificate must carry, for `quic://`.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// QUIC connections the generator's connections share, for `quic://`.
    #[arg(long, default_value_t = 1)]
    pub quic_connections: usize,
    /// ping (GET /), counter-add, register-put, register-get, set-add,
    /// ycsb-a, ycsb-b, ycsb-c, ycsb-f (YCSB reads need the records written
    /// first, e.g. by a run of register-put over the same keys).
    #[arg(long, default_value = "counter-add")]
    pub workload: String,
    /// Keys (sets for set-add, records for YCSB) the workload spreads over.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Size of register values on the wire (JSON string with quotes).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Open loop at this total rate (ops/s); latency then counts from each
    /// op's scheduled send time. Without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: pace sends with tokio's 1 ms timer (bursts every
    /// millisecond) instead of a high-resolution timer, for comparison.
    #[arg(long)]
    pub coarse_timer: bool,
    /// Open loop: sends due within this many µs of one another go out
    /// together (0: each exactly when due).
    #[arg(long, default_value_t = crate::generator::DEFAULT_PACING_QUANTUM.as_micros() as u64)]
    pub pacing_quantum_us: u64,
    /// Also report the CPU use of this process (the server).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Load options shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent connections (one op in flight each).
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Measured time per case, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Warm-up before each measurement (not counted), in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Longest wait for one connect or one op before it counts as an error.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Seed of the key choice, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl LoadArgs {
    pub fn config(
        &self,
        case: &str,
        connections: usize,
        server_pid: Option<u32>,
    ) -> Result<LoadConfig> {
        if connections == 0 {
            bail!("--connections must be at least 1");
        }
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| anyhow!("{name} must be a non-negative number of seconds, not {v}"))
        };
        Ok(LoadConfig {
            case: case.to_owned(),
            connections,
            warmup: secs("--warmup-secs", self.warmup_secs)?,
            duration: secs("--duration-secs", self.duration_secs)?,
            rate: None,
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            server_pid,
            seed: self.seed,
            series_interval: None,
            coarse_timer: false,
            pacing_quantum: crate::generator::DEFAULT_PACING_QUANTUM,
        })
    }
}

pub async fn run(args: Args) -> Result<()> {
    let (scheme, rest) = args.url.split_once("://").ok_or_else(|| {
        anyhow!(
            "--url must be http://, quic:// or redis://HOST:PORT, not {:?}",
            args.url
        )
    })?;
    let hostport = rest.trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("{hostport} resolves to no address"))?;
    let workload = Builtin::parse(&args.workload, args.keys, args.value_bytes)
        .ok_or_else(|| anyhow!("unknown workload {:?}", args.workload))?;
    let mut cfg = args
        .load
        .config(&args.workload, args.load.connections, args.server_pid)?;
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number of ops/s");
        }
        cfg.rate = Some(rate);
    }
    cfg.coarse_timer = args.coarse_timer;
    cfg.pacing_quantum = Duration::from_micros(args.pacing_quantum_us);
    let workload = Arc::new(workload);
    let report = match scheme {
        "http" => generator::run(Arc::new(HttpTarget::new(addr)), workload, &cfg).await,
        "redis" => generator::run(Arc::new(RedisTarget::new(addr)), workload, &cfg).await,
        "quic" => {
            let ca = args.ca.as_deref().ok_or_else(|| {
                anyhow!("a quic:// target needs --ca (the cluster CA certificate)")
            })?;
            let target = Arc::new(QuicTarget::new(
                addr,
                &args.server_name,
                ca,
                args.quic_connections,
                cfg.request_timeout,
            )?);
            let report = generator::run(target.clone(), workload, &cfg).await;
            target.close().await;
            report
        }
        other => bail!("unknown scheme {other:?} in --url (http, quic or redis)"),
    };

    let mut t = report_table();
    t.row(report_row(&report));
    print!("{}", t.render());
    warn_about(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn report_table() -> Table {
    Table::new(&rate_columns(&["workload", "mode", "conns"], &["unsent"]))
}

fn report_row(r: &Report) -> Vec<String> {
    let mut row = vec![
        r.workload.clone(),
        match r.rate {
            Some(rate) => format!("open {rate:.0}/s"),
            None => "closed".into(),
        },
        r.connections.to_string(),
    ];
    row.extend(rate_cells(r.ops_per_sec, &r.latency_us, r.errors));
    row.push(r.unsent.to_string());
    row
}

/// Print what a reader of the numbers must know: errors and their first
/// samples, ops never sent in open loop.
pub fn warn_about(r: &Report) {
    if r.errors > 0 {
        eprintln!(
            "warning: {}: {} errors ({} rejected, {} failed); first ones:",
            r.case, r.errors, r.rejected, r.failed
        );
        for s in &r.error_samples {
            eprintln!("  {s}");
        }
    }
    if let Some(other) = r.cpu.and_then(|c| c.other_cores) {
        if other > 0.25 {
            eprintln!(
                "warning: {}: other processes used {:.0}% of a CPU during the measurement; the machine was not quiet",
                r.case,
                other * 100.0
            );
        }
    }
    // Up to one op per connection can be due while its previous op is still
    // in flight at the end of the window; more means the target fell behind.
    if r.unsent > r.connections as u64 {
        eprintln!(
            "warning: {}: {} ops due in the window were never sent: the target did not keep up with the rate, so the latencies are a lower bound",
            r.case, r.unsent
        );
    }
}
