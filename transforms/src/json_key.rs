//! Finding one field of a JSON value without building the whole document (used by
//! `redis_dedup` for the idempotency key and by `enrich` for the lookup key).
//!
//! The dedup transform only needs one field of each record. Parsing every record into a
//! `serde_json::Value` (a map of owned strings per object) cost more CPU than the rest of the
//! transform together; [`find_key`] walks the document with serde's visitor API instead,
//! skipping everything off the path with `IgnoredAny`. The whole document is still parsed, so
//! a record that is not valid JSON is still rejected.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A parsed key path: a top-level field name, or the segments of a JSON pointer (`/a/b/0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath(Vec<String>);

impl KeyPath {
    /// `field` is a top-level field name, or a JSON pointer when it starts with `/` (RFC 6901
    /// escapes `~1` and `~0` understood).
    pub fn parse(field: &str) -> Self {
        match field.strip_prefix('/') {
            Some(p) => KeyPath(
                p.split('/')
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect(),
            ),
            None => KeyPath(vec![field.to_string()]),
        }
    }
}

/// Why no key came out of a record.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The value is not JSON.
    InvalidJson(String),
    /// Nothing usable at the path (absent, empty string, or not a string or number).
    Missing,
}

/// The key at `path` in `json` (a non-empty string, or a number in its JSON spelling).
pub fn find_key(json: &[u8], path: &KeyPath) -> Result<String, KeyError> {
    find_key_in(json, path).map(Cow::into_owned)
}

/// [`find_key`] without the copy: the key is borrowed from `json` unless it had escapes.
pub fn find_key_in<'a>(json: &'a [u8], path: &KeyPath) -> Result<Cow<'a, str>, KeyError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let found = Seek(&path.0)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| KeyError::InvalidJson(e.to_string()))?;
    found.ok_or(KeyError::Missing)
}

/// An object member's name, borrowed from the input unless it has escapes. (serde's own
/// `Cow<str>` always allocates: its `Deserialize` goes through `String`, which cost one
/// allocation per member of every record.)
struct MapKey<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for MapKey<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MapKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MapKey(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MapKey(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MapKey(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Follows the remaining path segments; `None` when the path leads nowhere usable. A string
/// without escapes is borrowed from the input.
struct Seek<'p>(&'p [String]);

/// What [`probe`] learnt about a record in one pass. Strings are borrowed from the record
/// unless they had escapes, so a probe of the common record allocates nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Probe<'a> {
    /// The value at the key path (as [`find_key`] gives it), if usable.
    pub key: Option<Cow<'a, str>>,
    /// The document is a JSON object.
    pub is_object: bool,
    /// Number of top-level members (objects only).
    pub members: usize,
    /// The top-level member `field` exists.
    pub has_field: bool,
    /// The top-level `idempotency_key`, when a non-empty string.
    pub idempotency_key: Option<Cow<'a, str>>,
}

/// One pass over `json`: the key at `path`, whether the top-level member `field` exists, the
/// top-level `idempotency_key`. Every byte is still parsed (invalid JSON is an error).
pub fn probe<'a>(json: &'a [u8], path: &KeyPath, field: &str) -> Result<Probe<'a>, KeyError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let p = TopLevel {
        path: &path.0,
        field,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| KeyError::InvalidJson(e.to_string()))?;
    Ok(p)
}

struct TopLevel<'p> {
    path: &'p [String],
    field: &'p str,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Probe<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Probe<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut p = Probe {
            is_object: true,
            ..Probe::default()
        };
        while let Some(k) = map.next_key::<MapKey<'de>>()? {
            p.members += 1;
            if k.0 == self.field {
                p.has_field = true;
            }
            match self.path.split_first() {
                Some((head, rest)) if p.key.is_none() && k.0 == head.as_str() => {
                    let found = map.next_value_seed(Seek(rest))?;
                    if k.0 == "idempotency_key" && rest.is_empty() {
                        p.idempotency_key.clone_from(&found);
                    }
                    p.key = found;
                }
                _ if k.0 == "idempotency_key" => {
                    p.idempotency_key = map.next_value_seed(Seek(&[]))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Probe::default())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Probe::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Probe::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Probe::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Probe::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Probe::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Probe::default())
    }
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<MapKey<'de>>()? {
            match self.0.split_first() {
                Some((head, rest)) if found.is_none() && k.0 == head.as_str() => {
                    found = map.next_value_seed(Seek(rest))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = self.0.first().and_then(|h| h.parse::<usize>().ok());
        let mut found = None;
        let mut i = 0usize;
        loop {
            let more = if Some(i) == index && !self.0.is_empty() {
                match seq.next_element_seed(Seek(&self.0[1..]))? {
                    Some(v) => {
                        found = v;
                        true
                    }
                    None => false,
                }
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(found);
            }
            i += 1;
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((self.0.is_empty() && !v.is_empty()).then(|| Cow::Owned(v.to_string())))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok((self.0.is_empty() && !v.is_empty()).then_some(Cow::Borrowed(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok((self.0.is_empty() && !v.is_empty()).then_some(Cow::Owned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // The same spelling serde_json::Number gives a float.
        Ok(self
            .0
            .is_empty()
            .then(|| serde_json::Number::from_f64(v).map(|n| Cow::Owned(n.to_string())))
            .flatten())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn key(v: &str, field: &str) -> Result<String, KeyError> {
        find_key(v.as_bytes(), &KeyPath::parse(field))
    }

    #[test]
    fn names_pointers_and_kinds() {
        let v = r#"{"idempotency_key":"a","n":5,"f":1.5,"nested":{"k":"b","arr":[1,{"x":"y"}]},"empty":"","t":true,"z":null,"a/b":"slash"}"#;
        assert_eq!(key(v, "idempotency_key"), Ok("a".into()));
        assert_eq!(key(v, "n"), Ok("5".into()));
        assert_eq!(key(v, "f"), Ok("1.5".into()));
        assert_eq!(key(v, "/nested/k"), Ok("b".into()));
        assert_eq!(key(v, "/nested/arr/1/x"), Ok("y".into()));
        assert_eq!(key(v, "/nested/arr/0"), Ok("1".into()));
        assert_eq!(key(v, "/nested/arr/7"), Err(KeyError::Missing));
        assert_eq!(key(v, "/a~1b"), Ok("slash".into()));
        assert_eq!(key(v, "empty"), Err(KeyError::Missing));
        assert_eq!(key(v, "t"), Err(KeyError::Missing));
        assert_eq!(key(v, "z"), Err(KeyError::Missing));
        assert_eq!(key(v, "nested"), Err(KeyError::Missing));
        assert_eq!(key(v, "missing"), Err(KeyError::Missing));
        assert_eq!(key(r#"["a"]"#, "k"), Err(KeyError::Missing));
        assert_eq!(key(r#""top""#, "k"), Err(KeyError::Missing));
    }

    #[test]
    fn escaped_strings_and_invalid_json() {
        assert_eq!(key(r#"{"k":"a\"b\u00e9"}"#, "k"), Ok("a\"bé".into()));
        assert!(matches!(
            key(r#"{"k":"a""#, "k"),
            Err(KeyError::InvalidJson(_))
        ));
        assert!(matches!(
            key(r#"{"k":"a"} x"#, "k"),
            Err(KeyError::InvalidJson(_))
        ));
        assert!(matches!(key("", "k"), Err(KeyError::InvalidJson(_))));
        // Invalid after the key was found: still invalid.
        assert!(matches!(
            key(r#"{"k":"a","x":}"#, "k"),
            Err(KeyError::InvalidJson(_))
        ));
    }

    #[test]
    fn keys_without_escapes_are_borrowed() {
        let path = KeyPath::parse("/a/k");
        let plain = br#"{"a":{"k":"abc"}}"#;
        assert!(matches!(
            find_key_in(plain, &path),
            Ok(Cow::Borrowed("abc"))
        ));
        let escaped = br#"{"a":{"k":"a\nc"}}"#;
        assert!(matches!(find_key_in(escaped, &path), Ok(Cow::Owned(k)) if k == "a\nc"));
        assert!(matches!(
            find_key_in(br#"{"a":{"k":7}}"#, &path).as_deref(),
            Ok("7")
        ));
    }

    fn via_value(v: &Value, field: &str) -> Option<String> {
        let v = if field.starts_with('/') {
            v.pointer(field)
        } else {
            v.get(field)
        };
        match v? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    #[test]
    fn probe_finds_key_field_and_idempotency_key_in_one_pass() {
        let v = br#"{"idempotency_key":"ik","user_id":"u1","context":{"a":1},"n":[1,2]}"#;
        let p = probe(v, &KeyPath::parse("/user_id"), "context").expect("probe");
        assert_eq!(p.key.as_deref(), Some("u1"));
        assert!(p.is_object && p.has_field);
        assert_eq!(p.members, 4);
        assert_eq!(p.idempotency_key.as_deref(), Some("ik"));
        let p = probe(v, &KeyPath::parse("idempotency_key"), "ctx").expect("probe");
        assert_eq!(p.key.as_deref(), Some("ik"));
        assert_eq!(p.idempotency_key.as_deref(), Some("ik"));
        assert!(!p.has_field);
        let p = probe(b"{}", &KeyPath::parse("/a"), "c").expect("probe");
        assert!(p.is_object && p.members == 0 && p.key.is_none());
        assert!(
            !probe(b"[1]", &KeyPath::parse("/a"), "c")
                .expect("probe")
                .is_object
        );
        assert!(probe(br#"{"a":1"#, &KeyPath::parse("/a"), "c").is_err());
    }

    #[test]
    fn probe_borrows_plain_strings_and_owns_escaped_ones() {
        let v = br#"{"idempotency_key":"ik","u\u0073er_id":"a\"b","n":7}"#;
        let p = probe(v, &KeyPath::parse("user_id"), "c").expect("probe");
        assert!(matches!(p.idempotency_key, Some(Cow::Borrowed("ik"))));
        assert_eq!(p.key.as_deref(), Some("a\"b")); // an escaped member name matches too
        assert!(matches!(p.key, Some(Cow::Owned(_))));
        let p = probe(v, &KeyPath::parse("n"), "c").expect("probe");
        assert_eq!(p.key.as_deref(), Some("7"));
    }

    proptest! {
        /// Agrees with building the whole `Value` and looking the key up.
        #[test]
        fn agrees_with_value_lookup(k in "[a-z]{0,6}", n in any::<i64>(), inner in "[a-z]{1,3}", pick in 0usize..5) {
            let v = json!({"a": k, "b": n, "c": {"d": [k, n], inner.clone(): k}, "e": null});
            let text = serde_json::to_string(&v).expect("json");
            let field = ["a", "b", "/c/d/0", "/c/d/1", &format!("/c/{inner}")][pick].to_string();
            let got = find_key(text.as_bytes(), &KeyPath::parse(&field)).ok();
            prop_assert_eq!(got, via_value(&v, &field));
        }
    }
}
