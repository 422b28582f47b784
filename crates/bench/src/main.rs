//! `dotkv-bench`: the load generator and side-by-side benchmarks of dotkv.
//!
//! Servers are separate processes (dotkv is driven through its binary), so a
//! benchmark measures what a client sees; the one exception, [`group_commit`],
//! runs dotkv's writer in this process to measure group commit without HTTP.
//! The pieces:
//! [`workload`] says what to send, [`target`] how to send it, [`generator`]
//! how hard and for how long, [`stats`] what came out, [`process`] keeps the
//! servers' lifetimes in hand, [`plot`] draws latency over time as a PNG, and
//! [`command`] has one module per subcommand.

mod command;
mod generator;
mod group_commit;
mod pacer;
mod plot;
mod process;
mod stats;
mod target;
mod workload;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc, as the dotkv server uses: the generator shares the CPU with the
/// server it measures, and glibc's malloc and free were 5-8 % of its cycles
/// (perf, QUIC and HTTP clients at 40-50k ops/s).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "dotkv-bench", version, about)]
struct Cli {
    /// Worker threads of this process's async runtime (0: one per CPU).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A minimal axum hello-world server: the HTTP ceiling.
    Hello(command::hello::Args),
    /// One workload against a running server (closed or open loop).
    Run(command::run::Args),
    /// dotkv over HTTP vs. the hello ceiling, then fsync group commit.
    SingleNode(command::single_node::Args),
    /// Two datacenters through WAN relays: lag, bytes per update, catch-up.
    Replication(command::replication::Args),
    /// Everything `make bench` runs: dotkv (HTTP, QUIC) and Redis side by
    /// side (YCSB A/B/C/F, counters, sets; closed and open loop; fsync), then
    /// replication; writes JSON, a PNG plot and docs/PERFORMANCE.md's tables.
    Suite(command::suite::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        rt.worker_threads(cli.threads);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Hello(a) => command::hello::run(a).await,
            Cmd::Run(a) => command::run::run(a).await,
            Cmd::SingleNode(a) => command::single_node::run(a).await,
            Cmd::Replication(a) => command::replication::run(a).await,
            Cmd::Suite(a) => command::suite::run(a).await,
        }
    })
}
