//! The custom binary: lists the plugin, validates a file using it, and runs it in a pipeline.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_connectd-custom"))
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59092".into())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/connectors.yaml");

#[test]
fn plugins_lists_the_custom_sink_next_to_the_builtins() {
    let out = bin().arg("plugins").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("redis_leaderboard_sink ") && l.contains(" sink ")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("postgres_sink ")),
        "{text}"
    );
    let out = bin()
        .args(["validate", "-c", CONFIG])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_sink_runs_in_a_pipeline() {
    let tag = connector_core::testing::run_tag();
    let topic = format!("custom-{tag}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    for i in 0..200u64 {
        let r = connector_core::testing::envelope_record(&tag, i % 150); // 50 duplicates
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("{i}"))
                    .payload(&r.value[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let stream = format!("test:{tag}:pipeline");
    let mut child = bin()
        .args(["run", "-c", CONFIG])
        .env("KAFKA_BROKERS", brokers())
        .env("REDIS_URL", redis_url())
        .env("INPUT_TOPIC", &topic)
        .env("GROUP_ID", format!("g-{tag}"))
        .env("STREAM", &stream)
        .env("COUNTERS", format!("test:{tag}:lb"))
        .env("CONNECTD_ADMIN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let client = redis::Client::open(redis_url().as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let start = Instant::now();
    let mut len = 0u64;
    while start.elapsed() < Duration::from_secs(60) {
        len = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("xlen");
        if len >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let final_len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("xlen");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        len.max(final_len),
        150,
        "150 distinct events, each applied once"
    );
}
