//! Request bodies → validated events → envelopes (SPEC §2, §6).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::doc::Doc;

/// Why a body could not be read as events at all (→ 400 or 413).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not UTF-8.
    Utf8 {
        /// Byte offset of the first bad byte.
        position: usize,
    },
    /// Not JSON.
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// Neither an object nor an array of objects.
    Shape(String),
    /// No event in the body.
    Empty,
    /// More events than allowed.
    TooMany {
        /// The limit.
        max: usize,
        /// Events in the request.
        got: usize,
    },
}

impl BodyError {
    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Utf8 { .. } => "invalid_utf8",
            BodyError::Json { .. } => "malformed_json",
            BodyError::Shape(_) => "invalid_shape",
            BodyError::Empty => "empty_batch",
            BodyError::TooMany { .. } => "too_many_events",
        }
    }

    /// Human-readable message.
    pub fn message(&self) -> String {
        match self {
            BodyError::Utf8 { position } => {
                format!("body is not valid UTF-8 (first bad byte at offset {position})")
            }
            BodyError::Json {
                line,
                column,
                message,
            } => format!("malformed JSON at line {line} column {column}: {message}"),
            BodyError::Shape(m) => m.clone(),
            BodyError::Empty => "no event in the request".into(),
            BodyError::TooMany { max, got } => {
                format!("{got} events in one request; at most {max} allowed")
            }
        }
    }
}

fn json_error(e: &serde_json::Error, line_offset: usize) -> BodyError {
    BodyError::Json {
        line: e.line() + line_offset,
        column: e.column(),
        message: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Parses a body: a JSON object, a JSON array of objects, or NDJSON (one object per line), into
/// `serde_json::Value`s or borrowed [`Json`](super::doc::Json) trees ([`Doc`]).
pub fn parse_body<'a, D: Doc + Deserialize<'a>>(
    body: &'a [u8],
    ndjson: bool,
    max_events: usize,
) -> Result<Vec<D>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::Utf8 {
        position: e.valid_up_to(),
    })?;
    let events = if ndjson {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if out.len() >= max_events {
                let got = out.len()
                    + text
                        .lines()
                        .skip(i)
                        .filter(|l| !l.trim().is_empty())
                        .count();
                return Err(BodyError::TooMany {
                    max: max_events,
                    got,
                });
            }
            out.push(serde_json::from_str::<D>(line).map_err(|e| json_error(&e, i))?);
        }
        out
    } else {
        match serde_json::from_str::<D>(text)
            .map_err(|e| json_error(&e, 0))?
            .into_events()
        {
            Ok(events) => events,
            Err(other) => {
                return Err(BodyError::Shape(format!(
                    "body must be a JSON object or an array of objects, not {}",
                    other.kind()
                )))
            }
        }
    };
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    if events.len() > max_events {
        return Err(BodyError::TooMany {
            max: max_events,
            got: events.len(),
        });
    }
    Ok(events)
}

/// One problem with one event (→ 400 body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Position of the event in the request (0-based).
    pub index: usize,
    /// JSON pointer of the field inside the event (`""` for the event itself).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

/// Per-request facts the envelope needs.
pub struct RequestFacts<'a> {
    /// Default `source` (the API key's name, or the connector's `source`).
    pub source: &'a str,
    /// The request's `Idempotency-Key` header.
    pub header_key: Option<&'a str>,
    /// Events in the request.
    pub count: usize,
    /// Trace id for the request.
    pub trace_id: &'a str,
    /// Ingestion time.
    pub now: DateTime<Utc>,
}

pub use super::shape::Enveloped;

/// Parses an RFC 3339 timestamp that has an explicit offset or `Z` and normalizes it to UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::doc::Json;
    use crate::http::shape::tests::{run, Out};
    use crate::http::shape::{Shape, ShapeConfig};
    use serde_json::{json, Value};

    /// The growth shape, as an `http_source` without `shape:` applies it.
    pub(super) fn envelope(
        index: usize,
        event: &Value,
        facts: &RequestFacts<'_>,
    ) -> Result<Out, Vec<FieldError>> {
        run(&Shape::growth(), index, event, facts)
    }

    /// The partition key of a growth event under `fields`.
    fn partition_key(event: &Value, fields: &[String]) -> Result<String, (String, &'static str)> {
        run(
            &Shape::new(&ShapeConfig::growth(), fields),
            0,
            event,
            &facts(None, 1),
        )
        .expect("valid")
        .partition_key
    }

    fn facts<'a>(header: Option<&'a str>, count: usize) -> RequestFacts<'a> {
        RequestFacts {
            source: "web",
            header_key: header,
            count,
            trace_id: "t1",
            now: parse_timestamp("2026-11-23T12:00:00Z").expect("ts"),
        }
    }

    const UID: &str = "6f1c1f0e-8a4b-4c55-9d1e-2b7f3c4d5e6f";

    #[test]
    fn envelope_normalizes_to_utc_and_keeps_extra_fields_in_payload() {
        let e = json!({"user_id": UID.to_uppercase(), "event_type": "signup", "client_timestamp": "2026-11-23T14:30:00+02:00", "payload": {"plan": "pro"}, "referrer": "ad"});
        let out = envelope(0, &e, &facts(None, 1)).expect("valid");
        let env = &out.envelope;
        assert_eq!(env["event_ts"], "2026-11-23T12:30:00.000000Z");
        assert_eq!(env["user_id"], UID);
        assert_eq!(env["payload"], json!({"plan": "pro", "referrer": "ad"}));
        assert_eq!(env["source"], "web");
        assert_eq!(env["trace_id"], "t1");
        assert_eq!(env["schema_version"], 1);
        assert_eq!(env["ingested_at"], "2026-11-23T12:00:00.000000Z");
        assert_eq!(out.idempotency_key.len(), 64);
    }

    /// Envelopes and derived keys pinned from the growth rules as they were written in code
    /// before they became a declared shape: the default shape must give these bytes.
    #[test]
    fn growth_shape_gives_the_envelopes_of_the_former_built_in_rules() {
        let golden = [
            (
                json!({"user_id": "6F1C1F0E-8A4B-4C55-9D1E-2B7F3C4D5E6F", "event_type": "signup", "client_timestamp": "2026-11-23T14:30:00.123456+02:00", "payload": {"plan": "pro"}, "referrer": "ad", "trace_id": "x", "schema_version": 3, "ingested_at": "y"}),
                r#"{"event_ts":"2026-11-23T12:30:00.123456Z","event_type":"signup","idempotency_key":"0058f3670c801ba729645e5d77bd72b60121a95115dc53358eb4c43aa15f9453","ingested_at":"2026-11-23T12:00:00.000000Z","payload":{"ingested_at":"y","plan":"pro","referrer":"ad"},"schema_version":1,"source":"web","trace_id":"t1","user_id":"6f1c1f0e-8a4b-4c55-9d1e-2b7f3c4d5e6f"}"#,
            ),
            (
                json!({"user_id": "6f1c1f0e8a4b4c559d1e2b7f3c4d5e6f", "event_type": "x", "event_ts": "2026-11-23T12:30:00Z", "source": "mobile", "payload": {"a": 1}, "a": 2}),
                r#"{"event_ts":"2026-11-23T12:30:00.000000Z","event_type":"x","idempotency_key":"6b8ddf74c7dfd2811d672bceabf9c219054d86ebdb9097503cd9ba55e9fd2989","ingested_at":"2026-11-23T12:00:00.000000Z","payload":{"a":1},"schema_version":1,"source":"mobile","trace_id":"t1","user_id":"6f1c1f0e-8a4b-4c55-9d1e-2b7f3c4d5e6f"}"#,
            ),
        ];
        for (event, want) in golden {
            let out = envelope(0, &event, &facts(None, 1)).expect("valid");
            assert_eq!(out.json, want, "byte for byte");
            assert_eq!(
                out.envelope["idempotency_key"],
                out.idempotency_key.as_str()
            );
        }
        let declared: ShapeConfig = serde_yaml::from_str(
            "event_type: /event_type\n\
             event_time: [/client_timestamp, /event_ts]\n\
             fields: { user_id: { pointer: /user_id, format: uuid } }\n\
             source: /source\n\
             payload: rest\n\
             derived_key: [source, user_id, event_type, event_ts]\n",
        )
        .expect("the module docs' YAML parses");
        let declared = Shape::new(&declared, &ShapeConfig::growth_partition_key());
        let ev = json!({"user_id": UID, "event_type": "x", "client_timestamp": "2026-11-23T12:30:00Z", "k": [1]});
        assert_eq!(
            run(&declared, 0, &ev, &facts(None, 1)),
            envelope(0, &ev, &facts(None, 1)),
            "the growth shape written as YAML is the default"
        );
    }

    #[test]
    fn derived_key_collapses_retries_with_another_offset_for_the_same_instant() {
        let a = json!({"user_id": UID, "event_type": "x", "client_timestamp": "2026-11-23T14:30:00+02:00"});
        let b =
            json!({"user_id": UID, "event_type": "x", "client_timestamp": "2026-11-23T12:30:00Z"});
        let ka = envelope(0, &a, &facts(None, 1)).expect("a").idempotency_key;
        let kb = envelope(0, &b, &facts(None, 2)).expect("b").idempotency_key;
        assert_eq!(ka, kb);
    }

    #[test]
    fn key_precedence_field_then_header_then_derived() {
        let with_field = json!({"user_id": UID, "event_type": "x", "client_timestamp": "2026-11-23T12:30:00Z", "idempotency_key": "mine"});
        assert_eq!(
            envelope(0, &with_field, &facts(Some("h"), 1))
                .expect("v")
                .idempotency_key,
            "mine"
        );
        let plain =
            json!({"user_id": UID, "event_type": "x", "client_timestamp": "2026-11-23T12:30:00Z"});
        assert_eq!(
            envelope(0, &plain, &facts(Some("h"), 1))
                .expect("v")
                .idempotency_key,
            "h"
        );
        assert_eq!(
            envelope(3, &plain, &facts(Some("h"), 5))
                .expect("v")
                .idempotency_key,
            "h:3"
        );
    }

    #[test]
    fn every_bad_field_is_reported_with_its_pointer() {
        let e = json!({"user_id": "nope", "event_type": 5, "client_timestamp": "2026-11-01T01:30:00", "payload": []});
        let errs = envelope(2, &e, &facts(None, 3)).expect_err("invalid");
        let ptrs: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            ptrs,
            ["/user_id", "/event_type", "/client_timestamp", "/payload"]
        );
        assert!(errs.iter().all(|e| e.index == 2));
        assert!(errs[2].message.contains("explicit offset"));
    }

    #[test]
    fn bodies_object_array_ndjson_and_errors() {
        // Both documents the source parses into read bodies alike.
        let value =
            |b: &[u8], nd: bool, max: usize| parse_body::<Value>(b, nd, max).map(|v| v.len());
        let json =
            |b: &[u8], nd: bool, max: usize| parse_body::<Json<'_>>(b, nd, max).map(|v| v.len());
        type Parser<'f> = &'f dyn Fn(&[u8], bool, usize) -> Result<usize, BodyError>;
        let parsers: [Parser<'_>; 2] = [&value, &json];
        for parse_body in parsers {
            assert_eq!(parse_body(br#"{"a":1}"#, false, 10), Ok(1));
            assert_eq!(parse_body(br#"[{"a":1},{"b":2}]"#, false, 10), Ok(2));
            assert_eq!(parse_body(b"{\"a\":1}\n\n{\"b\":2}\n", true, 10), Ok(2));
            assert_eq!(parse_body(b"[]", false, 10), Err(BodyError::Empty));
            assert_eq!(
                parse_body(b"[1,2,3]", false, 2),
                Err(BodyError::TooMany { max: 2, got: 3 })
            );
            assert!(matches!(
                parse_body(b"{\"a\":", false, 10),
                Err(BodyError::Json { line: 1, .. })
            ));
            assert!(matches!(
                parse_body(b"{}\n{oops}", true, 10),
                Err(BodyError::Json { line: 2, .. })
            ));
            assert_eq!(
                parse_body(b"{\"a\":\"\xff\"}", false, 10),
                Err(BodyError::Utf8 { position: 6 })
            );
            assert!(matches!(
                parse_body(b"42", false, 10),
                Err(BodyError::Shape(_))
            ));
            let deep = "[".repeat(10_000) + &"]".repeat(10_000);
            assert!(matches!(
                parse_body(deep.as_bytes(), false, 10),
                Err(BodyError::Json { .. })
            ));
        }
    }

    #[test]
    fn partition_key_joins_envelope_fields_and_pointers_into_the_event() {
        let ev = json!({"user_id": UID, "event_type": "e", "client_timestamp": "2026-11-23T12:30:00Z", "account": {"id": 7}});
        assert_eq!(partition_key(&ev, &["user_id".into()]).as_deref(), Ok(UID));
        assert_eq!(
            partition_key(&ev, &["user_id".into(), "event_type".into()]),
            Ok(format!("{UID}|e"))
        );
        assert_eq!(
            partition_key(
                &ev,
                &["/account/id".into(), "event_type".into(), "source".into()]
            )
            .as_deref(),
            Ok("7|e|web")
        );
    }
}

/// Property tests: no input makes the body parser or the envelope builder panic, and whatever
/// they accept satisfies the envelope's invariants. (`PROPTEST_CASES=100000 cargo test -p
/// connectd-sources proptests` for a longer run.)
#[cfg(test)]
mod proptests {
    use super::tests::envelope;
    use super::*;
    use crate::http::doc::Json;
    use proptest::prelude::*;
    use serde_json::Value;

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            source: "p",
            header_key: None,
            count: 1,
            trace_id: "t",
            now: chrono::Utc::now(),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            Just(Value::String("6f1c1f0e-8a4b-4c55-9d1e-2b7f3c4d5e6f".into())),
            Just(Value::String("2026-11-23T10:00:00+02:00".into())),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("user_id".to_string()),
                        Just("event_type".to_string()),
                        Just("client_timestamp".to_string()),
                        Just("payload".to_string()),
                        Just("idempotency_key".to_string()),
                        "[a-z]{1,8}"
                    ],
                    inner,
                    0..7
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_body_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512), nd in any::<bool>()) {
            let _ = parse_body::<Value>(&body, nd, 10);
            let _ = parse_body::<Json<'_>>(&body, nd, 10);
        }

        #[test]
        fn accepted_events_have_a_complete_utc_envelope(v in json_value()) {
            if let Ok(e) = envelope(0, &v, &facts()) {
                let env = &e.envelope;
                prop_assert!(!e.idempotency_key.is_empty());
                prop_assert!(uuid::Uuid::parse_str(env["user_id"].as_str().unwrap_or("")).is_ok());
                prop_assert!(env["event_ts"].as_str().is_some_and(|t| t.ends_with('Z')));
                prop_assert!(env["payload"].is_object());
            }
        }
    }
}
