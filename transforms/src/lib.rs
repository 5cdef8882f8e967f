//! Built-in connectd transforms, one folder each:
//!
//! * [`forward`] — copies records from one topic to another, optionally filtering and renaming
//!   headers.
#![warn(missing_docs)]

pub mod forward;

use connector_core::Registry;

/// Adds every built-in transform to `registry`.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    registry.register_transform::<forward::ForwardPlugin>()
}
