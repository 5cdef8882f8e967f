//! # connector-core — the connectd plugin SDK
//!
//! This crate is everything a connector author needs to write a source, transform or sink for
//! [connectd](https://example.invalid/connectd), and nothing more: no Kafka client, no database
//! driver, no C toolchain. The runtime in the `connectd` crate does all Kafka I/O, batching,
//! offset management, retries and dead-lettering; a connector only turns records into effects.
//!
//! ## The pieces
//!
//! * [`Record`] — what flows between connectors: key, value, [`Headers`], timestamp and, for
//!   records read from Kafka, their [`Origin`] (topic, partition, offset).
//! * The **built** connector traits: [`Sink`], [`Transform`], [`Source`]. Sinks and transforms
//!   receive batches and answer with one outcome per record ([`RecordOutcome`],
//!   [`TransformOutcome`]): delivered, retriable failure, or permanent failure (dead letter).
//! * The **factory** traits: [`SinkPlugin`], [`TransformPlugin`], [`SourcePlugin`]. Each has a
//!   `TYPE` name (the `type:` of a connector in `connectors.yaml`), a typed `Config` that derives
//!   `serde::Deserialize` and `schemars::JsonSchema`, a pure `validate` and an async `build`
//!   that does the I/O (connects, migrates, …).
//! * The [`Registry`] maps `type` names to type-erased factories. A custom binary adds its own
//!   plugin with one call ([`Registry::register_sink`]) and hands the registry to connectd's CLI.
//! * [`ConnectorError`] with its [`ErrorKind`] (retriable / permanent) — the classification the
//!   runtime uses to decide between retrying and dead-lettering.
//! * Helpers for configs ([`config::Duration`], [`config::Secret`]) and [`metrics`].
//!
//! ## The delivery contract
//!
//! A sink must answer [`RecordOutcome::Delivered`] for a record **only after** the record's
//! effect is durable (committed transaction, fsynced file, acknowledged write). The runtime
//! commits the Kafka offset of a record only once every record before it in its partition has a
//! final outcome, so a sink that answers early can lose data on a crash. Records may be delivered
//! again after a crash or rebalance (at-least-once), so a sink's write must be idempotent — keyed
//! by the record's idempotency key or its [`Origin`]. The compliance harness
//! (feature `testing`, module `testing`) checks both for your sink.
//!
//! ```
//! use connector_core::prelude::*;
//!
//! /// Counts records; a toy sink.
//! #[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! pub struct CountConfig {
//!     /// Log a line every this many records.
//!     #[serde(default = "default_every")]
//!     pub every: u64,
//! }
//! fn default_every() -> u64 { 1000 }
//!
//! pub struct CountSink { seen: u64, every: u64 }
//!
//! #[async_trait]
//! impl Sink for CountSink {
//!     async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
//!         self.seen += batch.len() as u64;
//!         Ok(vec![RecordOutcome::Delivered; batch.len()])
//!     }
//! }
//!
//! pub struct CountPlugin;
//!
//! #[async_trait]
//! impl SinkPlugin for CountPlugin {
//!     const TYPE: &'static str = "count_sink";
//!     const DESCRIPTION: &'static str = "Counts records and forgets them";
//!     type Config = CountConfig;
//!     fn validate(config: &CountConfig) -> Result<(), Vec<ConfigIssue>> {
//!         if config.every == 0 {
//!             return Err(vec![ConfigIssue::new("every", "must be at least 1")]);
//!         }
//!         Ok(())
//!     }
//!     async fn build(config: CountConfig, _ctx: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
//!         Ok(Box::new(CountSink { seen: 0, every: config.every }))
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register_sink::<CountPlugin>();
//! assert!(registry.get("count_sink").is_some());
//! ```
#![warn(missing_docs)]

pub mod config;
mod context;
mod error;
pub mod metrics;
mod plugin;
mod record;
mod registry;
mod shutdown;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;

pub use context::{Emitter, SinkContext, SinkOutput, SourceContext, TransformContext};
pub use error::{ConfigIssue, ConnectorError, EmitError, ErrorKind};
pub use plugin::{
    Output, RecordOutcome, Sink, SinkPlugin, Source, SourcePlugin, TopicPartition, Transform,
    TransformOutcome, TransformPlugin,
};
pub use record::{Headers, Origin, Record, IDEMPOTENCY_KEY_HEADER};
pub use registry::{
    ConnectorKind, ErasedConfig, PluginDescriptor, Registry, RegistryError, RESERVED_SINK_SETTINGS,
    RESERVED_SOURCE_SETTINGS, RESERVED_TRANSFORM_SETTINGS,
};
pub use shutdown::{Shutdown, ShutdownTrigger};

/// Re-exports so plugin crates need not depend on these directly with matching versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use schemars;
pub use serde_json;

/// One `use` for plugin authors: `use connector_core::prelude::*;`.
pub mod prelude {
    pub use crate::config::{Duration, Secret};
    pub use crate::metrics::{Counter, Gauge, Histogram, Metrics};
    pub use crate::{
        async_trait, Bytes, ConfigIssue, ConnectorError, Emitter, ErrorKind, Headers, Origin,
        Output, Record, RecordOutcome, Registry, Shutdown, Sink, SinkContext, SinkOutput,
        SinkPlugin, Source, SourceContext, SourcePlugin, TopicPartition, Transform,
        TransformContext, TransformOutcome, TransformPlugin,
    };
}
