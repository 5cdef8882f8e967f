//! Metrics for connectors, on the official Prometheus/OpenMetrics client (`prometheus-client`).
//!
//! Connectors get a [`Metrics`] handle already labelled with their name and create counters,
//! gauges and histograms from it. Creating the same series twice returns the same series.
//! The registry renders in the OpenMetrics text format ([`Metrics::render_openmetrics`],
//! what Prometheus asks for) and in the classic Prometheus text format 0.0.4
//! ([`Metrics::render`], for everything else: `curl`, older scrapers).
//!
//! Names: a counter's name ends in `_total` (OpenMetrics appends it to one that does not);
//! help texts gain a full stop.
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
//! assert!(m.render_openmetrics().ends_with("# EOF\n"));
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::Histogram as PromHistogram;
use prometheus_client::registry::Registry;

/// Default latency buckets in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Default size buckets (records per batch).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0,
];

/// A series' labels, values already escaped for the text formats (`prometheus-client` writes
/// label values as given).
type Labels = Vec<(String, String)>;

/// Makes each histogram of a family with the family's buckets.
#[derive(Clone)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<PromHistogram> for Buckets {
    fn new_metric(&self) -> PromHistogram {
        PromHistogram::new(self.0.iter().copied())
    }
}

#[derive(Clone)]
enum Fam {
    Counter(Family<Labels, PromCounter>),
    Gauge(Family<Labels, PromGauge>),
    Histogram(Family<Labels, PromHistogram, Buckets>),
}

#[derive(Default)]
struct Inner {
    registry: Mutex<Registry>,
    /// Families by the name connectors use, so that a second request finds the first.
    families: Mutex<HashMap<String, Fam>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A handle to a shared registry plus a fixed set of labels.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
    labels: Labels,
}

/// A monotonically increasing count.
#[derive(Clone, Default, Debug)]
pub struct Counter(PromCounter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Clone, Default, Debug)]
pub struct Gauge(PromGauge);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.inc_by(d);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A distribution of observations in fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram(PromHistogram);

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        labels.push((name.to_string(), escape(value)));
        Self {
            inner: self.inner.clone(),
            labels,
        }
    }

    /// The family `name`, registered by `make` when new. `None` when `name` is already a
    /// family of another kind: a programming error in a connector, logged, never a panic.
    fn family(&self, name: &str, help: &str, make: impl FnOnce() -> Fam) -> Fam {
        let mut fams = lock(&self.inner.families);
        if let Some(f) = fams.get(name) {
            return f.clone();
        }
        let fam = make();
        let mut registry = lock(&self.inner.registry);
        match &fam {
            // OpenMetrics names the counter family without the `_total` of its samples.
            Fam::Counter(c) => {
                registry.register(name.strip_suffix("_total").unwrap_or(name), help, c.clone())
            }
            Fam::Gauge(g) => registry.register(name, help, g.clone()),
            Fam::Histogram(h) => registry.register(name, help, h.clone()),
        }
        fams.insert(name.to_string(), fam.clone());
        fam
    }

    fn kind_clash(name: &str) {
        tracing::error!(
            metric = name,
            "metric registered twice with different kinds"
        );
    }

    /// The counter `name` with this handle's labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        match self.family(name, help, || Fam::Counter(Family::default())) {
            Fam::Counter(f) => Counter(f.get_or_create_owned(&self.labels)),
            _ => {
                Self::kind_clash(name);
                Counter::default()
            }
        }
    }

    /// The gauge `name` with this handle's labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        match self.family(name, help, || Fam::Gauge(Family::default())) {
            Fam::Gauge(f) => Gauge(f.get_or_create_owned(&self.labels)),
            _ => {
                Self::kind_clash(name);
                Gauge::default()
            }
        }
    }

    /// The histogram `name` with this handle's labels and the given upper bounds (the first
    /// request for `name` sets the family's bounds).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let make = || Fam::Histogram(Family::new_with_constructor(Buckets(buckets.into())));
        match self.family(name, help, make) {
            Fam::Histogram(f) => Histogram(f.get_or_create_owned(&self.labels)),
            _ => {
                Self::kind_clash(name);
                Histogram(PromHistogram::new(buckets.iter().copied()))
            }
        }
    }

    /// Every series of the registry in the OpenMetrics text format
    /// (`application/openmetrics-text; version=1.0.0`).
    pub fn render_openmetrics(&self) -> String {
        let registry = lock(&self.inner.registry);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Every series of the registry in the classic Prometheus text format
    /// (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        classic_text(&self.render_openmetrics())
    }
}

/// The classic text format from OpenMetrics text: the two differ, for what this registry
/// holds, only in the name a counter's `# HELP`/`# TYPE` lines give (`x_total` there, `x` in
/// OpenMetrics) and the `# EOF` terminator; the bucket bound is also moved to the end of its
/// labels, where connectd always had it. No crate renders both formats, hence these lines.
fn classic_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            continue;
        }
        let counter_family = |l: &str| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
                .map(str::to_string)
        };
        let renamed = if let Some(name) = counter_family(line) {
            Some(format!("# TYPE {name}_total counter"))
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            // A HELP line is followed by its family's TYPE line.
            let next = lines.get(i + 1).and_then(|l| counter_family(l));
            next.and_then(|name| {
                rest.strip_prefix(&format!("{name} "))
                    .map(|help| format!("# HELP {name}_total {help}"))
            })
        } else {
            None
        };
        let line = renamed.unwrap_or_else(|| le_last(line));
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `x_bucket{le="0.1",connector="pg"} 3` → `x_bucket{connector="pg",le="0.1"} 3`: the order
/// Prometheus' own clients write (the bound last), which queries do not care about but people
/// reading or grepping the text do.
fn le_last(line: &str) -> String {
    let Some(open) = line.find("_bucket{le=\"") else {
        return line.to_string();
    };
    let le_start = open + "_bucket{".len();
    let after_value = line[le_start + 4..].find('"').map(|i| le_start + 4 + i + 1);
    match after_value {
        Some(le_end) if line[le_end..].starts_with(',') => match line[le_end..].find('}') {
            Some(close) => {
                let rest = &line[le_end + 1..le_end + close];
                format!(
                    "{}{rest},{}{}",
                    &line[..le_start],
                    &line[le_start..le_end],
                    &line[le_end + close..]
                )
            }
            None => line.to_string(),
        },
        _ => line.to_string(),
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
        assert!(text.contains("# HELP c_total h."), "{text}");
        assert!(text.contains("# TYPE c_total counter"), "{text}");
        assert!(text.contains("c_total{connector=\"x\"} 3"), "{text}");
        assert!(text.contains("c_total{connector=\"y\"} 0"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_names_the_counter_family_without_total() {
        let m = Metrics::new().with_label("connector", "x");
        m.counter("c_total", "h").inc();
        m.gauge("g", "gh").set(4);
        let text = m.render_openmetrics();
        assert!(text.contains("# TYPE c counter\n"), "{text}");
        assert!(text.contains("c_total{connector=\"x\"} 1\n"), "{text}");
        assert!(
            text.contains("# TYPE g gauge\ng{connector=\"x\"} 4\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        let h = m.histogram("lat", "h", &[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let text = m.render();
        assert!(text.contains("lat_bucket{le=\"1.0\"} 1"), "{text}");
        assert!(text.contains("lat_bucket{le=\"2.0\"} 2"), "{text}");
        assert!(text.contains("lat_bucket{le=\"+Inf\"} 3"), "{text}");
        // prometheus-client writes an empty label set as `{}` (valid in both formats).
        assert!(text.contains("lat_count{} 3"), "{text}");
        assert!(text.contains("lat_sum{} 5.0"), "{text}");
    }

    #[test]
    fn the_bucket_bound_is_the_last_label_in_the_classic_text() {
        let m = Metrics::new()
            .with_label("connector", "pg")
            .with_label("table", "t");
        m.histogram("w", "h", &[0.5]).observe(0.1);
        let text = m.render();
        assert!(
            text.contains("w_bucket{connector=\"pg\",table=\"t\",le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("w_bucket{connector=\"pg\",table=\"t\",le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("w_count{connector=\"pg\",table=\"t\"} 1\n"),
            "{text}"
        );
        assert_eq!(le_last("w_bucket{le=\"1.0\"} 2"), "w_bucket{le=\"1.0\"} 2");
        assert_eq!(le_last("w_sum{} 2"), "w_sum{} 2");
    }

    #[test]
    fn a_name_reused_for_another_kind_gets_a_detached_series() {
        let m = Metrics::new();
        m.counter("x_total", "h").inc();
        let g = m.gauge("x_total", "h");
        g.set(9);
        assert_eq!(g.get(), 9);
        assert!(m.render().contains("x_total{} 1"), "{}", m.render());
        assert!(!m.render().contains(" 9"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new().with_label("l", "a\"b");
        m.gauge("g", "h").set(-2);
        assert!(m.render().contains("g{l=\"a\\\"b\"} -2"));
    }
}
