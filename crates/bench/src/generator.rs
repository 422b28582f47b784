//! The load generator: N connections, each a tokio task running one op at a
//! time, in closed loop (back to back) or open loop (at a fixed rate).
//!
//! Timeline of a run: connections start together, run a warm-up whose results
//! are thrown away, then measure for `duration`. No op starts after the end;
//! an op in flight at the end is waited for (at most `request_timeout`), so a
//! run lasts at most `warmup + duration + request_timeout`.
//!
//! In open loop each connection owns an equal share of the rate, with its
//! sends spaced `connections / rate` apart and staggered between connections.
//! An op that is due while its connection is still busy is measured from when
//! it was *scheduled*, not from when it could be sent: if the server stalls,
//! the ops that pile up behind the stall are charged for the wait (the
//! coordinated-omission correction of wrk2 and HdrHistogram). An op due on an
//! idle connection is measured from its actual send, since the only delay
//! there is the timer's own. The wait for a due time uses a high-resolution
//! timer ([`Pacer`]), so sends are spaced as scheduled rather than bunched
//! into tokio's 1 ms timer ticks. Closed loop has no schedule, so it measures
//! from the send; its latencies describe a saturated server, its ops/s the
//! peak.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::pacer::{Grid, Pacer};
use crate::stats::{self, CpuSample, Report};
use crate::target::{Answer, Connection, Target, TargetError};
use crate::workload::{Op, OpStream, Workload};

/// Open loop: the default granularity of send times (see [`Grid`]).
pub const DEFAULT_PACING_QUANTUM: Duration = Duration::from_micros(250);
/// Longest latency the histograms hold exactly; longer ones are clamped.
const MAX_LATENCY: Duration = Duration::from_secs(100);
/// Pause before connecting again after a connection failed, so a dead server
/// is not hammered in a tight loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// How to load a target.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Short name of this measurement, for tables and JSON.
    pub case: String,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Total rate over all connections in ops/s (open loop); `None` is closed loop.
    pub rate: Option<f64>,
    /// Longest wait for one connect or one op; past it the op is an error and
    /// the connection is replaced.
    pub request_timeout: Duration,
    /// A server process whose CPU use is reported next to the generator's.
    pub server_pid: Option<u32>,
    pub seed: u64,
    /// Also report latency percentiles per interval of this length over the
    /// measured window (latency over time); `None` for the totals only.
    pub series_interval: Option<Duration>,
    /// Open loop: wait for due times with tokio's 1 ms timer instead of the
    /// high-resolution [`Pacer`] (for comparison: sends then go out in
    /// bursts, one per millisecond).
    pub coarse_timer: bool,
    /// Open loop: sends due within this quantum of one another go out
    /// together (one wake-up of the generator); zero spaces every send as
    /// scheduled.
    pub pacing_quantum: Duration,
}

/// A fresh histogram of latencies in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY.as_nanos() as u64, 3)
        .expect("constant histogram bounds are valid")
}

/// What one connection saw during the measured window.
pub(crate) struct ConnResult {
    pub hist: Histogram<u64>,
    /// Successful ops.
    pub ok: u64,
    /// Non-2xx answers.
    pub rejected: u64,
    /// Connects, transport errors and timeouts.
    pub failed: u64,
    /// Open loop only: ops scheduled inside the window that were never sent
    /// because the connection was still behind at the end.
    pub unsent: u64,
    /// When the last measured op completed.
    pub last_done: Option<Instant>,
    /// The first error of each kind, for the report.
    pub samples: Vec<String>,
    /// With a series interval: each successful op's interval (by when it
    /// was due) and latency in µs, merged into per-interval percentiles
    /// after the run. Two `u32` per op keeps this cheap on the hot path.
    pub series: Vec<(u32, u32)>,
}

impl ConnResult {
    fn new() -> ConnResult {
        ConnResult {
            hist: new_histogram(),
            ok: 0,
            rejected: 0,
            failed: 0,
            unsent: 0,
            last_done: None,
            samples: Vec::new(),
            series: Vec::new(),
        }
    }

    fn sample(&mut self, what: String) {
        if self.samples.len() < 2 {
            self.samples.push(what);
        }
    }
}

/// The shared clock of a run.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_start: Instant,
    end: Instant,
}

/// Run `workload` against `target` as `cfg` says, and report.
pub async fn run<T: Target, W: Workload>(
    target: Arc<T>,
    workload: Arc<W>,
    cfg: &LoadConfig,
) -> Report {
    assert!(cfg.connections > 0, "at least one connection");
    if let Some(rate) = cfg.rate {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
    }
    let start = Instant::now();
    let window = Window {
        measure_start: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
    };

    let cpu = tokio::spawn(stats::sample_cpu_over(
        window.measure_start,
        window.end,
        cfg.server_pid,
    ));

    let mut tasks = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let target = target.clone();
        let workload = workload.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            // Open loop: this connection's share of the rate, staggered so the
            // connections do not all fire at the same instant.
            let pace = cfg.rate.map(|rate| {
                let interval = Duration::from_secs_f64(cfg.connections as f64 / rate);
                let offset = Duration::from_secs_f64(i as f64 / rate);
                (start + offset, interval)
            });
            connection_loop(&*target, &*workload, i, &cfg, window, pace).await
        }));
    }

    // Every task ends on its own by `end + request_timeout` (plus a backoff);
    // the deadline here only guards against a bug, never waits on a server.
    let deadline = window.end + cfg.request_timeout + Duration::from_secs(5);
    let mut results = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match timeout_at(deadline, &mut task).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                let mut r = ConnResult::new();
                r.failed += 1;
                r.sample(format!("connection task failed: {e}"));
                results.push(r);
            }
            Err(_) => {
                task.abort();
                let mut r = ConnResult::new();
                r.failed += 1;
                r.sample("connection task overran the run deadline".into());
                results.push(r);
            }
        }
    }
    let cpu: Option<CpuSample> = cpu.await.ok().flatten();

    stats::merge(
        cfg,
        target.describe(),
        workload.name(),
        window.measure_start,
        window.end,
        results,
        cpu,
    )
}

async fn connection_loop<T: Target, W: Workload>(
    target: &T,
    workload: &W,
    index: usize,
    cfg: &LoadConfig,
    window: Window,
    mut pace: Option<(Instant, Duration)>,
) -> ConnResult {
    let mut out = ConnResult::new();
    let mut ops = OpStream::new(index, cfg.seed);
    let mut pacer = match (&pace, cfg.coarse_timer) {
        (Some(_), false) => Pacer::new(Grid {
            origin: window.measure_start,
            quantum: cfg.pacing_quantum,
        }),
        _ => Pacer::Tokio,
    };
    let mut conn: Option<T::Conn> = None;
    // Ops answered on the current connection: a connection that closes before
    // its first answer means the server refuses us, so back off.
    let mut answered_on_conn = 0u64;
    // An op the target handed back unsent (the connection closed under it),
    // with its original due time: it goes out again on a new connection.
    let mut retry: Option<(Op, Instant)> = None;

    loop {
        // The op, and the instant its latency is measured from.
        let (op, intended) = match retry.take() {
            Some(pending) => {
                if Instant::now() >= window.end {
                    break;
                }
                pending
            }
            None => {
                let intended = match &mut pace {
                    None => {
                        let now = Instant::now();
                        if now >= window.end {
                            break;
                        }
                        now
                    }
                    Some((next, interval)) => {
                        let due = *next;
                        // A connection that fell behind stops at the end too;
                        // what it never sent is reported as `unsent`.
                        if due >= window.end || Instant::now() >= window.end {
                            break;
                        }
                        *next += *interval;
                        if due > Instant::now() {
                            // Ahead of schedule: wait, then measure from the
                            // actual send. Whatever lateness the timer adds
                            // is the generator's, not the server's.
                            pacer.sleep_until(due).await;
                            Instant::now()
                        } else {
                            // Behind: the op waited for this connection, and
                            // that wait counts (coordinated omission).
                            due
                        }
                    }
                };
                (workload.next_op(&mut ops), intended)
            }
        };
        let measured = intended >= window.measure_start;

        let c = match conn.as_mut() {
            Some(c) => c,
            None => match timeout(cfg.request_timeout, target.connect()).await {
                Ok(Ok(c)) => {
                    answered_on_conn = 0;
                    conn.insert(c)
                }
                Ok(Err(e)) => {
                    if measured {
                        out.failed += 1;
                        out.sample(e.to_string());
                    }
                    backoff(window.end).await;
                    continue;
                }
                Err(_) => {
                    if measured {
                        out.failed += 1;
                        out.sample(format!("connect timed out after {:?}", cfg.request_timeout));
                    }
                    continue;
                }
            },
        };

        let result = timeout(cfg.request_timeout, c.execute(&op)).await;
        let done = Instant::now();
        match result {
            Ok(Ok(Answer::Ok)) => {
                answered_on_conn += 1;
                if measured {
                    out.ok += 1;
                    let latency = done.saturating_duration_since(intended);
                    out.hist.saturating_record(latency.as_nanos() as u64);
                    out.last_done = Some(done);
                    if let Some(every) = cfg.series_interval {
                        let since = intended.saturating_duration_since(window.measure_start);
                        // An op whose timer woke just past the end belongs
                        // to the last interval, not to one of its own.
                        let last = cfg.duration.as_nanos().div_ceil(every.as_nanos().max(1));
                        let slot = (since.as_nanos() / every.as_nanos().max(1))
                            .min(last.saturating_sub(1)) as u32;
                        let us = latency.as_micros().min(u32::MAX as u128) as u32;
                        out.series.push((slot, us));
                    }
                }
            }
            Ok(Ok(Answer::Rejected { status, detail })) => {
                answered_on_conn += 1;
                if measured {
                    out.rejected += 1;
                    out.last_done = Some(done);
                    out.sample(format!("{op:?} -> HTTP {status}: {detail}"));
                }
            }
            Ok(Err(TargetError::NotSent)) => {
                // Not an error of the op: nothing reached the server.
                conn = None;
                if answered_on_conn == 0 {
                    backoff(window.end).await;
                }
                retry = Some((op, intended));
            }
            Ok(Err(e)) => {
                conn = None;
                if measured {
                    out.failed += 1;
                    out.sample(format!("{op:?}: {e}"));
                }
                backoff(window.end).await;
            }
            Err(_) => {
                conn = None;
                if measured {
                    out.failed += 1;
                    out.sample(format!(
                        "{op:?}: no answer within {:?}",
                        cfg.request_timeout
                    ));
                }
            }
        }
    }

    if let Some((next, interval)) = pace {
        // Ops this connection was too far behind to send before the end.
        let first_unsent = next.max(window.measure_start);
        if first_unsent < window.end && !interval.is_zero() {
            let behind = window.end - first_unsent - Duration::from_nanos(1);
            out.unsent = (behind.as_nanos() / interval.as_nanos()) as u64 + 1;
        }
    }
    out
}

/// Sleep a little before reconnecting, never past the end of the run.
async fn backoff(end: Instant) {
    let until = (Instant::now() + RECONNECT_BACKOFF).min(end);
    sleep_until(until).await;
}
