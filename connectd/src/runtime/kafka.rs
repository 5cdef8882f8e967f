//! Kafka I/O: client settings, topic creation, the shared idempotent producer and conversion
//! between rdkafka messages and [`Record`]s. The only module (with `runner`) that sees rdkafka.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use connector_core::{Bytes, EmitError, Emitter, Output, Record};
use futures::task::AtomicWaker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};

use crate::config::{Config, KafkaSettings};

/// A problem talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaIoError {
    /// A client could not be created (bad property, unknown setting).
    #[error("cannot create Kafka client: {0}")]
    Client(#[source] KafkaError),
    /// Topic creation failed.
    #[error("cannot create topic {topic}: {message}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// Broker's answer.
        message: String,
    },
}

/// Client settings common to every client: brokers, then `kafka.properties`.
pub fn base_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    c.set("client.id", "connectd");
    for (key, v) in &k.properties {
        c.set(key, v.to_string());
    }
    c
}

/// Consumer settings: commit-after-delivery defaults, then `kafka.consumer` overrides.
pub fn consumer_config(k: &KafkaSettings, group: &str, start_earliest: bool) -> ClientConfig {
    let mut c = base_config(k);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            if start_earliest { "earliest" } else { "latest" },
        )
        // Quick joins on Tansu and small clusters; Kafka's default 45 s delays failover.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        // Also the rebalance timeout: how long a group waits for a member that vanished
        // mid-join (Tansu never expires it sooner). The runner polls continuously; its longest
        // pause is the bounded wait on revocation (at most 30 s).
        .set("max.poll.interval.ms", "45000")
        // Bounded read-ahead (memory stays bounded under backlog). The runner keeps a few
        // batches per slot itself, so librdkafka's queue need not be deep: 4 MiB kept a
        // 2-slot sink's peak RSS ~40 MB lower than 16 MiB at the same rate, and 1 MiB a
        // 6-partition redis_dedup's ~12 MB lower than 4 MiB, at the same rate (this queue is
        // per partition, outside `max_buffered_bytes`).
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.max.bytes", "16777216")
        // librdkafka waits a full second (the default) before fetching a partition again once
        // its local queue was over a threshold; under backlog that stalled every partition in
        // waves (measured: ~0.7 s gaps, a third of the time). 10 ms keeps the queue fed.
        .set("fetch.queue.backoff.ms", "10")
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("statistics.interval.ms", "5000");
    for (key, v) in &k.consumer {
        c.set(key, v.to_string());
    }
    c
}

/// Producer settings: idempotent, `acks=all`, small linger for batching, lz4 batches, then
/// overrides.
pub fn producer_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = base_config(k);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "30000");
    // lz4 unless the configuration names a codec (also under `kafka.properties`). Measured on a
    // forward of ~300-byte JSON envelopes between topics both compressed (BENCHMARKS.md,
    // "Producer compression"): broker CPU per record less than half and loopback bytes a fifth
    // of no compression's, connectd's own CPU per record lower too (fewer bytes through
    // librdkafka and the kernel), steady rate +50-60%. zstd shrinks the bytes further at the
    // same connectd CPU in that backlog benchmark, but under the live end-to-end load (small
    // batches) librdkafka's threads spent 1.5-2x as much CPU per event with it as with lz4
    // (paired runs, 2026-12-07).
    if !["compression.type", "compression.codec"]
        .iter()
        .any(|p| k.properties.contains_key(*p))
    {
        c.set("compression.type", "lz4");
    }
    for (key, v) in &k.producer {
        c.set(key, v.to_string());
    }
    c
}

/// Creates missing topics: those declared under `topics:` and every topic a connector uses.
pub async fn ensure_topics(config: &Config) -> Result<(), KafkaIoError> {
    let k = &config.global.kafka;
    let mut wanted: BTreeMap<String, (i32, i32)> = BTreeMap::new();
    for c in config.connectors.iter().filter(|c| c.enabled) {
        for t in c.topics() {
            wanted.insert(t, (k.default_partitions, k.replication_factor));
        }
    }
    for t in &config.global.topics {
        wanted.insert(
            t.name.clone(),
            (
                t.partitions.unwrap_or(k.default_partitions),
                t.replication_factor.unwrap_or(k.replication_factor),
            ),
        );
    }
    create_topics(k, &wanted).await
}

/// Creates `topics` (name → partitions, replication) where missing.
pub async fn create_topics(
    k: &KafkaSettings,
    topics: &BTreeMap<String, (i32, i32)>,
) -> Result<(), KafkaIoError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        base_config(k).create().map_err(KafkaIoError::Client)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, (p, r))| NewTopic::new(name, *p, TopicReplication::Fixed(*r)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| KafkaIoError::CreateTopic {
                topic: topics.keys().cloned().collect::<Vec<_>>().join(","),
                message: e.to_string(),
            })?;
    for r in results {
        match r {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaIoError::CreateTopic {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Converts a consumed message into a [`Record`].
pub fn to_record(m: &BorrowedMessage<'_>, topic: &Arc<str>) -> Record {
    let mut headers = connector_core::Headers::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            headers.insert(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default()));
        }
    }
    Record {
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
        origin: Some(connector_core::Origin {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
        }),
    }
}

fn owned_headers(r: &Record) -> Option<OwnedHeaders> {
    if r.headers.is_empty() {
        return None;
    }
    let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in r.headers.iter() {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_ref()),
        });
    }
    Some(h)
}

/// Whether a produce error is worth retrying.
pub fn is_retriable(e: &KafkaError) -> bool {
    !matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

/// Locks `m`, going on with the data if a panicking holder poisoned it (a map of counts
/// cannot be left half-written).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A record to produce: its topic, the partition asked for (see [`Output::partition`]) and
/// the record.
pub type Outgoing<'a> = (&'a str, Option<i32>, &'a Record);

/// The process's producer, shared by sources, transforms and dead-letter routing.
///
/// A [`ThreadedProducer`] whose delivery reports are counted per [`enqueue_all`] call
/// (one shared [`Delivery`] per call) rather than rdkafka's `FutureProducer`, which makes a
/// oneshot channel per record and wakes its future once per report: in a profile of
/// HTTP → redis_dedup → postgres_sink the channels and their wake-ups were ~3% of connectd's CPU.
///
/// [`enqueue_all`]: SharedProducer::enqueue_all
#[derive(Clone)]
pub struct SharedProducer {
    inner: Arc<ThreadedProducer<AckContext>>,
    /// Partition counts of the topics records were asked into a partition of, from metadata.
    /// A topic's partitions only grow, so a count read once stays a safe lower bound.
    partitions: Arc<std::sync::Mutex<std::collections::HashMap<String, i32>>>,
}

/// The producer's context: hands each delivery report to the record's [`Pending`].
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        (*pending).complete(result.as_ref().err().map(|(e, _)| e.clone()));
    }
}

/// The delivery state of one [`SharedProducer::enqueue_all`] call, shared with librdkafka's
/// delivery callbacks (which run on the producer's polling thread).
struct Delivery {
    /// Records whose outcome is not known yet.
    outstanding: AtomicUsize,
    /// Records that failed, as (index in the call, error).
    failures: std::sync::Mutex<Vec<(usize, KafkaError)>>,
    /// The task waiting in [`Acks::ready`].
    waker: AtomicWaker,
}

/// One queued record's share of its call's [`Delivery`]; given to librdkafka as the message's
/// opaque and back in the delivery callback. Dropped without a report (the producer purged
/// and destroyed with the record queued), it counts the record as cancelled, so that no
/// waiter hangs.
pub struct Pending {
    delivery: Arc<Delivery>,
    index: usize,
    completed: bool,
}

impl Pending {
    fn complete(mut self, error: Option<KafkaError>) {
        self.completed = true;
        self.delivery.finish(self.index, error);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.completed {
            self.delivery.finish(self.index, Some(KafkaError::Canceled));
        }
    }
}

impl Delivery {
    fn finish(&self, index: usize, error: Option<KafkaError>) {
        if let Some(e) = error {
            lock(&self.failures).push((index, e));
        }
        // The failure is pushed before the count drops: whoever sees 0 sees every failure.
        if self.outstanding.fetch_sub(1, AtomicOrdering::AcqRel) == 1 {
            self.waker.wake();
        }
    }
}

impl SharedProducer {
    /// Creates the producer.
    pub fn new(k: &KafkaSettings) -> Result<Self, KafkaIoError> {
        Ok(Self {
            inner: Arc::new(
                producer_config(k)
                    .create_with_context(AckContext)
                    .map_err(KafkaIoError::Client)?,
            ),
            partitions: Arc::default(),
        })
    }

    /// Produces every record to its topic and waits for all acknowledgements. The result has
    /// one entry per record, in order. Enqueueing waits (up to `queue_timeout`) while the local
    /// queue is full.
    pub async fn produce_all(
        &self,
        records: &[Outgoing<'_>],
        queue_timeout: Duration,
    ) -> Vec<Result<(), KafkaError>> {
        self.enqueue_all(records, queue_timeout).await.wait().await
    }

    /// `topic`'s partition count (cached after the first answer), `None` when the metadata
    /// request fails: the caller then leaves the partition to the partitioner.
    async fn partition_count(&self, topic: &str) -> Option<i32> {
        if let Some(n) = lock(&self.partitions).get(topic) {
            return Some(*n);
        }
        let (p, t) = (self.inner.clone(), topic.to_string());
        let n = tokio::task::spawn_blocking(move || {
            let md = p
                .client()
                .fetch_metadata(Some(&t), Duration::from_secs(5))
                .ok()?;
            let n = md.topics().first()?.partitions().len();
            i32::try_from(n).ok().filter(|n| *n > 0)
        })
        .await
        .ok()
        .flatten()?;
        lock(&self.partitions).insert(topic.to_string(), n);
        Some(n)
    }

    /// Puts every record into the producer's queue, in order, and returns without waiting for
    /// the broker: the caller can do other work while the acknowledgements come in
    /// ([`Acks::wait`]). Waits (up to `queue_timeout`) only while the local queue is full.
    /// A record asked into a partition its topic has goes there; otherwise its key decides.
    pub async fn enqueue_all(&self, records: &[Outgoing<'_>], queue_timeout: Duration) -> Acks {
        let deadline = tokio::time::Instant::now() + queue_timeout;
        let delivery = Arc::new(Delivery {
            outstanding: AtomicUsize::new(records.len()),
            failures: std::sync::Mutex::new(Vec::new()),
            waker: AtomicWaker::new(),
        });
        // Partition counts of the topics asked into a partition (usually none, or one), read
        // when first needed.
        let mut counts: Vec<(&str, Option<i32>)> = Vec::new();
        for (index, (topic, partition, r)) in records.iter().enumerate() {
            let pending = Box::new(Pending {
                delivery: delivery.clone(),
                index,
                completed: false,
            });
            let mut br: BaseRecord<'_, [u8], [u8], Box<Pending>> =
                BaseRecord::with_opaque_to(topic, pending).payload(r.value.as_ref());
            if let Some(k) = &r.key {
                br = br.key(k.as_ref());
            }
            if let Some(p) = *partition {
                let n = match counts.iter().find(|(t, _)| t == topic) {
                    Some((_, n)) => *n,
                    None => {
                        let n = self.partition_count(topic).await;
                        counts.push((topic, n));
                        n
                    }
                };
                if n.is_some_and(|n| (0..n).contains(&p)) {
                    br = br.partition(p);
                }
            }
            if let Some(h) = owned_headers(r) {
                br = br.headers(h);
            }
            if let Some(ts) = r.timestamp_ms {
                br = br.timestamp(ts);
            }
            loop {
                match self.inner.send(br) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        br = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, back)) => {
                        (*back.delivery_opaque).complete(Some(e));
                        break;
                    }
                }
            }
        }
        Acks {
            delivery,
            count: records.len(),
        }
    }

    /// Waits until everything queued is delivered (or the timeout passes).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }

    /// True when the broker answers a metadata request.
    pub async fn reachable(&self) -> bool {
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// Outstanding acknowledgements of the records one [`SharedProducer::enqueue_all`] call put
/// into the producer's queue.
pub struct Acks {
    delivery: Arc<Delivery>,
    count: usize,
}

impl Acks {
    /// Waits until every acknowledgement is in. Cancel-safe: a later call (or
    /// [`wait`](Self::wait)) goes on from there.
    pub async fn ready(&mut self) {
        let d = &self.delivery;
        std::future::poll_fn(|cx| {
            if d.outstanding.load(AtomicOrdering::Acquire) == 0 {
                return Poll::Ready(());
            }
            d.waker.register(cx.waker());
            // A report that came between the first look and the registration woke nobody.
            if d.outstanding.load(AtomicOrdering::Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Waits for every acknowledgement: one result per record, in order.
    pub async fn wait(mut self) -> Vec<Result<(), KafkaError>> {
        self.ready().await;
        let mut results: Vec<Result<(), KafkaError>> = vec![Ok(()); self.count];
        for (i, e) in lock(&self.delivery.failures).drain(..) {
            if let Some(r) = results.get_mut(i) {
                *r = Err(e);
            }
        }
        results
    }
}

/// [`Emitter`] for sources: produce to the record's topic or the connector's output topic and
/// resolve after every acknowledgement, within `ack_timeout`.
pub struct ProducerEmitter {
    /// The shared producer.
    pub producer: SharedProducer,
    /// Default topic.
    pub output_topic: String,
    /// Longest wait for the local queue and the acknowledgements.
    pub ack_timeout: Duration,
    /// Fires on shutdown.
    pub shutdown: connector_core::Shutdown,
    /// Counts the records of every fully acknowledged call (a source's `records_out`).
    pub acked: Option<connector_core::metrics::Counter>,
}

#[async_trait]
impl Emitter for ProducerEmitter {
    async fn emit(&self, records: Vec<Output>) -> Result<(), EmitError> {
        if self.shutdown.is_triggered() {
            return Err(EmitError::ShuttingDown);
        }
        let items: Vec<Outgoing<'_>> = records
            .iter()
            .map(|o| {
                (
                    o.topic.as_deref().unwrap_or(&self.output_topic),
                    o.partition,
                    &o.record,
                )
            })
            .collect();
        let fut = self.producer.produce_all(&items, self.ack_timeout);
        let results = tokio::time::timeout(self.ack_timeout, fut)
            .await
            .map_err(|_| EmitError::Unavailable("no acknowledgement within the timeout".into()))?;
        for r in results {
            match r {
                Ok(()) => {}
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    return Err(EmitError::QueueFull)
                }
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    return Err(EmitError::TooLarge(e.to_string()))
                }
                Err(e) if is_retriable(&e) => return Err(EmitError::Unavailable(e.to_string())),
                Err(e) => return Err(EmitError::Rejected(e.to_string())),
            }
        }
        if let Some(c) = &self.acked {
            c.add(records.len() as u64);
        }
        Ok(())
    }

    async fn ready(&self) -> bool {
        self.producer.reachable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PropertyValue;

    #[test]
    fn producers_compress_with_lz4_unless_the_configuration_names_a_codec() {
        let mut k = KafkaSettings::default();
        assert_eq!(producer_config(&k).get("compression.type"), Some("lz4"));

        k.producer.insert(
            "compression.type".into(),
            PropertyValue::Text("zstd".into()),
        );
        assert_eq!(producer_config(&k).get("compression.type"), Some("zstd"));

        let mut k = KafkaSettings::default();
        k.properties.insert(
            "compression.codec".into(),
            PropertyValue::Text("none".into()),
        );
        let c = producer_config(&k);
        assert_eq!(c.get("compression.codec"), Some("none"));
        assert_eq!(c.get("compression.type"), None);
    }

    fn acks_of(n: usize) -> (Acks, Vec<Pending>) {
        let delivery = Arc::new(Delivery {
            outstanding: AtomicUsize::new(n),
            failures: std::sync::Mutex::new(Vec::new()),
            waker: AtomicWaker::new(),
        });
        let pending = (0..n)
            .map(|index| Pending {
                delivery: delivery.clone(),
                index,
                completed: false,
            })
            .collect();
        (Acks { delivery, count: n }, pending)
    }

    #[tokio::test]
    async fn acks_resolve_after_the_last_report_with_each_failure_at_its_record() {
        let (mut acks, pending) = acks_of(4);
        let mut reports = pending.into_iter();
        let (Some(ok), Some(too_large), Some(purged), Some(last)) = (
            reports.next(),
            reports.next(),
            reports.next(),
            reports.next(),
        ) else {
            panic!("four records")
        };
        ok.complete(None);
        too_large.complete(Some(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        )));
        // A record dropped without a report (purged with the producer) counts as cancelled.
        drop(purged);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), acks.ready())
                .await
                .is_err(),
            "one report is still outstanding"
        );
        let waiter = tokio::spawn(acks.wait());
        tokio::task::yield_now().await;
        std::thread::spawn(move || last.complete(None)).join().ok();
        let results = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the last report")
            .expect("waiter");
        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok() && results[3].is_ok());
        assert_eq!(
            results[1]
                .as_ref()
                .err()
                .and_then(KafkaError::rdkafka_error_code),
            Some(RDKafkaErrorCode::MessageSizeTooLarge)
        );
        assert!(matches!(results[2], Err(KafkaError::Canceled)));
    }

    #[tokio::test]
    async fn acks_of_nothing_are_ready_at_once() {
        let (acks, _) = acks_of(0);
        assert!(acks.wait().await.is_empty());
    }
}
