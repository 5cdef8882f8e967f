//! Broker ceilings and connector throughput, for `scripts/bench.sh` (not a test).
//!
//! ```text
//! kafka_bench produce  --topic T --count N [--size 100] [--partitions 6]   # create + fill, print rate
//! kafka_bench consume  --topic T --count N                                 # read N from the start
//! kafka_bench wait-group --group G --topic T --count N                     # until G committed N records
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
            let mut first_progress: Option<Instant> = None;
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
                if total > 0 {
                    first_progress.get_or_insert_with(Instant::now);
                }
                if total as u64 >= count {
                    break;
                }
                if start.elapsed() > Duration::from_secs(timeout_secs) {
                    return Err(format!("group {group} committed {total} of {count}").into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            report("group", count, start.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
