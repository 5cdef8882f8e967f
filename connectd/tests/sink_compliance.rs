//! The built-in sinks pass the compliance harness of `connector-core` (feature `testing`)
//! against the real Postgres.

mod common;

use common::*;
use connectd_sinks::dlq::{DlqSinkConfig, DlqSinkPlugin};
use connectd_sinks::postgres::{PostgresSinkConfig, PostgresSinkPlugin};
use connector_core::testing::{Probe, SinkHarness};
use connector_core::{async_trait, Record};

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
