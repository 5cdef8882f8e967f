//! The consumer-group runner of one sink or transform (SPEC §5).
//!
//! * Reads the input topics in the connector's consumer group, `enable.auto.commit=false`.
//! * Routes each partition to one of `max_in_flight` worker slots (`partition % slots`), so a
//!   partition's batches are handled one at a time, in order, while slots work in parallel.
//! * Builds batches per slot (max records / bytes / linger) and hands them to the slot's own
//!   connector instance ([`super::worker`]).
//! * Tracks every read offset ([`super::offsets`]) and commits, per partition, only the prefix
//!   of records whose outcome is final.
//! * Backpressure: when every slot has a few batches waiting, the runner stops taking records
//!   (librdkafka's bounded queue stops fetching); a slot far ahead of the others, too many
//!   buffered bytes, or a hold longer than 2 s pause partitions instead, and polling goes on
//!   so the member stays in the group.
//! * Rebalance: on revocation it waits (bounded) for in-flight batches of the revoked
//!   partitions, commits what is final, then lets the partitions go.
//! * Shutdown: stops reading, waits (bounded) for in-flight batches, commits, leaves the group.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use connector_core::{Record, Shutdown, Sink, TopicPartition};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::{mpsc, watch, Notify};

use super::kafka::{consumer_config, to_record};
use super::offsets::PartitionTracker;
use super::status::{ConnectorHandle, Control, State};
use super::worker::{Attempt, BatchError, Instance, WorkerEnv};
use crate::config::{BatchSettings, ConsumerSettings, KafkaSettings, StartFrom};

type Tp = (Arc<str>, i32);

/// Most records taken from the consumer in one turn of the loop.
const BURST: usize = 2000;
/// Batches a slot may have waiting (besides the one in flight) before it counts as ahead:
/// when every slot is ahead, the runner stops taking records from the consumer (`hold`).
const READ_AHEAD_BATCHES: usize = 3;
/// Batches a slot may have waiting before its partitions are paused even though other slots
/// still want records. Pausing purges librdkafka's fetched data for the partition, which is
/// then fetched again on resume: with pausing at `READ_AHEAD_BATCHES` a 6-partition sink
/// fetched ~5× its input from the broker.
const MAX_AHEAD_BATCHES: usize = 10;
/// Longest time the runner stops taking records from the consumer because every slot is full,
/// before it pauses partitions instead (and polls on, to stay in the group).
const HOLD_LIMIT: Duration = Duration::from_secs(2);

struct PartState {
    tracker: PartitionTracker,
    generation: u64,
    /// Records handed to a worker and not yet final (what a revocation waits for; records
    /// still being batched are simply dropped and read again by the next owner).
    dispatched: usize,
}

/// State shared by the runner task, its workers and the rebalance callbacks.
struct Shared {
    parts: Mutex<HashMap<Tp, PartState>>,
    changed: Condvar,
    wake: Notify,
    generation: AtomicU64,
    /// Set by an assignment that found a sink's stored offset beyond its partition's end: the
    /// runner stops the connector (failed) before it dispatches anything.
    stale_offsets: Mutex<Option<String>>,
    /// Memory of the batches handed to workers and not yet settled, across all slots
    /// (see [`memory_of`]): a batch whose acknowledgements are outstanding still holds its
    /// records while the worker runs the next one. Kept by [`InFlight`].
    in_flight_bytes: AtomicUsize,
}

impl Shared {
    fn new() -> Self {
        Shared {
            parts: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            wake: Notify::new(),
            generation: AtomicU64::new(0),
            stale_offsets: Mutex::new(None),
            in_flight_bytes: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Tp, PartState>> {
        match self.parts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Marks offsets done (ignored for partitions of another generation).
    fn complete(&self, generation: u64, done: &[(Tp, i64)]) {
        let mut g = self.lock();
        for (tp, offset) in done {
            if let Some(p) = g.get_mut(tp) {
                if p.generation == generation && p.tracker.done(*offset) {
                    p.dispatched = p.dispatched.saturating_sub(1);
                }
            }
        }
        drop(g);
        self.changed.notify_all();
        self.wake.notify_one();
    }

    /// Positions to commit, for `only` partitions or all; with `force`, also positions that
    /// did not move since the last commit (whose asynchronous commit may have failed).
    fn commit_list(&self, only: Option<&HashSet<Tp>>, force: bool) -> Vec<(Tp, i64)> {
        let g = self.lock();
        g.iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(*tp)))
            .filter_map(|(tp, p)| {
                let pos = if force {
                    p.tracker.position()
                } else {
                    p.tracker.to_commit()
                };
                pos.map(|pos| (tp.clone(), pos))
            })
            .collect()
    }

    fn mark_committed(&self, list: &[(Tp, i64)]) {
        let mut g = self.lock();
        for (tp, pos) in list {
            if let Some(p) = g.get_mut(tp) {
                p.tracker.mark_committed(*pos);
            }
        }
    }
}

fn tpl_of(list: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), pos) in list {
        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*pos));
    }
    tpl
}

/// The consumer's context: rebalance callbacks and statistics (lag).
struct RunnerContext {
    shared: Arc<Shared>,
    handle: ConnectorHandle,
    revoke_wait: Duration,
    offset_store: Option<Arc<tokio::sync::Mutex<Box<dyn Sink>>>>,
    /// Settings of a throw-away consumer that checks a stored offset against the partition
    /// (see [`RunnerContext::stale_offset`]); `None` when the sink stores no offsets.
    probe_config: Option<ClientConfig>,
}

impl ClientContext for RunnerContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.handle.set_lag(topic, *p, part.consumer_lag);
                }
            }
        }
    }
}

impl RunnerContext {
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: HashSet<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::<str>::from(e.topic()), e.partition()))
            .collect();
        // Wait (bounded) for in-flight batches of these partitions to finish.
        let deadline = Instant::now() + self.revoke_wait;
        let mut g = self.shared.lock();
        loop {
            let pending: usize = g
                .iter()
                .filter(|(tp, _)| revoked.contains(*tp))
                .map(|(_, p)| p.dispatched)
                .sum();
            let now = Instant::now();
            if pending == 0 || now >= deadline {
                if pending > 0 {
                    tracing::warn!(connector = %self.handle.name, pending, "revocation: abandoning records still in flight (they will be redelivered)");
                }
                break;
            }
            g = match self
                .shared
                .changed
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(50)))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(g);
        let list = self.shared.commit_list(Some(&revoked), true);
        if !list.is_empty() {
            match consumer.commit(&tpl_of(&list), CommitMode::Sync) {
                Ok(()) => self.handle.metrics.commits.inc(),
                Err(e) => {
                    tracing::warn!(connector = %self.handle.name, error = %e, "commit on revocation failed")
                }
            }
        }
        let mut g = self.shared.lock();
        for tp in &revoked {
            g.remove(tp);
        }
        self.handle.set_assigned(g.len());
        drop(g);
        self.handle.clear_lag();
        tracing::info!(connector = %self.handle.name, partitions = revoked.len(), "partitions revoked");
    }
}

impl RunnerContext {
    /// Why a stored offset cannot be resumed from, if it is beyond the partition's end.
    ///
    /// A sink that keeps its offsets (exactly-once) skips every record below them. When the
    /// topic was deleted and recreated, or the broker lost its data (Tansu's memory storage
    /// after a restart), the partition starts again at 0 and the stored offset points past its
    /// end: resuming would skip every new record below it, silently. Caught only while the
    /// new partition is still shorter than the stored offset; a recreated topic that has
    /// already grown past it cannot be told apart from the old one by its offsets alone.
    ///
    /// The partition's end comes from the broker's `ListOffsets`; since some brokers under-report
    /// it (Tansu answers with the first offset of the last record batch + 1, so a partition
    /// whose last produce carried 200 records "ends" at 1), an offset past that end is confirmed
    /// by reading forward from it: the offset is stale only when the partition has no record
    /// just below it. A check that cannot be made (the broker sends nothing) lets the partition
    /// resume, as before this check existed.
    fn stale_offset(
        &self,
        consumer: &BaseConsumer<Self>,
        tp: &TopicPartition,
        offset: i64,
    ) -> Option<String> {
        let (_, high) = match consumer.fetch_watermarks(
            &tp.topic,
            tp.partition,
            Duration::from_secs(10),
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(connector = %self.handle.name, topic = %tp.topic, partition = tp.partition, error = %e, "cannot read the partition's end to check the stored offset");
                return None;
            }
        };
        if offset <= high || offset == 0 {
            return None;
        }
        // An empty partition holds nothing below any stored offset.
        let exists = if high <= 0 {
            Ok(false)
        } else {
            self.record_exists(tp, high - 1, offset - 1)
        };
        match exists {
            Ok(true) => return None,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(connector = %self.handle.name, topic = %tp.topic, partition = tp.partition, error = %e, "cannot read the record before the stored offset to check it");
                return None;
            }
        }
        let high = high.max(0);
        Some({
            format!(
                "the sink's stored offset {offset} for {}[{}] is beyond the partition's end (no record at {}; the broker reports the end at {high}): the topic was recreated or the broker lost its data, and resuming would skip every record below {offset}. Reset the sink's stored offsets for {} (README, Operating notes: \"a stored offset beyond the partition's end\"), then POST /connectors/{}/resume",
                tp.topic,
                tp.partition,
                offset - 1,
                tp.topic,
                self.handle.name
            )
        })
    }

    /// Whether `tp` holds a record at `target` or later, read forward from `start` (a record
    /// known to exist: the broker's end − 1) with a throw-away consumer: `true` as soon as one
    /// at `target` or later arrives, `false` once the partition went quiet after its last
    /// record (Tansu answers a fetch past the end with nothing, Kafka with out-of-range), and
    /// `Err` when the broker sent nothing at all, so that the check cannot be made.
    fn record_exists(&self, tp: &TopicPartition, start: i64, target: i64) -> Result<bool, String> {
        let Some(cfg) = &self.probe_config else {
            return Ok(true);
        };
        let probe: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(start))
            .map_err(|e| e.to_string())?;
        probe.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_seen: Option<Instant> = None;
        while Instant::now() < deadline {
            match probe.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() >= target => return Ok(true),
                Some(Ok(_)) => last_seen = Some(Instant::now()),
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    return Ok(false)
                }
                Some(Err(e)) => {
                    tracing::debug!(connector = %self.handle.name, error = %e, "stored-offset probe");
                }
                None if last_seen.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) => {
                    return Ok(false)
                }
                None => {}
            }
        }
        match last_seen {
            // Still receiving records below the target when time ran out: a long tail; do
            // not call the offset stale on that.
            Some(_) => Err("the partition was still being read when the check timed out".into()),
            None => Err("the broker sent no record of the partition".into()),
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        if let Some(store) = &self.offset_store {
            let parts: Vec<TopicPartition> = tpl
                .elements()
                .iter()
                .map(|e| TopicPartition {
                    topic: e.topic().to_string(),
                    partition: e.partition(),
                })
                .collect();
            let store = store.clone();
            let stored =
                run_blocking(async move { store.lock().await.stored_offsets(&parts).await });
            match stored {
                Some(Ok(Some(map))) => {
                    for (tp, offset) in map {
                        if let Some(why) = self.stale_offset(consumer, &tp, offset) {
                            tracing::error!(connector = %self.handle.name, topic = %tp.topic, partition = tp.partition, offset, "{why}");
                            let mut stale = self
                                .shared
                                .stale_offsets
                                .lock()
                                .unwrap_or_else(|p| p.into_inner());
                            stale.get_or_insert(why);
                            continue;
                        }
                        if let Err(e) = tpl.set_partition_offset(
                            &tp.topic,
                            tp.partition,
                            Offset::Offset(offset),
                        ) {
                            tracing::warn!(connector = %self.handle.name, error = %e, "cannot seek to the stored offset");
                        } else {
                            tracing::info!(connector = %self.handle.name, topic = %tp.topic, partition = tp.partition, offset, "resuming from the sink's stored offset");
                        }
                    }
                }
                Some(Ok(None)) => {}
                // The sink skips records below its stored offsets anyway; resuming from the
                // group's committed offsets is safe, only slower.
                Some(Err(e)) => {
                    tracing::warn!(connector = %self.handle.name, error = %e, "cannot read the sink's stored offsets")
                }
                None => {
                    tracing::warn!(connector = %self.handle.name, "cannot read the sink's stored offsets outside a multi-threaded runtime")
                }
            }
        }
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut g = self.shared.lock();
        for e in tpl.elements() {
            g.insert(
                (Arc::from(e.topic()), e.partition()),
                PartState {
                    tracker: PartitionTracker::default(),
                    generation,
                    dispatched: 0,
                },
            );
        }
        self.handle.set_assigned(g.len());
        drop(g);
        self.shared.wake.notify_one();
        tracing::info!(connector = %self.handle.name, partitions = tpl.count(), generation, "partitions assigned");
    }
}

/// Runs `fut` to completion from a synchronous callback inside the multi-threaded runtime.
fn run_blocking<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    Some(tokio::task::block_in_place(|| handle.block_on(fut)))
}

fn in_blocking(f: impl FnOnce()) {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f);
    } else {
        f();
    }
}

impl ConsumerContext for RunnerContext {
    /// Replaces rdkafka's default handler so that assignments can start at offsets stored by an
    /// exactly-once sink, and revocations wait for in-flight batches (see the module docs).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(connector = %self.handle.name, error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // The callback runs inside the runner task's poll; waiting for the workers (other
                // tasks) needs this thread to step out of the async scheduler.
                in_blocking(|| self.revoke(consumer, tpl));
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(connector = %self.handle.name, error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(connector = %self.handle.name, error = ?other, "rebalance error");
                in_blocking(|| self.revoke(consumer, tpl));
                let _ = consumer.unassign();
            }
        }
    }
}

/// Heap a buffered record costs besides its key, value and headers: the allocator's rounding
/// of its buffers and its headers' list. With the `Record` itself (counted by the capacity of
/// the vector holding it), measured on the benchmark's ~330-byte envelopes a record took about
/// twice its `byte_size`; counting only `byte_size` against `max_buffered_bytes` let a 6-slot
/// transform's heap reach twice its budget.
const RECORD_HEAP_OVERHEAD: usize = 96;

/// What `records` records of `bytes` bytes (keys + values + headers), held in vectors of
/// `capacity` records in all, cost in memory, as counted against `max_buffered_bytes`.
fn memory_of(records: usize, capacity: usize, bytes: usize) -> usize {
    bytes + records * RECORD_HEAP_OVERHEAD + capacity * std::mem::size_of::<Record>()
}

/// A batch's share of [`Shared::in_flight_bytes`], from its dispatch until it is settled or
/// dropped (on every path: settled, failed, or abandoned at shutdown). Dropping it wakes the
/// runner, which may be holding the consumer for memory.
struct InFlight {
    shared: Arc<Shared>,
    bytes: usize,
}

impl InFlight {
    fn new(shared: &Arc<Shared>, bytes: usize) -> Self {
        shared.in_flight_bytes.fetch_add(bytes, Ordering::SeqCst);
        InFlight {
            shared: Arc::clone(shared),
            bytes,
        }
    }

    /// Counts `bytes` more until the batch is dropped (its outputs in the producer's queue).
    fn grow(&mut self, bytes: usize) {
        self.shared
            .in_flight_bytes
            .fetch_add(bytes, Ordering::SeqCst);
        self.bytes += bytes;
    }
}

/// Memory librdkafka's producer takes for each queued message besides its key, value and
/// headers (its message structure and the copy's allocation), as counted in flight.
const PRODUCED_OVERHEAD: usize = 160;

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared
            .in_flight_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

/// A batch handed to a slot.
struct Batch {
    generation: u64,
    records: Vec<Record>,
    /// Counted in flight until the batch is dropped.
    in_flight: InFlight,
}

/// The runner's side of one worker slot: the batch being built and what is in flight.
struct Slot {
    tx: mpsc::Sender<Batch>,
    /// Records read for this slot's partitions and not yet handed over, in order.
    building: Vec<Record>,
    /// Bytes of `building`.
    bytes: usize,
    /// When the oldest record of `building` started waiting (the linger clock).
    first_at: Option<Instant>,
    /// The worker has a batch.
    busy: bool,
}

impl Slot {
    fn new(tx: mpsc::Sender<Batch>) -> Self {
        Slot {
            tx,
            building: Vec::new(),
            bytes: 0,
            first_at: None,
            busy: false,
        }
    }

    /// Forgets the records being built: they belong to an assignment that ended, and the
    /// partitions' next owner (maybe this process again) reads them anew.
    fn reset(&mut self) {
        self.building.clear();
        self.bytes = 0;
        self.first_at = None;
    }

    /// Appends a record read from the consumer.
    fn push(&mut self, record: Record, now: Instant) {
        self.bytes += record.byte_size();
        self.first_at.get_or_insert(now);
        self.building.push(record);
    }

    /// True when a batch should be handed over now: the worker is free and the batch being
    /// built is full (records or bytes) or has lingered long enough.
    fn ready(&self, batch: &BatchSettings, now: Instant) -> bool {
        let full = self.building.len() >= batch.max_records || self.bytes >= batch.max_bytes;
        let lingered = self
            .first_at
            .is_some_and(|t| now.duration_since(t) >= batch.linger.as_std());
        !self.busy && !self.building.is_empty() && (full || lingered)
    }

    /// Memory of the records being built (see [`memory_of`]).
    fn memory(&self) -> usize {
        memory_of(self.building.len(), self.building.capacity(), self.bytes)
    }

    /// Takes the next batch (at most `max_records`, oldest first) and marks the slot busy.
    /// Records left behind start a new linger period. Returns the records and their bytes.
    fn take(&mut self, max_records: usize, now: Instant) -> (Vec<Record>, usize) {
        let take = self.building.len().min(max_records);
        let records: Vec<Record> = self.building.drain(..take).collect();
        // A slot that read far ahead once would otherwise keep that vector's capacity for good.
        let keep = self.building.len() + max_records;
        if self.building.capacity() > 2 * keep {
            self.building.shrink_to(keep);
        }
        let bytes: usize = records.iter().map(Record::byte_size).sum();
        self.bytes -= bytes.min(self.bytes);
        self.first_at = if self.building.is_empty() {
            None
        } else {
            Some(now)
        };
        self.busy = true;
        (records, bytes)
    }

    /// The worker reported its batch over.
    fn finished(&mut self) {
        self.busy = false;
    }

    /// When the batch being built lingers out, if the slot is waiting for that.
    fn linger_deadline(&self, linger: Duration) -> Option<Instant> {
        match (self.busy, self.first_at) {
            (false, Some(t)) => Some(t + linger),
            _ => None,
        }
    }
}

/// The slot that handles partition `p` of `n_slots`.
fn slot_of(p: i32, n_slots: usize) -> usize {
    (p.unsigned_abs() as usize) % n_slots.max(1)
}

/// The earliest moment the loop must wake up by itself: the next periodic commit, the end of
/// a hold (`hold_ends`), or a waiting batch lingering out.
fn next_deadline(
    commit_due: Instant,
    hold_ends: Option<Instant>,
    slots: &[Slot],
    linger: Duration,
) -> Instant {
    slots
        .iter()
        .filter_map(|s| s.linger_deadline(linger))
        .chain(hold_ends)
        .fold(commit_due, Instant::min)
}

/// Partitions to pause (wanted paused, not yet) and to resume (paused, no longer wanted).
fn pause_changes(want: &HashSet<Tp>, paused: &HashSet<Tp>) -> (Vec<Tp>, Vec<Tp>) {
    (
        want.difference(paused).cloned().collect(),
        paused.difference(want).cloned().collect(),
    )
}

fn tpl_of_partitions(list: &[Tp]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in list {
        tpl.add_partition(t, *p);
    }
    tpl
}

/// A slot's report that its batch is over.
struct SlotDone {
    slot: usize,
    error: Option<BatchError>,
}

/// Everything a runner needs.
pub struct RunnerParams {
    /// Connector name.
    pub name: String,
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Broker settings.
    pub kafka: KafkaSettings,
    /// Built instances, one per slot.
    pub instances: Vec<Instance>,
    /// Shared with the workers.
    pub env: Arc<WorkerEnv>,
    /// Status handle.
    pub handle: ConnectorHandle,
    /// Fires on shutdown.
    pub shutdown: Shutdown,
    /// Shutdown deadline for in-flight work.
    pub shutdown_timeout: Duration,
    /// A sink instance that answers `stored_offsets` (exactly-once sinks).
    pub offset_store: Option<Box<dyn Sink>>,
}

/// Runs until shutdown (Ok) or until a slot reports an error.
///
/// Each turn of the loop is a short sequence of named steps (see [`Runner::turn`]); the
/// state they share lives in [`Runner`].
pub async fn run(params: RunnerParams) -> Result<(), BatchError> {
    let mut runner = Runner::start(params)?;
    while runner.turn().await {}
    runner.stop().await
}

/// How often final offsets are committed while running.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// What woke the runner up.
enum Event {
    Shutdown,
    SlotDone(SlotDone),
    /// The operator's control changed (false: its sender is gone, nothing changed).
    Control(bool),
    /// A burst of records read from the consumer, and the error that ended it early.
    Records(Vec<Record>, Option<rdkafka::error::KafkaError>),
    /// A deadline passed or a worker/rebalance callback asked for a look.
    Tick,
}

/// The runner's state between turns of its loop.
struct Runner {
    name: String,
    consumer: StreamConsumer<RunnerContext>,
    shared: Arc<Shared>,
    handle: ConnectorHandle,
    batch: BatchSettings,
    max_buffered_bytes: usize,
    slots: Vec<Slot>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    done_rx: mpsc::UnboundedReceiver<SlotDone>,
    control: watch::Receiver<Control>,
    shutdown: Shutdown,
    shutdown_timeout: Duration,
    /// The operator asked for a pause: nothing is dispatched, every partition is paused.
    operator_paused: bool,
    /// Partitions this runner has paused on the consumer.
    paused: HashSet<Tp>,
    /// The assignment generation the slots' buffers belong to.
    seen_generation: u64,
    last_commit: Instant,
    /// One shared topic name per topic, so records do not each allocate theirs.
    topic_names: HashMap<String, Arc<str>>,
    /// The first error a slot reported: the loop ends.
    failure: Option<BatchError>,
    /// Since when the runner has stopped taking records (see [`backpressure`]).
    held_since: Option<Instant>,
}

impl Runner {
    /// Creates the consumer, subscribes, and starts one worker per built instance.
    fn start(params: RunnerParams) -> Result<Self, BatchError> {
        let RunnerParams {
            name,
            consumer: settings,
            kafka,
            instances,
            env,
            handle,
            shutdown,
            shutdown_timeout,
            offset_store,
        } = params;
        let group = settings.group(&name);
        let shared = Arc::new(Shared::new());
        let ctx = RunnerContext {
            shared: shared.clone(),
            handle: handle.clone(),
            revoke_wait: shutdown_timeout.min(Duration::from_secs(30)),
            probe_config: offset_store.as_ref().map(|_| {
                let mut c = consumer_config(&kafka, &format!("{group}-offset-check"), true);
                // An offset past the end is reported, not silently reset.
                c.set("auto.offset.reset", "error");
                c
            }),
            offset_store: offset_store.map(|s| Arc::new(tokio::sync::Mutex::new(s))),
        };
        let consumer: StreamConsumer<RunnerContext> =
            consumer_config(&kafka, &group, settings.start_from == StartFrom::Earliest)
                .create_with_context(ctx)
                .map_err(|e| BatchError::Crash(format!("cannot create consumer: {e}")))?;
        let topics = settings.input.to_vec();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(|e| BatchError::Crash(format!("cannot subscribe to {topics:?}: {e}")))?;
        tracing::info!(connector = %name, %group, topics = ?topics, "consuming");

        let (done_tx, done_rx) = mpsc::unbounded_channel::<SlotDone>();
        let mut slots = Vec::new();
        let mut workers = Vec::new();
        for (i, instance) in instances.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Batch>(1);
            let worker = worker_loop(
                i,
                instance,
                rx,
                env.clone(),
                shared.clone(),
                done_tx.clone(),
            );
            workers.push(connector_core::task::spawn(worker));
            slots.push(Slot::new(tx));
        }

        let control = handle.control();
        let operator_paused = *control.borrow() == Control::Pause;
        handle.set_state(if operator_paused {
            State::Paused
        } else {
            State::Running
        });
        Ok(Runner {
            name,
            consumer,
            shared,
            handle,
            batch: settings.batch.clone(),
            max_buffered_bytes: settings.max_buffered_bytes,
            slots,
            workers,
            done_rx,
            control,
            shutdown,
            shutdown_timeout,
            operator_paused,
            paused: HashSet::new(),
            seen_generation: 0,
            last_commit: Instant::now(),
            topic_names: HashMap::new(),
            failure: None,
            held_since: None,
        })
    }

    /// One turn of the loop; false when the loop is over (shutdown or a slot's error).
    async fn turn(&mut self) -> bool {
        let generation = self.follow_assignment();
        let stale = self
            .shared
            .stale_offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(why) = stale {
            // Before anything of the new assignment is dispatched: nothing is skipped.
            self.failure.get_or_insert(BatchError::Fatal(why));
            return false;
        }
        self.dispatch_ready(generation).await;
        if self.failure.is_some() {
            return false;
        }
        self.commit_if_due();
        let hold = self.apply_backpressure();
        let event = self.next_event(hold).await;
        self.on_event(event).await
    }

    /// A new assignment: batches being built belong to the old one (librdkafka restarts
    /// fetching from the committed offsets), and pause state starts afresh. Returns the
    /// current generation.
    fn follow_assignment(&mut self) -> u64 {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation != self.seen_generation {
            self.slots.iter_mut().for_each(Slot::reset);
            self.paused.clear();
            self.seen_generation = generation;
        }
        generation
    }

    /// Hands every ready batch to its free worker and counts its records as dispatched (what
    /// a revocation waits for).
    async fn dispatch_ready(&mut self, generation: u64) {
        if self.operator_paused {
            return;
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            let now = Instant::now();
            if !s.ready(&self.batch, now) {
                continue;
            }
            let (records, bytes) = s.take(self.batch.max_records, now);
            tracing::trace!(connector = %self.name, slot = i, records = records.len(), still_buffered = s.building.len(), "batch dispatched");
            {
                let mut g = self.shared.lock();
                for o in records.iter().filter_map(|r| r.origin.as_ref()) {
                    if let Some(p) = g.get_mut(&(o.topic.clone(), o.partition)) {
                        if p.generation == generation {
                            p.dispatched += 1;
                        }
                    }
                }
            }
            let batch = Batch {
                generation,
                in_flight: InFlight::new(
                    &self.shared,
                    memory_of(records.len(), records.capacity(), bytes),
                ),
                records,
            };
            if s.tx.send(batch).await.is_err() {
                self.failure
                    .get_or_insert(BatchError::Crash("worker stopped".into()));
            }
        }
    }

    /// Commits what is final, every [`COMMIT_EVERY`].
    fn commit_if_due(&mut self) {
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            commit(
                &self.consumer,
                &self.shared,
                &self.handle,
                CommitMode::Async,
            );
            self.last_commit = Instant::now();
        }
    }

    /// Backpressure and the operator's pause (see [`backpressure`]): pauses and resumes
    /// partitions on the consumer. Returns whether to stop taking records for now.
    fn apply_backpressure(&mut self) -> bool {
        let n_slots = self.slots.len();
        // One budget across all slots: what is being built, and every batch not yet settled
        // (including those whose acknowledgements are outstanding).
        let buffered: usize = self.slots.iter().map(Slot::memory).sum::<usize>()
            + self.shared.in_flight_bytes.load(Ordering::SeqCst);
        let assigned: Vec<Tp> = self.shared.lock().keys().cloned().collect();
        let mut levels: Vec<Option<(usize, usize)>> = vec![None; n_slots];
        for tp in &assigned {
            let i = slot_of(tp.1, n_slots);
            levels[i] = Some((self.slots[i].building.len(), self.slots[i].bytes));
        }
        let decision = backpressure(
            &levels,
            &self.batch,
            buffered >= self.max_buffered_bytes,
            self.operator_paused,
            &mut self.held_since,
            Instant::now(),
        );
        let want: HashSet<Tp> = assigned
            .into_iter()
            .filter(|tp| decision.pause[slot_of(tp.1, n_slots)])
            .collect();
        let (to_pause, to_resume) = pause_changes(&want, &self.paused);
        if !to_pause.is_empty() {
            self.handle
                .metrics
                .partition_pauses
                .add(to_pause.len() as u64);
            if let Err(e) = self.consumer.pause(&tpl_of_partitions(&to_pause)) {
                tracing::warn!(connector = %self.name, error = %e, "pause failed");
            }
        }
        if !to_resume.is_empty() {
            if let Err(e) = self.consumer.resume(&tpl_of_partitions(&to_resume)) {
                tracing::warn!(connector = %self.name, error = %e, "resume failed");
            }
        }
        self.paused = want;
        decision.hold
    }

    /// Waits for whatever comes first: shutdown, a slot's report, the operator, records
    /// (unless holding), a wake-up from a callback, or the next deadline.
    async fn next_event(&mut self, hold: bool) -> Event {
        let hold_ends = self.held_since.filter(|_| hold).map(|t| t + HOLD_LIMIT);
        let deadline = next_deadline(
            self.last_commit + COMMIT_EVERY,
            hold_ends,
            &self.slots,
            self.batch.linger.as_std(),
        );
        tokio::select! {
            biased;
            _ = self.shutdown.wait() => Event::Shutdown,
            Some(d) = self.done_rx.recv() => Event::SlotDone(d),
            changed = self.control.changed() => {
                if changed.is_ok() {
                    self.operator_paused = *self.control.borrow_and_update() == Control::Pause;
                }
                Event::Control(changed.is_ok())
            }
            msg = self.consumer.recv(), if !hold => {
                read_burst(&self.consumer, msg, &mut self.topic_names)
            }
            _ = self.shared.wake.notified() => Event::Tick,
            _ = tokio::time::sleep_until(deadline.into()) => Event::Tick,
        }
    }

    /// Acts on what woke the loop up; false when the loop is over.
    async fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Shutdown => return false,
            Event::SlotDone(d) => {
                self.slots[d.slot].finished();
                if let Some(e) = d.error {
                    self.failure = Some(e);
                    return false;
                }
            }
            Event::Control(false) => {}
            Event::Control(true) => {
                self.handle.set_state(if self.operator_paused {
                    State::Paused
                } else {
                    State::Running
                });
            }
            Event::Records(records, error) => {
                self.take_records(records);
                if let Some(e) = error {
                    tracing::warn!(connector = %self.name, error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Event::Tick => {}
        }
        true
    }

    /// Puts records into their slots' batches, each once: records of partitions not (or no
    /// longer) assigned to this generation, and offsets already tracked, are dropped.
    fn take_records(&mut self, records: Vec<Record>) {
        let n_slots = self.slots.len();
        let now = Instant::now();
        let mut taken = 0;
        // One lock for the whole burst (the rebalance callbacks take it too, briefly); the
        // generation is read under it, so a revocation is seen before or after the burst.
        let mut parts = self.shared.lock();
        let current = self.shared.generation.load(Ordering::SeqCst);
        for record in records {
            let Some(o) = &record.origin else { continue };
            let (partition, offset) = (o.partition, o.offset);
            let tracked = match parts.get_mut(&(o.topic.clone(), partition)) {
                Some(p) if p.generation == current => p.tracker.track(offset),
                _ => false,
            };
            if tracked {
                taken += 1;
                self.slots[slot_of(partition, n_slots)].push(record, now);
            } else {
                tracing::debug!(connector = %self.name, topic = %o.topic, partition, offset, "ignoring a record of a partition not (or no longer) assigned");
            }
        }
        drop(parts);
        self.handle.metrics.records_in.add(taken);
    }

    /// Stop: no new batches. Waits (bounded by the shutdown timeout) for in-flight batches,
    /// lets the workers settle and close, commits what is final, and leaves the group.
    async fn stop(mut self) -> Result<(), BatchError> {
        let deadline = Instant::now() + self.shutdown_timeout;
        for s in &mut self.slots {
            s.building.clear();
        }
        while self.slots.iter().any(|s| s.busy) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(connector = %self.name, "shutdown deadline passed with batches in flight; they will be redelivered");
                break;
            }
            match tokio::time::timeout(left, self.done_rx.recv()).await {
                Ok(Some(d)) => {
                    self.slots[d.slot].busy = false;
                    if let Some(e) = d.error {
                        self.failure.get_or_insert(e);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Closing the channels lets each worker settle the batch whose acknowledgements it
        // still awaits; the final commit comes after.
        self.slots.clear();
        for w in std::mem::take(&mut self.workers) {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            if tokio::time::timeout(left, w).await.is_err() {
                tracing::warn!(connector = %self.name, "worker did not stop in time");
            }
        }
        while let Ok(d) = self.done_rx.try_recv() {
            if let Some(e) = d.error {
                self.failure.get_or_insert(e);
            }
        }
        commit(&self.consumer, &self.shared, &self.handle, CommitMode::Sync);
        self.consumer.unsubscribe();
        match self.failure {
            Some(BatchError::Abandoned) | None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Takes `first` and whatever else the consumer has already fetched (up to [`BURST`]), so the
/// loop's bookkeeping runs per burst rather than per record. An error ends the burst.
fn read_burst(
    consumer: &StreamConsumer<RunnerContext>,
    first: KafkaResult<BorrowedMessage<'_>>,
    topic_names: &mut HashMap<String, Arc<str>>,
) -> Event {
    let mut records = Vec::new();
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        match msg {
            Ok(m) => {
                let topic = match topic_names.get(m.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = Arc::from(m.topic());
                        topic_names.insert(m.topic().to_string(), t.clone());
                        t
                    }
                };
                records.push(to_record(&m, &topic));
            }
            Err(e) => return Event::Records(records, Some(e)),
        }
        if records.len() >= BURST {
            break;
        }
        next = consumer.recv().now_or_never();
    }
    Event::Records(records, None)
}

/// One slot's worker: runs batches through its connector instance, one at a time, and
/// reports each batch's end. A transform's batch whose outputs are queued, acknowledgements
/// outstanding, stays pending while the next batch is transformed (its Redis round trip
/// overlaps these acks). Ends when the runner closes the channel (after settling what is
/// pending, so its offsets can be committed) or on a batch error.
async fn worker_loop(
    i: usize,
    mut instance: Instance,
    mut rx: mpsc::Receiver<Batch>,
    env: Arc<WorkerEnv>,
    shared: Arc<Shared>,
    done_tx: mpsc::UnboundedSender<SlotDone>,
) {
    let mut pending: Option<(Batch, Attempt)> = None;
    let report = |error: Option<BatchError>| {
        let _ = done_tx.send(SlotDone { slot: i, error });
        shared.wake.notify_one();
    };
    loop {
        let next = match pending.as_mut() {
            None => rx.recv().await,
            Some((_, attempt)) => {
                tokio::select! {
                    b = rx.recv() => b,
                    () = attempt.acked() => {
                        // Nothing new came first: settle the pending batch now.
                        if let Some((b, a)) = pending.take() {
                            if let Err(e) = settle(&env, &shared, &mut instance, b, a).await {
                                report(Some(e));
                                break;
                            }
                        }
                        continue;
                    }
                }
            }
        };
        let Some(mut batch) = next else { break };
        let started = env.start(&mut instance, &batch.records).await;
        if let Ok(a) = &started {
            // The producer's copies of the outputs count against the budget until the batch
            // is settled, as much as the records themselves.
            let (n, bytes) = a.queued();
            batch.in_flight.grow(bytes + n * PRODUCED_OVERHEAD);
        }
        // The previous batch settles before this one (its records come first).
        let previous = match pending.take() {
            Some((b, a)) => settle(&env, &shared, &mut instance, b, a).await,
            None => Ok(()),
        };
        let result = match (previous, started) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(a)) if a.awaits_acks() => {
                pending = Some((batch, a));
                Ok(())
            }
            (Ok(()), Ok(a)) => settle(&env, &shared, &mut instance, batch, a).await,
        };
        env.handle.set_details(i, instance.status());
        let stop = result.is_err();
        report(result.err());
        if stop {
            break;
        }
    }
    // Channel closed (shutdown): finish what is queued, so its offsets can be committed.
    if let Some((b, a)) = pending.take() {
        if let Err(e) = settle(&env, &shared, &mut instance, b, a).await {
            report(Some(e));
        }
    }
    if let Err(e) = instance.close().await {
        tracing::warn!(connector = %env.name, error = %e, "close failed");
    }
}

/// Settles `attempt` of `batch`, reporting final records to the offset tracker.
async fn settle(
    env: &WorkerEnv,
    shared: &Shared,
    instance: &mut Instance,
    batch: Batch,
    attempt: Attempt,
) -> Result<(), BatchError> {
    let records = &batch.records;
    let mut mark = |idx: &[usize]| {
        let done: Vec<(Tp, i64)> = idx
            .iter()
            .filter_map(|i| records[*i].origin.as_ref())
            .map(|o| ((o.topic.clone(), o.partition), o.offset))
            .collect();
        shared.complete(batch.generation, &done);
    };
    env.settle(instance, records, attempt, &mut mark).await
}

/// What the runner does about buffered records in one turn of its loop.
#[derive(Debug, PartialEq)]
struct Decision {
    /// Stop taking records from the consumer for now.
    hold: bool,
    /// Per slot: pause the slot's partitions.
    pause: Vec<bool>,
}

/// Backpressure. A slot reads ahead while its worker is busy, up to `READ_AHEAD_BATCHES`
/// batches, so the next batch is ready the moment the worker is free. Beyond that:
/// * when every slot with partitions is that far ahead (a plain backlog) or the memory bound
///   is reached, the runner stops taking records from the consumer (`hold`): librdkafka's own
///   bounded queue stops fetching, and nothing is paused — pausing a partition throws away
///   what librdkafka has fetched for it, and resuming fetches it again;
/// * when only some slots are ahead, reading goes on (the others want records) and the ahead
///   slots buffer more, up to `MAX_AHEAD_BATCHES`, past which their partitions pause;
/// * when a hold has lasted `HOLD_LIMIT` (a stuck worker: polling must go on for the member
///   to stay in its group), the ahead slots' partitions pause and polling resumes;
/// * the operator's pause pauses everything.
///
/// `levels` holds, per slot, `(records, bytes)` waiting, or `None` for a slot without
/// partitions. `held_since` is the hold's start, kept between turns.
fn backpressure(
    levels: &[Option<(usize, usize)>],
    batch: &BatchSettings,
    over_memory: bool,
    operator_paused: bool,
    held_since: &mut Option<Instant>,
    now: Instant,
) -> Decision {
    let ahead_by = |l: &Option<(usize, usize)>, n: usize| {
        l.is_some_and(|(records, bytes)| {
            over_memory || records >= n * batch.max_records || bytes >= n * batch.max_bytes
        })
    };
    let active = levels.iter().any(Option::is_some);
    let all_ahead = active
        && levels
            .iter()
            .all(|l| l.is_none() || ahead_by(l, READ_AHEAD_BATCHES));
    if all_ahead && !operator_paused {
        held_since.get_or_insert(now);
    } else {
        *held_since = None;
    }
    let hold = held_since.is_some_and(|t| now.duration_since(t) < HOLD_LIMIT);
    let expired = held_since.is_some() && !hold;
    let pause = levels
        .iter()
        .map(|l| {
            l.is_some()
                && (operator_paused
                    || (!hold && ahead_by(l, MAX_AHEAD_BATCHES))
                    || (expired && ahead_by(l, READ_AHEAD_BATCHES)))
        })
        .collect();
    Decision { hold, pause }
}

fn commit(
    consumer: &StreamConsumer<RunnerContext>,
    shared: &Shared,
    handle: &ConnectorHandle,
    mode: CommitMode,
) {
    let list = shared.commit_list(None, matches!(mode, CommitMode::Sync));
    if list.is_empty() {
        return;
    }
    match consumer.commit(&tpl_of(&list), mode) {
        Ok(()) => {
            shared.mark_committed(&list);
            handle.metrics.commits.inc();
        }
        Err(e) => {
            tracing::warn!(connector = %handle.name, error = %e, "offset commit failed (will retry)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> BatchSettings {
        BatchSettings {
            max_records: 100,
            max_bytes: 1_000_000,
            linger: BatchSettings::default().linger,
        }
    }

    fn expect(hold: bool, pause: &[bool]) -> Decision {
        Decision {
            hold,
            pause: pause.to_vec(),
        }
    }

    fn decide(levels: &[Option<usize>], held: &mut Option<Instant>, now: Instant) -> Decision {
        let levels: Vec<_> = levels.iter().map(|l| l.map(|n| (n, n * 10))).collect();
        backpressure(&levels, &batch(), false, false, held, now)
    }

    #[test]
    fn reads_on_while_any_slot_wants_records() {
        let now = Instant::now();
        let mut held = None;
        let d = decide(&[Some(0), Some(50)], &mut held, now);
        assert_eq!(d, expect(false, &[false, false]));
        // One slot 3 batches ahead, the other hungry: nothing paused, reading goes on.
        let d = decide(&[Some(300), Some(50)], &mut held, now);
        assert_eq!(d, expect(false, &[false, false]));
        assert_eq!(held, None);
    }

    #[test]
    fn a_slot_far_ahead_of_the_others_pauses() {
        let mut held = None;
        let d = decide(
            &[Some(MAX_AHEAD_BATCHES * 100), Some(0)],
            &mut held,
            Instant::now(),
        );
        assert_eq!(d, expect(false, &[true, false]));
    }

    #[test]
    fn a_backlog_holds_without_pausing_until_the_hold_limit() {
        let t0 = Instant::now();
        let mut held = None;
        // Slot 2 has no partitions: it does not keep the others reading.
        let d = decide(&[Some(300), Some(2000), None], &mut held, t0);
        assert_eq!(d, expect(true, &[false, false, false]));
        assert_eq!(held, Some(t0));
        let d = decide(
            &[Some(300), Some(2000), None],
            &mut held,
            t0 + HOLD_LIMIT / 2,
        );
        assert_eq!(d, expect(true, &[false, false, false]));
        // Stuck for longer: pause the ahead slots and poll on.
        let d = decide(&[Some(300), Some(2000), None], &mut held, t0 + HOLD_LIMIT);
        assert_eq!(d, expect(false, &[true, true, false]));
        // A slot drained: the hold ends and only the far-ahead slot stays paused.
        let d = decide(&[Some(0), Some(2000), None], &mut held, t0 + HOLD_LIMIT * 2);
        assert_eq!(d, expect(false, &[false, true, false]));
        assert_eq!(held, None);
    }

    #[test]
    fn the_memory_bound_holds_every_slot() {
        let t0 = Instant::now();
        let mut held = None;
        let levels = [Some((1, 10)), Some((0, 0))];
        let d = backpressure(&levels, &batch(), true, false, &mut held, t0);
        assert_eq!(d, expect(true, &[false, false]));
        let d = backpressure(&levels, &batch(), true, false, &mut held, t0 + HOLD_LIMIT);
        assert_eq!(d, expect(false, &[true, true]));
    }

    #[test]
    fn the_operator_pause_pauses_every_assigned_slot_and_never_holds() {
        let mut held = Some(Instant::now());
        let levels = [Some((1000, 10)), None];
        let d = backpressure(&levels, &batch(), false, true, &mut held, Instant::now());
        assert_eq!(d, expect(false, &[true, false]));
        assert_eq!(held, None);
    }

    fn rec(partition: i32, offset: i64, len: usize) -> Record {
        Record::new("x".repeat(len)).with_origin("t", partition, offset)
    }

    fn slot() -> Slot {
        Slot::new(mpsc::channel(1).0)
    }

    #[test]
    fn partitions_map_to_slots_by_modulo() {
        assert_eq!(slot_of(0, 2), 0);
        assert_eq!(slot_of(5, 2), 1);
        assert_eq!(slot_of(-3, 2), 1);
        // No slot at all still names slot 0 rather than dividing by zero.
        assert_eq!(slot_of(7, 0), 0);
    }

    #[test]
    fn a_slot_is_ready_when_full_or_lingered_and_never_while_busy() {
        let t0 = Instant::now();
        let b = batch();
        let linger = b.linger.as_std();
        let mut s = slot();
        assert!(!s.ready(&b, t0), "nothing to send");
        s.push(rec(0, 0, 10), t0);
        assert!(!s.ready(&b, t0), "neither full nor lingered");
        assert!(s.ready(&b, t0 + linger), "lingered");
        for i in 1..100 {
            s.push(rec(0, i, 10), t0);
        }
        assert!(s.ready(&b, t0), "full by records");
        s.busy = true;
        assert!(!s.ready(&b, t0 + linger), "the worker still has a batch");

        let mut big = slot();
        big.push(rec(0, 0, b.max_bytes), t0);
        assert!(big.ready(&b, t0), "full by bytes");
    }

    #[test]
    fn taking_a_batch_keeps_order_and_accounts_bytes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut s = slot();
        for i in 0..150 {
            s.push(rec(0, i, 10), t0);
        }
        let per_record = s.bytes / 150;
        let (taken, taken_bytes) = s.take(100, t1);
        let offsets: Vec<i64> = taken
            .iter()
            .filter_map(|r| r.origin.as_ref().map(|o| o.offset))
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
        assert!(s.busy);
        assert_eq!(taken_bytes, 100 * per_record);
        assert_eq!(
            s.memory(),
            memory_of(50, s.building.capacity(), 50 * per_record)
        );
        assert!(s.building.capacity() >= 50);
        assert_eq!(s.bytes, 50 * per_record);
        assert_eq!(s.first_at, Some(t1), "the rest lingers afresh");
        assert_eq!(s.linger_deadline(Duration::from_millis(10)), None, "busy");
        s.finished();
        assert!(!s.busy);
        assert_eq!(
            s.linger_deadline(Duration::from_millis(10)),
            Some(t1 + Duration::from_millis(10))
        );
        let (rest, _) = s.take(100, t1);
        assert_eq!(rest.len(), 50);
        assert_eq!((s.bytes, s.first_at), (0, None));
        s.push(rec(0, 200, 10), t1);
        s.reset();
        assert!(s.building.is_empty());
        assert_eq!((s.bytes, s.first_at), (0, None));
    }

    #[test]
    fn a_batch_counts_in_flight_until_it_is_dropped_and_wakes_the_runner() {
        let shared = Arc::new(Shared::new());
        let a = InFlight::new(&shared, 1000);
        let b = InFlight::new(&shared, memory_of(10, 16, 500));
        let in_flight = || shared.in_flight_bytes.load(Ordering::SeqCst);
        assert_eq!(
            in_flight(),
            1000 + 500 + 10 * RECORD_HEAP_OVERHEAD + 16 * std::mem::size_of::<Record>()
        );
        drop(a);
        assert_eq!(in_flight(), memory_of(10, 16, 500));
        let mut b = b;
        b.grow(300);
        assert_eq!(in_flight(), memory_of(10, 16, 500) + 300);
        drop(b);
        assert_eq!(in_flight(), 0);
        // The drop left a wake-up for the runner's loop.
        assert!(shared.wake.notified().now_or_never().is_some());
    }

    #[test]
    fn a_slot_gives_back_the_capacity_of_a_long_read_ahead() {
        let t0 = Instant::now();
        let mut s = slot();
        for i in 0..1000 {
            s.push(rec(0, i, 10), t0);
        }
        let grown = s.building.capacity();
        assert!(grown >= 1000);
        assert!(s.memory() >= memory_of(1000, 1000, s.bytes));
        for _ in 0..9 {
            let _ = s.take(100, t0);
            s.finished();
        }
        assert_eq!(s.building.len(), 100);
        assert!(
            s.building.capacity() <= 2 * (100 + 100),
            "capacity {} kept after the backlog (was {grown})",
            s.building.capacity()
        );
    }

    #[test]
    fn the_loop_wakes_at_the_earliest_deadline() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(20);
        let commit_due = t0 + Duration::from_millis(500);
        let mut a = slot();
        let mut b = slot();
        assert_eq!(next_deadline(commit_due, None, &[], linger), commit_due);
        a.push(rec(0, 0, 1), t0 + Duration::from_millis(30));
        b.push(rec(1, 0, 1), t0 + Duration::from_millis(10));
        let slots = [a, b];
        assert_eq!(
            next_deadline(commit_due, None, &slots, linger),
            t0 + Duration::from_millis(30)
        );
        assert_eq!(
            next_deadline(
                commit_due,
                Some(t0 + Duration::from_millis(1)),
                &slots,
                linger
            ),
            t0 + Duration::from_millis(1)
        );
        // A busy slot's batch does not linger out: its worker will ask for the next look.
        let mut busy = slot();
        busy.push(rec(0, 0, 1), t0);
        busy.busy = true;
        assert_eq!(next_deadline(commit_due, None, &[busy], linger), commit_due);
    }

    #[test]
    fn pause_changes_are_the_differences() {
        let tp = |p: i32| (Arc::<str>::from("t"), p);
        let want: HashSet<Tp> = [tp(0), tp(1)].into_iter().collect();
        let paused: HashSet<Tp> = [tp(1), tp(2)].into_iter().collect();
        let (pause, resume) = pause_changes(&want, &paused);
        assert_eq!(pause, vec![tp(0)]);
        assert_eq!(resume, vec![tp(2)]);
        let (pause, resume) = pause_changes(&want, &want);
        assert!(pause.is_empty() && resume.is_empty());
    }

    #[test]
    fn bytes_count_like_records() {
        let mut held = None;
        let levels = [Some((1, 3_000_000)), Some((0, 0))];
        let d = backpressure(&levels, &batch(), false, false, &mut held, Instant::now());
        assert_eq!(d, expect(false, &[false, false]));
        let levels = [Some((1, 3_000_000)), Some((1, 3_000_000))];
        let d = backpressure(&levels, &batch(), false, false, &mut held, Instant::now());
        assert!(d.hold);
    }
}
