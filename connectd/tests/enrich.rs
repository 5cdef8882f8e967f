//! `enrich` against the real PostgreSQL, Redis and broker (issue 16).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use connectd_transforms::enrich::{EnrichConfig, EnrichPlugin, ENRICH_HEADER};
use connector_core::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn ctx(name: &str) -> TransformContext {
    TransformContext {
        name: name.to_string(),
        output_topic: "out".into(),
        metrics: Metrics::new(),
        shutdown: Shutdown::never(),
    }
}

async fn build(name: &str, cfg: Value) -> Box<dyn Transform> {
    let cfg: EnrichConfig = serde_json::from_value(cfg).expect("config");
    EnrichPlugin::validate(&cfg).expect("valid");
    EnrichPlugin::build(cfg, ctx(name)).await.expect("build")
}

/// Keys drawn from a Zipf distribution (exponent `s`) over `n` keys, by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let w: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        Self {
            cdf: w
                .iter()
                .map(|x| {
                    acc += x / total;
                    acc
                })
                .collect(),
        }
    }
    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
    /// Share of draws that go to the `c` most frequent keys.
    fn top_mass(&self, c: usize) -> f64 {
        self.cdf[c - 1]
    }
}

fn event(i: usize, user: &str) -> Record {
    Record::new(json!({"idempotency_key": format!("ik-{i}"), "user_id": user, "n": i}).to_string())
        .with_origin("in", (i % 2) as i32, i as i64)
}

fn outputs(outcomes: &[TransformOutcome]) -> Vec<Record> {
    outcomes
        .iter()
        .map(|o| match o {
            TransformOutcome::Emit(v) if v.len() == 1 => v[0].record.clone(),
            other => panic!("not one output: {other:?}"),
        })
        .collect()
}

/// A profile table and a lookup function that logs every call (and how many keys it got)
/// in a table, so the test counts round trips from PostgreSQL's side.
async fn profiles(pool: &sqlx::PgPool, users: usize, absent_every: usize) -> (String, String) {
    let t = unique("prof").replace('-', "_");
    sqlx::raw_sql(&format!(
        "create table {t} (user_id text primary key, tier text not null, region text not null);
         create table {t}_calls (n int not null);
         create function {t}_lookup(keys text[]) returns setof {t} language plpgsql as $$
         begin
           insert into {t}_calls values (cardinality(keys));
           return query select * from {t} where user_id = any(keys);
         end $$;"
    ))
    .execute(pool)
    .await
    .expect("tables");
    sqlx::query(&format!(
        "insert into {t} select 'u' || i, case when i % 3 = 0 then 'gold' else 'free' end, 'r' || (i % 5)
         from generate_series(0, $1 - 1) i where case when $2 = 0 then true else i % $2 <> 0 end"
    ))
    .bind(users as i32)
    .bind(absent_every as i32)
    .execute(pool)
    .await
    .expect("rows");
    let q = format!("select * from {t}_lookup($1)");
    (t, q)
}

async fn calls(pool: &sqlx::PgPool, t: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "select count(*), coalesce(sum(n), 0)::bigint from {t}_calls"
    ))
    .fetch_one(pool)
    .await
    .expect("calls")
}

fn expected_tier(user: usize) -> &'static str {
    if user % 3 == 0 {
        "gold"
    } else {
        "free"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipf_keys_are_fetched_once_each_in_one_query_per_batch() {
    let pool = pg().await;
    let (t, query) = profiles(&pool, 2000, 10).await;
    let name = unique("enrich-zipf");
    let cfg = json!({
        "store": {"type": "postgres", "database_url": database_url(), "query": query},
        "cache": {"max_entries": 100000, "ttl": "10m", "negative_ttl": "10m"},
        "lookup_timeout": "5s",
    });
    // Two slots of one connector, run concurrently on alternate batches.
    let mut a = build(&name, cfg.clone()).await;
    let mut b = build(&name, cfg.clone()).await;
    let zipf = Zipf::new(2000, 1.1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let users: Vec<usize> = (0..40_000).map(|_| zipf.sample(&mut rng)).collect();
    let records: Vec<Record> = users
        .iter()
        .enumerate()
        .map(|(i, u)| event(i, &format!("u{u}")))
        .collect();
    let batches: Vec<&[Record]> = records.chunks(500).collect();
    let mut out: Vec<Record> = Vec::new();
    for pair in batches.chunks(2) {
        let (ra, rb) = tokio::join!(a.transform(pair[0]), async {
            match pair.get(1) {
                Some(p) => Some(b.transform(p).await),
                None => None,
            }
        });
        out.extend(outputs(&ra.expect("a")));
        if let Some(rb) = rb {
            out.extend(outputs(&rb.expect("b")));
        }
    }
    assert_eq!(out.len(), records.len());
    let distinct: HashSet<usize> = users.iter().copied().collect();
    // Every record carries the right context, keyed by its idempotency key.
    for (i, (r, u)) in out.iter().zip(&users).enumerate() {
        let v: Value = serde_json::from_slice(&r.value).expect("json");
        assert_eq!(v["n"], i, "order kept");
        assert_eq!(r.key.as_deref(), Some(format!("ik-{i}").as_bytes()));
        if u % 10 == 0 {
            assert_eq!(v["context"]["fallback"], "not_found", "{v}");
            assert_eq!(r.headers.get_str(ENRICH_HEADER), Some("not_found"));
        } else {
            assert_eq!(v["context"]["tier"], expected_tier(*u), "{v}");
            assert_eq!(v["context"]["region"], format!("r{}", u % 5));
            assert!(v["context"]["enriched_at"].is_string());
            assert!(v["context"].get("user_id").is_none(), "key column removed");
            assert_eq!(r.headers.get_str(ENRICH_HEADER), Some("enriched"));
        }
    }
    let (n_calls, n_keys) = calls(&pool, &t).await;
    let s = a.status();
    assert_eq!(s, b.status(), "one state for both slots");
    // PostgreSQL saw each distinct key exactly once, in at most one query per batch.
    assert_eq!(n_keys as usize, distinct.len(), "{s}");
    assert!(
        n_calls as usize <= batches.len(),
        "{n_calls} queries for {} batches",
        batches.len()
    );
    assert_eq!(s["lookups"], n_calls, "{s}");
    assert_eq!(s["keys_looked_up"], n_keys, "{s}");
    // Every record is a hit, a negative hit, or the first miss of its key in its batch; a
    // miss is a key fetched here or taken from the other slot's lookup (single flight).
    let hits = s["cache_hits"].as_u64().expect("n") + s["cache_negative_hits"].as_u64().expect("n");
    let misses = s["cache_misses"].as_u64().expect("n");
    assert_eq!(hits + misses, records.len() as u64, "{s}");
    assert_eq!(
        misses,
        distinct.len() as u64 + s["single_flight"].as_u64().expect("n"),
        "{s}"
    );
    let expected = 1.0 - distinct.len() as f64 / records.len() as f64;
    let ratio = s["hit_ratio"].as_f64().expect("ratio");
    assert!(
        ratio <= expected && ratio > expected - 0.01,
        "hit ratio {ratio} vs {expected} expected from the draw; {s}"
    );
    assert!(expected > 0.9, "Zipf(1.1) over 2000 keys: {expected}");
    assert_eq!(s["fallbacks"], 0);

    // A cache smaller than the key space: the bound holds, evictions are counted, and the hit
    // ratio is close to the share of the hottest keys (what an ideal cache of that size gets).
    let name = unique("enrich-small");
    let mut small = build(
        &name,
        json!({
            "store": {"type": "postgres", "database_url": database_url(), "query": query},
            "cache": {"max_entries": 200, "ttl": "10m"},
            "lookup_timeout": "5s",
        }),
    )
    .await;
    // One record per batch: no repeat within a batch counts as a hit, only the cache does.
    for chunk in records[..20_000].chunks(1) {
        outputs(&small.transform(chunk).await.expect("small"));
    }
    let s = small.status();
    let ratio = s["hit_ratio"].as_f64().expect("ratio");
    let ideal = zipf.top_mass(200);
    assert!(s["cache_evictions"].as_u64().expect("n") > 0, "{s}");
    assert!(s["cache_entries"].as_u64().expect("n") <= 300, "{s}");
    assert!(
        ratio > 0.75 * ideal && ratio < ideal + 0.05,
        "hit ratio {ratio} with 200 entries, top-200 share {ideal}; {s}"
    );
}

fn pipeline_yaml(input: &str, output: &str, store: &str, extra: &str) -> String {
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
  - name: enrich
    type: enrich
    input: {input}
    output: {output}
    group_id: {input}-enrich
    dlq_topic: {input}-dlq
    key: /user_id
    store: {store}
    defaults: {{ tier: unknown }}
    lookup_timeout: 300ms
    retry:
      initial_backoff: 50ms
      max_backoff: 500ms
    batch:
      max_records: 500
      linger: 20ms
{extra}"#
    )
}

/// Events `from..from + n`, event `i` by user `u<user(i)>`.
fn events(from: usize, n: usize, user: impl Fn(usize) -> usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            json!({"idempotency_key": format!("ik-{i}"), "user_id": format!("u{}", user(i)), "n": i})
                .to_string()
        })
        .collect()
}

async fn status(c: &Connectd) -> Value {
    let (_, s) = c.get("/connectors/enrich").await;
    serde_json::from_str(&s).expect("status json")
}

/// A record's idempotency key and its parsed value.
fn keyed(value: &str) -> (String, Value) {
    let v: Value = serde_json::from_str(value).expect("json");
    let k = v["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (k, v)
}

/// Records by idempotency key (the last copy wins) from `topic`, read again from the start
/// until `at_least` distinct keys are there (redeliveries after a crash are copies) or the
/// timeout.
async fn by_key(topic: &str, at_least: usize, timeout: Duration) -> HashMap<String, Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got: HashMap<String, Value> = read_all(topic, at_least, Duration::from_secs(20))
            .await
            .iter()
            .map(|c| keyed(&c.value))
            .collect();
        if got.len() >= at_least || std::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_opens_the_breaker_fallbacks_flow_and_enrichment_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let pg = PrivatePg::start_new();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await
        .expect("private pg");
    let (_t, query) = profiles(&pool, 7000, 0).await;
    pool.close().await;
    let input = unique("en-in");
    let output = unique("en-out");
    create_topic(&input, 3).await;
    create_topic(&output, 3).await;
    let store = format!(
        "{{ type: postgres, database_url: \"{}\", query: \"{query}\" }}",
        pg.url()
    );
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &pipeline_yaml(
            &input,
            &output,
            &store,
            "    breaker: { consecutive_failures: 2, cooldown: 1s }\n",
        ),
    );
    let c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
    let enriched =
        |v: &Value| v["context"].get("fallback").is_none() && v["context"]["tier"] != "unknown";
    // 1: the store is up — every event enriched (users u0..u1999).
    produce(&input, &events(0, 2000, |i| i)).await;
    let got = by_key(&output, 2000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2000);
    assert!(got.values().all(enriched));
    // 2: PostgreSQL stopped; new users (not cached) get the defaults, nothing waits or is lost.
    pg.stop();
    produce(&input, &events(2000, 2000, |i| i)).await;
    let got = by_key(&output, 4000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 4000, "nothing lost while the store is down");
    let fallback = (2000..4000)
        .filter(|i| {
            let v = &got[&format!("ik-{i}")];
            v["context"]["fallback"] == "lookup_error" && v["context"]["tier"] == "unknown"
        })
        .count();
    assert_eq!(fallback, 2000, "every event of the outage got the defaults");
    let s = status(&c).await;
    assert!(
        s["details"]["breaker_opens"].as_u64().expect("n") >= 1,
        "{s}"
    );
    assert_ne!(s["details"]["breaker"], "closed", "{s}");
    assert_eq!(s["details"]["fallbacks"], 2000, "{s}");
    // Cached users (u0..u499) are still served from the cache during the outage.
    produce(&input, &events(4000, 500, |i| i - 4000)).await;
    let got = by_key(&output, 4500, Duration::from_secs(60)).await;
    assert!((4000..4500).all(|i| enriched(&got[&format!("ik-{i}")])));
    // 3: PostgreSQL back: a probe closes the breaker (a trickle of new users until it does).
    pg.start();
    let mut next = 4500;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        produce(&input, &events(next, 10, |i| i)).await;
        next += 10;
        tokio::time::sleep(Duration::from_millis(400)).await;
        if status(&c).await["details"]["breaker"] == "closed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "breaker never closed: {}",
            status(&c).await
        );
    }
    // Enrichment resumed: every new user from now on gets its context.
    produce(&input, &events(next, 1000, |i| i)).await;
    let total = next + 1000;
    let got = by_key(&output, total, Duration::from_secs(60)).await;
    assert_eq!(got.len(), total, "every event exactly once by key");
    let resumed = (next..total)
        .filter(|i| enriched(&got[&format!("ik-{i}")]))
        .count();
    assert_eq!(resumed, 1000, "enrichment resumed after the restart");
    let s = status(&c).await;
    assert_eq!(s["details"]["breaker"], "closed", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_one_pipeline_per_batch_and_fallbacks_while_redis_is_down() {
    let mut redis = Private::redis();
    let url = format!("redis://{}", redis.addr);
    {
        let mut conn = redis_conn(&url).await.expect("redis");
        let mut pipe = redis::pipe();
        for u in 0..300 {
            if u % 10 != 0 {
                pipe.cmd("HSET")
                    .arg(format!("profile:u{u}"))
                    .arg("tier")
                    .arg(expected_tier(u))
                    .arg("region")
                    .arg(format!("r{}", u % 5))
                    .ignore();
            }
        }
        pipe.cmd("CONFIG").arg("RESETSTAT").ignore();
        let () = pipe.query_async(&mut conn).await.expect("hset");
    }
    let mut t = build(
        &unique("enrich-redis"),
        json!({
            "store": {"type": "redis", "redis_url": url, "key_template": "profile:{key}"},
            "lookup_timeout": "300ms",
            "defaults": {"tier": "unknown"},
            "breaker": {"consecutive_failures": 1, "cooldown": "500ms"},
        }),
    )
    .await;
    let records: Vec<Record> = (0..3000)
        .map(|i| event(i, &format!("u{}", (i * 7) % 300)))
        .collect();
    let mut out = Vec::new();
    for chunk in records.chunks(500) {
        out.extend(outputs(&t.transform(chunk).await.expect("t")));
    }
    for (i, r) in out.iter().enumerate() {
        let u = (i * 7) % 300;
        let v: Value = serde_json::from_slice(&r.value).expect("json");
        if u % 10 == 0 {
            assert_eq!(v["context"]["fallback"], "not_found");
        } else {
            assert_eq!(v["context"]["tier"], expected_tier(u), "{v}");
        }
    }
    let s = t.status();
    let info: String = {
        let mut conn = redis_conn(&url).await.expect("redis");
        redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("info")
    };
    let hgetall = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_hgetall:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(hgetall, 300, "each of the 300 users asked once; {s}");
    assert_eq!(s["keys_looked_up"], 300);
    assert!(
        s["lookups"].as_u64().expect("n") <= 6,
        "one pipeline per batch at most: {s}"
    );
    // Redis down: new keys fall back, cached keys are still enriched.
    redis.stop();
    let down: Vec<Record> = (0..100)
        .map(|i| event(10_000 + i, if i % 2 == 0 { "u1" } else { "new-user" }))
        .collect();
    let out = outputs(&t.transform(&down).await.expect("down"));
    for (i, r) in out.iter().enumerate() {
        let v: Value = serde_json::from_slice(&r.value).expect("json");
        if i % 2 == 0 {
            assert_eq!(v["context"]["tier"], "free", "cached: {v}");
        } else {
            assert_eq!(v["context"]["fallback"], "lookup_error", "{v}");
            assert_eq!(r.headers.get_str(ENRICH_HEADER), Some("fallback"));
        }
    }
    assert_eq!(t.status()["breaker"], "open");
}

#[tokio::test]
async fn bad_records_and_dlq_policies_are_per_record() {
    let pool = pg().await;
    let (_t, query) = profiles(&pool, 10, 5).await;
    let mut t = build(
        &unique("enrich-dlq"),
        json!({
            "store": {"type": "postgres", "database_url": database_url(), "query": query},
            "on_not_found": "dlq",
            "on_missing_key": "dlq",
        }),
    )
    .await;
    let batch = vec![
        Record::new("not json").with_origin("in", 0, 1),
        Record::new("[1,2]").with_origin("in", 0, 2),
        Record::new(r#"{"user_id":"u1"}"#).with_origin("in", 0, 3),
        Record::new(r#"{"other":1}"#).with_origin("in", 0, 4),
        Record::new(r#"{"user_id":"u5"}"#).with_origin("in", 0, 5),
    ];
    let out = t.transform(&batch).await.expect("t");
    let class = |o: &TransformOutcome| match o {
        TransformOutcome::Permanent(e) => e.class().to_string(),
        TransformOutcome::Emit(v) => format!("emit{}", v.len()),
        TransformOutcome::Retriable(e) => format!("retry {}", e.class()),
    };
    let got: Vec<String> = out.iter().map(class).collect();
    assert_eq!(
        got,
        [
            "invalid_json",
            "not_an_object",
            "emit1",
            "missing_key",
            "not_found"
        ]
    );

    // on_lookup_error: retry fails the batch as transient while the store is unreachable.
    let mut t = build(
        &unique("enrich-retry"),
        json!({
            "store": {"type": "postgres", "database_url": format!("postgres://connectd@127.0.0.1:{}/x", free_port()), "query": query},
            "on_lookup_error": "retry",
            "lookup_timeout": "200ms",
        }),
    )
    .await;
    let e = t.transform(&batch[2..3]).await.expect_err("retriable");
    assert!(e.is_retriable(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_mid_stream_loses_no_event() {
    let dir = tempfile::tempdir().expect("tmp");
    let pool = pg().await;
    let (_t, query) = profiles(&pool, 5000, 0).await;
    let input = unique("ek-in");
    let output = unique("ek-out");
    create_topic(&input, 3).await;
    create_topic(&output, 3).await;
    let n = 60_000;
    produce(&input, &events(0, n, |i| i % 5000)).await;
    let store = format!(
        "{{ type: postgres, database_url: \"{}\", query: \"{query}\" }}",
        database_url()
    );
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &pipeline_yaml(&input, &output, &store, ""),
    );
    for round in 0..3 {
        let mut c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
        tokio::time::sleep(Duration::from_millis(3500 + 700 * round)).await;
        c.kill9();
    }
    let before: HashSet<String> = read_all(&output, n, Duration::from_secs(3))
        .await
        .iter()
        .map(|c| keyed(&c.value).0)
        .collect();
    assert!(
        before.len() < n,
        "the kills came after the work was done: nothing tested"
    );
    let _c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
    let got = by_key(&output, n, Duration::from_secs(120)).await;
    let missing = (0..n)
        .filter(|i| !got.contains_key(&format!("ik-{i}")))
        .count();
    assert_eq!(
        missing,
        0,
        "events lost across kill -9; log:\n{}",
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
    assert_eq!(got.len(), n);
    let wrong = got
        .values()
        .filter(|v| {
            let u: usize = v["user_id"].as_str().unwrap_or("u0")[1..]
                .parse()
                .unwrap_or(0);
            v["context"]["tier"] != expected_tier(u)
        })
        .count();
    assert_eq!(wrong, 0, "every event enriched with its own user's context");
    // Re-keyed by idempotency key, yet every copy sits in the partition its input was read
    // from (`output_partition: input`, both topics with 3 partitions).
    let read_from: HashMap<String, i32> = read_all(&input, n, Duration::from_secs(30))
        .await
        .iter()
        .map(|c| (keyed(&c.value).0, c.partition))
        .collect();
    assert_eq!(read_from.len(), n);
    let out = read_all(&output, n, Duration::from_secs(30)).await;
    let moved = out
        .iter()
        .filter(|c| read_from.get(&keyed(&c.value).0) != Some(&c.partition))
        .count();
    assert_eq!(moved, 0, "records moved partition, of {}", out.len());
}
