//! `redis_leaderboard_sink` — an example third-party sink for connectd (seed 002's use case).
//!
//! For each event it increments a sorted-set counter (`ZINCRBY <counters_prefix>:<event_type> 1
//! <user_id>`: a leaderboard per event type) and appends the event to a Redis Stream
//! (`XADD <stream> MAXLEN ~ N`). A whole batch runs in **one Lua script**, so it is atomic, and
//! each event is applied **once**: the script remembers applied idempotency keys
//! (`SET <seen_prefix>:<key> 1 NX EX <dedup_ttl>`) and skips keys it has seen — a redelivered
//! batch (after a crash or rebalance) changes nothing.
//!
//! Delivery contract: `write` answers `Delivered` only after the script returned, i.e. after
//! Redis applied the batch; a record that is not JSON or lacks the fields is `Permanent` (goes
//! to the dead-letter topic); a Redis error is a retriable batch error.

use connector_core::prelude::*;
use redis::aio::ConnectionManager;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Settings of a `redis_leaderboard_sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisLeaderboardConfig {
    /// Redis URL (`redis://host:port/db`).
    pub redis_url: Secret,
    /// Prefix of the sorted sets; the event type is appended (`leaderboard:signup`).
    #[serde(default = "default_counters")]
    pub counters_prefix: String,
    /// The append-only stream of applied events.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Approximate maximum length of the stream (`XADD MAXLEN ~`).
    #[serde(default = "default_maxlen")]
    pub stream_maxlen: u64,
    /// Prefix of the applied-key markers.
    #[serde(default = "default_seen")]
    pub seen_prefix: String,
    /// How long applied idempotency keys are remembered (seconds); redeliveries older than
    /// this would be applied again.
    #[serde(default = "default_ttl")]
    pub dedup_ttl_secs: u64,
}

fn default_counters() -> String {
    "leaderboard".into()
}
fn default_stream() -> String {
    "events:stream".into()
}
fn default_maxlen() -> u64 {
    1_000_000
}
fn default_seen() -> String {
    "leaderboard:seen".into()
}
fn default_ttl() -> u64 {
    7 * 86_400
}

/// ARGV: seen prefix, ttl, counters prefix, stream, maxlen, then 4 per event:
/// idempotency key, event type, user id, event JSON. Returns 1/0 per event (applied/skipped).
const SCRIPT: &str = r#"
local out = {}
local n = (#ARGV - 5) / 4
for i = 0, n - 1 do
  local key, etype, user, data = ARGV[6 + i*4], ARGV[7 + i*4], ARGV[8 + i*4], ARGV[9 + i*4]
  if redis.call('SET', ARGV[1] .. ':' .. key, '1', 'NX', 'EX', ARGV[2]) then
    redis.call('ZINCRBY', ARGV[3] .. ':' .. etype, 1, user)
    redis.call('XADD', ARGV[4], 'MAXLEN', '~', ARGV[5], '*', 'idempotency_key', key, 'event', data)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// The sink.
pub struct RedisLeaderboardSink {
    config: RedisLeaderboardConfig,
    conn: ConnectionManager,
    script: redis::Script,
    applied: Counter,
    skipped: Counter,
}

fn fields(r: &Record) -> Result<(String, String, String, String), ConnectorError> {
    let v: Value = r
        .value_json()
        .map_err(|e| ConnectorError::permanent("invalid_json", e.to_string()))?;
    let get = |f: &str| {
        v.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ConnectorError::permanent("missing_field", format!("no string field {f:?}"))
            })
    };
    Ok((
        get("idempotency_key")?,
        get("event_type")?,
        get("user_id")?,
        v.to_string(),
    ))
}

#[async_trait]
impl Sink for RedisLeaderboardSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let mut outcomes = vec![RecordOutcome::Delivered; batch.len()];
        let c = &self.config;
        let mut inv = self.script.prepare_invoke();
        inv.arg(&c.seen_prefix)
            .arg(c.dedup_ttl_secs)
            .arg(&c.counters_prefix)
            .arg(&c.stream)
            .arg(c.stream_maxlen);
        let mut n = 0;
        for (i, r) in batch.iter().enumerate() {
            match fields(r) {
                Ok((key, etype, user, data)) => {
                    inv.arg(key).arg(etype).arg(user).arg(data);
                    n += 1;
                }
                Err(e) => outcomes[i] = RecordOutcome::Permanent(e),
            }
        }
        if n == 0 {
            return Ok(outcomes);
        }
        let applied: Vec<i64> = inv
            .invoke_async(&mut self.conn)
            .await
            .map_err(|e| ConnectorError::retriable("redis", e.to_string()))?;
        let done = applied.iter().filter(|a| **a == 1).count() as u64;
        self.applied.add(done);
        self.skipped.add(applied.len() as u64 - done);
        Ok(outcomes)
    }
}

/// Factory of [`RedisLeaderboardSink`].
pub struct RedisLeaderboardPlugin;

#[async_trait]
impl SinkPlugin for RedisLeaderboardPlugin {
    const TYPE: &'static str = "redis_leaderboard_sink";
    const DESCRIPTION: &'static str = "Leaderboards (ZINCRBY) and an event stream (XADD) in Redis, atomic and idempotent per batch";
    type Config = RedisLeaderboardConfig;

    fn validate(c: &RedisLeaderboardConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if !c.redis_url.expose().starts_with("redis://")
            && !c.redis_url.expose().starts_with("rediss://")
        {
            issues.push(ConfigIssue::new(
                "redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        if c.dedup_ttl_secs == 0 {
            issues.push(ConfigIssue::new("dedup_ttl_secs", "must be at least 1"));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: RedisLeaderboardConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let client = redis::Client::open(config.redis_url.expose())
            .map_err(|e| ConnectorError::permanent("bad_redis_url", e.to_string()))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| ConnectorError::retriable("redis", e.to_string()))?;
        Ok(Box::new(RedisLeaderboardSink {
            config,
            conn,
            script: redis::Script::new(SCRIPT),
            applied: ctx
                .metrics
                .counter("leaderboard_applied_total", "Events applied to Redis"),
            skipped: ctx.metrics.counter(
                "leaderboard_redelivered_total",
                "Events skipped as already applied",
            ),
        }))
    }
}
