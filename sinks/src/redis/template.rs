//! Templates for Redis keys and values: literal text with `{/json/pointer}` fields, and
//! `{day(/pointer)}` / `{hour(/pointer)}` for an RFC 3339 time as `2026-11-24` /
//! `2026-11-24T13` (UTC). `{{` and `}}` are literal braces.
//!
//! ```text
//! leaderboard:{/event_type}:{day(/event_ts)}   →   leaderboard:purchase:2026-11-24
//! ```
//!
//! Parsed once at config time (every mistake reported then), rendered per record; a field that
//! is missing, null, empty, an object or an array makes the record poison (→ DLQ), never an
//! empty key.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Field(String),
    Day(String),
    Hour(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

fn pointer(p: &str, whole: &str) -> Result<String, String> {
    if p.starts_with('/') && p.len() > 1 {
        Ok(p.to_string())
    } else {
        Err(format!(
            "{{{whole}}}: expected a JSON pointer such as /user_id, day(/event_ts) or hour(/event_ts)"
        ))
    }
}

impl Template {
    /// Parses `text`; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' in {text:?} (write }}}} for a brace)"
                    ))
                }
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => return Err(format!("unclosed '{{' in {text:?}")),
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    let part = if let Some(p) =
                        inner.strip_prefix("day(").and_then(|r| r.strip_suffix(')'))
                    {
                        Part::Day(pointer(p, &inner)?)
                    } else if let Some(p) = inner
                        .strip_prefix("hour(")
                        .and_then(|r| r.strip_suffix(')'))
                    {
                        Part::Hour(pointer(p, &inner)?)
                    } else {
                        Part::Field(pointer(&inner, &inner)?)
                    };
                    parts.push(part);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if parts.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self { parts })
    }

    /// A template that is one field, `/pointer` written without braces.
    pub fn parse_value(text: &str) -> Result<Self, String> {
        if text.starts_with('/') && !text.contains('{') {
            Ok(Self {
                parts: vec![Part::Field(text.to_string())],
            })
        } else {
            Self::parse(text)
        }
    }

    /// Renders the template for one record.
    pub fn render(&self, record: &Value) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Field(ptr) => out.push_str(&scalar(record, ptr)?),
                Part::Day(ptr) | Part::Hour(ptr) => {
                    let raw = scalar(record, ptr)?;
                    let t = DateTime::parse_from_rfc3339(&raw)
                        .map_err(|e| format!("{ptr}: {raw:?} is not an RFC 3339 time ({e})"))?
                        .with_timezone(&Utc);
                    let s = t.to_rfc3339_opts(SecondsFormat::Secs, true);
                    let n = if matches!(p, Part::Day(_)) { 10 } else { 13 };
                    out.push_str(&s[..n]);
                }
            }
        }
        Ok(out)
    }

    /// True when the template has no field (the same text for every record).
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }
}

/// The value at `ptr` as text: a non-empty string, a number or a boolean.
fn scalar(record: &Value, ptr: &str) -> Result<String, String> {
    match record.pointer(ptr) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::String(_)) => Err(format!("{ptr} is an empty string")),
        Some(Value::Null) | None => Err(format!("{ptr} is missing")),
        Some(other) => Err(format!(
            "{ptr} is {}, not a string or a number",
            if other.is_object() {
                "an object"
            } else {
                "an array"
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_days_hours_and_literal_braces() {
        let t = Template::parse("lb:{/event_type}:{day(/event_ts)}:{hour(/event_ts)}:{{x}}")
            .expect("valid");
        let v = json!({"event_type": "purchase", "event_ts": "2026-11-24T23:30:00+02:00"});
        assert_eq!(
            t.render(&v).expect("renders"),
            "lb:purchase:2026-11-24:2026-11-24T21:{x}"
        );
        assert_eq!(
            Template::parse("{/n}")
                .expect("valid")
                .render(&json!({"n": 5})),
            Ok("5".into())
        );
        assert!(Template::parse("total").expect("valid").is_constant());
        assert_eq!(
            Template::parse_value("/payload/score")
                .expect("valid")
                .render(&json!({"payload": {"score": 2.5}})),
            Ok("2.5".into())
        );
    }

    #[test]
    fn mistakes_are_found_at_parse_time() {
        for (bad, why) in [
            ("lb:{event_type}", "expected a JSON pointer"),
            ("lb:{/a", "unclosed"),
            ("lb:}", "unmatched"),
            ("{week(/ts)}", "expected a JSON pointer"),
            ("", "must not be empty"),
            ("{/}", "expected a JSON pointer"),
        ] {
            let e = Template::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn records_without_the_field_are_refused_not_given_an_empty_key() {
        let t = Template::parse("u:{/user_id}").expect("valid");
        for (v, why) in [
            (json!({}), "missing"),
            (json!({"user_id": null}), "missing"),
            (json!({"user_id": ""}), "empty"),
            (json!({"user_id": {"a": 1}}), "an object"),
            (json!({"user_id": [1]}), "an array"),
        ] {
            let e = t.render(&v).expect_err("refused");
            assert!(e.contains(why), "{v}: {e}");
        }
        let d = Template::parse("{day(/ts)}").expect("valid");
        assert!(d
            .render(&json!({"ts": "yesterday"}))
            .expect_err("refused")
            .contains("not an RFC 3339 time"));
    }
}
