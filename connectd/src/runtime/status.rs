//! Connector states and counters, shared between the runners and the admin server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use connector_core::metrics::{Counter, Gauge, Histogram, Metrics, LATENCY_BUCKETS, SIZE_BUCKETS};
use serde::Serialize;
use tokio::sync::watch;

/// The life-cycle state of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being built or joining its group.
    Starting,
    /// Working normally.
    Running,
    /// Paused by an operator (partitions paused, group membership kept).
    Paused,
    /// Working, but retrying failures (database down, broker unavailable…).
    Degraded,
    /// Crashed; the supervisor restarts it after a backoff.
    Restarting,
    /// Stopped for good (breaker tripped, retries exhausted, no DLQ for a poison record) until
    /// an operator resumes it.
    Failed,
    /// `enabled: false`, or shut down.
    Stopped,
}

impl State {
    /// Every state, for the state gauge.
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Running,
        State::Paused,
        State::Degraded,
        State::Restarting,
        State::Failed,
        State::Stopped,
    ];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Degraded => "degraded",
            State::Restarting => "restarting",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// Operator requests from the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deliver normally.
    Run,
    /// Pause delivery.
    Pause,
}

/// Counters every connector exports (label `connector`).
#[derive(Clone)]
pub struct ConnectorMetrics {
    /// Records read from the input.
    pub records_in: Counter,
    /// Records delivered by a sink / produced by a transform or source.
    pub records_out: Counter,
    /// Input records a transform dropped on purpose.
    pub records_dropped: Counter,
    /// Records sent to the dead-letter topic.
    pub dlq_records: Counter,
    /// Retries of retriable failures.
    pub retries: Counter,
    /// Restarts by the supervisor.
    pub restarts: Counter,
    /// Records per batch.
    pub batch_size: Histogram,
    /// Seconds to handle a batch (first attempt to final outcome of every record).
    pub batch_seconds: Histogram,
    /// Offset commits.
    pub commits: Counter,
    /// Partitions paused for backpressure (each resume fetches the partition's data again).
    pub partition_pauses: Counter,
    state: Vec<(State, Gauge)>,
    base: Metrics,
}

impl ConnectorMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            records_in: m.counter("connectd_records_in_total", "Records read from the input"),
            records_out: m.counter(
                "connectd_records_out_total",
                "Records delivered by a sink or produced by a transform or source",
            ),
            records_dropped: m.counter(
                "connectd_records_dropped_total",
                "Input records a transform dropped on purpose",
            ),
            dlq_records: m.counter(
                "connectd_dlq_records_total",
                "Records sent to the dead-letter topic",
            ),
            retries: m.counter("connectd_retries_total", "Retries of retriable failures"),
            restarts: m.counter(
                "connectd_restarts_total",
                "Connector restarts by the supervisor",
            ),
            batch_size: m.histogram("connectd_batch_records", "Records per batch", SIZE_BUCKETS),
            batch_seconds: m.histogram(
                "connectd_batch_seconds",
                "Seconds to handle a batch",
                LATENCY_BUCKETS,
            ),
            commits: m.counter("connectd_offset_commits_total", "Offset commits"),
            partition_pauses: m.counter(
                "connectd_partition_pauses_total",
                "Partitions paused for backpressure or by the operator",
            ),
            state: State::ALL
                .iter()
                .map(|s| {
                    (
                        *s,
                        m.with_label("state", s.as_str()).gauge(
                            "connectd_connector_state",
                            "1 for the connector's current state",
                        ),
                    )
                })
                .collect(),
            base: m.clone(),
        }
    }

    /// Gauge of consumer lag for one partition (label `topic`, `partition`).
    pub fn lag(&self, topic: &str, partition: i32) -> Gauge {
        self.base
            .with_label("topic", topic)
            .with_label("partition", &partition.to_string())
            .gauge(
                "connectd_consumer_lag",
                "Records behind the high watermark (clamped at 0; approximate on Tansu)",
            )
    }
}

/// Status shown by `GET /connectors/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Name.
    pub name: String,
    /// Plugin type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// source / transform / sink.
    pub kind: String,
    /// Current state.
    pub state: State,
    /// Last error, if any (never contains secrets).
    pub last_error: Option<String>,
    /// Counters.
    pub records_in: u64,
    /// Counters.
    pub records_out: u64,
    /// Counters.
    pub records_dropped: u64,
    /// Counters.
    pub dlq_records: u64,
    /// Counters.
    pub retries: u64,
    /// Counters.
    pub restarts: u64,
    /// Partitions currently assigned to this process (sinks and transforms).
    pub assigned_partitions: usize,
    /// Lag per `topic/partition` (approximate on Tansu).
    pub lag: BTreeMap<String, i64>,
    /// Connector-specific status (`Sink::status` / `Transform::status`): the latest any
    /// instance reported — current for connector-wide counters. With several instances,
    /// `instances` has each one's own.
    pub details: serde_json::Value,
    /// Every instance's status, by slot (`max_in_flight` instances run at once), when there is
    /// more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<serde_json::Value>,
    /// The DLQ-rate breaker (`dlq_breaker` setting): `state` closed/open, the dead-letter
    /// ratio over the last `records_in_window` records; absent when not configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlq_breaker: Option<serde_json::Value>,
    /// Configuration with secrets redacted.
    pub config: serde_json::Value,
}

struct Inner {
    state: State,
    assigned: usize,
    last_error: Option<String>,
    lag: BTreeMap<String, i64>,
    /// Status per instance slot.
    details: Vec<serde_json::Value>,
    /// The status reported last, by any slot.
    latest: serde_json::Value,
    breaker: Option<serde_json::Value>,
}

/// One connector's shared status handle.
#[derive(Clone)]
pub struct ConnectorHandle {
    /// Name.
    pub name: String,
    type_name: String,
    kind: String,
    config: serde_json::Value,
    inner: Arc<Mutex<Inner>>,
    /// Counters.
    pub metrics: ConnectorMetrics,
    control_tx: Arc<watch::Sender<Control>>,
    restart: Arc<tokio::sync::Notify>,
}

impl ConnectorHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Sets the state.
    pub fn set_state(&self, s: State) {
        let mut g = self.lock();
        if g.state != s {
            tracing::info!(connector = %self.name, from = g.state.as_str(), to = s.as_str(), "state");
        }
        g.state = s;
        drop(g);
        for (state, gauge) in &self.metrics.state {
            gauge.set(i64::from(*state == s));
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Records an error message.
    pub fn set_error(&self, e: impl Into<String>) {
        self.lock().last_error = Some(e.into());
    }

    /// Records lag of one partition.
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        let lag = lag.max(0);
        self.metrics.lag(topic, partition).set(lag);
        self.lock().lag.insert(format!("{topic}/{partition}"), lag);
    }

    /// Records how many partitions this process holds.
    pub fn set_assigned(&self, n: usize) {
        self.lock().assigned = n;
    }

    /// Forgets the lag of partitions no longer assigned.
    pub fn clear_lag(&self) {
        self.lock().lag.clear();
    }

    /// Connector-specific details of the instance in `slot`.
    pub fn set_details(&self, slot: usize, d: serde_json::Value) {
        let mut g = self.lock();
        if g.details.len() <= slot {
            g.details.resize(slot + 1, serde_json::Value::Null);
        }
        g.details[slot] = d.clone();
        g.latest = d;
    }

    /// The DLQ-rate breaker's latest view.
    pub fn set_breaker(&self, v: serde_json::Value) {
        self.lock().breaker = Some(v);
    }

    /// Operator control channel.
    pub fn control(&self) -> watch::Receiver<Control> {
        self.control_tx.subscribe()
    }

    /// Asks the connector to pause or run.
    pub fn send_control(&self, c: Control) {
        self.control_tx.send_replace(c);
    }

    /// The current operator request.
    pub fn current_control(&self) -> Control {
        *self.control_tx.borrow()
    }

    /// Asks a `failed` connector to start again.
    pub fn request_restart(&self) {
        self.restart.notify_one();
    }

    /// Resolves when an operator asks a failed connector to start again.
    pub async fn restart_requested(&self) {
        self.restart.notified().await;
    }

    /// Snapshot for the admin API.
    pub fn view(&self) -> StatusView {
        let g = self.lock();
        let m = &self.metrics;
        StatusView {
            name: self.name.clone(),
            type_name: self.type_name.clone(),
            kind: self.kind.clone(),
            state: g.state,
            last_error: g.last_error.clone(),
            records_in: m.records_in.get(),
            records_out: m.records_out.get(),
            records_dropped: m.records_dropped.get(),
            dlq_records: m.dlq_records.get(),
            retries: m.retries.get(),
            restarts: m.restarts.get(),
            assigned_partitions: g.assigned,
            lag: g.lag.clone(),
            details: g.latest.clone(),
            instances: if g.details.len() > 1 {
                g.details.clone()
            } else {
                Vec::new()
            },
            dlq_breaker: g.breaker.clone(),
            config: self.config.clone(),
        }
    }
}

/// Every connector's handle, by name.
#[derive(Clone, Default)]
pub struct StatusRegistry {
    connectors: Arc<Mutex<BTreeMap<String, ConnectorHandle>>>,
    /// The process-wide metrics registry.
    pub metrics: Metrics,
}

impl StatusRegistry {
    /// Empty registry over `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            connectors: Arc::default(),
            metrics,
        }
    }

    /// Adds a connector.
    pub fn add(
        &self,
        name: &str,
        type_name: &str,
        kind: &str,
        config: serde_json::Value,
    ) -> ConnectorHandle {
        let m = self.metrics.with_label("connector", name);
        let (tx, _) = watch::channel(Control::Run);
        let h = ConnectorHandle {
            name: name.to_string(),
            type_name: type_name.to_string(),
            kind: kind.to_string(),
            config,
            inner: Arc::new(Mutex::new(Inner {
                state: State::Starting,
                assigned: 0,
                last_error: None,
                lag: BTreeMap::new(),
                details: Vec::new(),
                latest: serde_json::Value::Null,
                breaker: None,
            })),
            metrics: ConnectorMetrics::new(&m),
            control_tx: Arc::new(tx),
            restart: Arc::new(tokio::sync::Notify::new()),
        };
        h.set_state(State::Starting);
        let mut g = match self.connectors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.insert(name.to_string(), h.clone());
        h
    }

    /// The handle of `name`.
    pub fn get(&self, name: &str) -> Option<ConnectorHandle> {
        match self.connectors.lock() {
            Ok(g) => g.get(name).cloned(),
            Err(p) => p.into_inner().get(name).cloned(),
        }
    }

    /// Every handle.
    pub fn all(&self) -> Vec<ConnectorHandle> {
        match self.connectors.lock() {
            Ok(g) => g.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        }
    }
}
