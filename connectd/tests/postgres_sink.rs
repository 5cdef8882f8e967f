//! postgres_sink, dlq_sink, migrations and `connectd dlq` against real Postgres and broker
//! (issue 6).

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn make_table(pool: &sqlx::PgPool, name: &str, unique_key: bool, extra: &str) {
    let key = if unique_key {
        ", PRIMARY KEY (idempotency_key, event_ts)"
    } else {
        ""
    };
    sqlx::query(&format!(
        "CREATE TABLE {name} (idempotency_key TEXT NOT NULL, event_ts TIMESTAMPTZ NOT NULL, trace_id TEXT, \
         schema_version INTEGER, source TEXT NOT NULL, event_type TEXT NOT NULL CHECK (length(event_type) <= 200), \
         user_id UUID NOT NULL, payload JSONB NOT NULL, ingested_at TIMESTAMPTZ NOT NULL{key}{extra})"
    ))
    .execute(pool)
    .await
    .expect("create table");
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

fn sink_yaml(name: &str, input: &str, table: &str, db: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    type: postgres_sink
    input: {input}
    dlq_topic: {input}-dlq
    database_url: {db}
    table: {table}
    retry:
      initial_backoff: 100ms
      max_backoff: 1s
    batch:
      max_records: 5000
      linger: 50ms
{extra}"#
    )
}

fn file(connectors: &str) -> String {
    format!("kafka:\n  brokers: ${{KAFKA_BROKERS}}\nadmin:\n  listen: ${{CONNECTD_ADMIN}}\nshutdown_timeout: 5s\nconnectors:\n{connectors}")
}

async fn wait_count(pool: &sqlx::PgPool, sql: &str, want: i64, timeout: Duration) -> i64 {
    let start = Instant::now();
    loop {
        let n = count(pool, sql).await;
        if n >= want || start.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_with_duplicates_delivered_twice_store_each_once() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("pg-in");
    let table = unique("ev").replace('-', "_");
    make_table(&pool, &table, true, "").await;
    create_topic(&input, 6).await;
    let mut events = envelopes(&table, 100_000);
    let dups: Vec<String> = events.iter().step_by(10).cloned().collect();
    events.extend(dups);
    let ends = produce(&input, &events).await;
    let yaml = file(&format!(
        "{}{}",
        sink_yaml(
            "first",
            &input,
            &table,
            "${DATABASE_URL}",
            &format!("    group_id: {input}-a\n")
        ),
        sink_yaml(
            "second",
            &input,
            &table,
            "${DATABASE_URL}",
            &format!("    group_id: {input}-b\n")
        ),
    ));
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    wait_committed(
        &format!("{input}-a"),
        &input,
        &ends,
        Duration::from_secs(240),
    )
    .await;
    wait_committed(
        &format!("{input}-b"),
        &input,
        &ends,
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(
        count(&pool, &format!("SELECT count(*) FROM {table}")).await,
        100_000,
        "log:\n{}",
        c.log_text()
    );
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(DISTINCT idempotency_key) FROM {table}")
        )
        .await,
        100_000
    );
    let (_, metrics) = c.get("/metrics").await;
    let inserted: u64 = ["first", "second"]
        .iter()
        .map(|n| {
            metric(
                &metrics,
                &format!("connectd_pg_rows_inserted_total{{connector=\"{n}\"}}"),
            )
        })
        .sum();
    let dup: u64 = ["first", "second"]
        .iter()
        .map(|n| {
            metric(
                &metrics,
                &format!("connectd_pg_rows_duplicate_total{{connector=\"{n}\"}}"),
            )
        })
        .sum();
    assert_eq!(inserted, 100_000);
    assert_eq!(
        dup, 120_000,
        "10k in-stream duplicates twice plus 100k redelivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_poison_rows_in_5000_are_dead_lettered_with_sqlstate_and_the_rest_written() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("pg-poison");
    let table = unique("ev").replace('-', "_");
    let sink = unique("sink");
    make_table(&pool, &table, true, "").await;
    create_topic(&input, 1).await;
    let mut events = envelopes(&table, 5000);
    let set = |e: &str, k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(e).expect("json");
        j[k] = v;
        j.to_string()
    };
    events[100] = set(&events[100], "user_id", serde_json::json!("not-a-uuid"));
    events[2500] = set(
        &events[2500],
        "event_type",
        serde_json::json!("x".repeat(300)),
    );
    events[4900] = set(
        &events[4900],
        "event_ts",
        serde_json::json!("2026-13-45T99:00:00Z"),
    );
    let ends = produce(&input, &events).await;
    let yaml = file(&format!(
        "{}  - name: {sink}-dlq\n    type: dlq_sink\n    input: {input}-dlq\n    database_url: ${{DATABASE_URL}}\n",
        sink_yaml(&sink, &input, &table, "${DATABASE_URL}", ""),
    ));
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    wait_committed(
        &format!("connectd-{sink}"),
        &input,
        &ends,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        count(&pool, &format!("SELECT count(*) FROM {table}")).await,
        4997,
        "log:\n{}",
        c.log_text()
    );
    let q = format!("SELECT count(*) FROM dead_letters WHERE connector = '{sink}'");
    assert_eq!(wait_count(&pool, &q, 3, Duration::from_secs(60)).await, 3);
    let rows: Vec<(String, i64, String)> = sqlx::query_as("SELECT error_class, original_offset, original_topic FROM dead_letters WHERE connector = $1 ORDER BY original_offset")
        .bind(&sink)
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(
        rows.iter().map(|r| (r.0.as_str(), r.1)).collect::<Vec<_>>(),
        [
            ("sqlstate_22P02", 100),
            ("sqlstate_23514", 2500),
            ("sqlstate_22008", 4900)
        ]
    );
    assert!(rows.iter().all(|r| r.2 == input));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_20_seconds_is_retried_to_an_exact_count_without_dead_letters() {
    let private = PrivatePg::start_new();
    let ppool = sqlx::PgPool::connect(&private.url())
        .await
        .expect("private pg");
    connectd_migrations::run(&ppool).await.expect("migrate");
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("pg-outage");
    let sink = unique("sink");
    create_topic(&input, 3).await;
    let first = envelopes(&sink, 20_000);
    produce(&input, &first[..10_000]).await;
    let yaml = file(
        &sink_yaml(
            &sink,
            &input,
            "growth_events",
            &private.url(),
            "    batch:\n      max_records: 500\n      linger: 10ms\n",
        )
        .replace(
            "    batch:\n      max_records: 5000\n      linger: 50ms\n",
            "",
        ),
    );
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
    let q = "SELECT count(*) FROM growth_events";
    assert_eq!(
        wait_count(&ppool, q, 10_000, Duration::from_secs(60)).await,
        10_000
    );
    ppool.close().await;
    private.stop();
    let ends = produce(&input, &first[10_000..]).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, status) = c.get(&format!("/connectors/{sink}")).await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert!(
        ["degraded", "restarting"].contains(&status["state"].as_str().unwrap_or("")),
        "{status}"
    );
    private.start();
    let ppool = sqlx::PgPool::connect(&private.url())
        .await
        .expect("private pg again");
    assert_eq!(
        wait_count(&ppool, q, 20_000, Duration::from_secs(120)).await,
        20_000,
        "log:\n{}",
        c.log_text()
    );
    let mut all_ends = ends.clone();
    let _ = &mut all_ends;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&ppool, q).await, 20_000);
    let (_, metrics) = c.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            &format!("connectd_dlq_records_total{{connector=\"{sink}\"}}")
        ),
        0,
        "no dead letters for an outage"
    );
    assert!(
        metric(
            &metrics,
            &format!("connectd_retries_total{{connector=\"{sink}\"}}")
        ) + metric(
            &metrics,
            &format!("connectd_restarts_total{{connector=\"{sink}\"}}")
        ) > 0
    );
    ppool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_a_table_without_a_key_survives_three_kill_9() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("pg-eo");
    let table = unique("eo").replace('-', "_");
    let sink = unique("sink");
    make_table(&pool, &table, false, "").await;
    create_topic(&input, 3).await;
    let events = envelopes(&table, 30_000);
    let ends = produce(&input, &events).await;
    let yaml = file(
        &sink_yaml(
            &sink,
            &input,
            &table,
            "${DATABASE_URL}",
            "    conflict: []\n    exactly_once: true\n",
        )
        .replace("max_records: 5000", "max_records: 300"),
    );
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let env = [("DATABASE_URL", database_url())];
    let q = format!("SELECT count(*) FROM {table}");
    for stop_at in [3_000, 12_000, 21_000] {
        let mut c = Connectd::start(&cfg, &dir.path().join("log"), &env);
        let n = wait_count(&pool, &q, stop_at, Duration::from_secs(90)).await;
        assert!(n >= stop_at, "stalled at {n}; log:\n{}", c.log_text());
        c.kill9();
    }
    let _c = Connectd::start(&cfg, &dir.path().join("log"), &env);
    assert_eq!(
        wait_count(&pool, &q, 30_000, Duration::from_secs(120)).await,
        30_000
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&pool, &q).await, 30_000, "no record stored twice");
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(DISTINCT idempotency_key) FROM {table}")
        )
        .await,
        30_000
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::bigint FROM connectd_offsets WHERE group_id = $1 AND topic = $2",
    )
    .bind(format!("connectd-{sink}"))
    .bind(&input)
    .fetch_one(&pool)
    .await
    .expect("offsets");
    assert_eq!(stored, ends.values().sum::<i64>());
}

#[tokio::test]
async fn migrations_apply_twice_and_the_timescale_step_is_skipped_without_the_extension() {
    let pool = pg().await;
    for _ in 0..2 {
        let ts = connectd_migrations::run(&pool).await.expect("migrations");
        let available: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
                .fetch_optional(&pool)
                .await
                .expect("q");
        if available.is_none() {
            assert_eq!(ts, connectd_migrations::Timescale::NotAvailable);
        }
    }
    for t in [
        "api_keys",
        "growth_events",
        "dead_letters",
        "connectd_offsets",
    ] {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = $1",
        )
        .bind(t)
        .fetch_one(&pool)
        .await
        .expect("q");
        assert!(n >= 1, "{t} missing");
    }
    let _: Vec<(Option<chrono::DateTime<chrono::Utc>>, Option<i64>)> =
        sqlx::query_as("SELECT day, active_users FROM daily_active_users LIMIT 1")
            .fetch_all(&pool)
            .await
            .expect("daily_active_users answers");
    let out = connectd_cmd(&["migrate"], &[("DATABASE_URL", database_url())]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_after_a_fix_writes_the_records_and_a_second_replay_past_the_limit_is_refused() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("pg-replay");
    let table = unique("rp").replace('-', "_");
    let sink = unique("sink");
    make_table(
        &pool,
        &table,
        true,
        ", CONSTRAINT no_blocked CHECK (event_type <> 'blocked')",
    )
    .await;
    create_topic(&input, 1).await;
    let mut events = envelopes(&table, 100);
    for i in [5, 50, 95] {
        let mut j: serde_json::Value = serde_json::from_str(&events[i]).expect("json");
        j["event_type"] = serde_json::json!("blocked");
        events[i] = j.to_string();
    }
    produce(&input, &events).await;
    let yaml = file(&format!(
        "{}  - name: {sink}-dlq\n    type: dlq_sink\n    input: {input}-dlq\n    database_url: ${{DATABASE_URL}}\n",
        sink_yaml(&sink, &input, &table, "${DATABASE_URL}", ""),
    ));
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let _c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    let dl = format!("SELECT count(*) FROM dead_letters WHERE connector = '{sink}'");
    assert_eq!(wait_count(&pool, &dl, 3, Duration::from_secs(90)).await, 3);
    assert_eq!(
        count(&pool, &format!("SELECT count(*) FROM {table}")).await,
        97
    );

    let env = [
        ("DATABASE_URL", database_url()),
        ("KAFKA_BROKERS", brokers()),
    ];
    let dry = connectd_cmd(&["dlq", "replay", "--connector", &sink, "--dry-run"], &env);
    assert!(dry.status.success());
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("sqlstate_23514"),
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );
    let list = connectd_cmd(&["dlq", "list", "--connector", &sink, "--json"], &env);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 3);

    // Fix the cause, replay: the three records are written.
    sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT no_blocked"))
        .execute(&pool)
        .await
        .expect("fix");
    let out = connectd_cmd(
        &["dlq", "replay", "--connector", &sink, "--max-replays", "1"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        wait_count(
            &pool,
            &format!("SELECT count(*) FROM {table}"),
            100,
            Duration::from_secs(60)
        )
        .await,
        100
    );

    // Break it again with new poison; a replayed record that dies again is refused at the limit.
    sqlx::query(&format!(
        "ALTER TABLE {table} ADD CONSTRAINT no_blocked2 CHECK (event_type <> 'blocked2')"
    ))
    .execute(&pool)
    .await
    .expect("break");
    let mut j: serde_json::Value = serde_json::from_str(&events[7]).expect("json");
    j["event_type"] = serde_json::json!("blocked2");
    j["idempotency_key"] = serde_json::json!("again");
    produce(&input, &[j.to_string()]).await;
    assert_eq!(wait_count(&pool, &dl, 4, Duration::from_secs(60)).await, 4);
    let first = connectd_cmd(
        &["dlq", "replay", "--connector", &sink, "--max-replays", "1"],
        &env,
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // It fails again and comes back with replay count 1: now past the limit.
    assert_eq!(wait_count(&pool, &dl, 5, Duration::from_secs(60)).await, 5);
    let second = connectd_cmd(
        &["dlq", "replay", "--connector", &sink, "--max-replays", "1"],
        &env,
    );
    assert_eq!(
        second.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("refused 1"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
}

/// A topic recreated (or a broker that lost its data) under an exactly-once sink: the offsets
/// the sink stored point past the new partition's end. The connector must stop, saying why,
/// rather than skip every new record below the stale offset; once the operator resets the
/// stored offsets, resuming stores every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_beyond_the_partitions_end_fails_the_connector_instead_of_skipping() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("pg-stale");
    let table = unique("stale").replace('-', "_");
    let sink = unique("sink");
    let group = format!("connectd-{sink}");
    make_table(&pool, &table, true, "").await;
    create_topic(&input, 2).await;
    let ends = produce(&input, &envelopes(&table, 400)).await;
    assert!(ends.values().all(|&e| e > 0 && e < 5000), "{ends:?}");
    // What an earlier life of the topic left in the sink's own offsets table.
    sqlx::query("INSERT INTO connectd_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, 0, 5000)")
        .bind(&group)
        .bind(&input)
        .execute(&pool)
        .await
        .expect("stale offset");
    let yaml = file(&sink_yaml(
        &sink,
        &input,
        &table,
        "${DATABASE_URL}",
        "    exactly_once: true\n",
    ));
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    let start = Instant::now();
    let status = loop {
        let (code, body) = c.get(&format!("/connectors/{sink}")).await;
        if code == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            if v["state"] == "failed" {
                break v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the connector did not fail; log:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = status["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "stored offset 5000 for {input}[0] is beyond the partition's end (no record at 4999"
        )),
        "{why}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let q = format!("SELECT count(*) FROM {table}");
    assert_eq!(
        count(&pool, &q).await,
        0,
        "nothing consumed while the offsets are stale"
    );

    // The operator's reset (README, Operating notes), then resume.
    sqlx::query("DELETE FROM connectd_offsets WHERE group_id = $1 AND topic = $2")
        .bind(&group)
        .bind(&input)
        .execute(&pool)
        .await
        .expect("reset");
    let (code, body) = c.post(&format!("/connectors/{sink}/resume")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        wait_count(&pool, &q, 400, Duration::from_secs(60)).await,
        400,
        "log:\n{}",
        c.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&pool, &q).await, 400);
    let stored: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::bigint FROM connectd_offsets WHERE group_id = $1 AND topic = $2",
    )
    .bind(&group)
    .bind(&input)
    .fetch_one(&pool)
    .await
    .expect("offsets");
    assert_eq!(stored, ends.values().sum::<i64>());
}
