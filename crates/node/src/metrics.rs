//! Metrics in the Prometheus text format, named `dotkv_<subsystem>_<name>`.
//!
//! Request counts and latency histograms are kept per (method, route, status)
//! in atomics; the label sets are bounded because routes are templates (never
//! raw paths) and statuses are a short list.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Latency bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

type Labels = (&'static str, &'static str, u16);

/// The node's HTTP metrics.
#[derive(Default)]
pub struct Metrics {
    requests: RwLock<HashMap<Labels, Arc<Histogram>>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one answered request.
    pub fn observe(&self, method: &'static str, route: &'static str, status: u16, d: Duration) {
        let key = (method, route, status);
        let existing = self.requests.read().ok().and_then(|m| m.get(&key).cloned());
        let h = match existing {
            Some(h) => h,
            None => match self.requests.write() {
                Ok(mut m) => m.entry(key).or_default().clone(),
                Err(_) => return,
            },
        };
        h.observe(d);
    }

    /// Render the request metrics; the caller appends the others.
    pub fn render_requests(&self, out: &mut String) {
        let Ok(map) = self.requests.read() else {
            return;
        };
        let mut entries: Vec<_> = map.iter().collect();
        entries.sort_by_key(|(k, _)| **k);
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
        m.observe("GET", "/v1/counter", 200, Duration::from_micros(300));
        m.observe("GET", "/v1/counter", 200, Duration::from_millis(3));
        m.observe("POST", "/v1/counter", 422, Duration::from_micros(50));
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(out.contains(
            "dotkv_http_requests_total{method=\"GET\",route=\"/v1/counter\",status=\"200\"} 2"
        ));
        assert!(out.contains("route=\"/v1/counter\",status=\"200\",le=\"0.0005\"} 1"));
        assert!(out.contains("route=\"/v1/counter\",status=\"200\",le=\"0.005\"} 2"));
        assert!(out.contains("status=\"422\",le=\"+Inf\"} 1"));
    }
}
