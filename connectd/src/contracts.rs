//! `connectd contracts check`: the version gate of event contracts (seed 001's deprecation
//! policy; Confluent Schema Registry's BACKWARD mode is the anchor).
//!
//! A contract is a JSON Schema of one event type's payload at one version. A new version must
//! accept every event the previous version accepted, so that producers can move at their own
//! pace. Allowed: adding an **optional** field, widening a type (`integer` → `number`, adding
//! `null`), adding enum values, dropping `required`. Violations, each reported with its JSON
//! pointer:
//!
//! | kind | example |
//! | --- | --- |
//! | `removed` | `/amount` was in v1, is not in v2 (a rename shows as removed + a hint) |
//! | `retyped` | `/amount` was `number`, is `string` (or `number` → `integer`: narrower) |
//! | `made_required` | `/coupon` was optional, is required |
//! | `added_required` | `/currency` is new and required: v1 events do not have it |
//! | `enum_narrowed` | `/tier` no longer allows `"gold"` |
//! | `closed` | `additionalProperties: false` where v1 allowed other fields |
//!
//! Checked keywords: `type`, `properties`, `required`, `items`, `enum`, `const`,
//! `additionalProperties`. Others (`pattern`, `format`, bounds…) are not compared.
//!
//! Folder layout for `connectd contracts check DIR`: `DIR/<event_type>/v<N>.json`; every
//! version is checked against the one before it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// One incompatibility between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer of the field in the event (`""` for the whole event).
    pub pointer: String,
    /// `removed`, `retyped`, `made_required`, `added_required`, `enum_narrowed`, `closed`.
    pub kind: &'static str,
    /// What changed, in words.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "(event)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {} — {}", self.kind, self.message)
    }
}

/// The JSON types a schema admits (`None`: any).
fn types(s: &Value) -> Option<BTreeSet<String>> {
    match s.get("type") {
        Some(Value::String(t)) => Some([t.clone()].into()),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        ),
        _ => None,
    }
}

fn admits(new: &BTreeSet<String>, old_type: &str) -> bool {
    new.contains(old_type) || (old_type == "integer" && new.contains("number"))
}

fn required(s: &Value) -> BTreeSet<String> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn allowed_values(s: &Value) -> Option<Vec<Value>> {
    if let Some(c) = s.get("const") {
        return Some(vec![c.clone()]);
    }
    s.get("enum").and_then(Value::as_array).cloned()
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Every violation of `new` against `old` (empty: compatible).
pub fn check(old: &Value, new: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

fn walk(old: &Value, new: &Value, at: &str, out: &mut Vec<Violation>) {
    let v = |kind, message: String| Violation {
        pointer: at.to_string(),
        kind,
        message,
    };
    if let (Some(o), Some(n)) = (types(old), types(new)) {
        let lost: Vec<&String> = o.iter().filter(|t| !admits(&n, t)).collect();
        if !lost.is_empty() {
            out.push(v(
                "retyped",
                format!(
                    "was {}, is {}",
                    o.iter().cloned().collect::<Vec<_>>().join(" | "),
                    n.iter().cloned().collect::<Vec<_>>().join(" | ")
                ),
            ));
            return;
        }
    } else if types(old).is_none() && types(new).is_some() {
        out.push(v(
            "retyped",
            format!(
                "admitted any type, is {}",
                types(new)
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        ));
        return;
    }
    if let Some(nv) = allowed_values(new) {
        match allowed_values(old) {
            Some(ov) => {
                for x in ov.iter().filter(|x| !nv.contains(x)) {
                    out.push(v("enum_narrowed", format!("no longer allows {x}")));
                }
            }
            None => out.push(v(
                "enum_narrowed",
                "any value was allowed, now only the listed ones".into(),
            )),
        }
    }
    let empty = serde_json::Map::new();
    let op = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let np = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let (oreq, nreq) = (required(old), required(new));
    let added: Vec<&String> = np.keys().filter(|k| !op.contains_key(*k)).collect();
    for (name, os) in op {
        let path = format!("{at}/{}", escape(name));
        match np.get(name) {
            Some(ns) => walk(os, ns, &path, out),
            None => {
                let hint = added
                    .iter()
                    .find(|a| types(&np[a.as_str()]) == types(os))
                    .map(|a| format!(" (renamed to {a:?}? a rename is a removal)"))
                    .unwrap_or_default();
                out.push(Violation {
                    pointer: path,
                    kind: "removed",
                    message: format!("{name:?} is gone{hint}"),
                });
            }
        }
    }
    for name in nreq.difference(&oreq) {
        let path = format!("{at}/{}", escape(name));
        if op.contains_key(name) {
            out.push(Violation {
                pointer: path,
                kind: "made_required",
                message: format!("{name:?} was optional, is required"),
            });
        } else {
            out.push(Violation {
                pointer: path,
                kind: "added_required",
                message: format!(
                    "{name:?} is new and required: events of the previous version do not have it"
                ),
            });
        }
    }
    let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
    if closed(new) && !closed(old) {
        out.push(v(
            "closed",
            "additionalProperties: false refuses fields the previous version allowed".into(),
        ));
    }
    if let (Some(oi), Some(ni)) = (old.get("items"), new.get("items")) {
        walk(oi, ni, &format!("{at}/*"), out);
    }
}

pub use connectd_sources::http::contracts::{folder, load, ContractError, EventVersions};

/// Runs `connectd contracts check` on two files or on a folder; returns the exit code
/// (0 compatible, 2 violations or unreadable input) and prints the report.
pub fn run_check(paths: &[PathBuf]) -> u8 {
    use crate::cli::{EXIT_OK, EXIT_USAGE};
    let pairs: Vec<(String, PathBuf, PathBuf)> = match paths {
        [dir] if dir.is_dir() => match folder(dir) {
            Ok(types) => types
                .into_iter()
                .flat_map(|(t, vs)| {
                    vs.windows(2)
                        .map(|w| {
                            (
                                format!("{t} v{} → v{}", w[0].0, w[1].0),
                                w[0].1.clone(),
                                w[1].1.clone(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        },
        [old, new] => vec![(
            format!("{} → {}", old.display(), new.display()),
            old.clone(),
            new.clone(),
        )],
        _ => {
            eprintln!(
                "error: give OLD.json NEW.json, or a contracts folder (<event_type>/v<N>.json)"
            );
            return EXIT_USAGE;
        }
    };
    let mut bad = 0usize;
    for (label, old, new) in &pairs {
        let (o, n) = match (load(old), load(new)) {
            (Ok(o), Ok(n)) => (o, n),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        };
        let violations = check(&o, &n);
        if violations.is_empty() {
            println!("{label}: compatible");
        } else {
            bad += violations.len();
            println!("{label}: {} violation(s)", violations.len());
            for v in violations {
                println!("  {v}");
            }
        }
    }
    if bad > 0 {
        EXIT_USAGE
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1() -> Value {
        json!({
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "amount": {"type": "number"},
                "quantity": {"type": "integer"},
                "coupon": {"type": "string"},
                "tier": {"enum": ["free", "pro", "gold"]},
                "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}}
            },
            "required": ["order_id", "amount"]
        })
    }

    fn kinds(new: Value) -> Vec<(String, &'static str)> {
        check(&v1(), &new)
            .into_iter()
            .map(|v| (v.pointer, v.kind))
            .collect()
    }

    fn edit(f: impl FnOnce(&mut Value)) -> Value {
        let mut s = v1();
        f(&mut s);
        s
    }

    #[test]
    fn allowed_changes_are_compatible() {
        let new = edit(|s| {
            s["properties"]["note"] = json!({"type": "string"});
            s["properties"]["quantity"] = json!({"type": "number"});
            s["properties"]["coupon"] = json!({"type": ["string", "null"]});
            s["properties"]["tier"] = json!({"enum": ["free", "pro", "gold", "team"]});
            s["required"] = json!(["order_id"]);
        });
        assert_eq!(kinds(new), vec![]);
        assert_eq!(kinds(v1()), vec![]);
    }

    #[test]
    fn a_removed_field_is_a_violation_and_a_rename_says_so() {
        let new = edit(|s| {
            let c = s["properties"]["coupon"].take();
            s["properties"]
                .as_object_mut()
                .expect("props")
                .remove("coupon");
            s["properties"]["promo_code"] = c;
        });
        let v = check(&v1(), &new);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].pointer.as_str(), v[0].kind), ("/coupon", "removed"));
        assert!(v[0].message.contains("promo_code"), "{}", v[0].message);
    }

    #[test]
    fn retyping_narrowing_and_requiring_are_violations() {
        let new = edit(|s| {
            s["properties"]["amount"] = json!({"type": "string"});
            s["properties"]["quantity"] = json!({"type": "boolean"});
            s["required"] = json!(["order_id", "amount", "coupon", "currency"]);
            s["properties"]["currency"] = json!({"type": "string"});
            s["properties"]["tier"] = json!({"enum": ["free", "pro"]});
            s["properties"]["lines"]["items"]["properties"]["sku"] = json!({"type": "integer"});
            s["additionalProperties"] = json!(false);
        });
        assert_eq!(
            kinds(new),
            vec![
                ("/amount".to_string(), "retyped"),
                ("/lines/*/sku".to_string(), "retyped"),
                ("/quantity".to_string(), "retyped"),
                ("/tier".to_string(), "enum_narrowed"),
                ("/coupon".to_string(), "made_required"),
                ("/currency".to_string(), "added_required"),
                ("".to_string(), "closed"),
            ]
        );
        // number -> integer narrows.
        let narrower = edit(|s| s["properties"]["amount"] = json!({"type": "integer"}));
        assert_eq!(kinds(narrower), vec![("/amount".to_string(), "retyped")]);
    }

    #[test]
    fn a_folder_is_checked_version_after_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let orders = dir.path().join("order_placed");
        std::fs::create_dir_all(&orders).expect("mkdir");
        std::fs::write(orders.join("v1.json"), v1().to_string()).expect("v1");
        let v2 = edit(|s| s["properties"]["note"] = json!({"type": "string"}));
        std::fs::write(orders.join("v2.json"), v2.to_string()).expect("v2");
        let mut v10 = v2.clone();
        v10["required"] = json!(["order_id", "amount", "note"]);
        std::fs::write(orders.join("v10.json"), v10.to_string()).expect("v10");
        let found = folder(dir.path()).expect("folder");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].1.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![1, 2, 10],
            "numeric order, not text order"
        );
        assert_eq!(
            run_check(&[dir.path().to_path_buf()]),
            crate::cli::EXIT_USAGE
        );
        std::fs::remove_file(orders.join("v10.json")).expect("rm");
        assert_eq!(run_check(&[dir.path().to_path_buf()]), crate::cli::EXIT_OK);
        std::fs::write(orders.join("latest.json"), "{}").expect("bad name");
        assert!(matches!(folder(dir.path()), Err(ContractError::Name(_))));
    }
}
