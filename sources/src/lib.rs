//! Built-in connectd sources, one folder each:
//!
//! * [`http`] — `http_source`: authenticated, validated, idempotent HTTP ingest that answers
//!   202 only after the broker acknowledged.
#![warn(missing_docs)]

pub mod http;

use connector_core::Registry;

/// Adds every built-in source to `registry`.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry.register_source::<http::HttpSourcePlugin>()
}
