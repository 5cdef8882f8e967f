//! http_source against the real broker, Postgres and Redis (issue 4).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const STATIC_KEY: &str = "static-key-0123456789abcdef";

struct Ingest {
    _c: Connectd,
    addr: String,
    topic: String,
    _dir: tempfile::TempDir,
}

fn config(topic: &str, listen: &str, redis: &str, extra: &str) -> String {
    format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 5s
connectors:
  - name: ingest
    type: http_source
    output: {topic}
    listen: {listen}
    database_url: ${{DATABASE_URL}}
    redis_url: {redis}
    static_keys:
      - name: static
        key: {STATIC_KEY}
    auth_cache_ttl: 1s
    max_body_bytes: 1048576
    max_events: 500
    ack_timeout: 3s
    body_timeout: 2s
    header_timeout: 2s
{extra}"#
    )
}

async fn start(redis: &str, brokers: Option<&str>, extra: &str) -> Ingest {
    start_with(redis, brokers, extra, |y| y).await
}

/// [`start`], with the whole YAML passed through `edit` first.
async fn start_with(
    redis: &str,
    brokers: Option<&str>,
    extra: &str,
    edit: impl FnOnce(String) -> String,
) -> Ingest {
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("http");
    if brokers.is_none() {
        create_topic(&topic, 3).await;
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &edit(config(&topic, &addr, redis, extra)),
    );
    let mut envs = vec![("DATABASE_URL", database_url())];
    if let Some(b) = brokers {
        envs.push(("KAFKA_BROKERS", b.to_string()));
    }
    let c = Connectd::start(&cfg, &dir.path().join("log"), &envs);
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "http_source never listened; log:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ingest {
        _c: c,
        addr,
        topic,
        _dir: dir,
    }
}

fn event(i: usize) -> Value {
    json!({
        "user_id": uuid::Uuid::new_v4().to_string(),
        "event_type": if i % 2 == 0 { "page_view" } else { "signup" },
        "client_timestamp": "2026-11-23T14:30:00.123+02:00",
        "payload": {"n": i},
        "campaign": "spring"
    })
}

async fn post(addr: &str, key: &str, body: &Value, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("x-api-key", key)];
    headers.extend_from_slice(extra);
    post_json(
        addr,
        "/v1/events",
        &headers,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
}

fn connectd_keys(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_connectd"))
        .arg("keys")
        .args(args)
        .env("DATABASE_URL", database_url())
        .output()
        .expect("connectd keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_in_the_topic_once_with_envelope_key_and_utc_time() {
    let s = start(&redis_url(), None, "").await;
    let events: Vec<Value> = (0..50).map(event).collect();
    let r = post(&s.addr, STATIC_KEY, &Value::Array(events.clone()), &[]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let keys: Vec<String> = r.json()["idempotency_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(keys.len(), 50);
    let nd = format!("{}\n{}\n", event(100), event(101));
    let r2 = post_json(
        &s.addr,
        "/v1/events",
        &[("authorization", &format!("Bearer {STATIC_KEY}"))],
        "application/x-ndjson",
        nd.as_bytes(),
    )
    .await;
    assert_eq!(r2.status, 202, "{}", r2.body);
    assert_eq!(r2.json()["accepted"], 2);

    let got = read_all(&s.topic, 52, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 52, "exactly once each");
    let envelopes: Vec<Value> = got
        .iter()
        .map(|c| serde_json::from_str(&c.value).expect("json"))
        .collect();
    let got_keys: HashSet<String> = envelopes
        .iter()
        .map(|e| {
            e["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        keys.iter().all(|k| got_keys.contains(k)),
        "202 keys match the topic"
    );
    for (e, orig) in envelopes.iter().zip(&events) {
        let _ = orig;
        for f in [
            "idempotency_key",
            "trace_id",
            "schema_version",
            "source",
            "event_type",
            "user_id",
            "event_ts",
            "payload",
            "ingested_at",
        ] {
            assert!(!e[f].is_null(), "{f} missing in {e}");
        }
        assert_eq!(e["event_ts"], "2026-11-23T12:30:00.123000Z");
        assert_eq!(e["source"], "static");
        assert_eq!(e["payload"]["campaign"], "spring");
    }
    // The Kafka key is the user_id (default partition key).
    let reader_keys = read_keys(&s.topic, 52).await;
    for (k, v) in reader_keys {
        let e: Value = serde_json::from_str(&v).expect("json");
        assert_eq!(Some(k.as_str()), e["user_id"].as_str());
    }
}

async fn read_keys(topic: &str, n: usize) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("keys"))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < n && start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ));
            }
        }
        out
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_produce_once() {
    let s = start(&redis_url(), None, "").await;
    let body = Value::Array((0..3).map(event).collect());
    let idem = unique("idem");
    let hdr = [("Idempotency-Key", idem.as_str())];
    let futs = (0..10).map(|_| post(&s.addr, STATIC_KEY, &body, &hdr));
    let results = futures::future::join_all(futs).await;
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "{statuses:?}"
    );
    let fresh: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == 202 && r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one request produced: {statuses:?}");
    let later = post(&s.addr, STATIC_KEY, &body, &[("Idempotency-Key", &idem)]).await;
    assert_eq!(later.status, 202);
    assert_eq!(later.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(later.body, fresh[0].body, "replayed byte for byte");
    let got = read_all(&s.topic, 3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 3);
    let keys: HashSet<String> = got
        .iter()
        .map(|c| {
            serde_json::from_str::<Value>(&c.value).expect("json")["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(keys, (0..3).map(|i| format!("{idem}:{i}")).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_missing_wrong_disabled_cached_and_redis_down() {
    let mut redis = Private::redis();
    let s = start(&format!("redis://{}", redis.addr), None, "").await;
    let body = Value::Array(vec![event(0)]);
    let r = post_json(
        &s.addr,
        "/v1/events",
        &[],
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("missing_api_key"))
    );
    assert_eq!(
        post(&s.addr, "wrong-key-wrong-key", &body, &[])
            .await
            .status,
        401
    );

    let name = unique("key");
    let key = connectd_keys(&["create", &name]);
    assert!(key.starts_with("cd_"), "{key}");
    assert_eq!(post(&s.addr, &key, &body, &[]).await.status, 202);
    connectd_keys(&["disable", &name]);
    // Documented staleness: a cached key keeps working for at most auth_cache_ttl (1 s here).
    let disabled_at = Instant::now();
    loop {
        let st = post(&s.addr, &key, &body, &[]).await.status;
        if st == 403 {
            break;
        }
        assert_eq!(st, 202);
        assert!(
            disabled_at.elapsed() < Duration::from_secs(3),
            "still accepted after the cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    connectd_keys(&["enable", &name]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(post(&s.addr, &key, &body, &[]).await.status, 202);

    // Redis down: known keys from the LRU, new keys from the database; Idempotency-Key bypassed.
    redis.stop();
    assert_eq!(post(&s.addr, &key, &body, &[]).await.status, 202);
    let name2 = unique("key2");
    let key2 = connectd_keys(&["create", &name2]);
    assert_eq!(post(&s.addr, &key2, &body, &[]).await.status, 202);
    assert_eq!(
        post(
            &s.addr,
            &key2,
            &body,
            &[("Idempotency-Key", "while-redis-is-down")]
        )
        .await
        .status,
        202
    );
    assert_eq!(
        post(&s.addr, "wrong-key-wrong-key", &body, &[])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_keys_get_429_with_retry_after() {
    let s = start(&redis_url(), None, "").await;
    let name = unique("slow");
    let out = Command::new(env!("CARGO_BIN_EXE_connectd"))
        .args(["keys", "create", &name, "--rate-limit", "2"])
        .env("DATABASE_URL", database_url())
        .output()
        .expect("keys");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let body = Value::Array(vec![event(0)]);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = post(&s.addr, &key, &body, &[]).await;
        if r.status == 429 {
            retry_after = r.header("retry-after");
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..2], &[202, 202]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
}

/// One hostile or malformed request and the status it must get.
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    want: u16,
}

fn req(addr: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

fn json_req(addr: &str, body: &[u8]) -> Vec<u8> {
    req(
        addr,
        &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/json\r\n"),
        body,
    )
}

fn corpus(addr: &str) -> Vec<Case> {
    let ok_event = event(0);
    let uid = ok_event["user_id"].as_str().unwrap_or_default().to_string();
    let ev = |patch: Value| {
        let mut e = ok_event.clone();
        if let (Some(o), Some(p)) = (e.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                if v.is_null() {
                    o.remove(k);
                } else {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
        e.to_string().into_bytes()
    };
    let j = |name, body: Vec<u8>, want| Case {
        name,
        raw: json_req(addr, &body),
        want,
    };
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let deep_obj = format!("{{\"user_id\":\"{uid}\",\"event_type\":\"x\",\"client_timestamp\":\"2026-01-01T00:00:00Z\",\"payload\":{}{}}}", "{\"a\":".repeat(200), "}".repeat(200));
    let many: Vec<Value> = (0..501).map(event).collect();
    vec![
        j("truncated JSON", b"{\"user_id\": \"abc".to_vec(), 400),
        j("not JSON at all", b"hello".to_vec(), 400),
        j("trailing garbage", format!("{ok_event} xyz").into_bytes(), 400),
        j("invalid UTF-8", b"{\"user_id\":\"\xff\xfe\"}".to_vec(), 400),
        j("empty body", Vec::new(), 400),
        j("empty array", b"[]".to_vec(), 400),
        j("number body", b"42".to_vec(), 400),
        j("string body", b"\"event\"".to_vec(), 400),
        j("null body", b"null".to_vec(), 400),
        j("array of numbers", b"[1,2]".to_vec(), 400),
        j("10k-deep nesting", deep.into_bytes(), 400),
        j("200-deep payload", deep_obj.into_bytes(), 400),
        j("501 events (max 500)", Value::Array(many).to_string().into_bytes(), 413),
        j("user_id missing", ev(json!({"user_id": null})), 400),
        j("user_id not a UUID", ev(json!({"user_id": "bob"})), 400),
        j("user_id a number", ev(json!({"user_id": 7})), 400),
        j("event_type missing", ev(json!({"event_type": null})), 400),
        j("event_type empty", ev(json!({"event_type": ""})), 400),
        j("event_type an object", ev(json!({"event_type": {}})), 400),
        j("event_type too long", ev(json!({"event_type": "x".repeat(201)})), 400),
        j("timestamp missing", ev(json!({"client_timestamp": null})), 400),
        j("timestamp without offset", ev(json!({"client_timestamp": "2026-11-23T10:00:00"})), 400),
        j("DST-ambiguous local time", ev(json!({"client_timestamp": "2026-11-01T01:30:00"})), 400),
        j("timestamp date only", ev(json!({"client_timestamp": "2026-11-23"})), 400),
        j("timestamp epoch number", ev(json!({"client_timestamp": 1732300000})), 400),
        j("timestamp nonsense", ev(json!({"client_timestamp": "yesterday"})), 400),
        j("payload an array", ev(json!({"payload": [1]})), 400),
        j("payload a string", ev(json!({"payload": "x"})), 400),
        j("idempotency_key a number", ev(json!({"idempotency_key": 5})), 400),
        j("idempotency_key empty", ev(json!({"idempotency_key": ""})), 400),
        j("one bad event among good ones", format!("[{ok_event},{{\"user_id\":\"x\"}}]").into_bytes(), 400),
        Case { name: "text/plain", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: text/plain\r\n"), &ev(json!({}))), want: 415 },
        Case { name: "no content type", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\n"), &ev(json!({}))), want: 415 },
        Case { name: "form content type", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/x-www-form-urlencoded\r\n"), b"a=b"), want: 415 },
        Case { name: "xml", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/xml\r\n"), b"<a/>"), want: 415 },
        Case { name: "2 MB body (max 1 MB)", raw: json_req(addr, &vec![b' '; 2 * 1024 * 1024]), want: 413 },
        Case {
            name: "declared 10 MB body",
            raw: format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-api-key: {STATIC_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n{{").into_bytes(),
            want: 413,
        },
        Case { name: "no key", raw: req(addr, "Content-Type: application/json\r\n", &ev(json!({}))), want: 401 },
        Case { name: "wrong key", raw: req(addr, "x-api-key: nope-nope-nope-nope\r\nContent-Type: application/json\r\n", &ev(json!({}))), want: 401 },
        Case { name: "Bearer without key", raw: req(addr, "Authorization: Bearer \r\nContent-Type: application/json\r\n", &ev(json!({}))), want: 401 },
        Case { name: "Basic auth", raw: req(addr, "Authorization: Basic dXNlcjpwYXNz\r\nContent-Type: application/json\r\n", &ev(json!({}))), want: 401 },
        Case { name: "Idempotency-Key too long", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/json\r\nIdempotency-Key: {}\r\n", "k".repeat(300)), &ev(json!({}))), want: 400 },
        Case { name: "Idempotency-Key with spaces", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/json\r\nIdempotency-Key: a b\r\n"), &ev(json!({}))), want: 400 },
        Case { name: "GET on the events route", raw: format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes(), want: 405 },
        Case { name: "unknown route", raw: format!("POST /v2/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").into_bytes(), want: 404 },
        Case { name: "malformed request line", raw: b"HELLO\r\n\r\n".to_vec(), want: 400 },
        Case { name: "header without colon", raw: format!("POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nbroken header\r\n\r\n").into_bytes(), want: 400 },
        Case {
            name: "8000 headers",
            raw: {
                let mut h = String::new();
                for i in 0..8000 {
                    h.push_str(&format!("x-h{i}: v\r\n"));
                }
                req(addr, &h, b"{}")
            },
            want: 431,
        },
        Case { name: "NDJSON with a bad line", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/x-ndjson\r\n"), format!("{ok_event}\n{{oops\n").as_bytes()), want: 400 },
        Case { name: "NDJSON of an array", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/x-ndjson\r\n"), b"[1]\n"), want: 400 },
        Case { name: "charset parameter is fine", raw: req(addr, &format!("x-api-key: {STATIC_KEY}\r\nContent-Type: application/json; charset=utf-8\r\n"), &ev(json!({}))), want: 202 },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_requests_get_their_documented_4xx_and_never_a_5xx() {
    let s = start(&redis_url(), None, "").await;
    let cases = corpus(&s.addr);
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let r = http_raw(&s.addr, &c.raw).await;
        if r.status != c.want {
            failures.push(format!(
                "{}: got {} want {} body {}",
                c.name,
                r.status,
                c.want,
                r.body.chars().take(200).collect::<String>()
            ));
        }
        if (400..500).contains(&c.want)
            && r.status >= 400
            && r.status < 500
            && !r.body.is_empty()
            && r.status != 405
            && r.status != 431
            && c.name != "malformed request line"
            && c.name != "header without colon"
        {
            let j = r.json();
            if j["message"].as_str().is_none_or(str::is_empty) {
                failures.push(format!("{}: no message in {}", c.name, r.body));
            }
        }
    }
    // Slowloris: a body that trickles in is cut off (408) within body_timeout, headers within header_timeout.
    {
        use tokio::io::AsyncWriteExt;
        let mut st = tokio::net::TcpStream::connect(&s.addr)
            .await
            .expect("connect");
        let head = format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nx-api-key: {STATIC_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{");
        st.write_all(head.as_bytes()).await.expect("write");
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut st, &mut buf),
        )
        .await
        .expect("answered")
        .unwrap_or(0);
        let r = Resp::parse(&buf[..n]);
        if r.status != 408 || started.elapsed() > Duration::from_secs(5) {
            failures.push(format!(
                "slow body: {} after {:?}",
                r.status,
                started.elapsed()
            ));
        }
        let mut st = tokio::net::TcpStream::connect(&s.addr)
            .await
            .expect("connect");
        st.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut st, &mut buf),
        )
        .await
        .expect("closed")
        .unwrap_or(0);
        if started.elapsed() > Duration::from_secs(5) {
            failures.push(format!(
                "slow headers kept the connection {:?} ({n} bytes)",
                started.elapsed()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() + 2,
        failures.join("\n")
    );
    // Memory stayed bounded through the corpus (10 MB bodies, 10k-deep nesting, 8000 headers).
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", s._c.child.id())).unwrap_or_default();
    let peak_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(peak_kb > 0 && peak_kb < 200 * 1024, "peak RSS {peak_kb} kB");
    // Still alive and serving.
    let r = http_raw(
        &s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let bad = post(
        &s.addr,
        STATIC_KEY,
        &json!([{"user_id": "x"}, event(1)]),
        &[],
    )
    .await;
    let errors = bad.json()["errors"].clone();
    assert_eq!(errors[0]["index"], 0);
    assert_eq!(errors[0]["pointer"], "/user_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_paused_gives_503_within_the_timeout_and_nothing_acknowledged_is_lost() {
    let tansu = Private::tansu();
    let s = start(&redis_url(), Some(&tansu.addr), "").await;
    let mut accepted: HashSet<String> = HashSet::new();
    let mut send = |r: &Resp| {
        if r.status == 202 {
            for k in r.json()["idempotency_keys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                accepted.insert(k.as_str().unwrap_or_default().to_string());
            }
        }
    };
    // Before: 202.
    let start_ok = Instant::now();
    loop {
        let r = post(
            &s.addr,
            STATIC_KEY,
            &Value::Array((0..10).map(event).collect()),
            &[],
        )
        .await;
        send(&r);
        if r.status == 202 {
            break;
        }
        assert!(
            start_ok.elapsed() < Duration::from_secs(30),
            "never accepted: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tansu.signal("STOP");
    let t = Instant::now();
    let r = post(
        &s.addr,
        STATIC_KEY,
        &Value::Array((0..10).map(event).collect()),
        &[],
    )
    .await;
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        took < Duration::from_secs(5),
        "503 after {took:?} (ack_timeout 3 s)"
    );
    assert!(r.header("retry-after").is_some());
    send(&r);
    tansu.signal("CONT");
    let t = Instant::now();
    loop {
        let r = post(
            &s.addr,
            STATIC_KEY,
            &Value::Array((0..10).map(event).collect()),
            &[],
        )
        .await;
        send(&r);
        if r.status == 202 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no 202 after SIGCONT: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every acknowledged event is in the topic.
    let reader = {
        let topic = s.topic.clone();
        let addr = tansu.addr.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            use rdkafka::message::Message;
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", unique("reader"))
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .create()
                .expect("consumer");
            c.subscribe(&[&topic]).expect("subscribe");
            let mut keys = HashSet::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                    let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or(Value::Null);
                    keys.insert(
                        v["idempotency_key"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
            keys
        })
    };
    let in_topic = reader.await.expect("reader");
    let missing: Vec<_> = accepted.difference(&in_topic).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing",
        missing.len()
    );
    assert!(accepted.len() >= 20);
}

/// An event whose payload holds `keys` keys (~12 bytes each in the envelope).
fn big_event(keys: usize) -> Value {
    let mut e = event(0);
    let payload: serde_json::Map<String, Value> =
        (0..keys).map(|i| (format!("k{i}"), json!(i))).collect();
    e["payload"] = Value::Object(payload);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_a_broker_message_is_413_naming_it_never_503() {
    // max_event_bytes 500 kB; the producer's message.max.bytes 300 kB, so an event between the
    // two reaches the producer and is refused there.
    let s = start_with(&redis_url(), None, "    max_event_bytes: 500000\n", |y| {
        y.replace(
            "kafka:\n  brokers: ${KAFKA_BROKERS}\n",
            "kafka:\n  brokers: ${KAFKA_BROKERS}\n  producer:\n    message.max.bytes: 300000\n",
        )
    })
    .await;
    let huge = big_event(60_000); // ~700 kB envelope
    let r = post(&s.addr, STATIC_KEY, &json!([event(1), huge]), &[]).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "event_too_large", "{}", r.body);
    assert_eq!(j["errors"][0]["index"], 1, "{}", r.body);
    assert_eq!(j["errors"][0]["limit"], 500_000, "{}", r.body);
    assert!(j["errors"][0]["bytes"].as_u64().unwrap_or(0) > 500_000);

    // Under max_event_bytes, over the producer's limit: still 413, never a 503 to retry.
    let medium = big_event(30_000); // ~350 kB
    let r = post(&s.addr, STATIC_KEY, &medium, &[]).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "event_too_large", "{}", r.body);
    assert!(r.header("retry-after").is_none());

    // Nothing of the refused requests is in the topic: only the event accepted afterwards.
    let ok = post(&s.addr, STATIC_KEY, &event(2), &[]).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    let key = ok.json()["idempotency_keys"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let got = read_all(&s.topic, 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = read_all(&s.topic, usize::MAX, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(again.len(), 1, "a refused event reached the topic");
    let v: Value = serde_json::from_str(&again[0].value).expect("json");
    assert_eq!(v["idempotency_key"], key.as_str());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn encoded_req(addr: &str, encoding: &str, body: &[u8]) -> Vec<u8> {
    req(
        addr,
        &format!(
            "x-api-key: {STATIC_KEY}\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
        ),
        body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_decoded_and_bombs_bad_streams_and_unknown_codings_refused() {
    use std::io::Write;
    let s = start(&redis_url(), None, "").await;
    let events: Vec<Value> = (0..100).map(event).collect();
    let plain = Value::Array(events).to_string().into_bytes();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&plain).expect("zlib");
    let zlib = z.finish().expect("zlib");
    let zst = zstd::encode_all(&plain[..], 3).expect("zstd");
    let mut accepted = HashSet::new();
    for (name, enc, body) in [
        ("gzip", "gzip", gzip(&plain)),
        ("deflate", "deflate", zlib),
        ("zstd", "zstd", zst),
        (
            "gzip then zstd",
            "gzip, zstd",
            zstd::encode_all(&gzip(&plain)[..], 1).expect("zstd"),
        ),
        ("identity", "identity", plain.clone()),
    ] {
        let r = http_raw(&s.addr, &encoded_req(&s.addr, enc, &body)).await;
        assert_eq!(r.status, 202, "{name}: {}", r.body);
        assert_eq!(r.json()["accepted"], 100, "{name}: {}", r.body);
        for k in r.json()["idempotency_keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            accepted.insert(k.as_str().unwrap_or_default().to_string());
        }
    }
    // The same 100 events each time: their derived keys collapse to 100 distinct ones.
    assert_eq!(accepted.len(), 100);

    // The header on a plain body: the body is not gzip → 400, nothing accepted.
    let r = http_raw(&s.addr, &encoded_req(&s.addr, "gzip", &plain)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "bad_content_encoding", "{}", r.body);
    // Truncated zstd → 400.
    let zst = zstd::encode_all(&plain[..], 3).expect("zstd");
    let r = http_raw(
        &s.addr,
        &encoded_req(&s.addr, "zstd", &zst[..zst.len() / 2]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Unknown coding → 415 naming the supported ones.
    let r = http_raw(&s.addr, &encoded_req(&s.addr, "br", &plain)).await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(r.body.contains("gzip"), "{}", r.body);
    assert_eq!(
        r.header("accept-encoding").as_deref(),
        Some("gzip, deflate, zstd, identity")
    );

    // Bombs: ~40 kB of zstd that decodes to 1 GiB (one 1 MiB frame repeated), and 100 MB of
    // gzip'd spaces in ~100 kB. Both are cut off at max_body_bytes (1 MiB) → 413, and the
    // process's peak memory does not follow the expansion.
    let frame = zstd::encode_all(&vec![b' '; 1 << 20][..], 19).expect("zstd");
    let zbomb: Vec<u8> = frame.repeat(1024);
    assert!(zbomb.len() < 1 << 20, "{}", zbomb.len());
    let gbomb = gzip(&vec![b' '; 100 << 20]);
    for (name, enc, body) in [("zstd bomb", "zstd", zbomb), ("gzip bomb", "gzip", gbomb)] {
        let r = http_raw(&s.addr, &encoded_req(&s.addr, enc, &body)).await;
        assert_eq!(r.status, 413, "{name}: {}", r.body);
        assert_eq!(r.json()["error"], "body_too_large", "{name}: {}", r.body);
    }
    let peak = peak_rss_kb(s._c.child.id());
    assert!(peak > 0 && peak < 200 * 1024, "peak RSS {peak} kB");
    let got = read_all(&s.topic, 100, Duration::from_secs(20)).await;
    assert!(got.len() >= 100);
}

/// Sends requests to each address as fast as one client per address can for `secs`; returns
/// (202s, 429s, a 429 answer).
async fn hammer(addrs: &[String], key: &str, secs: u64) -> (usize, usize, Option<Resp>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for addr in addrs {
        for _ in 0..2 {
            let (addr, key) = (addr.clone(), key.to_string());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited, mut sample) = (0, 0, None);
                while Instant::now() < until {
                    let r = post(&addr, &key, &event(0), &[]).await;
                    match r.status {
                        202 => ok += 1,
                        429 => {
                            limited += 1;
                            sample.get_or_insert(r);
                        }
                        other => panic!("unexpected {other}: {}", r.body),
                    }
                }
                (ok, limited, sample)
            }));
        }
    }
    let (mut ok, mut limited, mut sample) = (0, 0, None);
    for t in tasks {
        let (o, l, s) = t.await.expect("task");
        ok += o;
        limited += l;
        if sample.is_none() {
            sample = s;
        }
    }
    (ok, limited, sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_cluster_wide_rate_limit_and_fall_back_per_instance_without_redis() {
    let mut redis = Private::redis();
    let url = format!("redis://{}", redis.addr);
    let extra = "    rate_limit_scope: cluster\n";
    let a = start(&url, None, extra).await;
    let b = start(&url, None, extra).await;
    let name = unique("shared");
    let key = connectd_keys(&["create", &name, "--rate-limit", "20"]);
    let addrs = [a.addr.clone(), b.addr.clone()];
    // 3 s at 20/s with a burst of 20: at most 80 for both instances together (per-instance
    // buckets would let ~160 through). 10% tolerance for requests straddling the edges.
    let (ok, limited, sample) = hammer(&addrs, &key, 3).await;
    eprintln!("cluster scope: {ok} accepted, {limited} limited");
    assert!(ok <= 88, "{ok} accepted over 3 s at 20/s shared (burst 20)");
    assert!(ok >= 60, "{ok} accepted: the limit refuses too much");
    let r = sample.expect("some requests were limited");
    assert_eq!(r.header("ratelimit-limit").as_deref(), Some("20"));
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
    assert!(r.header("ratelimit-reset").is_some());

    // Redis gone: each instance limits on its own — still answered, never a 5xx.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, limited, _) = hammer(&addrs, &key, 2).await;
    eprintln!("fallback: {ok} accepted, {limited} limited");
    assert!(ok >= 40 && limited > 0, "{ok} accepted, {limited} limited");
    let (_, metrics) = a._c.get("/metrics").await;
    let fallbacks: f64 = metrics
        .lines()
        .find(|l| l.starts_with("connectd_http_rate_limit_fallback_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(fallbacks > 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_contracts_validate_each_payload_by_type_and_version() {
    let contracts = tempfile::tempdir().expect("tmp");
    let signup = contracts.path().join("signup");
    std::fs::create_dir_all(&signup).expect("mkdir");
    std::fs::write(
        signup.join("v1.json"),
        json!({"type": "object", "properties": {"plan": {"type": "string"}}, "required": ["plan"]})
            .to_string(),
    )
    .expect("v1");
    std::fs::write(
        signup.join("v2.json"),
        json!({"type": "object", "properties": {"plan": {"type": "string"}, "seats": {"type": "integer", "minimum": 1}}, "required": ["plan"]}).to_string(),
    )
    .expect("v2");
    let extra = format!(
        "    contracts:\n      dir: {}\n      unknown_event_types: reject\n",
        contracts.path().display()
    );
    let s = start(&redis_url(), None, &extra).await;
    let ev = |version: Option<u32>, event_type: &str, payload: Value| {
        let mut e = json!({
            "user_id": uuid::Uuid::new_v4().to_string(),
            "event_type": event_type,
            "client_timestamp": "2026-12-02T10:00:00Z",
            "payload": payload,
        });
        if let Some(v) = version {
            e["schema_version"] = json!(v);
        }
        e
    };
    // v1 by its number, v2 as the default (latest), a top-level field merged into the payload.
    let mut merged = ev(None, "signup", json!({"seats": 3}));
    merged["plan"] = json!("team");
    let ok = json!([ev(Some(1), "signup", json!({"plan": "free"})), merged]);
    let r = post(&s.addr, STATIC_KEY, &ok, &[]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let got = read_all(&s.topic, 2, Duration::from_secs(30)).await;
    let mut versions: Vec<i64> = got
        .iter()
        .map(|c| {
            serde_json::from_str::<Value>(&c.value).expect("json")["schema_version"]
                .as_i64()
                .expect("version")
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        vec![1, 2],
        "the envelope carries the version used"
    );

    // Each bad event is named with its pointer; nothing of the request is accepted.
    let bad = json!([
        ev(Some(2), "signup", json!({"plan": "pro", "seats": 0})),
        ev(Some(9), "signup", json!({"plan": "pro"})),
        ev(None, "refund", json!({})),
        ev(Some(1), "signup", json!({})),
    ]);
    let r = post(&s.addr, STATIC_KEY, &bad, &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["errors"].is_array(), "{}", r.body);
    let at = |i: u64| r.errors_at(i);
    assert!(
        at(0)
            .iter()
            .any(|e| e.starts_with("/payload/seats signup v2")),
        "{:?}",
        at(0)
    );
    assert!(
        at(1).iter().any(|e| e.starts_with("/schema_version ")
            && e.contains("no contract version 9 (known: 1, 2)")),
        "{:?}",
        at(1)
    );
    assert!(
        at(2)
            .iter()
            .any(|e| e.starts_with("/event_type ") && e.contains("unknown event type \"refund\"")),
        "{:?}",
        at(2)
    );
    assert!(
        at(3).iter().any(|e| e.starts_with("/payload signup v1")),
        "{:?}",
        at(3)
    );
    assert!(
        read_all(&s.topic, 3, Duration::from_secs(8)).await.len() == 2,
        "nothing of the refused request was produced"
    );
}
