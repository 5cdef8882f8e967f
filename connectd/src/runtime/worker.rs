//! Handling one batch with one connector instance: retries with backoff, dead-lettering,
//! producing a transform's output — and reporting each record once its outcome is final.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_core::{
    ConnectorError, Output, Record, RecordOutcome, Shutdown, Sink, Transform, TransformOutcome,
};
use rand::Rng;

use super::dlq::dead_letter;
use super::kafka::{is_retriable, Acks, Outgoing, SharedProducer};
use super::status::{ConnectorHandle, State};
use crate::config::{DlqBreakerSettings, RetrySettings};

/// A built connector instance, owned by one worker slot.
pub enum Instance {
    /// A sink.
    Sink(Box<dyn Sink>),
    /// A transform and its default output topic.
    Transform(Box<dyn Transform>, String),
}

impl Instance {
    /// Connector-specific status.
    pub fn status(&self) -> serde_json::Value {
        match self {
            Instance::Sink(s) => s.status(),
            Instance::Transform(t, _) => t.status(),
        }
    }

    /// Closes the instance.
    pub async fn close(&mut self) -> Result<(), ConnectorError> {
        match self {
            Instance::Sink(s) => s.close().await,
            Instance::Transform(t, _) => t.close().await,
        }
    }
}

/// Why a batch was not completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The connector crashed; the supervisor restarts it. Records not final are redelivered.
    #[error("connector crashed: {0}")]
    Crash(String),
    /// The connector must stop until an operator intervenes.
    #[error("connector failed: {0}")]
    Fatal(String),
    /// Shutdown came first; records not final are redelivered after the restart.
    #[error("abandoned at shutdown")]
    Abandoned,
}

/// DLQ-rate breaker over the last `window` records.
#[derive(Debug)]
pub struct Breaker {
    settings: DlqBreakerSettings,
    events: VecDeque<bool>,
    dead: u64,
}

impl Breaker {
    /// A breaker with these settings.
    pub fn new(settings: DlqBreakerSettings) -> Self {
        Self {
            settings,
            events: VecDeque::new(),
            dead: 0,
        }
    }

    /// Adds `ok` good and `dead` dead-lettered records; returns the ratio when it is over the
    /// limit on a full window.
    pub fn observe(&mut self, ok: u64, dead: u64) -> Option<f64> {
        let window = self.settings.window.max(1) as usize;
        for d in
            std::iter::repeat_n(false, ok as usize).chain(std::iter::repeat_n(true, dead as usize))
        {
            self.events.push_back(d);
            self.dead += u64::from(d);
            if self.events.len() > window {
                if let Some(true) = self.events.pop_front() {
                    self.dead -= 1;
                }
            }
        }
        let ratio = self.dead as f64 / self.events.len().max(1) as f64;
        (self.events.len() >= window && ratio > self.settings.max_ratio).then_some(ratio)
    }

    /// The breaker as the admin API shows it (`state`: `closed` or `open`).
    pub fn view(&self, open: bool) -> serde_json::Value {
        serde_json::json!({
            "state": if open { "open" } else { "closed" },
            "dead_ratio": self.dead as f64 / self.events.len().max(1) as f64,
            "max_ratio": self.settings.max_ratio,
            "records_in_window": self.events.len(),
            "window": self.settings.window,
        })
    }
}

/// What a worker needs besides its instance.
pub struct WorkerEnv {
    /// Connector name.
    pub name: String,
    /// Dead-letter topic, if any.
    pub dlq_topic: Option<String>,
    /// Retry policy.
    pub retry: RetrySettings,
    /// Shared producer.
    pub producer: SharedProducer,
    /// Status and counters.
    pub handle: ConnectorHandle,
    /// Fires on shutdown.
    pub shutdown: Shutdown,
    /// Shared by the connector's slots.
    pub breaker: Option<Arc<Mutex<Breaker>>>,
}

/// Longest wait to enqueue into the producer's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

impl WorkerEnv {
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.retry.initial_backoff.as_std().as_millis() as u64;
        let max = self.retry.max_backoff.as_std().as_millis() as u64;
        let exp = base
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(max)
            .max(1);
        // Full jitter between half and all of the exponential step.
        Duration::from_millis(rand::rng().random_range(exp / 2..=exp))
    }

    /// Sleeps before retry `attempt`, or gives up when shutdown comes first or attempts run out.
    async fn before_retry(&self, attempt: u32, err: &str) -> Result<(), BatchError> {
        self.handle.metrics.retries.inc();
        self.handle.set_error(err.to_string());
        if self.handle.state() == State::Running {
            self.handle.set_state(State::Degraded);
        }
        if let Some(max) = self.retry.max_attempts {
            if attempt >= max {
                return Err(BatchError::Fatal(format!(
                    "gave up after {attempt} attempts: {err}"
                )));
            }
        }
        let wait = self.backoff(attempt);
        tracing::warn!(connector = %self.name, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = shutdown.wait() => Err(BatchError::Abandoned),
        }
    }

    fn recovered(&self) {
        if self.handle.state() == State::Degraded {
            self.handle.set_state(State::Running);
        }
    }

    /// Sends `dead` (index, error) to the DLQ topic and waits for the acknowledgements.
    async fn dead_letter(
        &self,
        batch: &[Record],
        dead: &[(usize, ConnectorError)],
        ok: u64,
        attempt: u32,
    ) -> Result<(), BatchError> {
        if let Some(b) = &self.breaker {
            let (tripped, view) = {
                let mut g = match b.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let tripped = g.observe(ok, dead.len() as u64);
                (tripped, g.view(tripped.is_some()))
            };
            self.handle.set_breaker(view);
            if let Some(ratio) = tripped {
                return Err(BatchError::Fatal(format!(
                    "dead-letter rate {:.1}% is over the dlq_breaker limit; first error: {}",
                    ratio * 100.0,
                    dead.first().map(|(_, e)| e.to_string()).unwrap_or_default()
                )));
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        let Some(topic) = &self.dlq_topic else {
            let (i, e) = &dead[0];
            let at = batch[*i]
                .origin
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(BatchError::Fatal(format!(
                "record {at} failed permanently ({e}) and the connector has no dlq_topic"
            )));
        };
        let letters: Vec<Record> = dead
            .iter()
            .map(|(i, e)| dead_letter(&batch[*i], &self.name, e, attempt))
            .collect();
        let mut retry_attempt = 0;
        loop {
            let items: Vec<Outgoing<'_>> =
                letters.iter().map(|r| (topic.as_str(), None, r)).collect();
            let results = self.producer.produce_all(&items, QUEUE_TIMEOUT).await;
            match results.into_iter().find_map(Result::err) {
                None => break,
                Some(e) if is_retriable(&e) => {
                    retry_attempt += 1;
                    self.before_retry(
                        retry_attempt,
                        &format!("dead-letter produce to {topic}: {e}"),
                    )
                    .await?;
                }
                Some(e) => {
                    return Err(BatchError::Fatal(format!(
                        "dead-letter topic {topic} rejected a record: {e}"
                    )))
                }
            }
        }
        for (i, e) in dead {
            let at = batch[*i]
                .origin
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::warn!(connector = %self.name, record = %at, class = e.class(), error = %e.message(), "dead-lettered");
        }
        self.handle.metrics.dlq_records.add(dead.len() as u64);
        Ok(())
    }

    /// Handles `batch` with `instance`; `done` is called with the indices of records whose
    /// outcome became final (possibly several times, never twice for one index).
    pub async fn handle_batch(
        &self,
        instance: &mut Instance,
        batch: &[Record],
        done: &mut (dyn FnMut(&[usize]) + Send),
    ) -> Result<(), BatchError> {
        let attempt = self.start(instance, batch).await?;
        self.settle(instance, batch, attempt, done).await
    }

    /// The first attempt at `batch`: a sink's write, or a transform's call with its outputs put
    /// into the producer's queue. The acknowledgements may still be outstanding: the caller can
    /// start the next batch before it [`settle`](Self::settle)s this one.
    pub async fn start(
        &self,
        instance: &mut Instance,
        batch: &[Record],
    ) -> Result<Attempt, BatchError> {
        self.handle.metrics.batch_size.observe(batch.len() as f64);
        let todo: Vec<usize> = (0..batch.len()).collect();
        self.attempt(instance, batch, todo, 1, Instant::now()).await
    }

    /// One attempt at the records `todo` of `batch`.
    async fn attempt(
        &self,
        instance: &mut Instance,
        batch: &[Record],
        todo: Vec<usize>,
        number: u32,
        started: Instant,
    ) -> Result<Attempt, BatchError> {
        let m = &self.handle.metrics;
        let subset: Cow<'_, [Record]> = if todo.len() == batch.len() {
            Cow::Borrowed(batch)
        } else {
            Cow::Owned(todo.iter().map(|i| batch[*i].clone()).collect())
        };
        let mut a = Attempt {
            number,
            started,
            retry: Vec::new(),
            retry_error: String::new(),
            dead: Vec::new(),
            finished: Vec::new(),
            emits: Vec::new(),
            queued: (0, 0),
            acks: None,
        };
        match instance {
            Instance::Sink(sink) => match sink.write(&subset).await {
                Ok(outcomes) if outcomes.len() == subset.len() => {
                    for (j, o) in outcomes.into_iter().enumerate() {
                        match o {
                            RecordOutcome::Delivered => a.finished.push(todo[j]),
                            RecordOutcome::Retriable(e) => {
                                a.retry_error = e.to_string();
                                a.retry.push(todo[j]);
                            }
                            RecordOutcome::Permanent(e) => a.dead.push((todo[j], e)),
                        }
                    }
                    m.records_out.add(a.finished.len() as u64);
                }
                Ok(outcomes) => {
                    return Err(BatchError::Crash(format!(
                        "sink returned {} outcomes for {} records",
                        outcomes.len(),
                        subset.len()
                    )))
                }
                Err(e) if e.is_retriable() => {
                    a.retry_error = e.to_string();
                    a.retry = todo;
                }
                Err(e) => return Err(BatchError::Crash(e.to_string())),
            },
            Instance::Transform(t, output) => {
                let outcomes = match t.transform(&subset).await {
                    Ok(o) if o.len() == subset.len() => o,
                    Ok(o) => {
                        return Err(BatchError::Crash(format!(
                            "transform returned {} outcomes for {} records",
                            o.len(),
                            subset.len()
                        )))
                    }
                    Err(e) if e.is_retriable() => {
                        a.retry_error = e.to_string();
                        todo.iter()
                            .map(|_| TransformOutcome::Retriable(e.clone()))
                            .collect()
                    }
                    Err(e) => return Err(BatchError::Crash(e.to_string())),
                };
                let mut emitted: Vec<(usize, Vec<Output>)> = Vec::new();
                for (j, o) in outcomes.into_iter().enumerate() {
                    match o {
                        TransformOutcome::Emit(outs) if outs.is_empty() => {
                            m.records_dropped.inc();
                            a.finished.push(todo[j]);
                        }
                        TransformOutcome::Emit(outs) => emitted.push((todo[j], outs)),
                        TransformOutcome::Retriable(e) => {
                            a.retry_error = e.to_string();
                            a.retry.push(todo[j]);
                        }
                        TransformOutcome::Permanent(e) => a.dead.push((todo[j], e)),
                    }
                }
                let items: Vec<Outgoing<'_>> = emitted
                    .iter()
                    .flat_map(|(_, outs)| {
                        outs.iter().map(|o| {
                            (
                                o.topic.as_deref().unwrap_or(output.as_str()),
                                o.partition,
                                &o.record,
                            )
                        })
                    })
                    .collect();
                a.queued = (
                    items.len(),
                    items.iter().map(|(_, _, r)| r.byte_size()).sum(),
                );
                a.acks = Some(self.producer.enqueue_all(&items, QUEUE_TIMEOUT).await);
                a.emits = emitted.iter().map(|(i, outs)| (*i, outs.len())).collect();
            }
        }
        Ok(a)
    }

    /// Finishes an attempt: waits for its acknowledgements, reports final records, dead-letters
    /// permanent failures and retries the rest (with backoff) until every record is final.
    pub async fn settle(
        &self,
        instance: &mut Instance,
        batch: &[Record],
        mut a: Attempt,
        done: &mut (dyn FnMut(&[usize]) + Send),
    ) -> Result<(), BatchError> {
        let m = &self.handle.metrics;
        loop {
            if let Some(acks) = a.acks.take() {
                let mut results = acks.wait().await.into_iter();
                for (i, n) in std::mem::take(&mut a.emits) {
                    let mut failure = None;
                    for r in results.by_ref().take(n) {
                        if let Err(e) = r {
                            failure.get_or_insert(e);
                        }
                    }
                    match failure {
                        None => {
                            m.records_out.add(n as u64);
                            a.finished.push(i);
                        }
                        Some(e) if is_retriable(&e) => {
                            a.retry_error = format!("produce: {e}");
                            a.retry.push(i);
                        }
                        Some(e) => a.dead.push((
                            i,
                            ConnectorError::permanent("produce_rejected", e.to_string()),
                        )),
                    }
                }
            }
            if !a.finished.is_empty() {
                a.finished.sort_unstable();
                done(&a.finished);
            }
            if !a.dead.is_empty() || self.breaker.is_some() {
                self.dead_letter(batch, &a.dead, a.finished.len() as u64, a.number)
                    .await?;
                let idx: Vec<usize> = a.dead.iter().map(|(i, _)| *i).collect();
                if !idx.is_empty() {
                    done(&idx);
                }
            }
            if a.retry.is_empty() {
                self.recovered();
                m.batch_seconds.observe(a.started.elapsed().as_secs_f64());
                return Ok(());
            }
            self.before_retry(a.number, &a.retry_error).await?;
            let mut todo = std::mem::take(&mut a.retry);
            todo.sort_unstable();
            a = self
                .attempt(instance, batch, todo, a.number + 1, a.started)
                .await?;
        }
    }
}

/// An attempt at a batch whose outcome is not settled yet (see [`WorkerEnv::start`]).
pub struct Attempt {
    number: u32,
    started: Instant,
    retry: Vec<usize>,
    retry_error: String,
    dead: Vec<(usize, ConnectorError)>,
    finished: Vec<usize>,
    /// Emitting records (index, number of outputs), in the order of `acks`.
    emits: Vec<(usize, usize)>,
    /// Outputs put into the producer's queue by the first attempt: (records, bytes).
    queued: (usize, usize),
    acks: Option<Acks>,
}

impl Attempt {
    /// Outputs this attempt put into the producer's queue, as (records, bytes of keys +
    /// values + headers): the producer holds a copy of each until it is acknowledged.
    pub fn queued(&self) -> (usize, usize) {
        self.queued
    }

    /// Whether produce acknowledgements are outstanding (worth starting the next batch first).
    pub fn awaits_acks(&self) -> bool {
        self.acks.is_some()
    }

    /// Resolves when every acknowledgement is in (cancel-safe).
    pub async fn acked(&mut self) {
        if let Some(a) = &mut self.acks {
            a.ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_trips_only_on_a_full_window_over_the_ratio() {
        let mut b = Breaker::new(DlqBreakerSettings {
            max_ratio: 0.5,
            window: 10,
        });
        assert_eq!(
            b.observe(0, 3),
            None,
            "3 of 3, but the window is not full yet"
        );
        assert_eq!(b.observe(7, 0), None, "3 of 10");
        assert_eq!(b.observe(10, 0), None, "the failures slid out: 0 of 10");
        assert_eq!(b.observe(0, 5), None, "5 of 10 is not over 0.5");
        assert!(b.observe(0, 1).is_some(), "6 of 10 trips");
        assert_eq!(b.observe(10, 0), None, "the window slid past the failures");
    }
}
