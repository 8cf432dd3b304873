//! Prometheus metrics (`GET /metrics`, text exposition format): HTTP requests by route and
//! status and their durations, run durations and statuses by app, node durations by node type, database pool use
//! and the run-log recorder's backlog.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, RwLock};

use flowgate_metrics::{Histogram, Histograms, label};

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
    runs: Histograms<(String, &'static str)>,
    nodes: Histograms<Arc<str>>,
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
        self.runs.observe(&(app_id.to_owned(), status), seconds);
    }

    pub fn node_finished(&self, node_type: &Arc<str>, seconds: f64) {
        self.nodes.observe(node_type, seconds);
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
        for ((app_id, status), histogram) in self.runs.sorted() {
            histogram.render(&mut out, "flowgate_run_duration_seconds", &format!("app_id=\"{}\",status=\"{status}\"", label(&app_id)));
        }
        out.push_str("# HELP flowgate_node_duration_seconds Node executions by node type.\n");
        out.push_str("# TYPE flowgate_node_duration_seconds histogram\n");
        for (node_type, histogram) in self.nodes.sorted() {
            histogram.render(&mut out, "flowgate_node_duration_seconds", &format!("node_type=\"{}\"", label(&node_type)));
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
        let count = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed).to_string();
        let open = crate::connections::OPEN_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed).to_string();
        gauge(&mut out, "flowgate_http_connections_open", "Client connections open.", "gauge", open);
        let evicted = count(&crate::connections::EVICTED_CONNECTIONS);
        gauge(&mut out, "flowgate_http_connections_evicted_total", "Idle connections closed to make room at the cap.", "counter", evicted);
        let refused = count(&crate::connections::REFUSED_CONNECTIONS);
        gauge(&mut out, "flowgate_http_connections_refused_total", "Connections closed on arrival at the cap.", "counter", refused);
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
