//! `aggregate` against real Postgres and broker (issue 17): out-of-order and late events under
//! each policy, an idle partition, and exactness under kill -9 and a second process — every
//! stored aggregate compared with the same GROUP BY computed in SQL over the raw events sent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn file(connectors: &str) -> String {
    format!("kafka:\n  brokers: ${{KAFKA_BROKERS}}\nadmin:\n  listen: ${{CONNECTD_ADMIN}}\nshutdown_timeout: 5s\nconnectors:\n{connectors}")
}

/// An aggregate connector by event type: count, sum/min/max of /amount, distinct /user_id.
fn aggregate_yaml(name: &str, input: &str, table: &str, window: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    type: aggregate
    input: {input}
    dlq_topic: {input}-dlq-{name}
    database_url: ${{DATABASE_URL}}
    table: {table}
    window: {window}
    group_by: {{ event_type: /event_type }}
    aggregates:
      events: count
      revenue: {{ sum: /amount }}
      cheapest: {{ min: /amount }}
      priciest: {{ max: /amount }}
      users: {{ count_distinct: /user_id }}
    retry:
      initial_backoff: 100ms
      max_backoff: 1s
{extra}"#
    )
}

fn event(ts: &str, ty: &str, user: u32, amount: &str) -> String {
    format!(
        r#"{{"event_ts":"{ts}","event_type":"{ty}","user_id":"u{user}","amount":{amount},"idempotency_key":"{ts}-{ty}-{user}-{amount}"}}"#
    )
}

async fn produce_to_partition(topic: &str, partition: i32, values: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for v in values {
        producer
            .send(
                FutureRecord::<str, str>::to(topic)
                    .partition(partition)
                    .payload(v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acked");
    }
}

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .fetch_one(pool)
        .await
        .expect("query")
        .unwrap_or(0)
}

async fn wait_scalar(pool: &sqlx::PgPool, sql: &str, want: i64, timeout: Duration) -> i64 {
    let start = Instant::now();
    loop {
        // The table appears when the connector has started.
        let n = sqlx::query_scalar::<_, Option<i64>>(sql)
            .fetch_one(pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        if n >= want || start.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (window_start, event_type, events, closed) rows of a table, as text.
async fn rows(pool: &sqlx::PgPool, table: &str) -> Vec<(String, String, i64, bool)> {
    sqlx::query_as(&format!(
        "SELECT to_char(window_start AT TIME ZONE 'UTC', 'HH24:MI'), event_type, events, closed FROM {table} ORDER BY 1, 2"
    ))
    .fetch_all(pool)
    .await
    .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_events_land_once_and_late_ones_follow_each_policy() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("agg-late");
    create_topic(&input, 1).await;
    let t = |p: &str| unique(&format!("agg_{p}")).replace('-', "_");
    let (t_update, t_drop, t_dlq) = (t("update"), t("drop"), t("dlq"));
    let extra = |policy: &str| {
        format!("    allowed_lateness: 30s\n    idle_timeout: 1h\n    late_events: {policy}\n")
    };
    // Connector names are unique per run: the consumer group, the stored offsets and the
    // watermark belong to the name.
    let (upd, drp, dlq) = (unique("upd"), unique("drp"), unique("dlq"));
    let yaml = file(&format!(
        "{}{}{}",
        aggregate_yaml(
            &upd,
            &input,
            &t_update,
            "{ tumbling: 1m }",
            &format!(
                "{}    output: {input}-closed\n    tick: 200ms\n",
                extra("update")
            )
        ),
        aggregate_yaml(&drp, &input, &t_drop, "{ tumbling: 1m }", &extra("drop")),
        aggregate_yaml(&dlq, &input, &t_dlq, "{ tumbling: 1m }", &extra("dlq")),
    ));
    // Record by record the watermark is the largest time minus 30 s:
    let events = [
        event("2026-11-24T10:00:10Z", "a", 1, "1"),   // W 09:59:40
        event("2026-11-24T10:00:50Z", "a", 2, "2"),   // W 10:00:20
        event("2026-11-24T10:00:20Z", "a", 3, "3"),   // out of order, within lateness: counted
        event("2026-11-24T10:01:40Z", "a", 1, "4"),   // W 10:01:10: window 10:00 closes
        event("2026-11-24T10:00:30Z", "a", 4, "5.5"), // late for 10:00
        event("2026-11-24T11:01:20+01:00", "b", 1, "6"), // 10:01:20 UTC, window 10:01 still open
        "not json".to_string(),                       // poison for every policy
    ];
    produce_to_partition(&input, 0, &events).await;
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    for table in [&t_update, &t_drop, &t_dlq] {
        let n = wait_scalar(
            &pool,
            &format!("SELECT sum(events)::bigint FROM {table}"),
            5,
            Duration::from_secs(60),
        )
        .await;
        assert!(n >= 5, "{table}: {n} events; log:\n{}", c.log_text());
    }
    // Everything is in before the counts settle; give a redelivery a chance to double-count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed_10 = |n: i64| {
        vec![
            ("10:00".to_string(), "a".to_string(), n, true),
            ("10:01".into(), "a".into(), 1, false),
            ("10:01".into(), "b".into(), 1, false),
        ]
    };
    assert_eq!(
        rows(&pool, &t_update).await,
        closed_10(4),
        "update corrects the closed row"
    );
    assert_eq!(rows(&pool, &t_drop).await, closed_10(3), "drop leaves it");
    assert_eq!(rows(&pool, &t_dlq).await, closed_10(3), "dlq leaves it");
    let (revenue, cheapest, priciest, users): (String, String, String, i64) = sqlx::query_as(&format!(
        "SELECT revenue::text, cheapest::text, priciest::text, users FROM {t_update} WHERE event_type = 'a' AND window_end = '2026-11-24T10:01:00Z'"
    ))
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(
        (
            revenue.as_str(),
            cheapest.as_str(),
            priciest.as_str(),
            users
        ),
        ("11.5", "1", "5.5", 4)
    );
    // The late event is a dead letter of the dlq connector only, with class `late`; the poison
    // record is one of every connector.
    let dead = read_all(&format!("{input}-dlq-{dlq}"), 2, Duration::from_secs(30)).await;
    let mut classes: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.headers.get("connectd.error.class").map(String::as_str))
        .collect();
    classes.sort();
    assert_eq!(classes, vec!["invalid_json", "late"], "{dead:?}");
    assert!(dead.iter().any(|d| d.value.contains("10:00:30")));
    for name in [&upd, &drp] {
        let d = read_all(&format!("{input}-dlq-{name}"), 1, Duration::from_secs(30)).await;
        assert_eq!(d.len(), 1, "{name}: only the poison record: {d:?}");
    }
    // Closed windows are published, keyed by window and group; the correction of the late
    // event is published again, so the last record of the key has the final figures. The
    // windows still open are not published.
    let closed = read_all(&format!("{input}-closed"), 1, Duration::from_secs(30)).await;
    assert!(
        !closed.is_empty(),
        "nothing published; log:\n{}",
        c.log_text()
    );
    let last: serde_json::Value =
        serde_json::from_str(&closed[closed.len() - 1].value).expect("json");
    let want = serde_json::json!({
        "window_start": "2026-11-24T10:00:00+00:00", "window_end": "2026-11-24T10:01:00+00:00",
        "event_type": "a", "events": 4, "revenue": 11.5, "cheapest": 1, "priciest": 5.5,
        "users": 4, "closed": true
    });
    assert_eq!(last, want, "{closed:?}");
    assert!(
        closed.iter().all(|r| r
            .value
            .contains("\"window_start\" : \"2026-11-24T10:00:00+00:00\"")),
        "only the closed window is published: {closed:?}"
    );
    // Flagged once acknowledged: the closed row is published, the open ones are not.
    let flagged = format!("SELECT count(*) FROM {t_update} WHERE published");
    assert_eq!(
        wait_scalar(&pool, &flagged, 1, Duration::from_secs(10)).await,
        1
    );
    assert_eq!(
        scalar(
            &pool,
            &format!("SELECT count(*) FROM {t_update} WHERE published AND closed")
        )
        .await,
        1
    );
    let (_, m) = c.get("/metrics").await;
    let late = |c: &str, p: &str| {
        format!("connectd_agg_late_events_total{{connector=\"{c}\",policy=\"{p}\"}}")
    };
    assert_eq!(metric(&m, &late(&drp, "drop")), 1, "{m}");
    assert_eq!(metric(&m, &late(&upd, "update")), 1);
    assert_eq!(metric(&m, &late(&dlq, "dlq")), 1);
    assert_eq!(
        metric(
            &m,
            &format!("connectd_agg_records_total{{connector=\"{upd}\"}}")
        ),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_does_not_hold_windows_open_forever() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("agg-idle");
    create_topic(&input, 2).await;
    let table = unique("agg_idle").replace('-', "_");
    let name = unique("idle");
    let yaml = file(&aggregate_yaml(
        &name,
        &input,
        &table,
        "{ tumbling: 1m }",
        "    idle_timeout: 2s\n    tick: 200ms\n",
    ));
    // Partition 1 never delivers anything; partition 0 moves on to 10:05.
    produce_to_partition(
        &input,
        0,
        &[
            event("2026-11-24T10:00:10Z", "a", 1, "1"),
            event("2026-11-24T10:05:00Z", "a", 1, "1"),
        ],
    )
    .await;
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("DATABASE_URL", database_url())],
    );
    let q = format!("SELECT count(*) FROM {table} WHERE closed");
    let closed = wait_scalar(&pool, &q, 1, Duration::from_secs(60)).await;
    assert_eq!(
        closed,
        1,
        "the 10:00 window closes once partition 1 is idle; log:\n{}",
        c.log_text()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rows(&pool, &table).await,
        vec![
            ("10:00".to_string(), "a".to_string(), 1, true),
            ("10:05".into(), "a".into(), 1, false)
        ],
        "the window holding the largest time stays open"
    );
    let (_, status) = c.get(&format!("/connectors/{name}")).await;
    assert!(status.contains("\"windows_closed\""), "{status}");
}

/// Events over two hours with up to two minutes of disorder, 7 types, 300 users.
fn spread_events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let base = 36_000 + (i as i64 * 7_200) / n as i64; // 10:00 .. 12:00
            let jitter = ((i * 7919) % 121) as i64; // 0..120 s back
            let s = base - jitter;
            let ts = format!(
                "2026-11-24T{:02}:{:02}:{:02}Z",
                s / 3600,
                (s / 60) % 60,
                s % 60
            );
            let ty = ["view", "click", "buy", "share", "like", "open", "close"][i % 7];
            let amount = format!("{}.{:02}", (i * 31) % 500, (i * 17) % 100);
            event(&ts, ty, (i * 13 % 300) as u32, &amount).replace("}", &format!(",\"n\":{i}}}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_and_a_second_process_leave_every_aggregate_equal_to_sql_group_by() {
    let pool = pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("agg-eo");
    create_topic(&input, 4).await;
    let tumbling = unique("agg_eo_min").replace('-', "_");
    let hopping = unique("agg_eo_hop").replace('-', "_");
    let extra = "    allowed_lateness: 10s\n    late_events: update\n    batch:\n      max_records: 400\n      linger: 20ms\n";
    let yaml = file(&format!(
        "{}{}",
        aggregate_yaml(
            &unique("minute"),
            &input,
            &tumbling,
            "{ tumbling: 1m }",
            extra
        ),
        aggregate_yaml(
            &unique("hop"),
            &input,
            &hopping,
            "{ hopping: { size: 10m, slide: 5m } }",
            extra
        ),
    ));
    const N: usize = 40_000;
    let events = spread_events(N);
    produce(&input, &events).await;
    // The same events in a table, for the GROUP BY to compare with.
    let raw = unique("agg_eo_raw").replace('-', "_");
    sqlx::query(&format!(
        "CREATE TABLE {raw} (event_ts timestamptz, event_type text, user_id text, amount numeric)"
    ))
    .execute(&pool)
    .await
    .expect("raw table");
    let parsed: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).expect("json"))
        .collect();
    let col = |k: &str| -> Vec<String> {
        parsed
            .iter()
            .map(|v| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    };
    sqlx::query(&format!(
        "INSERT INTO {raw} SELECT t::timestamptz, ty, u, a::numeric FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(t, ty, u, a)"
    ))
    .bind(col("event_ts"))
    .bind(col("event_type"))
    .bind(col("user_id"))
    .bind(col("amount"))
    .execute(&pool)
    .await
    .expect("raw rows");

    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let env = [("DATABASE_URL", database_url())];
    let progress = |t: &str| format!("SELECT sum(events)::bigint FROM {t}");
    for stop_at in [4_000, 14_000, 24_000] {
        let mut c = Connectd::start(&cfg, &dir.path().join("log"), &env);
        let n = wait_scalar(
            &pool,
            &progress(&tumbling),
            stop_at,
            Duration::from_secs(120),
        )
        .await;
        assert!(n >= stop_at, "stalled at {n}; log:\n{}", c.log_text());
        c.kill9();
    }
    // A second process joins (partitions move to it) and leaves again (they move back).
    let _a = Connectd::start(&cfg, &dir.path().join("log"), &env);
    let n = wait_scalar(
        &pool,
        &progress(&tumbling),
        28_000,
        Duration::from_secs(120),
    )
    .await;
    assert!(n >= 28_000, "stalled at {n}");
    let mut b = Connectd::start(&cfg, &dir.path().join("log-b"), &env);
    let n = wait_scalar(
        &pool,
        &progress(&tumbling),
        33_000,
        Duration::from_secs(120),
    )
    .await;
    assert!(n >= 33_000, "stalled at {n}; log b:\n{}", b.log_text());
    b.kill9();
    for t in [&tumbling, &hopping] {
        let want = if *t == tumbling {
            N as i64
        } else {
            2 * N as i64
        };
        let n = wait_scalar(&pool, &progress(t), want, Duration::from_secs(180)).await;
        assert_eq!(n, want, "{t}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected_minute = format!(
        "SELECT date_bin('1 minute', event_ts, 'epoch') AS window_start, event_type, count(*) AS events, sum(amount) AS revenue, \
         min(amount) AS cheapest, max(amount) AS priciest, count(DISTINCT user_id) AS users FROM {raw} GROUP BY 1, 2"
    );
    let expected_hop = format!(
        "SELECT s AS window_start, event_type, count(*) AS events, sum(amount) AS revenue, min(amount) AS cheapest, \
         max(amount) AS priciest, count(DISTINCT user_id) AS users \
         FROM {raw}, LATERAL (VALUES (date_bin('5 minutes', event_ts, 'epoch')), (date_bin('5 minutes', event_ts, 'epoch') - interval '5 minutes')) AS w(s) \
         GROUP BY 1, 2"
    );
    for (table, expected) in [(&tumbling, expected_minute), (&hopping, expected_hop)] {
        let stored = format!("SELECT window_start, event_type, events, revenue, cheapest, priciest, users FROM {table}");
        let diff = |a: &str, b: &str| format!("SELECT count(*) FROM (({a}) EXCEPT ({b})) d");
        assert_eq!(
            scalar(&pool, &diff(&stored, &expected)).await,
            0,
            "{table}: stored rows not in the GROUP BY"
        );
        assert_eq!(
            scalar(&pool, &diff(&expected, &stored)).await,
            0,
            "{table}: GROUP BY rows missing"
        );
        assert!(scalar(&pool, &format!("SELECT count(*) FROM {table}")).await > 100);
        // Disorder of up to two minutes with 10 s of lateness: late events were merged into closed rows.
        let closed = scalar(&pool, &format!("SELECT count(*) FROM {table} WHERE closed")).await;
        let total = scalar(&pool, &format!("SELECT count(*) FROM {table}")).await;
        assert!(
            closed > total / 2,
            "{table}: {closed} of {total} rows closed"
        );
    }
}
