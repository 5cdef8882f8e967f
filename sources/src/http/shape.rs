//! Event shapes: which fields of an accepted event give its envelope (SPEC §2) — event type,
//! event time, the derived idempotency key — and its partition key.
//!
//! Without `shape:` an `http_source` takes **growth events** (the built-in rules of
//! [`event::envelope`](super::event::envelope): `user_id` a UUID, `event_type`,
//! `client_timestamp`, other fields into `payload`). With `shape:` it takes any JSON object and
//! reads the envelope's fields through JSON pointers:
//!
//! ```yaml
//! - name: orders-in
//!   type: http_source
//!   output: orders.raw
//!   partition_key: [/order_id]          # one order's events stay in order
//!   schema_file: contracts/order.json   # required fields and their types
//!   shape:
//!     event_type: order                 # every event is an `order` (or a pointer: /kind)
//!     event_time: /placed_at            # RFC 3339 with an offset or Z, stored as UTC
//!     idempotency_fields: [/order_id, /status]
//! ```
//!
//! The envelope is then `{"idempotency_key", "trace_id", "schema_version", "source",
//! "event_type", "event_ts", "payload": <the event as sent>, "ingested_at"}`: the event itself is
//! kept whole under `payload`, so its fields never collide with the envelope's
//! (`postgres_sink` maps `/payload/order_id`). The idempotency key is, in this order, the
//! event's own (`idempotency_key` pointer, default `/idempotency_key`), the request's
//! `Idempotency-Key` header (suffixed `:<index>` in a batch), or SHA-256 over `source`, the
//! event type and the `idempotency_fields` values (a field that is the event time is hashed
//! as its UTC form, so one instant written with two offsets is one event).
//!
//! Which fields are required and of what type is the JSON Schema's job (`schema_file`, or the
//! versioned `contracts`, which validate `payload` — here the whole event); the fields named
//! by the shape are required whatever the schema says, and a missing or non-scalar one is a
//! 400 naming its pointer.

use chrono::SecondsFormat;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::event::{parse_timestamp, Enveloped, FieldError, RequestFacts};
use connector_core::ConfigIssue;

/// A declared event shape (see the [module docs](self)).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShapeConfig {
    /// The event type: a JSON pointer into the event (`/kind`, a non-empty string of at most 200
    /// characters), or, without a leading `/`, the type of every event (`order`).
    pub event_type: String,
    /// JSON pointer to the event time: an RFC 3339 timestamp with an explicit offset or `Z`,
    /// normalised to UTC (`event_ts`).
    pub event_time: String,
    /// JSON pointers whose values (strings, numbers, booleans), with `source` and the event type,
    /// are hashed into the derived idempotency key. Name every field that tells two distinct
    /// events apart: what is left out makes events that differ only there one event.
    pub idempotency_fields: Vec<String>,
    /// JSON pointer to a client-chosen idempotency key (a string of 1 to 200 characters), used
    /// when the event has one.
    #[serde(default = "default_idempotency_key")]
    pub idempotency_key: String,
}

fn default_idempotency_key() -> String {
    "/idempotency_key".into()
}

/// Envelope fields a `partition_key` entry may name (besides JSON pointers into the event).
pub const CUSTOM_KEY_FIELDS: &[&str] = &["event_type", "source", "idempotency_key", "trace_id"];

/// Configuration problems of a shape (pure: no I/O).
pub fn validate(s: &ShapeConfig, partition_key: Option<&[String]>) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let pointer = |field: String, p: &str, issues: &mut Vec<ConfigIssue>| {
        if !p.starts_with('/') || p.len() < 2 {
            issues.push(ConfigIssue::new(
                field,
                format!("{p:?} is not a JSON pointer into the event (e.g. /order_id)"),
            ));
        }
    };
    if s.event_type.is_empty() {
        issues.push(ConfigIssue::new(
            "shape.event_type",
            "needs a pointer (/kind) or a type name (order)",
        ));
    } else if s.event_type.starts_with('/') {
        pointer("shape.event_type".into(), &s.event_type, &mut issues);
    } else if s.event_type.chars().count() > 200 {
        issues.push(ConfigIssue::new(
            "shape.event_type",
            "a type name has at most 200 characters",
        ));
    }
    pointer("shape.event_time".into(), &s.event_time, &mut issues);
    pointer(
        "shape.idempotency_key".into(),
        &s.idempotency_key,
        &mut issues,
    );
    if s.idempotency_fields.is_empty() {
        issues.push(ConfigIssue::new(
            "shape.idempotency_fields",
            "needs at least one pointer: the fields that tell two events apart",
        ));
    }
    for (i, p) in s.idempotency_fields.iter().enumerate() {
        pointer(format!("shape.idempotency_fields.{i}"), p, &mut issues);
    }
    match partition_key {
        None => issues.push(ConfigIssue::new(
            "partition_key",
            "a declared shape needs its partition key: JSON pointers into the event (e.g. [/order_id]) or envelope fields (event_type, source, idempotency_key, trace_id)",
        )),
        Some(fields) => {
            for (i, f) in fields.iter().enumerate() {
                if f.starts_with('/') {
                    pointer(format!("partition_key.{i}"), f, &mut issues);
                } else if !CUSTOM_KEY_FIELDS.contains(&f.as_str()) {
                    issues.push(ConfigIssue::new(
                        format!("partition_key.{i}"),
                        format!(
                            "{f:?} is not a JSON pointer into the event nor one of {}",
                            CUSTOM_KEY_FIELDS.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    issues
}

/// The text of a scalar at `pointer` in `event`, or why there is none.
fn scalar<'a>(event: &'a Value, pointer: &str) -> Result<std::borrow::Cow<'a, str>, &'static str> {
    match event.pointer(pointer) {
        Some(Value::String(s)) => Ok(std::borrow::Cow::Borrowed(s)),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(std::borrow::Cow::Owned(v.to_string())),
        None | Some(Value::Null) => Err("is required"),
        Some(_) => Err("must be a string, a number or a boolean"),
    }
}

/// Builds the envelope of one event of a declared shape.
pub fn envelope(
    shape: &ShapeConfig,
    index: usize,
    event: &Value,
    facts: &RequestFacts<'_>,
) -> Result<Enveloped, Vec<FieldError>> {
    let err = |pointer: &str, message: String| FieldError {
        index,
        pointer: pointer.to_string(),
        message,
    };
    if !event.is_object() {
        return Err(vec![err("", "event must be a JSON object".into())]);
    }
    let mut errors = Vec::new();
    let event_type = if shape.event_type.starts_with('/') {
        match event.pointer(&shape.event_type) {
            Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 200 => s.clone(),
            Some(Value::String(_)) => {
                errors.push(err(&shape.event_type, "must be 1 to 200 characters".into()));
                String::new()
            }
            None | Some(Value::Null) => {
                errors.push(err(
                    &shape.event_type,
                    "is required (the event type)".into(),
                ));
                String::new()
            }
            Some(_) => {
                errors.push(err(
                    &shape.event_type,
                    "must be a string (the event type)".into(),
                ));
                String::new()
            }
        }
    } else {
        shape.event_type.clone()
    };
    let ts = match event.pointer(&shape.event_time) {
        Some(Value::String(s)) => match parse_timestamp(s) {
            Some(t) => Some(t),
            None => {
                errors.push(err(&shape.event_time, "must be an RFC 3339 timestamp with an explicit offset or Z, e.g. 2026-11-23T10:00:00Z".into()));
                None
            }
        },
        None | Some(Value::Null) => {
            errors.push(err(
                &shape.event_time,
                "is required (the event time: RFC 3339 with an offset or Z)".into(),
            ));
            None
        }
        Some(_) => {
            errors.push(err(
                &shape.event_time,
                "must be a string (RFC 3339 timestamp)".into(),
            ));
            None
        }
    };
    let event_ts = ts.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true));
    let client_key = match event.pointer(&shape.idempotency_key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => {
            errors.push(err(
                &shape.idempotency_key,
                "must be a string of 1 to 200 characters".into(),
            ));
            None
        }
    };
    let mut hash = Sha256::new();
    for part in [facts.source, &event_type] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    for p in &shape.idempotency_fields {
        if *p == shape.event_time {
            // The instant, not how it was written: `+02:00` and `Z` forms are one event.
            hash.update(event_ts.as_deref().unwrap_or_default().as_bytes());
        } else {
            match scalar(event, p) {
                Ok(v) => hash.update(v.as_bytes()),
                Err(m) => errors.push(err(p, format!("{m} (an idempotency field)"))),
            }
        }
        hash.update([0u8]);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let idempotency_key = match (client_key, facts.header_key) {
        (Some(k), _) => k,
        (None, Some(h)) if facts.count == 1 => h.to_string(),
        (None, Some(h)) => format!("{h}:{index}"),
        (None, None) => hex::encode(hash.finalize()),
    };
    let envelope = serde_json::json!({
        "idempotency_key": idempotency_key,
        "trace_id": facts.trace_id,
        "schema_version": 1,
        "source": facts.source,
        "event_type": event_type,
        "event_ts": event_ts,
        "payload": event,
        "ingested_at": facts.now.to_rfc3339_opts(SecondsFormat::Micros, true),
    });
    Ok(Enveloped {
        index,
        idempotency_key,
        envelope,
        partition_key: String::new(),
    })
}

/// The partition key: each entry — an envelope field name, or a JSON pointer into the event as
/// sent — joined with `|`. A pointer with no scalar value is the event's error (`Err`).
pub fn partition_key(
    envelope: &Value,
    event: &Value,
    fields: &[String],
) -> Result<String, (String, &'static str)> {
    let mut parts = Vec::with_capacity(fields.len());
    for f in fields {
        if f.starts_with('/') {
            match scalar(event, f) {
                Ok(v) => parts.push(v.into_owned()),
                Err(m) => return Err((f.clone(), m)),
            }
        } else {
            parts.push(match &envelope[f.as_str()] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            });
        }
    }
    Ok(parts.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn orders() -> ShapeConfig {
        ShapeConfig {
            event_type: "order".into(),
            event_time: "/placed_at".into(),
            idempotency_fields: vec!["/order_id".into(), "/status".into(), "/placed_at".into()],
            idempotency_key: default_idempotency_key(),
        }
    }

    fn facts<'a>(header: Option<&'a str>, count: usize) -> RequestFacts<'a> {
        RequestFacts {
            source: "shop",
            header_key: header,
            count,
            trace_id: "t1",
            now: parse_timestamp("2026-12-02T12:00:00Z").expect("ts"),
        }
    }

    #[test]
    fn the_event_is_kept_whole_and_the_envelope_read_through_pointers() {
        let ev = json!({"order_id": "o-1", "status": "placed", "placed_at": "2026-12-02T14:30:00+02:00", "amount": 12.5});
        let e = envelope(&orders(), 0, &ev, &facts(None, 1)).expect("valid");
        assert_eq!(e.envelope["event_type"], "order");
        assert_eq!(e.envelope["event_ts"], "2026-12-02T12:30:00.000000Z");
        assert_eq!(e.envelope["payload"], ev);
        assert_eq!(e.envelope["source"], "shop");
        assert_eq!(e.idempotency_key.len(), 64);
        assert_eq!(
            partition_key(&e.envelope, &ev, &["/order_id".into()]).as_deref(),
            Ok("o-1")
        );
        assert_eq!(
            partition_key(&e.envelope, &ev, &["event_type".into(), "/amount".into()]).as_deref(),
            Ok("order|12.5")
        );
    }

    #[test]
    fn derived_key_uses_the_declared_fields_and_the_instant_not_its_spelling() {
        let key = |ev: Value| {
            envelope(&orders(), 0, &ev, &facts(None, 1))
                .expect("valid")
                .idempotency_key
        };
        let a = key(
            json!({"order_id": "o-1", "status": "placed", "placed_at": "2026-12-02T14:30:00+02:00"}),
        );
        let b = key(
            json!({"order_id": "o-1", "status": "placed", "placed_at": "2026-12-02T12:30:00Z", "note": "retry"}),
        );
        let c =
            key(json!({"order_id": "o-1", "status": "paid", "placed_at": "2026-12-02T12:30:00Z"}));
        let d =
            key(json!({"order_id": 1, "status": "placed", "placed_at": "2026-12-02T12:30:00Z"}));
        assert_eq!(
            a, b,
            "undeclared fields and the offset's spelling do not count"
        );
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn key_precedence_event_field_then_header_then_derived() {
        let ev = json!({"order_id": "o", "status": "s", "placed_at": "2026-12-02T12:30:00Z"});
        let mut own = ev.clone();
        own["idempotency_key"] = json!("mine");
        let k = |ev: &Value, h, n, i| {
            envelope(&orders(), i, ev, &facts(h, n))
                .expect("v")
                .idempotency_key
        };
        assert_eq!(k(&own, Some("h"), 1, 0), "mine");
        assert_eq!(k(&ev, Some("h"), 1, 0), "h");
        assert_eq!(k(&ev, Some("h"), 4, 2), "h:2");
    }

    #[test]
    fn each_missing_or_bad_declared_field_is_reported_with_its_pointer() {
        let mut shape = orders();
        shape.event_type = "/kind".into();
        let ev = json!({"status": {"x": 1}, "placed_at": "2026-12-02T12:30:00", "kind": 7, "idempotency_key": ""});
        let errs = envelope(&shape, 3, &ev, &facts(None, 4)).expect_err("invalid");
        let ptrs: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            ptrs,
            [
                "/kind",
                "/placed_at",
                "/idempotency_key",
                "/order_id",
                "/status"
            ]
        );
        assert!(errs.iter().all(|e| e.index == 3));
        assert!(errs[1].message.contains("explicit offset"));
        assert!(envelope(&shape, 0, &json!([1]), &facts(None, 1)).is_err());
        assert_eq!(
            partition_key(&json!({}), &ev, &["/order_id".into()]),
            Err(("/order_id".into(), "is required"))
        );
    }

    #[test]
    fn validation_names_every_bad_setting() {
        let bad = ShapeConfig {
            event_type: String::new(),
            event_time: "placed_at".into(),
            idempotency_fields: vec![],
            idempotency_key: "/".into(),
        };
        let paths: Vec<String> = validate(&bad, Some(&["user_id".into(), "/".into()]))
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(
            paths,
            [
                "shape.event_type",
                "shape.event_time",
                "shape.idempotency_key",
                "shape.idempotency_fields",
                "partition_key.0",
                "partition_key.1"
            ]
        );
        assert_eq!(
            validate(&orders(), None).len(),
            1,
            "the partition key must be declared"
        );
        assert!(validate(&orders(), Some(&["/order_id".into(), "source".into()])).is_empty());
    }
}
