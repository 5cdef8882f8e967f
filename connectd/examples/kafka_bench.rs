//! Broker ceilings and connector throughput, for `scripts/bench.sh` (not a test).
//!
//! ```text
//! kafka_bench produce  --topic T --count N [--size 100] [--partitions 6]   # create + fill, print rate
//! kafka_bench consume  --topic T --count N                                 # read N from the start
//! kafka_bench wait-group --group G --topic T --count N                     # until G committed N records
//! kafka_bench envelopes --topic T --count N [--dup-ratio 0.2]                # growth-event envelopes
//!                       [--groups 10000 --minutes 10]                        # ... users and rising times
//! kafka_bench pg-ceiling --rows N --conns C --method copy|unnest             # Postgres from memory
//! kafka_bench agg-ceiling --records N [--groups 10000 --minutes 10]         # aggregate upserts from memory
//! kafka_bench redis-ceiling --keys N                                        # pipelined SET NX EX
//! kafka_bench redis-ops-ceiling --records N                                 # pipelined ZINCRBY + XADD
//! kafka_bench lookup-ceiling --table T --keys N [--batch 5000 --conns 2]     # enrich's batched lookup
//! ```
//! Each prints one JSON line: `{"what":…, "records":…, "seconds":…, "per_second":…}`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:59092")]
    brokers: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Produce {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
    Consume {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
    },
    Envelopes {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 0.0)]
        dup_ratio: f64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// For the aggregate benchmark: this many distinct users, event times rising through
        /// `--minutes` minutes from 2026-11-24T10:00Z (0: the usual envelopes).
        #[arg(long, default_value_t = 0)]
        groups: u64,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    PgCeiling {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        rows: u64,
        #[arg(long, default_value_t = 1)]
        conns: u64,
        #[arg(long, default_value = "unnest")]
        method: String,
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
    RedisCeiling {
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[arg(long)]
        keys: u64,
        #[arg(long, default_value_t = 2000)]
        pipeline: usize,
    },
    /// Pipelined ZINCRBY + XADD per record, the operations of the redis_sink benchmark,
    /// without the cursor or Lua: its ceiling.
    RedisOpsCeiling {
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[arg(long)]
        records: u64,
        #[arg(long, default_value_t = 2000)]
        pipeline: usize,
    },
    /// The aggregate benchmark's PostgreSQL side alone: the same events folded in memory per
    /// `batch` records into (minute, user) partials, merged with the aggregate sink's upsert
    /// (`ON CONFLICT DO UPDATE SET n = n + excluded.n`, keys in order), `conns` in parallel.
    AggCeiling {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        records: u64,
        #[arg(long, default_value_t = 10_000)]
        groups: u64,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 10_000)]
        batch: u64,
        #[arg(long, default_value_t = 2)]
        conns: u64,
    },
    /// The enrich benchmark's store side alone: the `--keys` distinct users of the envelopes
    /// (`envelope`'s user ids) looked up `--batch` at a time with the query enrich sends
    /// (`row_to_json` of `= any($1::uuid[])`), `--conns` in parallel; every key must be found.
    LookupCeiling {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long)]
        table: String,
        #[arg(long, default_value_t = 50_000)]
        keys: u64,
        #[arg(long, default_value_t = 5000)]
        batch: u64,
        #[arg(long, default_value_t = 2)]
        conns: u64,
    },
    /// The parquet_sink benchmark's ceiling: the envelopes `envelope(tag, 0..count)` already
    /// typed in memory, written as Arrow batches through the same Parquet writer settings
    /// (zstd 3) into day folders, `--flush` records per flush, each file fsynced and renamed
    /// into place: encoding and disk without the broker, the runtime or JSON parsing.
    ParquetCeiling {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 100_000)]
        flush: u64,
        #[arg(long, default_value = "ceil")]
        tag: String,
    },
    WaitGroup {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

fn report(what: &str, records: u64, secs: f64) {
    println!(
        "{{\"what\":\"{what}\",\"records\":{records},\"seconds\":{secs:.3},\"per_second\":{:.0}}}",
        records as f64 / secs
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Produce {
            topic,
            count,
            size,
            partitions,
        } => {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .create()?;
            admin
                .create_topics(
                    &[NewTopic::new(
                        &topic,
                        partitions,
                        TopicReplication::Fixed(1),
                    )],
                    &AdminOptions::new(),
                )
                .await?;
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("batch.num.messages", "10000")
                .set("queue.buffering.max.kbytes", "1048576")
                .create()?;
            let start = Instant::now();
            for i in 0..count {
                let key = format!("user-{}", i % 10_000);
                let mut value = format!("{{\"i\":{i},\"pad\":\"");
                while value.len() < size.saturating_sub(2) {
                    value.push('x');
                }
                value.push_str("\"}");
                let mut rec = BaseRecord::to(&topic).key(&key).payload(&value);
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            producer.poll(Duration::from_millis(10));
                        }
                    }
                }
            }
            producer.flush(Duration::from_secs(120))?;
            report("produce", count, start.elapsed().as_secs_f64());
        }
        Cmd::Consume { topic, count } => {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .set("group.id", format!("bench-{}", std::process::id()))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "6000")
                .create()?;
            c.subscribe(&[&topic])?;
            let mut n = 0u64;
            let mut start = None;
            while n < count {
                if let Some(Ok(_)) = c.poll(Duration::from_millis(500)) {
                    start.get_or_insert_with(Instant::now);
                    n += 1;
                }
            }
            report(
                "consume",
                n,
                start.map_or(0.0, |s| s.elapsed().as_secs_f64()),
            );
        }
        Cmd::Envelopes {
            topic,
            count,
            dup_ratio,
            partitions,
            groups,
            minutes,
        } => {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .create()?;
            admin
                .create_topics(
                    &[NewTopic::new(
                        &topic,
                        partitions,
                        TopicReplication::Fixed(1),
                    )],
                    &AdminOptions::new(),
                )
                .await?;
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("batch.num.messages", "10000")
                .set("queue.buffering.max.kbytes", "1048576")
                .create()?;
            let start = Instant::now();
            let distinct = ((count as f64) * (1.0 - dup_ratio)).max(1.0) as u64;
            let tag = format!("{}", std::process::id());
            for i in 0..count {
                // The first `distinct` records are new; the rest repeat earlier ones.
                let n = if i < distinct {
                    i
                } else {
                    (i * 7919) % distinct
                };
                let value = if groups > 0 {
                    timed_envelope(&tag, n, count, groups, minutes)
                } else {
                    envelope(&tag, n)
                };
                let key = format!("{:012x}", n % 10_000);
                let mut rec = BaseRecord::to(&topic).key(&key).payload(&value);
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            producer.poll(Duration::from_millis(10));
                        }
                    }
                }
            }
            producer.flush(Duration::from_secs(120))?;
            println!("{{\"what\":\"envelopes\",\"records\":{count},\"distinct\":{distinct},\"seconds\":{:.3}}}", start.elapsed().as_secs_f64());
        }
        Cmd::PgCeiling {
            database_url,
            rows,
            conns,
            method,
            batch,
        } => pg_ceiling(&database_url, rows, conns, &method, batch).await?,
        Cmd::AggCeiling {
            database_url,
            records,
            groups,
            minutes,
            batch,
            conns,
        } => agg_ceiling(&database_url, records, groups, minutes, batch, conns).await?,
        Cmd::ParquetCeiling {
            count,
            dir,
            flush,
            tag,
        } => parquet_ceiling(count, &dir, flush, &tag)?,
        Cmd::LookupCeiling {
            database_url,
            table,
            keys,
            batch,
            conns,
        } => lookup_ceiling(&database_url, &table, keys, batch, conns).await?,
        Cmd::RedisCeiling {
            redis_url,
            keys,
            pipeline,
        } => {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let tag = std::process::id();
            let start = Instant::now();
            let mut i = 0u64;
            while i < keys {
                let mut pipe = redis::pipe();
                for _ in 0..pipeline.min((keys - i) as usize) {
                    pipe.cmd("SET")
                        .arg(format!("bench:{tag}:{i}"))
                        .arg("t/0/1")
                        .arg("NX")
                        .arg("EX")
                        .arg(300)
                        .ignore();
                    i += 1;
                }
                let () = pipe.query_async(&mut conn).await?;
            }
            report("redis_set_nx_ex", keys, start.elapsed().as_secs_f64());
            // Leave the shared Redis as we found it.
            let mut i = 0u64;
            while i < keys {
                let mut pipe = redis::pipe();
                for _ in 0..pipeline.min((keys - i) as usize) {
                    pipe.cmd("UNLINK").arg(format!("bench:{tag}:{i}")).ignore();
                    i += 1;
                }
                let () = pipe.query_async(&mut conn).await?;
            }
        }
        Cmd::RedisOpsCeiling {
            redis_url,
            records,
            pipeline,
        } => {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let tag = format!("bench-ops:{}", std::process::id());
            let start = Instant::now();
            let mut i = 0u64;
            while i < records {
                let mut pipe = redis::pipe();
                for _ in 0..pipeline.min((records - i) as usize) {
                    let user = format!("00000000-0000-4000-8000-{:012x}", i % 1000);
                    let kind = if i % 3 == 0 { "signup" } else { "page_view" };
                    pipe.cmd("ZINCRBY")
                        .arg(format!("{tag}:lb:{kind}"))
                        .arg(1)
                        .arg(&user)
                        .ignore();
                    pipe.cmd("XADD")
                        .arg(format!("{tag}:stream"))
                        .arg("*")
                        .arg("user_id")
                        .arg(&user)
                        .arg("event_type")
                        .arg(kind)
                        .ignore();
                    i += 1;
                }
                let () = pipe.query_async(&mut conn).await?;
            }
            report("redis_zincrby_xadd", records, start.elapsed().as_secs_f64());
            let () = redis::cmd("UNLINK")
                .arg(format!("{tag}:lb:signup"))
                .arg(format!("{tag}:lb:page_view"))
                .arg(format!("{tag}:stream"))
                .query_async(&mut conn)
                .await?;
        }
        Cmd::WaitGroup {
            group,
            topic,
            count,
            partitions,
            timeout_secs,
        } => {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .set("group.id", &group)
                .create()?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let start = Instant::now();
            let mut first_progress: Option<(Instant, u64)> = None;
            loop {
                let committed = c.committed_offsets(tpl.clone(), Duration::from_secs(10))?;
                let by_part: BTreeMap<i32, i64> = committed
                    .elements()
                    .iter()
                    .map(|e| {
                        (
                            e.partition(),
                            if let Offset::Offset(o) = e.offset() {
                                o
                            } else {
                                0
                            },
                        )
                    })
                    .collect();
                let total: i64 = by_part.values().sum();
                if total > 0 && first_progress.is_none() {
                    first_progress = Some((Instant::now(), total as u64));
                }
                if total as u64 >= count {
                    break;
                }
                if start.elapsed() > Duration::from_secs(timeout_secs) {
                    return Err(format!("group {group} committed {total} of {count}").into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let seconds = start.elapsed().as_secs_f64();
            // Steady state: from the first commit (the group has joined and a first batch is
            // done) to the last, over the records committed in between.
            let steady = first_progress.map(|(t, n)| {
                let s = t.elapsed().as_secs_f64();
                if s > 0.0 {
                    (count.saturating_sub(n)) as f64 / s
                } else {
                    0.0
                }
            });
            println!(
                "{}",
                serde_json::json!({
                    "what": "group",
                    "records": count,
                    "seconds": (seconds * 1000.0).round() / 1000.0,
                    "per_second": (count as f64 / seconds).round(),
                    "steady_per_second": steady.map(f64::round),
                })
            );
        }
    }
    Ok(())
}

/// A growth-event envelope as http_source produces it.
fn envelope(tag: &str, n: u64) -> String {
    format!(
        "{{\"idempotency_key\":\"bench-{tag}-{n}\",\"trace_id\":\"t{n}\",\"schema_version\":1,\"source\":\"bench\",\"event_type\":\"{}\",\"user_id\":\"{:08x}-0000-4000-8000-{:012x}\",\"event_ts\":\"2026-11-{:02}T{:02}:{:02}:{:02}Z\",\"payload\":{{\"page\":\"/p/{}\",\"n\":{n}}},\"ingested_at\":\"2026-11-23T12:00:00Z\"}}",
        ["page_view", "signup", "purchase"][(n % 3) as usize],
        n % 50_000,
        n % 50_000,
        1 + n % 20,
        n % 24,
        n % 60,
        (n / 60) % 60,
        n % 50
    )
}

/// The user id of `envelope(_, n)`.
fn envelope_user(n: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n % 50_000, n % 50_000)
}

async fn lookup_ceiling(
    url: &str,
    table: &str,
    keys: u64,
    batch: u64,
    conns: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(conns as u32)
        .connect(url)
        .await?;
    let sql = format!("select row_to_json(t)::text from (select user_id, tier, region from {table} where user_id = any($1::uuid[])) t");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (pool, sql) = (pool.clone(), sql.clone());
        tasks.push(tokio::spawn(async move {
            let mut found = 0u64;
            let mut i = c * batch;
            while i < keys {
                let ks: Vec<String> = (i..(i + batch).min(keys)).map(envelope_user).collect();
                let rows: Vec<String> = sqlx::query_scalar(&sql).bind(&ks).fetch_all(&pool).await?;
                found += rows.len() as u64;
                i += conns * batch;
            }
            Ok::<u64, sqlx::Error>(found)
        }));
    }
    let mut found = 0;
    for t in tasks {
        found += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    if found != keys {
        return Err(format!("lookup ceiling found {found} of {keys} keys in {table}").into());
    }
    report("lookup_ceiling", keys, secs);
    Ok(())
}

fn parquet_ceiling(
    count: u64,
    dir: &std::path::Path,
    flush: u64,
    tag: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use connectd_sinks::parquet::encode::{parse_cell, properties, schema, to_parquet, Columns};
    use connectd_sinks::postgres::mapping::envelope_columns;
    use std::collections::BTreeMap;
    use std::io::Write;
    let cols: Vec<_> = envelope_columns().into_iter().collect();
    let schema = schema(
        &cols
            .iter()
            .map(|(n, c)| (n.clone(), c.sql_type, c.required))
            .collect::<Vec<_>>(),
    );
    // Typed rows, by day, outside the timing.
    let mut rows = Vec::with_capacity(count as usize);
    for n in 0..count {
        let v: serde_json::Value = serde_json::from_str(&envelope(tag, n))?;
        let cells = cols
            .iter()
            .map(|(name, c)| {
                let text = v.pointer(&c.from).and_then(|x| match x {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                });
                parse_cell(name, c.sql_type, text)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let day = v["event_ts"]
            .as_str()
            .unwrap_or("x")
            .get(..10)
            .unwrap_or("x")
            .to_string();
        rows.push((day, cells));
    }
    let props = properties(3)?;
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut files = 0u64;
    for (i, chunk) in rows.chunks(flush.max(1) as usize).enumerate() {
        let mut by_day: BTreeMap<&str, Columns> = BTreeMap::new();
        for (day, cells) in chunk {
            by_day
                .entry(day.as_str())
                .or_insert_with(|| Columns::new(schema.clone()))
                .push(cells);
        }
        for (day, mut c) in by_day {
            let out = to_parquet(&c.finish()?, &props)?;
            let folder = dir.join(format!("date={day}"));
            std::fs::create_dir_all(&folder)?;
            let tmp = folder.join(format!(".{i}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            std::fs::rename(&tmp, folder.join(format!("ceiling-{i}.parquet")))?;
            std::fs::File::open(&folder)?.sync_all()?;
            bytes += out.len() as u64;
            files += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "what": "parquet_ceiling",
            "records": count,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "per_second": (count as f64 / secs).round(),
            "files": files,
            "bytes": bytes,
            "bytes_per_record": (bytes as f64 / count as f64 * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

/// An envelope of user `n % groups` whose event time rises with `n` through `minutes` minutes
/// (`count` records in all): the aggregate benchmark's input.
fn timed_envelope(tag: &str, n: u64, count: u64, groups: u64, minutes: u64) -> String {
    let secs = n * minutes * 60 / count.max(1);
    format!(
        "{{\"idempotency_key\":\"bench-{tag}-{n}\",\"source\":\"bench\",\"event_type\":\"{}\",\"user_id\":\"u{}\",\"event_ts\":\"2026-11-24T{:02}:{:02}:{:02}Z\",\"payload\":{{\"amount\":{}.{:02}}}}}",
        ["page_view", "signup", "purchase"][(n % 3) as usize],
        n % groups,
        10 + secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        n % 500,
        n % 100
    )
}

async fn agg_ceiling(
    url: &str,
    records: u64,
    groups: u64,
    minutes: u64,
    batch: u64,
    conns: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(conns as u32)
        .connect(url)
        .await?;
    let table = format!("bench_agg_ceiling_{}", std::process::id());
    sqlx::query(&format!(
        "CREATE TABLE {table} (window_start timestamptz NOT NULL, window_end timestamptz NOT NULL, user_id text NOT NULL, \
         events bigint, amount numeric, closed boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(), \
         published boolean NOT NULL DEFAULT false, PRIMARY KEY (window_start, user_id)) WITH (fillfactor = 70)"
    ))
    .execute(&pool)
    .await?;
    sqlx::query(&format!(
        "CREATE INDEX ON {table} (window_end) WHERE NOT closed"
    ))
    .execute(&pool)
    .await?;
    let sql = format!(
        "INSERT INTO {table} AS a (window_start, window_end, user_id, events, amount) \
         SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::text[], $4::bigint[], $5::text[]::numeric[]) \
         ON CONFLICT (window_start, user_id) DO UPDATE SET events = a.events + excluded.events, \
         amount = coalesce(a.amount + excluded.amount, a.amount, excluded.amount), updated_at = now()"
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (pool, sql) = (pool.clone(), sql.clone());
        tasks.push(tokio::spawn(async move {
            // Each connection takes the users of one share of the partitions, as the sink's
            // slots do (the benchmark's topic is keyed by user), folding `batch` of its records
            // at a time: (minute, user) -> (count, sum in cents).
            let mine: Vec<u64> = (0..records).filter(|n| (n % groups) % conns == c).collect();
            for chunk in mine.chunks(batch as usize) {
                let mut rows: BTreeMap<(i64, u64), (i64, i64)> = BTreeMap::new();
                for &n in chunk {
                    let secs = (n * minutes * 60 / records.max(1)) as i64;
                    let minute = 1_795_514_400 + secs / 60 * 60; // 2026-11-24T10:00Z
                    let e = rows.entry((minute, n % groups)).or_default();
                    e.0 += 1;
                    e.1 += ((n % 500) * 100 + n % 100) as i64;
                }
                let ts = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap_or_default();
                let starts: Vec<_> = rows.keys().map(|(m, _)| ts(*m)).collect();
                let ends: Vec<_> = rows.keys().map(|(m, _)| ts(*m + 60)).collect();
                let users: Vec<String> = rows.keys().map(|(_, u)| format!("u{u}")).collect();
                let counts: Vec<i64> = rows.values().map(|v| v.0).collect();
                let sums: Vec<String> = rows
                    .values()
                    .map(|v| format!("{}.{:02}", v.1 / 100, v.1 % 100))
                    .collect();
                sqlx::query(&sql)
                    .bind(starts)
                    .bind(ends)
                    .bind(users)
                    .bind(counts)
                    .bind(sums)
                    .execute(&pool)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await?;
    report(&format!("agg_ceiling_{conns}conn"), records, secs);
    Ok(())
}

/// Writes `rows` envelope rows from memory into a fresh table shaped like growth_events,
/// with `conns` connections in parallel, `batch` rows per statement.
async fn pg_ceiling(
    url: &str,
    rows: u64,
    conns: u64,
    method: &str,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(conns as u32 + 1)
        .connect(url)
        .await?;
    connectd_migrations::run(&pool).await?;
    let table = format!("bench_ceiling_{}", std::process::id());
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {table} (LIKE growth_events INCLUDING ALL)"
    ))
    .execute(&pool)
    .await?;
    let tag = format!("{}", std::process::id());
    let per = rows / conns;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let pool = pool.clone();
        let table = table.clone();
        let method = method.to_string();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            if method == "copy-staging" {
                sqlx::query(&format!("CREATE TEMP TABLE stage (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"))
                    .execute(&mut *conn)
                    .await?;
            }
            let mut i = c * per;
            let end = (c + 1) * per;
            while i < end {
                let n = batch.min((end - i) as usize);
                let vals: Vec<serde_json::Value> = (i..i + n as u64).map(|k| serde_json::from_str(&envelope(&tag, k)).unwrap_or_default()).collect();
                let col = |f: &str| -> Vec<String> { vals.iter().map(|v| match &v[f] { serde_json::Value::String(s) => s.clone(), o => o.to_string() }).collect() };
                let cols = ["idempotency_key", "event_ts", "trace_id", "schema_version", "source", "event_type", "user_id", "payload", "ingested_at"];
                if method == "copy" || method == "copy-staging" {
                    let mut data = String::new();
                    for v in &vals {
                        let line: Vec<String> = cols
                            .iter()
                            .map(|f| match &v[*f] { serde_json::Value::String(s) => s.clone(), o => o.to_string() })
                            .map(|s| s.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n"))
                            .collect();
                        data.push_str(&line.join("\t"));
                        data.push('\n');
                    }
                    if method == "copy" {
                        let mut copy = conn.copy_in_raw(&format!("COPY {table} ({}) FROM STDIN", cols.join(", "))).await?;
                        copy.send(data.as_bytes()).await?;
                        copy.finish().await?;
                    } else {
                        // Idempotent COPY: into a temporary staging table, then one
                        // INSERT … SELECT … ON CONFLICT DO NOTHING, in one transaction.
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        let mut copy = tx.copy_in_raw(&format!("COPY stage ({}) FROM STDIN", cols.join(", "))).await?;
                        copy.send(data.as_bytes()).await?;
                        copy.finish().await?;
                        sqlx::query(&format!(
                            "INSERT INTO {table} ({c}) SELECT {c} FROM stage ON CONFLICT (idempotency_key, event_ts) DO NOTHING",
                            c = cols.join(", ")
                        ))
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                } else if method == "unnest-typed" {
                    let sql = format!(
                        "INSERT INTO {table} ({}) SELECT u.c1, u.c2, u.c3, u.c4, u.c5, u.c6, u.c7, u.c8::jsonb, u.c9 \
                         FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::int[], $5::text[], $6::text[], $7::uuid[], $8::text[], $9::timestamptz[]) AS u(c1,c2,c3,c4,c5,c6,c7,c8,c9) \
                         ON CONFLICT (idempotency_key, event_ts) DO NOTHING",
                        cols.join(", ")
                    );
                    let ts = |f: &str| -> Vec<chrono::DateTime<chrono::Utc>> { col(f).iter().map(|s| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.to_utc()).unwrap_or_default()).collect() };
                    let ints: Vec<Option<i32>> = col("schema_version").iter().map(|s| s.parse().ok()).collect();
                    let uuids: Vec<uuid::Uuid> = col("user_id").iter().map(|s| s.parse().unwrap_or_default()).collect();
                    sqlx::query(&sql)
                        .bind(col("idempotency_key"))
                        .bind(ts("event_ts"))
                        .bind(col("trace_id"))
                        .bind(ints)
                        .bind(col("source"))
                        .bind(col("event_type"))
                        .bind(uuids)
                        .bind(col("payload"))
                        .bind(ts("ingested_at"))
                        .execute(&mut *conn)
                        .await?;
                } else {
                    let sql = format!(
                        "INSERT INTO {table} ({}) SELECT u.c1, u.c2::timestamptz, u.c3, u.c4::integer, u.c5, u.c6, u.c7::uuid, u.c8::jsonb, u.c9::timestamptz \
                         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS u(c1,c2,c3,c4,c5,c6,c7,c8,c9) \
                         ON CONFLICT (idempotency_key, event_ts) DO NOTHING",
                        cols.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for f in cols {
                        q = q.bind(col(f));
                    }
                    q.execute(&mut *conn).await?;
                }
                i += n as u64;
            }
            Ok::<(), sqlx::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await?;
    report(&format!("pg_{method}_{conns}conn"), per * conns, secs);
    Ok(())
}
