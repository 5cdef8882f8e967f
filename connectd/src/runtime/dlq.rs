//! Dead-letter records (SPEC §9): the original record plus `connectd.*` headers.

use connector_core::{ConnectorError, Record};

/// Header names.
pub mod headers {
    /// Short error class (`invalid_json`, `sqlstate_22P02`, …).
    pub const ERROR_CLASS: &str = "connectd.error.class";
    /// Human-readable error message.
    pub const ERROR_MESSAGE: &str = "connectd.error.message";
    /// Name of the connector that gave up on the record.
    pub const CONNECTOR: &str = "connectd.connector";
    /// Topic the record was read from.
    pub const ORIGINAL_TOPIC: &str = "connectd.original.topic";
    /// Its partition.
    pub const ORIGINAL_PARTITION: &str = "connectd.original.partition";
    /// Its offset.
    pub const ORIGINAL_OFFSET: &str = "connectd.original.offset";
    /// Attempts made before giving up.
    pub const ATTEMPTS: &str = "connectd.attempts";
    /// When it was dead-lettered (RFC 3339, UTC).
    pub const FAILED_AT: &str = "connectd.failed_at";
    /// How often it was replayed from the dead-letter store (loop guard).
    pub const REPLAY_COUNT: &str = "connectd.replay.count";
}

/// The record to produce to the dead-letter topic for `record`, which `connector` failed
/// permanently with `error` after `attempts` attempts.
pub fn dead_letter(
    record: &Record,
    connector: &str,
    error: &ConnectorError,
    attempts: u32,
) -> Record {
    let mut out = record.clone();
    let h = &mut out.headers;
    // Replace any connectd.* headers from an earlier trip through a DLQ, keep the replay count.
    for name in [
        headers::ERROR_CLASS,
        headers::ERROR_MESSAGE,
        headers::CONNECTOR,
        headers::ORIGINAL_TOPIC,
        headers::ORIGINAL_PARTITION,
        headers::ORIGINAL_OFFSET,
        headers::ATTEMPTS,
        headers::FAILED_AT,
    ] {
        h.remove(name);
    }
    h.insert(headers::ERROR_CLASS, error.class().to_string());
    h.insert(headers::ERROR_MESSAGE, truncate(error.message(), 4096));
    h.insert(headers::CONNECTOR, connector.to_string());
    if let Some(o) = &record.origin {
        h.insert(headers::ORIGINAL_TOPIC, o.topic.to_string());
        h.insert(headers::ORIGINAL_PARTITION, o.partition.to_string());
        h.insert(headers::ORIGINAL_OFFSET, o.offset.to_string());
    }
    h.insert(headers::ATTEMPTS, attempts.to_string());
    h.insert(
        headers::FAILED_AT,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    out.origin = None;
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_every_header_of_spec_9() {
        let r = Record::new("v")
            .with_key("k")
            .with_header("app", "x")
            .with_origin("events.raw", 3, 99);
        let d = dead_letter(
            &r,
            "pg",
            &ConnectorError::permanent("sqlstate_22P02", "bad uuid"),
            2,
        );
        let g = |n| d.headers.get_str(n).map(str::to_string);
        assert_eq!(g(headers::ERROR_CLASS).as_deref(), Some("sqlstate_22P02"));
        assert_eq!(g(headers::ERROR_MESSAGE).as_deref(), Some("bad uuid"));
        assert_eq!(g(headers::CONNECTOR).as_deref(), Some("pg"));
        assert_eq!(g(headers::ORIGINAL_TOPIC).as_deref(), Some("events.raw"));
        assert_eq!(g(headers::ORIGINAL_PARTITION).as_deref(), Some("3"));
        assert_eq!(g(headers::ORIGINAL_OFFSET).as_deref(), Some("99"));
        assert_eq!(g(headers::ATTEMPTS).as_deref(), Some("2"));
        assert!(g(headers::FAILED_AT).is_some_and(|t| t.ends_with('Z')));
        assert_eq!(g("app").as_deref(), Some("x"));
        assert_eq!(d.value, r.value);
        assert_eq!(d.key, r.key);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let t = truncate(&s, 4095);
        assert!(t.len() <= 4095 + "…".len());
    }
}
