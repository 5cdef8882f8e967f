//! `connectd produce` and `connectd tail`: JSON lines into and out of a topic, headers included.
//!
//! For people trying a pipeline (or a sink of their own) without writing a producer:
//!
//! ```text
//! printf '%s\n' '{"idempotency_key":"a","n":1}' | connectd produce events.unique
//! printf '%s\n' '{"key":"u1","headers":{"source":"web"},"value":{"n":1}}' | connectd produce t --envelope
//! connectd tail events.unique --from-beginning --max 10
//! ```
//!
//! `produce` reads every line first and refuses the whole input (exit 2, line number) when one
//! is not what it should be, then produces with the same idempotent, `acks=all` producer the
//! runtime uses and waits for every acknowledgement. A missing topic is created
//! (`--partitions`). `tail` prints one JSON object per record: `topic`, `partition`, `offset`,
//! `timestamp_ms`, `key`, `headers` and `value` (as JSON when it parses, else as a string).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use connector_core::Record;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{json, Map, Value};

use crate::cli::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
use crate::config::KafkaSettings;
use crate::runtime::kafka::{consumer_config, create_topics, to_record, Outgoing, SharedProducer};

/// `connectd produce` arguments.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to produce to.
    pub topic: String,
    /// Bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Read the lines from this file instead of standard input.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Each line is `{"key": ..., "headers": {...}, "value": ...}` rather than the value itself.
    #[arg(long)]
    pub envelope: bool,
    /// Take each record's key from this JSON pointer of the value (e.g. `/user_id`).
    #[arg(long)]
    pub key_pointer: Option<String>,
    /// A header for every record, `name=value` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
}

/// `connectd tail` arguments.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Topic to read.
    pub topic: String,
    /// Bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Start at the beginning of the topic (default: only records produced from now on).
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop when no record arrived for this long (`5s`; default: follow until interrupted).
    #[arg(long)]
    pub idle_exit: Option<connector_core::config::Duration>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not name=value")),
    }
}

/// Why a line cannot become a record.
fn record_from_line(line: &str, a: &ProduceArgs) -> Result<Record, String> {
    let parsed: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let (key, headers, value) = if a.envelope {
        let Value::Object(mut o) = parsed else {
            return Err(
                "with --envelope each line is an object {\"key\", \"headers\", \"value\"}".into(),
            );
        };
        for k in o.keys() {
            if !matches!(k.as_str(), "key" | "headers" | "value") {
                return Err(format!(
                    "unknown field {k:?} (expected key, headers, value)"
                ));
            }
        }
        let key = match o.remove("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        let headers = match o.remove("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(h)) => h
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(format!("header {k:?} must be a string, not {other}")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("headers must be an object of strings".into()),
        };
        let value = match o.remove("value") {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => return Err("missing \"value\"".into()),
        };
        (key, headers, value)
    } else {
        (None, Vec::new(), line.to_string())
    };
    let key = match (&a.key_pointer, key) {
        (_, Some(k)) => Some(k),
        (Some(p), None) => {
            let v: Value =
                serde_json::from_str(&value).map_err(|e| format!("value not JSON: {e}"))?;
            match v.pointer(p) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => return Err(format!("no key at {p}")),
                Some(other) => Some(other.to_string()),
            }
        }
        (None, None) => None,
    };
    let mut r = Record::new(value);
    if let Some(k) = key {
        r = r.with_key(k);
    }
    for (k, v) in a.headers.iter().cloned().chain(headers) {
        r = r.with_header(k, v);
    }
    Ok(r)
}

/// Runs `connectd produce`.
pub async fn produce(a: ProduceArgs) -> u8 {
    let input: Box<dyn BufRead> = match &a.file {
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return EXIT_USAGE;
            }
        },
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: line {}: {e}", i + 1);
                return EXIT_USAGE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match record_from_line(&line, &a) {
            Ok(r) => records.push(r),
            Err(e) => {
                eprintln!("error: line {}: {e}; nothing was produced", i + 1);
                return EXIT_USAGE;
            }
        }
    }
    let k = KafkaSettings {
        brokers: a.brokers.clone(),
        ..KafkaSettings::default()
    };
    if let Err(e) = create_topics(&k, &BTreeMap::from([(a.topic.clone(), (a.partitions, 1))])).await
    {
        eprintln!("error: {e}");
        return EXIT_RUNTIME;
    }
    let producer = match SharedProducer::new(&k) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_RUNTIME;
        }
    };
    let items: Vec<Outgoing<'_>> = records
        .iter()
        .map(|r| (a.topic.as_str(), None, r))
        .collect();
    let results = producer.produce_all(&items, Duration::from_secs(30)).await;
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("record {}: {e}", i + 1)))
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "error: {} of {} records not acknowledged, e.g. {}",
            failed.len(),
            records.len(),
            failed[0]
        );
        return EXIT_RUNTIME;
    }
    eprintln!("produced {} records to {}", records.len(), a.topic);
    EXIT_OK
}

/// One record as a JSON line.
fn line_of(r: &Record) -> Value {
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v).into()),
            )
        })
        .collect();
    let value = serde_json::from_slice::<Value>(&r.value)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.value).into()));
    let origin = r.origin.as_ref();
    json!({
        "topic": origin.map(|o| o.topic.to_string()),
        "partition": origin.map(|o| o.partition),
        "offset": origin.map(|o| o.offset),
        "timestamp_ms": r.timestamp_ms,
        "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "value": value,
    })
}

/// Runs `connectd tail`.
pub async fn tail(a: TailArgs) -> u8 {
    let k = KafkaSettings {
        brokers: a.brokers.clone(),
        ..KafkaSettings::default()
    };
    // A throwaway group that never commits: tail reads, it does not move anyone's offsets.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let group = format!("connectd-tail-{}-{nanos:x}", std::process::id());
    let consumer: StreamConsumer = match consumer_config(&k, &group, a.from_beginning)
        .set("statistics.interval.ms", "0")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot create a consumer: {e}");
            return EXIT_RUNTIME;
        }
    };
    if let Err(e) = consumer.subscribe(&[&a.topic]) {
        eprintln!("error: cannot subscribe to {}: {e}", a.topic);
        return EXIT_RUNTIME;
    }
    let topic: Arc<str> = Arc::from(a.topic.as_str());
    let mut seen = 0u64;
    let mut last = Instant::now();
    loop {
        if a.max.is_some_and(|m| seen >= m) {
            return EXIT_OK;
        }
        let wait = match a.idle_exit {
            Some(d) => match d.as_std().checked_sub(last.elapsed()) {
                Some(left) => left,
                None => return EXIT_OK,
            },
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            m = consumer.recv() => match m {
                Ok(m) => {
                    println!("{}", line_of(&to_record(&m, &topic)));
                    seen += 1;
                    last = Instant::now();
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_RUNTIME;
                }
            },
            _ = tokio::time::sleep(wait) => {
                if a.idle_exit.is_some() {
                    return EXIT_OK;
                }
            }
            _ = tokio::signal::ctrl_c() => return EXIT_OK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(envelope: bool, key_pointer: Option<&str>) -> ProduceArgs {
        ProduceArgs {
            topic: "t".into(),
            brokers: "b".into(),
            file: None,
            envelope,
            key_pointer: key_pointer.map(str::to_string),
            headers: vec![("source".into(), "cli".into())],
            partitions: 1,
        }
    }

    #[test]
    fn plain_lines_are_values_with_the_common_headers_and_a_key_from_a_pointer() {
        let r = record_from_line(r#"{"user_id":"u1","n":1}"#, &args(false, Some("/user_id")))
            .expect("ok");
        assert_eq!(r.value_str(), Some(r#"{"user_id":"u1","n":1}"#));
        assert_eq!(r.key.as_deref(), Some(&b"u1"[..]));
        assert_eq!(r.headers.get_str("source"), Some("cli"));
        assert!(
            record_from_line(r#"{"n":1}"#, &args(false, Some("/user_id")))
                .expect_err("refused")
                .contains("no key at /user_id")
        );
        assert!(record_from_line("{oops", &args(false, None))
            .expect_err("refused")
            .starts_with("not JSON"));
    }

    #[test]
    fn envelope_lines_carry_key_headers_and_value() {
        let r = record_from_line(
            r#"{"key":"k","headers":{"connectd.idempotency_key":"i-1"},"value":{"a":1}}"#,
            &args(true, None),
        )
        .expect("ok");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.value_str(), Some(r#"{"a":1}"#));
        assert_eq!(r.idempotency_key().as_deref(), Some("i-1"));
        assert_eq!(r.headers.get_str("source"), Some("cli"));
        let raw = record_from_line(r#"{"value":"plain text"}"#, &args(true, None)).expect("ok");
        assert_eq!(raw.value_str(), Some("plain text"));
        for bad in [
            r#"[1]"#,
            r#"{"key":"k"}"#,
            r#"{"value":1,"extra":2}"#,
            r#"{"value":1,"headers":{"h":1}}"#,
        ] {
            assert!(record_from_line(bad, &args(true, None)).is_err(), "{bad}");
        }
        let line = line_of(&r.with_origin("t", 2, 7));
        assert_eq!(line["partition"], 2);
        assert_eq!(line["offset"], 7);
        assert_eq!(line["value"], json!({"a": 1}));
        assert_eq!(line["headers"]["source"], "cli");
    }
}
