//! Metrics in the Prometheus text format, named `dotkv_<subsystem>_<name>`.
//!
//! Request counts and latency histograms are kept per (method, route, status)
//! in atomics; the label sets are bounded because routes are templates (never
//! raw paths) and statuses are a short list. Recording a request touches no
//! lock and hashes nothing: method and route are indices into fixed tables,
//! and each (method, route) has a few status slots claimed on first use.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Method labels; the HTTP layer records a request by its method's index.
pub const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "HEAD", "other"];

/// Route templates; see [`route`] for the index of each.
pub const ROUTES: [&str; 15] = [
    "/health",
    "/metrics",
    "/v1/batch",
    "/v1/status",
    "/v1/counter",
    "/v1/counter/{key}",
    "/v1/register",
    "/v1/register/{key}",
    "/v1/mvregister",
    "/v1/mvregister/{key}",
    "/v1/set",
    "/v1/set/{key}",
    "/v1/flag",
    "/v1/flag/{key}",
    "other",
];

/// Indices into [`ROUTES`].
pub mod route {
    pub const HEALTH: usize = 0;
    pub const METRICS: usize = 1;
    pub const BATCH: usize = 2;
    pub const STATUS: usize = 3;
    /// The type namespaces, in the order of their routes.
    pub const TYPES: [&str; 5] = ["counter", "register", "mvregister", "set", "flag"];
    pub const OTHER: usize = 14;

    /// `/v1/{type}` for `TYPES[t]`.
    pub const fn list(t: usize) -> usize {
        4 + 2 * t
    }

    /// `/v1/{type}/{key}` for `TYPES[t]`.
    pub const fn object(t: usize) -> usize {
        5 + 2 * t
    }
}

/// Latency bucket upper bounds, in seconds (for the `le` labels) and in
/// microseconds (for recording).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const BUCKET_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKET_MICROS.iter().position(|&b| micros <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Statuses a (method, route) records without the overflow map. An API
/// route answers with a handful (200, 404, 409, 422, ...).
const STATUS_SLOTS: usize = 8;

/// The histograms of one (method, route). A slot belongs to the status
/// written into it first (0: free) and keeps it.
#[derive(Default)]
struct RouteSlots {
    statuses: [AtomicU16; STATUS_SLOTS],
    hists: [OnceLock<Box<Histogram>>; STATUS_SLOTS],
}

impl RouteSlots {
    fn get(&self, status: u16) -> Option<&Histogram> {
        for (owner, hist) in self.statuses.iter().zip(&self.hists) {
            let mut current = owner.load(Ordering::Acquire);
            if current == 0 {
                current =
                    match owner.compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => status,
                        Err(taken) => taken,
                    };
            }
            if current == status {
                return Some(hist.get_or_init(Box::default));
            }
        }
        None
    }
}

type Labels = (usize, usize, u16);

/// The node's HTTP metrics.
pub struct Metrics {
    /// `METHODS.len() * ROUTES.len()` entries, by method then route.
    routes: Box<[RouteSlots]>,
    /// Statuses beyond a route's slots. The status is a `u16`, so this too is
    /// bounded, and in practice it stays empty.
    overflow: Mutex<HashMap<Labels, Box<Histogram>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: (0..METHODS.len() * ROUTES.len())
                .map(|_| RouteSlots::default())
                .collect(),
            overflow: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one answered request: `method` indexes [`METHODS`], `route`
    /// [`ROUTES`].
    pub fn observe(&self, method: usize, route: usize, status: u16, d: Duration) {
        let method = method.min(METHODS.len() - 1);
        let route = route.min(ROUTES.len() - 1);
        match self.routes[method * ROUTES.len() + route].get(status) {
            Some(h) => h.observe(d),
            None => {
                if let Ok(mut m) = self.overflow.lock() {
                    m.entry((method, route, status)).or_default().observe(d);
                }
            }
        }
    }

    /// Render the request metrics; the caller appends the others.
    pub fn render_requests(&self, out: &mut String) {
        let Ok(overflow) = self.overflow.lock() else {
            return;
        };
        let mut entries: Vec<((&str, &str, u16), &Histogram)> = Vec::new();
        for (i, slots) in self.routes.iter().enumerate() {
            let (m, r) = (METHODS[i / ROUTES.len()], ROUTES[i % ROUTES.len()]);
            for (owner, hist) in slots.statuses.iter().zip(&slots.hists) {
                if let Some(h) = hist.get() {
                    entries.push(((m, r, owner.load(Ordering::Acquire)), h));
                }
            }
        }
        for (&(m, r, s), h) in overflow.iter() {
            entries.push(((METHODS[m], ROUTES[r], s), h));
        }
        entries.sort_by_key(|(k, _)| *k);
        out.push_str("# HELP dotkv_http_requests_total HTTP requests answered, by method, route and status.\n");
        out.push_str("# TYPE dotkv_http_requests_total counter\n");
        for ((m, r, s), h) in &entries {
            let _ = writeln!(
                out,
                "dotkv_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {}",
                h.count.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP dotkv_http_request_duration_seconds HTTP request latency, by method, route and status.\n");
        out.push_str("# TYPE dotkv_http_request_duration_seconds histogram\n");
        for ((m, r, s), h) in &entries {
            let labels = format!("method=\"{m}\",route=\"{r}\",status=\"{s}\"");
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "dotkv_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "dotkv_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "dotkv_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "dotkv_http_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
    }
}

/// Append one metric with its help and type lines.
pub fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::new();
        let counter = route::list(0);
        m.observe(0, counter, 200, Duration::from_micros(300));
        m.observe(0, counter, 200, Duration::from_millis(3));
        m.observe(1, counter, 422, Duration::from_micros(50));
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(out.contains(
            "dotkv_http_requests_total{method=\"GET\",route=\"/v1/counter\",status=\"200\"} 2"
        ));
        assert!(out.contains("route=\"/v1/counter\",status=\"200\",le=\"0.0005\"} 1"));
        assert!(out.contains("route=\"/v1/counter\",status=\"200\",le=\"0.005\"} 2"));
        assert!(out.contains("status=\"422\",le=\"+Inf\"} 1"));
    }

    #[test]
    fn statuses_beyond_the_slots_are_counted_too() {
        let m = Metrics::new();
        let route = route::object(3);
        let statuses: Vec<u16> = (0..STATUS_SLOTS as u16 + 4).map(|i| 400 + i).collect();
        for (n, &s) in statuses.iter().enumerate() {
            for _ in 0..=n {
                m.observe(2, route, s, Duration::from_micros(10));
            }
        }
        let mut out = String::new();
        m.render_requests(&mut out);
        let mut last = 0;
        for (n, s) in statuses.iter().enumerate() {
            let line = format!(
                "dotkv_http_requests_total{{method=\"PUT\",route=\"/v1/set/{{key}}\",status=\"{s}\"}} {}\n",
                n + 1
            );
            let at = out.find(&line).unwrap_or_else(|| panic!("missing {line}"));
            assert!(at > last, "statuses are rendered in order");
            last = at;
        }
    }
}
