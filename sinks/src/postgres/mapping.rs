//! Column mapping: record → one text value per column (cast to the column's SQL type in SQL).

use std::collections::BTreeMap;

use connector_core::{ConnectorError, Record};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// SQL types a column can be cast to.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqlType {
    /// `text`
    Text,
    /// `uuid`
    Uuid,
    /// `timestamptz`
    Timestamptz,
    /// `jsonb`
    Jsonb,
    /// `integer`
    Integer,
    /// `bigint`
    Bigint,
    /// `double precision`
    Double,
    /// `numeric`
    Numeric,
    /// `boolean`
    Boolean,
    /// `date`
    Date,
}

impl SqlType {
    /// The SQL spelling.
    pub fn sql(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::Uuid => "uuid",
            SqlType::Timestamptz => "timestamptz",
            SqlType::Jsonb => "jsonb",
            SqlType::Integer => "integer",
            SqlType::Bigint => "bigint",
            SqlType::Double => "double precision",
            SqlType::Numeric => "numeric",
            SqlType::Boolean => "boolean",
            SqlType::Date => "date",
        }
    }
}

/// Where a column's value comes from and its type.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// A JSON pointer into the record value (`/user_id`, `/payload/plan`), or one of `$key`,
    /// `$topic`, `$partition`, `$offset`, `$timestamp` (record metadata).
    pub from: String,
    /// SQL type the text value is cast to.
    #[serde(rename = "type")]
    pub sql_type: SqlType,
    /// A missing or null value is an error (record → DLQ) unless `required: false` (NULL).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

fn col(from: &str, t: SqlType, required: bool) -> ColumnSpec {
    ColumnSpec {
        from: from.into(),
        sql_type: t,
        required,
    }
}

/// The mapping of the event envelope (SPEC §2) onto the `growth_events` table.
pub fn envelope_columns() -> BTreeMap<String, ColumnSpec> {
    BTreeMap::from([
        (
            "idempotency_key".into(),
            col("/idempotency_key", SqlType::Text, true),
        ),
        (
            "event_ts".into(),
            col("/event_ts", SqlType::Timestamptz, true),
        ),
        ("trace_id".into(), col("/trace_id", SqlType::Text, false)),
        (
            "schema_version".into(),
            col("/schema_version", SqlType::Integer, false),
        ),
        ("source".into(), col("/source", SqlType::Text, true)),
        ("event_type".into(), col("/event_type", SqlType::Text, true)),
        ("user_id".into(), col("/user_id", SqlType::Uuid, true)),
        ("payload".into(), col("/payload", SqlType::Jsonb, true)),
        (
            "ingested_at".into(),
            col("/ingested_at", SqlType::Timestamptz, true),
        ),
    ])
}

/// Valid `from` values besides JSON pointers.
pub const META: &[&str] = &["$key", "$topic", "$partition", "$offset", "$timestamp"];

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Extracts the row of `record` (one text per column, in `columns` order).
pub fn row(
    record: &Record,
    columns: &[(String, ColumnSpec)],
) -> Result<Vec<Option<String>>, ConnectorError> {
    let needs_json = columns.iter().any(|(_, c)| c.from.starts_with('/'));
    let value: Value = if needs_json {
        serde_json::from_slice(&record.value).map_err(|e| {
            ConnectorError::permanent("invalid_json", format!("record value is not JSON: {e}"))
        })?
    } else {
        Value::Null
    };
    let mut out = Vec::with_capacity(columns.len());
    for (name, c) in columns {
        let v = match c.from.as_str() {
            "$key" => record
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            "$topic" => record.origin.as_ref().map(|o| o.topic.to_string()),
            "$partition" => record.origin.as_ref().map(|o| o.partition.to_string()),
            "$offset" => record.origin.as_ref().map(|o| o.offset.to_string()),
            "$timestamp" => record.timestamp_ms.and_then(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }),
            ptr => value.pointer(ptr).and_then(text_of),
        };
        if v.is_none() && c.required {
            return Err(ConnectorError::permanent(
                "missing_field",
                format!("column {name}: no value at {}", c.from),
            ));
        }
        if let Some(s) = &v {
            if s.contains('\0') {
                return Err(ConnectorError::permanent(
                    "invalid_text",
                    format!("column {name}: NUL character"),
                ));
            }
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_row_and_missing_fields() {
        let cols: Vec<_> = envelope_columns().into_iter().collect();
        let r = Record::new(
            r#"{"idempotency_key":"k","event_ts":"2026-01-01T00:00:00Z","source":"s","event_type":"e","user_id":"u","payload":{"a":1},"ingested_at":"2026-01-01T00:00:01Z","schema_version":1}"#,
        );
        let row = row(&r, &cols).expect("row");
        let by: BTreeMap<_, _> = cols.iter().map(|(n, _)| n.as_str()).zip(row).collect();
        assert_eq!(by["payload"].as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(by["schema_version"].as_deref(), Some("1"));
        assert_eq!(by["trace_id"], None);
        let bad = Record::new(r#"{"idempotency_key":"k"}"#);
        let err = super::row(&bad, &cols).expect_err("missing");
        assert_eq!(err.class(), "missing_field");
        assert_eq!(
            super::row(&Record::new("nope"), &cols)
                .expect_err("json")
                .class(),
            "invalid_json"
        );
    }

    #[test]
    fn metadata_columns() {
        let cols = vec![
            ("k".to_string(), col("$key", SqlType::Text, true)),
            ("o".to_string(), col("$offset", SqlType::Bigint, true)),
        ];
        let r = Record::new("x").with_key("kk").with_origin("t", 1, 42);
        assert_eq!(
            row(&r, &cols).expect("row"),
            [Some("kk".into()), Some("42".into())]
        );
    }
}
