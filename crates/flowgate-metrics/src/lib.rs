//! Prometheus text exposition primitives: a lock-free histogram, labelled families of
//! histograms and counters, and label escaping. Small on purpose: the server and the gateway
//! each render their own metrics with these.

use std::collections::HashMap;
use std::fmt::Write;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Upper bounds of the duration buckets, in seconds.
pub const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        if let Some(index) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
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
pub fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Histograms by key; the common case (the key is known) takes a read lock only.
pub struct Histograms<K>(RwLock<HashMap<K, Arc<Histogram>>>);

impl<K> Default for Histograms<K> {
    fn default() -> Self {
        Self(RwLock::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone + Ord> Histograms<K> {
    pub fn observe(&self, key: &K, seconds: f64) {
        if let Some(histogram) = self.0.read().ok().and_then(|map| map.get(key).cloned()) {
            histogram.observe(seconds);
            return;
        }
        if let Ok(mut map) = self.0.write() {
            map.entry(key.clone()).or_default().observe(seconds);
        }
    }

    /// Every histogram, sorted by key.
    pub fn sorted(&self) -> Vec<(K, Arc<Histogram>)> {
        let mut rows: Vec<(K, Arc<Histogram>)> =
            self.0.read().map(|map| map.iter().map(|(key, histogram)| (key.clone(), histogram.clone())).collect()).unwrap_or_default();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

/// Counters by key.
pub struct Counters<K>(RwLock<HashMap<K, Arc<AtomicU64>>>);

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Self(RwLock::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone + Ord> Counters<K> {
    pub fn add(&self, key: &K, amount: u64) {
        if let Some(counter) = self.0.read().ok().and_then(|map| map.get(key).cloned()) {
            counter.fetch_add(amount, Ordering::Relaxed);
            return;
        }
        if let Ok(mut map) = self.0.write() {
            map.entry(key.clone()).or_default().fetch_add(amount, Ordering::Relaxed);
        }
    }

    pub fn sorted(&self) -> Vec<(K, u64)> {
        let mut rows: Vec<(K, u64)> = self
            .0
            .read()
            .map(|map| map.iter().map(|(key, counter)| (key.clone(), counter.load(Ordering::Relaxed))).collect())
            .unwrap_or_default();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let histogram = Histogram::default();
        histogram.observe(0.002);
        histogram.observe(0.2);
        histogram.observe(60.0);
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "a=\"b\"");
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.001\"} 0\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.0025\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.25\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{a=\"b\"} 3\n"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
