//! The write path: set-based inserts, error classification, bisection, exactly-once offsets.

use std::collections::HashMap;
use std::time::Instant;

use connector_core::metrics::{Counter, Histogram};
use connector_core::prelude::*;
use sqlx::postgres::PgConnection;
use sqlx::PgPool;

use super::mapping::{ColumnSpec, Mapping};
use super::offsets;
use super::sql::Conflict;

/// How a database error is to be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbErrorClass {
    /// The data of some row is at fault (SQLSTATE classes 22, 23, 54): bisect.
    Data(String, String),
    /// Temporary (connection, serialization, deadlock, resources, shutdown): retry.
    Transient(String),
    /// Anything else (missing table, permissions…): the connector stops and restarts.
    Fatal(String),
}

/// Classifies a sqlx error by SQLSTATE.
pub fn classify(e: &sqlx::Error) -> DbErrorClass {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let msg = db.message().to_string();
            let class = code.get(..2).unwrap_or("");
            match class {
                "22" | "23" | "54" => DbErrorClass::Data(code, msg),
                "08" | "53" | "57" | "58" => DbErrorClass::Transient(format!("{code}: {msg}")),
                _ if ["40001", "40P01", "55P03", "55006"].contains(&code.as_str()) => {
                    DbErrorClass::Transient(format!("{code}: {msg}"))
                }
                _ => DbErrorClass::Fatal(format!("{code}: {msg}")),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => DbErrorClass::Transient(e.to_string()),
        other => DbErrorClass::Fatal(other.to_string()),
    }
}

/// A batch-level error from a database error: fatal ones stop the connector (it restarts with
/// backoff), everything else is retried.
pub fn batch_error(e: sqlx::Error) -> ConnectorError {
    match classify(&e) {
        DbErrorClass::Fatal(m) => ConnectorError::permanent("db_error", m),
        DbErrorClass::Transient(m) | DbErrorClass::Data(_, m) => {
            ConnectorError::retriable("db_unavailable", m)
        }
    }
}

/// Counters of the sink.
pub struct SinkMetrics {
    /// Rows inserted (or updated).
    pub inserted: Counter,
    /// Rows skipped because their key was already stored.
    pub duplicates: Counter,
    /// Batch write latency.
    pub latency: Histogram,
    /// Bisection splits.
    pub splits: Counter,
    /// Records skipped in exactly-once mode because their offset was already stored.
    pub already_stored: Counter,
}

/// The `postgres_sink`.
pub struct PostgresSink {
    pub(super) pool: PgPool,
    pub(super) columns: Vec<(String, ColumnSpec)>,
    pub(super) mapping: Mapping,
    pub(super) keys: Vec<String>,
    pub(super) conflict: Conflict,
    pub(super) sql: String,
    pub(super) exactly_once: bool,
    pub(super) group_id: String,
    pub(super) metrics: SinkMetrics,
    pub(super) table: String,
    /// The partition maintenance task (instance 0 of a partitioned table).
    pub(super) maintenance: Option<tokio::task::JoinHandle<()>>,
}

type Row = Vec<Option<String>>;

impl PostgresSink {
    async fn insert(
        &self,
        conn: &mut PgConnection,
        rows: &[(usize, Row)],
    ) -> Result<u64, sqlx::Error> {
        use sqlx::Arguments as _;
        // The encoded arrays' size, reserved up front: a batch's arguments run to megabytes,
        // and growing them by doubling copied them several times (and faulted in fresh pages
        // each time). Per text element: a 4-byte length and the bytes; per array a header.
        let columns = self.columns.len();
        let text: usize = rows
            .iter()
            .flat_map(|(_, r)| r.iter())
            .map(|v| v.as_ref().map_or(0, String::len))
            .sum();
        let mut args = sqlx::postgres::PgArguments::default();
        args.reserve(columns, text + 4 * rows.len() * columns + 64 * columns);
        for c in 0..columns {
            let col: Vec<Option<&str>> = rows.iter().map(|(_, r)| r[c].as_deref()).collect();
            args.add(col).map_err(sqlx::Error::Encode)?;
        }
        Ok(sqlx::query_with(&self.sql, args)
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }

    async fn insert_savepoint(
        &self,
        conn: &mut PgConnection,
        rows: &[(usize, Row)],
        savepoint: bool,
    ) -> Result<u64, sqlx::Error> {
        if !savepoint {
            return self.insert(conn, rows).await;
        }
        sqlx::query("SAVEPOINT connectd_chunk")
            .execute(&mut *conn)
            .await?;
        match self.insert(conn, rows).await {
            Ok(n) => {
                sqlx::query("RELEASE SAVEPOINT connectd_chunk")
                    .execute(&mut *conn)
                    .await?;
                Ok(n)
            }
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT connectd_chunk")
                    .execute(&mut *conn)
                    .await?;
                Err(e)
            }
        }
    }

    /// Writes `rows`; a data error splits the rows in halves until the bad rows stand alone.
    /// Returns rows affected; bad rows get a permanent outcome.
    async fn write_bisecting(
        &self,
        conn: &mut PgConnection,
        rows: Vec<(usize, Row)>,
        savepoints: bool,
        outcomes: &mut [RecordOutcome],
    ) -> Result<u64, ConnectorError> {
        let mut affected = 0u64;
        let mut stack: Vec<Vec<(usize, Row)>> = vec![rows];
        while let Some(chunk) = stack.pop() {
            if chunk.is_empty() {
                continue;
            }
            match self.insert_savepoint(conn, &chunk, savepoints).await {
                Ok(n) => affected += n,
                Err(e) => match classify(&e) {
                    DbErrorClass::Data(code, msg) if chunk.len() == 1 => {
                        outcomes[chunk[0].0] = RecordOutcome::Permanent(ConnectorError::permanent(
                            format!("sqlstate_{code}"),
                            format!("{msg} (table {})", self.table),
                        ));
                    }
                    DbErrorClass::Data(..) => {
                        self.metrics.splits.inc();
                        let mut left = chunk;
                        let right = left.split_off(left.len() / 2);
                        stack.push(right);
                        stack.push(left);
                    }
                    DbErrorClass::Transient(m) => {
                        return Err(ConnectorError::retriable("db_unavailable", m))
                    }
                    DbErrorClass::Fatal(m) => return Err(ConnectorError::permanent("db_error", m)),
                },
            }
        }
        Ok(affected)
    }

    fn transient(e: sqlx::Error) -> ConnectorError {
        batch_error(e)
    }

    async fn write_plain(
        &self,
        rows: Vec<(usize, Row)>,
        outcomes: &mut [RecordOutcome],
    ) -> Result<u64, ConnectorError> {
        let mut conn = self.pool.acquire().await.map_err(Self::transient)?;
        // Fast path: one statement for the whole batch.
        match self.insert(&mut conn, &rows).await {
            Ok(n) => Ok(n),
            Err(e) => match classify(&e) {
                DbErrorClass::Data(..) => {
                    self.metrics.splits.inc();
                    let mut left = rows;
                    let right = left.split_off(left.len() / 2);
                    let a = self
                        .write_bisecting(&mut conn, left, false, outcomes)
                        .await?;
                    let b = self
                        .write_bisecting(&mut conn, right, false, outcomes)
                        .await?;
                    Ok(a + b)
                }
                DbErrorClass::Transient(m) => Err(ConnectorError::retriable("db_unavailable", m)),
                DbErrorClass::Fatal(m) => Err(ConnectorError::permanent("db_error", m)),
            },
        }
    }

    /// Exactly-once: rows and offsets in one transaction; records at offsets already stored are
    /// skipped (they were written by an earlier transaction).
    async fn write_exactly_once(
        &self,
        batch: &[Record],
        rows: Vec<(usize, Row)>,
        outcomes: &mut [RecordOutcome],
    ) -> Result<u64, ConnectorError> {
        let mut tx = self.pool.begin().await.map_err(Self::transient)?;
        let claim = offsets::claim(&mut tx, &self.group_id, batch)
            .await
            .map_err(Self::transient)?;
        let before = rows.len();
        let rows: Vec<(usize, Row)> = rows
            .into_iter()
            .filter(|(i, _)| claim.is_new(&batch[*i]))
            .collect();
        self.metrics
            .already_stored
            .add((before - rows.len()) as u64);
        let affected = self.write_bisecting(&mut tx, rows, true, outcomes).await?;
        claim
            .store(&mut tx, &self.group_id)
            .await
            .map_err(Self::transient)?;
        tx.commit().await.map_err(Self::transient)?;
        Ok(affected)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let started = Instant::now();
        let mut outcomes = vec![RecordOutcome::Delivered; batch.len()];
        let mut rows: Vec<(usize, Row)> = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            match self.mapping.row(r) {
                Ok(v) => rows.push((i, v)),
                Err(e) => outcomes[i] = RecordOutcome::Permanent(e),
            }
        }
        if self.conflict == Conflict::Update {
            // One statement cannot update a row twice: keep the last record of each key.
            let key_idx: Vec<usize> = self
                .keys
                .iter()
                .filter_map(|k| self.columns.iter().position(|(n, _)| n == k))
                .collect();
            let mut last: HashMap<Vec<Option<String>>, usize> = HashMap::new();
            for (pos, (_, r)) in rows.iter().enumerate() {
                last.insert(key_idx.iter().map(|k| r[*k].clone()).collect(), pos);
            }
            let keep: std::collections::HashSet<usize> = last.into_values().collect();
            rows = rows
                .into_iter()
                .enumerate()
                .filter(|(pos, _)| keep.contains(pos))
                .map(|(_, r)| r)
                .collect();
        }
        let attempted = rows.len() as u64;
        let affected = if self.exactly_once {
            self.write_exactly_once(batch, rows, &mut outcomes).await?
        } else {
            self.write_plain(rows, &mut outcomes).await?
        };
        let bad = outcomes.iter().filter(|o| !o.is_delivered()).count() as u64;
        self.metrics.inserted.add(affected);
        if self.conflict == Conflict::Ignore {
            self.metrics
                .duplicates
                .add(attempted.saturating_sub(affected).saturating_sub(bad));
        }
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    async fn stored_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Option<HashMap<TopicPartition, i64>>, ConnectorError> {
        if !self.exactly_once {
            return Ok(None);
        }
        offsets::read(&self.pool, &self.group_id, partitions)
            .await
            .map(Some)
            .map_err(Self::transient)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "table": self.table,
            "rows_inserted": self.metrics.inserted.get(),
            "rows_skipped_duplicate": self.metrics.duplicates.get(),
            "bisection_splits": self.metrics.splits.get(),
            "exactly_once": self.exactly_once,
        })
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        if let Some(t) = self.maintenance.take() {
            t.abort();
        }
        self.pool.close().await;
        Ok(())
    }
}
