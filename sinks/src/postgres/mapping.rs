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

/// True when a column's `from` is a JSON pointer or one of [`META`].
pub fn valid_source(from: &str) -> bool {
    from.starts_with('/') || META.contains(&from)
}

/// A sink's `columns` setting in name order, or the event envelope's columns when it is
/// absent (`postgres_sink`, `parquet_sink`).
pub fn columns_or_envelope(
    columns: &Option<BTreeMap<String, ColumnSpec>>,
) -> Vec<(String, ColumnSpec)> {
    columns
        .clone()
        .unwrap_or_else(envelope_columns)
        .into_iter()
        .collect()
}

/// Where a column's value comes from, parsed once.
#[derive(Debug, Clone)]
enum Source {
    Key,
    Topic,
    Partition,
    Offset,
    Timestamp,
    /// The top-level field, then the rest of the pointer (rarely used: nested fields).
    Field(String, Option<String>),
}

impl Source {
    fn parse(from: &str) -> Self {
        match from {
            "$key" => Source::Key,
            "$topic" => Source::Topic,
            "$partition" => Source::Partition,
            "$offset" => Source::Offset,
            "$timestamp" => Source::Timestamp,
            ptr => {
                let ptr = ptr.strip_prefix('/').unwrap_or(ptr);
                let (first, rest) = match ptr.find('/') {
                    Some(i) => (&ptr[..i], Some(ptr[i..].to_string())),
                    None => (ptr, None),
                };
                Source::Field(first.replace("~1", "/").replace("~0", "~"), rest)
            }
        }
    }
}

/// The columns of a sink with their sources parsed: turns records into rows.
///
/// A record's JSON is split into its top-level fields without building a document (each
/// field stays a slice of the record); strings are unescaped only when they contain escapes.
/// Building a `serde_json::Value` per record and looking up each pointer cost more CPU than
/// the rest of the sink.
#[derive(Debug, Clone)]
pub struct Mapping {
    columns: Vec<(String, ColumnSpec, Source)>,
    needs_json: bool,
}

/// Top-level fields of one JSON object, borrowed from the record.
type Fields<'a> = Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>;

/// A JSON document's top-level fields (none when it is not an object).
struct TopLevel<'a>(Fields<'a>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let v: &'de serde_json::value::RawValue = map.next_value()?;
                    fields.push((k, v));
                }
                Ok(TopLevel(fields))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(TopLevel(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(TopLevel(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

fn raw_text(raw: &serde_json::value::RawValue) -> Option<String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => None,
        // A raw value is valid JSON already: a string without a backslash is its own text
        // between the quotes (no second parse; this runs once per column of every row).
        Some(b'"') if text.len() >= 2 && !text.as_bytes().contains(&b'\\') => {
            Some(text[1..text.len() - 1].to_string())
        }
        Some(b'"') => serde_json::from_str::<std::borrow::Cow<'_, str>>(text)
            .ok()
            .map(|s| s.into_owned()),
        _ => Some(text.to_string()),
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Mapping {
    /// Parses the columns' sources.
    pub fn new(columns: &[(String, ColumnSpec)]) -> Self {
        Mapping {
            columns: columns
                .iter()
                .map(|(n, c)| (n.clone(), c.clone(), Source::parse(&c.from)))
                .collect(),
            needs_json: columns.iter().any(|(_, c)| c.from.starts_with('/')),
        }
    }

    /// Extracts the row of `record` (one text per column, in column order).
    pub fn row(&self, record: &Record) -> Result<Vec<Option<String>>, ConnectorError> {
        let invalid = |e: serde_json::Error| {
            ConnectorError::permanent("invalid_json", format!("record value is not JSON: {e}"))
        };
        let fields: Fields<'_> = if self.needs_json {
            serde_json::from_slice::<TopLevel<'_>>(&record.value)
                .map_err(invalid)?
                .0
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(self.columns.len());
        for (name, c, source) in &self.columns {
            let v = match source {
                Source::Key => record
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                Source::Topic => record.origin.as_ref().map(|o| o.topic.to_string()),
                Source::Partition => record.origin.as_ref().map(|o| o.partition.to_string()),
                Source::Offset => record.origin.as_ref().map(|o| o.offset.to_string()),
                Source::Timestamp => record.timestamp_ms.and_then(|ms| {
                    chrono::DateTime::from_timestamp_millis(ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                }),
                Source::Field(first, rest) => {
                    // The last occurrence wins, as when parsing into a map.
                    let raw = fields
                        .iter()
                        .rev()
                        .find(|(k, _)| k == first)
                        .map(|(_, v)| *v);
                    match (raw, rest) {
                        (None, _) => None,
                        (Some(raw), None) => raw_text(raw),
                        (Some(raw), Some(rest)) => serde_json::from_str::<Value>(raw.get())
                            .map_err(invalid)?
                            .pointer(rest)
                            .and_then(value_text),
                    }
                }
            };
            if v.is_none() && c.required {
                return Err(ConnectorError::permanent(
                    "missing_field",
                    format!("column {name}: no value at {}", c.from),
                ));
            }
            if let Some(s) = &v {
                // A byte search (memchr), cheaper than the `char` pattern search per value.
                if s.as_bytes().contains(&0) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(
        r: &Record,
        cols: &[(String, ColumnSpec)],
    ) -> Result<Vec<Option<String>>, ConnectorError> {
        Mapping::new(cols).row(r)
    }

    #[test]
    fn nested_pointers_escapes_duplicates_and_non_objects() {
        let cols = vec![
            ("a".to_string(), col("/a", SqlType::Text, false)),
            ("n".to_string(), col("/o/n/1", SqlType::Integer, false)),
            ("s".to_string(), col("/x~1y", SqlType::Text, false)),
            ("b".to_string(), col("/b", SqlType::Boolean, false)),
        ];
        let r =
            Record::new(r#"{"a":"q\"\u00e9","o":{"n":[1,2]},"x/y":"slash","b":true,"a":"last"}"#);
        assert_eq!(
            row(&r, &cols).expect("row"),
            [
                Some("last".into()),
                Some("2".into()),
                Some("slash".into()),
                Some("true".into())
            ]
        );
        let r = Record::new(r#"{"a":"q\"\u00e9"}"#);
        assert_eq!(row(&r, &cols).expect("row")[0].as_deref(), Some("q\"é"));
        // Valid JSON that is not an object: no fields.
        assert_eq!(
            row(&Record::new("[1,2]"), &cols).expect("row"),
            [None, None, None, None]
        );
        assert_eq!(
            row(&Record::new("{\"a\":1} x"), &cols)
                .expect_err("trailing")
                .class(),
            "invalid_json"
        );
        assert_eq!(
            row(&Record::new(r#"{"a":"\u0000"}"#), &cols)
                .expect_err("nul")
                .class(),
            "invalid_text"
        );
    }

    fn via_value(v: &Value, ptr: &str) -> Option<String> {
        match v.pointer(ptr)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    proptest! {
        /// Agrees with parsing the whole document into a `Value` and following the pointer.
        #[test]
        fn agrees_with_value_pointers(s in "[a-z\"\\\\é]{0,8}", n in any::<i64>(), f in any::<bool>()) {
            let v = serde_json::json!({"s": s, "n": n, "f": f, "o": {"s": s, "l": [n, null]}, "z": null});
            let text = serde_json::to_string(&v).expect("json");
            let ptrs = ["/s", "/n", "/f", "/o/s", "/o/l/0", "/o/l/1", "/z", "/missing", "/o"];
            let cols: Vec<(String, ColumnSpec)> = ptrs
                .iter()
                .map(|p| (p.to_string(), col(p, SqlType::Text, false)))
                .collect();
            let got = row(&Record::new(text), &cols).expect("row");
            let want: Vec<Option<String>> = ptrs.iter().map(|p| via_value(&v, p)).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn envelope_row_and_missing_fields() {
        let cols: Vec<_> = envelope_columns().into_iter().collect();
        let r = Record::new(
            r#"{"idempotency_key":"k","event_ts":"2026-01-01T00:00:00Z","source":"s","event_type":"e","user_id":"u","payload":{"a":1},"ingested_at":"2026-01-01T00:00:01Z","schema_version":1}"#,
        );
        let got = row(&r, &cols).expect("row");
        let by: BTreeMap<_, _> = cols.iter().map(|(n, _)| n.as_str()).zip(got).collect();
        assert_eq!(by["payload"].as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(by["schema_version"].as_deref(), Some("1"));
        assert_eq!(by["trace_id"], None);
        let bad = Record::new(r#"{"idempotency_key":"k"}"#);
        let err = row(&bad, &cols).expect_err("missing");
        assert_eq!(err.class(), "missing_field");
        assert_eq!(
            row(&Record::new("nope"), &cols).expect_err("json").class(),
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
