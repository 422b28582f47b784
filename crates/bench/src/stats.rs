//! Results: merging per-connection HDR histograms into one [`Report`], the CPU
//! time the generator and the server used during the measured window, and the
//! plain-text tables the commands print.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use crate::generator::{new_histogram, ConnResult, LoadConfig};

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub case: String,
    pub target: String,
    pub workload: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub connections: usize,
    /// Open loop: the asked total rate in ops/s.
    pub rate: Option<f64>,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// From the start of the measured window to the last measured answer.
    pub elapsed_secs: f64,
    /// Successful ops in the measured window.
    pub ops: u64,
    /// `rejected + failed`.
    pub errors: u64,
    /// Non-2xx answers.
    pub rejected: u64,
    /// Connect and transport errors, timeouts.
    pub failed: u64,
    /// Open loop: ops due in the window but never sent (the target fell behind).
    pub unsent: u64,
    /// Successful ops per second.
    pub ops_per_sec: f64,
    /// Latency of successful ops.
    pub latency_us: Latency,
    pub cpu: Option<CpuSample>,
    /// The first errors seen, a few per connection at most.
    pub error_samples: Vec<String>,
    /// Latency over time, one point per series interval (empty unless asked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesPoint>,
}

/// Latency of the successful ops due in one interval of the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Start of the interval, in seconds from the start of the window.
    pub t_secs: f64,
    pub ops: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// `part` as a percentage of `whole`; 0 if `whole` is not positive.
pub fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// CPU used during the measured window, in cores (1.0 = one core busy the
/// whole time). On a machine where client and server share the cores, this
/// says who the bottleneck is.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuSample {
    pub bench_cores: f64,
    pub server_cores: Option<f64>,
    /// Everything else busy on the machine but interrupt work and steal:
    /// other processes. If this is not near zero, the machine was not quiet
    /// and the figures are suspect.
    pub other_cores: Option<f64>,
    /// The kernel's interrupt and softirq work (`/proc/stat` irq + softirq),
    /// much of it the network stack's receive path (loopback included),
    /// which serves both the generator and the server.
    pub irq_cores: Option<f64>,
    /// Time the hypervisor gave to other guests (`/proc/stat` steal).
    pub steal_cores: Option<f64>,
}

pub(crate) fn merge(
    cfg: &LoadConfig,
    target: String,
    workload: String,
    measure_start: Instant,
    end: Instant,
    results: Vec<ConnResult>,
    cpu: Option<CpuSample>,
) -> Report {
    let mut hist = new_histogram();
    let (mut ok, mut rejected, mut failed, mut unsent) = (0, 0, 0, 0);
    let mut last = None::<Instant>;
    let mut samples = Vec::new();
    let series = merge_series(cfg, &results);
    for r in results {
        hist.add(&r.hist).expect("histograms share bounds");
        ok += r.ok;
        rejected += r.rejected;
        failed += r.failed;
        unsent += r.unsent;
        last = last.max(r.last_done);
        for s in r.samples {
            if samples.len() < 10 && !samples.contains(&s) {
                samples.push(s);
            }
        }
    }
    // Throughput over the measured window, stretched to the last answer when
    // ops in flight at the end finished late.
    let elapsed = last
        .unwrap_or(end)
        .max(end)
        .saturating_duration_since(measure_start);
    let elapsed_secs = elapsed.as_secs_f64();
    Report {
        case: cfg.case.clone(),
        target,
        workload,
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        connections: cfg.connections,
        rate: cfg.rate,
        warmup_secs: cfg.warmup.as_secs_f64(),
        duration_secs: cfg.duration.as_secs_f64(),
        elapsed_secs,
        ops: ok,
        errors: rejected + failed,
        rejected,
        failed,
        unsent,
        ops_per_sec: if elapsed_secs > 0.0 {
            ok as f64 / elapsed_secs
        } else {
            0.0
        },
        latency_us: Latency::of(&hist),
        cpu,
        error_samples: samples,
        series,
    }
}

/// Per-interval percentiles from every connection's `(interval, µs)` pairs.
fn merge_series(cfg: &LoadConfig, results: &[ConnResult]) -> Vec<SeriesPoint> {
    let Some(every) = cfg.series_interval else {
        return Vec::new();
    };
    let slots = results
        .iter()
        .flat_map(|r| r.series.iter().map(|(slot, _)| *slot as usize + 1))
        .max()
        .unwrap_or(0);
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    let mut hists: Vec<Histogram<u64>> = (0..slots)
        .map(|_| Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant bounds"))
        .collect();
    for r in results {
        for &(slot, us) in &r.series {
            hists[slot as usize].saturating_record(u64::from(us.max(1)));
        }
    }
    hists
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let q = |q: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64
                }
            };
            SeriesPoint {
                t_secs: i as f64 * every.as_secs_f64(),
                ops: h.len(),
                p50_us: q(0.50),
                p99_us: q(0.99),
                p999_us: q(0.999),
                max_us: if h.is_empty() { 0.0 } else { h.max() as f64 },
            }
        })
        .collect()
}

/// CPU time (user + system) a process has used so far, from `/proc`.
/// `None` where that is not available (not Linux, process gone).
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 3 is the first after ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// CPU time all CPUs of the machine spent so far, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineTimes {
    /// All time but idle and iowait.
    pub busy: Duration,
    /// irq + softirq.
    pub irq: Duration,
    pub steal: Duration,
}

pub fn machine_times() -> Option<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 || ticks.len() < 8 {
        return None;
    }
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / hz as f64);
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user and nice).
    let total: u64 = ticks.iter().take(8).sum();
    Some(MachineTimes {
        busy: secs(total.saturating_sub(ticks[3] + ticks[4])),
        irq: secs(ticks[5] + ticks[6]),
        steal: secs(ticks[7]),
    })
}

/// CPU time all CPUs of the machine spent busy so far (`/proc/stat`: all
/// time but idle and iowait).
pub fn machine_busy_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user and nice).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        total.saturating_sub(idle) as f64 / hz as f64,
    ))
}

/// CPU used by this process and by `server` between `from` and `to`.
pub(crate) async fn sample_cpu_over(
    from: Instant,
    to: Instant,
    server: Option<u32>,
) -> Option<CpuSample> {
    sleep_until(from).await;
    let bench0 = cpu_time(None)?;
    let server0 = server.and_then(|p| cpu_time(Some(p)));
    let all0 = machine_times();
    let t0 = Instant::now();
    sleep_until(to).await;
    let bench1 = cpu_time(None)?;
    let server1 = server.and_then(|p| cpu_time(Some(p)));
    let all1 = machine_times();
    let wall = t0.elapsed().as_secs_f64();
    if wall <= 0.0 {
        return None;
    }
    let cores = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / wall;
    let bench_cores = cores(bench0, bench1);
    let server_cores = match (server0, server1) {
        (Some(a), Some(b)) => Some(cores(a, b)),
        _ => None,
    };
    let (mut other_cores, mut irq_cores, mut steal_cores) = (None, None, None);
    if let (Some(a), Some(b)) = (all0, all1) {
        let irq = cores(a.irq, b.irq);
        let steal = cores(a.steal, b.steal);
        let busy = cores(a.busy, b.busy);
        other_cores =
            Some((busy - irq - steal - bench_cores - server_cores.unwrap_or(0.0)).max(0.0));
        irq_cores = Some(irq);
        steal_cores = Some(steal);
    }
    Some(CpuSample {
        bench_cores,
        server_cores,
        other_cores,
        irq_cores,
        steal_cores,
    })
}

/// A table's columns: `lead`, then those of [`rate_cells`], then `rest`.
pub fn rate_columns<'a>(lead: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut columns = lead.to_vec();
    columns.extend(["ops/s", "p50", "p99", "p99.9", "max", "errors"]);
    columns.extend_from_slice(rest);
    columns
}

/// A case's cells in the bench's tables: ops/s, p50, p99, p99.9, max and
/// errors.
pub fn rate_cells(ops_per_sec: f64, l: &Latency, errors: u64) -> [String; 6] {
    [
        format!("{ops_per_sec:.0}"),
        fmt_us(l.p50),
        fmt_us(l.p99),
        fmt_us(l.p999),
        fmt_us(l.max),
        errors.to_string(),
    ]
}

/// Microseconds for a table: `87µs`, `1.24ms`, `3.1s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// A plain-text table with a header, columns aligned; also renders as a
/// Markdown table, so the same output can go into `docs/PERFORMANCE.md`.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown with padded columns: readable in a terminal and in a file.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut width = vec![3; n];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in row.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let c = row.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count();
                // First column left-aligned (names), the rest right-aligned (numbers).
                if i == 0 {
                    s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
                } else {
                    s.push_str(&format!(" {}{c} |", " ".repeat(pad)));
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        let mut sep = String::from("|");
        for (i, w) in width.iter().enumerate() {
            if i == 0 {
                sep.push_str(&format!(" {} |", "-".repeat(*w)));
            } else {
                sep.push_str(&format!(" {}: |", "-".repeat(w - 1)));
            }
        }
        sep.push('\n');
        out.push_str(&sep);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_time(None).is_some());
        assert!(machine_busy_time().is_some());
        let t = machine_times().unwrap();
        assert!(t.busy >= t.irq);
    }

    #[test]
    fn a_percentage_of_nothing_is_zero() {
        assert_eq!(pct(30_000.0, 60_000.0), 50.0);
        assert_eq!(pct(30_000.0, 0.0), 0.0);
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["case", "ops/s"]);
        t.row(vec!["a".into(), "12345".into()]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
    }

    #[test]
    fn units() {
        assert_eq!(fmt_us(87.2), "87µs");
        assert_eq!(fmt_us(1240.0), "1.24ms");
    }
}
