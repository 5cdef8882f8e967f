//! Built-in connectd sinks, one folder each:
//!
//! * [`file`] — `file_sink`: JSON lines in a local file, fsynced per batch, idempotent under
//!   redelivery.
//! * [`dlq`] — `dlq_sink`: dead letters into the `dead_letters` table.
//! * [`postgres`] — `postgres_sink`: idempotent set-based writes with poison isolation.
#![warn(missing_docs)]

pub mod dlq;
pub mod file;
pub mod postgres;

use connector_core::Registry;

/// Adds every built-in sink to `registry`.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry
        .register_sink::<file::FileSinkPlugin>()
        .register_sink::<postgres::PostgresSinkPlugin>()
        .register_sink::<dlq::DlqSinkPlugin>()
}
