//! Prometheus metrics (`GET /metrics`, text exposition format): HTTP requests by route and
//! status and their durations, run durations and statuses by app, node durations by node type, database pool use
//! and the run-log recorder's backlog.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Upper bounds of the duration buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        if let Some(index) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// A label value with Prometheus' escapes.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One route's requests: counts by status and how long they took.
#[derive(Default)]
struct RouteStats {
    statuses: Mutex<HashMap<u16, u64>>,
    duration: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    /// Method → route → stats; looked up by `&str`, so counting a request allocates nothing.
    requests: RwLock<HashMap<String, HashMap<String, Arc<RouteStats>>>>,
    runs: RwLock<HashMap<(String, &'static str), Arc<Histogram>>>,
    nodes: RwLock<HashMap<Arc<str>, Arc<Histogram>>>,
}

/// What the server reports alongside its own counters.
pub struct Gauges {
    pub pool_in_use: u32,
    pub pool_size: u32,
    pub pool_max: u32,
    pub recorder_backlog: usize,
    pub recorder_batches: u64,
    pub recorder_rows: u64,
    pub recorder_errors: u64,
    pub runs_in_progress: usize,
}

fn observe<K: Eq + std::hash::Hash + Clone>(map: &RwLock<HashMap<K, Arc<Histogram>>>, key: &K, seconds: f64) {
    if let Some(histogram) = map.read().ok().and_then(|map| map.get(key).cloned()) {
        histogram.observe(seconds);
        return;
    }
    if let Ok(mut map) = map.write() {
        map.entry(key.clone()).or_default().observe(seconds);
    }
}

impl Metrics {
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let known = self.requests.read().ok().and_then(|requests| requests.get(method).and_then(|routes| routes.get(route)).cloned());
        let stats = match known {
            Some(stats) => stats,
            None => {
                let Ok(mut requests) = self.requests.write() else { return };
                requests.entry(method.to_owned()).or_default().entry(route.to_owned()).or_default().clone()
            }
        };
        if let Ok(mut statuses) = stats.statuses.lock() {
            *statuses.entry(status).or_default() += 1;
        }
        stats.duration.observe(seconds);
    }

    pub fn run_finished(&self, app_id: &str, status: &'static str, seconds: f64) {
        observe(&self.runs, &(app_id.to_owned(), status), seconds);
    }

    pub fn node_finished(&self, node_type: &Arc<str>, seconds: f64) {
        observe(&self.nodes, node_type, seconds);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP flowgate_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE flowgate_http_requests_total counter\n");
        let routes: Vec<(String, String, Arc<RouteStats>)> = self
            .requests
            .read()
            .map(|requests| {
                let mut rows: Vec<_> = requests
                    .iter()
                    .flat_map(|(method, routes)| routes.iter().map(|(route, stats)| (method.clone(), route.clone(), stats.clone())))
                    .collect();
                rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
                rows
            })
            .unwrap_or_default();
        for (method, route, stats) in &routes {
            let mut statuses: Vec<(u16, u64)> =
                stats.statuses.lock().map(|statuses| statuses.iter().map(|(s, n)| (*s, *n)).collect()).unwrap_or_default();
            statuses.sort_unstable();
            for (status, count) in statuses {
                let _ = writeln!(
                    out,
                    "flowgate_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                    label(method),
                    label(route)
                );
            }
        }
        out.push_str("# HELP flowgate_http_request_duration_seconds HTTP requests by method and route, until the response's head.\n");
        out.push_str("# TYPE flowgate_http_request_duration_seconds histogram\n");
        for (method, route, stats) in &routes {
            stats.duration.render(
                &mut out,
                "flowgate_http_request_duration_seconds",
                &format!("method=\"{}\",route=\"{}\"", label(method), label(route)),
            );
        }
        out.push_str("# HELP flowgate_run_duration_seconds Workflow and chatflow runs by app and final status.\n");
        out.push_str("# TYPE flowgate_run_duration_seconds histogram\n");
        if let Ok(runs) = self.runs.read() {
            let mut rows: Vec<_> = runs.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((app_id, status), histogram) in rows {
                histogram.render(&mut out, "flowgate_run_duration_seconds", &format!("app_id=\"{}\",status=\"{status}\"", label(app_id)));
            }
        }
        out.push_str("# HELP flowgate_node_duration_seconds Node executions by node type.\n");
        out.push_str("# TYPE flowgate_node_duration_seconds histogram\n");
        if let Ok(nodes) = self.nodes.read() {
            let mut rows: Vec<_> = nodes.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (node_type, histogram) in rows {
                histogram.render(&mut out, "flowgate_node_duration_seconds", &format!("node_type=\"{}\"", label(node_type)));
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        gauge(&mut out, "flowgate_db_pool_in_use", "Database connections in use.", "gauge", gauges.pool_in_use.to_string());
        gauge(&mut out, "flowgate_db_pool_open", "Database connections open.", "gauge", gauges.pool_size.to_string());
        gauge(&mut out, "flowgate_db_pool_max", "The database pool's size limit.", "gauge", gauges.pool_max.to_string());
        gauge(&mut out, "flowgate_recorder_backlog", "Run-log operations not yet written.", "gauge", gauges.recorder_backlog.to_string());
        gauge(&mut out, "flowgate_recorder_batches_total", "Run-log batches written.", "counter", gauges.recorder_batches.to_string());
        gauge(&mut out, "flowgate_recorder_rows_total", "Run-log rows written.", "counter", gauges.recorder_rows.to_string());
        gauge(&mut out, "flowgate_recorder_errors_total", "Run-log batches that failed.", "counter", gauges.recorder_errors.to_string());
        gauge(&mut out, "flowgate_runs_in_progress", "Runs executing now.", "gauge", gauges.runs_in_progress.to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let metrics = Metrics::default();
        metrics.run_finished("app\"1", "succeeded", 0.002);
        metrics.run_finished("app\"1", "succeeded", 0.2);
        metrics.node_finished(&Arc::from("llm"), 0.0001);
        metrics.request("POST", "/v1/workflows/run", 200, 0.003);
        metrics.request("POST", "/v1/workflows/run", 429, 0.0001);
        let text = metrics.render(&Gauges {
            pool_in_use: 1,
            pool_size: 2,
            pool_max: 10,
            recorder_backlog: 3,
            recorder_batches: 4,
            recorder_rows: 5,
            recorder_errors: 0,
            runs_in_progress: 0,
        });
        assert!(
            text.contains("flowgate_run_duration_seconds_bucket{app_id=\"app\\\"1\",status=\"succeeded\",le=\"0.0025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("flowgate_run_duration_seconds_bucket{app_id=\"app\\\"1\",status=\"succeeded\",le=\"0.25\"} 2\n"));
        assert!(text.contains("flowgate_run_duration_seconds_count{app_id=\"app\\\"1\",status=\"succeeded\"} 2\n"));
        assert!(text.contains("flowgate_node_duration_seconds_count{node_type=\"llm\"} 1\n"));
        assert!(text.contains("flowgate_http_requests_total{method=\"POST\",route=\"/v1/workflows/run\",status=\"200\"} 1\n"));
        assert!(text.contains("flowgate_http_requests_total{method=\"POST\",route=\"/v1/workflows/run\",status=\"429\"} 1\n"));
        assert!(
            text.contains("flowgate_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/workflows/run\",le=\"0.0025\"} 1\n")
        );
        assert!(text.contains("flowgate_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/workflows/run\"} 2\n"));
        assert!(text.contains("flowgate_recorder_backlog 3\n"));
    }
}
