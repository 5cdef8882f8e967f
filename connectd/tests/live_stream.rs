//! http_source's live stream `GET /v1/stream` (issue 19) against real Redis and the broker:
//! fan-out across two processes through Redis Pub/Sub, auth, limits, slow clients, shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "stream-key-0123456789abcdef";
const OTHER_KEY: &str = "other-key-0123456789abcdef";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Instance {
    c: Connectd,
    addr: String,
}

/// One http_source named `name` with the stream on, listening on a port of its own.
fn start(dir: &std::path::Path, name: &str, topic: &str, stream: &str) -> Instance {
    let addr = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 5s
connectors:
  - name: {name}
    type: http_source
    output: {topic}
    listen: {addr}
    redis_url: ${{REDIS_URL}}
    static_keys:
      - name: reader
        key: {KEY}
      - name: other
        key: {OTHER_KEY}
    max_events: 1000
    ack_timeout: 5s
    stream:
{stream}"#
    );
    let cfg = write_file(dir, &format!("{}.yaml", free_port()), &yaml);
    let log = dir.join(format!("{}.log", free_port()));
    let c = Connectd::start(&cfg, &log, &[("REDIS_URL", redis_url())]);
    let started = Instant::now();
    // Ready, not only listening: a port that answers could belong to a process that is about
    // to go away, and the source answers /readyz only once its producer reaches the broker.
    while !ready(&addr) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "http_source never became ready; log:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Instance { c, addr }
}

/// `GET /readyz` answered 200.
fn ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

async fn connect(
    addr: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>), (u16, String)> {
    let mut req = format!("ws://{addr}/v1/stream{query}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("name"),
            HeaderValue::from_str(v).expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => Ok((
            ws,
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        )),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Err(e) => panic!("cannot connect: {e}"),
    }
}

/// Reads envelopes until `n` arrived (or panics after `timeout`).
async fn receive(ws: &mut Ws, n: usize, timeout: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let arr: Vec<Value> = serde_json::from_str(t.as_str()).expect("array of envelopes");
                out.extend(arr);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "stream ended after {} of {n} envelopes: {other:?}",
                out.len()
            ),
        }
    }
    out
}

fn events(request: usize, per: usize, user: &str) -> Value {
    Value::Array(
        (0..per)
            .map(|i| {
                let n = request * per + i;
                json!({
                    "user_id": if n % 5 == 0 { user.to_string() } else { uuid::Uuid::new_v4().to_string() },
                    "event_type": if n % 3 == 0 { "signup" } else { "page_view" },
                    "client_timestamp": "2026-12-02T10:00:00Z",
                    "payload": {"n": n},
                })
            })
            .collect(),
    )
}

async fn post(addr: &str, body: &Value) -> Resp {
    post_events(addr, KEY, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_instance_b_receives_what_instance_a_accepted_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("stream");
    create_topic(&topic, 3).await;
    // Both instances carry the same connector name: they share its Pub/Sub channel.
    let name = unique("live");
    let a = start(dir.path(), &name, &topic, "      client_queue: 4096");
    let b = start(dir.path(), &name, &topic, "      client_queue: 4096");
    let user = uuid::Uuid::new_v4().to_string();

    // Header auth on B; on A the browser way (key in the sub-protocol offer) with filters.
    let (mut on_b, _) = connect(&b.addr, "", &[("x-api-key", KEY)])
        .await
        .expect("B");
    let offer = format!("connectd.v1, connectd.key.{KEY}");
    let (mut on_a, protocol) = connect(
        &a.addr,
        &format!("?event_type=signup&user_id={user}"),
        &[("sec-websocket-protocol", &offer)],
    )
    .await
    .expect("A");
    assert_eq!(
        protocol.as_deref(),
        Some("connectd.v1"),
        "the server selects connectd.v1, never echoes the key"
    );
    // Subscriptions are live once the server answered the upgrade; give Redis a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (requests, per) = (20, 50);
    let mut keys = Vec::new();
    for r in 0..requests {
        let resp = post(&a.addr, &events(r, per, &user)).await;
        assert_eq!(resp.status, 202, "{}", resp.body);
        for k in resp.json()["idempotency_keys"].as_array().expect("keys") {
            keys.push(k.as_str().expect("key").to_string());
        }
    }
    let total = requests * per;
    let got = receive(&mut on_b, total, Duration::from_secs(30)).await;
    assert_eq!(got.len(), total, "exactly what was accepted, nothing more");
    let ns: Vec<u64> = got
        .iter()
        .map(|e| e["payload"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        ns,
        (0..total as u64).collect::<Vec<_>>(),
        "in the order A accepted them"
    );
    let streamed_keys: Vec<String> = got
        .iter()
        .map(|e| e["idempotency_key"].as_str().expect("key").to_string())
        .collect();
    assert_eq!(streamed_keys, keys, "the envelopes of the 202s");
    // The same envelopes are in the topic.
    let in_topic = read_all(&topic, total, Duration::from_secs(60)).await;
    assert_eq!(in_topic.len(), total);

    // The filtered client saw only the fixed user's signups, in order.
    let expected: Vec<u64> = (0..total as u64)
        .filter(|n| n % 5 == 0 && n % 3 == 0)
        .collect();
    let filtered = receive(&mut on_a, expected.len(), Duration::from_secs(30)).await;
    assert_eq!(
        filtered
            .iter()
            .map(|e| e["payload"]["n"].as_u64().expect("n"))
            .collect::<Vec<_>>(),
        expected
    );
    assert!(filtered
        .iter()
        .all(|e| e["event_type"] == "signup" && e["user_id"] == user.as_str()));
    // Nothing else arrives for it.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), on_a.next())
            .await
            .is_err(),
        "no envelope beyond the filter"
    );

    let (_, metrics_b) = b.c.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics_b,
            &format!("connectd_stream_events_sent_total{{connector=\"{name}\"}}")
        ),
        total as u64
    );
    assert_eq!(
        metric(
            &metrics_b,
            &format!("connectd_stream_clients{{connector=\"{name}\"}}")
        ),
        1
    );
    let (_, metrics_a) = a.c.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics_a,
            &format!("connectd_stream_published_total{{connector=\"{name}\"}}")
        ),
        requests as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_urls_with_keys_and_too_many_clients_are_refused_and_shutdown_closes_1001() {
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("stream-auth");
    create_topic(&topic, 1).await;
    let name = unique("live-auth");
    let mut inst = start(
        dir.path(),
        &name,
        &topic,
        "      max_clients_per_key: 2\n      ping_interval: 1s",
    );

    assert_eq!(
        connect(&inst.addr, "", &[]).await.err().map(|e| e.0),
        Some(401)
    );
    assert_eq!(
        connect(&inst.addr, "", &[("x-api-key", "not-a-key-0123456789")])
            .await
            .err()
            .map(|e| e.0),
        Some(401)
    );
    let wrong_offer = "connectd.v1, connectd.key.wrong-key-0123456789";
    assert_eq!(
        connect(&inst.addr, "", &[("sec-websocket-protocol", wrong_offer)])
            .await
            .err()
            .map(|e| e.0),
        Some(401)
    );
    let (status, body) = connect(&inst.addr, &format!("?key={KEY}"), &[])
        .await
        .expect_err("refused");
    assert_eq!(status, 400);
    assert!(body.contains("key_in_url"), "{body}");
    // A plain GET is told to upgrade.
    let plain = http_raw(
        &inst.addr,
        format!(
            "GET /v1/stream HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(plain.status, 426, "{}", plain.body);

    let (mut first, _) = connect(&inst.addr, "", &[("x-api-key", KEY)])
        .await
        .expect("1st");
    let (_second, _) = connect(&inst.addr, "", &[("x-api-key", KEY)])
        .await
        .expect("2nd");
    let (status, body) = connect(&inst.addr, "", &[("x-api-key", KEY)])
        .await
        .expect_err("3rd refused");
    assert_eq!(status, 429, "{body}");
    // Another key has places of its own.
    let (_other, _) = connect(&inst.addr, "", &[("x-api-key", OTHER_KEY)])
        .await
        .expect("other key");

    // Heartbeats: the server pings; tungstenite answers pongs while we read.
    let pinged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = first.next().await {
                return;
            }
        }
    })
    .await;
    assert!(pinged.is_ok(), "a ping within two intervals");

    let (_, m) = inst.c.get("/metrics").await;
    assert_eq!(
        metric(
            &m,
            &format!("connectd_stream_refused_total{{connector=\"{name}\",reason=\"auth\"}}")
        ),
        3
    );
    assert_eq!(
        metric(&m, &format!("connectd_stream_refused_total{{connector=\"{name}\",reason=\"max_clients_per_key\"}}")),
        1
    );

    inst.c.signal("TERM");
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(1001));
    let (code, _) = inst.c.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "log:\n{}", inst.c.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("stream-slow");
    create_topic(&topic, 3).await;
    let name = unique("live-slow");
    let inst = start(
        dir.path(),
        &name,
        &topic,
        "      client_queue: 64\n      write_timeout: 2s",
    );
    // The stalled client: its socket is never read again after the handshake.
    let (stalled, _) = connect(&inst.addr, "", &[("x-api-key", KEY)])
        .await
        .expect("stalled");
    // A reader that keeps up, on another task.
    let (mut reader, _) = connect(&inst.addr, "", &[("x-api-key", OTHER_KEY)])
        .await
        .expect("reader");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = 100_000usize;
    let per = 1000;
    let reading = tokio::spawn(async move {
        let got = receive(&mut reader, total, Duration::from_secs(240)).await;
        got.len()
    });
    let addr = inst.addr.clone();
    let mut senders = Vec::new();
    for w in 0..4 {
        let addr = addr.clone();
        senders.push(tokio::spawn(async move {
            for r in (w..total / per).step_by(4) {
                let resp = post(
                    &addr,
                    &events(r, per, "00000000-0000-4000-8000-000000000000"),
                )
                .await;
                assert_eq!(resp.status, 202, "{}", resp.body);
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    assert_eq!(
        reading.await.expect("reader"),
        total,
        "the reader got every envelope"
    );

    // The stalled client is closed once a send to it has waited `write_timeout` (2 s): that
    // can come after the reader got everything when the events went through quickly.
    let slow = format!("connectd_stream_slow_closes_total{{connector=\"{name}\"}}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let (_, m) = inst.c.get("/metrics").await;
        if metric(&m, &slow) >= 1 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metric(&m, &slow), 1, "the stalled client was closed");
    assert_eq!(
        metric(
            &m,
            &format!("connectd_stream_clients{{connector=\"{name}\"}}")
        ),
        1,
        "only the reader is left"
    );
    let peak_mb = peak_rss_kb(inst.c.child.id()) / 1024;
    // 100k envelopes are ~45 MB of JSON; the stalled client may cost at most its queue.
    assert!(peak_mb < 150, "peak RSS {peak_mb} MB");
    eprintln!("peak RSS with a stalled client over {total} events: {peak_mb} MB");
    // The stalled socket holds what the kernel buffered, then its end.
    let (_, mut rx) = stalled.split();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 0usize;
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(_) = m {
                n += 1;
            }
        }
        n
    })
    .await
    .expect("the stalled connection ends");
    assert!(
        drained < total / per,
        "it did not get everything: {drained} messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectd_stream_prints_the_filtered_envelopes_one_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("stream-cli");
    create_topic(&topic, 1).await;
    let name = unique("live-cli");
    let inst = start(dir.path(), &name, &topic, "      client_queue: 64");
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_connectd"))
        .args(["stream", "--url", &format!("ws://{}/v1/stream", inst.addr)])
        .args(["--event-type", "signup", "--max", "4"])
        .env("CONNECTD_API_KEY", OTHER_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("connectd stream");
    let mut stderr = BufReader::new(cli.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("stderr line");
    assert_eq!(
        line.trim(),
        "connected",
        "connectd log:\n{}",
        inst.c.log_text()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 12 events, every third a signup: 4 signups.
    let resp = post(
        &inst.addr,
        &events(0, 12, "00000000-0000-4000-8000-000000000001"),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.body);
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one envelope per line"))
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["payload"]["n"].as_u64().expect("n"))
            .collect::<Vec<_>>(),
        vec![0, 3, 6, 9]
    );
    assert!(lines.iter().all(|e| e["event_type"] == "signup"));
}
