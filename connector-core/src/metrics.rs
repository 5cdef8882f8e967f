//! A small, dependency-free metrics registry rendered in the Prometheus text format.
//!
//! Connectors get a [`Metrics`] handle already labelled with their name and create counters,
//! gauges and histograms from it. Creating the same series twice returns the same series.
//!
//! ```
//! use connector_core::metrics::Metrics;
//! let m = Metrics::new().with_label("connector", "pg");
//! let rows = m.counter("rows_inserted_total", "Rows inserted");
//! rows.add(3);
//! m.histogram("write_seconds", "Batch write latency", &[0.01, 0.1]).observe(0.05);
//! let text = m.render();
//! assert!(text.contains(r#"rows_inserted_total{connector="pg"} 3"#));
//! assert!(text.contains(r#"write_seconds_bucket{connector="pg",le="0.1"} 1"#));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default latency buckets in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Default size buckets (records per batch).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<String, Series>,
}

#[derive(Default)]
struct Inner {
    families: Mutex<BTreeMap<String, Family>>,
}

/// A handle to a shared registry plus a fixed set of labels.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
    labels: Vec<(String, String)>,
}

/// A monotonically increasing count.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Default, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct HistInner {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in micro-units, to stay lock-free.
    sum_micros: AtomicU64,
}

/// A distribution of observations in fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistInner>);

impl Histogram {
    fn with_bounds(bounds: &[f64]) -> Self {
        Histogram(Arc::new(HistInner {
            bounds: bounds.to_vec(),
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let h = &self.0;
        for (i, b) in h.bounds.iter().enumerate() {
            if v <= *b {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_str(labels: &[(String, String)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    /// A new, empty registry with no labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same registry with one more label on every series created from the result.
    pub fn with_label(&self, name: &str, value: &str) -> Self {
        let mut labels = self.labels.clone();
        labels.retain(|(k, _)| k != name);
        labels.push((name.to_string(), value.to_string()));
        Self {
            inner: self.inner.clone(),
            labels,
        }
    }

    /// The series `name` with this handle's labels, created by `make` when new.
    fn series(&self, name: &str, help: &str, kind: Kind, make: impl FnOnce() -> Series) -> Series {
        let mut fams = match self.inner.families.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let fam = fams.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        if fam.kind != kind {
            // A programming error in a connector: never panic, hand out a detached series.
            tracing::error!(
                metric = name,
                "metric registered twice with different kinds"
            );
            return make();
        }
        fam.series
            .entry(label_str(&self.labels))
            .or_insert_with(make)
            .clone()
    }

    /// The counter `name` with this handle's labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        match self.series(name, help, Kind::Counter, || {
            Series::Counter(Counter::default())
        }) {
            Series::Counter(c) => c,
            _ => Counter::default(),
        }
    }

    /// The gauge `name` with this handle's labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        match self.series(name, help, Kind::Gauge, || Series::Gauge(Gauge::default())) {
            Series::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    /// The histogram `name` with this handle's labels and the given upper bounds.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let make = || Series::Histogram(Histogram::with_bounds(buckets));
        match self.series(name, help, Kind::Histogram, make) {
            Series::Histogram(h) => h,
            _ => Histogram::with_bounds(buckets),
        }
    }

    /// Renders every series of the registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let fams = match self.inner.families.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut out = String::new();
        for (name, fam) in fams.iter() {
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind.as_str());
            for (labels, s) in &fam.series {
                let braces = |extra: &str| -> String {
                    match (labels.is_empty(), extra.is_empty()) {
                        (true, true) => String::new(),
                        (true, false) => format!("{{{extra}}}"),
                        (false, true) => format!("{{{labels}}}"),
                        (false, false) => format!("{{{labels},{extra}}}"),
                    }
                };
                match s {
                    Series::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {}", braces(""), c.get());
                    }
                    Series::Gauge(g) => {
                        let _ = writeln!(out, "{name}{} {}", braces(""), g.get());
                    }
                    Series::Histogram(h) => {
                        for (i, b) in h.0.bounds.iter().enumerate() {
                            let n = h.0.buckets[i].load(Ordering::Relaxed);
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {n}",
                                braces(&format!("le=\"{b}\""))
                            );
                        }
                        let _ =
                            writeln!(out, "{name}_bucket{} {}", braces("le=\"+Inf\""), h.count());
                        let _ = writeln!(out, "{name}_sum{} {}", braces(""), h.sum());
                        let _ = writeln!(out, "{name}_count{} {}", braces(""), h.count());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_and_labels_share_a_series() {
        let m = Metrics::new();
        let a = m.with_label("connector", "x").counter("c_total", "h");
        let b = m.with_label("connector", "x").counter("c_total", "h");
        a.inc();
        b.add(2);
        assert_eq!(a.get(), 3);
        let other = m.with_label("connector", "y").counter("c_total", "h");
        assert_eq!(other.get(), 0);
        let text = m.render();
        assert!(text.contains("# TYPE c_total counter"));
        assert!(text.contains("c_total{connector=\"x\"} 3"));
        assert!(text.contains("c_total{connector=\"y\"} 0"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        let h = m.histogram("lat", "h", &[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let text = m.render();
        assert!(text.contains("lat_bucket{le=\"1\"} 1"), "{text}");
        assert!(text.contains("lat_bucket{le=\"2\"} 2"), "{text}");
        assert!(text.contains("lat_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("lat_count 3"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new().with_label("l", "a\"b");
        m.gauge("g", "h").set(-2);
        assert!(m.render().contains("g{l=\"a\\\"b\"} -2"));
    }
}
