//! `dlq_sink`: stores dead letters (SPEC §9) in the `dead_letters` table, one row per dead
//! letter **as what it is**: (failing connector, error class, the record's idempotency key,
//! replay generation). A poison event that reaches a connector twice — redelivered after a crash,
//! so at a new offset — is one row whose `copies` counts the distinct copies and whose
//! `origins` lists where they came from (the first 64; `last_seen` says when the latest came). A record without an
//! idempotency key (see [`Record::idempotency_key`]) is identified by its origin coordinates
//! instead, as before. A replayed record that fails again carries a higher
//! `connectd.replay.count` (its `generation`) and is a row of its own (the replay loop guard
//! counts those).
//! Replay with `connectd dlq replay`.
//!
//! Each row keeps the payload (bytes, plus `payload_json` when it is valid JSON), the key, every
//! header, the error class and message, the origin topic/partition/offset of the first copy, the
//! connector, attempts, first/last seen and the replay count (`connectd.replay.count` header). A
//! record without `connectd.*` headers (e.g. produced straight into the DLQ topic) is stored with
//! its own coordinates as origin and connector `unknown`.

use std::collections::HashMap;

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Settings of a `dlq_sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqSinkConfig {
    /// PostgreSQL URL.
    pub database_url: Secret,
    /// Apply the migrations at start-up.
    #[serde(default = "yes")]
    pub auto_migrate: bool,
    /// Connections in the pool.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 20))]
    pub pool_size: u32,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

/// The `dlq_sink`.
pub struct DlqSink {
    pool: sqlx::PgPool,
    stored: Counter,
}

/// Most origins remembered per dead letter (see `copies`).
const MAX_ORIGINS: usize = 64;

const INSERT: &str = "INSERT INTO dead_letters (dlq_topic, original_topic, original_partition, original_offset, connector, \
    error_class, error_message, attempts, record_key, payload, payload_json, headers, failed_at, replay_count, \
    generation, idempotency_key, identity, copies, origins) \
    SELECT d, t, p, o, c, cl, m, a, k, pl, pj, h, f, r, r, ik, i, cardinality(string_to_array(og, ' ')), string_to_array(og, ' ') \
    FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::int[], \
    $9::bytea[], $10::bytea[], $11::jsonb[], $12::jsonb[], $13::timestamptz[], $14::int[], $15::text[], $16::text[], \
    $17::text[]) AS u(d, t, p, o, c, cl, m, a, k, pl, pj, h, f, r, ik, i, og) \
    ON CONFLICT (connector, error_class, identity, generation) DO UPDATE SET \
    last_seen = now(), error_message = EXCLUDED.error_message, attempts = EXCLUDED.attempts, \
    copies = dead_letters.copies + (SELECT count(*) FROM unnest(EXCLUDED.origins) AS n(o) \
        WHERE NOT (n.o = ANY(dead_letters.origins)))::int, \
    origins = (dead_letters.origins || ARRAY(SELECT n.o FROM unnest(EXCLUDED.origins) AS n(o) \
        WHERE NOT (n.o = ANY(dead_letters.origins))))[1:64]"; // 64 = MAX_ORIGINS

/// What makes two dead letters the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    connector: String,
    class: String,
    identity: String,
    replay: i32,
}

#[derive(Default)]
struct Cols {
    dlq_topic: Vec<String>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    connector: Vec<String>,
    class: Vec<String>,
    message: Vec<String>,
    attempts: Vec<i32>,
    key: Vec<Option<Vec<u8>>>,
    payload: Vec<Vec<u8>>,
    json: Vec<Option<Value>>,
    headers: Vec<Value>,
    failed_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    replay: Vec<i32>,
    idempotency_key: Vec<Option<String>>,
    identity: Vec<String>,
    /// Distinct origins of the row's copies in this batch (Kafka topic names have no spaces).
    origins: Vec<Vec<String>>,
}

fn payload_json(bytes: &[u8]) -> Option<Value> {
    // jsonb cannot hold \u0000.
    let text = std::str::from_utf8(bytes).ok()?;
    if text.contains("\\u0000") {
        return None;
    }
    serde_json::from_str(text).ok()
}

#[async_trait]
impl Sink for DlqSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let mut c = Cols::default();
        let mut seen: HashMap<Identity, usize> = HashMap::new();
        for r in batch {
            let h = &r.headers;
            let own = r.origin.as_ref();
            let topic = h
                .get_str("connectd.original.topic")
                .map(str::to_string)
                .or_else(|| own.map(|o| o.topic.to_string()))
                .unwrap_or_default();
            let partition = h
                .get_str("connectd.original.partition")
                .and_then(|v| v.parse().ok())
                .or(own.map(|o| o.partition))
                .unwrap_or(-1);
            let offset = h
                .get_str("connectd.original.offset")
                .and_then(|v| v.parse().ok())
                .or(own.map(|o| o.offset))
                .unwrap_or(-1);
            let connector = h
                .get_str("connectd.connector")
                .unwrap_or("unknown")
                .to_string();
            let class = h
                .get_str("connectd.error.class")
                .unwrap_or("unknown")
                .to_string();
            let replay: i32 = h
                .get_str("connectd.replay.count")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let message = h
                .get_str("connectd.error.message")
                .unwrap_or("no connectd.error.message header")
                .replace('\0', "");
            let attempts: i32 = h
                .get_str("connectd.attempts")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let origin = format!("{topic}/{partition}/{offset}");
            let idem = r.idempotency_key().map(|k| k.replace('\0', ""));
            let id = Identity {
                connector: connector.clone(),
                class: class.clone(),
                identity: match &idem {
                    Some(k) => format!("key:{k}"),
                    None => format!("origin:{origin}"),
                },
                replay,
            };
            if let Some(&prev) = seen.get(&id) {
                // The same dead letter twice in one batch: one row, a copy more when it came
                // from another place.
                let origins = &mut c.origins[prev];
                if origins.len() < MAX_ORIGINS && !origins.contains(&origin) {
                    origins.push(origin);
                }
                c.message[prev] = message;
                c.attempts[prev] = attempts;
                continue;
            }
            seen.insert(id.clone(), c.topic.len());
            c.idempotency_key.push(idem);
            c.identity.push(id.identity);
            c.origins.push(vec![origin]);
            let headers: Map<String, Value> = h
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        Value::String(String::from_utf8_lossy(v).replace('\0', "")),
                    )
                })
                .collect();
            c.dlq_topic
                .push(own.map(|o| o.topic.to_string()).unwrap_or_default());
            c.topic.push(topic);
            c.partition.push(partition);
            c.offset.push(offset);
            c.connector.push(connector);
            c.class.push(class);
            c.message.push(message);
            c.attempts.push(attempts);
            c.key.push(r.key.as_ref().map(|k| k.to_vec()));
            c.payload.push(r.value.to_vec());
            c.json.push(payload_json(&r.value));
            c.headers.push(Value::Object(headers));
            c.failed_at.push(
                h.get_str("connectd.failed_at")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc)),
            );
            c.replay.push(replay);
        }
        let result = sqlx::query(INSERT)
            .bind(&c.dlq_topic)
            .bind(&c.topic)
            .bind(&c.partition)
            .bind(&c.offset)
            .bind(&c.connector)
            .bind(&c.class)
            .bind(&c.message)
            .bind(&c.attempts)
            .bind(&c.key)
            .bind(&c.payload)
            .bind(&c.json)
            .bind(&c.headers)
            .bind(&c.failed_at)
            .bind(&c.replay)
            .bind(&c.idempotency_key)
            .bind(&c.identity)
            .bind(c.origins.iter().map(|o| o.join(" ")).collect::<Vec<_>>())
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => {
                self.stored.add(c.topic.len() as u64);
                Ok(vec![RecordOutcome::Delivered; batch.len()])
            }
            Err(e) => match crate::postgres::sink::classify(&e) {
                crate::postgres::sink::DbErrorClass::Fatal(m) => {
                    Err(ConnectorError::permanent("db_error", m))
                }
                crate::postgres::sink::DbErrorClass::Transient(m)
                | crate::postgres::sink::DbErrorClass::Data(_, m) => {
                    // A dead letter must never be dropped: data errors are retried too (they
                    // point at a bug here, not at the record).
                    Err(ConnectorError::retriable("db_unavailable", m))
                }
            },
        }
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        self.pool.close().await;
        Ok(())
    }
}

/// Factory of [`DlqSink`].
pub struct DlqSinkPlugin;

#[async_trait]
impl SinkPlugin for DlqSinkPlugin {
    const TYPE: &'static str = "dlq_sink";
    const DESCRIPTION: &'static str = "Stores dead letters in the dead_letters table (one row per connector, error class and idempotency key); replay with `connectd dlq replay`";
    type Config = DlqSinkConfig;

    async fn build(
        config: DlqSinkConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(config.database_url.expose())
            .await
            .map_err(|e| ConnectorError::retriable("db_unavailable", e.to_string()))?;
        if config.auto_migrate {
            connectd_migrations::run(&pool)
                .await
                .map_err(|e| ConnectorError::retriable("migrate", e.to_string()))?;
        }
        Ok(Box::new(DlqSink {
            pool,
            stored: ctx
                .metrics
                .counter("connectd_dlq_sink_stored_total", "Dead letters stored"),
        }))
    }
}
