//! redis_sink against the real broker and Redis (issue 18): exact counts under kill -9, a Redis
//! restart with AOF, a rebalance between two processes, and poison dead-lettered per record.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use serde_json::Value;

/// The operations under test, all keyed under `prefix`.
fn sink_yaml(name: &str, input: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 5s
connectors:
  - name: {name}
    type: redis_sink
    input: {input}
    group_id: {name}-g
    dlq_topic: {input}-dlq
    redis_url: ${{SINK_REDIS}}
    max_in_flight: 2
    batch: {{ max_records: 500, linger: 20ms }}
    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
    operations:
      - zincrby: {{ key: "{prefix}:lb:{{/event_type}}", member: /user_id }}
      - incrby: {{ key: "{prefix}:n:{{/event_type}}" }}
      - hincrby: {{ key: "{prefix}:h:{{day(/event_ts)}}", field: /event_type, by: /payload/n }}
      - xadd: {{ key: "{prefix}:stream", fields: {{ k: /idempotency_key }} }}
{extra}"#
    )
}

/// Envelopes with a numeric `payload.n` for hincrby.
fn events(prefix: &str, n: usize) -> Vec<String> {
    envelopes(prefix, n)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_str(&e).expect("json");
            v["payload"]["n"] = serde_json::json!(i % 7 + 1);
            v.to_string()
        })
        .collect()
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis_conn(url).await.expect("redis")
}

async fn stream_len(url: &str, prefix: &str) -> usize {
    match redis_conn(url).await {
        Ok(mut c) => redis::cmd("XLEN")
            .arg(format!("{prefix}:stream"))
            .query_async(&mut c)
            .await
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn wait_stream(url: &str, prefix: &str, at_least: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = stream_len(url, prefix).await;
        if n >= at_least || start.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every score, counter, hash field and stream entry equals a recount of `values`.
async fn assert_exact(url: &str, prefix: &str, values: &[String]) {
    let mut scores: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut hashes: BTreeMap<(String, String), i64> = BTreeMap::new();
    for v in values {
        let v: Value = serde_json::from_str(v).expect("json");
        let t = v["event_type"].as_str().unwrap_or_default().to_string();
        let u = v["user_id"].as_str().unwrap_or_default().to_string();
        let day = v["event_ts"].as_str().unwrap_or_default()[..10].to_string();
        *scores.entry((t.clone(), u)).or_default() += 1.0;
        *counts.entry(t.clone()).or_default() += 1;
        *hashes.entry((day, t)).or_default() += v["payload"]["n"].as_i64().unwrap_or(0);
    }
    let mut c = conn(url).await;
    for ((t, u), want) in &scores {
        let got: Option<f64> = c
            .zscore(format!("{prefix}:lb:{t}"), u)
            .await
            .expect("zscore");
        assert_eq!(got, Some(*want), "score of {u} in {t}");
    }
    for (t, want) in &counts {
        let got: i64 = c.get(format!("{prefix}:n:{t}")).await.expect("get");
        assert_eq!(got, *want, "counter of {t}");
    }
    for ((day, t), want) in &hashes {
        let got: i64 = c.hget(format!("{prefix}:h:{day}"), t).await.expect("hget");
        assert_eq!(got, *want, "hash {day}/{t}");
    }
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:stream"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("xrange");
    let keys: Vec<String> = entries
        .into_iter()
        .filter_map(|(_, fields)| fields.get(1).cloned())
        .collect();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(
        keys.len(),
        values.len(),
        "stream entries (each record once)"
    );
    assert_eq!(
        distinct.len(),
        values.len(),
        "distinct records in the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_five_times_mid_stream_counts_every_record_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rs-kill");
    let prefix = unique("rsk");
    create_topic(&input, 3).await;
    let values = events(&prefix, 30_000);
    produce(&input, &values).await;
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &sink_yaml(&unique("rs"), &input, &prefix, ""),
    );
    let env = [("SINK_REDIS", redis_url())];
    for stop_at in [2_000, 7_000, 12_000, 18_000, 24_000] {
        let mut c = Connectd::start(&cfg, &dir.path().join("log"), &env);
        let n = wait_stream(&redis_url(), &prefix, stop_at, Duration::from_secs(90)).await;
        assert!(n >= stop_at, "stalled at {n}:\n{}", c.log_text());
        c.kill9();
    }
    let c = Connectd::start(&cfg, &dir.path().join("log"), &env);
    let n = wait_stream(
        &redis_url(),
        &prefix,
        values.len(),
        Duration::from_secs(120),
    )
    .await;
    assert!(n >= values.len(), "stalled at {n}:\n{}", c.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exact(&redis_url(), &prefix, &values).await;
    // The redeliveries after each kill were skipped by the cursor, and said so.
    let (_, status) = c.get(&format!("/connectors/{}", cfg_name(&cfg))).await;
    let s: Value = serde_json::from_str(&status).expect("status json");
    assert!(
        s["details"]["cursors"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "{s}"
    );
}

fn cfg_name(cfg: &std::path::Path) -> String {
    std::fs::read_to_string(cfg)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("- name: ").map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_aof_counts_nothing_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("redis dir");
    let port = free_port();
    let mut r = Private::redis_aof(port, data.path());
    let url = format!("redis://127.0.0.1:{port}");
    let input = unique("rs-aof");
    let prefix = unique("rsa");
    create_topic(&input, 3).await;
    let values = events(&prefix, 20_000);
    produce(&input, &values).await;
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &sink_yaml(&unique("rs"), &input, &prefix, "    timeout: 1s\n"),
    );
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("SINK_REDIS", url.clone())],
    );
    let n = wait_stream(&url, &prefix, 6_000, Duration::from_secs(90)).await;
    assert!(n >= 6_000, "stalled at {n}:\n{}", c.log_text());
    r.stop(); // SIGKILL: only what the AOF has survives
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _r = Private::redis_aof(port, data.path());
    let n = wait_stream(&url, &prefix, values.len(), Duration::from_secs(120)).await;
    assert!(n >= values.len(), "stalled at {n}:\n{}", c.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exact(&url, &prefix, &values).await;
    // One process, three partitions, max_in_flight: 2 → two instances, each with its status.
    let (_, status) = c.get(&format!("/connectors/{}", cfg_name(&cfg))).await;
    let s: Value = serde_json::from_str(&status).expect("status json");
    let instances = s["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), 2, "{s}");
    assert!(instances.iter().all(|i| i["cursors"].is_object()), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_after_a_rebalance_and_seeks_to_the_cursor() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rs-two");
    let prefix = unique("rst");
    create_topic(&input, 4).await;
    let values = events(&prefix, 20_000);
    produce(&input, &values).await;
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &sink_yaml(&unique("rs"), &input, &prefix, ""),
    );
    let env = [("SINK_REDIS", redis_url())];
    let mut a = Connectd::start(&cfg, &dir.path().join("log-a"), &env);
    wait_stream(&redis_url(), &prefix, 2_000, Duration::from_secs(60)).await;
    let b = Connectd::start(&cfg, &dir.path().join("log-b"), &env);
    let started = Instant::now();
    // B joins (a rebalance), then A dies without a word.
    loop {
        let (_, s) = b.get("/connectors").await;
        if s.contains("\"assigned_partitions\":1")
            || s.contains("\"assigned_partitions\":2")
            || started.elapsed() > Duration::from_secs(40)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.kill9();
    let n = wait_stream(
        &redis_url(),
        &prefix,
        values.len(),
        Duration::from_secs(120),
    )
    .await;
    assert!(n >= values.len(), "stalled at {n}:\n{}", b.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exact(&redis_url(), &prefix, &values).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_one_by_one_and_the_rest_applied() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rs-poison");
    let prefix = unique("rsp");
    create_topic(&input, 1).await;
    let mut values = events(&prefix, 1_000);
    let mut bad = HashMap::new();
    for (i, why) in [(10, "bad_field"), (20, "bad_field"), (30, "invalid_json")] {
        let mut v: Value = serde_json::from_str(&values[i]).expect("json");
        match i {
            10 => {
                v.as_object_mut().map(|o| o.remove("user_id"));
            }
            20 => v["payload"]["n"] = serde_json::json!("seven"),
            _ => {}
        }
        values[i] = if i == 30 {
            "{not json".into()
        } else {
            v.to_string()
        };
        bad.insert(i as i64, why);
    }
    // A key of another type: Redis refuses ZINCRBY on it (WRONGTYPE) for every signup record.
    // Use a separate prefix for one record so that only it hits the wrong type.
    let mut odd: Value = serde_json::from_str(&values[40]).expect("json");
    odd["event_type"] = serde_json::json!("wrongtype");
    values[40] = odd.to_string();
    bad.insert(40, "redis_refused");
    let mut c = conn(&redis_url()).await;
    let _: () = c
        .set(format!("{prefix}:lb:wrongtype"), "a string")
        .await
        .expect("set");
    produce(&input, &values).await;
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &sink_yaml(&unique("rs"), &input, &prefix, ""),
    );
    let _c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("SINK_REDIS", redis_url())],
    );
    // 996 good records + the WRONGTYPE one, whose other operations did apply (xadd among them).
    let n = wait_stream(&redis_url(), &prefix, 997, Duration::from_secs(60)).await;
    assert_eq!(n, 997);
    let dead = read_all(&format!("{input}-dlq"), 4, Duration::from_secs(30)).await;
    let got: HashMap<i64, String> = dead
        .iter()
        .map(|d| {
            (
                d.headers
                    .get("connectd.original.offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(-1),
                d.headers
                    .get("connectd.error.class")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    let want: HashMap<i64, String> = bad.iter().map(|(k, v)| (*k, v.to_string())).collect();
    assert_eq!(got, want);
    // The good ones are exact (the WRONGTYPE record counted in n and h, not in the leaderboard).
    let good: Vec<String> = values
        .iter()
        .enumerate()
        .filter(|(i, _)| !bad.contains_key(&(*i as i64)))
        .map(|(_, v)| v.clone())
        .collect();
    let signups = good.iter().filter(|v| v.contains("\"signup\"")).count() as i64;
    let got: i64 = c.get(format!("{prefix}:n:signup")).await.expect("get");
    assert_eq!(got, signups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_makes_a_leaderboard_from_the_last_entries_of_a_stream() {
    let stream = unique("rs-rebuild-stream");
    let into = unique("rs-rebuild-lb");
    let mut c = conn(&redis_url()).await;
    // 12,000 entries; the last 10,000 count. Member u<i % 50>, score 2 each.
    let mut pipe = redis::pipe();
    for i in 0..12_000 {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("user_id")
            .arg(format!("u{}", i % 50))
            .arg("points")
            .arg(if i < 2_000 { "1000" } else { "2" })
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("xadd");
    let _: () = c.zadd(&into, "stale", 1).await.expect("zadd");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_connectd"))
        .args([
            "redis",
            "rebuild",
            "--from-stream",
            &stream,
            "--last",
            "10000",
        ])
        .args([
            "--into",
            &into,
            "--member-field",
            "user_id",
            "--score-field",
            "points",
        ])
        .env("REDIS_URL", redis_url())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("from the last 10000 entries"), "{text}");
    assert!(text.contains("(50 members, 0 entries skipped)"), "{text}");
    let members: Vec<(String, f64)> = c.zrange_withscores(&into, 0, -1).await.expect("zrange");
    assert_eq!(members.len(), 50, "the stale member is gone");
    assert!(members.iter().all(|(_, s)| *s == 400.0), "{members:?}");
}
