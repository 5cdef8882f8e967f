//! The `parquet_sink` instance: per-partition buffers, rolls, flushes and commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use bytes::Bytes;
use connector_core::async_trait;
use connector_core::metrics::{Counter, Gauge, Histogram};
use connector_core::{ConnectorError, Record, RecordOutcome, Sink, SinkContext, TopicPartition};
use object_store::{ObjectStoreExt, PutPayload};
use parquet::file::properties::WriterProperties;
use tokio::sync::Mutex;

use super::encode::{parse_cell, properties, schema, to_parquet, Cell, Columns};
use super::layout::{escape_value, file_name, PartitionBy, NULL_PARTITION};
use super::log::{Commit, Committed, FileEntry, Intent, Log, LogError};
use super::ParquetSinkConfig;
use crate::postgres::mapping::{Mapping, SqlType};

type Tp = (Arc<str>, i32);

/// Counters and gauges of one connector.
#[derive(Clone)]
pub(super) struct Metrics {
    records: Counter,
    files: Counter,
    bytes: Counter,
    commits: Counter,
    conflicts: Counter,
    orphans: Counter,
    flush_errors: Counter,
    buffered: Gauge,
    flush_seconds: Histogram,
}

impl Metrics {
    fn new(m: &connector_core::metrics::Metrics) -> Self {
        Self {
            records: m.counter(
                "connectd_parquet_sink_records",
                "Records written into committed Parquet files",
            ),
            files: m.counter("connectd_parquet_sink_files", "Parquet files committed"),
            bytes: m.counter(
                "connectd_parquet_sink_bytes",
                "Bytes of committed Parquet files",
            ),
            commits: m.counter("connectd_parquet_sink_commits", "Commits added to the log"),
            conflicts: m.counter(
                "connectd_parquet_sink_conflicts",
                "Flushes that found another writer's commit at their offset",
            ),
            orphans: m.counter(
                "connectd_parquet_sink_orphans_deleted",
                "Files of flushes that never committed, deleted",
            ),
            flush_errors: m.counter(
                "connectd_parquet_sink_flush_errors",
                "Flush attempts that failed (retried)",
            ),
            buffered: m.gauge(
                "connectd_parquet_sink_buffered_records",
                "Records buffered, not yet in a committed file",
            ),
            flush_seconds: m.histogram(
                "connectd_parquet_sink_flush_seconds",
                "Time to encode, upload and commit one flush",
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
        }
    }
}

/// What every instance of the connector shares (read-only).
pub(super) struct Shared {
    pub log: Log,
    pub name: String,
    pub writer: String,
    mapping: Mapping,
    types: Vec<(String, SqlType)>,
    schema: arrow_schema::SchemaRef,
    /// (folder key, column index, level)
    levels: Vec<(String, usize, PartitionBy)>,
    props: WriterProperties,
    max_records: usize,
    max_bytes: u64,
    max_age: StdDuration,
    pub metrics: Metrics,
    pub url: String,
}

impl Shared {
    pub fn new(c: &ParquetSinkConfig, log: Log, ctx: &SinkContext) -> Result<Self, ConnectorError> {
        let columns = c.columns();
        let types: Vec<(String, SqlType)> = columns
            .iter()
            .map(|(n, s)| (n.clone(), s.sql_type))
            .collect();
        let schema = schema(
            &columns
                .iter()
                .map(|(n, s)| (n.clone(), s.sql_type, s.required))
                .collect::<Vec<_>>(),
        );
        let levels = c
            .partition_by
            .iter()
            .map(|l| {
                let i = types
                    .iter()
                    .position(|(n, _)| n == l.column())
                    .ok_or_else(|| {
                        ConnectorError::permanent(
                            "config",
                            format!("partition_by: no column {}", l.column()),
                        )
                    })?;
                let key = match l {
                    PartitionBy::Column(c) => c.clone(),
                    PartitionBy::Date(_) => "date".into(),
                    PartitionBy::Hour(_) => "hour".into(),
                };
                Ok((key, i, l.clone()))
            })
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        let props = properties(c.zstd_level)
            .map_err(|e| ConnectorError::permanent("config", format!("zstd_level: {e}")))?;
        Ok(Self {
            log,
            name: ctx.name.clone(),
            writer: format!("{}/{}", ctx.name, uuid::Uuid::new_v4()),
            mapping: Mapping::new(&columns),
            types,
            schema,
            levels,
            props,
            max_records: c.roll.max_records,
            max_bytes: c.roll.max_bytes,
            max_age: c.roll.max_age.as_std(),
            metrics: Metrics::new(&ctx.metrics),
            url: connector_core::config::redact_url(&c.url),
        })
    }

    /// The typed cells and folder of one record.
    fn row(&self, r: &Record) -> Result<(Vec<Cell>, String), ConnectorError> {
        let texts = self.mapping.row(r)?;
        let cells = texts
            .into_iter()
            .zip(&self.types)
            .map(|(v, (n, t))| parse_cell(n, *t, v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut folder = String::new();
        for (key, i, level) in &self.levels {
            let value = match level {
                PartitionBy::Column(_) => match &cells[*i] {
                    // Text (the usual business key) is escaped without a copy first.
                    Cell::Str(t) => escape_value(t),
                    other => other
                        .text()
                        .map(|t| escape_value(&t))
                        .unwrap_or_else(|| NULL_PARTITION.into()),
                },
                PartitionBy::Date(_) => cells[*i]
                    .day_and_hour()
                    .map(|(d, _)| d)
                    .unwrap_or_else(|| NULL_PARTITION.into()),
                PartitionBy::Hour(_) => cells[*i]
                    .day_and_hour()
                    .map(|(_, h)| format!("{h:02}"))
                    .unwrap_or_else(|| NULL_PARTITION.into()),
            };
            if !folder.is_empty() {
                folder.push('/');
            }
            folder.push_str(key);
            folder.push('=');
            folder.push_str(&value);
        }
        Ok((cells, folder))
    }
}

/// An encoded flush waiting to be committed (kept across failed attempts, so a retry
/// writes the very same objects).
struct Pending {
    from: i64,
    next: i64,
    first: i64,
    last: i64,
    files: Vec<(String, Bytes, u64)>,
}

/// The records of one Kafka partition not yet in a committed file.
struct Buffer {
    /// The log's next offset where the live records start (the `from` of their commit).
    from: i64,
    /// The next offset this buffer takes; `None` before the first record of an empty log.
    expect: Option<i64>,
    dirs: BTreeMap<String, Columns>,
    records: usize,
    bytes: u64,
    first: i64,
    last: i64,
    started: Option<Instant>,
    pending: Option<Pending>,
}

impl Buffer {
    fn at(from: i64, empty_log: bool) -> Self {
        Self {
            from,
            expect: (!empty_log).then_some(from),
            dirs: BTreeMap::new(),
            records: 0,
            bytes: 0,
            first: -1,
            last: -1,
            started: None,
            pending: None,
        }
    }

    fn buffered(&self) -> usize {
        self.records
            + self
                .pending
                .as_ref()
                .map_or(0, |p| p.files.iter().map(|f| f.2 as usize).sum())
    }
}

#[derive(Default)]
struct State {
    buffers: HashMap<Tp, Buffer>,
    /// Set when a flush lost to another writer: the next `write` fails so the runtime
    /// restarts the connector and it resumes from the log.
    reset: Option<String>,
    last_error: Option<String>,
}

fn store_err(e: LogError) -> ConnectorError {
    match e {
        LogError::Store(e) => ConnectorError::retriable("object_store", e.to_string()),
        e @ LogError::Corrupt { .. } => ConnectorError::permanent("corrupt_log", e.to_string()),
    }
}

/// One instance (slot) of a `parquet_sink`.
pub struct ParquetSink {
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl ParquetSink {
    pub(super) fn new(shared: Arc<Shared>, ctx: &SinkContext) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        // Rolls by age happen even while no batch arrives: a ticker flushes old buffers. It
        // is safe beside `write` (one lock) and beside other processes (the log's
        // put-if-absent decides).
        let ticker = (ctx.instance < ctx.instances).then(|| {
            let (shared, state, mut shutdown) =
                (shared.clone(), state.clone(), ctx.shutdown.clone());
            let every = (shared.max_age / 4)
                .clamp(StdDuration::from_millis(100), StdDuration::from_secs(1));
            connector_core::task::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.wait() => return,
                    }
                    let mut st = state.lock().await;
                    flush_due(&shared, &mut st, false).await;
                }
            })
        });
        Self {
            shared,
            state,
            ticker,
        }
    }
}

/// Flushes every buffer that is due (or all, with `all`). Failures are logged, counted and
/// kept for the next attempt; returns whether every attempted flush succeeded.
async fn flush_due(s: &Shared, st: &mut State, all: bool) -> bool {
    let due: Vec<Tp> = st
        .buffers
        .iter()
        .filter(|(_, b)| {
            b.pending.is_some()
                || (b.records > 0
                    && (all
                        || b.records >= s.max_records
                        || b.bytes >= s.max_bytes
                        || b.started.is_some_and(|t| t.elapsed() >= s.max_age)))
        })
        .map(|(tp, _)| tp.clone())
        .collect();
    let mut ok = true;
    for tp in due {
        let Some(buf) = st.buffers.get_mut(&tp) else {
            continue;
        };
        let before = buf.buffered();
        match flush(s, &tp, buf).await {
            Ok(Flushed::Committed) => {
                s.metrics
                    .buffered
                    .add(buf.buffered() as i64 - before as i64);
                st.last_error = None;
            }
            Ok(Flushed::Lost(why)) => {
                s.metrics.buffered.add(-(before as i64));
                st.buffers.remove(&tp);
                st.reset = Some(why);
            }
            Err(e) => {
                ok = false;
                s.metrics.flush_errors.inc();
                tracing::warn!(connector = %s.name, topic = %tp.0, partition = tp.1, error = %e, "flush failed; retried");
                st.last_error = Some(e.to_string());
            }
        }
    }
    ok
}

enum Flushed {
    Committed,
    Lost(String),
}

/// Encodes the live records (unless a pending flush waits) and commits them.
async fn flush(s: &Shared, tp: &Tp, buf: &mut Buffer) -> Result<Flushed, LogError> {
    loop {
        if buf.pending.is_none() {
            if buf.records == 0 {
                return Ok(Flushed::Committed);
            }
            let mut files = Vec::with_capacity(buf.dirs.len());
            let (first, last) = (buf.first, buf.last);
            let props = s.props.clone();
            let dirs = std::mem::take(&mut buf.dirs);
            // Encoding is CPU work of about a microsecond per row: off the async threads.
            let encoded = connector_core::task::spawn_blocking(move || {
                dirs.into_iter()
                    .map(|(dir, mut cols)| {
                        let rows = cols.len() as u64;
                        let batch = cols.finish().map_err(|e| e.to_string())?;
                        let bytes = to_parquet(&batch, &props).map_err(|e| e.to_string())?;
                        Ok::<_, String>((dir, Bytes::from(bytes), rows))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let encoded = match encoded {
                Ok(e) => e,
                // The buffer's columns are gone: start again from the log, which re-reads them.
                Err(error) => {
                    return Ok(Flushed::Lost(format!(
                    "{}/{}: cannot encode Parquet: {error}; this instance restarts from the log",
                    tp.0, tp.1
                )))
                }
            };
            for (dir, bytes, rows) in encoded {
                let name = file_name(&tp.0, tp.1, first, last);
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                files.push((path, bytes, rows));
            }
            buf.pending = Some(Pending {
                from: buf.from,
                next: last + 1,
                first,
                last,
                files,
            });
            buf.from = last + 1;
            buf.records = 0;
            buf.bytes = 0;
            buf.started = None;
        }
        let Some(p) = &buf.pending else { continue };
        let started = Instant::now();
        let intent = Intent {
            from: p.from,
            files: p.files.iter().map(|f| f.0.clone()).collect(),
            writer: s.writer.clone(),
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let intent_key = s.log.intend(&tp.0, tp.1, &intent, &id).await?;
        let store = s.log.store();
        let mut entries = Vec::with_capacity(p.files.len());
        for (path, bytes, rows) in &p.files {
            store
                .put(&s.log.path(path)?, PutPayload::from(bytes.clone()))
                .await?;
            entries.push(FileEntry {
                path: path.clone(),
                records: *rows,
                bytes: bytes.len() as u64,
            });
        }
        let commit = Commit {
            topic: tp.0.to_string(),
            partition: tp.1,
            from: p.from,
            next: p.next,
            first_offset: p.first,
            last_offset: p.last,
            records: entries.iter().map(|e| e.records).sum(),
            files: entries,
            writer: s.writer.clone(),
        };
        match s.log.commit(&commit).await? {
            Committed::Yes => {
                s.log.delete(&intent_key).await?;
                s.metrics.commits.inc();
                s.metrics.files.add(commit.files.len() as u64);
                s.metrics.records.add(commit.records);
                s.metrics
                    .bytes
                    .add(commit.files.iter().map(|f| f.bytes).sum());
                s.metrics
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(connector = %s.name, topic = %tp.0, partition = tp.1, from = commit.from, next = commit.next, files = commit.files.len(), "committed");
                buf.pending = None;
                // Intents of flushes that can no longer commit (a crash, a lost race).
                let gone = s.log.collect_garbage(&tp.0, tp.1, commit.next).await?;
                s.metrics.orphans.add(gone);
                if buf.records == 0 {
                    return Ok(Flushed::Committed);
                }
            }
            Committed::Lost(other) => {
                // Another writer committed from this offset (a zombie of a rebalance, or
                // we are the zombie). Our files are not named by the log: remove them.
                let theirs: Vec<&str> = other.files.iter().map(|f| f.path.as_str()).collect();
                for f in &commit.files {
                    if !theirs.contains(&f.path.as_str()) {
                        s.log.delete(&s.log.path(&f.path)?).await?;
                    }
                }
                s.log.delete(&intent_key).await?;
                s.metrics.conflicts.inc();
                let why = format!(
                    "another writer ({}) committed {}/{} from offset {} to {}; this instance restarts from the log",
                    other.writer, tp.0, tp.1, other.from, other.next
                );
                tracing::warn!(connector = %s.name, "{why}");
                return Ok(Flushed::Lost(why));
            }
        }
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let s = &*self.shared;
        let mut st = self.state.lock().await;
        if let Some(why) = st.reset.take() {
            return Err(ConnectorError::permanent("log_conflict", why));
        }
        // Pending flushes first; when the store is down and a partition already holds a
        // full roll besides a pending one, refuse the batch (the runtime backs off and pauses)
        // instead of growing without bound.
        if !flush_due(s, &mut st, false).await {
            let full = st.buffers.values().any(|b| {
                b.pending.is_some() && (b.records >= s.max_records || b.bytes >= s.max_bytes)
            });
            if full {
                return Err(ConnectorError::retriable(
                    "object_store",
                    st.last_error
                        .clone()
                        .unwrap_or_else(|| "flush failed".into()),
                ));
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut added = 0i64;
        for r in batch {
            let Some(o) = &r.origin else {
                outcomes.push(RecordOutcome::Permanent(ConnectorError::permanent(
                    "no_origin",
                    "parquet_sink names files by offset: the record has no topic/partition/offset",
                )));
                continue;
            };
            let tp: Tp = (o.topic.clone(), o.partition);
            if !st.buffers.contains_key(&tp) {
                let last = s.log.last(&tp.0, tp.1).await.map_err(store_err)?;
                let b = match last {
                    Some(c) => Buffer::at(c.next, false),
                    None => Buffer::at(0, true),
                };
                st.buffers.insert(tp.clone(), b);
            }
            let Some(buf) = st.buffers.get_mut(&tp) else {
                continue;
            };
            match buf.expect {
                Some(n) if o.offset < n => {
                    // Already buffered or committed (a redelivery).
                    outcomes.push(RecordOutcome::Delivered);
                    continue;
                }
                Some(n) if o.offset > n => {
                    // The runtime resumed elsewhere: another writer moved the log on while
                    // this buffer waited (rebalance), or the stored offset was not applied.
                    let next = s
                        .log
                        .last(&tp.0, tp.1)
                        .await
                        .map_err(store_err)?
                        .map(|c| c.next);
                    if next == Some(o.offset) {
                        let dropped = buf.buffered() as i64;
                        *buf = Buffer::at(o.offset, false);
                        added -= dropped;
                    } else {
                        return Err(ConnectorError::permanent(
                            "offset_gap",
                            format!(
                                "{}/{}: expected offset {n}, got {} (log at {next:?}); restarting from the log",
                                tp.0, tp.1, o.offset
                            ),
                        ));
                    }
                }
                _ => {}
            }
            buf.expect = Some(o.offset + 1);
            match s.row(r) {
                Ok((cells, folder)) => {
                    buf.dirs
                        .entry(folder)
                        .or_insert_with(|| Columns::new(s.schema.clone()))
                        .push(&cells);
                    if buf.records == 0 {
                        buf.first = o.offset;
                        buf.started = Some(Instant::now());
                    }
                    buf.records += 1;
                    buf.bytes += r.byte_size() as u64;
                    buf.last = o.offset;
                    added += 1;
                    outcomes.push(RecordOutcome::Delivered);
                }
                Err(e) => {
                    // The record goes to the dead-letter topic; its offset still moves the
                    // partition on (the next commit's `next` covers it).
                    buf.last = buf.last.max(o.offset);
                    outcomes.push(RecordOutcome::Permanent(e));
                }
            }
        }
        s.metrics.buffered.add(added);
        flush_due(s, &mut st, false).await;
        Ok(outcomes)
    }

    async fn stored_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Option<HashMap<TopicPartition, i64>>, ConnectorError> {
        let s = &*self.shared;
        let mut out = HashMap::with_capacity(partitions.len());
        for p in partitions {
            let next = s
                .log
                .last(&p.topic, p.partition)
                .await
                .map_err(store_err)?
                .map_or(0, |c| c.next);
            let gone = s
                .log
                .collect_garbage(&p.topic, p.partition, next)
                .await
                .map_err(store_err)?;
            s.metrics.orphans.add(gone);
            out.insert(p.clone(), next);
        }
        Ok(Some(out))
    }

    fn status(&self) -> serde_json::Value {
        let m = &self.shared.metrics;
        serde_json::json!({
            "url": self.shared.url,
            "records_written": m.records.get(),
            "files_written": m.files.get(),
            "bytes_written": m.bytes.get(),
            "commits": m.commits.get(),
            "conflicts": m.conflicts.get(),
            "orphans_deleted": m.orphans.get(),
            "flush_errors": m.flush_errors.get(),
            "buffered_records": m.buffered.get(),
        })
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        let mut st = self.state.lock().await;
        if !flush_due(&self.shared, &mut st, true).await {
            tracing::warn!(connector = %self.shared.name, "records left unflushed at close are read again at the next start");
        }
        Ok(())
    }
}
