//! Versioned event contracts of `http_source` (seed 001): one JSON Schema per event type and
//! version, in a folder `<dir>/<event_type>/v<N>.json`, each compiled once at start-up.
//!
//! Each event's `payload` (its `payload` object with the event's other top-level fields merged
//! in, as the envelope stores it) is validated against the contract of its `event_type` and
//! `schema_version`; the version comes from the event (`"schema_version": 2`) or, when absent,
//! from `default_version` (default: the type's latest). The envelope carries the version
//! used. An unknown event type is refused (`unknown_event_types: reject`, default) or passed
//! without a contract (`accept`); an unknown version of a known type is always refused. Errors
//! are per event, with the JSON pointer (`/payload/amount`, `/schema_version`,
//! `/event_type`).
//!
//! `connectd contracts check DIR` checks that each version accepts what the one before did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::event::FieldError;

/// What happens to an event whose type has no contract.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownEventTypes {
    /// Refused (400 naming the type and the known ones; default).
    #[default]
    Reject,
    /// Accepted without a contract (its `schema_version` as given, or 1).
    Accept,
}

/// Settings of versioned contracts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractsConfig {
    /// Folder of contracts: `<dir>/<event_type>/v<N>.json` (JSON Schemas of the payload).
    pub dir: PathBuf,
    /// Version of events that carry no `schema_version` (default: the latest of their type).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub default_version: Option<u32>,
    /// Events of a type with no contract: `reject` (default) or `accept`.
    #[serde(default)]
    pub unknown_event_types: UnknownEventTypes,
}

/// Why a contracts folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path} is not JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A file is not a valid JSON Schema.
    #[error("{path} is not a valid JSON Schema: {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A file name is not `v<N>.json`.
    #[error("{0}: contract files are named v<N>.json (v1.json, v2.json, …)")]
    Name(PathBuf),
}

/// One event type of a contracts folder: its name and its `(version, file)`s, ascending.
pub type EventVersions = (String, Vec<(u32, PathBuf)>);

fn read_dir(p: &Path) -> Result<Vec<std::fs::DirEntry>, ContractError> {
    let err = |source| ContractError::Read {
        path: p.into(),
        source,
    };
    std::fs::read_dir(p)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)
}

/// Every event type of a contracts folder, by name, versions in numeric order.
pub fn folder(dir: &Path) -> Result<Vec<EventVersions>, ContractError> {
    let mut out = Vec::new();
    for entry in read_dir(dir)? {
        if !entry.path().is_dir() {
            continue;
        }
        let mut versions = Vec::new();
        for f in read_dir(&entry.path())? {
            let name = f.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix('v')
                .and_then(|r| r.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| ContractError::Name(f.path()))?;
            versions.push((n, f.path()));
        }
        versions.sort();
        out.push((entry.file_name().to_string_lossy().into_owned(), versions));
    }
    out.sort();
    Ok(out)
}

/// Reads one contract file as JSON.
pub fn load(path: &Path) -> Result<Value, ContractError> {
    let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ContractError::Json {
        path: path.into(),
        source,
    })
}

/// The compiled contracts of one source.
pub struct Contracts {
    types: BTreeMap<String, BTreeMap<u32, jsonschema::Validator>>,
    default_version: Option<u32>,
    unknown: UnknownEventTypes,
}

impl Contracts {
    /// Reads and compiles every contract of `c.dir`.
    pub fn load(c: &ContractsConfig) -> Result<Self, ContractError> {
        let mut types = BTreeMap::new();
        for (event_type, versions) in folder(&c.dir)? {
            let mut compiled = BTreeMap::new();
            for (n, path) in versions {
                let schema = load(&path)?;
                let v = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .map_err(|e| ContractError::Schema {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                compiled.insert(n, v);
            }
            types.insert(event_type, compiled);
        }
        Ok(Self {
            types,
            default_version: c.default_version,
            unknown: c.unknown_event_types,
        })
    }

    /// Event types with contracts.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// No contract at all.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Checks the event at `index` (the raw event and its envelope's payload); returns the
    /// version to put in the envelope, or the errors.
    pub fn check(
        &self,
        index: usize,
        event: &Value,
        event_type: &str,
        payload: &Value,
    ) -> Result<u32, Vec<FieldError>> {
        let err = |pointer: &str, message: String| FieldError {
            index,
            pointer: pointer.to_string(),
            message,
        };
        let given = match event.get("schema_version") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|n| *n >= 1 && *n <= u64::from(u32::MAX)) {
                Some(n) => Some(n as u32),
                None => {
                    return Err(vec![err(
                        "/schema_version",
                        "must be a positive integer".into(),
                    )])
                }
            },
        };
        let Some(versions) = self.types.get(event_type) else {
            return match self.unknown {
                UnknownEventTypes::Accept => Ok(given.unwrap_or(1)),
                UnknownEventTypes::Reject => Err(vec![err(
                    "/event_type",
                    format!(
                        "unknown event type {event_type:?}: no contract (known: {})",
                        self.types.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )]),
            };
        };
        let latest = versions.keys().next_back().copied().unwrap_or(1);
        let version = given.or(self.default_version).unwrap_or(latest);
        let Some(validator) = versions.get(&version) else {
            return Err(vec![err(
                "/schema_version",
                format!(
                    "event type {event_type:?} has no contract version {version} (known: {})",
                    versions
                        .keys()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )]);
        };
        let errors: Vec<FieldError> = validator
            .iter_errors(payload)
            .map(|e| {
                err(
                    &format!("/payload{}", e.instance_path().as_str()),
                    format!("{event_type} v{version}: {e}"),
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(version)
        } else {
            Err(errors)
        }
    }
}

/// Issues of a contracts configuration that can be seen without reading files (pure).
pub fn validate(c: &ContractsConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if c.dir.as_os_str().is_empty() {
        issues.push(ConfigIssue::new("contracts.dir", "must name a folder"));
    }
    if c.default_version == Some(0) {
        issues.push(ConfigIssue::new(
            "contracts.default_version",
            "versions start at 1",
        ));
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contracts(
        unknown: UnknownEventTypes,
        default_version: Option<u32>,
    ) -> (tempfile::TempDir, Contracts) {
        let dir = tempfile::tempdir().expect("tmp");
        let orders = dir.path().join("order_placed");
        std::fs::create_dir_all(&orders).expect("mkdir");
        std::fs::write(
            orders.join("v1.json"),
            json!({"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}, "required": ["order_id", "amount"]}).to_string(),
        )
        .expect("v1");
        std::fs::write(
            orders.join("v2.json"),
            json!({"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}, "currency": {"type": "string", "minLength": 3, "maxLength": 3}}, "required": ["order_id", "amount"]}).to_string(),
        )
        .expect("v2");
        let c = Contracts::load(&ContractsConfig {
            dir: dir.path().into(),
            default_version,
            unknown_event_types: unknown,
        })
        .expect("load");
        (dir, c)
    }

    #[test]
    fn the_version_comes_from_the_event_or_the_default_or_the_latest() {
        let (_d, c) = contracts(UnknownEventTypes::Reject, None);
        let p = json!({"order_id": "o1", "amount": 3.5, "currency": "EUR"});
        assert_eq!(c.check(0, &json!({}), "order_placed", &p), Ok(2));
        assert_eq!(
            c.check(0, &json!({"schema_version": 1}), "order_placed", &p),
            Ok(1)
        );
        let (_d, c) = contracts(UnknownEventTypes::Reject, Some(1));
        assert_eq!(c.check(0, &json!({}), "order_placed", &p), Ok(1));
    }

    #[test]
    fn payload_errors_name_their_pointer_type_and_version() {
        let (_d, c) = contracts(UnknownEventTypes::Reject, None);
        let errs = c
            .check(
                3,
                &json!({"schema_version": 2}),
                "order_placed",
                &json!({"amount": "x", "currency": "EURO"}),
            )
            .expect_err("invalid");
        let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert!(pointers.contains(&"/payload"), "{errs:?}"); // order_id missing
        assert!(pointers.contains(&"/payload/amount"), "{errs:?}");
        assert!(pointers.contains(&"/payload/currency"), "{errs:?}");
        assert!(errs
            .iter()
            .all(|e| e.index == 3 && e.message.starts_with("order_placed v2: ")));
    }

    #[test]
    fn unknown_versions_are_refused_and_unknown_types_as_configured() {
        let (_d, c) = contracts(UnknownEventTypes::Reject, None);
        let p = json!({"order_id": "o1", "amount": 1});
        let e = c
            .check(0, &json!({"schema_version": 7}), "order_placed", &p)
            .expect_err("v7");
        assert_eq!(e[0].pointer, "/schema_version");
        assert!(
            e[0].message.contains("no contract version 7 (known: 1, 2)"),
            "{}",
            e[0].message
        );
        let e = c
            .check(0, &json!({"schema_version": "2"}), "order_placed", &p)
            .expect_err("text");
        assert_eq!(e[0].pointer, "/schema_version");
        let e = c
            .check(0, &json!({}), "refund", &p)
            .expect_err("unknown type");
        assert_eq!(e[0].pointer, "/event_type");
        assert!(
            e[0].message.contains("known: order_placed"),
            "{}",
            e[0].message
        );
        let (_d, c) = contracts(UnknownEventTypes::Accept, None);
        assert_eq!(c.check(0, &json!({}), "refund", &p), Ok(1));
        assert_eq!(
            c.check(0, &json!({"schema_version": 4}), "refund", &p),
            Ok(4)
        );
    }

    #[test]
    fn a_bad_file_name_or_schema_is_an_error_at_start() {
        let (d, _) = contracts(UnknownEventTypes::Reject, None);
        std::fs::write(d.path().join("order_placed").join("latest.json"), "{}").expect("write");
        assert!(matches!(folder(d.path()), Err(ContractError::Name(_))));
        std::fs::remove_file(d.path().join("order_placed").join("latest.json")).expect("rm");
        std::fs::write(
            d.path().join("order_placed").join("v3.json"),
            r#"{"type": 12}"#,
        )
        .expect("write");
        let r = Contracts::load(&ContractsConfig {
            dir: d.path().into(),
            default_version: None,
            unknown_event_types: UnknownEventTypes::Reject,
        });
        assert!(matches!(r, Err(ContractError::Schema { .. })));
    }
}
