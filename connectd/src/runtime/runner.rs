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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use connector_core::{Record, Shutdown, Sink, TopicPartition};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::{mpsc, Notify};

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
}

impl Shared {
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
    fn assign(&self, tpl: &mut TopicPartitionList) {
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
                self.assign(tpl);
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

/// A batch handed to a slot.
struct Batch {
    generation: u64,
    records: Vec<Record>,
}

struct Slot {
    tx: mpsc::Sender<Batch>,
    building: Vec<Record>,
    bytes: usize,
    first_at: Option<Instant>,
    busy: bool,
    busy_bytes: usize,
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
pub async fn run(params: RunnerParams) -> Result<(), BatchError> {
    let RunnerParams {
        name,
        consumer: settings,
        kafka,
        instances,
        env,
        handle,
        mut shutdown,
        shutdown_timeout,
        offset_store,
    } = params;
    let group = settings.group(&name);
    let shared = Arc::new(Shared {
        parts: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
        wake: Notify::new(),
        generation: AtomicU64::new(0),
    });
    let ctx = RunnerContext {
        shared: shared.clone(),
        handle: handle.clone(),
        revoke_wait: shutdown_timeout.min(Duration::from_secs(30)),
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

    // Worker slots.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<SlotDone>();
    let mut slots = Vec::new();
    let mut workers = Vec::new();
    for (i, mut instance) in instances.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let env = env.clone();
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        workers.push(tokio::spawn(async move {
            // A transform's batch whose outputs are queued, acknowledgements outstanding: the
            // next batch is transformed meanwhile (its Redis round trip overlaps these acks).
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
                let Some(batch) = next else { break };
                let started = env.start(&mut instance, &batch.records).await;
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
        }));
        slots.push(Slot {
            tx,
            building: Vec::new(),
            bytes: 0,
            first_at: None,
            busy: false,
            busy_bytes: 0,
        });
    }
    drop(done_tx);

    let n_slots = slots.len().max(1);
    let slot_of = |p: i32| (p.unsigned_abs() as usize) % n_slots;
    let batch = settings.batch.clone();
    let linger = batch.linger.as_std();
    let mut control = handle.control();
    let mut operator_paused = *control.borrow() == Control::Pause;
    let mut paused: HashSet<Tp> = HashSet::new();
    let mut seen_generation = 0u64;
    let mut last_commit = Instant::now();
    let commit_every = Duration::from_millis(500);
    let mut topic_names: HashMap<String, Arc<str>> = HashMap::new();
    let mut failure: Option<BatchError> = None;
    let mut held_since: Option<Instant> = None;
    handle.set_state(if operator_paused {
        State::Paused
    } else {
        State::Running
    });

    loop {
        // A new assignment: batches being built belong to the old one; librdkafka restarts
        // fetching from the committed offsets, and pause state starts afresh.
        let generation = shared.generation.load(Ordering::SeqCst);
        if generation != seen_generation {
            for s in &mut slots {
                s.building.clear();
                s.bytes = 0;
                s.first_at = None;
            }
            paused.clear();
            seen_generation = generation;
        }

        // Hand over ready batches.
        for (i, s) in slots.iter_mut().enumerate() {
            let full = s.building.len() >= batch.max_records || s.bytes >= batch.max_bytes;
            let lingered = s.first_at.is_some_and(|t| t.elapsed() >= linger);
            if !operator_paused && !s.busy && !s.building.is_empty() && (full || lingered) {
                let take = s.building.len().min(batch.max_records);
                let records: Vec<Record> = s.building.drain(..take).collect();
                let bytes: usize = records.iter().map(Record::byte_size).sum();
                s.bytes -= bytes.min(s.bytes);
                s.first_at = if s.building.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                s.busy = true;
                tracing::trace!(connector = %name, slot = i, records = take, still_buffered = s.building.len(), "batch dispatched");
                s.busy_bytes = bytes;
                {
                    let mut g = shared.lock();
                    for r in &records {
                        if let Some(o) = &r.origin {
                            if let Some(p) = g.get_mut(&(o.topic.clone(), o.partition)) {
                                if p.generation == generation {
                                    p.dispatched += 1;
                                }
                            }
                        }
                    }
                }
                if s.tx
                    .send(Batch {
                        generation,
                        records,
                    })
                    .await
                    .is_err()
                {
                    failure.get_or_insert(BatchError::Crash("worker stopped".into()));
                }
            }
        }
        if failure.is_some() {
            break;
        }

        // Commit what is final.
        if last_commit.elapsed() >= commit_every {
            commit(&consumer, &shared, &handle, CommitMode::Async);
            last_commit = Instant::now();
        }

        // Backpressure and operator pause (see [`backpressure`]).
        let buffered: usize = slots.iter().map(|s| s.bytes + s.busy_bytes).sum();
        let assigned: Vec<Tp> = shared.lock().keys().cloned().collect();
        let mut levels: Vec<Option<(usize, usize)>> = vec![None; slots.len()];
        for tp in &assigned {
            let i = slot_of(tp.1);
            levels[i] = Some((slots[i].building.len(), slots[i].bytes));
        }
        let decision = backpressure(
            &levels,
            &batch,
            buffered >= settings.max_buffered_bytes,
            operator_paused,
            &mut held_since,
            Instant::now(),
        );
        let hold = decision.hold;
        let want: HashSet<Tp> = assigned
            .into_iter()
            .filter(|tp| decision.pause[slot_of(tp.1)])
            .collect();
        let to_pause: Vec<(Tp, i64)> = want.difference(&paused).map(|tp| (tp.clone(), 0)).collect();
        let to_resume: Vec<(Tp, i64)> =
            paused.difference(&want).map(|tp| (tp.clone(), 0)).collect();
        if !to_pause.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((t, p), _) in &to_pause {
                tpl.add_partition(t, *p);
            }
            handle.metrics.partition_pauses.add(to_pause.len() as u64);
            if let Err(e) = consumer.pause(&tpl) {
                tracing::warn!(connector = %name, error = %e, "pause failed");
            }
        }
        if !to_resume.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((t, p), _) in &to_resume {
                tpl.add_partition(t, *p);
            }
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(connector = %name, error = %e, "resume failed");
            }
        }
        paused = want;

        // Next deadline: the earliest linger expiry or the next commit.
        let mut next = last_commit + commit_every;
        if let (true, Some(t)) = (hold, held_since) {
            next = next.min(t + HOLD_LIMIT);
        }
        for s in &slots {
            if let (false, Some(t)) = (s.busy, s.first_at) {
                next = next.min(t + linger);
            }
        }

        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(d) = done_rx.recv() => {
                let s = &mut slots[d.slot];
                s.busy = false;
                s.busy_bytes = 0;
                if let Some(e) = d.error {
                    failure = Some(e);
                    break;
                }
            }
            changed = control.changed() => {
                if changed.is_ok() {
                    operator_paused = *control.borrow_and_update() == Control::Pause;
                    handle.set_state(if operator_paused { State::Paused } else { State::Running });
                }
            }
            msg = consumer.recv(), if !hold => {
                // Take what is already fetched in one go (up to a bound), so the loop's
                // bookkeeping runs per burst rather than per record.
                let mut next_msg = Some(msg);
                let mut taken = 0;
                while let Some(msg) = next_msg.take() {
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
                            let tp = (topic.clone(), m.partition());
                            let current = shared.generation.load(Ordering::SeqCst);
                            let tracked = {
                                let mut g = shared.lock();
                                match g.get_mut(&tp) {
                                    Some(p) if p.generation == current => p.tracker.track(m.offset()),
                                    _ => false,
                                }
                            };
                            if tracked {
                                let record = to_record(&m, &topic);
                                handle.metrics.records_in.inc();
                                let s = &mut slots[slot_of(tp.1)];
                                s.bytes += record.byte_size();
                                s.first_at.get_or_insert_with(Instant::now);
                                s.building.push(record);
                            } else {
                                tracing::debug!(connector = %name, topic = %tp.0, partition = tp.1, offset = m.offset(), "ignoring a record of a partition not (or no longer) assigned");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(connector = %name, error = %e, "consumer error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                    taken += 1;
                    if taken >= BURST {
                        break;
                    }
                    next_msg = consumer.recv().now_or_never();
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }

    // Stop: no new batches. Wait (bounded) for in-flight ones, commit what is final, leave.
    let deadline = Instant::now() + shutdown_timeout;
    for s in &mut slots {
        s.building.clear();
    }
    while slots.iter().any(|s| s.busy) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(connector = %name, "shutdown deadline passed with batches in flight; they will be redelivered");
            break;
        }
        match tokio::time::timeout(left, done_rx.recv()).await {
            Ok(Some(d)) => {
                slots[d.slot].busy = false;
                if let Some(e) = d.error {
                    failure.get_or_insert(e);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Closing the channels lets each worker settle the batch whose acknowledgements it still
    // awaits; the final commit comes after.
    drop(slots);
    for w in workers {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match tokio::time::timeout(left, w).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(connector = %name, "worker did not stop in time"),
        }
    }
    while let Ok(d) = done_rx.try_recv() {
        if let Some(e) = d.error {
            failure.get_or_insert(e);
        }
    }
    commit(&consumer, &shared, &handle, CommitMode::Sync);
    consumer.unsubscribe();
    match failure {
        Some(BatchError::Abandoned) | None => Ok(()),
        Some(e) => Err(e),
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
