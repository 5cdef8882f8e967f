//! The connector traits: built objects ([`Sink`], [`Transform`], [`Source`]) and their typed
//! factories ([`SinkPlugin`], [`TransformPlugin`], [`SourcePlugin`]).

use std::collections::HashMap;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::context::{SinkContext, SourceContext, TransformContext};
use crate::error::{ConfigIssue, ConnectorError};
use crate::record::Record;

/// A topic and partition, as used for exactly-once offset stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// What became of one record handed to a [`Sink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The record's effect is durable. Its offset may be committed.
    Delivered,
    /// Not written this time; the runtime retries this record with backoff.
    Retriable(ConnectorError),
    /// Can never be written; the runtime sends it to the dead-letter topic.
    Permanent(ConnectorError),
}

impl RecordOutcome {
    /// True for [`RecordOutcome::Delivered`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, RecordOutcome::Delivered)
    }

    /// An outcome from an error, by its kind.
    pub fn from_error(err: ConnectorError) -> Self {
        if err.is_retriable() {
            RecordOutcome::Retriable(err)
        } else {
            RecordOutcome::Permanent(err)
        }
    }
}

/// A built sink: receives batches, makes their effect durable, answers per record.
///
/// Lifecycle (after Iggy's): the plugin's `build` opens it, the runtime calls
/// [`write`](Sink::write) for each batch, then [`close`](Sink::close) once.
///
/// The runtime never calls `write` concurrently on one sink object; for parallelism it builds
/// one sink per in-flight slot (see the connector's `max_in_flight`).
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. Returns one outcome per record, in order (`outcomes.len() ==
    /// batch.len()`), or `Err` when the batch as a whole could not be attempted:
    /// a retriable `Err` retries the batch; a permanent `Err` stops the connector (the
    /// supervisor restarts it with backoff) — it never drops records.
    ///
    /// A record may arrive again after a crash or rebalance: writes must be idempotent.
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError>;

    /// For sinks that store Kafka offsets in their own transaction (exactly-once): the next
    /// offsets to read for these partitions, as stored by the sink. `None` means the sink does
    /// not manage offsets and the consumer group's committed offsets apply.
    ///
    /// The runtime seeks to these offsets on assignment. One past the partition's end (a
    /// recreated topic, a broker that lost its data) fails the connector instead, naming the
    /// partition: resuming would skip every record below it.
    async fn stored_offsets(
        &mut self,
        _partitions: &[TopicPartition],
    ) -> Result<Option<HashMap<TopicPartition, i64>>, ConnectorError> {
        Ok(None)
    }

    /// Connector-specific status for `GET /connectors/{name}` (JSON object). Must not contain
    /// secrets.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Releases resources. Called once, after the last `write`.
    async fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// One record a [`Transform`] emits, with an optional topic and partition override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `None` sends the record to the connector's `output` topic.
    pub topic: Option<String>,
    /// The partition to produce to. `None`, or a partition the topic does not have, leaves
    /// the choice to the producer's partitioner (by the record's key).
    pub partition: Option<i32>,
    /// The record to produce.
    pub record: Record,
}

impl Output {
    /// A record for the connector's `output` topic.
    pub fn new(record: Record) -> Self {
        Self {
            topic: None,
            partition: None,
            record,
        }
    }

    /// A record for another topic.
    pub fn to(topic: impl Into<String>, record: Record) -> Self {
        Self {
            topic: Some(topic.into()),
            partition: None,
            record,
        }
    }

    /// The same output, produced to partition `p` when its topic has that partition.
    pub fn in_partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }
}

/// What became of one input record handed to a [`Transform`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformOutcome {
    /// Produce these records (zero or more; zero means the input is dropped on purpose).
    /// The input's offset is committed only after every output is acknowledged by the broker.
    Emit(Vec<Output>),
    /// Retry this input record later.
    Retriable(ConnectorError),
    /// Send this input record to the dead-letter topic.
    Permanent(ConnectorError),
}

impl TransformOutcome {
    /// Forward one record to the `output` topic.
    pub fn forward(record: Record) -> Self {
        TransformOutcome::Emit(vec![Output::new(record)])
    }

    /// Drop the input (e.g. a duplicate).
    pub fn drop_record() -> Self {
        TransformOutcome::Emit(Vec::new())
    }
}

/// A built transform: maps each record of a batch to zero or more records.
///
/// Batches let a transform do one round trip per batch to an external system (as
/// `redis_dedup` does with Redis pipelines).
#[async_trait]
pub trait Transform: Send {
    /// Transforms a batch. Returns one outcome per input record, in order, or a batch-level
    /// `Err` (retriable: retry the batch; permanent: the connector stops and is restarted).
    async fn transform(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<TransformOutcome>, ConnectorError>;

    /// Connector-specific status for `GET /connectors/{name}`.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Releases resources. Called once.
    async fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A built source: runs until shutdown, handing records to the runtime's
/// [`Emitter`](crate::Emitter), which resolves once the broker acknowledged them.
#[async_trait]
pub trait Source: Send {
    /// Runs the source. Returns when `ctx.shutdown` fires (Ok) or on a fatal error.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError>;
}

/// Typed factory of a sink (`type: <TYPE>` in `connectors.yaml`).
///
/// `Config` is the connector's own settings: derive `Deserialize` with
/// `#[serde(deny_unknown_fields)]` and `JsonSchema`; its doc comments become the schema's
/// descriptions. The runtime settings every sink has (`input`, `dlq_topic`, `batch`, …) are
/// added by connectd and must not be repeated here.
#[async_trait]
pub trait SinkPlugin: Send + Sync + 'static {
    /// The `type` name, e.g. `postgres_sink`. Lowercase, `[a-z0-9_]`.
    const TYPE: &'static str;
    /// One line for `connectd plugins`.
    const DESCRIPTION: &'static str;
    /// Typed configuration. Its fields must not use the names the runtime reserves
    /// ([`RESERVED_SINK_SETTINGS`](crate::RESERVED_SINK_SETTINGS)): such a plugin is refused at
    /// registration.
    type Config: DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static;
    /// True when at most one instance may write at a time in a process (a single file, state
    /// in memory): `connectd validate` refuses `max_in_flight` above 1 for it, and an unset
    /// `max_in_flight` becomes 1 instead of the default 2.
    const SINGLE_INSTANCE: bool = false;
    /// True when the sink may publish derived records (e.g. `aggregate`'s closed windows) to
    /// an optional `output` topic: the connector block then accepts `output`, and the sink
    /// finds the topic and an [`Emitter`](crate::Emitter) in
    /// [`SinkContext::output`](crate::SinkContext::output). Other sinks refuse `output`.
    const OUTPUT: bool = false;

    /// Pure checks beyond the schema (no I/O). All problems at once.
    fn validate(_config: &Self::Config) -> Result<(), Vec<ConfigIssue>> {
        Ok(())
    }

    /// Opens the sink: connects, prepares statements, migrates. Does the I/O.
    async fn build(config: Self::Config, ctx: SinkContext)
        -> Result<Box<dyn Sink>, ConnectorError>;
}

/// Typed factory of a transform. See [`SinkPlugin`] for the conventions.
#[async_trait]
pub trait TransformPlugin: Send + Sync + 'static {
    /// The `type` name.
    const TYPE: &'static str;
    /// One line for `connectd plugins`.
    const DESCRIPTION: &'static str;
    /// Typed configuration.
    type Config: DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static;

    /// Pure checks beyond the schema (no I/O).
    fn validate(_config: &Self::Config) -> Result<(), Vec<ConfigIssue>> {
        Ok(())
    }

    /// Builds the transform. Does the I/O.
    async fn build(
        config: Self::Config,
        ctx: TransformContext,
    ) -> Result<Box<dyn Transform>, ConnectorError>;
}

/// Typed factory of a source. See [`SinkPlugin`] for the conventions.
#[async_trait]
pub trait SourcePlugin: Send + Sync + 'static {
    /// The `type` name.
    const TYPE: &'static str;
    /// One line for `connectd plugins`.
    const DESCRIPTION: &'static str;
    /// Typed configuration.
    type Config: DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static;

    /// Pure checks beyond the schema (no I/O).
    fn validate(_config: &Self::Config) -> Result<(), Vec<ConfigIssue>> {
        Ok(())
    }

    /// Builds the source (binds sockets, connects). Does the I/O; `run` is called after.
    async fn build(
        config: Self::Config,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>, ConnectorError>;
}
