//! The load generator always ends by itself and fails loudly (issue 15): a front door that
//! answers 400 to everything, one that stops answering, and one that works.
//!
//! The peer here is a small in-test HTTP server: what is under test is the generator's own
//! accounting and termination, not connectd (the demo run by `scripts/test.sh` covers that).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

#[derive(Clone, Copy)]
enum Peer {
    /// 400 to every request.
    RejectAll,
    /// 202 to the first 3 requests, then never answers.
    HangAfterThree,
    /// 400 to requests with an event lacking a timestamp offset, else 202 with the keys.
    Honest,
}

async fn serve(peer: Peer) -> String {
    let seen = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/v1/events",
        post(move |body: String| {
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::Relaxed);
                let events: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
                let invalid = events
                    .iter()
                    .any(|e| e["client_timestamp"] == "2026-11-01T01:30:00");
                let accept = || {
                    let keys: Vec<Value> = events
                        .iter()
                        .map(|e| e["idempotency_key"].clone())
                        .collect();
                    (
                        StatusCode::ACCEPTED,
                        json!({"accepted": keys.len(), "idempotency_keys": keys}).to_string(),
                    )
                };
                match peer {
                    Peer::RejectAll => (
                        StatusCode::BAD_REQUEST,
                        json!({"error": "invalid_events", "message": "nope"}).to_string(),
                    ),
                    Peer::HangAfterThree if n >= 3 => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        accept()
                    }
                    Peer::HangAfterThree => accept(),
                    Peer::Honest if invalid => (
                        StatusCode::BAD_REQUEST,
                        json!({"error": "invalid_events", "message": "no offset"}).to_string(),
                    ),
                    Peer::Honest => accept(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

struct Run {
    code: Option<i32>,
    stderr: String,
    report: Value,
    took: Duration,
}

async fn loadgen(url: String, extra: &'static [&'static str]) -> Run {
    let dir = tempfile::tempdir().expect("tmp");
    let report = dir.path().join("r.json");
    let report2 = report.clone();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--url", &url, "--key", "k", "--report"])
            .arg(&report2)
            .args(extra)
            .output()
            .expect("loadgen runs")
    })
    .await
    .expect("join");
    Run {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report: std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null),
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_door_that_refuses_everything_ends_the_run_with_an_error() {
    let url = serve(Peer::RejectAll).await;
    // The demo's own settings: batch 100 with 1% invalid events once made every request invalid.
    let r = loadgen(
        url,
        &[
            "--count",
            "2000",
            "--batch",
            "100",
            "--invalid-ratio",
            "0.01",
            "--stall-seconds",
            "20",
        ],
    )
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
    assert!(r.stderr.contains("no event was accepted"), "{}", r.stderr);
    assert!(r.stderr.contains("400"), "{}", r.stderr);
    assert_eq!(r.report["error"], "no event was accepted");
    assert!(r.report["first_unexpected_answer"]
        .as_str()
        .is_some_and(|a| a.starts_with("400")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_door_that_stops_answering_trips_the_stall_guard() {
    let url = serve(Peer::HangAfterThree).await;
    let r = loadgen(url, &["--count", "100000", "--stall-seconds", "2"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
    assert!(
        r.stderr.contains("no new event accepted for 2s"),
        "{}",
        r.stderr
    );
    assert!(r.report["accepted_distinct_keys"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_seconds_bounds_a_run_that_cannot_reach_its_count() {
    let url = serve(Peer::Honest).await;
    let r = loadgen(
        url,
        &[
            "--count",
            "100000000",
            "--rate",
            "500",
            "--max-seconds",
            "2",
        ],
    )
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(15), "took {:?}", r.took);
    assert!(r.stderr.contains("--max-seconds"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ratio_is_a_share_of_events_at_any_batch_size() {
    let url = serve(Peer::Honest).await;
    let r = loadgen(
        url,
        &[
            "--count",
            "50000",
            "--batch",
            "100",
            "--invalid-ratio",
            "0.01",
            "--dup-ratio",
            "0",
        ],
    )
    .await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let sent = r.report["events_sent"].as_f64().unwrap_or(0.0);
    let invalid = r.report["invalid_events_sent"].as_f64().unwrap_or(0.0);
    let share = invalid / sent;
    // 1% of ~50,500 events: binomial, σ ≈ 0.045 percentage points.
    assert!((0.008..0.012).contains(&share), "invalid share {share}");
    assert!(r.report["accepted_distinct_keys"].as_u64().unwrap_or(0) >= 50_000);
    // Invalid events travel together: far fewer 4xx requests than invalid events.
    let s4xx = r.report["status_4xx"].as_f64().unwrap_or(0.0);
    assert!(
        s4xx > 0.0 && s4xx <= invalid,
        "{s4xx} 4xx for {invalid} invalid events"
    );
}
