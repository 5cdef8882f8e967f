//! Built-in connectd sources.
//!
//! One folder per connector. `http_source` (SPEC §6) lands here; until then this crate
//! registers nothing.
#![warn(missing_docs)]

use connector_core::Registry;

/// Adds every built-in source to `registry`.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry
}
