//! `dotkv-relay`: runs one WAN-simulating UDP relay until SIGINT or SIGTERM.
//!
//! The docker-compose cluster puts one in front of each datacenter's QUIC
//! port, because the containers' kernel has no netem. Arguments are parsed by
//! hand to keep this crate's dependencies to the few the library needs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use dotkv_netsim::{LinkConditions, RelayConfig, UdpRelay};
use tokio::time::Instant;

const USAGE: &str = "\
usage: dotkv-relay --listen ADDR --upstream HOST:PORT [options]

Forwards UDP datagrams from ADDR to HOST:PORT and replies back, one session
per client address, with the same simulated WAN conditions each way.

options:
  --delay-ms N          one-way delay (default 0)
  --jitter-ms N         uniform jitter around the delay (default 0)
  --loss P              drop probability, 0..1 (default 0)
  --duplicate P         duplication probability, 0..1 (default 0)
  --reorder P           probability of an extra reorder gap, 0..1 (default 0)
  --reorder-gap-ms N    extra delay of a reordered datagram (default 20)
  --rate BYTES          bandwidth limit in bytes per second (default none)
  --seed N              RNG seed, for reproducible runs (default 0)
  --max-sessions N      concurrent client sessions (default 256)
  --idle-timeout-ms N   session idle timeout (default 60000)
  --queue N             delay queue bound per direction (default 16384)
  --stats-interval-s N  print counters every N seconds (default 0: only at exit)
  --help                this text
";

struct Args {
    listen: SocketAddr,
    upstream: String,
    conditions: LinkConditions,
    seed: u64,
    max_sessions: Option<usize>,
    idle_timeout_ms: Option<u64>,
    queue: Option<usize>,
    stats_interval_s: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    fn value<T: std::str::FromStr>(flag: &str, raw: Option<String>) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let raw = raw.ok_or_else(|| format!("{flag} needs a value"))?;
        raw.parse().map_err(|e| format!("{flag} {raw:?}: {e}"))
    }

    let mut listen = None;
    let mut upstream = None;
    let mut conditions = LinkConditions::default();
    let mut parsed = Args {
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        upstream: String::new(),
        conditions: LinkConditions::default(),
        seed: 0,
        max_sessions: None,
        idle_timeout_ms: None,
        queue: None,
        stats_interval_s: 0,
    };
    while let Some(flag) = args.next() {
        let next = args.next();
        match flag.as_str() {
            "--help" | "-h" => return Err(String::new()),
            "--listen" => listen = Some(value::<SocketAddr>(&flag, next)?),
            "--upstream" => upstream = Some(value::<String>(&flag, next)?),
            "--delay-ms" => conditions.delay_ms = value(&flag, next)?,
            "--jitter-ms" => conditions.jitter_ms = value(&flag, next)?,
            "--loss" => conditions.loss = value(&flag, next)?,
            "--duplicate" => conditions.duplicate = value(&flag, next)?,
            "--reorder" => conditions.reorder = value(&flag, next)?,
            "--reorder-gap-ms" => conditions.reorder_gap_ms = value(&flag, next)?,
            "--rate" => conditions.rate_bytes_per_sec = Some(value(&flag, next)?),
            "--seed" => parsed.seed = value(&flag, next)?,
            "--max-sessions" => parsed.max_sessions = Some(value(&flag, next)?),
            "--idle-timeout-ms" => parsed.idle_timeout_ms = Some(value(&flag, next)?),
            "--queue" => parsed.queue = Some(value(&flag, next)?),
            "--stats-interval-s" => parsed.stats_interval_s = value(&flag, next)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    conditions.validate().map_err(|e| e.to_string())?;
    parsed.listen = listen.ok_or("--listen is required")?;
    parsed.upstream = upstream.ok_or("--upstream is required")?;
    parsed.conditions = conditions;
    Ok(parsed)
}

/// Resolves the upstream, retrying for a while: under docker-compose the
/// upstream container's name may not resolve until it has started.
async fn resolve(upstream: &str) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let error = match tokio::net::lookup_host(upstream).await {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => return Ok(addr),
                None => "no addresses".to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("resolving upstream {upstream:?}: {error}"));
        }
        eprintln!("dotkv-relay: resolving upstream {upstream:?}: {error}; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(args: Args) -> Result<(), String> {
    let upstream = resolve(&args.upstream).await?;
    let mut config = RelayConfig::new(args.listen, upstream)
        .with_conditions(args.conditions)
        .with_seed(args.seed);
    if let Some(n) = args.max_sessions {
        config.max_sessions = n;
    }
    if let Some(ms) = args.idle_timeout_ms {
        config.session_idle_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = args.queue {
        config.queue_capacity = n;
    }
    let relay = UdpRelay::start(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let handle = relay.into_handle();
    eprintln!(
        "dotkv-relay: {} -> {} ({:?}, seed {})",
        handle.local_addr(),
        upstream,
        config.to_upstream,
        config.seed
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let stats_every = Duration::from_secs(args.stats_interval_s.max(1));
    let mut stats_tick = tokio::time::interval_at(Instant::now() + stats_every, stats_every);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = stats_tick.tick(), if args.stats_interval_s > 0 => {
                eprintln!("dotkv-relay: {:?}", handle.stats());
            }
        }
    }
    handle.shutdown().await;
    eprintln!("dotkv-relay: stopped: {:?}", handle.stats());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("dotkv-relay: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dotkv-relay: {message}");
            ExitCode::FAILURE
        }
    }
}
