//! The hot tier on plain PostgreSQL (issue 20): converting a table with rows into daily
//! partitions, and retention dropping only partitions older than the limit while rows keep
//! arriving through postgres_sink.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{Duration as Days, NaiveDate, Utc};
use common::*;
use connectd_sinks::postgres::partitions::{maintain, Partitioning};
use serde_json::Value;

/// The columns, key and index of growth_events (migration 0002), under another name.
async fn create_plain(pool: &sqlx::PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (
            idempotency_key TEXT NOT NULL, event_ts TIMESTAMPTZ NOT NULL, trace_id TEXT,
            schema_version INTEGER NOT NULL DEFAULT 1, source TEXT NOT NULL,
            event_type TEXT NOT NULL CHECK (length(event_type) <= 200), user_id UUID NOT NULL,
            payload JSONB NOT NULL DEFAULT '{{}}'::jsonb, ingested_at TIMESTAMPTZ NOT NULL,
            stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (idempotency_key, event_ts))"
    ))
    .execute(pool)
    .await
    .expect("create");
    sqlx::query(&format!(
        "CREATE INDEX {table}_user ON {table} (user_id, event_type, event_ts)"
    ))
    .execute(pool)
    .await
    .expect("index");
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Envelope `i` of `prefix` on `day` (spread over the day's hours).
fn event(prefix: &str, i: usize, day: NaiveDate) -> String {
    serde_json::json!({
        "idempotency_key": format!("{prefix}-{i}"),
        "trace_id": "t",
        "schema_version": 1,
        "source": prefix,
        "event_type": "page_view",
        "user_id": uuid::Uuid::from_u128(i as u128 % 100 + 1).to_string(),
        "event_ts": format!("{}T{:02}:{:02}:00Z", day.format("%Y-%m-%d"), i % 24, i % 60),
        "payload": {"i": i},
        "ingested_at": "2026-11-23T12:00:00Z"
    })
    .to_string()
}

/// (partition, rows) of every partition of `table`.
async fn rows_by_partition(pool: &sqlx::PgPool, table: &str) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1"
    ))
    .fetch_all(pool)
    .await
    .expect("count");
    rows.into_iter().collect()
}

async fn partition_names(pool: &sqlx::PgPool, table: &str) -> Vec<String> {
    let mut v: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1) ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("partitions");
    v.sort();
    v.into_iter().map(|(n,)| n).collect()
}

fn pname(table: &str, d: NaiveDate) -> String {
    format!("{table}_p{}", d.format("%Y%m%d"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converting_a_table_with_rows_puts_each_row_in_its_day_and_keeps_its_views() {
    let pool = pg().await;
    let table = unique("conv").replace('-', "_");
    create_plain(&pool, &table).await;
    let days: Vec<NaiveDate> = (0..10).map(|i| today() - Days::days(40 - 3 * i)).collect();
    for (n, d) in days.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO {table} (idempotency_key, event_ts, source, event_type, user_id, ingested_at)
             SELECT 'k' || $1 || '-' || g, $2::date + g * interval '1 minute', 's', 'e', gen_random_uuid(), now()
             FROM generate_series(0, 499) g"
        ))
        .bind(n as i32)
        .bind(*d)
        .execute(&pool)
        .await
        .expect("rows");
    }
    sqlx::query(&format!(
        "CREATE VIEW {table}_daily AS SELECT (event_ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM {table} GROUP BY 1"
    ))
    .execute(&pool)
    .await
    .expect("view");
    let url = database_url();
    let out = connectd_cmd(
        &["postgres", "partition", "--table", &table, "--premake", "2"],
        &[("DATABASE_URL", url.clone())],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 10 days of rows + today and 2 ahead.
    assert!(
        stdout.contains(&format!(
            "{table}: 5000 rows copied into 13 daily partitions"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{table}_daily")), "{stdout}");
    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)")
            .bind(&table)
            .fetch_one(&pool)
            .await
            .expect("kind");
    assert_eq!(kind, "p");
    let by = rows_by_partition(&pool, &table).await;
    for d in &days {
        assert_eq!(by.get(&pname(&table, *d)), Some(&500), "{by:?}");
    }
    assert_eq!(by.values().sum::<i64>(), 5000);
    assert!(!by.contains_key(&format!("{table}_default")), "{by:?}");
    // Every row is in the partition of its UTC day.
    let misplaced: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE tableoid::regclass::text <> '{table}_p' || to_char(event_ts AT TIME ZONE 'UTC', 'YYYYMMDD')"
    ))
    .fetch_one(&pool)
    .await
    .expect("misplaced");
    assert_eq!(misplaced, 0);
    // The view reads the new table; the key still refuses a duplicate.
    let viewed: i64 = sqlx::query_scalar(&format!("SELECT sum(n)::bigint FROM {table}_daily"))
        .fetch_one(&pool)
        .await
        .expect("view");
    assert_eq!(viewed, 5000);
    let dup = sqlx::query(&format!(
        "INSERT INTO {table} (idempotency_key, event_ts, source, event_type, user_id, ingested_at) \
         SELECT idempotency_key, event_ts, source, event_type, user_id, ingested_at FROM {table} LIMIT 1"
    ))
    .execute(&pool)
    .await;
    assert!(
        dup.is_err(),
        "the primary key holds on the partitioned table"
    );
    let again = connectd_cmd(
        &["postgres", "partition", "--table", &table],
        &[("DATABASE_URL", url)],
    );
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already partitioned"));
}

/// A daily partition of `d` with 100 rows of source `old`.
async fn old_day(pool: &sqlx::PgPool, table: &str, d: NaiveDate) {
    sqlx::query(&format!(
        "CREATE TABLE {p} PARTITION OF {table} FOR VALUES FROM ('{d} 00:00+00') TO ('{e} 00:00+00')",
        p = pname(table, d),
        e = d + Days::days(1)
    ))
    .execute(pool)
    .await
    .expect("old partition");
    sqlx::query(&format!(
        "INSERT INTO {table} (idempotency_key, event_ts, source, event_type, user_id, ingested_at)
         SELECT 'old-' || $1 || '-' || g, $1::date + g * interval '1 minute', 'old', 'e', gen_random_uuid(), now()
         FROM generate_series(0, 99) g"
    ))
    .bind(d)
    .execute(pool)
    .await
    .expect("old rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_only_partitions_older_than_the_limit_while_rows_keep_arriving() {
    let pool = pg().await;
    let table = unique("ret").replace('-', "_");
    let t0 = today();
    // A partitioned table that has been running for a week: old days with rows.
    create_plain(&pool, &table).await;
    let conv = connectd_cmd(
        &["postgres", "partition", "--table", &table, "--premake", "0"],
        &[("DATABASE_URL", database_url())],
    );
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    for back in [6, 7] {
        old_day(&pool, &table, t0 - Days::days(back)).await;
    }
    // Events of the last 6 days arrive while connectd runs; retention keeps 3 days.
    let input = unique("ret-in");
    create_topic(&input, 3).await;
    let prefix = unique("rt");
    let mut sent: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    let values: Vec<String> = (0..12_000)
        .map(|i| {
            let d = t0 - Days::days((i % 6) as i64);
            *sent.entry(d).or_default() += 1;
            event(&prefix, i, d)
        })
        .collect();
    let name = unique("ret");
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = write_file(
        tmp.path(),
        "c.yaml",
        &format!(
            r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
connectors:
  - name: {name}
    type: postgres_sink
    input: {input}
    dlq_topic: {input}-dlq
    database_url: ${{DATABASE_URL}}
    table: {table}
    partitioning: {{ premake: 2, retention: 3d, check_every: 1s }}
    batch: {{ max_records: 500, linger: 20ms }}
"#
        ),
    );
    let c = Connectd::start(
        &cfg,
        &tmp.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    for (i, chunk) in values.chunks(1_000).enumerate() {
        produce(&input, chunk).await;
        if i == 4 {
            // A day ages out mid-stream: the next round drops it while rows keep arriving.
            old_day(&pool, &table, t0 - Days::days(8)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE source = $1"))
            .bind(&prefix)
            .fetch_one(&pool)
            .await
            .expect("count");
        if n >= values.len() as i64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored, values.len() as i64, "{}", c.log_text());
    // The partitions are exactly today-3 .. today+2: older ones (and their rows) are gone.
    let keep: Vec<String> = (-3..=2)
        .map(|k| pname(&table, t0 + Days::days(k)))
        .collect();
    let mut want = keep.clone();
    want.push(format!("{table}_default"));
    want.sort();
    assert_eq!(partition_names(&pool, &table).await, want);
    let old: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE source = 'old'"
    ))
    .fetch_one(&pool)
    .await
    .expect("old");
    assert_eq!(old, 0, "rows of expired partitions");
    let (_, text) = c.get("/metrics").await;
    let expired = metric(
        &text,
        &format!("connectd_postgres_sink_partitions_expired_total{{connector=\"{name}\"}}"),
    );
    assert_eq!(expired, 3, "days -6, -7 at start and -8 mid-stream");
    // Kept days: every event in its day's partition; expired days: in the default partition.
    let by = rows_by_partition(&pool, &table).await;
    let mut in_default = 0;
    for (d, n) in &sent {
        if *d >= t0 - Days::days(3) {
            assert_eq!(by.get(&pname(&table, *d)), Some(n), "{d}: {by:?}");
        } else {
            in_default += n;
        }
    }
    assert_eq!(
        by.get(&format!("{table}_default")).copied().unwrap_or(0),
        in_default,
        "{by:?}"
    );
    // The metric counts what the default partition holds (after the next round).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = c.get("/metrics").await;
        let m = metric(
            &text,
            &format!("connectd_postgres_sink_default_partition_rows{{connector=\"{name}\"}}"),
        );
        if m == in_default as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metric {m}, default rows {in_default}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, status) = c.get(&format!("/connectors/{name}")).await;
    let s: Value = serde_json::from_str(&status).expect("status");
    assert_eq!(s["state"], "running", "{s}");
    // While another process holds the table's maintenance lock, a round does nothing.
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('connectd:partitions:' || $1))")
        .bind(&table)
        .execute(&mut *tx)
        .await
        .expect("lock");
    let p: Partitioning =
        serde_json::from_value(serde_json::json!({"retention": "1d"})).expect("settings");
    let round = maintain(&pool, &table, &p, t0).await.expect("round");
    assert!(!round.ran && round.expired.is_empty(), "{round:?}");
    tx.rollback().await.expect("rollback");
}
