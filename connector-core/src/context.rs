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
///
/// The runtime builds one sink instance per in-flight slot (the connector's `max_in_flight`,
/// default 2), all in one process; `instance` / `instances` tell each which it is. A plugin that
/// cannot run as several instances at once (one file, in-memory state) sets
/// [`SinkPlugin::SINGLE_INSTANCE`](crate::SinkPlugin::SINGLE_INSTANCE). Several *processes*
/// running the same file split the partitions between them on top of that.
///
/// ```
/// use connector_core::{SinkContext, Shutdown, metrics::Metrics};
/// let ctx = SinkContext::new("files", "connectd-files", Metrics::new(), Shutdown::never())
///     .with_instance(1, 2);
/// assert_eq!((ctx.instance, ctx.instances), (1, 2));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct SinkContext {
    /// The connector's `name`.
    pub name: String,
    /// The consumer group the runtime reads with (exactly-once sinks key offsets by it).
    pub group_id: String,
    /// Metrics already labelled with `connector=<name>`.
    pub metrics: Metrics,
    /// Fires on shutdown.
    pub shutdown: Shutdown,
    /// This instance's slot, `0..instances`. An exactly-once sink may also be built once more
    /// with `instance == instances` to read its stored offsets (it receives no `write`).
    pub instance: usize,
    /// How many instances of this connector write at once in this process.
    pub instances: usize,
    /// The `output` topic and a producer for it, when the connector block names one (only
    /// for plugins with [`SinkPlugin::OUTPUT`](crate::SinkPlugin::OUTPUT)).
    pub output: Option<SinkOutput>,
}

/// Where a sink publishes derived records: [`SinkContext::output`].
#[derive(Clone)]
pub struct SinkOutput {
    /// The connector's `output` topic.
    pub topic: String,
    /// Produces to it; resolves after the broker acknowledged every record.
    pub emitter: Arc<dyn Emitter>,
}

impl SinkContext {
    /// A context for instance 0 of 1 (for tests and harnesses; the runtime sets the rest).
    pub fn new(
        name: impl Into<String>,
        group_id: impl Into<String>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            name: name.into(),
            group_id: group_id.into(),
            metrics,
            shutdown,
            instance: 0,
            instances: 1,
            output: None,
        }
    }

    /// Sets the `output` topic and its emitter.
    pub fn with_output(mut self, output: SinkOutput) -> Self {
        self.output = Some(output);
        self
    }

    /// Sets which instance this is, of how many.
    pub fn with_instance(mut self, instance: usize, instances: usize) -> Self {
        self.instance = instance;
        self.instances = instances;
        self
    }
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
