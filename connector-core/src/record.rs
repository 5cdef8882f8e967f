//! [`Record`], its [`Headers`] and [`Origin`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// Where a record was read from: its Kafka coordinates.
///
/// Sinks can use the origin as a natural idempotency key (`topic/partition/offset` identifies a
/// message uniquely), and the runtime uses it to commit offsets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Topic the record was consumed from.
    pub topic: Arc<str>,
    /// Partition within that topic.
    pub partition: i32,
    /// Offset within that partition.
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Ordered list of record headers (name → bytes). Names may repeat, as in Kafka.
///
/// ```
/// use connector_core::Headers;
/// let mut h = Headers::new();
/// h.insert("trace", "abc");
/// h.insert("trace", "def");
/// assert_eq!(h.get_str("trace"), Some("def")); // the last one wins for lookups
/// assert_eq!(h.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// Empty header list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header (keeps any earlier header of the same name).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every header called `name` by one with `value`.
    pub fn set(&mut self, name: &str, value: impl Into<Bytes>) {
        self.remove(name);
        self.0.push((name.to_string(), value.into()));
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// The value of the last header called `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The value of the last header called `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Iterates over `(name, value)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Approximate size in bytes (names plus values), used for batch byte limits.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

/// Header naming a record's idempotency key; see [`Record::idempotency_key`].
pub const IDEMPOTENCY_KEY_HEADER: &str = "connectd.idempotency_key";

/// One message flowing through a pipeline.
///
/// Connectors never see Kafka client types; the runtime converts to and from `Record`.
///
/// ```
/// use connector_core::Record;
/// let r = Record::new(r#"{"user_id":"u1"}"#).with_key("u1").with_header("source", "web");
/// assert_eq!(r.value_str(), Some(r#"{"user_id":"u1"}"#));
/// assert_eq!(r.headers.get_str("source"), Some("web"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Message key (partitioning key). `None` for keyless messages.
    pub key: Option<Bytes>,
    /// Message value. An empty value stands for a Kafka tombstone (null value).
    pub value: Bytes,
    /// Headers in order.
    pub headers: Headers,
    /// Timestamp in milliseconds since the Unix epoch, if known.
    pub timestamp_ms: Option<i64>,
    /// Kafka coordinates, for records read from a topic.
    pub origin: Option<Origin>,
}

impl Record {
    /// A record with only a value.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }

    /// Sets the origin coordinates.
    pub fn with_origin(mut self, topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        self.origin = Some(Origin {
            topic: topic.into(),
            partition,
            offset,
        });
        self
    }

    /// The value as UTF-8 text, if it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// Parses the value as JSON.
    pub fn value_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.value)
    }

    /// The record's idempotency key — what makes two copies of an event the same event —
    /// looked up in this order:
    ///
    /// 1. the header [`IDEMPOTENCY_KEY_HEADER`] (`connectd.idempotency_key`), when it is
    ///    non-empty UTF-8;
    /// 2. the top-level `idempotency_key` field of a JSON object value (a non-empty string),
    ///    as in the envelope `http_source` writes.
    ///
    /// `None` when neither is there (or the value is not JSON). Only the one field is decoded.
    ///
    /// ```
    /// use connector_core::Record;
    /// let r = Record::new(r#"{"idempotency_key":"k-1","payload":{"n":1}}"#);
    /// assert_eq!(r.idempotency_key().as_deref(), Some("k-1"));
    /// let r = r.with_header(connector_core::IDEMPOTENCY_KEY_HEADER, "from-header");
    /// assert_eq!(r.idempotency_key().as_deref(), Some("from-header"));
    /// assert_eq!(Record::new("not json").idempotency_key(), None);
    /// ```
    pub fn idempotency_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        if let Some(h) = self.headers.get_str(IDEMPOTENCY_KEY_HEADER) {
            if !h.is_empty() {
                return Some(std::borrow::Cow::Borrowed(h));
            }
        }
        #[derive(serde::Deserialize)]
        struct Key<'a> {
            #[serde(borrow, default)]
            idempotency_key: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_slice::<Key<'_>>(&self.value)
            .ok()?
            .idempotency_key
            .filter(|k| !k.is_empty())
    }

    /// Approximate size in bytes (key, value and headers), used for batch byte limits.
    pub fn byte_size(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len()) + self.value.len() + self.headers.byte_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_set_replaces_all_of_a_name() {
        let mut h = Headers::new();
        h.insert("a", "1");
        h.insert("b", "2");
        h.insert("a", "3");
        h.set("a", "4");
        assert_eq!(h.len(), 2);
        assert_eq!(h.get_str("a"), Some("4"));
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn byte_size_counts_key_value_and_headers() {
        let r = Record::new("12345").with_key("ab").with_header("h", "xyz");
        assert_eq!(r.byte_size(), 5 + 2 + 1 + 3);
    }

    #[test]
    fn origin_displays_as_coordinates() {
        let r = Record::new("x").with_origin("t", 3, 42);
        assert_eq!(r.origin.map(|o| o.to_string()).as_deref(), Some("t/3/42"));
    }
}
