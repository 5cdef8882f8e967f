//! `redis_dedup`: forward each record whose idempotency key was not seen within the window;
//! drop (or divert) duplicates. Replay-safe and pipelined (SPEC §7).
//!
//! For each record the transform runs one atomic check-and-set in Redis — `SET key coords NX GET
//! PX window` (Redis ≥ 7.0; a Lua script on older servers) — all of a batch in one pipeline (one
//! round trip per batch):
//!
//! * the key is new → it is stored with the record's coordinates (`topic/partition/offset`) as
//!   its value and an expiry of `window`; the record is forwarded;
//! * the key exists with **the same coordinates** → this is the same message delivered again
//!   (a crash between the Redis write and the produce acknowledgement): forwarded again, and
//!   downstream idempotency absorbs the repeat — nothing is lost;
//! * the key exists with other coordinates → a duplicate: dropped (counted), or produced to
//!   `duplicates_topic`.
//!
//! Input offsets are committed by the runtime only after the forwarded records are acknowledged.
//!
//! Redis unavailable: `fail_open` (default) forwards the batch with the header
//! `connectd-dedup: bypassed` (Postgres' `ON CONFLICT` is the backstop); `fail_closed` keeps
//! retrying with backoff (connector `degraded`) until Redis answers. Either way nothing is lost.
//!
//! Sizing: each key costs roughly 100–150 bytes in Redis (key, coordinates, expiry); at
//! 10k distinct events/s and a 5-minute window that is 3M keys, ~450 MB. Run the dedup Redis
//! with `maxmemory-policy noeviction` (or `volatile-ttl`): `allkeys-lru` can evict keys before
//! their window ends and let duplicates through silently. The connector reports Redis'
//! `evicted_keys` in its status so that eviction is visible. Redis Cluster is not supported yet
//! (a `redis://` URL of one node or a proxy only).

pub use crate::json_key::{find_key, find_key_in, KeyError, KeyPath};

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use connectd_redis::{redis, RedisCallError, RedisConn};
use connector_core::metrics::{Counter, Histogram, LATENCY_BUCKETS};
use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// The header added to records forwarded without a dedup check.
pub const BYPASS_HEADER: &str = "connectd-dedup";

/// What to do when Redis does not answer.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Forward with `connectd-dedup: bypassed` (default; downstream idempotency is the backstop).
    #[default]
    FailOpen,
    /// Retry with backoff until Redis is back (consumption pauses meanwhile).
    FailClosed,
}

/// Settings of a `redis_dedup` transform.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisDedupConfig {
    /// Redis URL (`redis://host:port/db`).
    pub redis_url: Secret,
    /// How long a key is remembered.
    #[serde(default = "default_window")]
    pub window: Duration,
    /// Field holding the idempotency key: a top-level field name or a JSON pointer (`/a/b`).
    #[serde(default = "default_key")]
    pub key: String,
    /// Produce duplicates here instead of dropping them.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,249}$"))]
    pub duplicates_topic: Option<String>,
    /// Behaviour while Redis is unavailable.
    #[serde(default)]
    pub on_redis_error: OnRedisError,
    /// Prefix of the Redis keys (the connector name is appended).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Timeout of one Redis round trip.
    #[serde(default = "default_timeout")]
    pub redis_timeout: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_key() -> String {
    "idempotency_key".into()
}
fn default_prefix() -> String {
    "connectd:dedup".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Check-and-set of one key for Redis before 7.0 (which cannot combine `SET … NX GET`):
/// 1 new, 2 same coordinates (redelivery), 0 duplicate.
const SCRIPT: &str = r#"
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if ok then return 1 end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 2 end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// How the check-and-set is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Method {
    /// Redis ≥ 7.0: `SET key coords NX GET PX window` — one native atomic command that sets a
    /// new key and returns an existing key's value (the first copy's coordinates) unchanged.
    /// Several times cheaper for Redis than a script call.
    SetNxGet,
    /// Older Redis: the Lua script above, by its SHA.
    Script(String),
}

struct DedupMetrics {
    forwarded: Counter,
    redelivered: Counter,
    duplicates: Counter,
    bypassed: Counter,
    latency: Histogram,
}

/// The transform.
pub struct RedisDedup {
    config: RedisDedupConfig,
    key_path: KeyPath,
    prefix: String,
    redis: Arc<RedisConn>,
    method: Option<Method>,
    metrics: DedupMetrics,
    evicted_keys: Option<u64>,
    evicted_checked: Option<Instant>,
    seen: u64,
}

enum Check {
    New,
    Redelivered,
    Duplicate,
}

impl RedisDedup {
    /// Picks the method by the server's version (once per connection lifetime; again after
    /// `NOSCRIPT`, when Redis restarted, possibly as another version).
    async fn method(&mut self) -> Result<Method, RedisCallError> {
        if let Some(m) = &self.method {
            return Ok(m.clone());
        }
        let info: String = self.redis.call(redis::cmd("INFO").arg("server")).await?;
        let major = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
            .unwrap_or(0);
        let m = if major >= 7 {
            Method::SetNxGet
        } else {
            let sha: String = self
                .redis
                .call(redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT))
                .await?;
            Method::Script(sha)
        };
        tracing::debug!(method = ?m, redis_major = major, "dedup check-and-set method");
        self.method = Some(m.clone());
        Ok(m)
    }

    /// One pipelined round trip for the whole batch.
    async fn check(&mut self, keys: &[(String, String)]) -> Result<Vec<Check>, RedisCallError> {
        let window_ms = self.config.window.as_std().as_millis().max(1) as u64;
        for attempt in 0..2 {
            let method = self.method().await?;
            let mut pipe = redis::Pipeline::with_capacity(keys.len());
            for (k, coords) in keys {
                // Sized up front: growing each command's buffers cost a few reallocations
                // per record.
                let mut cmd = redis::Cmd::with_capacity(7, k.len() + coords.len() + 64);
                match &method {
                    Method::SetNxGet => cmd
                        .arg("SET")
                        .arg(k)
                        .arg(coords)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(window_ms),
                    Method::Script(sha) => cmd
                        .arg("EVALSHA")
                        .arg(sha)
                        .arg(1)
                        .arg(k)
                        .arg(coords)
                        .arg(window_ms),
                };
                pipe.add_command(cmd);
            }
            let started = Instant::now();
            let r: Result<Vec<redis::Value>, RedisCallError> = self.redis.pipeline(&pipe).await;
            self.metrics
                .latency
                .observe(started.elapsed().as_secs_f64());
            match r {
                Ok(replies) if replies.len() == keys.len() => {
                    return replies
                        .iter()
                        .zip(keys)
                        .map(|(v, (_, coords))| classify(&method, v, coords))
                        .collect()
                }
                Ok(replies) => {
                    return Err(RedisCallError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "pipeline reply count mismatch",
                        format!("{} replies for {} commands", replies.len(), keys.len()),
                    ))))
                }
                Err(RedisCallError::Redis(e))
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    self.method = None; // Redis restarted: load the script again.
                }
                Err(e) => return Err(e),
            }
        }
        Err(RedisCallError::Unavailable)
    }

    async fn refresh_evicted(&mut self) {
        if self
            .evicted_checked
            .is_some_and(|t| t.elapsed() < StdDuration::from_secs(10))
        {
            return;
        }
        self.evicted_checked = Some(Instant::now());
        if let Ok(info) = self
            .redis
            .call::<String>(redis::cmd("INFO").arg("stats"))
            .await
        {
            self.evicted_keys = info
                .lines()
                .find_map(|l| l.strip_prefix("evicted_keys:"))
                .and_then(|v| v.trim().parse().ok());
            if self.evicted_keys.is_some_and(|n| n > 0) {
                tracing::warn!(evicted_keys = self.evicted_keys, "redis evicted keys: dedup windows may be shorter than configured (use maxmemory-policy noeviction)");
            }
        }
    }
}

/// One reply of the pipeline: `SET … NX GET` answers nil for a new key, else the stored
/// coordinates; the script answers 1 / 2 / 0.
fn classify(method: &Method, v: &redis::Value, coords: &str) -> Result<Check, RedisCallError> {
    let unexpected = |v: &redis::Value| {
        RedisCallError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "unexpected dedup reply",
            format!("{v:?}"),
        )))
    };
    match (method, v) {
        (Method::SetNxGet, redis::Value::Nil) => Ok(Check::New),
        (Method::SetNxGet, redis::Value::BulkString(b)) => {
            Ok(if b.as_slice() == coords.as_bytes() {
                Check::Redelivered
            } else {
                Check::Duplicate
            })
        }
        (Method::Script(_), redis::Value::Int(1)) => Ok(Check::New),
        (Method::Script(_), redis::Value::Int(2)) => Ok(Check::Redelivered),
        (Method::Script(_), redis::Value::Int(0)) => Ok(Check::Duplicate),
        (_, redis::Value::ServerError(e)) => Err(RedisCallError::Redis(e.clone().into())),
        (_, other) => Err(unexpected(other)),
    }
}

fn output_record(r: &Record) -> Record {
    Record {
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
        timestamp_ms: r.timestamp_ms,
        origin: None,
    }
}

/// `prefix:key`, the Redis key of one idempotency key.
fn redis_key(prefix: &str, key: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + 1 + key.len());
    k.push_str(prefix);
    k.push(':');
    k.push_str(key);
    k
}

/// A record's coordinates as stored in Redis: `topic/partition/offset`, exactly as
/// [`connector_core::Origin`]'s `Display` spells them (integers written without the
/// formatting machinery: this runs once per record).
fn coordinates(r: &Record) -> String {
    let Some(o) = r.origin.as_ref() else {
        return String::new();
    };
    let mut p = itoa::Buffer::new();
    let partition = p.format(o.partition);
    let mut f = itoa::Buffer::new();
    let offset = f.format(o.offset);
    let mut s = String::with_capacity(o.topic.len() + partition.len() + offset.len() + 2);
    s.push_str(&o.topic);
    s.push('/');
    s.push_str(partition);
    s.push('/');
    s.push_str(offset);
    s
}

#[async_trait]
impl Transform for RedisDedup {
    async fn transform(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<TransformOutcome>, ConnectorError> {
        let mut outcomes: Vec<Option<TransformOutcome>> = vec![None; batch.len()];
        let mut keys = Vec::with_capacity(batch.len());
        let mut idx = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let key = match find_key_in(&r.value, &self.key_path) {
                Ok(k) => k,
                Err(KeyError::InvalidJson(e)) => {
                    outcomes[i] = Some(TransformOutcome::Permanent(ConnectorError::permanent(
                        "invalid_json",
                        format!("value is not JSON: {e}"),
                    )));
                    continue;
                }
                Err(KeyError::Missing) => {
                    outcomes[i] = Some(TransformOutcome::Permanent(ConnectorError::permanent(
                        "missing_key",
                        format!(
                            "no idempotency key at {:?} (must be a non-empty string or a number)",
                            self.config.key
                        ),
                    )));
                    continue;
                }
            };
            keys.push((redis_key(&self.prefix, &key), coordinates(r)));
            idx.push(i);
        }
        self.seen += idx.len() as u64;
        if !keys.is_empty() {
            match self.check(&keys).await {
                Ok(checks) => {
                    for (i, c) in idx.iter().zip(checks) {
                        let r = &batch[*i];
                        outcomes[*i] = Some(match c {
                            Check::New => {
                                self.metrics.forwarded.inc();
                                TransformOutcome::forward(output_record(r))
                            }
                            Check::Redelivered => {
                                self.metrics.forwarded.inc();
                                self.metrics.redelivered.inc();
                                TransformOutcome::forward(output_record(r))
                            }
                            Check::Duplicate => {
                                self.metrics.duplicates.inc();
                                match &self.config.duplicates_topic {
                                    Some(t) => TransformOutcome::Emit(vec![Output::to(
                                        t.clone(),
                                        output_record(r),
                                    )]),
                                    None => TransformOutcome::drop_record(),
                                }
                            }
                        });
                    }
                }
                Err(e) => match self.config.on_redis_error {
                    OnRedisError::FailClosed => {
                        return Err(ConnectorError::retriable(
                            "redis_unavailable",
                            e.to_string(),
                        ));
                    }
                    OnRedisError::FailOpen => {
                        tracing::warn!(error = %e, records = idx.len(), "redis unavailable: forwarding without dedup (fail_open)");
                        for i in &idx {
                            self.metrics.bypassed.inc();
                            let mut out = output_record(&batch[*i]);
                            out.headers.set(BYPASS_HEADER, "bypassed");
                            outcomes[*i] = Some(TransformOutcome::forward(out));
                        }
                    }
                },
            }
        }
        self.refresh_evicted().await;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    TransformOutcome::Permanent(ConnectorError::permanent("internal", "no outcome"))
                })
            })
            .collect())
    }

    fn status(&self) -> Value {
        let dups = self.metrics.duplicates.get();
        json!({
            "forwarded": self.metrics.forwarded.get(),
            "redelivered": self.metrics.redelivered.get(),
            "duplicates_dropped": dups,
            "bypassed": self.metrics.bypassed.get(),
            "dedup_hit_ratio": if self.seen == 0 { 0.0 } else { dups as f64 / self.seen as f64 },
            "redis_evicted_keys": self.evicted_keys,
            "window": self.config.window.to_string(),
        })
    }
}

/// Factory of [`RedisDedup`].
pub struct RedisDedupPlugin;

#[async_trait]
impl TransformPlugin for RedisDedupPlugin {
    const TYPE: &'static str = "redis_dedup";
    const DESCRIPTION: &'static str = "Drops records whose idempotency key was seen within a window (Redis, pipelined, replay-safe)";
    type Config = RedisDedupConfig;

    fn validate(c: &RedisDedupConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if c.window.as_std() < StdDuration::from_millis(1) {
            issues.push(ConfigIssue::new("window", "must be at least 1ms"));
        }
        if c.key.is_empty() {
            issues.push(ConfigIssue::new("key", "must not be empty"));
        }
        let url = c.redis_url.expose();
        if url.starts_with("redis+cluster://") || url.contains(",") {
            issues.push(ConfigIssue::new(
                "redis_url",
                "Redis Cluster is not supported yet; use one node (redis://host:port)",
            ));
        } else if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            issues.push(ConfigIssue::new(
                "redis_url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: RedisDedupConfig,
        ctx: TransformContext,
    ) -> Result<Box<dyn Transform>, ConnectorError> {
        let redis = RedisConn::new(config.redis_url.expose(), config.redis_timeout.as_std())
            .map_err(|e| ConnectorError::permanent("bad_redis_url", e.to_string()))?;
        let m = &ctx.metrics;
        Ok(Box::new(RedisDedup {
            key_path: KeyPath::parse(&config.key),
            prefix: format!("{}:{}", config.key_prefix, ctx.name),
            redis: Arc::new(redis),
            method: None,
            metrics: DedupMetrics {
                forwarded: m.counter(
                    "connectd_dedup_forwarded_total",
                    "Records forwarded (new keys and redeliveries)",
                ),
                redelivered: m.counter(
                    "connectd_dedup_redelivered_total",
                    "Records forwarded again because Redis held their own coordinates",
                ),
                duplicates: m.counter(
                    "connectd_dedup_duplicates_total",
                    "Duplicates dropped (or diverted)",
                ),
                bypassed: m.counter(
                    "connectd_dedup_bypassed_total",
                    "Records forwarded without a check while Redis was unavailable",
                ),
                latency: m.histogram(
                    "connectd_dedup_redis_seconds",
                    "Redis round trip per batch",
                    LATENCY_BUCKETS,
                ),
            },
            evicted_keys: None,
            evicted_checked: None,
            seen: 0,
            config,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_both_methods_classify() {
        use redis::Value as V;
        let native = Method::SetNxGet;
        let coords = "t/0/5";
        let c = |m: &Method, v: V| classify(m, &v, coords).map_err(|e| e.to_string());
        assert!(matches!(c(&native, V::Nil), Ok(Check::New)));
        assert!(matches!(
            c(&native, V::BulkString(b"t/0/5".to_vec())),
            Ok(Check::Redelivered)
        ));
        assert!(matches!(
            c(&native, V::BulkString(b"t/1/5".to_vec())),
            Ok(Check::Duplicate)
        ));
        assert!(
            c(&native, V::Int(1)).is_err(),
            "a reply of the wrong kind is an error"
        );
        let script = Method::Script("sha".into());
        assert!(matches!(c(&script, V::Int(1)), Ok(Check::New)));
        assert!(matches!(c(&script, V::Int(2)), Ok(Check::Redelivered)));
        assert!(matches!(c(&script, V::Int(0)), Ok(Check::Duplicate)));
        assert!(c(&script, V::Nil).is_err());
    }

    #[test]
    fn coordinates_and_keys_are_spelled_as_before() {
        // The coordinates stored in Redis by earlier versions must still compare equal on a
        // redelivery: the same spelling as `Origin`'s Display.
        for (p, o) in [(0, 0), (5, 1234567), (-1, -1), (i32::MAX, i64::MAX)] {
            let origin = connector_core::Origin {
                topic: "events.raw".into(),
                partition: p,
                offset: o,
            };
            let r = Record {
                origin: Some(origin.clone()),
                ..Record::new("{}")
            };
            assert_eq!(coordinates(&r), origin.to_string());
        }
        assert_eq!(coordinates(&Record::new("{}")), "");
        assert_eq!(redis_key("dedup:d", "k-1"), "dedup:d:k-1");
        let r = Record {
            origin: Some(connector_core::Origin {
                topic: "t".into(),
                partition: 1,
                offset: 2,
            }),
            ..Record::new("v").with_key("k")
        };
        let out = output_record(&r);
        assert!(out.origin.is_none());
        assert_eq!((out.key, out.value), (r.key.clone(), r.value.clone()));
    }

    #[test]
    fn cluster_urls_are_refused_with_a_clear_message() {
        let c: RedisDedupConfig =
            serde_json::from_value(json!({"redis_url": "redis+cluster://a:1"})).expect("parse");
        let issues = RedisDedupPlugin::validate(&c).expect_err("refused");
        assert!(issues[0].message.contains("Cluster is not supported"));
    }
}
