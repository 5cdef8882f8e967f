//! Typed top-level settings and the runtime settings shared by every sink and transform.
//! Doc comments here become descriptions in `connectd schema`.

use std::collections::BTreeMap;
use std::fmt;

use connector_core::config::{Duration, Secret};
use schemars::JsonSchema;
use serde::Deserialize;

/// A librdkafka property value (string, number or boolean).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum PropertyValue {
    /// A boolean, written `true`/`false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A decimal number.
    Float(f64),
    /// Text.
    Text(String),
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Bool(b) => write!(f, "{b}"),
            PropertyValue::Int(i) => write!(f, "{i}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::Text(s) => f.write_str(s),
        }
    }
}

/// Broker connection and client settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Partitions of topics created at start-up when a topic does not say.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub default_partitions: i32,
    /// Replication factor of topics created at start-up.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 100))]
    pub replication_factor: i32,
    /// librdkafka properties for every client (e.g. `security.protocol`, `sasl.mechanisms`).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// librdkafka properties for consumers only (override the defaults and `properties`).
    #[serde(default)]
    pub consumer: BTreeMap<String, PropertyValue>,
    /// librdkafka properties for producers only. connectd's producers default to
    /// `compression.type: lz4` (`none`, `gzip`, `snappy` and `zstd` are the others).
    #[serde(default)]
    pub producer: BTreeMap<String, PropertyValue>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            default_partitions: default_partitions(),
            replication_factor: default_replication(),
            properties: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// The admin/metrics HTTP server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Listen address. Loopback by default; set a token before exposing it.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// When set, every request except `GET /health` must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Run the admin server at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9000".into()
}
pub(crate) fn default_true() -> bool {
    true
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            enabled: true,
        }
    }
}

/// A topic to create at start-up when missing.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Topic name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$"))]
    pub name: String,
    /// Partition count (default: `kafka.default_partitions`).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,
    /// Replication factor (default: `kafka.replication_factor`).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub replication_factor: Option<i32>,
}

/// Everything at the top level of `connectors.yaml` except `connectors`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalSettings {
    /// Broker settings.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Admin/metrics server.
    #[serde(default)]
    pub admin: AdminSettings,
    /// Topics to create at start-up (topics connectors use are created too, with defaults).
    #[serde(default)]
    pub topics: Vec<TopicSettings>,
    /// How long a graceful shutdown (SIGINT/SIGTERM) may take before in-flight work is abandoned.
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout: Duration,
}

fn default_shutdown() -> Duration {
    Duration::from_secs(30)
}

/// One topic or several.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Topics {
    /// A single topic.
    One(String),
    /// Several topics.
    Many(Vec<String>),
}

impl Topics {
    /// The topics as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Topics::One(t) => vec![t.clone()],
            Topics::Many(v) => v.clone(),
        }
    }
}

/// Batch limits: a batch is handed to the connector when any limit is reached.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Most records in one batch.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_records: usize,
    /// Most bytes (keys + values + headers) in one batch.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: usize,
    /// Longest wait for a batch to fill before it is handed over anyway.
    #[serde(default = "default_linger")]
    pub linger: Duration,
}

fn default_max_records() -> usize {
    2000
}
fn default_max_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_linger() -> Duration {
    Duration::from_millis(50)
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            linger: default_linger(),
        }
    }
}

/// Retries of retriable failures: exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// First backoff.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// Longest backoff.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// Give up after this many attempts and mark the connector `failed` (unset: never give up).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_attempts: None,
        }
    }
}

/// Trips the connector to `failed` when too much of its input goes to the dead-letter topic.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqBreakerSettings {
    /// Highest tolerated share of dead-lettered records in the window (0 < ratio ≤ 1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_ratio: f64,
    /// Window size in records.
    #[serde(default = "default_breaker_window")]
    #[schemars(range(min = 1))]
    pub window: u64,
}

fn default_breaker_window() -> u64 {
    1000
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained record (default).
    #[default]
    Earliest,
    /// Only records produced after the group first joins.
    Latest,
}

/// Runtime settings of every sink and transform (they read topics in a consumer group).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Topic(s) to read.
    pub input: Topics,
    /// Consumer group (default `connectd-<name>`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Dead-letter topic for records that fail permanently. Without one, a permanent failure
    /// stops the connector (state `failed`) rather than dropping the record.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$"))]
    pub dlq_topic: Option<String>,
    /// Batch limits.
    #[serde(default)]
    pub batch: BatchSettings,
    /// Batches handed to the connector at once (each slot has its own connector instance).
    #[serde(default = "default_in_flight")]
    #[schemars(range(min = 1, max = 64))]
    pub max_in_flight: usize,
    /// Most memory, across all slots, of records read and not yet settled: those waiting for
    /// a worker and every batch in flight, including a transform's outputs whose produce
    /// acknowledgements are outstanding. A record counts its key, value and headers plus a
    /// fixed overhead for its own structure (~230 bytes; ~160 for a queued output). Reading
    /// from the broker stops above it.
    #[serde(default = "default_max_buffered")]
    #[schemars(range(min = 1))]
    pub max_buffered_bytes: usize,
    /// Retries of retriable failures.
    #[serde(default)]
    pub retry: RetrySettings,
    /// DLQ-rate breaker (off when unset).
    #[serde(default)]
    pub dlq_breaker: Option<DlqBreakerSettings>,
    /// Where a new consumer group starts.
    #[serde(default)]
    pub start_from: StartFrom,
}

fn default_in_flight() -> usize {
    2
}
fn default_max_buffered() -> usize {
    32 * 1024 * 1024
}

impl ConsumerSettings {
    /// The consumer group of connector `name`.
    pub fn group(&self, name: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("connectd-{name}"))
    }
}
