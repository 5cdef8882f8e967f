//! `redis_sink`: applies records to Redis — sorted-set leaderboards, counters, hashes, streams,
//! plain keys — **exactly once**, guarded by a per-partition sequence cursor (seed 002).
//!
//! ```yaml
//! - name: activity
//!   type: redis_sink
//!   input: events.unique
//!   dlq_topic: events.dlq
//!   redis_url: redis://127.0.0.1:56379
//!   operations:
//!     - zincrby: { key: "leaderboard:{/event_type}:{day(/event_ts)}", member: "/user_id" }
//!     - incrby:  { key: "events:{/event_type}:{day(/event_ts)}" }
//!     - xadd:    { key: "activity", fields: { user_id: /user_id, event_type: /event_type }, max_age: 7d }
//! ```
//!
//! ## Exactly once
//! For each batch and partition, one Lua script applies the operations of the records whose
//! offset is above the partition's cursor (`connectd:cursor:<connector>:<topic>:<partition>`)
//! and moves the cursor to the last of them, atomically. A redelivered record (after a crash,
//! a rebalance, a retry) is at or below the cursor and changes nothing. On every assignment the
//! runtime seeks to the cursor + 1 ([`Sink::stored_offsets`]), as `postgres_sink`'s
//! `exactly_once` does with its offsets table. With AOF on, a Redis restart keeps the effects
//! and the cursor together (a script is persisted as one unit), so nothing is counted twice.
//!
//! ## Per record
//! A record whose value is not JSON, whose template field is missing, or whose `by` is not a
//! number is `Permanent` (→ DLQ) on its own; the rest of the batch is applied. An operation that
//! Redis itself refuses (`WRONGTYPE`: the key holds another type) dead-letters its record with
//! the error; the record's other operations stay applied and the cursor moves past it, so it
//! is never applied twice. Caveat shared with `postgres_sink`'s exactly-once mode: a poison
//! record before the cursor's new position is dead-lettered by this delivery only — if the
//! process dies before the DLQ produce is acknowledged, that dead letter is not sent again.
//!
//! ## Cursor drift (seed 002, pitfall 6)
//! The script also returns the cursor it found. Normally that is the offset just before the
//! batch; `connectd_redis_sink_cursor_drift` (per partition) is the difference: above 0, records
//! were skipped as already applied (a replay; large values mean the cursor ran ahead of the
//! consumer group, e.g. a connector renamed onto an old cursor); below 0, a gap the cursor never
//! saw (Redis lost data, or a compacted topic). Beyond `drift_warning` records either way a
//! warning is logged. `connectd_redis_sink_cursor_age_seconds` says how long ago each cursor
//! last moved. Both are in `GET /connectors/<name>` too.
//!
//! ## Redis Cluster
//! Not supported: a batch's script touches keys in many hash slots, which a cluster refuses for
//! one script; `redis+cluster://` URLs are refused at validation rather than silently losing
//! the guarantee. Use one Redis (with a replica for availability).

mod sink;
pub mod template;

use std::collections::BTreeMap;

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

pub use sink::RedisSink;
use template::Template;

/// A delta: a number, or a JSON pointer / template that gives one per record.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum By {
    /// The same number for every record.
    Number(serde_json::Number),
    /// A JSON pointer (`/payload/amount`) or template whose value is a number.
    Field(String),
}

impl Default for By {
    fn default() -> Self {
        By::Number(1.into())
    }
}

/// One operation applied per record. Every text is a template: `{/pointer}` fields,
/// `{day(/pointer)}`, `{hour(/pointer)}`; a value that is exactly `/pointer` is that field.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Sorted set (leaderboard): `ZINCRBY key by member`.
    Zincrby {
        /// Key template.
        key: String,
        /// Member (template or `/pointer`).
        member: String,
        /// Increment (default 1).
        #[serde(default)]
        by: By,
    },
    /// Counter: `INCRBY key by` (an integer).
    Incrby {
        /// Key template.
        key: String,
        /// Increment, an integer (default 1).
        #[serde(default)]
        by: By,
    },
    /// Hash counter: `HINCRBY key field by` (an integer).
    Hincrby {
        /// Key template.
        key: String,
        /// Field (template or `/pointer`).
        field: String,
        /// Increment, an integer (default 1).
        #[serde(default)]
        by: By,
    },
    /// Latest state: `HSET key field value ...`.
    Hset {
        /// Key template.
        key: String,
        /// Field name → value (template or `/pointer`).
        fields: BTreeMap<String, String>,
    },
    /// Append-only stream: `XADD key [MAXLEN ~ n | MINID ~ now-max_age] * field value ...`.
    Xadd {
        /// Stream key template.
        key: String,
        /// Entry field → value (template or `/pointer`).
        fields: BTreeMap<String, String>,
        /// Keep about this many entries (`MAXLEN ~`).
        #[serde(default)]
        maxlen: Option<u64>,
        /// Keep about this much history (`MINID ~`, e.g. `7d`).
        #[serde(default)]
        max_age: Option<Duration>,
    },
    /// Plain key: `SET key value [PX ttl]`.
    Set {
        /// Key template.
        key: String,
        /// Value (template or `/pointer`).
        value: String,
        /// Expiry.
        #[serde(default)]
        ttl: Option<Duration>,
    },
}

/// Settings of a `redis_sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// Redis URL (one node; `redis+cluster://` is refused).
    pub redis_url: Secret,
    /// What to do with each record, in order (at least one).
    pub operations: Vec<Operation>,
    /// Prefix of the cursor keys (`<prefix>:<connector>:<topic>:<partition>`).
    #[serde(default = "default_cursor_prefix")]
    pub cursor_prefix: String,
    /// Log a warning when a cursor drifts this many records from where the batch starts.
    #[serde(default = "default_drift_warning")]
    pub drift_warning: u64,
    /// Longest wait for one script (a batch of one partition) before retrying the batch.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_cursor_prefix() -> String {
    "connectd:cursor".into()
}
fn default_drift_warning() -> u64 {
    10_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Where a per-record value comes from, compiled.
#[derive(Debug, Clone)]
enum Amount {
    Const(String),
    Field(Template),
}

/// An operation with its templates parsed.
#[derive(Debug, Clone)]
enum Compiled {
    Zincrby(Template, Template, Amount),
    Incrby(Template, Amount),
    Hincrby(Template, Template, Amount),
    Hset(Template, Vec<(String, Template)>),
    Xadd(Template, Vec<(String, Template)>, Trim),
    Set(Template, Template, u64),
}

/// How an `xadd` trims its stream.
#[derive(Debug, Clone, Copy)]
enum Trim {
    None,
    MaxLen(u64),
    MaxAgeMs(u64),
}

fn amount(by: &By, integer: bool, path: &str, issues: &mut Vec<ConfigIssue>) -> Option<Amount> {
    match by {
        By::Number(n) if integer && n.as_i64().is_none() => {
            issues.push(ConfigIssue::new(path, format!("{n} is not an integer")));
            None
        }
        By::Number(n) => Some(Amount::Const(n.to_string())),
        By::Field(f) => match Template::parse_value(f) {
            Ok(t) => Some(Amount::Field(t)),
            Err(e) => {
                issues.push(ConfigIssue::new(path, e));
                None
            }
        },
    }
}

fn compile(ops: &[Operation]) -> Result<Vec<Compiled>, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut out = Vec::new();
    let tpl = |text: &str, path: String, value: bool, issues: &mut Vec<ConfigIssue>| {
        let parsed = if value {
            Template::parse_value(text)
        } else {
            Template::parse(text)
        };
        parsed
            .map_err(|e| issues.push(ConfigIssue::new(path, e)))
            .ok()
    };
    for (i, op) in ops.iter().enumerate() {
        let at = |name: &str, field: &str| format!("operations.{i}.{name}.{field}");
        let compiled = match op {
            Operation::Zincrby { key, member, by } => {
                let k = tpl(key, at("zincrby", "key"), false, &mut issues);
                let m = tpl(member, at("zincrby", "member"), true, &mut issues);
                let b = amount(by, false, &at("zincrby", "by"), &mut issues);
                k.zip(m)
                    .zip(b)
                    .map(|((k, m), b)| Compiled::Zincrby(k, m, b))
            }
            Operation::Incrby { key, by } => {
                let k = tpl(key, at("incrby", "key"), false, &mut issues);
                let b = amount(by, true, &at("incrby", "by"), &mut issues);
                k.zip(b).map(|(k, b)| Compiled::Incrby(k, b))
            }
            Operation::Hincrby { key, field, by } => {
                let k = tpl(key, at("hincrby", "key"), false, &mut issues);
                let f = tpl(field, at("hincrby", "field"), true, &mut issues);
                let b = amount(by, true, &at("hincrby", "by"), &mut issues);
                k.zip(f)
                    .zip(b)
                    .map(|((k, f), b)| Compiled::Hincrby(k, f, b))
            }
            Operation::Hset { key, fields } | Operation::Xadd { key, fields, .. } => {
                let name = if matches!(op, Operation::Hset { .. }) {
                    "hset"
                } else {
                    "xadd"
                };
                let k = tpl(key, at(name, "key"), false, &mut issues);
                if fields.is_empty() {
                    issues.push(ConfigIssue::new(
                        at(name, "fields"),
                        "needs at least one field",
                    ));
                }
                let fs: Vec<Option<(String, Template)>> = fields
                    .iter()
                    .map(|(f, v)| {
                        tpl(v, at(name, &format!("fields.{f}")), true, &mut issues)
                            .map(|t| (f.clone(), t))
                    })
                    .collect();
                let fs: Option<Vec<(String, Template)>> = fs.into_iter().collect();
                match op {
                    Operation::Xadd {
                        maxlen, max_age, ..
                    } => {
                        let trim = match (maxlen, max_age) {
                            (Some(_), Some(_)) => {
                                issues.push(ConfigIssue::new(
                                    format!("operations.{i}.xadd"),
                                    "set maxlen or max_age, not both",
                                ));
                                Trim::None
                            }
                            (Some(n), None) => Trim::MaxLen(*n),
                            (None, Some(d)) => Trim::MaxAgeMs(d.as_std().as_millis() as u64),
                            (None, None) => Trim::None,
                        };
                        k.zip(fs).map(|(k, fs)| Compiled::Xadd(k, fs, trim))
                    }
                    _ => k.zip(fs).map(|(k, fs)| Compiled::Hset(k, fs)),
                }
            }
            Operation::Set { key, value, ttl } => {
                let k = tpl(key, at("set", "key"), false, &mut issues);
                let v = tpl(value, at("set", "value"), true, &mut issues);
                let ttl = ttl.map_or(0, |d| d.as_std().as_millis() as u64);
                k.zip(v).map(|(k, v)| Compiled::Set(k, v, ttl))
            }
        };
        if let Some(c) = compiled {
            out.push(c);
        }
    }
    if ops.is_empty() {
        issues.push(ConfigIssue::new(
            "operations",
            "needs at least one operation",
        ));
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

/// Factory of [`RedisSink`].
pub struct RedisSinkPlugin;

#[async_trait]
impl SinkPlugin for RedisSinkPlugin {
    const TYPE: &'static str = "redis_sink";
    const DESCRIPTION: &'static str = "Applies records to Redis (ZINCRBY, INCRBY, HINCRBY, HSET, XADD, SET) exactly once through a per-partition cursor";
    type Config = RedisSinkConfig;

    fn validate(c: &RedisSinkConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = match compile(&c.operations) {
            Ok(_) => Vec::new(),
            Err(i) => i,
        };
        let url = c.redis_url.expose();
        if url.starts_with("redis+cluster://") || url.contains(',') {
            issues.push(ConfigIssue::new(
                "redis_url",
                "Redis Cluster is not supported: one script per batch touches keys in many slots, which a cluster refuses, and splitting it would lose the exactly-once guarantee; use one node (redis://host:port)",
            ));
        } else if redis_client(url).is_err() {
            issues.push(ConfigIssue::new(
                "redis_url",
                "not a redis:// or rediss:// URL",
            ));
        }
        if c.cursor_prefix.is_empty() {
            issues.push(ConfigIssue::new("cursor_prefix", "must not be empty"));
        }
        if c.timeout.as_std().is_zero() {
            issues.push(ConfigIssue::new("timeout", "must be more than 0"));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(c: RedisSinkConfig, ctx: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
        let ops = compile(&c.operations).map_err(|i| {
            ConnectorError::permanent(
                "config",
                i.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        Ok(Box::new(RedisSink::open(c, ops, ctx).await?))
    }
}

fn redis_client(url: &str) -> Result<(), String> {
    connectd_redis::redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(ops: serde_json::Value) -> RedisSinkConfig {
        serde_json::from_value(json!({"redis_url": "redis://127.0.0.1:1", "operations": ops}))
            .expect("parses")
    }

    #[test]
    fn every_operation_parses_and_compiles() {
        let c = config(json!([
            {"zincrby": {"key": "lb:{/event_type}:{day(/event_ts)}", "member": "/user_id"}},
            {"incrby": {"key": "n:{/event_type}", "by": 2}},
            {"hincrby": {"key": "u:{/user_id}", "field": "/event_type", "by": "/payload/n"}},
            {"hset": {"key": "last:{/user_id}", "fields": {"type": "/event_type", "at": "{/event_ts}"}}},
            {"xadd": {"key": "activity", "fields": {"u": "/user_id"}, "max_age": "7d"}},
            {"set": {"key": "seen:{/idempotency_key}", "value": "1", "ttl": "1h"}}
        ]));
        assert_eq!(RedisSinkPlugin::validate(&c), Ok(()));
        assert_eq!(compile(&c.operations).map(|v| v.len()).ok(), Some(6));
    }

    #[test]
    fn mistakes_are_reported_with_their_path() {
        let c = config(json!([
            {"zincrby": {"key": "lb:{event_type}", "member": "/user_id"}},
            {"incrby": {"key": "n", "by": 1.5}},
            {"xadd": {"key": "s", "fields": {}, "maxlen": 10, "max_age": "1d"}}
        ]));
        let issues: Vec<String> = RedisSinkPlugin::validate(&c)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(issues.len(), 4, "{issues:?}");
        assert!(
            issues[0]
                .starts_with("operations.0.zincrby.key: {event_type}: expected a JSON pointer"),
            "{issues:?}"
        );
        assert!(
            issues[1].starts_with("operations.1.incrby.by: 1.5 is not an integer"),
            "{issues:?}"
        );
        assert!(
            issues
                .iter()
                .any(|i| i == "operations.2.xadd.fields: needs at least one field"),
            "{issues:?}"
        );
        assert!(
            issues
                .iter()
                .any(|i| i == "operations.2.xadd: set maxlen or max_age, not both"),
            "{issues:?}"
        );
        let cluster: RedisSinkConfig = serde_json::from_value(
            json!({"redis_url": "redis+cluster://a:1", "operations": [{"incrby": {"key": "n"}}]}),
        )
        .expect("parses");
        assert!(RedisSinkPlugin::validate(&cluster).expect_err("refused")[0]
            .to_string()
            .contains("Redis Cluster is not supported"));
        assert!(serde_json::from_value::<RedisSinkConfig>(
            json!({"redis_url": "redis://a", "operations": [{"zadd": {"key": "n"}}]})
        )
        .is_err());
    }
}
