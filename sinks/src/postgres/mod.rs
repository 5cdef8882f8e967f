//! `postgres_sink`: idempotent, set-based, poison-isolating writes into PostgreSQL or
//! TimescaleDB, with an exactly-once option (SPEC §8).
//!
//! * **Set-based**: a batch is one `INSERT … SELECT … FROM unnest($1::text[], …)` statement,
//!   values bound as text arrays and cast to each column's type in SQL — never one statement
//!   per row.
//! * **Idempotent**: `mode: insert_ignore` (default) adds `ON CONFLICT (<conflict>) DO NOTHING`,
//!   `mode: upsert` `DO UPDATE SET` every non-key column (a batch keeps the last record of each
//!   key). Redelivered records are skipped (counted as duplicates).
//! * **Poison isolation**: a batch that fails for a data reason (SQLSTATE class 22, 23 or 54:
//!   bad UUID, value too long, constraint, invalid JSON…) is split in halves until the bad rows
//!   stand alone; they go to the dead-letter topic with their SQLSTATE and message, every other
//!   row is written.
//! * **Transient errors** (08, 40001, 40P01, 53, 57, connection loss, pool timeout) are retried by
//!   the runtime with backoff; consumption of the partitions pauses meanwhile.
//! * **Exactly-once** (`exactly_once: true`): the batch's rows and the next offsets of its
//!   partitions are written in one transaction to `connectd_offsets`; on assignment the runtime
//!   seeks to the stored offsets, and records below them are skipped. Works for tables without a
//!   unique key (`conflict: []`). Caveat: a poison record's offset is stored with its batch; if
//!   the process dies before the dead-letter produce is acknowledged, that dead letter is not
//!   re-sent (the record itself could never be stored).
//!
//! Identifiers (table, columns, conflict keys) are validated (`[A-Za-z_][A-Za-z0-9_]*`) and
//! quoted; values are always bound parameters.

pub mod mapping;
pub mod offsets;
pub mod partitions;
pub mod sink;
pub mod sql;

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use connector_core::metrics::LATENCY_BUCKETS;
use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use self::mapping::{columns_or_envelope, valid_source, ColumnSpec, Mapping, META};
use self::sink::{PostgresSink, SinkMetrics};
use self::sql::{insert_unnest, valid_ident, valid_table, Conflict};

/// Conflict handling.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `ON CONFLICT DO NOTHING`: the first copy of a key wins (default).
    #[default]
    InsertIgnore,
    /// `ON CONFLICT DO UPDATE`: the last copy of a key wins.
    Upsert,
}

/// Settings of a `postgres_sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// PostgreSQL URL.
    pub database_url: Secret,
    /// Table, optionally schema-qualified.
    #[serde(default = "default_table")]
    pub table: String,
    /// Column → source and type. Default: the event envelope of `http_source`.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, ColumnSpec>>,
    /// Key columns of the conflict target (a unique index must exist). Empty: plain INSERT
    /// (only with `exactly_once: true`).
    #[serde(default = "default_conflict")]
    pub conflict: Vec<String>,
    /// `insert_ignore` or `upsert`.
    #[serde(default)]
    pub mode: Mode,
    /// Connections in the pool (each batch slot uses one at a time).
    #[serde(default = "default_pool")]
    #[schemars(range(min = 1, max = 100))]
    pub pool_size: u32,
    /// Apply the migrations (events table, dead_letters, offsets) at start-up.
    #[serde(default = "default_true")]
    pub auto_migrate: bool,
    /// Store offsets with the rows in one transaction.
    #[serde(default)]
    pub exactly_once: bool,
    /// Longest a statement may run before it is cancelled (and retried).
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: Duration,
    /// Daily partitions with retention on plain PostgreSQL (a TimescaleDB hypertable gets
    /// `retention` as a policy). See `sinks/src/postgres/partitions.rs`.
    #[serde(default)]
    pub partitioning: Option<partitions::Partitioning>,
}

fn default_table() -> String {
    "growth_events".into()
}
fn default_conflict() -> Vec<String> {
    vec!["idempotency_key".into(), "event_ts".into()]
}
fn default_pool() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(60)
}

impl PostgresSinkConfig {
    fn columns(&self) -> Vec<(String, ColumnSpec)> {
        columns_or_envelope(&self.columns)
    }
}

/// Gets the table ready for daily partitions and starts the maintenance task (instance 0 of a
/// connector; the advisory lock keeps processes from working at once).
async fn start_partitions(
    pool: &sqlx::PgPool,
    table: &str,
    p: &partitions::Partitioning,
    ctx: &SinkContext,
) -> Result<tokio::task::JoinHandle<()>, ConnectorError> {
    use partitions::{maintain, today, Kind, PartitionError};
    let db = |e: PartitionError| ConnectorError::retriable("partitions", e.to_string());
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| ConnectorError::retriable("db_unavailable", e.to_string()))?;
    let kind = partitions::kind(&mut conn, table).await.map_err(db)?;
    drop(conn);
    match kind {
        Kind::Partitioned | Kind::Hypertable => {}
        Kind::Missing => {
            return Err(ConnectorError::permanent(
                "partitions",
                format!("no table {table}: create it (connectd migrate makes growth_events) before partitioning it"),
            ))
        }
        Kind::Plain => {
            if partitions::is_empty_plain(pool, table).await.map_err(db)? {
                let c = partitions::convert(pool, table, p).await.map_err(db)?;
                tracing::info!(connector = %ctx.name, table, partitions = c.partitions, views = ?c.views, "converted the empty table to daily partitions");
            } else {
                return Err(ConnectorError::permanent(
                    "partitions",
                    format!("{table} has rows and is not partitioned: convert it with `connectd postgres partition --table {table} --column {}` (one transaction; README, Operating notes)", p.column),
                ));
            }
        }
    }
    let metrics = PartitionMetrics::new(&ctx.metrics);
    let round = maintain(pool, table, p, today()).await.map_err(db)?;
    metrics.record(&round);
    let (pool, table, p, name, mut shutdown) = (
        pool.clone(),
        table.to_string(),
        p.clone(),
        ctx.name.clone(),
        ctx.shutdown.clone(),
    );
    Ok(connector_core::task::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(p.check_every.as_std()) => {}
                _ = shutdown.wait() => return,
            }
            match maintain(&pool, &table, &p, today()).await {
                Ok(round) => metrics.record(&round),
                Err(e) => {
                    tracing::warn!(connector = %name, table = %table, error = %e, "partition maintenance failed; next round in check_every")
                }
            }
        }
    }))
}

/// Metrics of partition maintenance.
struct PartitionMetrics {
    made: connector_core::metrics::Counter,
    expired: connector_core::metrics::Counter,
    default_rows: connector_core::metrics::Gauge,
}

impl PartitionMetrics {
    fn new(m: &connector_core::metrics::Metrics) -> Self {
        Self {
            made: m.counter(
                "connectd_postgres_sink_partitions_made",
                "Daily partitions made",
            ),
            expired: m.counter(
                "connectd_postgres_sink_partitions_expired",
                "Daily partitions dropped or detached by retention",
            ),
            default_rows: m.gauge(
                "connectd_postgres_sink_default_partition_rows",
                "Rows in the default partition (events outside the days made)",
            ),
        }
    }

    fn record(&self, r: &partitions::Round) {
        if r.ran {
            self.made.add(r.made.len() as u64);
            self.expired.add(r.expired.len() as u64);
            self.default_rows.set(r.default_rows);
        }
    }
}

/// A pool for a Postgres sink: `statement_timeout` set on every connection; with `utc`, the
/// session time zone is UTC (times the server renders, e.g. in JSON, are then UTC).
pub async fn connect(
    url: &Secret,
    pool_size: u32,
    statement_timeout: &Duration,
    utc: bool,
) -> Result<sqlx::PgPool, ConnectorError> {
    let options: sqlx::postgres::PgConnectOptions = url
        .expose()
        .parse()
        .map_err(|e: sqlx::Error| ConnectorError::permanent("bad_database_url", e.to_string()))?;
    let timeout = statement_timeout.as_std().as_millis().to_string();
    let options = options.options([("statement_timeout", timeout)]);
    let options = if utc {
        options.options([("timezone", "UTC")])
    } else {
        options
    };
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(StdDuration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| ConnectorError::retriable("db_unavailable", e.to_string()))
}

/// Factory of [`PostgresSink`].
pub struct PostgresSinkPlugin;

#[async_trait]
impl SinkPlugin for PostgresSinkPlugin {
    const TYPE: &'static str = "postgres_sink";
    const DESCRIPTION: &'static str = "Idempotent set-based writes into PostgreSQL/TimescaleDB with poison isolation and exactly-once option";
    type Config = PostgresSinkConfig;

    fn validate(c: &PostgresSinkConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if !valid_table(&c.table) {
            issues.push(ConfigIssue::new("table", format!("{:?} is not a valid table name ([A-Za-z_][A-Za-z0-9_]*, optionally schema.table)", c.table)));
        }
        let cols = c.columns();
        if cols.is_empty() {
            issues.push(ConfigIssue::new("columns", "needs at least one column"));
        }
        for (name, spec) in &cols {
            if !valid_ident(name) {
                issues.push(ConfigIssue::new(
                    format!("columns.{name}"),
                    "is not a valid column name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            if !valid_source(&spec.from) {
                issues.push(ConfigIssue::new(
                    format!("columns.{name}.from"),
                    format!(
                        "must be a JSON pointer (/field) or one of {}",
                        META.join(", ")
                    ),
                ));
            }
        }
        for (i, k) in c.conflict.iter().enumerate() {
            if !cols.iter().any(|(n, _)| n == k) {
                issues.push(ConfigIssue::new(
                    format!("conflict.{i}"),
                    format!("{k:?} is not one of the columns"),
                ));
            }
        }
        if c.conflict.is_empty() && !c.exactly_once {
            issues.push(ConfigIssue::new("conflict", "without conflict keys a redelivered record would be stored twice; name the key columns or set exactly_once: true"));
        }
        if c.mode == Mode::Upsert && c.conflict.is_empty() {
            issues.push(ConfigIssue::new("mode", "upsert needs conflict keys"));
        }
        if let Some(p) = &c.partitioning {
            for (field, msg) in p.issues(&c.table) {
                issues.push(ConfigIssue::new(format!("partitioning.{field}"), msg));
            }
            match cols.iter().find(|(n, _)| *n == p.column) {
                Some((_, spec)) if spec.sql_type == mapping::SqlType::Timestamptz => {}
                Some(_) => issues.push(ConfigIssue::new(
                    "partitioning.column",
                    format!("{} must be a timestamptz column", p.column),
                )),
                None => issues.push(ConfigIssue::new(
                    "partitioning.column",
                    format!("{:?} is not one of the columns", p.column),
                )),
            }
            if !c.conflict.is_empty() && !c.conflict.contains(&p.column) {
                issues.push(ConfigIssue::new(
                    "conflict",
                    format!(
                        "a partitioned table's key must include its partition column {}",
                        p.column
                    ),
                ));
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: PostgresSinkConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let pool = connect(
            &config.database_url,
            config.pool_size,
            &config.statement_timeout,
            false,
        )
        .await?;
        if config.auto_migrate {
            connectd_migrations::run(&pool)
                .await
                .map_err(|e| ConnectorError::retriable("migrate", e.to_string()))?;
        }
        let columns = config.columns();
        let conflict = match (config.conflict.is_empty(), config.mode) {
            (true, _) => Conflict::None,
            (false, Mode::InsertIgnore) => Conflict::Ignore,
            (false, Mode::Upsert) => Conflict::Update,
        };
        let sql = insert_unnest(&config.table, &columns, &config.conflict, conflict);
        let maintenance = match (&config.partitioning, ctx.instance) {
            (Some(p), 0) => Some(start_partitions(&pool, &config.table, p, &ctx).await?),
            _ => None,
        };
        let m = &ctx.metrics;
        Ok(Box::new(PostgresSink {
            pool,
            sql,
            keys: config.conflict.clone(),
            conflict,
            mapping: Mapping::new(&columns),
            columns,
            exactly_once: config.exactly_once,
            group_id: ctx.group_id.clone(),
            table: config.table.clone(),
            maintenance,
            metrics: SinkMetrics {
                inserted: m.counter(
                    "connectd_pg_rows_inserted_total",
                    "Rows inserted or updated",
                ),
                duplicates: m.counter(
                    "connectd_pg_rows_duplicate_total",
                    "Rows skipped because their key was already stored",
                ),
                latency: m.histogram(
                    "connectd_pg_write_seconds",
                    "Batch write latency",
                    LATENCY_BUCKETS,
                ),
                splits: m.counter(
                    "connectd_pg_bisection_splits_total",
                    "Batch splits to isolate bad rows",
                ),
                already_stored: m.counter(
                    "connectd_pg_already_stored_total",
                    "Records skipped in exactly-once mode (offset already stored)",
                ),
            },
        }))
    }
}
