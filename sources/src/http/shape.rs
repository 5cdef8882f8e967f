//! Event shapes: which fields of an accepted event give its envelope (SPEC §2) — event type,
//! event time, the derived idempotency key, fields lifted beside them — and its partition key.
//!
//! A shape is configuration, not code. Without `shape:` an `http_source` takes **growth
//! events**, and that default is itself a declared shape ([`ShapeConfig::growth`]); written out
//! it is:
//!
//! ```yaml
//! partition_key: [user_id]
//! shape:
//!   event_type: /event_type
//!   event_time: [/client_timestamp, /event_ts]   # the first one present
//!   fields:
//!     user_id: { pointer: /user_id, format: uuid } # lifted into the envelope, normalised
//!   source: /source                              # the event may name its own source
//!   payload: rest                                # /payload plus every field not read above
//!   derived_key: [source, user_id, event_type, event_ts]
//! ```
//!
//! Any other JSON object is taken by declaring its own shape, e.g. orders:
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
//! The envelope is `{"idempotency_key", "trace_id", "schema_version", "source", "event_type",
//! <each lifted field>, "event_ts", "payload", "ingested_at"}`, written in name order straight
//! from the parsed event ([`Enveloped`] implements `Serialize`; no intermediate JSON tree).
//!
//! - **`payload: event`** (the default of a declared shape) keeps the event whole under
//!   `payload`, so its fields never collide with the envelope's (`postgres_sink` maps
//!   `/payload/order_id`).
//! - **`payload: rest`** takes the event's `payload` object (absent or null: `{}`) and adds every
//!   other top-level member that the shape does not read (and not `trace_id` nor
//!   `schema_version`, which are the envelope's), without overwriting a member of `payload`.
//!
//! The idempotency key is, in this order, the event's own (`idempotency_key` pointer, default
//! `/idempotency_key`), the request's `Idempotency-Key` header (suffixed `:<index>` in a batch),
//! or SHA-256 over the `derived_key` parts, each followed by a zero byte. A part is an envelope
//! field (`source`, `event_type`, `event_ts`, a lifted field) or a JSON pointer into the event;
//! a pointer that is one of the event-time pointers is hashed as the UTC instant, so one instant
//! written with two offsets is one event. `idempotency_fields: [...]` is the short form of
//! `derived_key: [source, event_type, ...]`.
//!
//! Which fields are required and of what type is the JSON Schema's job (`schema_file`, or the
//! versioned `contracts`, which validate `payload`); the fields named by the shape are required
//! whatever the schema says, and a missing or ill-typed one is a 400 naming its pointer.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::SecondsFormat;
use schemars::JsonSchema;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::doc::Doc;
use super::event::{parse_timestamp, FieldError, RequestFacts};
use connector_core::ConfigIssue;

/// A declared event shape (see the [module docs](self)).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShapeConfig {
    /// The event type: a JSON pointer into the event (`/kind`, a non-empty string of at most 200
    /// characters), or, without a leading `/`, the type of every event (`order`).
    pub event_type: String,
    /// JSON pointer to the event time, or a list of them (the first one present in the event is
    /// used; a missing time is reported at the first): an RFC 3339 timestamp with an explicit
    /// offset or `Z`, normalised to UTC (`event_ts`).
    pub event_time: Pointers,
    /// Short form of `derived_key`: JSON pointers whose values (strings, numbers, booleans) are
    /// hashed after `source` and the event type. Name every field that tells two distinct events
    /// apart: what is left out makes events that differ only there one event.
    #[serde(default)]
    pub idempotency_fields: Vec<String>,
    /// What the derived idempotency key hashes, in order: envelope fields (`source`,
    /// `event_type`, `event_ts`, a name from `fields`) and JSON pointers into the event. Set
    /// this or `idempotency_fields`, not both.
    #[serde(default)]
    pub derived_key: Vec<String>,
    /// JSON pointer to a client-chosen idempotency key (a string of 1 to 200 characters), used
    /// when the event has one.
    #[serde(default = "default_idempotency_key")]
    pub idempotency_key: String,
    /// Fields lifted from the event into the envelope's top level, by name (e.g. `user_id`),
    /// each required. They may be named by `partition_key` and `derived_key`.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    /// JSON pointer to the event's own `source` (a string of 1 to 200 characters); absent from
    /// the event or unset: the connector's `source`, else the API key's name.
    #[serde(default)]
    pub source: Option<String>,
    /// What goes under the envelope's `payload`: `event` (default: the event whole) or `rest`
    /// (the event's `payload` object plus every member the shape does not read).
    #[serde(default)]
    pub payload: PayloadMode,
}

/// One JSON pointer or a list of them.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum Pointers {
    /// One pointer.
    One(String),
    /// Several, in order of preference.
    Many(Vec<String>),
}

impl Pointers {
    fn as_slice(&self) -> &[String] {
        match self {
            Pointers::One(p) => std::slice::from_ref(p),
            Pointers::Many(ps) => ps,
        }
    }
}

/// A field lifted into the envelope.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// JSON pointer into the event.
    pub pointer: String,
    /// What the value must be.
    #[serde(default)]
    pub format: FieldFormat,
}

/// What a lifted field must be.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldFormat {
    /// A non-empty string, kept as sent (default).
    #[default]
    String,
    /// A UUID in any form `uuid` parses (upper case, no hyphens, braces), stored lower case and
    /// hyphenated so that one id written two ways is one id.
    Uuid,
}

/// What goes under the envelope's `payload`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PayloadMode {
    /// The event whole.
    #[default]
    Event,
    /// The event's `payload` object plus every top-level member the shape does not read.
    Rest,
}

fn default_idempotency_key() -> String {
    "/idempotency_key".into()
}

impl ShapeConfig {
    /// The growth-event shape: what an `http_source` without `shape:` takes (module docs).
    pub fn growth() -> Self {
        ShapeConfig {
            event_type: "/event_type".into(),
            event_time: Pointers::Many(vec!["/client_timestamp".into(), "/event_ts".into()]),
            idempotency_fields: Vec::new(),
            derived_key: ["source", "user_id", "event_type", "event_ts"]
                .map(String::from)
                .to_vec(),
            idempotency_key: default_idempotency_key(),
            fields: BTreeMap::from([(
                "user_id".to_string(),
                FieldSpec {
                    pointer: "/user_id".into(),
                    format: FieldFormat::Uuid,
                },
            )]),
            source: Some("/source".into()),
            payload: PayloadMode::Rest,
        }
    }

    /// The partition key of the growth shape.
    pub fn growth_partition_key() -> Vec<String> {
        vec!["user_id".into()]
    }
}

/// Envelope fields a `partition_key` entry may name (besides the shape's lifted `fields` and JSON
/// pointers into the event).
pub const CUSTOM_KEY_FIELDS: &[&str] = &["event_type", "source", "idempotency_key", "trace_id"];

/// Names the envelope itself uses: a lifted field may not take one.
const ENVELOPE_FIELDS: &[&str] = &[
    "idempotency_key",
    "trace_id",
    "schema_version",
    "source",
    "event_type",
    "event_ts",
    "payload",
    "ingested_at",
];

/// Envelope fields a `derived_key` entry may name (besides the lifted `fields`).
const HASH_FIELDS: &[&str] = &["source", "event_type", "event_ts"];

/// Configuration problems of a shape and its partition key (pure: no I/O).
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
    let lifted: Vec<&str> = s.fields.keys().map(String::as_str).collect();
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
    match &s.event_time {
        Pointers::One(p) => pointer("shape.event_time".into(), p, &mut issues),
        Pointers::Many(ps) if ps.is_empty() => issues.push(ConfigIssue::new(
            "shape.event_time",
            "needs at least one pointer (e.g. /placed_at)",
        )),
        Pointers::Many(ps) => {
            for (i, p) in ps.iter().enumerate() {
                pointer(format!("shape.event_time.{i}"), p, &mut issues);
            }
        }
    }
    pointer(
        "shape.idempotency_key".into(),
        &s.idempotency_key,
        &mut issues,
    );
    for (name, f) in &s.fields {
        if name.is_empty() || name.starts_with('/') || ENVELOPE_FIELDS.contains(&name.as_str()) {
            issues.push(ConfigIssue::new(
                format!("shape.fields.{name}"),
                format!(
                    "a lifted field needs a name of its own, not a pointer nor one of {}",
                    ENVELOPE_FIELDS.join(", ")
                ),
            ));
        }
        pointer(
            format!("shape.fields.{name}.pointer"),
            &f.pointer,
            &mut issues,
        );
    }
    if let Some(p) = &s.source {
        pointer("shape.source".into(), p, &mut issues);
    }
    match (s.idempotency_fields.is_empty(), s.derived_key.is_empty()) {
        (true, true) => issues.push(ConfigIssue::new(
            "shape.idempotency_fields",
            "needs at least one pointer: the fields that tell two events apart (or set derived_key)",
        )),
        (false, false) => issues.push(ConfigIssue::new(
            "shape.derived_key",
            "set derived_key or idempotency_fields, not both",
        )),
        _ => {}
    }
    for (i, p) in s.idempotency_fields.iter().enumerate() {
        pointer(format!("shape.idempotency_fields.{i}"), p, &mut issues);
    }
    for (i, p) in s.derived_key.iter().enumerate() {
        if p.starts_with('/') {
            pointer(format!("shape.derived_key.{i}"), p, &mut issues);
        } else if !HASH_FIELDS.contains(&p.as_str()) && !lifted.contains(&p.as_str()) {
            issues.push(ConfigIssue::new(
                format!("shape.derived_key.{i}"),
                format!(
                    "{p:?} is neither a JSON pointer into the event nor one of {}",
                    lifted
                        .iter()
                        .chain(HASH_FIELDS)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    match partition_key {
        None => issues.push(ConfigIssue::new(
            "partition_key",
            "a declared shape needs its partition key: JSON pointers into the event (e.g. [/order_id]) or envelope fields (event_type, source, idempotency_key, trace_id, or a lifted field)",
        )),
        Some(fields) => {
            for (i, f) in fields.iter().enumerate() {
                if f.starts_with('/') {
                    pointer(format!("partition_key.{i}"), f, &mut issues);
                } else if !CUSTOM_KEY_FIELDS.contains(&f.as_str()) && !lifted.contains(&f.as_str())
                {
                    issues.push(ConfigIssue::new(
                        format!("partition_key.{i}"),
                        format!(
                            "{f:?} is neither a JSON pointer into the event nor one of {}",
                            lifted
                                .iter()
                                .chain(CUSTOM_KEY_FIELDS)
                                .copied()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
    }
    issues
}

/// A JSON pointer split into its reference tokens once, so that reading it per event allocates
/// nothing (`serde_json::Value::pointer` unescapes every token into a new `String` on each call).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pointer {
    /// As configured (what errors name).
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    fn parse(text: &str) -> Self {
        Pointer {
            text: text.to_string(),
            tokens: text
                .split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        }
    }

    /// The value at this pointer (RFC 6901, as `serde_json::Value::pointer`).
    fn get<'a, D: Doc>(&self, mut v: &'a D) -> Option<&'a D> {
        for t in &self.tokens {
            v = if v.is_object() {
                v.member(t)?
            } else {
                if t.starts_with('+') || (t.len() > 1 && t.starts_with('0')) {
                    return None;
                }
                v.element(t.parse::<usize>().ok()?)?
            };
        }
        Some(v)
    }

    /// The top-level member this pointer reads (what `payload: rest` leaves out).
    fn top(&self) -> Option<&str> {
        self.tokens.first().map(String::as_str)
    }
}

/// Where the event type comes from.
#[derive(Debug, Clone)]
enum EventTypeFrom {
    Fixed(String),
    At(Pointer),
}

/// One part of the derived idempotency key.
#[derive(Debug, Clone)]
enum HashPart {
    Source,
    EventType,
    EventTs,
    Lifted(usize),
    At(Pointer),
}

/// One part of the partition key.
#[derive(Debug, Clone)]
enum KeyPart {
    EventType,
    Source,
    IdempotencyKey,
    TraceId,
    Lifted(usize),
    /// A name no envelope field has (refused by `validate`): empty.
    Unknown,
    At(Pointer),
}

/// A member of the envelope, in the order they are written (by name, as a `serde_json` object
/// prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    EventTs,
    EventType,
    IdempotencyKey,
    IngestedAt,
    Payload,
    SchemaVersion,
    Source,
    TraceId,
    Lifted(usize),
}

/// A lifted field, compiled.
#[derive(Debug, Clone)]
struct Lifted {
    name: String,
    at: Pointer,
    format: FieldFormat,
}

/// A validated [`ShapeConfig`] and partition key with every pointer parsed once: what an
/// `http_source` applies to each event.
#[derive(Debug, Clone)]
pub struct Shape {
    event_type: EventTypeFrom,
    event_time: Vec<Pointer>,
    idempotency_key: Pointer,
    fields: Vec<Lifted>,
    source: Option<Pointer>,
    payload: PayloadMode,
    /// Top-level members `payload: rest` leaves out.
    read: Vec<String>,
    hash: Vec<HashPart>,
    partition: Vec<KeyPart>,
    /// The envelope's members in name order.
    members: Vec<Member>,
}

impl Shape {
    /// The growth-event shape with its partition key `[user_id]`: an `http_source` without
    /// `shape:`.
    pub fn growth() -> Self {
        Shape::new(&ShapeConfig::growth(), &ShapeConfig::growth_partition_key())
    }

    /// Compiles a shape that [`validate`] passed (an entry it would refuse reads nothing).
    pub fn new(c: &ShapeConfig, partition_key: &[String]) -> Self {
        let mut event_time: Vec<Pointer> = c
            .event_time
            .as_slice()
            .iter()
            .map(|p| Pointer::parse(p))
            .collect();
        if event_time.is_empty() {
            // Refused by `validate`; read as the whole event (an error per event), never a panic.
            event_time.push(Pointer::parse(""));
        }
        let fields: Vec<Lifted> = c
            .fields
            .iter()
            .map(|(name, f)| Lifted {
                name: name.clone(),
                at: Pointer::parse(&f.pointer),
                format: f.format,
            })
            .collect();
        let layout: Vec<String> = if c.derived_key.is_empty() {
            ["source".to_string(), "event_type".to_string()]
                .into_iter()
                .chain(c.idempotency_fields.iter().cloned())
                .collect()
        } else {
            c.derived_key.clone()
        };
        let hash = layout
            .iter()
            .map(|p| match p.as_str() {
                "source" => HashPart::Source,
                "event_type" => HashPart::EventType,
                "event_ts" => HashPart::EventTs,
                _ if c.event_time.as_slice().contains(p) => HashPart::EventTs,
                _ if p.starts_with('/') => HashPart::At(Pointer::parse(p)),
                name => match fields.iter().position(|f| f.name == name) {
                    Some(i) => HashPart::Lifted(i),
                    None => HashPart::At(Pointer::parse(name)),
                },
            })
            .collect();
        let event_type = if c.event_type.starts_with('/') {
            EventTypeFrom::At(Pointer::parse(&c.event_type))
        } else {
            EventTypeFrom::Fixed(c.event_type.clone())
        };
        let idempotency_key = Pointer::parse(&c.idempotency_key);
        let source = c.source.as_deref().map(Pointer::parse);
        let mut read: Vec<String> = ["payload", "trace_id", "schema_version"]
            .map(String::from)
            .to_vec();
        let type_ptr = match &event_type {
            EventTypeFrom::At(p) => Some(p),
            EventTypeFrom::Fixed(_) => None,
        };
        for p in event_time
            .iter()
            .chain(fields.iter().map(|f| &f.at))
            .chain(type_ptr)
            .chain(source.as_ref())
            .chain(std::iter::once(&idempotency_key))
        {
            if let Some(t) = p.top() {
                if !read.iter().any(|r| r == t) {
                    read.push(t.to_string());
                }
            }
        }
        let partition = partition_key
            .iter()
            .map(|f| match f.as_str() {
                "event_type" => KeyPart::EventType,
                "source" => KeyPart::Source,
                "idempotency_key" => KeyPart::IdempotencyKey,
                "trace_id" => KeyPart::TraceId,
                _ if f.starts_with('/') => KeyPart::At(Pointer::parse(f)),
                name => match fields.iter().position(|l| l.name == name) {
                    Some(i) => KeyPart::Lifted(i),
                    None => KeyPart::Unknown,
                },
            })
            .collect();
        let mut named: Vec<(&str, Member)> = vec![
            ("event_ts", Member::EventTs),
            ("event_type", Member::EventType),
            ("idempotency_key", Member::IdempotencyKey),
            ("ingested_at", Member::IngestedAt),
            ("payload", Member::Payload),
            ("schema_version", Member::SchemaVersion),
            ("source", Member::Source),
            ("trace_id", Member::TraceId),
        ];
        named.extend(
            fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.as_str(), Member::Lifted(i))),
        );
        named.sort_by(|a, b| a.0.cmp(b.0));
        let members = named.into_iter().map(|(_, m)| m).collect();
        Shape {
            event_type,
            event_time,
            idempotency_key,
            fields,
            source,
            payload: c.payload,
            read,
            hash,
            partition,
            members,
        }
    }

    /// Checks one event against the shape and builds its envelope; every problem is named with
    /// its pointer.
    pub fn envelope<'a, D: Doc>(
        &'a self,
        index: usize,
        event: &'a D,
        facts: &RequestFacts<'a>,
    ) -> Result<Enveloped<'a, D>, Vec<FieldError>> {
        let err = |pointer: &str, message: &str| FieldError {
            index,
            pointer: pointer.to_string(),
            message: message.to_string(),
        };
        if !event.is_object() {
            return Err(vec![err(
                "",
                &format!("event must be a JSON object, not {}", event.kind()),
            )]);
        }
        let mut errors = Vec::new();
        // Each check gives its value or what is wrong; a problem is kept with its pointer and
        // the checks go on, so that one answer names every bad field.
        fn check<T>(
            errors: &mut Vec<FieldError>,
            index: usize,
            pointer: &str,
            r: Result<T, &str>,
        ) -> Option<T> {
            r.map_err(|m| {
                errors.push(FieldError {
                    index,
                    pointer: pointer.to_string(),
                    message: m.to_string(),
                })
            })
            .ok()
        }
        let lifted: Vec<String> = self
            .fields
            .iter()
            .map(|f| {
                let at = f.at.get(event);
                let value = match (at.map(|v| v.as_str()), f.format) {
                    (Some(Some(s)), FieldFormat::Uuid) => uuid::Uuid::parse_str(s)
                        .map(|u| u.hyphenated().to_string())
                        .map_err(|_| "must be a UUID"),
                    (Some(_), FieldFormat::Uuid) => Err("must be a string (a UUID)"),
                    (Some(Some(s)), FieldFormat::String) if !s.is_empty() => Ok(s.to_string()),
                    (Some(_), FieldFormat::String) => Err("must be a non-empty string"),
                    (None, _) => Err("is required"),
                };
                check(&mut errors, index, &f.at.text, value).unwrap_or_default()
            })
            .collect();
        let event_type: Option<&'a str> = match &self.event_type {
            EventTypeFrom::Fixed(t) => Some(t),
            EventTypeFrom::At(p) => check(
                &mut errors,
                index,
                &p.text,
                match p.get(event).map(|v| v.as_str()) {
                    Some(Some(s)) if !s.is_empty() && s.chars().count() <= 200 => Ok(s),
                    Some(Some(_)) => Err("must be 1 to 200 characters"),
                    Some(None) => Err("must be a string"),
                    None => Err("is required"),
                },
            ),
        };
        let (ts_at, ts_value) = self
            .event_time
            .iter()
            .find_map(|p| p.get(event).map(|v| (p, Some(v))))
            .unwrap_or((&self.event_time[0], None));
        const NOT_RFC_3339: &str =
            "must be an RFC 3339 timestamp with an explicit offset or Z, e.g. 2026-11-23T10:00:00Z";
        let ts = check(
            &mut errors,
            index,
            &ts_at.text,
            match ts_value.map(|v| v.as_str()) {
                Some(Some(s)) => parse_timestamp(s).ok_or(NOT_RFC_3339),
                Some(None) => Err("must be a string (RFC 3339 timestamp)"),
                None => Err("is required (RFC 3339 with an offset or Z)"),
            },
        );
        let own_payload = check(
            &mut errors,
            index,
            "/payload",
            match (self.payload, event.member("payload")) {
                (PayloadMode::Rest, Some(p)) if p.is_object() => Ok(Some(p)),
                (PayloadMode::Rest, Some(p)) if !p.is_null() => Err("must be a JSON object"),
                (PayloadMode::Rest, _) | (PayloadMode::Event, _) => Ok(None),
            },
        )
        .flatten();
        let client_key = check(
            &mut errors,
            index,
            &self.idempotency_key.text,
            match self.idempotency_key.get(event).map(|v| v.as_str()) {
                Some(Some(s)) if !s.is_empty() && s.len() <= 200 => Ok(Some(s.to_string())),
                Some(_) => Err("must be a string of 1 to 200 characters"),
                None => Ok(None),
            },
        )
        .flatten();
        let source: &'a str = match self.source.as_ref().and_then(|p| Some((p, p.get(event)?))) {
            None => facts.source,
            Some((p, v)) => check(
                &mut errors,
                index,
                &p.text,
                match v.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= 200 => Ok(s),
                    _ => Err("must be a string of 1 to 200 characters"),
                },
            )
            .unwrap_or_default(),
        };
        // Every pointer the key hashes is checked, whichever key the event ends up with. (Only
        // pointer parts are kept here: a shape hashing envelope fields allocates nothing.)
        let mut hashed: Vec<Cow<'_, str>> = Vec::new();
        for part in &self.hash {
            if let HashPart::At(p) = part {
                match scalar(event, p) {
                    Ok(v) => hashed.push(v),
                    Err(m) => errors.push(err(&p.text, &format!("{m} (an idempotency field)"))),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let (Some(event_type), Some(ts)) = (event_type, ts) else {
            return Err(vec![err("", "invalid event")]);
        };
        let event_ts = ts.to_rfc3339_opts(SecondsFormat::Micros, true);
        let idempotency_key = match (client_key, facts.header_key) {
            (Some(k), _) => k,
            (None, Some(h)) if facts.count == 1 => h.to_string(),
            (None, Some(h)) => format!("{h}:{index}"),
            (None, None) => {
                let mut h = Sha256::new();
                let mut at = hashed.iter();
                for part in &self.hash {
                    h.update(match part {
                        HashPart::Source => source.as_bytes(),
                        HashPart::EventType => event_type.as_bytes(),
                        HashPart::EventTs => event_ts.as_bytes(),
                        HashPart::Lifted(i) => lifted[*i].as_bytes(),
                        HashPart::At(_) => at.next().map(|v| v.as_bytes()).unwrap_or_default(),
                    });
                    h.update([0u8]);
                }
                hex::encode(h.finalize())
            }
        };
        Ok(Enveloped {
            index,
            idempotency_key,
            partition_key: String::new(),
            schema_version: 1,
            shape: self,
            event,
            own_payload,
            trace_id: facts.trace_id,
            source,
            event_type,
            lifted,
            event_ts,
            ingested_at: facts.now.to_rfc3339_opts(SecondsFormat::Micros, true),
        })
    }

    /// The partition key: each entry — an envelope field name, or a JSON pointer into the event
    /// as sent — joined with `|`. A pointer with no scalar value is the event's error (`Err`).
    pub fn partition_key<D: Doc>(
        &self,
        env: &Enveloped<'_, D>,
    ) -> Result<String, (String, &'static str)> {
        let mut key = String::new();
        for (i, part) in self.partition.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            match part {
                KeyPart::At(p) => match scalar(env.event, p) {
                    Ok(v) => key.push_str(&v),
                    Err(m) => return Err((p.text.clone(), m)),
                },
                KeyPart::EventType => key.push_str(env.event_type),
                KeyPart::Source => key.push_str(env.source),
                KeyPart::IdempotencyKey => key.push_str(&env.idempotency_key),
                KeyPart::TraceId => key.push_str(env.trace_id),
                KeyPart::Lifted(i) => key.push_str(&env.lifted[*i]),
                KeyPart::Unknown => {}
            }
        }
        Ok(key)
    }
}

/// A validated event's envelope (SPEC §2), borrowing the event, its shape and its request's
/// facts. It serialises as the envelope's JSON (`serde_json::to_string`), members in name
/// order, the payload written straight from the event: nothing of the event is copied into an
/// intermediate JSON tree.
#[derive(Debug, Clone)]
pub struct Enveloped<'a, D = Value> {
    /// Position of the event in its request.
    pub index: usize,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The Kafka key, filled in from the source's `partition_key` ([`Shape::partition_key`]).
    pub partition_key: String,
    /// `schema_version`: 1, or the version of the contract the payload was checked against.
    pub schema_version: u32,
    shape: &'a Shape,
    /// The event as sent (an object).
    event: &'a D,
    /// `payload: rest`: the event's own `payload` object, when it has one.
    own_payload: Option<&'a D>,
    trace_id: &'a str,
    source: &'a str,
    event_type: &'a str,
    /// Values of the shape's lifted fields, in its order.
    lifted: Vec<String>,
    event_ts: String,
    ingested_at: String,
}

impl<'a, D: Doc> Enveloped<'a, D> {
    /// The event type.
    pub fn event_type(&self) -> &'a str {
        self.event_type
    }

    /// The envelope's `payload` as a `serde_json::Value`: the event itself (`payload: event`),
    /// or the object `payload: rest` makes (built here, for the contracts that validate it).
    /// `None` when the event was not parsed as a `Value` (see [`Doc::as_value`]).
    pub fn payload(&self) -> Option<Cow<'a, Value>> {
        Some(match self.shape.payload {
            PayloadMode::Event => Cow::Borrowed(self.event.as_value()?),
            PayloadMode::Rest => Cow::Owned(Value::Object(
                self.rest()
                    .entries()
                    .map(|(k, v)| Some((k.to_string(), v.as_value()?.clone())))
                    .collect::<Option<_>>()?,
            )),
        })
    }

    fn rest(&self) -> Rest<'a, D> {
        Rest {
            own: self.own_payload,
            event: self.event,
            read: &self.shape.read,
        }
    }

    /// The envelope as a JSON value (tests and tools; the source writes [`Serialize`] output).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl<D: Doc> Serialize for Enveloped<'_, D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.shape.members.len()))?;
        for member in &self.shape.members {
            match member {
                Member::EventTs => m.serialize_entry("event_ts", &self.event_ts)?,
                Member::EventType => m.serialize_entry("event_type", self.event_type)?,
                Member::IdempotencyKey => {
                    m.serialize_entry("idempotency_key", &self.idempotency_key)?
                }
                Member::IngestedAt => m.serialize_entry("ingested_at", &self.ingested_at)?,
                Member::Payload => match self.shape.payload {
                    PayloadMode::Event => m.serialize_entry("payload", self.event)?,
                    PayloadMode::Rest => m.serialize_entry("payload", &self.rest())?,
                },
                Member::SchemaVersion => {
                    m.serialize_entry("schema_version", &self.schema_version)?
                }
                Member::Source => m.serialize_entry("source", self.source)?,
                Member::TraceId => m.serialize_entry("trace_id", self.trace_id)?,
                Member::Lifted(i) => {
                    m.serialize_entry(&self.shape.fields[*i].name, &self.lifted[*i])?
                }
            }
        }
        m.end()
    }
}

/// `payload: rest`: the event's own `payload` members and every other top-level member the
/// shape does not read (an own member wins), merged in name order.
struct Rest<'a, D> {
    own: Option<&'a D>,
    event: &'a D,
    read: &'a [String],
}

impl<D> Clone for Rest<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for Rest<'_, D> {}

impl<'a, D: Doc> Rest<'a, D> {
    /// The members, in name order (both documents keep an object's members in name order).
    fn entries(self) -> impl Iterator<Item = (&'a str, &'a D)> {
        let mut own = self
            .own
            .and_then(Doc::members)
            .into_iter()
            .flatten()
            .peekable();
        let mut rest = self
            .event
            .members()
            .into_iter()
            .flatten()
            .filter(move |(k, _)| {
                !self.read.iter().any(|r| r.as_str() == *k)
                    && self.own.is_none_or(|o| o.member(k).is_none())
            })
            .peekable();
        std::iter::from_fn(move || match (own.peek(), rest.peek()) {
            (Some((a, _)), Some((b, _))) if b < a => rest.next(),
            (Some(_), _) => own.next(),
            (None, _) => rest.next(),
        })
    }
}

impl<D: Doc> Serialize for Rest<'_, D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.entries() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The text of a scalar at `pointer` in `event`, or why there is none.
fn scalar<'a, D: Doc>(event: &'a D, pointer: &Pointer) -> Result<Cow<'a, str>, &'static str> {
    match pointer.get(event) {
        None => Err("is required"),
        Some(v) => match (v.as_str(), v.scalar_text()) {
            (Some(s), _) => Ok(Cow::Borrowed(s)),
            (None, Some(t)) => Ok(Cow::Owned(t)),
            (None, None) if v.is_null() => Err("is required"),
            (None, None) => Err("must be a string, a number or a boolean"),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// What a test looks at of an envelope, owned (so that its shape may be a temporary).
    #[derive(Debug, PartialEq)]
    pub(crate) struct Out {
        pub idempotency_key: String,
        /// The envelope parsed back from `json`.
        pub envelope: Value,
        /// What the source produces.
        pub json: String,
        pub partition_key: Result<String, (String, &'static str)>,
    }

    /// Applies `shape` to one event, parsed as a `serde_json::Value` and, from its JSON text,
    /// as a borrowed [`Json`](crate::http::doc::Json): both must give the same answer (what
    /// the source produces does not depend on which document it parsed into).
    pub(crate) fn run(
        shape: &Shape,
        index: usize,
        event: &Value,
        facts: &RequestFacts<'_>,
    ) -> Result<Out, Vec<FieldError>> {
        fn out<D: Doc>(
            shape: &Shape,
            index: usize,
            event: &D,
            facts: &RequestFacts<'_>,
        ) -> Result<Out, Vec<FieldError>> {
            shape.envelope(index, event, facts).map(|e| {
                let json = serde_json::to_string(&e).expect("an envelope serialises");
                Out {
                    idempotency_key: e.idempotency_key.clone(),
                    envelope: serde_json::from_str(&json).expect("valid JSON"),
                    partition_key: shape.partition_key(&e),
                    json,
                }
            })
        }
        let text = serde_json::to_string(event).expect("a Value serialises");
        let borrowed: crate::http::doc::Json<'_> =
            serde_json::from_str(&text).expect("its own JSON parses");
        let by_value = out(shape, index, event, facts);
        assert_eq!(
            out(shape, index, &borrowed, facts),
            by_value,
            "the borrowed document answers as the Value"
        );
        by_value
    }

    fn orders() -> ShapeConfig {
        ShapeConfig {
            event_type: "order".into(),
            event_time: Pointers::One("/placed_at".into()),
            idempotency_fields: vec!["/order_id".into(), "/status".into(), "/placed_at".into()],
            derived_key: Vec::new(),
            idempotency_key: default_idempotency_key(),
            fields: BTreeMap::new(),
            source: None,
            payload: PayloadMode::Event,
        }
    }

    fn envelope(
        shape: &ShapeConfig,
        index: usize,
        event: &Value,
        facts: &RequestFacts<'_>,
    ) -> Result<Out, Vec<FieldError>> {
        run(
            &Shape::new(shape, &["/order_id".into()]),
            index,
            event,
            facts,
        )
    }

    /// The partition key of an orders event under `fields`.
    fn partition_key(event: &Value, fields: &[String]) -> Result<String, (String, &'static str)> {
        run(&Shape::new(&orders(), fields), 0, event, &facts(None, 1))
            .expect("valid")
            .partition_key
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
            partition_key(&ev, &["/order_id".into()]).as_deref(),
            Ok("o-1")
        );
        assert_eq!(
            partition_key(&ev, &["event_type".into(), "/amount".into()]).as_deref(),
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
        let no_id = json!({"status": "s", "placed_at": "2026-12-02T12:30:00Z", "n": 1});
        let sh = Shape::new(&orders(), &["/n".into(), "/order_id".into()]);
        let e = sh.envelope(0, &no_id, &facts(Some("h"), 1));
        assert!(e.is_err(), "/order_id is an idempotency field");
        let mut by_status = orders();
        by_status.idempotency_fields = vec!["/status".into()];
        let sh = Shape::new(&by_status, &["/n".into(), "/order_id".into()]);
        let e = sh.envelope(0, &no_id, &facts(None, 1)).expect("valid");
        assert_eq!(
            sh.partition_key(&e),
            Err(("/order_id".into(), "is required"))
        );
    }

    #[test]
    fn validation_names_every_bad_setting() {
        let bad = ShapeConfig {
            event_type: String::new(),
            event_time: Pointers::One("placed_at".into()),
            idempotency_fields: vec![],
            idempotency_key: "/".into(),
            ..orders()
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

    /// The orders key and envelope as the first version of declared shapes gave them: the
    /// short form `idempotency_fields` still hashes `source`, the type, then the fields.
    #[test]
    fn idempotency_fields_keep_the_keys_they_gave_before_derived_key_existed() {
        let ev = json!({"order_id": 17, "status": "placed", "placed_at": "2026-12-02T14:30:00+02:00", "amount": 12.5});
        let e = envelope(&orders(), 0, &ev, &facts(None, 1)).expect("valid");
        assert_eq!(
            e.json,
            r#"{"event_ts":"2026-12-02T12:30:00.000000Z","event_type":"order","idempotency_key":"bfc03d1d08fe7a878f23eaea8ead22746854a9e9adeabaede60e1114192a7a0e","ingested_at":"2026-12-02T12:00:00.000000Z","payload":{"amount":12.5,"order_id":17,"placed_at":"2026-12-02T14:30:00+02:00","status":"placed"},"schema_version":1,"source":"shop","trace_id":"t1"}"#
        );
        let mut long = orders();
        long.idempotency_fields = Vec::new();
        long.derived_key = ["source", "event_type", "/order_id", "/status", "event_ts"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            envelope(&long, 0, &ev, &facts(None, 1))
                .expect("valid")
                .idempotency_key,
            e.idempotency_key,
            "the same layout written out is the same key"
        );
    }

    #[test]
    fn lifted_fields_rest_payload_and_source_pointer() {
        let shape: ShapeConfig = serde_yaml::from_str(
            "event_type: /kind\n\
             event_time: [/at, /when]\n\
             fields: { account: { pointer: /acct/id }, owner: { pointer: /owner, format: uuid } }\n\
             source: /src\n\
             payload: rest\n\
             derived_key: [account, owner, /n]\n",
        )
        .expect("yaml");
        assert!(validate(&shape, Some(&["account".into(), "/n".into()])).is_empty());
        let sh = Shape::new(&shape, &["account".into(), "/n".into()]);
        let ev = json!({"kind": "k", "when": "2026-12-02T12:30:00Z", "acct": {"id": "a1"},
            "owner": "6F1C1F0E8A4B4C559D1E2B7F3C4D5E6F", "src": "s", "n": 3, "extra": true,
            "payload": {"extra": "kept"}, "schema_version": 2});
        let e = run(&sh, 0, &ev, &facts(None, 1)).expect("valid");
        assert_eq!(e.envelope["account"], "a1");
        assert_eq!(e.envelope["owner"], "6f1c1f0e-8a4b-4c55-9d1e-2b7f3c4d5e6f");
        assert_eq!(e.envelope["source"], "s");
        assert_eq!(e.envelope["event_ts"], "2026-12-02T12:30:00.000000Z");
        assert_eq!(
            e.envelope["payload"],
            json!({"extra": "kept", "n": 3}),
            "rest leaves out what the shape reads, keeps /payload's own members"
        );
        assert_eq!(e.partition_key.as_deref(), Ok("a1|3"));
        let mut h = Sha256::new();
        for part in ["a1", "6f1c1f0e-8a4b-4c55-9d1e-2b7f3c4d5e6f", "3"] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        assert_eq!(e.idempotency_key, hex::encode(h.finalize()));
        let bad = json!({"kind": "k", "at": 5, "when": "2026-12-02T12:30:00Z", "acct": {"id": ""},
            "owner": "x", "src": null, "n": [1], "payload": 1});
        let errs: Vec<(String, String)> = sh
            .envelope(0, &bad, &facts(None, 1))
            .expect_err("invalid")
            .into_iter()
            .map(|e| (e.pointer, e.message))
            .collect();
        let want: Vec<(String, String)> = [
            ("/acct/id", "must be a non-empty string"),
            ("/owner", "must be a UUID"),
            ("/at", "must be a string (RFC 3339 timestamp)"),
            ("/payload", "must be a JSON object"),
            ("/src", "must be a string of 1 to 200 characters"),
            (
                "/n",
                "must be a string, a number or a boolean (an idempotency field)",
            ),
        ]
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .to_vec();
        assert_eq!(
            errs, want,
            "the first event-time pointer present is the one read"
        );
    }

    #[test]
    fn pointers_are_read_as_rfc_6901_says() {
        let doc = json!({"a/b": {"m~n": [10, 20]}, "x": {"01": 1}});
        for p in [
            "/a~1b/m~0n/1",
            "/a~1b/m~0n/01",
            "/a~1b/m~0n/+1",
            "/x/01",
            "/x",
            "/nope",
            "/a~1b/m~0n/9",
        ] {
            assert_eq!(Pointer::parse(p).get(&doc), doc.pointer(p), "{p}");
        }
        assert_eq!(Pointer::parse("/a~1b").top(), Some("a/b"));
    }

    #[test]
    fn the_growth_shape_is_valid_and_new_options_are_checked() {
        assert!(validate(
            &ShapeConfig::growth(),
            Some(&ShapeConfig::growth_partition_key())
        )
        .is_empty());
        let mut s = orders();
        s.derived_key = vec!["source".into(), "nobody".into()];
        s.fields = BTreeMap::from([
            (
                "payload".to_string(),
                FieldSpec {
                    pointer: "/p".into(),
                    format: FieldFormat::String,
                },
            ),
            (
                "acct".to_string(),
                FieldSpec {
                    pointer: "acct".into(),
                    format: FieldFormat::String,
                },
            ),
        ]);
        s.event_time = Pointers::Many(vec![]);
        s.source = Some("src".into());
        let issues = validate(&s, Some(&["acct".into(), "user_id".into()]));
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "shape.event_time",
                "shape.fields.acct.pointer",
                "shape.fields.payload",
                "shape.source",
                "shape.derived_key",
                "shape.derived_key.1",
                "partition_key.1"
            ],
            "{issues:?}"
        );
        assert!(
            issues[6].message.contains("acct, payload, event_type"),
            "{issues:?}"
        );
    }
}
