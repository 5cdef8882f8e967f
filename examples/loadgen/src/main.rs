//! `loadgen`: sends realistic growth events to connectd's `http_source`.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --key $KEY --count 20000 --batch 100 \
//!         --dup-ratio 0.2 --invalid-ratio 0.01 --poison-ratio 0.005 --users 500 --concurrency 8
//! ```
//!
//! * duplicates (`--dup-ratio`): half are client retries of a whole earlier request with the
//!   same `Idempotency-Key`, half are copies of earlier events inside new requests;
//! * invalid events (`--invalid-ratio`): that fraction of the *events* (at any batch size) has a
//!   timestamp without an offset; they are gathered into requests of their own (so they do not
//!   take valid events down with them) — expected 400;
//! * poison events (`--poison-ratio`): valid for HTTP but refused by Postgres (a `\u0000` in the
//!   payload, which jsonb cannot store) — expected in `dead_letters`.
//!
//! * `--gzip`: request bodies sent with `Content-Encoding: gzip`.
//! * `--list-users`: print the user ids the run would draw (same `--users` and `--seed`) and
//!   exit.
//!
//! Prints a progress line every second and a final summary; `--report FILE` writes it as JSON.
//!
//! It always ends by itself, and says why when it fails (exit 1, the reason, the status counts
//! and the first unexpected answer on stderr, `"error"` in the report):
//! * no new accepted event for `--stall-seconds` (default 30);
//! * `--count` not reached within `--max-seconds` (default 600);
//! * nothing accepted at all.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP load generator for connectd's http_source")]
struct Args {
    /// Base URL of the http_source.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key.
    #[arg(long, env = "CONNECTD_API_KEY")]
    key: String,
    /// Events to send (unique events; duplicates come on top).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Stop after this many seconds even if `count` is not reached (0: no limit).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Target events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Share of extra duplicate sends.
    #[arg(long, default_value_t = 0.2)]
    dup_ratio: f64,
    /// Fraction of events that are invalid (gathered into requests of their own, expect 400).
    /// Below 1.
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
    /// Share of poison events (accepted, refused by Postgres).
    #[arg(long, default_value_t = 0.0)]
    poison_ratio: f64,
    /// Distinct users.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// `source` of every event (tags the run; default: a random run id).
    #[arg(long)]
    run_id: Option<String>,
    /// Write the summary as JSON here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fail when `--count` is not reached within this many seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// Fail when no new event was accepted for this many seconds.
    #[arg(long, default_value_t = 30)]
    stall_seconds: u64,
    /// Send bodies gzip-compressed (`Content-Encoding: gzip`).
    #[arg(long)]
    gzip: bool,
    /// Print the `--users` user ids this `--seed` draws, one per line, and exit without
    /// sending anything (the demo fills `user_profiles` for them).
    #[arg(long)]
    list_users: bool,
}

#[derive(Default)]
struct Stats {
    sent_events: AtomicU64,
    requests: AtomicU64,
    s2xx: AtomicU64,
    s4xx: AtomicU64,
    s5xx: AtomicU64,
    errors: AtomicU64,
    replayed: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    accepted_keys: Mutex<HashSet<String>>,
    /// `accepted_keys.len()`, readable without the lock (stall guard).
    accepted: AtomicU64,
    poison_keys: Mutex<HashSet<String>>,
    invalid_sent: AtomicU64,
    /// The first answer that was not expected (status and body), for the failure report.
    first_unexpected: Mutex<Option<String>>,
}

impl Stats {
    fn unexpected(&self, what: String) {
        if let Ok(mut f) = self.first_unexpected.lock() {
            f.get_or_insert(what);
        }
    }
}

struct Request {
    body: String,
    idem: Option<String>,
    poison_keys: Vec<String>,
    invalid: bool,
    events: u64,
}

const TYPES: &[&str] = &["page_view", "signup", "purchase", "share", "invite"];

struct Generator {
    rng: rand::rngs::StdRng,
    users: Vec<String>,
    run: String,
    seq: u64,
    recent_events: Vec<Value>,
    recent_requests: Vec<(String, String)>,
    /// Invalid events drawn but not yet sent (they go out in requests of their own).
    pending_invalid: Vec<Value>,
    args: Args,
}

impl Generator {
    fn event(&mut self) -> Value {
        self.seq += 1;
        let user = self.users[self.rng.random_range(0..self.users.len())].clone();
        let ts = chrono::Utc::now()
            - chrono::Duration::milliseconds(self.rng.random_range(0..86_400_000));
        let ts = if self.rng.random_bool(0.5) {
            ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        } else {
            match chrono::FixedOffset::east_opt(2 * 3600) {
                Some(tz) => ts
                    .with_timezone(&tz)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
                None => ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }
        };
        json!({
            "user_id": user,
            "event_type": TYPES[self.rng.random_range(0..TYPES.len())],
            "client_timestamp": ts,
            "source": self.run,
            "idempotency_key": format!("{}-{}", self.run, self.seq),
            "payload": {"seq": self.seq, "page": format!("/p/{}", self.rng.random_range(0..50))}
        })
    }

    /// The next request, and how many new unique events it carries.
    fn next(&mut self) -> (Request, u64) {
        let a = self.args.clone();
        // Invalid events drawn while building earlier requests go out together, alone.
        if !self.pending_invalid.is_empty() {
            let n = self.pending_invalid.len().min(a.batch.max(1));
            let events: Vec<Value> = self.pending_invalid.drain(..n).collect();
            return (
                Request {
                    body: Value::Array(events).to_string(),
                    idem: None,
                    poison_keys: vec![],
                    invalid: true,
                    events: n as u64,
                },
                0,
            );
        }
        if !self.recent_requests.is_empty()
            && self.rng.random_bool((a.dup_ratio / 2.0).clamp(0.0, 1.0))
        {
            let i = self.rng.random_range(0..self.recent_requests.len());
            let (body, idem) = self.recent_requests[i].clone();
            let n = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0) as u64;
            return (
                Request {
                    body,
                    idem: Some(idem),
                    poison_keys: vec![],
                    invalid: false,
                    events: n,
                },
                0,
            );
        }
        let mut events = Vec::with_capacity(a.batch);
        let mut poison = Vec::new();
        let mut new = 0;
        for _ in 0..a.batch {
            // `invalid_ratio` of the events are invalid, whatever the batch size: such an event
            // takes this slot's place and waits for a request of its own.
            if a.invalid_ratio > 0.0 && self.rng.random_bool(a.invalid_ratio) {
                let mut e = self.event();
                e["client_timestamp"] = json!("2026-11-01T01:30:00");
                self.pending_invalid.push(e);
                continue;
            }
            if !self.recent_events.is_empty()
                && self.rng.random_bool((a.dup_ratio / 2.0).clamp(0.0, 1.0))
            {
                let i = self.rng.random_range(0..self.recent_events.len());
                events.push(self.recent_events[i].clone());
                continue;
            }
            let mut e = self.event();
            if self.rng.random_bool(a.poison_ratio.clamp(0.0, 1.0)) {
                e["payload"]["note"] = json!("nul\u{0}byte");
                poison.push(
                    e["idempotency_key"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            if self.recent_events.len() < 10_000 {
                self.recent_events.push(e.clone());
            } else {
                let i = self.rng.random_range(0..self.recent_events.len());
                self.recent_events[i] = e.clone();
            }
            events.push(e);
            new += 1;
        }
        let n = events.len() as u64;
        let body = Value::Array(events).to_string();
        let idem = format!("{}-req-{}", self.run, self.seq);
        if n > 0 && self.recent_requests.len() < 1000 {
            self.recent_requests.push((body.clone(), idem.clone()));
        }
        (
            Request {
                body,
                idem: Some(idem),
                poison_keys: poison,
                invalid: false,
                events: n,
            },
            new,
        )
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Gzip-compresses a request body.
fn gzip(body: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body.as_bytes())?;
    e.finish()
}

/// Sends one request (retrying 409/429/5xx/connection errors like a well-behaved client, same
/// body and key) and records what came back.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &hyper::Uri,
    args: &Args,
    stats: &Stats,
    req: &Request,
) {
    let body = if args.gzip {
        match gzip(&req.body) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                stats.unexpected(format!("gzip failed: {e}"));
                return;
            }
        }
    } else {
        Bytes::from(req.body.clone())
    };
    for attempt in 0..20u32 {
        let mut b = hyper::Request::post(url.clone())
            .header("content-type", "application/json")
            .header("x-api-key", &args.key);
        if args.gzip {
            b = b.header("content-encoding", "gzip");
        }
        if let Some(k) = &req.idem {
            b = b.header("idempotency-key", k);
        }
        let Ok(http_req) = b.body(Full::new(body.clone())) else {
            return;
        };
        let t = Instant::now();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match client.request(http_req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let replayed = resp.headers().contains_key("idempotent-replayed");
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                if let Ok(mut l) = stats.latencies_us.lock() {
                    l.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                match status {
                    200..=299 => {
                        stats.s2xx.fetch_add(1, Ordering::Relaxed);
                        if replayed {
                            stats.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            if let (Some(keys), Ok(mut set)) =
                                (v["idempotency_keys"].as_array(), stats.accepted_keys.lock())
                            {
                                for k in keys {
                                    set.insert(k.as_str().unwrap_or_default().to_string());
                                }
                                stats.accepted.store(set.len() as u64, Ordering::Relaxed);
                            }
                        }
                        if let Ok(mut p) = stats.poison_keys.lock() {
                            p.extend(req.poison_keys.iter().cloned());
                        }
                        return;
                    }
                    409 | 429 | 500..=599 => {
                        if status >= 500 {
                            stats.s5xx.fetch_add(1, Ordering::Relaxed);
                            stats
                                .unexpected(format!("{status} {}", String::from_utf8_lossy(&body)));
                        } else {
                            stats.s4xx.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1)))
                            .await;
                    }
                    _ => {
                        stats.s4xx.fetch_add(1, Ordering::Relaxed);
                        // A 400 is the expected answer to a request of invalid events only.
                        if !(req.invalid && status == 400) {
                            stats
                                .unexpected(format!("{status} {}", String::from_utf8_lossy(&body)));
                        }
                        return;
                    }
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.unexpected(format!("connection error: {e}"));
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
            }
        }
    }
}

/// How a run ended.
enum Ending {
    /// `--count` reached (or `--duration` over).
    Done,
    /// A reason to fail.
    Failed(String),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.invalid_ratio) {
        anyhow::bail!(
            "--invalid-ratio {} must be at least 0 and below 1",
            args.invalid_ratio
        );
    }
    let run = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("run-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let users: Vec<String> = (0..args.users.max(1))
        .map(|_| {
            uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .to_string()
        })
        .collect();
    if args.list_users {
        println!("{}", users.join("\n"));
        return Ok(());
    }
    let generator = Arc::new(Mutex::new(Generator {
        rng,
        users,
        run: run.clone(),
        seq: 0,
        recent_events: Vec::new(),
        recent_requests: Vec::new(),
        pending_invalid: Vec::new(),
        args: args.clone(),
    }));
    let unique_sent = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(Stats::default());
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();
    let url: hyper::Uri = format!("{}/v1/events", args.url.trim_end_matches('/')).parse()?;
    let started = Instant::now();
    let deadline = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let progress = {
        let stats = stats.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let secs = started.elapsed().as_secs_f64();
                let ev = stats.sent_events.load(Ordering::Relaxed);
                eprint!(
                    "\r{:>6.1}s  events {ev:>9}  {:>8.0}/s  accepted {}  2xx {}  4xx {}  5xx {}  errors {}   ",
                    secs,
                    ev as f64 / secs,
                    stats.accepted.load(Ordering::Relaxed),
                    stats.s2xx.load(Ordering::Relaxed),
                    stats.s4xx.load(Ordering::Relaxed),
                    stats.s5xx.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed)
                );
            }
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (g, stats, client, url, args, unique_sent, done) = (
            generator.clone(),
            stats.clone(),
            client.clone(),
            url.clone(),
            args.clone(),
            unique_sent.clone(),
            done.clone(),
        );
        tasks.spawn(async move {
            loop {
                if done.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let req = {
                    let mut g = match g.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    if unique_sent.load(Ordering::Relaxed) >= args.count {
                        break;
                    }
                    let (req, new) = g.next();
                    unique_sent.fetch_add(new, Ordering::Relaxed);
                    req
                };
                if req.events == 0 {
                    continue;
                }
                if args.rate > 0 {
                    let due = started
                        + Duration::from_secs_f64(
                            stats.sent_events.load(Ordering::Relaxed) as f64 / args.rate as f64,
                        );
                    tokio::time::sleep_until(due.into()).await;
                }
                stats.sent_events.fetch_add(req.events, Ordering::Relaxed);
                if req.invalid {
                    stats.invalid_sent.fetch_add(req.events, Ordering::Relaxed);
                }
                send(&client, &url, &args, &stats, &req).await;
            }
        });
    }

    // The guards: every run ends by itself.
    let guard = {
        let stats = stats.clone();
        let (max, stall) = (
            Duration::from_secs(args.max_seconds.max(1)),
            Duration::from_secs(args.stall_seconds.max(1)),
        );
        async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let accepted = stats.accepted.load(Ordering::Relaxed);
                if accepted != last.0 {
                    last = (accepted, Instant::now());
                }
                if last.1.elapsed() >= stall {
                    return format!(
                        "no new event accepted for {}s (--stall-seconds)",
                        stall.as_secs()
                    );
                }
                if started.elapsed() >= max {
                    return format!(
                        "--count {} not reached within {}s (--max-seconds)",
                        args.count,
                        max.as_secs()
                    );
                }
            }
        }
    };
    let ending = tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => Ending::Done,
        reason = guard => Ending::Failed(reason),
    };
    done.store(true, Ordering::Relaxed);
    tasks.abort_all();
    let _ = progress.await;
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    let mut lat = stats
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let accepted = stats.accepted_keys.lock().map(|s| s.len()).unwrap_or(0);
    let poison = stats.poison_keys.lock().map(|s| s.len()).unwrap_or(0);
    let sent = stats.sent_events.load(Ordering::Relaxed);
    let first_unexpected = stats
        .first_unexpected
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .map(|f| f.chars().take(500).collect::<String>());
    let failure = match ending {
        Ending::Failed(reason) => Some(reason),
        Ending::Done if accepted == 0 => Some("no event was accepted".to_string()),
        Ending::Done => None,
    };
    let summary = json!({
        "run_id": run,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "events_sent": sent,
        "events_per_second": (sent as f64 / secs).round(),
        "requests": stats.requests.load(Ordering::Relaxed),
        "status_2xx": stats.s2xx.load(Ordering::Relaxed),
        "status_4xx": stats.s4xx.load(Ordering::Relaxed),
        "status_5xx": stats.s5xx.load(Ordering::Relaxed),
        "connection_errors": stats.errors.load(Ordering::Relaxed),
        "replayed_responses": stats.replayed.load(Ordering::Relaxed),
        "invalid_events_sent": stats.invalid_sent.load(Ordering::Relaxed),
        "accepted_distinct_keys": accepted,
        "accepted_poison_keys": poison,
        "latency_ms_p50": percentile(&lat, 0.50),
        "latency_ms_p99": percentile(&lat, 0.99),
        "gzip": args.gzip,
        "first_unexpected_answer": first_unexpected,
        "error": failure,
    });
    if let Some(p) = &args.report {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)?;
    }
    if let Some(reason) = failure {
        eprintln!(
            "loadgen failed: {reason}\n  sent {sent} events in {} requests: 2xx {} 4xx {} 5xx {} connection errors {}; accepted {accepted} distinct events\n  first unexpected answer: {}",
            summary["requests"],
            summary["status_2xx"],
            summary["status_4xx"],
            summary["status_5xx"],
            summary["connection_errors"],
            first_unexpected.as_deref().unwrap_or("none"),
        );
        std::process::exit(1);
    }
    println!(
        "sent {sent} events in {secs:.1}s ({:.0}/s): 2xx {} 4xx {} 5xx {}; accepted {accepted} distinct events ({poison} poison); latency p50 {:.1} ms p99 {:.1} ms",
        sent as f64 / secs,
        summary["status_2xx"],
        summary["status_4xx"],
        summary["status_5xx"],
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    Ok(())
}
