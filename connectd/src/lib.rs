//! connectd — a Kafka Connect-style connector runtime.
//!
//! This crate holds the `connectd` binary's pieces: configuration loading ([`config`]), the
//! command line ([`cli`]) and the runtime (Kafka I/O, batching, offsets, supervision, admin
//! server). Plugins live in their own crates and reach the runtime through
//! [`connector_core::Registry`].
//!
//! A custom binary with a third-party sink is a handful of lines:
//!
//! ```no_run
//! use connectd::Builtin;
//! use connector_core::Registry;
//!
//! fn main() -> std::process::ExitCode {
//!     let registry = Registry::builtin();
//!     // registry.register_sink::<my_sink::MySinkPlugin>();
//!     connectd::cli::main(registry)
//! }
//! ```
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod contracts;
pub mod dlq;
pub mod postgres_cmd;
pub mod redis_cmd;
pub mod runtime;
pub mod stream_cmd;
pub mod topic_io;

use connector_core::Registry;

/// Adds `Registry::builtin()`: a registry with every built-in connector.
pub trait Builtin {
    /// Every built-in source, transform and sink.
    fn builtin() -> Registry;
}

impl Builtin for Registry {
    fn builtin() -> Registry {
        let mut r = Registry::new();
        connectd_sources::register_all(&mut r);
        connectd_transforms::register_all(&mut r);
        connectd_sinks::register_all(&mut r);
        r
    }
}
