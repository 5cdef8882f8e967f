//! redis_dedup against the real broker and Redis (issue 5).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use connectd_transforms::redis_dedup::{RedisDedupConfig, RedisDedupPlugin, BYPASS_HEADER};
use connector_core::prelude::*;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;

fn rec(key: &str, offset: i64) -> Record {
    Record::new(format!("{{\"idempotency_key\":\"{key}\",\"n\":{offset}}}"))
        .with_origin("in", 0, offset)
}

async fn build(redis_url: &str, window: &str) -> Box<dyn Transform> {
    let cfg: RedisDedupConfig =
        serde_json::from_value(serde_json::json!({"redis_url": redis_url, "window": window}))
            .expect("config");
    RedisDedupPlugin::build(
        cfg,
        TransformContext {
            name: unique("dedup"),
            output_topic: "out".into(),
            metrics: Metrics::new(),
            shutdown: Shutdown::never(),
        },
    )
    .await
    .expect("build")
}

fn forwarded(outcomes: &[TransformOutcome]) -> Vec<bool> {
    outcomes
        .iter()
        .map(|o| matches!(o, TransformOutcome::Emit(v) if !v.is_empty()))
        .collect()
}

#[tokio::test]
async fn a_redelivered_batch_is_forwarded_again_but_true_duplicates_are_not() {
    // Each instance gets its own key prefix (connector name), so build one and reuse it as the
    // "restarted" process: same name → same Redis keys.
    let mut t = build(&redis_url(), "1m").await;
    let k1 = unique("k");
    let k2 = unique("k");
    let batch = vec![rec(&k1, 10), rec(&k2, 11), rec(&k1, 12)];
    let first = t.transform(&batch).await.expect("first");
    assert_eq!(
        forwarded(&first),
        [true, true, false],
        "k1 again at another offset is a duplicate"
    );
    // Crash after the Redis writes, before the produce was acknowledged: the same records come
    // again with the same coordinates and must be forwarded again.
    let again = t.transform(&batch).await.expect("redelivery");
    assert_eq!(forwarded(&again), [true, true, false]);
    // A later copy of k2 at a new offset is a duplicate.
    assert_eq!(
        forwarded(&t.transform(&[rec(&k2, 99)]).await.expect("dup")),
        [false]
    );
    let status = t.status();
    assert_eq!(status["duplicates_dropped"], 3);
    assert_eq!(status["redelivered"], 2);
}

#[tokio::test]
async fn keys_pass_again_after_the_window() {
    let mut t = build(&redis_url(), "300ms").await;
    let k = unique("k");
    assert_eq!(
        forwarded(&t.transform(&[rec(&k, 1)]).await.expect("t")),
        [true]
    );
    assert_eq!(
        forwarded(&t.transform(&[rec(&k, 2)]).await.expect("t")),
        [false]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        forwarded(&t.transform(&[rec(&k, 3)]).await.expect("t")),
        [true]
    );
}

#[tokio::test]
async fn bad_records_are_permanent_failures() {
    let mut t = build(&redis_url(), "1m").await;
    let out = t
        .transform(&[
            Record::new("not json").with_origin("in", 0, 1),
            Record::new("{\"other\":1}").with_origin("in", 0, 2),
        ])
        .await
        .expect("t");
    assert!(matches!(&out[0], TransformOutcome::Permanent(e) if e.class() == "invalid_json"));
    assert!(matches!(&out[1], TransformOutcome::Permanent(e) if e.class() == "missing_key"));
}

fn dedup_config(input: &str, output: &str, redis: &str, extra: &str) -> String {
    format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 5s
topics:
  - name: {output}
    partitions: 3
connectors:
  - name: dedup
    type: redis_dedup
    input: {input}
    output: {output}
    group_id: {input}-dedup
    dlq_topic: {input}-dlq
    redis_url: {redis}
    window: 10m
    retry:
      initial_backoff: 50ms
      max_backoff: 500ms
    batch:
      max_records: 1000
      linger: 20ms
{extra}"#
    )
}

fn payloads(keys: &[String]) -> Vec<String> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| format!("{{\"idempotency_key\":\"{k}\",\"seq\":{i}}}"))
        .collect()
}

fn key_of(v: &str) -> String {
    serde_json::from_str::<serde_json::Value>(v).expect("json")["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_with_30_percent_duplicates_leave_each_key_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("dd-in");
    let output = unique("dd-out");
    create_topic(&input, 6).await;
    let prefix = unique("key");
    let distinct: Vec<String> = (0..70_000).map(|i| format!("{prefix}-{i}")).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut all = distinct.clone();
    for _ in 0..30_000 {
        all.push(distinct.choose(&mut rng).expect("non-empty").clone());
    }
    // Shuffle, so duplicates are near and far apart (but always after a first copy exists).
    all.shuffle(&mut rng);
    let ends = produce(&input, &payloads(&all)).await;
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &dedup_config(&input, &output, &redis_url(), ""),
    );
    let c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
    wait_committed(
        &format!("{input}-dedup"),
        &input,
        &ends,
        Duration::from_secs(180),
    )
    .await;
    let out = read_all(&output, distinct.len(), Duration::from_secs(120)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for o in &out {
        *counts.entry(key_of(&o.value)).or_default() += 1;
    }
    assert_eq!(counts.len(), distinct.len(), "every key forwarded");
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(dups.is_empty(), "keys forwarded twice: {dups:?}");
    assert_eq!(out.len(), distinct.len());
    let (_, status) = c.get("/connectors/dedup").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["details"]["duplicates_dropped"], 30_000);
    assert_eq!(status["records_dropped"], 30_000);
    assert!(status["details"]["redis_evicted_keys"].is_u64(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_broker_is_paused_mid_batch_loses_no_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let tansu = Private::tansu();
    let brokers = tansu.addr.clone();
    let input = unique("dk-in");
    let output = unique("dk-out");
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("admin");
        admin
            .create_topics(
                &[NewTopic::new(&input, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create");
    }
    let prefix = unique("key");
    let keys: Vec<String> = (0..20_000)
        .map(|i| format!("{prefix}-{}", i % 15_000))
        .collect();
    produce_to(&brokers, &input, &payloads(&keys)).await;
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &dedup_config(&input, &output, &redis_url(), ""),
    );
    let env = [("KAFKA_BROKERS", brokers.clone())];
    let mut c = Connectd::start(&cfg, &dir.path().join("log"), &env);
    // Let some batches through, then freeze the broker while batches are in flight.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    tansu.signal("STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill9();
    tansu.signal("CONT");
    let _c2 = Connectd::start(&cfg, &dir.path().join("log"), &env);
    let got = read_from(&brokers, &output, 15_000, Duration::from_secs(120)).await;
    let seen: HashSet<String> = got.iter().map(|v| key_of(v)).collect();
    let missing = (0..15_000)
        .filter(|i| !seen.contains(&format!("{prefix}-{i}")))
        .count();
    assert_eq!(
        missing,
        0,
        "keys lost after the crash; log:\n{}",
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_open_bypasses_and_fail_closed_stalls_then_resumes() {
    for mode in ["fail_open", "fail_closed"] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut redis = Private::redis();
        let port = redis.port();
        let input = unique("dr-in");
        let output = unique("dr-out");
        create_topic(&input, 2).await;
        // Created before any reader subscribes: a subscription to a topic that does not exist
        // yet only notices it at the next metadata refresh (minutes).
        create_topic(&output, 3).await;
        let prefix = unique("key");
        let first: Vec<String> = (0..500).map(|i| format!("{prefix}-a{i}")).collect();
        produce(&input, &payloads(&first)).await;
        let cfg = write_file(
            dir.path(),
            "c.yaml",
            &dedup_config(
                &input,
                &output,
                &format!("redis://{}", redis.addr),
                &format!("    on_redis_error: {mode}\n    redis_timeout: 200ms\n"),
            ),
        );
        let _c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
        assert_eq!(
            read_all(&output, 500, Duration::from_secs(60)).await.len(),
            500,
            "{mode}: before the outage"
        );
        redis.stop();
        let second: Vec<String> = (0..500).map(|i| format!("{prefix}-b{i}")).collect();
        let ends_total = produce(&input, &payloads(&second)).await;
        let _ = ends_total;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let during = read_all(&output, 1000, Duration::from_secs(5)).await;
        if mode == "fail_open" {
            assert_eq!(during.len(), 1000, "fail_open forwards during the outage");
            let bypassed = during
                .iter()
                .filter(|c| c.headers.get(BYPASS_HEADER).map(String::as_str) == Some("bypassed"))
                .count();
            assert_eq!(
                bypassed, 500,
                "the outage's records carry the bypass header"
            );
        } else {
            assert_eq!(
                during.len(),
                500,
                "fail_closed forwards nothing while Redis is down"
            );
            // Redis back on the same port: everything comes through, nothing lost.
            redis = Private::redis_on(port);
            let after = read_all(&output, 1000, Duration::from_secs(60)).await;
            let keys: HashSet<String> = after.iter().map(|c| key_of(&c.value)).collect();
            assert_eq!(
                keys.len(),
                1000,
                "fail_closed: nothing lost after Redis returns"
            );
            assert_eq!(after.len(), 1000, "and nothing forwarded twice");
        }
        drop(redis);
    }
}
