//! The example sink against a real Redis (REDIS_URL, default the dev-services one), checked by
//! connector-core's compliance harness.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use connector_core::testing::{envelope_record, Probe, SinkHarness};
use connector_core::{async_trait, Record};
use redis_leaderboard_sink::{RedisLeaderboardConfig, RedisLeaderboardPlugin};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

/// Counts stream entries per idempotency key.
struct StreamProbe {
    url: String,
    stream: String,
}

#[async_trait]
impl Probe for StreamProbe {
    async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(records
            .iter()
            .map(|r| {
                let key = r
                    .value_json()
                    .ok()
                    .and_then(|v| v["idempotency_key"].as_str().map(str::to_string))
                    .unwrap_or_default();
                entries
                    .iter()
                    .filter(|(_, f)| f.iter().any(|(k, v)| k == "idempotency_key" && *v == key))
                    .count()
            })
            .collect())
    }
}

fn config(tag: &str) -> RedisLeaderboardConfig {
    serde_json::from_value(serde_json::json!({
        "redis_url": redis_url(),
        "counters_prefix": format!("test:{tag}:lb"),
        "stream": format!("test:{tag}:stream"),
        "seen_prefix": format!("test:{tag}:seen"),
        "dedup_ttl_secs": 600
    }))
    .expect("config")
}

#[tokio::test]
async fn the_redis_sink_keeps_the_delivery_contract() {
    let tag = connector_core::testing::run_tag();
    // Every distinct good event the harness hands the sink, whichever check and however often
    // it redelivers it: the counters must count each exactly once.
    let distinct: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let seen = Arc::clone(&distinct);
    let report = SinkHarness::<RedisLeaderboardPlugin>::new(config(&tag))
        .records(move |run, i| {
            seen.lock().expect("set").insert(i);
            envelope_record(run, i)
        })
        .probe(StreamProbe {
            url: redis_url(),
            stream: format!("test:{tag}:stream"),
        })
        .poison(vec![
            Record::new("not json").with_origin("t", 0, 1),
            Record::new(r#"{"idempotency_key":"x"}"#).with_origin("t", 0, 2),
        ])
        .run()
        .await;
    report.assert_passed();
    // The counters count each event once, although the harness redelivered most of them.
    let client = redis::Client::open(redis_url().as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let mut total = 0.0;
    for t in ["signup", "page_view"] {
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(format!("test:{tag}:lb:{t}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .expect("zrange");
        total += members.iter().map(|(_, s)| s).sum::<f64>();
    }
    let expected = distinct.lock().expect("set").len();
    assert!(
        expected >= 55,
        "the harness wrote at least its batch and the poison check's 5"
    );
    assert_eq!(
        total, expected as f64,
        "every distinct good event the harness wrote, counted once"
    );
}
