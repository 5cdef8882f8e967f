//! What the runtime hands a connector when building it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::EmitError;
use crate::metrics::Metrics;
use crate::plugin::Output;
use crate::shutdown::Shutdown;

/// Publishes records on behalf of a [`Source`](crate::Source).
///
/// Implemented by the runtime with an idempotent, `acks=all` Kafka producer. `emit` resolves
/// only once **every** record has been acknowledged by the broker, so a source can promise its
/// client that an acknowledged event is durable.
#[async_trait]
pub trait Emitter: Send + Sync {
    /// Produces the records (to their `topic`, or the connector's `output` topic) and waits for
    /// all acknowledgements. On `Err`, some records may still have been written: callers retry
    /// and rely on downstream idempotency.
    async fn emit(&self, records: Vec<Output>) -> Result<(), EmitError>;

    /// True when the broker is reachable (for readiness probes).
    async fn ready(&self) -> bool;
}

/// Given to [`SinkPlugin::build`](crate::SinkPlugin::build).
#[derive(Clone)]
pub struct SinkContext {
    /// The connector's `name`.
    pub name: String,
    /// The consumer group the runtime reads with (exactly-once sinks key offsets by it).
    pub group_id: String,
    /// Metrics already labelled with `connector=<name>`.
    pub metrics: Metrics,
    /// Fires on shutdown.
    pub shutdown: Shutdown,
}

/// Given to [`TransformPlugin::build`](crate::TransformPlugin::build).
#[derive(Clone)]
pub struct TransformContext {
    /// The connector's `name`.
    pub name: String,
    /// The default output topic.
    pub output_topic: String,
    /// Metrics already labelled with `connector=<name>`.
    pub metrics: Metrics,
    /// Fires on shutdown.
    pub shutdown: Shutdown,
}

/// Given to [`SourcePlugin::build`](crate::SourcePlugin::build) and
/// [`Source::run`](crate::Source::run).
#[derive(Clone)]
pub struct SourceContext {
    /// The connector's `name`.
    pub name: String,
    /// The default output topic.
    pub output_topic: String,
    /// Publishes records and waits for the broker's acknowledgement.
    pub emitter: Arc<dyn Emitter>,
    /// Metrics already labelled with `connector=<name>`.
    pub metrics: Metrics,
    /// Fires on shutdown: stop accepting work, finish what is in flight, return.
    pub shutdown: Shutdown,
}
