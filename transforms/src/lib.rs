//! Built-in connectd transforms, one folder each:
//!
//! * [`forward`] — copies records from one topic to another, optionally filtering and renaming
//!   headers.
//! * [`redis_dedup`] — drops records whose idempotency key was seen within a window.
//! * [`enrich`] — attaches a context object looked up by a key (Postgres or Redis) through an
//!   in-process cache, with single flight, a circuit breaker and fallbacks.
#![warn(missing_docs)]

pub mod enrich;
pub mod forward;
pub mod json_key;
pub mod redis_dedup;

use connector_core::Registry;

/// Adds every built-in transform to `registry`.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry
        .register_transform::<forward::ForwardPlugin>()
        .register_transform::<redis_dedup::RedisDedupPlugin>()
        .register_transform::<enrich::EnrichPlugin>()
}
