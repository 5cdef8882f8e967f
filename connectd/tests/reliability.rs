//! Reliability suite (issue 8): the whole default pipeline (http_source → redis_dedup →
//! postgres_sink, dead letters → dlq_sink) run as real `connectd` processes, fed over HTTP by a
//! retrying client, with a fault injected mid-run. After the pipeline drains, each scenario
//! asserts with exact counts:
//!
//! * rows in Postgres == distinct idempotency keys that got a 202 (minus the poison ones);
//! * no idempotency key stored twice;
//! * every accepted poison event is in `dead_letters`;
//! * every consumer group committed the end of its topic.
//!
//! Each scenario appends its figures to `target/reliability-report.jsonl` (override with
//! `RELIABILITY_REPORT`). Bigger runs: `RELIABILITY_EVENTS=200000 RELIABILITY_KILLS=10`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "reliability-key-0123456789";

fn events_n() -> usize {
    std::env::var("RELIABILITY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

struct Services {
    brokers: String,
    redis: String,
    db: String,
}

fn shared() -> Services {
    Services {
        brokers: brokers(),
        redis: redis_url(),
        db: database_url(),
    }
}

struct Pipeline {
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    prefix: String,
    table: String,
    http: String,
    svc: Services,
    procs: Vec<Connectd>,
}

fn yaml(p: &str, table: &str, http: &str, s: &Services, dedup_mode: &str) -> String {
    format!(
        r#"kafka:
  brokers: {brokers}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 10s
topics:
  - {{ name: {p}.raw, partitions: 6 }}
  - {{ name: {p}.unique, partitions: 6 }}
  - {{ name: {p}.dlq, partitions: 1 }}
connectors:
  - name: ingest
    type: http_source
    output: {p}.raw
    listen: {http}
    static_keys: [ {{ name: rel, key: {KEY} }} ]
    ack_timeout: 3s
  - name: dedup
    type: redis_dedup
    input: {p}.raw
    output: {p}.unique
    dlq_topic: {p}.dlq
    group_id: {p}-dedup
    redis_url: {redis}
    key_prefix: {p}
    on_redis_error: {dedup_mode}
    redis_timeout: 300ms
    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
    batch: {{ max_records: 1000, linger: 20ms }}
  - name: store
    type: postgres_sink
    input: {p}.unique
    dlq_topic: {p}.dlq
    group_id: {p}-store
    database_url: {db}
    table: {table}
    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
    batch: {{ max_records: 2000, linger: 20ms }}
  - name: dead-letters
    type: dlq_sink
    input: {p}.dlq
    group_id: {p}-dl
    database_url: {db}
"#,
        brokers = s.brokers,
        redis = s.redis,
        db = s.db
    )
}

impl Pipeline {
    async fn new(svc: Services, dedup_mode: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let prefix = unique("rel");
        let table = prefix.replace('-', "_");
        let pool = sqlx::PgPool::connect(&svc.db).await.expect("db");
        connectd_migrations::run(&pool).await.expect("migrate");
        sqlx::query(&format!(
            "CREATE TABLE {table} (LIKE growth_events INCLUDING ALL)"
        ))
        .execute(&pool)
        .await
        .expect("table");
        pool.close().await;
        let http = format!("127.0.0.1:{}", free_port());
        let cfg = write_file(
            dir.path(),
            "c.yaml",
            &yaml(&prefix, &table, &http, &svc, dedup_mode),
        );
        Pipeline {
            dir,
            cfg,
            prefix,
            table,
            http,
            svc,
            procs: Vec::new(),
        }
    }

    fn start(&mut self) -> usize {
        let i = self.procs.len();
        let c = Connectd::start(&self.cfg, &self.dir.path().join(format!("log-{i}")), &[]);
        self.procs.push(c);
        i
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

#[derive(Default)]
struct Sent {
    accepted: HashSet<String>,
    poison: HashSet<String>,
    events_sent: u64,
    requests: u64,
    retries: u64,
}

/// Sends `n` unique events (plus `dup_ratio` re-sends, half with the same Idempotency-Key
/// concurrently) in 100-event requests, retrying 5xx, 409 and connection errors like a real
/// client (same body, same key).
fn spawn_sender(
    http: String,
    n: usize,
    dup_ratio: f64,
    poison_every: usize,
    sent: Arc<Mutex<Sent>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let run = unique("ev");
        let mut requests: Vec<(String, Option<String>, Vec<String>)> = Vec::new();
        let mut i = 0usize;
        while i < n {
            let mut evs = Vec::new();
            let mut poison = Vec::new();
            for _ in 0..100.min(n - i) {
                let key = format!("{run}-{i}");
                let event_type = ["signup", "page_view", "purchase"][i % 3];
                let mut e = json!({
                    "idempotency_key": key,
                    "user_id": uuid::Uuid::from_u128((i % 500) as u128 + 1).to_string(),
                    "event_type": event_type,
                    "client_timestamp": "2026-11-23T10:00:00+01:00",
                    "payload": {"i": i}
                });
                if poison_every > 0 && i % poison_every == poison_every - 1 {
                    e["payload"]["bad"] = json!("nul\u{0}");
                    poison.push(key);
                }
                evs.push(e);
                i += 1;
            }
            requests.push((
                Value::Array(evs).to_string(),
                Some(format!("{run}-req-{}", requests.len())),
                poison,
            ));
        }
        // Duplicates: whole requests again (same Idempotency-Key), sent right after the original.
        let dup_every = if dup_ratio > 0.0 {
            (1.0 / dup_ratio).round().max(1.0) as usize
        } else {
            usize::MAX
        };
        let mut order: Vec<usize> = Vec::new();
        for r in 0..requests.len() {
            order.push(r);
            if r % dup_every == 0 {
                order.push(r);
            }
        }
        let requests = Arc::new(requests);
        let next = Arc::new(Mutex::new(0usize));
        let order = Arc::new(order);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (requests, next, order, sent, http) = (
                requests.clone(),
                next.clone(),
                order.clone(),
                sent.clone(),
                http.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let idx = {
                        let mut g = next.lock().expect("lock");
                        if *g >= order.len() {
                            break;
                        }
                        *g += 1;
                        order[*g - 1]
                    };
                    let (body, idem, poison) = &requests[idx];
                    let headers: Vec<(&str, &str)> = idem
                        .as_deref()
                        .map(|k| vec![("x-api-key", KEY), ("Idempotency-Key", k)])
                        .unwrap_or_else(|| vec![("x-api-key", KEY)]);
                    let started = Instant::now();
                    loop {
                        let r = match tokio::time::timeout(
                            Duration::from_secs(15),
                            tokio::net::TcpStream::connect(&http),
                        )
                        .await
                        {
                            Ok(Ok(_)) => {
                                post_json(
                                    &http,
                                    "/v1/events",
                                    &headers,
                                    "application/json",
                                    body.as_bytes(),
                                )
                                .await
                            }
                            _ => Resp {
                                status: 0,
                                head: String::new(),
                                body: String::new(),
                            },
                        };
                        {
                            let mut g = sent.lock().expect("lock");
                            g.requests += 1;
                            if r.status == 202 {
                                g.events_sent += 100;
                                for k in r.json()["idempotency_keys"]
                                    .as_array()
                                    .cloned()
                                    .unwrap_or_default()
                                {
                                    g.accepted
                                        .insert(k.as_str().unwrap_or_default().to_string());
                                }
                                g.poison.extend(poison.iter().cloned());
                                break;
                            }
                            assert!(
                                r.status == 0 || r.status == 409 || r.status >= 500,
                                "unexpected {} {}",
                                r.status,
                                r.body
                            );
                            g.retries += 1;
                        }
                        assert!(
                            started.elapsed() < Duration::from_secs(180),
                            "request never accepted"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
    })
}

async fn wait_accepted(sent: &Arc<Mutex<Sent>>, at_least: usize) {
    let start = Instant::now();
    while sent.lock().expect("lock").accepted.len() < at_least {
        assert!(start.elapsed() < Duration::from_secs(180), "load stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a topic to its end: last offset + 1 per partition.
async fn topic_ends(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("ends"))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        let mut ends = BTreeMap::new();
        let mut idle_since = Instant::now();
        let start = Instant::now();
        while idle_since.elapsed() < Duration::from_secs(3)
            || start.elapsed() < Duration::from_secs(8)
        {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                ends.insert(m.partition(), m.offset() + 1);
                idle_since = Instant::now();
            }
            if start.elapsed() > Duration::from_secs(120) {
                break;
            }
        }
        ends
    })
    .await
    .expect("ends")
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Waits for the drain, asserts the exact counts, writes the report line.
async fn verify(
    p: &Pipeline,
    scenario: &str,
    sent: &Arc<Mutex<Sent>>,
    recovery: Duration,
    extra: Value,
) {
    let (accepted, poison, events_sent, requests, retries) = {
        let g = sent.lock().expect("lock");
        (
            g.accepted.clone(),
            g.poison.clone(),
            g.events_sent,
            g.requests,
            g.retries,
        )
    };
    let good: HashSet<&String> = accepted.iter().filter(|k| !poison.contains(*k)).collect();
    let pool = sqlx::PgPool::connect(&p.svc.db).await.expect("db");
    let dead_sql = format!(
        "SELECT count(*) FROM dead_letters WHERE original_topic = '{}.unique'",
        p.prefix
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(240) {
        let rows = count(&pool, &format!("SELECT count(*) FROM {}", p.table)).await;
        let dead = count(&pool, &dead_sql).await;
        if rows >= good.len() as i64 && dead >= poison.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead = count(&pool, &dead_sql).await;
    let rows = count(&pool, &format!("SELECT count(*) FROM {}", p.table)).await;
    let distinct = count(
        &pool,
        &format!("SELECT count(DISTINCT idempotency_key) FROM {}", p.table),
    )
    .await;
    let stored: HashSet<String> =
        sqlx::query_scalar(&format!("SELECT idempotency_key FROM {}", p.table))
            .fetch_all(&pool)
            .await
            .expect("keys")
            .into_iter()
            .collect();
    let missing: Vec<&&String> = good
        .iter()
        .filter(|k| !stored.contains(**k))
        .take(5)
        .collect();
    let dead_keys: HashSet<String> = sqlx::query_scalar::<_, Option<String>>(&format!(
        "SELECT substring(convert_from(payload, 'UTF8') from '\"idempotency_key\":\"([^\"]+)\"') FROM dead_letters WHERE original_topic = '{}.unique'",
        p.prefix
    ))
    .fetch_all(&pool)
    .await
    .expect("dead keys")
    .into_iter()
    .flatten()
    .collect();
    let mut line = json!({
        "scenario": scenario,
        "events_sent": events_sent,
        "requests": requests,
        "client_retries": retries,
        "accepted": accepted.len(),
        "stored": rows,
        "dead_lettered": dead,
        "poison": poison.len(),
        "duplicate_rows": rows - distinct,
        "recovery_seconds": recovery.as_secs_f64(),
        "drain_seconds": drained.as_secs_f64(),
    });
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    let report = std::env::var("RELIABILITY_REPORT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/reliability-report.jsonl"
        )
        .into()
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&report)
    {
        let _ = writeln!(f, "{line}");
    }
    eprintln!("{line}");
    if !missing.is_empty() {
        // Where did they get lost?
        let all_missing: HashSet<String> = good
            .iter()
            .filter(|k| !stored.contains(**k))
            .map(|k| (*k).clone())
            .collect();
        let in_topic = |topic: String| {
            let brokers = p.svc.brokers.clone();
            let all_missing = all_missing.clone();
            async move {
                let values = read_from(&brokers, &topic, usize::MAX, Duration::from_secs(20)).await;
                values
                    .iter()
                    .filter(|v| {
                        serde_json::from_str::<Value>(v)
                            .ok()
                            .and_then(|j| {
                                j["idempotency_key"]
                                    .as_str()
                                    .map(|k| all_missing.contains(k))
                            })
                            .unwrap_or(false)
                    })
                    .count()
            }
        };
        let raw = in_topic(format!("{}.raw", p.prefix)).await;
        let uniq = in_topic(format!("{}.unique", p.prefix)).await;
        panic!(
            "{scenario}: {} accepted events missing from Postgres (e.g. {missing:?}); copies of them in {}.raw: {raw}, in .unique: {uniq}\n{}",
            all_missing.len(),
            p.prefix,
            p.logs().lines().filter(|l| !l.contains("sqlx::postgres::notice")).collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(
        rows, distinct,
        "{scenario}: an idempotency key was stored twice"
    );
    assert_eq!(
        rows as usize,
        good.len(),
        "{scenario}: rows != distinct accepted (non-poison) events"
    );
    assert!(
        poison.iter().all(|k| dead_keys.contains(k)),
        "{scenario}: a poison event is missing from dead_letters"
    );
    // One dead letter per poison event, however often a crash made it reach the sink again.
    assert_eq!(
        dead as usize,
        poison.len(),
        "{scenario}: dead-letter rows != poison events (a dead letter stored twice?)"
    );
    // Every group committed the end of its topic.
    for (group, topic) in [("dedup", "raw"), ("store", "unique"), ("dl", "dlq")] {
        let topic = format!("{}.{topic}", p.prefix);
        let ends = topic_ends(&p.svc.brokers, &topic).await;
        let group = format!("{}-{group}", p.prefix);
        let start = Instant::now();
        loop {
            let c = committed_on(&p.svc.brokers, &group, &topic, &ends);
            if c == ends {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{scenario}: group {group} committed {c:?}, topic ends {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    pool.close().await;
}

/// Waits until process `i` has joined every group (partitions assigned to dedup, store and
/// dead-letters). Faults are injected only after that: the Tansu build used here never expires a
/// member that left while its group join was still pending, which would stall the group.
async fn wait_joined(p: &Pipeline, i: usize) {
    wait_joined_for(p, i, &["dedup", "store", "dead-letters"]).await;
}

async fn wait_joined_for(p: &Pipeline, i: usize, names: &[&str]) {
    let start = Instant::now();
    loop {
        let (_, body) = p.procs[i].get("/connectors").await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let joined = v.as_array().is_some_and(|a| {
            a.iter()
                .filter(|c| {
                    names.contains(&c["name"].as_str().unwrap_or(""))
                        && c["assigned_partitions"].as_u64().unwrap_or(0) > 0
                })
                .count()
                == names.len()
        });
        if joined {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "groups never joined: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_http(http: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(http).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "http_source did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_sigkill_repeatedly_during_the_run() {
    let kills: usize = std::env::var("RELIABILITY_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let n = events_n();
    let mut p = Pipeline::new(shared(), "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    wait_joined(&p, 0).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let sender = spawn_sender(p.http.clone(), n, 0.1, 500, sent.clone());
    let mut recovery = Duration::ZERO;
    for k in 0..kills {
        wait_accepted(&sent, n * (k + 1) / (kills + 2)).await;
        if let Some(last) = p.procs.last_mut() {
            last.kill9();
        }
        let t = Instant::now();
        let i = p.start();
        wait_http(&p.http).await;
        wait_joined(&p, i).await;
        recovery = recovery.max(t.elapsed());
    }
    sender.await.expect("sender");
    verify(&p, "sigkill", &sent, recovery, json!({"kills": kills})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_postgres_stopped_and_restarted() {
    let pg = PrivatePg::start_new();
    let svc = Services {
        db: pg.url(),
        ..shared()
    };
    let n = events_n() / 2;
    let mut p = Pipeline::new(svc, "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    wait_joined(&p, 0).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let sender = spawn_sender(p.http.clone(), n, 0.1, 400, sent.clone());
    wait_accepted(&sent, n / 3).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let t = Instant::now();
    pg.start();
    sender.await.expect("sender");
    verify(&p, "postgres_outage_20s", &sent, t.elapsed(), json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_redis_stopped_fail_open_and_fail_closed() {
    for mode in ["fail_open", "fail_closed"] {
        let mut redis = Private::redis();
        let port = redis.port();
        let svc = Services {
            redis: format!("redis://{}", redis.addr),
            ..shared()
        };
        let n = events_n() / 4;
        let mut p = Pipeline::new(svc, mode).await;
        p.start();
        wait_http(&p.http).await;
        wait_joined(&p, 0).await;
        let sent = Arc::new(Mutex::new(Sent::default()));
        let sender = spawn_sender(p.http.clone(), n, 0.2, 0, sent.clone());
        wait_accepted(&sent, n / 3).await;
        redis.stop();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let t = Instant::now();
        redis = Private::redis_on(port);
        sender.await.expect("sender");
        verify(
            &p,
            &format!("redis_outage_{mode}"),
            &sent,
            t.elapsed(),
            json!({}),
        )
        .await;
        drop(redis);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_broker_paused_for_20_seconds() {
    let tansu = Private::tansu();
    let svc = Services {
        brokers: tansu.addr.clone(),
        ..shared()
    };
    let n = events_n() / 2;
    let mut p = Pipeline::new(svc, "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    wait_joined(&p, 0).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let sender = spawn_sender(p.http.clone(), n, 0.1, 0, sent.clone());
    wait_accepted(&sent, n / 3).await;
    tansu.signal("STOP");
    // Meanwhile HTTP answers 503 (the sender retries).
    let probe = json!([{"user_id": uuid::Uuid::new_v4().to_string(), "event_type": "x", "client_timestamp": "2026-01-01T00:00:00Z", "idempotency_key": unique("probe")}]).to_string();
    let r = post_json(
        &p.http,
        "/v1/events",
        &[("x-api-key", KEY)],
        "application/json",
        probe.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let t = Instant::now();
    tansu.signal("CONT");
    // Like any client, retry the refused request until it is accepted.
    loop {
        let r = post_json(
            &p.http,
            "/v1/events",
            &[("x-api-key", KEY)],
            "application/json",
            probe.as_bytes(),
        )
        .await;
        if r.status == 202 {
            let mut g = sent.lock().expect("lock");
            for k in r.json()["idempotency_keys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                g.accepted
                    .insert(k.as_str().unwrap_or_default().to_string());
            }
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "probe never accepted: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sender.await.expect("sender");
    verify(&p, "broker_paused_20s", &sent, t.elapsed(), json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_a_second_process_joins_and_the_first_leaves() {
    let n = events_n();
    let mut p = Pipeline::new(shared(), "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    wait_joined(&p, 0).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let sender = spawn_sender(p.http.clone(), n, 0.1, 0, sent.clone());
    wait_accepted(&sent, n / 4).await;
    // The second process shares the groups; its HTTP listener cannot bind the same port, so
    // its http_source restarts with backoff until the first one leaves — the sinks rebalance.
    p.start();
    wait_accepted(&sent, n / 2).await;
    // The 1-partition DLQ topic stays with one member; the 6-partition ones are shared.
    wait_joined_for(&p, 1, &["dedup", "store"]).await;
    let t = Instant::now();
    p.procs[0].signal("TERM");
    let (code, _) = p.procs[0].wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    sender.await.expect("sender");
    verify(
        &p,
        "second_process_joins_first_leaves",
        &sent,
        t.elapsed(),
        json!({}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_duplicate_storm_and_s7_poison_with_garbage_in_the_raw_topic() {
    let n = events_n() / 2;
    let mut p = Pipeline::new(shared(), "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    wait_joined(&p, 0).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    // 30% duplicates (whole requests re-sent concurrently with the same Idempotency-Key) and a
    // poison event (jsonb refuses \u0000) every 97 events.
    let sender = spawn_sender(p.http.clone(), n, 0.3, 97, sent.clone());
    // Garbage straight into events.raw with a Kafka client: dedup dead-letters it.
    let garbage: Vec<String> = (0..25).map(|i| format!("garbage-{i}-\u{1}{{")).collect();
    produce_to(&p.svc.brokers, &format!("{}.raw", p.prefix), &garbage).await;
    sender.await.expect("sender");
    verify(
        &p,
        "duplicate_storm_and_poison",
        &sent,
        Duration::ZERO,
        json!({"garbage": garbage.len()}),
    )
    .await;
    let pool = sqlx::PgPool::connect(&p.svc.db).await.expect("db");
    let g = count(&pool, &format!("SELECT count(*) FROM dead_letters WHERE original_topic = '{}.raw' AND error_class = 'invalid_json'", p.prefix)).await;
    assert_eq!(g, 25, "every garbage record is in dead_letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_graceful_sigterm_under_load() {
    let n = events_n();
    let mut p = Pipeline::new(shared(), "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    wait_joined(&p, 0).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let sender = spawn_sender(p.http.clone(), n, 0.1, 0, sent.clone());
    wait_accepted(&sent, n / 3).await;
    p.procs[0].signal("TERM");
    let (code, took) = p.procs[0].wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", p.logs());
    assert!(
        took < Duration::from_secs(15),
        "shutdown took {took:?} (deadline 10 s)"
    );
    let t = Instant::now();
    p.start();
    wait_http(&p.http).await;
    let recovery = t.elapsed();
    sender.await.expect("sender");
    verify(
        &p,
        "graceful_sigterm",
        &sent,
        recovery,
        json!({"shutdown_seconds": took.as_secs_f64()}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_secrets_stay_out_of_logs_and_status_and_admin_is_loopback() {
    let mut p = Pipeline::new(shared(), "fail_open").await;
    p.start();
    wait_http(&p.http).await;
    let r = post_json(&p.http, "/v1/events", &[("x-api-key", KEY)], "application/json", json!({"user_id": uuid::Uuid::new_v4().to_string(), "event_type": "x", "client_timestamp": "2026-01-01T00:00:00Z"}).to_string().as_bytes()).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        post_json(
            &p.http,
            "/v1/events",
            &[("x-api-key", "wrong-wrong-wrong")],
            "application/json",
            b"{}"
        )
        .await
        .status,
        401
    );
    let (_, status) = p.procs[0].get("/connectors").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = p.logs();
    for secret in [KEY, "connectd:connectd@"] {
        assert!(
            !status.contains(secret),
            "{secret} in /connectors: {status}"
        );
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    assert!(
        status.contains("\"database_url\":\"***\""),
        "the database URL is shown redacted: {status}"
    );
    // Defaults: admin on loopback.
    assert_eq!(
        connectd::config::AdminSettings::default().listen,
        "127.0.0.1:9000"
    );
    // A hostile table name is refused by validation.
    let bad = std::fs::read_to_string(&p.cfg)
        .expect("cfg")
        .replace(&format!("table: {}", p.table), "table: \"x; drop table y\"");
    let f = write_file(p.dir.path(), "bad.yaml", &bad);
    let out = connectd_cmd(
        &["validate", "-c", &f.display().to_string()],
        &[("CONNECTD_ADMIN", "127.0.0.1:1".into())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a valid table name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
