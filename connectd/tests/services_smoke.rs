//! Smoke test: the local services the test command starts are reachable, and a record makes
//! the round trip through the broker with a consumer group (rdkafka, bundled librdkafka).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn brokers() -> String {
    var("KAFKA_BROKERS", "127.0.0.1:59092")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn postgres_answers() {
    let url = var(
        "DATABASE_URL",
        "postgres://connectd:connectd@127.0.0.1:55432/connectd",
    );
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to postgres (run scripts/dev-services.sh up)");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&pool)
        .await
        .expect("select 1");
    assert_eq!(one, 1);
}

#[tokio::test]
async fn redis_answers() {
    let client =
        redis::Client::open(var("REDIS_URL", "redis://127.0.0.1:56379")).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let key = unique("smoke");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .arg("EX")
        .arg(10)
        .query_async(&mut conn)
        .await
        .expect("set");
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(v, "v");
}

#[tokio::test]
async fn broker_round_trip_with_consumer_group() {
    let topic = unique("smoke");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let res = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    assert!(res[0].is_ok(), "{res:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload("hello")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "h",
                    value: Some("v"),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce acked");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("smoke-group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a record within 60 s")
        .expect("record");
    assert_eq!(msg.payload(), Some(&b"hello"[..]));
    assert_eq!(msg.key(), Some(&b"k"[..]));
    let h = msg.headers().expect("headers").get(0);
    assert_eq!((h.key, h.value), ("h", Some(&b"v"[..])));
    consumer
        .commit_message(&msg, CommitMode::Sync)
        .expect("commit");
}
