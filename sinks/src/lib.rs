//! Built-in connectd sinks, one folder each:
//!
//! * [`file`] — `file_sink`: JSON lines in a local file, fsynced per batch, idempotent under
//!   redelivery.
//! * [`dlq`] — `dlq_sink`: dead letters into the `dead_letters` table.
//! * [`postgres`] — `postgres_sink`: idempotent set-based writes with poison isolation.
//! * [`aggregate`] — `aggregate`: event-time windows with watermarks merged into PostgreSQL
//!   exactly once.
//! * [`redis`] — `redis_sink`: counters, leaderboards, hashes and streams in Redis, exactly
//!   once through a per-partition cursor.
//! * [`parquet`] — `parquet_sink`: Parquet files (zstd) in Hive-style folders on a local disk
//!   or object storage, exactly once through a commit log.
#![warn(missing_docs)]

pub mod aggregate;
pub mod dlq;
pub mod file;
pub mod parquet;
pub mod postgres;
pub mod redis;

use connector_core::Registry;

/// Adds every built-in sink to `registry`.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry
        .register_sink::<file::FileSinkPlugin>()
        .register_sink::<postgres::PostgresSinkPlugin>()
        .register_sink::<dlq::DlqSinkPlugin>()
        .register_sink::<redis::RedisSinkPlugin>()
        .register_sink::<aggregate::AggregatePlugin>()
        .register_sink::<parquet::ParquetSinkPlugin>()
}
