//! The built-in sinks pass the compliance harness of `connector-core` (feature `testing`)
//! against the real Postgres.

mod common;

use common::*;
use connectd_sinks::dlq::{DlqSinkConfig, DlqSinkPlugin};
use connectd_sinks::postgres::{PostgresSinkConfig, PostgresSinkPlugin};
use connectd_sinks::redis::{RedisSinkConfig, RedisSinkPlugin};
use connector_core::testing::{Probe, SinkHarness};
use connector_core::{async_trait, Record, RecordOutcome, SinkContext, SinkPlugin};

struct TableProbe {
    pool: sqlx::PgPool,
    table: String,
}

#[async_trait]
impl Probe for TableProbe {
    async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String> {
        let keys: Vec<String> = records
            .iter()
            .map(|r| {
                r.value_json()
                    .ok()
                    .and_then(|v| v["idempotency_key"].as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT idempotency_key, count(*) FROM {} WHERE idempotency_key = ANY($1) GROUP BY 1",
            self.table
        ))
        .bind(&keys)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        let m: std::collections::HashMap<String, i64> = rows.into_iter().collect();
        Ok(keys
            .iter()
            .map(|k| m.get(k).copied().unwrap_or(0) as usize)
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_passes_the_harness() {
    let pool = pg().await;
    let table = unique("h").replace('-', "_");
    sqlx::query(&format!(
        "CREATE TABLE {table} (LIKE growth_events INCLUDING ALL)"
    ))
    .execute(&pool)
    .await
    .expect("table");
    let config: PostgresSinkConfig =
        serde_json::from_value(serde_json::json!({"database_url": database_url(), "table": table}))
            .expect("config");
    let poison = vec![
        Record::new(r#"{"idempotency_key":"p1","event_ts":"2026-01-01T00:00:00Z","source":"s","event_type":"e","user_id":"not-a-uuid","payload":{},"ingested_at":"2026-01-01T00:00:00Z"}"#).with_origin("t", 0, 10_000),
        Record::new("not json").with_origin("t", 0, 10_001),
    ];
    let report = SinkHarness::<PostgresSinkPlugin>::new(config)
        .probe(TableProbe { pool, table })
        .poison(poison)
        .batch_size(200)
        .run()
        .await;
    report.assert_passed();
}

struct DeadLetterProbe(sqlx::PgPool);

#[async_trait]
impl Probe for DeadLetterProbe {
    async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        for r in records {
            let o = r.origin.as_ref().ok_or("record without origin")?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE original_topic = $1 AND original_partition = $2 AND original_offset = $3")
                .bind(o.topic.to_string())
                .bind(o.partition)
                .bind(o.offset)
                .fetch_one(&self.0)
                .await
                .map_err(|e| e.to_string())?;
            out.push(n as usize);
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_sink_passes_the_harness() {
    let pool = pg().await;
    let config: DlqSinkConfig =
        serde_json::from_value(serde_json::json!({"database_url": database_url()}))
            .expect("config");
    let report = SinkHarness::<DlqSinkPlugin>::new(config)
        .probe(DeadLetterProbe(pool))
        .run()
        .await;
    report.assert_passed();
}

/// A dead letter as the runtime routes it: the failed record's value with the SPEC §9 headers.
fn dead_letter(connector: &str, value: &str, topic: &str, offset: i64, dlq_offset: i64) -> Record {
    Record::new(value.to_string())
        .with_header("connectd.error.class", "sqlstate_22P05")
        .with_header(
            "connectd.error.message",
            "unsupported Unicode escape sequence",
        )
        .with_header("connectd.connector", connector.to_string())
        .with_header("connectd.original.topic", topic.to_string())
        .with_header("connectd.original.partition", "0")
        .with_header("connectd.original.offset", offset.to_string())
        .with_header("connectd.attempts", "1")
        .with_origin(format!("{topic}-dlq"), 0, dlq_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_dead_lettered_at_several_offsets_is_one_row_counting_its_copies() {
    let pool = pg().await;
    let connector = unique("dl-ident");
    let topic = unique("dl-ident-topic");
    let config: DlqSinkConfig =
        serde_json::from_value(serde_json::json!({"database_url": database_url()}))
            .expect("config");
    let ctx = SinkContext::new(
        connector.clone(),
        connector.clone(),
        connector_core::metrics::Metrics::new(),
        connector_core::Shutdown::never(),
    );
    let mut sink = DlqSinkPlugin::build(config, ctx).await.expect("build");
    let poison =
        |k: &str| format!(r#"{{"idempotency_key":"{k}","payload":{{"note":"nul\u0000byte"}}}}"#);
    // p1 fails at offsets 10 and 20 (redelivered after a crash, then forwarded again by dedup),
    // p2 once; a record without idempotency key at 30 and 40 is two dead letters (by origin).
    let first = vec![
        dead_letter(&connector, &poison("p1"), &topic, 10, 0),
        dead_letter(&connector, &poison("p2"), &topic, 11, 1),
        dead_letter(&connector, "not json", &topic, 30, 2),
    ];
    let second = vec![
        dead_letter(&connector, &poison("p1"), &topic, 20, 3),
        dead_letter(&connector, "not json", &topic, 40, 4),
        // The same copy twice in one batch, and p1's first copy again (the DLQ topic redelivered).
        dead_letter(&connector, &poison("p1"), &topic, 20, 3),
        dead_letter(&connector, &poison("p1"), &topic, 10, 0),
    ];
    for batch in [&first, &second, &second] {
        let out = sink.write(batch).await.expect("write");
        assert!(out.iter().all(|o| *o == RecordOutcome::Delivered));
    }
    let rows: Vec<(Option<String>, i32, i64, Vec<String>)> = sqlx::query_as(
        "SELECT idempotency_key, copies, original_offset, origins FROM dead_letters WHERE connector = $1 ORDER BY original_offset",
    )
    .bind(&connector)
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        vec![
            (
                Some("p1".into()),
                2,
                10,
                vec![format!("{topic}/0/10"), format!("{topic}/0/20")]
            ),
            (Some("p2".into()), 1, 11, vec![format!("{topic}/0/11")]),
            (None, 1, 30, vec![format!("{topic}/0/30")]),
            (None, 1, 40, vec![format!("{topic}/0/40")]),
        ]
    );
    // A replayed record that fails again is a row of its own (the replay loop guard counts it).
    let replayed = dead_letter(&connector, &poison("p1"), &topic, 50, 5)
        .with_header("connectd.replay.count", "1");
    sink.write(&[replayed]).await.expect("write");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE connector = $1 AND idempotency_key = 'p1'",
    )
    .bind(&connector)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(n, 2);
    sink.close().await.expect("close");
}

/// Counts each record's idempotency key among the entries of a stream.
struct StreamProbe {
    url: String,
    stream: String,
}

#[async_trait]
impl Probe for StreamProbe {
    async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String> {
        let mut c = redis_conn(&self.url).await.map_err(|e| e.to_string())?;
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for (_, fields) in entries {
            if let Some(k) = fields.get(1) {
                *counts.entry(k.clone()).or_default() += 1;
            }
        }
        Ok(records
            .iter()
            .map(|r| {
                r.idempotency_key()
                    .and_then(|k| counts.get(k.as_ref()).copied())
                    .unwrap_or(0)
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sink_passes_the_harness() {
    let prefix = unique("rs-harness");
    let stream = format!("{prefix}:stream");
    let config: RedisSinkConfig = serde_json::from_value(serde_json::json!({
        "redis_url": redis_url(),
        "cursor_prefix": format!("{prefix}:cursor"),
        "operations": [
            {"zincrby": {"key": format!("{prefix}:lb:{{/event_type}}"), "member": "/user_id"}},
            {"xadd": {"key": stream, "fields": {"k": "/idempotency_key"}}}
        ]
    }))
    .expect("config");
    let poison = vec![
        Record::new("not json").with_origin("t", 0, 10_000),
        Record::new(r#"{"idempotency_key":"p","event_type":"x"}"#).with_origin("t", 0, 10_001),
    ];
    SinkHarness::<RedisSinkPlugin>::new(config)
        .probe(StreamProbe {
            url: redis_url(),
            stream,
        })
        .poison(poison)
        .run()
        .await
        .assert_passed();
}
