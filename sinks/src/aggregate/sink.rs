//! The write path of `aggregate`: one transaction per batch (watermark lock, offsets, members,
//! merge, watermark, close, offsets), and a ticker that advances the watermark while no records
//! arrive (idle partitions).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use connector_core::metrics::LATENCY_BUCKETS;
use connector_core::prelude::*;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Row};

use super::partial::{open_windows, Acc, Extractor, Func, Partials};
use super::sql::{statements, Statements};
use super::watermark::{PartitionTime, Watermark};
use super::window::Windows;
use super::{AggregateConfig, LatePolicy};
use crate::postgres::offsets;
use crate::postgres::sink::batch_error;

/// Counters and gauges of one connector (shared by its instances and its ticker).
pub struct AggMetrics {
    records: Counter,
    merged: Counter,
    late: Counter,
    closed: Counter,
    already_stored: Counter,
    open: Gauge,
    watermark_lag: Gauge,
    latency: Histogram,
    published: Counter,
}

/// What the batch path and the ticker share.
struct Shared {
    pool: PgPool,
    sql: Statements,
    extractor: Extractor,
    agg_names: Vec<String>,
    windows: Windows,
    lateness: i64,
    idle_secs: f64,
    late: LatePolicy,
    group_id: String,
    table: String,
    metrics: AggMetrics,
}

/// The `aggregate` sink.
pub struct AggregateSink {
    shared: Arc<Shared>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Closed rows published per round trip.
const PUBLISH_CHUNK: i64 = 5_000;

fn rfc3339(us: i64) -> String {
    DateTime::from_timestamp_micros(us).map_or_else(|| format!("{us} µs"), |t| t.to_rfc3339())
}

fn partition_of(r: &Record) -> (String, i32) {
    r.origin
        .as_ref()
        .map_or((String::new(), -1), |o| (o.topic.to_string(), o.partition))
}

impl AggregateSink {
    /// Creates the tables (when `auto_create`) and starts the ticker on instance 0.
    pub(super) async fn open(
        config: AggregateConfig,
        pool: PgPool,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let extractor = config.extractor();
        let group: Vec<String> = config.group_by.keys().cloned().collect();
        let aggs: Vec<(String, Func)> = config
            .aggregates
            .iter()
            .map(|(n, a)| (n.clone(), a.func()))
            .collect();
        let sql = statements(&config.table, &group, &aggs, ctx.output.is_some());
        if config.auto_create {
            connectd_migrations::run(&pool)
                .await
                .map_err(|e| ConnectorError::retriable("migrate", e.to_string()))?;
            for stmt in &sql.create {
                sqlx::query(stmt)
                    .execute(&pool)
                    .await
                    .map_err(batch_error)?;
            }
        }
        let m = &ctx.metrics;
        let shared = Arc::new(Shared {
            pool,
            sql,
            extractor,
            agg_names: aggs.into_iter().map(|(n, _)| n).collect(),
            windows: config.windows(),
            lateness: super::micros(&config.allowed_lateness),
            idle_secs: config.idle_timeout.as_std().as_secs_f64(),
            late: config.late_events,
            group_id: ctx.group_id.clone(),
            table: config.table.clone(),
            metrics: AggMetrics {
                records: m.counter(
                    "connectd_agg_records_total",
                    "Events aggregated into windows",
                ),
                merged: m.counter(
                    "connectd_agg_rows_merged_total",
                    "Window rows inserted or updated",
                ),
                late: m.with_label("policy", config.late_events.as_str()).counter(
                    "connectd_agg_late_events_total",
                    "Events that arrived after their window closed, by late_events policy",
                ),
                closed: m.counter(
                    "connectd_agg_windows_closed_total",
                    "Window rows closed by the watermark",
                ),
                already_stored: m.counter(
                    "connectd_agg_already_stored_total",
                    "Records skipped because their offset was already stored",
                ),
                open: m.gauge("connectd_agg_open_windows", "Window rows not closed yet"),
                watermark_lag: m.gauge(
                    "connectd_agg_watermark_lag_seconds",
                    "Now minus the connector's watermark",
                ),
                published: m.counter(
                    "connectd_agg_windows_published_total",
                    "Closed window rows published to the output topic (again after a late correction)",
                ),
                latency: m.histogram(
                    "connectd_agg_write_seconds",
                    "Batch transaction latency",
                    LATENCY_BUCKETS,
                ),
            },
        });
        // One ticker per process (instance 0); the instance built only to read offsets
        // (instance == instances) has none.
        let ticker = (ctx.instance == 0).then(|| {
            let shared = shared.clone();
            let output = ctx.output.clone();
            let mut shutdown = ctx.shutdown.clone();
            let every = config.tick.as_std();
            connector_core::task::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = shared.tick().await {
                        tracing::warn!(table = %shared.table, error = %e, "aggregate: watermark tick failed");
                    }
                    if let Some(out) = &output {
                        if let Err(e) = shared.publish(out).await {
                            tracing::warn!(table = %shared.table, topic = %out.topic, error = %e, "aggregate: publishing closed windows failed");
                        }
                    }
                }
            })
        });
        Ok(Box::new(AggregateSink { shared, ticker }))
    }
}

impl Shared {
    /// Loads the watermark with the partitions' state; with `lock`, locks the connector's
    /// watermark row first (creating it), so no other transaction moves it until we commit.
    async fn load_watermark(
        &self,
        tx: &mut PgConnection,
        lock: bool,
    ) -> Result<Watermark, sqlx::Error> {
        let w: Option<DateTime<Utc>> = if lock {
            sqlx::query(
                "INSERT INTO connectd_agg_watermarks (group_id) VALUES ($1) ON CONFLICT DO NOTHING",
            )
            .bind(&self.group_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query_scalar(
                "SELECT watermark FROM connectd_agg_watermarks WHERE group_id = $1 FOR UPDATE",
            )
            .bind(&self.group_id)
            .fetch_one(&mut *tx)
            .await?
        } else {
            sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
                "SELECT watermark FROM connectd_agg_watermarks WHERE group_id = $1",
            )
            .bind(&self.group_id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten()
        };
        let rows: Vec<(String, i32, Option<DateTime<Utc>>, bool)> = sqlx::query_as(
            "SELECT topic, partition, max_event_ts, last_record_at < now() - make_interval(secs => $2) \
             FROM connectd_agg_partitions WHERE group_id = $1",
        )
        .bind(&self.group_id)
        .bind(self.idle_secs)
        .fetch_all(&mut *tx)
        .await?;
        let parts = rows
            .into_iter()
            .map(|(t, p, max, idle)| {
                let max = max.map(|m| m.timestamp_micros());
                ((t, p), PartitionTime { max, idle })
            })
            .collect();
        Ok(Watermark::new(
            parts,
            self.lateness,
            w.map(|t| t.timestamp_micros()),
        ))
    }

    /// Stores a watermark that moved forward (the row is locked by this transaction).
    async fn save_watermark(
        &self,
        tx: &mut PgConnection,
        wm: &Watermark,
    ) -> Result<(), sqlx::Error> {
        let Some(t) = wm
            .current()
            .filter(|_| wm.current() > wm.stored())
            .and_then(DateTime::from_timestamp_micros)
        else {
            return Ok(());
        };
        sqlx::query("UPDATE connectd_agg_watermarks SET watermark = $2, updated_at = now() WHERE group_id = $1")
            .bind(&self.group_id)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Marks the open rows the watermark passed closed (also rows a late event created under
    /// `late_events: update`) and, under `drop`/`dlq`, forgets their members. Its own
    /// statements, after the commit that moved the watermark, never while holding the
    /// watermark row: a batch may hold window rows while it waits for that row, and closing
    /// needs the window rows; and it skips rows a batch holds (`SKIP LOCKED`). Lateness is
    /// decided by the watermark, not by this flag, so a close that happens a moment later (on
    /// the next batch or tick, also after a crash) changes no figure.
    async fn close_windows(&self, w: Option<i64>) -> Result<(), sqlx::Error> {
        let Some(t) = w.and_then(DateTime::from_timestamp_micros) else {
            return Ok(());
        };
        let closed = sqlx::query(&self.sql.close)
            .bind(t)
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.metrics.closed.add(closed);
        if let (Some(forget), true) = (&self.sql.forget_members, self.late != LatePolicy::Update) {
            if let Some(before) = w
                .map(|w| w - self.windows.size())
                .and_then(DateTime::from_timestamp_micros)
            {
                sqlx::query(forget).bind(before).execute(&self.pool).await?;
            }
        }
        Ok(())
    }

    /// Advances the watermark while no batch does (idle partitions) and refreshes the gauges.
    async fn tick(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let wm = self.load_watermark(&mut tx, true).await?;
        self.save_watermark(&mut tx, &wm).await?;
        tx.commit().await?;
        self.close_windows(wm.current()).await?;
        let open: i64 = sqlx::query_scalar(&self.sql.open_rows)
            .fetch_one(&self.pool)
            .await?;
        self.metrics.open.set(open);
        self.set_lag(wm.current());
        Ok(())
    }

    /// Publishes closed rows not published yet to the `output` topic, then flags them.
    async fn publish(&self, out: &SinkOutput) -> Result<(), String> {
        let (Some(select), Some(mark)) = (&self.sql.unpublished, &self.sql.mark_published) else {
            return Ok(());
        };
        for _ in 0..20 {
            let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
            let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
                .bind(format!("connectd-aggregate-publish:{}", self.group_id))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            if !mine {
                return Ok(());
            }
            let rows: Vec<(String, String, String)> = sqlx::query_as(select)
                .bind(PUBLISH_CHUNK)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                return Ok(());
            }
            let n = rows.len();
            let mut ctids = Vec::with_capacity(n);
            let mut records = Vec::with_capacity(n);
            for (ctid, key, json) in rows {
                ctids.push(ctid);
                records.push(Output::new(Record::new(json).with_key(key)));
            }
            out.emitter.emit(records).await.map_err(|e| e.to_string())?;
            sqlx::query(mark)
                .bind(ctids)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            self.metrics.published.add(n as u64);
            if n < PUBLISH_CHUNK as usize {
                return Ok(());
            }
        }
        Ok(())
    }

    fn set_lag(&self, w: Option<i64>) {
        if let Some(w) = w {
            let now = Utc::now().timestamp_micros();
            self.metrics.watermark_lag.set((now - w) / 1_000_000);
        }
    }

    /// Inserts the batch's distinct members; fills each row's `Acc::Distinct` with the number
    /// that were new to the table.
    async fn insert_members(
        &self,
        tx: &mut PgConnection,
        partials: &mut Partials,
    ) -> Result<(), sqlx::Error> {
        let (Some(sql), false) = (&self.sql.members, partials.members.is_empty()) else {
            return Ok(());
        };
        let n_group = self.extractor.group_by.len();
        let mut starts = Vec::with_capacity(partials.members.len());
        let mut groups: Vec<Vec<&str>> = vec![Vec::with_capacity(partials.members.len()); n_group];
        let mut names = Vec::with_capacity(partials.members.len());
        let mut members = Vec::with_capacity(partials.members.len());
        // In key order, as every batch does: concurrent batches lock shared rows in the same
        // order and cannot deadlock.
        let mut sorted: Vec<&(i64, u32, usize, String)> = partials.members.iter().collect();
        sorted.sort_by(|a, b| {
            (a.0, &partials.groups[a.1 as usize], a.2, &a.3).cmp(&(
                b.0,
                &partials.groups[b.1 as usize],
                b.2,
                &b.3,
            ))
        });
        for (start, gid, agg, member) in sorted {
            starts.push(DateTime::from_timestamp_micros(*start).unwrap_or_default());
            let group = &partials.groups[*gid as usize];
            for (g, v) in groups.iter_mut().zip(group) {
                g.push(v.as_str());
            }
            names.push(self.agg_names[*agg].as_str());
            members.push(member.as_str());
        }
        let mut q = sqlx::query(sql).bind(starts);
        for g in groups {
            q = q.bind(g);
        }
        let rows = q.bind(names).bind(members).fetch_all(&mut *tx).await?;
        for row in rows {
            let start: DateTime<Utc> = row.try_get(0)?;
            let mut group = Vec::with_capacity(n_group);
            for i in 0..n_group {
                group.push(row.try_get::<String, _>(1 + i)?);
            }
            let agg: String = row.try_get(1 + n_group)?;
            let new: i64 = row.try_get(2 + n_group)?;
            let idx = self.agg_names.iter().position(|n| *n == agg);
            let key = partials
                .group_id(&group)
                .map(|g| (start.timestamp_micros(), g));
            if let (Some(accs), Some(idx)) = (key.and_then(|k| partials.rows.get_mut(&k)), idx) {
                accs[idx] = Acc::Distinct(new);
            }
        }
        Ok(())
    }

    /// Merges the partial rows (one statement).
    async fn merge(&self, tx: &mut PgConnection, partials: &Partials) -> Result<u64, sqlx::Error> {
        if partials.rows.is_empty() {
            return Ok(0);
        }
        let n = partials.rows.len();
        let n_group = self.extractor.group_by.len();
        let size = self.windows.size();
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        let mut groups: Vec<Vec<&str>> = vec![Vec::with_capacity(n); n_group];
        let mut ints: Vec<Vec<i64>> = vec![Vec::new(); self.agg_names.len()];
        let mut nums: Vec<Vec<Option<String>>> = vec![Vec::new(); self.agg_names.len()];
        let mut sorted: Vec<(&(i64, u32), &Vec<Acc>)> = partials.rows.iter().collect();
        sorted.sort_by(|a, b| {
            (a.0 .0, &partials.groups[a.0 .1 as usize])
                .cmp(&(b.0 .0, &partials.groups[b.0 .1 as usize]))
        });
        for ((start, gid), accs) in sorted {
            let group = &partials.groups[*gid as usize];
            starts.push(DateTime::from_timestamp_micros(*start).unwrap_or_default());
            ends.push(
                DateTime::from_timestamp_micros(start.saturating_add(size)).unwrap_or_default(),
            );
            for (g, v) in groups.iter_mut().zip(group) {
                g.push(v.as_str());
            }
            for (i, a) in accs.iter().enumerate() {
                match a {
                    Acc::Count(c) | Acc::Distinct(c) => ints[i].push(*c),
                    Acc::Num(v) => nums[i].push(v.map(|d| d.to_string())),
                }
            }
        }
        let mut q = sqlx::query(&self.sql.merge).bind(starts).bind(ends);
        for g in groups {
            q = q.bind(g);
        }
        for f in self.extractor.funcs.iter().enumerate() {
            q = match f {
                (i, Func::Count | Func::CountDistinct(_)) => q.bind(std::mem::take(&mut ints[i])),
                (i, _) => q.bind(std::mem::take(&mut nums[i])),
            };
        }
        Ok(q.execute(&mut *tx).await?.rows_affected())
    }

    /// Records the partitions' largest event times (and that they delivered just now).
    async fn touch_partitions(
        &self,
        tx: &mut PgConnection,
        max_ts: &HashMap<(String, i32), Option<i64>>,
    ) -> Result<(), sqlx::Error> {
        let mut keys: Vec<(&(String, i32), &Option<i64>)> = max_ts.iter().collect();
        keys.sort();
        let topics: Vec<&str> = keys.iter().map(|((t, _), _)| t.as_str()).collect();
        let parts: Vec<i32> = keys.iter().map(|((_, p), _)| *p).collect();
        let times: Vec<Option<DateTime<Utc>>> = keys
            .iter()
            .map(|(_, t)| t.and_then(DateTime::from_timestamp_micros))
            .collect();
        sqlx::query(
            "INSERT INTO connectd_agg_partitions AS p (group_id, topic, partition, max_event_ts, last_record_at) \
             SELECT $1, t, n, m, now() FROM unnest($2::text[], $3::int[], $4::timestamptz[]) AS u(t, n, m) \
             ON CONFLICT (group_id, topic, partition) DO UPDATE \
             SET max_event_ts = GREATEST(p.max_event_ts, excluded.max_event_ts), last_record_at = now()",
        )
        .bind(&self.group_id)
        .bind(topics)
        .bind(parts)
        .bind(times)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn write(&self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let mut outcomes = vec![RecordOutcome::Delivered; batch.len()];
        let mut events = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let parsed = r
                .value_json()
                .map_err(|e| ConnectorError::permanent("invalid_json", e.to_string()))
                .and_then(|v| self.extractor.event(&v));
            match parsed {
                Ok(e) => events.push((i, e)),
                Err(e) => outcomes[i] = RecordOutcome::Permanent(e),
            }
        }
        // Under `drop`/`dlq` an event's fate depends on the watermark, so the batches of the
        // connector take the watermark row first and commit one at a time. Under `update` a
        // late event is merged anyway: the batches merge in parallel (rows in key order, so
        // they never deadlock) and take the watermark row only at the end to move it.
        let serial = self.late != LatePolicy::Update;
        let mut tx = self.pool.begin().await.map_err(batch_error)?;
        let mut wm = if serial {
            Some(
                self.load_watermark(&mut tx, true)
                    .await
                    .map_err(batch_error)?,
            )
        } else {
            None
        };
        let claim = offsets::claim(&mut tx, &self.group_id, batch)
            .await
            .map_err(batch_error)?;
        let mut wm = match wm.take() {
            Some(w) => w,
            None => self
                .load_watermark(&mut tx, false)
                .await
                .map_err(batch_error)?,
        };
        let mut partials = Partials::default();
        let mut max_ts: HashMap<(String, i32), Option<i64>> = HashMap::new();
        let (mut counted, mut late) = (0u64, 0u64);
        let mut events = events.into_iter().peekable();
        for (i, r) in batch.iter().enumerate() {
            let event = match events.peek() {
                Some((j, _)) if *j == i => events.next().map(|(_, e)| e),
                _ => None,
            };
            if !claim.is_new(r) {
                continue;
            }
            let part = partition_of(r);
            let Some(e) = event else {
                // Poison: the partition delivered something, with no event time.
                wm.observe(&part, None);
                max_ts.entry(part).or_insert(None);
                continue;
            };
            // Late or not is decided against the watermark *before* this record.
            let watermark = wm.current();
            let ts = e.ts;
            let (open, closed) = open_windows(self.windows, ts, watermark);
            let into: Vec<i64> = if self.late == LatePolicy::Update {
                self.windows.starts(e.ts).collect()
            } else {
                open
            };
            if closed > 0 && (self.late == LatePolicy::Update || into.is_empty()) {
                late += 1;
            }
            if into.is_empty() {
                if self.late == LatePolicy::Dlq {
                    outcomes[i] = RecordOutcome::Permanent(ConnectorError::permanent(
                        "late",
                        format!(
                            "event time {} is behind the watermark {}: its window closed (table {})",
                            rfc3339(e.ts),
                            watermark.map(rfc3339).unwrap_or_default(),
                            self.table
                        ),
                    ));
                }
            } else if let Err(err) = partials.add(&self.extractor.funcs, &into, e) {
                outcomes[i] = RecordOutcome::Permanent(err);
                wm.observe(&part, None);
                max_ts.entry(part).or_insert(None);
                continue;
            } else {
                counted += 1;
            }
            wm.observe(&part, Some(ts));
            let m = max_ts.entry(part).or_insert(None);
            *m = Some(m.map_or(ts, |x| x.max(ts)));
        }
        self.insert_members(&mut tx, &mut partials)
            .await
            .map_err(batch_error)?;
        let merged = self.merge(&mut tx, &partials).await.map_err(batch_error)?;
        self.touch_partitions(&mut tx, &max_ts)
            .await
            .map_err(batch_error)?;
        if !serial {
            // Fresh: the other slots' partitions as committed, ours as just written.
            wm = self
                .load_watermark(&mut tx, true)
                .await
                .map_err(batch_error)?;
        }
        self.save_watermark(&mut tx, &wm)
            .await
            .map_err(batch_error)?;
        claim
            .store(&mut tx, &self.group_id)
            .await
            .map_err(batch_error)?;
        tx.commit().await.map_err(batch_error)?;
        let w = wm.current();
        if let Err(e) = self.close_windows(w).await {
            // The batch is stored; the next batch or tick closes these windows.
            tracing::warn!(table = %self.table, error = %e, "aggregate: closing windows failed");
        }
        let m = &self.metrics;
        m.records.add(counted);
        m.merged.add(merged);
        m.late.add(late);
        m.already_stored
            .add(batch.iter().filter(|r| !claim.is_new(r)).count() as u64);
        self.set_lag(w);
        Ok(outcomes)
    }
}

#[async_trait]
impl Sink for AggregateSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let started = Instant::now();
        let out = self.shared.write(batch).await;
        self.shared
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        out
    }

    async fn stored_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Option<HashMap<TopicPartition, i64>>, ConnectorError> {
        let s = &self.shared;
        // A partition just assigned holds the watermark until it delivers or goes idle.
        let topics: Vec<&str> = partitions.iter().map(|p| p.topic.as_str()).collect();
        let parts: Vec<i32> = partitions.iter().map(|p| p.partition).collect();
        sqlx::query(
            "INSERT INTO connectd_agg_partitions AS p (group_id, topic, partition) \
             SELECT $1, t, n FROM unnest($2::text[], $3::int[]) AS u(t, n) \
             ON CONFLICT (group_id, topic, partition) DO UPDATE SET last_record_at = GREATEST(p.last_record_at, now())",
        )
        .bind(&s.group_id)
        .bind(topics)
        .bind(parts)
        .execute(&s.pool)
        .await
        .map_err(batch_error)?;
        offsets::read(&s.pool, &s.group_id, partitions)
            .await
            .map(Some)
            .map_err(batch_error)
    }

    fn status(&self) -> serde_json::Value {
        let m = &self.shared.metrics;
        serde_json::json!({
            "table": self.shared.table,
            "late_events": self.shared.late.as_str(),
            "events_aggregated": m.records.get(),
            "rows_merged": m.merged.get(),
            "late_events_seen": m.late.get(),
            "windows_closed": m.closed.get(),
            "windows_published": m.published.get(),
            "open_windows": m.open.get(),
            "watermark_lag_seconds": m.watermark_lag.get(),
        })
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        Ok(())
    }
}
