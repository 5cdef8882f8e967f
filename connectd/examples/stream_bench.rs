//! Benchmark of http_source's live stream (scripts/bench.sh): `--clients` WebSocket clients on
//! `/v1/stream` while requests of `--batch` events are posted at `--rate` events/s for
//! `--seconds`. Prints one JSON line: events accepted, messages and envelopes delivered, and
//! the delivery latency from each request's 202 to each client's receipt (p50/p99/max).
//!
//! The clients do not parse the arrays: a request is recognised by the first envelope's
//! idempotency key, the receipt time is taken when the message arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// http_source address (host:port).
    #[arg(long)]
    addr: String,
    /// API key.
    #[arg(long)]
    key: String,
    /// Stream clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Events per second posted.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Connections posting.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn first_key(text: &str) -> Option<&str> {
    const NEEDLE: &str = "\"idempotency_key\":\"";
    let at = text.find(NEEDLE)? + NEEDLE.len();
    let end = text[at..].find('"')?;
    Some(&text[at..at + end])
}

/// Keep-alive HTTP/1.1 POST; returns the status and body.
async fn post(
    conn: &mut tokio::net::TcpStream,
    addr: &str,
    key: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let req = format!("POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Ok((status, body));
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    // Clients first; each keeps (first key, receipt) of every message.
    let mut readers = Vec::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    for _ in 0..a.clients {
        let mut req = format!("ws://{}/v1/stream", a.addr).into_client_request()?;
        req.headers_mut()
            .insert("x-api-key", HeaderValue::from_str(&a.key)?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut got: Vec<(String, Instant)> = Vec::new();
            let mut events = 0usize;
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let now = Instant::now();
                            if let Some(k) = first_key(t.as_str()) {
                                got.push((k.to_string(), now));
                            }
                            events += t.as_str().matches("\"idempotency_key\"").count();
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = stop.notified() => break,
                }
            }
            (got, events)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let requests_per_sec = (a.rate as f64 / a.batch as f64).max(1.0);
    let per_conn_interval = Duration::from_secs_f64(a.concurrency as f64 / requests_per_sec);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let mut posters = Vec::new();
    for w in 0..a.concurrency {
        let (addr, key, acks, batch) = (a.addr.clone(), a.key.clone(), acks.clone(), a.batch);
        posters.push(tokio::spawn(async move {
            let mut conn = tokio::net::TcpStream::connect(&addr).await?;
            conn.set_nodelay(true)?;
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + per_conn_interval.mul_f64(w as f64 / 8.0),
                per_conn_interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut accepted, mut refused) = (0usize, 0usize);
            while Instant::now() < deadline {
                tick.tick().await;
                let events: Vec<String> = (0..batch)
                    .map(|i| {
                        format!(
                            r#"{{"user_id":"{}","event_type":"{}","client_timestamp":"2026-12-02T10:00:00Z","payload":{{"i":{i},"page":"/pricing"}}}}"#,
                            uuid::Uuid::new_v4(),
                            if i % 4 == 0 { "purchase" } else { "page_view" }
                        )
                    })
                    .collect();
                let body = format!("[{}]", events.join(","));
                let (status, resp) = post(&mut conn, &addr, &key, &body).await?;
                let now = Instant::now();
                if status == 202 {
                    accepted += batch;
                    let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_default();
                    if let (Some(k), Ok(mut g)) = (v["idempotency_keys"][0].as_str(), acks.lock()) {
                        g.insert(k.to_string(), now);
                    }
                } else {
                    refused += 1;
                }
            }
            Ok::<_, std::io::Error>((accepted, refused))
        }));
    }
    let (mut accepted, mut refused) = (0usize, 0usize);
    for p in posters {
        let (x, y) = p.await??;
        accepted += x;
        refused += y;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.notify_waiters();
    let acks = acks.lock().map(|g| g.clone()).unwrap_or_default();
    let mut latencies = Vec::new();
    let (mut messages, mut envelopes) = (0usize, 0usize);
    for r in readers {
        let (got, events) = r.await?;
        messages += got.len();
        envelopes += events;
        for (k, at) in got {
            if let Some(t) = acks.get(&k) {
                // A message can arrive before the loader has read its 202: that is 0 ms.
                latencies.push(at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
            }
        }
    }
    latencies.sort_by(|x, y| x.total_cmp(y));
    let expected = acks.len() * a.clients;
    println!(
        "{}",
        serde_json::json!({
            "clients": a.clients,
            "target_events_per_second": a.rate,
            "events_accepted": accepted,
            "requests_refused": refused,
            "events_per_second": (accepted as f64 / load_seconds).round(),
            "messages_delivered": messages,
            "messages_expected": expected,
            "envelopes_delivered": envelopes,
            "p50_ms": (percentile(&latencies, 0.50) * 100.0).round() / 100.0,
            "p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
            "max_ms": (latencies.last().copied().unwrap_or(0.0) * 100.0).round() / 100.0,
            "records": envelopes.max(accepted),
        })
    );
    Ok(())
}
