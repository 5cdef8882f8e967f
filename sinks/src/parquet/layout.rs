//! Where things go: Hive-style folders, data file names and the commit log's keys.
//!
//! Everything here is pure, so the names a flush produces depend only on the records it
//! holds: a rewrite after a crash produces the same objects.

use schemars::JsonSchema;
use serde::Deserialize;

/// One level of the Hive-style folder layout, outermost first.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PartitionBy {
    /// `<column>=<value>`: the text of one of the `columns` (a business key such as
    /// `event_type`). A null value gives `__HIVE_DEFAULT_PARTITION__`.
    Column(String),
    /// `date=YYYY-MM-DD`: the UTC calendar day of a `timestamptz` or `date` column.
    Date(String),
    /// `hour=HH` (00–23): the UTC hour of a `timestamptz` column, usually after `date`.
    Hour(String),
}

impl PartitionBy {
    /// The column this level is derived from.
    pub fn column(&self) -> &str {
        match self {
            PartitionBy::Column(c) | PartitionBy::Date(c) | PartitionBy::Hour(c) => c,
        }
    }
}

/// The folder value Hive and DuckDB use for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Escapes a partition value for a path segment the way Hive does (`%XX` for anything but
/// ASCII letters, digits and `-_.`), so `a/b` can never open a folder of its own.
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if v.is_empty() {
        // Hive writes an empty value like a null one.
        return NULL_PARTITION.to_string();
    }
    if out.bytes().all(|b| b == b'.') {
        // `.` and `..` are not valid object path segments.
        return out.replace('.', "%2E");
    }
    out
}

/// The name of the data file of one flush inside one folder: derived from the topic, the
/// Kafka partition and the flush's first and last offsets.
pub fn file_name(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!(
        "{}-{partition}-{first:020}-{last:020}.parquet",
        escape_value(topic)
    )
}

/// Folder of the commit log of one Kafka partition, under the sink's root.
pub fn log_dir(topic: &str, partition: i32) -> String {
    format!("_connectd/log/{}/{partition}", escape_value(topic))
}

/// Key of the commit that starts at `from` (the log's next offset when its flush began).
pub fn log_key(topic: &str, partition: i32, from: i64) -> String {
    format!("{}/{from:020}.json", log_dir(topic, partition))
}

/// Folder of the intents (files a flush is about to write) of one Kafka partition.
pub fn pending_dir(topic: &str, partition: i32) -> String {
    format!("_connectd/pending/{}/{partition}", escape_value(topic))
}

/// Parses the `from` out of a log key's last segment.
pub fn parse_from(name: &str) -> Option<i64> {
    name.strip_suffix(".json")?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_like_hive() {
        assert_eq!(escape_value("purchase"), "purchase");
        assert_eq!(escape_value("a/b c"), "a%2Fb%20c");
        assert_eq!(escape_value("é"), "%C3%A9");
        assert_eq!(escape_value("x=1"), "x%3D1");
        assert_eq!(escape_value(".."), "%2E%2E");
        assert_eq!(escape_value(""), NULL_PARTITION);
    }

    #[test]
    fn names_sort_by_offset_and_parse_back() {
        assert_eq!(
            file_name("events.enriched", 3, 7, 1200),
            "events.enriched-3-00000000000000000007-00000000000000001200.parquet"
        );
        let a = log_key("t", 0, 9);
        let b = log_key("t", 0, 10);
        assert!(a < b);
        assert_eq!(a, "_connectd/log/t/0/00000000000000000009.json");
        assert_eq!(parse_from("00000000000000000009.json"), Some(9));
        assert_eq!(parse_from("00000000000000000009-abc.json"), Some(9));
        assert_eq!(parse_from("x.json"), None);
    }

    #[test]
    fn partition_levels_parse_from_yaml() {
        // connectors.yaml is read into JSON values first, as every connector block is.
        let yaml: serde_json::Value =
            serde_yaml::from_str("[{column: event_type}, {date: event_ts}, {hour: event_ts}]")
                .expect("yaml");
        let p: Vec<PartitionBy> = serde_json::from_value(yaml).expect("parses");
        assert_eq!(
            p,
            [
                PartitionBy::Column("event_type".into()),
                PartitionBy::Date("event_ts".into()),
                PartitionBy::Hour("event_ts".into())
            ]
        );
        assert!(
            serde_json::from_value::<Vec<PartitionBy>>(serde_json::json!([{"month": "x"}]))
                .is_err()
        );
    }
}
