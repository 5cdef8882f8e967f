//! Error types of the SDK.

use std::fmt;

/// How the runtime must treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Temporary: connection refused or reset, timeout, serialization failure, deadlock, too
    /// many connections, broker unavailable. The runtime retries with exponential backoff and
    /// jitter and reports the connector as `degraded` meanwhile.
    Retriable,
    /// The record itself can never be handled (unparseable, schema-invalid, rejected by the
    /// database's constraints). The runtime sends it to the connector's dead-letter topic.
    Permanent,
}

impl ErrorKind {
    /// `"retriable"` or `"permanent"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Retriable => "retriable",
            ErrorKind::Permanent => "permanent",
        }
    }
}

/// An error raised by a connector, classified for the runtime.
///
/// `class` is a short machine-readable name (`invalid_json`, `sqlstate_22P02`,
/// `redis_unavailable`, …) that ends up in the `connectd.error.class` dead-letter header and in
/// metrics; `message` is for humans and must not contain secrets.
///
/// ```
/// use connector_core::{ConnectorError, ErrorKind};
/// let e = ConnectorError::permanent("invalid_json", "expected value at line 1 column 1");
/// assert_eq!(e.kind(), ErrorKind::Permanent);
/// assert_eq!(e.to_string(), "invalid_json: expected value at line 1 column 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorError {
    kind: ErrorKind,
    class: String,
    message: String,
}

impl ConnectorError {
    /// A new error of the given kind.
    pub fn new(kind: ErrorKind, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            class: class.into(),
            message: message.into(),
        }
    }

    /// A retriable error.
    pub fn retriable(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retriable, class, message)
    }

    /// A permanent error.
    pub fn permanent(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, class, message)
    }

    /// Retriable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True for [`ErrorKind::Retriable`].
    pub fn is_retriable(&self) -> bool {
        self.kind == ErrorKind::Retriable
    }

    /// The short machine-readable class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl std::error::Error for ConnectorError {}

/// A problem with a connector's configuration found by a plugin's pure `validate`.
///
/// `path` is relative to the connector's block, dot-separated (`columns.user_id.pointer`);
/// the config loader prefixes it with the connector's position and adds the line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dot-separated path of the bad setting inside the connector block (may be empty).
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl ConfigIssue {
    /// A new issue at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why the runtime could not publish records handed to an [`Emitter`](crate::Emitter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The broker did not acknowledge in time or is unreachable. Retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The producer's local queue is full (backpressure). Retry later.
    #[error("producer queue full")]
    QueueFull,
    /// The process is shutting down and accepts no new records.
    #[error("shutting down")]
    ShuttingDown,
    /// A record is larger than the broker or producer accepts (`message.max.bytes`). Permanent
    /// for that record: a source should refuse it to its client (HTTP 413), not ask for a retry.
    #[error("record too large: {0}")]
    TooLarge(String),
    /// The broker rejected the record for good (unknown topic, not authorized, invalid record).
    #[error("rejected by broker: {0}")]
    Rejected(String),
}
