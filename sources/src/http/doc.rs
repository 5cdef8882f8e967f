//! The parsed events an `http_source` reads its shape from ([`Doc`]): `serde_json::Value`
//! where a JSON Schema or versioned contracts validate them (the validators take a `Value`),
//! and otherwise [`Json`], a tree that borrows its strings from the request body and keeps an
//! object's members in a sorted `Vec` instead of a `BTreeMap` of owned keys.
//!
//! Why by hand: building and dropping the `Value` tree (a `String` per key and string, a B-tree
//! node per object) was the largest part of ingest's JSON cost in a profile of HTTP → dedup →
//! store. No well-kept crate offers a borrowed tree that prints exactly as `Value` does (same
//! number formatting, members in name order, the last of a repeated name): the envelopes must
//! stay byte for byte what they were.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value};

/// What the shape reads of a parsed event.
pub trait Doc: Serialize + Sized {
    /// The members of an object, in name order.
    type Members<'a>: Iterator<Item = (&'a str, &'a Self)>
    where
        Self: 'a;

    /// An object's member `key`.
    fn member(&self, key: &str) -> Option<&Self>;
    /// An array's element `i`.
    fn element(&self, i: usize) -> Option<&Self>;
    /// An object's members in name order (`None`: not an object).
    fn members(&self) -> Option<Self::Members<'_>>;
    /// The string, if this is one.
    fn as_str(&self) -> Option<&str>;
    /// The text of a number or a boolean (`None` for anything else).
    fn scalar_text(&self) -> Option<String>;
    /// `null`?
    fn is_null(&self) -> bool;
    /// "an object", "a string", … (for error messages).
    fn kind(&self) -> &'static str;
    /// The same value as a `serde_json::Value`, when it is one (what validators need).
    fn as_value(&self) -> Option<&Value>;
    /// A request body's events: an array's elements, an object alone; anything else is given
    /// back.
    fn into_events(self) -> Result<Vec<Self>, Self>;

    /// Whether this is an object.
    fn is_object(&self) -> bool {
        self.members().is_some()
    }
}

type ValueMembers<'a> =
    std::iter::Map<serde_json::map::Iter<'a>, fn((&'a String, &'a Value)) -> (&'a str, &'a Value)>;

fn value_member<'a>((k, v): (&'a String, &'a Value)) -> (&'a str, &'a Value) {
    (k.as_str(), v)
}

impl Doc for Value {
    type Members<'a> = ValueMembers<'a>;

    fn member(&self, key: &str) -> Option<&Self> {
        self.as_object()?.get(key)
    }
    fn element(&self, i: usize) -> Option<&Self> {
        self.as_array()?.get(i)
    }
    fn members(&self) -> Option<ValueMembers<'_>> {
        Some(self.as_object()?.iter().map(value_member as fn(_) -> _))
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn scalar_text(&self) -> Option<String> {
        matches!(self, Value::Number(_) | Value::Bool(_)).then(|| self.to_string())
    }
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
    fn as_value(&self) -> Option<&Value> {
        Some(self)
    }
    fn into_events(self) -> Result<Vec<Self>, Self> {
        match self {
            Value::Array(items) => Ok(items),
            obj @ Value::Object(_) => Ok(vec![obj]),
            other => Err(other),
        }
    }
}

/// A JSON value borrowing its strings from the text it was parsed from (a string with escapes
/// is owned). Objects keep their members sorted by name, a repeated name's last value only —
/// what `serde_json::Value` keeps — so that both print the same JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as `serde_json` holds it.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object's members, sorted by name, names unique.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// Iterator over a [`Json`] object's members.
pub type JsonMembers<'a, 'b> = std::iter::Map<
    std::slice::Iter<'b, (Cow<'a, str>, Json<'a>)>,
    fn(&'b (Cow<'a, str>, Json<'a>)) -> (&'b str, &'b Json<'a>),
>;

fn json_member<'a, 'b>((k, v): &'b (Cow<'a, str>, Json<'a>)) -> (&'b str, &'b Json<'a>) {
    (k.as_ref(), v)
}

impl<'a> Doc for Json<'a> {
    type Members<'b>
        = JsonMembers<'a, 'b>
    where
        Self: 'b;

    fn member(&self, key: &str) -> Option<&Self> {
        match self {
            Json::Object(m) => m
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .map(|i| &m[i].1),
            _ => None,
        }
    }
    fn element(&self, i: usize) -> Option<&Self> {
        match self {
            Json::Array(a) => a.get(i),
            _ => None,
        }
    }
    fn members(&self) -> Option<JsonMembers<'a, '_>> {
        match self {
            Json::Object(m) => Some(m.iter().map(json_member as fn(_) -> _)),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
    fn scalar_text(&self) -> Option<String> {
        match self {
            Json::Number(n) => Some(n.to_string()),
            Json::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
    fn as_value(&self) -> Option<&Value> {
        None
    }
    fn into_events(self) -> Result<Vec<Self>, Self> {
        match self {
            Json::Array(items) => Ok(items),
            obj @ Json::Object(_) => Ok(vec![obj]),
            other => Err(other),
        }
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Json::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// A string that borrows from the input when it can (serde's own `Cow<str>` always copies).
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                // As `serde_json::Value`: a non-finite float (not valid JSON input) is null.
                Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Json::String(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Json::String(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Json::String(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
                while let Some((Str(k), v)) = map.next_entry::<Str<'de>, Json<'de>>()? {
                    members.push((k, v));
                }
                // Name order; of a repeated name the last value (the stable sort keeps the
                // repeats in input order).
                members.sort_by(|a, b| a.0.cmp(&b.0));
                let mut out: Vec<(Cow<'de, str>, Json<'de>)> = Vec::with_capacity(members.len());
                for m in members {
                    match out.last_mut() {
                        Some(last) if last.0 == m.0 => *last = m,
                        _ => out.push(m),
                    }
                }
                Ok(Json::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn both(text: &str) -> (Value, Json<'_>) {
        (
            serde_json::from_str(text).expect("valid for Value"),
            serde_json::from_str(text).expect("valid for Json"),
        )
    }

    #[test]
    fn prints_as_value_does_and_borrows_plain_strings() {
        let text = r#"{"b":1,"a":[1.5,-2,1e3,true,null,"x\"y"],"c":{"z":"é","y":{}},"b":"last","a0":18446744073709551615}"#;
        let (v, j) = both(text);
        assert_eq!(
            serde_json::to_string(&j).ok(),
            serde_json::to_string(&v).ok()
        );
        assert_eq!(j.member("b").and_then(Doc::as_str), Some("last"));
        assert!(matches!(
            j.member("c").and_then(|c| c.member("z")),
            Some(Json::String(Cow::Borrowed("é")))
        ));
        let names: Vec<&str> = j.members().into_iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "a0", "b", "c"]);
        assert_eq!(
            j.member("a")
                .and_then(|a| a.element(2))
                .and_then(Doc::scalar_text),
            v["a"][2].scalar_text()
        );
        assert_eq!(j.kind(), "an object");
        assert!(j.member("nope").is_none() && j.element(0).is_none());
    }

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            "[a-c\"\\\\é ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-c]{0,2}", inner), 0..5).prop_map(|m| format!(
                    "{{{}}}",
                    m.iter()
                        .map(|(k, v)| format!(
                            "{}:{v}",
                            serde_json::to_string(k).unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_prints_the_same_as_through_value(text in json_text()) {
            let (v, j) = both(&text);
            prop_assert_eq!(serde_json::to_string(&j).ok(), serde_json::to_string(&v).ok());
        }
    }
}
