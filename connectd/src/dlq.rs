//! `connectd dlq list|replay`: inspect dead letters and re-inject them after a fix (SPEC §9).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::cli::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// Which dead letters.
#[derive(Debug, Args, Clone)]
pub struct Filter {
    /// Only this connector's.
    #[arg(long)]
    pub connector: Option<String>,
    /// Only this error class (e.g. `sqlstate_22P02`).
    #[arg(long)]
    pub class: Option<String>,
    /// Only those first seen within this duration (`30m`, `2h`, `7d`) or since this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only these ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<i64>,
}

/// `connectd dlq` actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, newest first.
    List {
        /// Filters.
        #[command(flatten)]
        filter: Filter,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Produce dead letters again to their original topic (or `--to`), marking them replayed.
    Replay {
        /// Filters.
        #[command(flatten)]
        filter: Filter,
        /// Produce to this topic instead of the original one.
        #[arg(long)]
        to: Option<String>,
        /// Refuse records already replayed this many times (loop guard).
        #[arg(long, default_value_t = 3)]
        max_replays: i32,
        /// Print what would happen, by error class, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
    },
}

fn since_ts(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d: connector_core::config::Duration = s.parse().map_err(|e| format!("--since: {e}"))?;
    let d = chrono::Duration::from_std(d.as_std()).map_err(|e| format!("--since: {e}"))?;
    Ok(chrono::Utc::now() - d)
}

const WHERE: &str = "($1::text IS NULL OR connector = $1) AND ($2::text IS NULL OR error_class = $2) \
                     AND ($3::timestamptz IS NULL OR first_seen >= $3) AND (cardinality($4::bigint[]) = 0 OR id = ANY($4))";

type Row = (
    i64,
    String,
    i32,
    i64,
    String,
    String,
    String,
    i32,
    Option<Vec<u8>>,
    Vec<u8>,
    Value,
    chrono::DateTime<chrono::Utc>,
    i32,
    Option<chrono::DateTime<chrono::Utc>>,
    i32,
);

const COLUMNS: &str = "id, original_topic, original_partition, original_offset, connector, error_class, error_message, attempts, \
                       record_key, payload, headers, first_seen, replay_count, replayed_at, copies";

/// Headers that describe the failure; not carried into a replay.
const FAILURE_HEADERS: &[&str] = &[
    "connectd.error.class",
    "connectd.error.message",
    "connectd.connector",
    "connectd.original.topic",
    "connectd.original.partition",
    "connectd.original.offset",
    "connectd.attempts",
    "connectd.failed_at",
    "connectd.replay.count",
];

/// Runs a `dlq` action against `pool`.
pub async fn run(pool: &sqlx::PgPool, action: DlqAction) -> u8 {
    match action {
        DlqAction::List {
            filter,
            limit,
            json,
        } => list(pool, &filter, limit, json).await,
        DlqAction::Replay {
            filter,
            to,
            max_replays,
            dry_run,
            brokers,
        } => replay(pool, &filter, to, max_replays, dry_run, &brokers).await,
    }
}

async fn fetch(pool: &sqlx::PgPool, f: &Filter, extra: &str, limit: i64) -> Result<Vec<Row>, u8> {
    let since = match f.since.as_deref().map(since_ts).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(EXIT_USAGE);
        }
    };
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE {WHERE} {extra} LIMIT $5");
    sqlx::query_as::<_, Row>(&sql)
        .bind(&f.connector)
        .bind(&f.class)
        .bind(since)
        .bind(&f.ids)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            EXIT_RUNTIME
        })
}

async fn list(pool: &sqlx::PgPool, f: &Filter, limit: i64, json: bool) -> u8 {
    let rows = match fetch(pool, f, "ORDER BY id DESC", limit).await {
        Ok(r) => r,
        Err(c) => return c,
    };
    for r in &rows {
        let (
            id,
            topic,
            part,
            off,
            connector,
            class,
            msg,
            attempts,
            _,
            payload,
            _,
            first,
            replays,
            replayed,
            copies,
        ) = r;
        if json {
            println!(
                "{}",
                serde_json::json!({"id": id, "origin": format!("{topic}/{part}/{off}"), "connector": connector, "error_class": class,
                    "error_message": msg, "attempts": attempts, "first_seen": first, "replay_count": replays, "replayed_at": replayed, "copies": copies,
                    "payload": String::from_utf8_lossy(payload)})
            );
        } else {
            let preview: String = String::from_utf8_lossy(payload).chars().take(60).collect();
            println!(
                "{id:>8}  {first}  {connector:<16} {class:<20} {topic}/{part}/{off}  copies={copies} replays={replays}{}  {msg}  {preview}",
                if replayed.is_some() { " (replayed)" } else { "" }
            );
        }
    }
    eprintln!(
        "{} dead letter{}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    EXIT_OK
}

async fn replay(
    pool: &sqlx::PgPool,
    f: &Filter,
    to: Option<String>,
    max: i32,
    dry_run: bool,
    brokers: &str,
) -> u8 {
    let rows = match fetch(pool, f, "AND replayed_at IS NULL ORDER BY id", i64::MAX).await {
        Ok(r) => r,
        Err(c) => return c,
    };
    let (ok, refused): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.12 < max);
    if dry_run || rows.is_empty() {
        let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for r in &ok {
            by.entry(&r.5).or_default().0 += 1;
        }
        for r in &refused {
            by.entry(&r.5).or_default().1 += 1;
        }
        println!("{:<28} {:>10} {:>10}", "error class", "replay", "refused");
        for (class, (a, b)) in &by {
            println!("{class:<28} {a:>10} {b:>10}");
        }
        println!("{:<28} {:>10} {:>10}", "total", ok.len(), refused.len());
        if dry_run {
            eprintln!("dry run: nothing produced");
        }
        return EXIT_OK;
    }
    let producer: FutureProducer = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_RUNTIME;
        }
    };
    let total = ok.len();
    let mut done = 0usize;
    for chunk in ok.chunks(500) {
        let sends = chunk.iter().map(|r| {
            let topic = to.clone().unwrap_or_else(|| r.1.clone());
            let producer = &producer;
            async move {
                let mut headers = OwnedHeaders::new();
                if let Value::Object(h) = &r.10 {
                    for (k, v) in h {
                        if !FAILURE_HEADERS.contains(&k.as_str()) {
                            headers = headers.insert(Header {
                                key: k,
                                value: v.as_str().map(str::as_bytes),
                            });
                        }
                    }
                }
                let count = (r.12 + 1).to_string();
                headers = headers.insert(Header {
                    key: "connectd.replay.count",
                    value: Some(count.as_bytes()),
                });
                let mut rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&topic).payload(&r.9[..]).headers(headers);
                if let Some(k) = &r.8 {
                    rec = rec.key(&k[..]);
                }
                producer
                    .send(rec, Duration::from_secs(30))
                    .await
                    .map(|_| r.0)
                    .map_err(|(e, _)| e)
            }
        });
        let results = futures::future::join_all(sends).await;
        let mut ids = Vec::new();
        for res in results {
            match res {
                Ok(id) => ids.push(id),
                Err(e) => {
                    eprintln!("error: produce failed: {e}");
                }
            }
        }
        if let Err(e) = sqlx::query("UPDATE dead_letters SET replayed_at = now(), replay_count = replay_count + 1 WHERE id = ANY($1)")
            .bind(&ids)
            .execute(pool)
            .await
        {
            eprintln!("error: produced but could not mark as replayed: {e}");
            return EXIT_RUNTIME;
        }
        done += ids.len();
        eprint!("\rreplayed {done}/{total}");
        if ids.len() < chunk.len() {
            eprintln!();
            return EXIT_RUNTIME;
        }
    }
    eprintln!();
    println!(
        "replayed {done}; refused {} (replayed {max} times already)",
        refused.len()
    );
    if !refused.is_empty() {
        return EXIT_USAGE;
    }
    EXIT_OK
}
