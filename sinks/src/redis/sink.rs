//! The built `redis_sink`: per batch, one cursor-guarded Lua script per partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use connectd_redis::redis;
use connectd_redis::RedisConn;
use connector_core::metrics::LATENCY_BUCKETS;
use connector_core::prelude::*;
use serde_json::{json, Value};

use super::{Amount, Compiled, RedisSinkConfig, Trim};

/// Applies the operations of records above the cursor and moves it, atomically.
///
/// KEYS[1] is the cursor, KEYS[2..] the data keys. ARGV, per record: offset, number of
/// operations, then per operation its code, the index of its key in KEYS and its arguments.
/// Returns {cursor found, cursor now, records applied, records skipped, {offset, error}...}.
/// Each command runs under `pcall`: an error Redis raises (WRONGTYPE) is reported for its record
/// instead of aborting the script half-way, so the cursor always moves with what was applied.
const SCRIPT: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local before = cur
local i = 1
local applied, skipped = 0, 0
local failed = {}
local n = #ARGV
while i <= n do
  local off = tonumber(ARGV[i])
  local nops = tonumber(ARGV[i + 1])
  i = i + 2
  local apply = off > cur
  local err = nil
  for _ = 1, nops do
    local code = ARGV[i]
    local key = KEYS[tonumber(ARGV[i + 1])]
    i = i + 2
    local r = nil
    if code == 'z' then
      if apply then r = redis.pcall('ZINCRBY', key, ARGV[i + 1], ARGV[i]) end
      i = i + 2
    elseif code == 'i' then
      if apply then r = redis.pcall('INCRBY', key, ARGV[i]) end
      i = i + 1
    elseif code == 'h' then
      if apply then r = redis.pcall('HINCRBY', key, ARGV[i], ARGV[i + 1]) end
      i = i + 2
    elseif code == 's' then
      local f = tonumber(ARGV[i])
      if apply then r = redis.pcall('HSET', key, unpack(ARGV, i + 1, i + 2 * f)) end
      i = i + 1 + 2 * f
    elseif code == 'x' then
      local kind, arg, f = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
      if apply then
        if kind == 'l' then
          r = redis.pcall('XADD', key, 'MAXLEN', '~', arg, '*', unpack(ARGV, i + 3, i + 2 + 2 * f))
        elseif kind == 'm' then
          r = redis.pcall('XADD', key, 'MINID', '~', arg, '*', unpack(ARGV, i + 3, i + 2 + 2 * f))
        else
          r = redis.pcall('XADD', key, '*', unpack(ARGV, i + 3, i + 2 + 2 * f))
        end
      end
      i = i + 3 + 2 * f
    elseif code == 't' then
      if apply then
        if ARGV[i + 1] ~= '0' then
          r = redis.pcall('SET', key, ARGV[i], 'PX', ARGV[i + 1])
        else
          r = redis.pcall('SET', key, ARGV[i])
        end
      end
      i = i + 2
    else
      return redis.error_reply('connectd redis_sink: unknown operation code ' .. tostring(code))
    end
    if type(r) == 'table' and r.err and not err then err = r.err end
  end
  if apply then
    cur = off
    applied = applied + 1
    if err then
      table.insert(failed, off)
      table.insert(failed, err)
    end
  else
    skipped = skipped + 1
  end
end
if cur ~= before then redis.call('SET', KEYS[1], cur) end
return {before, cur, applied, skipped, failed}
"#;

/// One partition's cursor, as this instance last saw it.
struct Cursor {
    at: i64,
    moved: Instant,
    drift: i64,
}

/// Per-connector metrics.
struct Metrics {
    applied: Counter,
    skipped: Counter,
    operations: Counter,
    poison: Counter,
    latency: Histogram,
    base: connector_core::metrics::Metrics,
}

/// The built sink.
pub struct RedisSink {
    conn: RedisConn,
    script: redis::Script,
    ops: Vec<Compiled>,
    cursor_prefix: String,
    drift_warning: u64,
    cursors: HashMap<(Arc<str>, i32), Cursor>,
    metrics: Metrics,
    script_timeout: std::time::Duration,
}

/// One operation for the script: its code, its key, its arguments.
type ScriptOp = (&'static str, String, Vec<String>);

/// A record ready for the script.
struct Prepared {
    index: usize,
    offset: i64,
    ops: Vec<ScriptOp>,
}

fn poison(class: &str, msg: impl Into<String>) -> RecordOutcome {
    RecordOutcome::Permanent(ConnectorError::permanent(class, msg))
}

fn number(a: &Amount, v: &Value, integer: bool) -> Result<String, String> {
    let text = match a {
        Amount::Const(s) => return Ok(s.clone()),
        Amount::Field(t) => t.render(v)?,
    };
    let ok = if integer {
        text.parse::<i64>().is_ok()
    } else {
        text.parse::<f64>().is_ok_and(f64::is_finite)
    };
    if ok {
        Ok(text)
    } else {
        Err(format!(
            "{text:?} is not {}",
            if integer { "an integer" } else { "a number" }
        ))
    }
}

impl RedisSink {
    /// Connects (lazily) and checks Redis answers.
    pub(super) async fn open(
        c: RedisSinkConfig,
        ops: Vec<Compiled>,
        ctx: SinkContext,
    ) -> Result<Self, ConnectorError> {
        let conn = RedisConn::new(c.redis_url.expose(), c.timeout.as_std())
            .map_err(|e| ConnectorError::permanent("bad_redis_url", e.to_string()))?;
        if conn.get().await.is_none() {
            return Err(ConnectorError::retriable(
                "redis_unavailable",
                "Redis does not answer",
            ));
        }
        let m = &ctx.metrics;
        Ok(Self {
            conn,
            script: redis::Script::new(SCRIPT),
            ops,
            cursor_prefix: format!("{}:{}", c.cursor_prefix, ctx.name),
            drift_warning: c.drift_warning,
            cursors: HashMap::new(),
            script_timeout: c.timeout.as_std(),
            metrics: Metrics {
                applied: m.counter(
                    "connectd_redis_sink_records_applied_total",
                    "Records whose operations were applied (cursor moved past them)",
                ),
                skipped: m.counter(
                    "connectd_redis_sink_records_skipped_total",
                    "Redelivered records at or below the cursor, not applied again",
                ),
                operations: m.counter(
                    "connectd_redis_sink_operations_total",
                    "Redis operations applied",
                ),
                poison: m.counter(
                    "connectd_redis_sink_poison_total",
                    "Records dead-lettered (bad value, missing field, refused by Redis)",
                ),
                latency: m.histogram(
                    "connectd_redis_sink_script_seconds",
                    "Time of one cursor-guarded script (one partition of a batch)",
                    LATENCY_BUCKETS,
                ),
                base: m.clone(),
            },
        })
    }

    fn cursor_key(&self, topic: &str, partition: i32) -> String {
        format!("{}:{topic}:{partition}", self.cursor_prefix)
    }

    /// The record's operations, rendered; `Err` makes it poison.
    fn prepare(&self, v: &Value, now_ms: u64) -> Result<Vec<ScriptOp>, String> {
        let mut out = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            out.push(match op {
                Compiled::Zincrby(k, m, by) => {
                    ("z", k.render(v)?, vec![m.render(v)?, number(by, v, false)?])
                }
                Compiled::Incrby(k, by) => ("i", k.render(v)?, vec![number(by, v, true)?]),
                Compiled::Hincrby(k, f, by) => {
                    ("h", k.render(v)?, vec![f.render(v)?, number(by, v, true)?])
                }
                Compiled::Hset(k, fields) => {
                    let mut args = vec![fields.len().to_string()];
                    for (name, t) in fields {
                        args.push(name.clone());
                        args.push(t.render(v)?);
                    }
                    ("s", k.render(v)?, args)
                }
                Compiled::Xadd(k, fields, trim) => {
                    let (kind, arg) = match trim {
                        Trim::None => ("n", "0".to_string()),
                        Trim::MaxLen(n) => ("l", n.to_string()),
                        Trim::MaxAgeMs(age) => ("m", format!("{}-0", now_ms.saturating_sub(*age))),
                    };
                    let mut args = vec![kind.to_string(), arg, fields.len().to_string()];
                    for (name, t) in fields {
                        args.push(name.clone());
                        args.push(t.render(v)?);
                    }
                    ("x", k.render(v)?, args)
                }
                Compiled::Set(k, val, ttl) => {
                    ("t", k.render(v)?, vec![val.render(v)?, ttl.to_string()])
                }
            });
        }
        Ok(out)
    }

    /// Runs the script for one partition's records; returns the failed offsets with Redis' error.
    async fn apply(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        records: &[Prepared],
    ) -> Result<HashMap<i64, String>, ConnectorError> {
        let mut keys: Vec<String> = vec![self.cursor_key(topic, partition)];
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut inv = self.script.prepare_invoke();
        for r in records {
            inv.arg(r.offset).arg(r.ops.len());
            for (code, key, args) in &r.ops {
                let at = *index.entry(key.as_str()).or_insert_with(|| {
                    keys.push(key.clone());
                    keys.len()
                });
                inv.arg(*code).arg(at);
                for a in args {
                    inv.arg(a);
                }
            }
        }
        for k in &keys {
            inv.key(k);
        }
        let started = Instant::now();
        let mut conn = self.conn.get().await.ok_or_else(|| {
            ConnectorError::retriable("redis_unavailable", "Redis does not answer")
        })?;
        let reply: (i64, i64, u64, u64, Vec<redis::Value>) =
            match tokio::time::timeout(self.script_timeout, inv.invoke_async(&mut conn)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    return Err(ConnectorError::retriable(
                        "redis_error",
                        format!("the cursor script failed: {e}"),
                    ))
                }
                Err(_) => {
                    return Err(ConnectorError::retriable(
                        "redis_timeout",
                        "the cursor script did not answer in time",
                    ))
                }
            };
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        let (before, now, applied, skipped, failed) = reply;
        self.metrics.applied.add(applied);
        self.metrics.skipped.add(skipped);
        let ops_applied: usize = records
            .iter()
            .filter(|r| r.offset > before)
            .map(|r| r.ops.len())
            .sum();
        self.metrics.operations.add(ops_applied as u64);
        // Drift: where the cursor was against where this batch starts.
        let first = records.first().map_or(now, |r| r.offset);
        let drift = before - (first - 1);
        if drift.unsigned_abs() > self.drift_warning {
            tracing::warn!(
                topic = %topic, partition, cursor = before, batch_starts_at = first, drift,
                "redis_sink cursor drift: {}",
                if drift > 0 { "the cursor is ahead of the records delivered (they were skipped as already applied)" } else { "the cursor is behind: records between it and this batch were never applied through it" }
            );
        }
        let labelled = self
            .metrics
            .base
            .with_label("topic", topic)
            .with_label("partition", &partition.to_string());
        labelled
            .gauge(
                "connectd_redis_sink_cursor_drift",
                "Cursor found minus the offset before the batch (>0: skipped as applied, <0: a gap)",
            )
            .set(drift);
        let c = self
            .cursors
            .entry((topic.clone(), partition))
            .or_insert(Cursor {
                at: before,
                moved: Instant::now(),
                drift,
            });
        if now != c.at {
            c.moved = Instant::now();
        }
        c.at = now;
        c.drift = drift;
        labelled
            .gauge(
                "connectd_redis_sink_cursor_age_seconds",
                "Seconds since this instance last moved the partition's cursor",
            )
            .set(c.moved.elapsed().as_secs() as i64);
        let mut errors = HashMap::new();
        for pair in failed.chunks(2) {
            if let [off, err] = pair {
                let off: i64 = redis::from_redis_value(off.clone()).unwrap_or(-1);
                let err: String =
                    redis::from_redis_value(err.clone()).unwrap_or_else(|_| format!("{err:?}"));
                errors.insert(off, err);
            }
        }
        Ok(errors)
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let mut outcomes: Vec<RecordOutcome> = vec![RecordOutcome::Delivered; batch.len()];
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        // Partitions in order of first appearance, records in batch order within each.
        let mut groups: Vec<((Arc<str>, i32), Vec<Prepared>)> = Vec::new();
        for (index, r) in batch.iter().enumerate() {
            let Some(origin) = &r.origin else {
                outcomes[index] = poison(
                    "no_origin",
                    "a record without topic/partition/offset cannot be guarded by the cursor",
                );
                continue;
            };
            let v: Value = match serde_json::from_slice(&r.value) {
                Ok(v) => v,
                Err(e) => {
                    outcomes[index] = poison("invalid_json", format!("the value is not JSON: {e}"));
                    continue;
                }
            };
            let ops = match self.prepare(&v, now_ms) {
                Ok(o) => o,
                Err(e) => {
                    outcomes[index] = poison("bad_field", e);
                    continue;
                }
            };
            let tp = (origin.topic.clone(), origin.partition);
            let p = Prepared {
                index,
                offset: origin.offset,
                ops,
            };
            match groups.iter_mut().find(|(k, _)| *k == tp) {
                Some((_, v)) => v.push(p),
                None => groups.push((tp, vec![p])),
            }
        }
        for ((topic, partition), records) in &groups {
            let failed = self.apply(topic, *partition, records).await?;
            for r in records {
                if let Some(err) = failed.get(&r.offset) {
                    outcomes[r.index] = poison(
                        "redis_refused",
                        format!("Redis refused an operation: {err}"),
                    );
                }
            }
        }
        let bad = outcomes.iter().filter(|o| !o.is_delivered()).count();
        self.metrics.poison.add(bad as u64);
        Ok(outcomes)
    }

    async fn stored_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Option<HashMap<TopicPartition, i64>>, ConnectorError> {
        if partitions.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        let keys: Vec<String> = partitions
            .iter()
            .map(|tp| self.cursor_key(&tp.topic, tp.partition))
            .collect();
        let mut cmd = redis::cmd("MGET");
        for k in &keys {
            cmd.arg(k);
        }
        let values: Vec<Option<i64>> = self.conn.call(&cmd).await.map_err(|e| {
            ConnectorError::retriable("redis_unavailable", format!("reading the cursors: {e}"))
        })?;
        Ok(Some(
            partitions
                .iter()
                .zip(values)
                .filter_map(|(tp, v)| v.map(|c| (tp.clone(), c + 1)))
                .collect(),
        ))
    }

    fn status(&self) -> Value {
        let cursors: serde_json::Map<String, Value> = self
            .cursors
            .iter()
            .map(|((t, p), c)| {
                (
                    format!("{t}/{p}"),
                    json!({"cursor": c.at, "drift": c.drift, "seconds_since_moved": c.moved.elapsed().as_secs()}),
                )
            })
            .collect();
        json!({
            "records_applied": self.metrics.applied.get(),
            "records_skipped_as_applied": self.metrics.skipped.get(),
            "operations_applied": self.metrics.operations.get(),
            "poison": self.metrics.poison.get(),
            "cursors": cursors,
        })
    }
}
