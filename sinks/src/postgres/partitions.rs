//! The hot tier on plain PostgreSQL: a table partitioned by UTC day, partitions made ahead,
//! old ones dropped or detached (issue 20).
//!
//! ```yaml
//! - name: store
//!   type: postgres_sink
//!   table: growth_events
//!   partitioning: { column: event_ts, premake: 3, retention: 14d, on_expire: drop, check_every: 1h }
//! ```
//!
//! * **Layout**: `<table> PARTITION BY RANGE (<column>)`, one partition per UTC day named
//!   `<table>_pYYYYMMDD` (`FOR VALUES FROM ('YYYY-MM-DD 00:00+00') TO (next day)`), and a default
//!   partition `<table>_default` that catches every event outside the days made (a backfill, a
//!   clock far off). The primary key `(idempotency_key, event_ts)` contains the partition
//!   column, as PostgreSQL requires.
//! * **Maintenance** ([`maintain`]): at start-up and every `check_every`, in one transaction
//!   that first takes `pg_try_advisory_xact_lock` on the table's name — so of many processes
//!   exactly one works at a time and the others skip the round —
//!   1. makes the partitions from the oldest day retention keeps (or today) to today +
//!      `premake`; a day whose rows already sit in the default partition is made by moving
//!      them into a new table and attaching it (PostgreSQL refuses to create a partition
//!      over rows of the default partition);
//!   2. drops (`on_expire: drop`) or detaches (`detach`: the table stays, for an archive job)
//!      every `<table>_pYYYYMMDD` whose day ended more than `retention` ago;
//!   3. counts the rows of the default partition (metric
//!      `connectd_postgres_sink_default_partition_rows`). Rows there are never dropped by
//!      retention; a day made later takes its rows with it.
//!
//!   Statements wait at most 5 s for a lock (`lock_timeout`), so a busy table delays a round,
//!   never the inserts for long.
//! * **An existing unpartitioned table** is converted by [`convert`] (`connectd postgres
//!   partition`): in one transaction it locks the table, renames it, creates the partitioned
//!   table with the same columns, defaults, constraints and indexes, makes a partition for
//!   every day that has rows, copies the rows, checks the count, drops the old table and
//!   recreates the views that read it (`daily_active_users`). An empty unpartitioned table is
//!   converted by the sink at start-up; one with rows makes it fail with the command to run.
//! * **TimescaleDB**: a hypertable already has daily chunks; `retention` becomes
//!   `add_retention_policy` and the rest is TimescaleDB's.

use chrono::{Datelike, Duration as Days, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool, Row};

use super::sql::{quote, quote_table, valid_ident};
use connector_core::config::Duration;

/// What happens to a partition older than `retention`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnExpire {
    /// `DROP TABLE` (default).
    #[default]
    Drop,
    /// `ALTER TABLE … DETACH PARTITION`: the day stays as a table of its own.
    Detach,
}

/// Daily partitions and retention of a `postgres_sink` table.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Partitioning {
    /// The `timestamptz` column the table is partitioned by (one partition per UTC day).
    #[serde(default = "default_column")]
    pub column: String,
    /// Days of partitions made ahead of today (UTC).
    #[serde(default = "default_premake")]
    #[schemars(range(max = 366))]
    pub premake: u32,
    /// Partitions whose day ended longer ago than this are dropped or detached (whole days:
    /// `14d`). Absent: kept forever.
    #[serde(default)]
    pub retention: Option<Duration>,
    /// `drop` or `detach`.
    #[serde(default)]
    pub on_expire: OnExpire,
    /// How often maintenance runs (it also runs at start-up).
    #[serde(default = "default_check_every")]
    pub check_every: Duration,
}

fn default_column() -> String {
    "event_ts".into()
}
fn default_premake() -> u32 {
    3
}
fn default_check_every() -> Duration {
    Duration::from_secs(3600)
}

/// Errors of partition maintenance.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// PostgreSQL refused or failed a statement.
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    /// The table is not in a state this can work with.
    #[error("{0}")]
    Table(String),
}

impl Partitioning {
    /// Whole days of retention.
    pub fn retention_days(&self) -> Option<i64> {
        self.retention
            .map(|d| (d.as_std().as_secs() / 86_400) as i64)
    }

    /// Pure checks: the partition names must stay within PostgreSQL's 63 bytes, retention is
    /// whole days.
    pub fn issues(&self, table: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !valid_ident(&self.column) {
            out.push(("column".into(), "is not a valid column name".into()));
        }
        let name = table.rsplit('.').next().unwrap_or(table);
        if name.len() + "_p20261124".len() > 63 {
            out.push((
                "table".into(),
                "too long for daily partitions (<table>_pYYYYMMDD must fit in 63 bytes)".into(),
            ));
        }
        if let Some(r) = self.retention {
            let s = r.as_std().as_secs();
            if s == 0 || s % 86_400 != 0 {
                out.push(("retention".into(), "must be whole days (e.g. 14d)".into()));
            }
        }
        if self.check_every.as_std().is_zero() {
            out.push(("check_every".into(), "must be more than 0".into()));
        }
        out
    }
}

/// `schema.` prefix (or nothing) and bare name of a table.
fn split(table: &str) -> (Option<&str>, &str) {
    match table.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, table),
    }
}

/// The partition of `day`: `<table>_pYYYYMMDD`, in the table's schema.
pub fn partition_name(table: &str, day: NaiveDate) -> String {
    let (schema, name) = split(table);
    let p = format!(
        "{name}_p{:04}{:02}{:02}",
        day.year(),
        day.month(),
        day.day()
    );
    match schema {
        Some(s) => format!("{s}.{p}"),
        None => p,
    }
}

/// The default partition's name.
pub fn default_name(table: &str) -> String {
    let (schema, name) = split(table);
    match schema {
        Some(s) => format!("{s}.{name}_default"),
        None => format!("{name}_default"),
    }
}

/// The day a partition name stands for, when it is one of `table`'s daily partitions.
pub fn day_of(table: &str, partition: &str) -> Option<NaiveDate> {
    let (_, name) = split(table);
    let rest = partition.strip_prefix(name)?.strip_prefix("_p")?;
    if rest.len() != 8 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(rest, "%Y%m%d").ok()
}

fn bound(day: NaiveDate) -> String {
    format!("{} 00:00:00+00", day.format("%Y-%m-%d"))
}

/// How the table is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No such table.
    Missing,
    /// A plain table.
    Plain,
    /// Declaratively partitioned.
    Partitioned,
    /// A TimescaleDB hypertable.
    Hypertable,
}

/// What the table is.
pub async fn kind(conn: &mut PgConnection, table: &str) -> Result<Kind, PartitionError> {
    let row = sqlx::query(
        "SELECT c.relkind::text AS kind, \
                EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS ts \
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(table)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Kind::Missing);
    };
    let relkind: String = row.get("kind");
    if relkind == "p" {
        return Ok(Kind::Partitioned);
    }
    if row.get::<bool, _>("ts") {
        let (schema, name) = split(table);
        let hyper: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM timescaledb_information.hypertables \
             WHERE hypertable_name = $1 AND hypertable_schema = coalesce($2, current_schema())",
        )
        .bind(name)
        .bind(schema)
        .fetch_optional(&mut *conn)
        .await?;
        if hyper.is_some() {
            return Ok(Kind::Hypertable);
        }
    }
    Ok(Kind::Plain)
}

/// Daily partitions of `table` that exist, with their days.
async fn partitions(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<(String, NaiveDate)>, PartitionError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let (schema, _) = split(table);
    Ok(rows
        .into_iter()
        .filter_map(|(name,)| {
            let full = match schema {
                Some(s) => format!("{s}.{name}"),
                None => name.clone(),
            };
            day_of(table, &name).map(|d| (full, d))
        })
        .collect())
}

/// Makes the partition of `day` (moving its rows out of the default partition first).
async fn make_day(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    day: NaiveDate,
) -> Result<(), PartitionError> {
    let part = partition_name(table, day);
    let (lo, hi) = (bound(day), bound(day + Days::days(1)));
    let def = default_name(table);
    let col = quote(column);
    let in_default: Option<i32> = sqlx::query_scalar(&format!(
        "SELECT 1 FROM {} WHERE {col} >= $1::timestamptz AND {col} < $2::timestamptz LIMIT 1",
        quote_table(&def)
    ))
    .bind(&lo)
    .bind(&hi)
    .fetch_optional(&mut *conn)
    .await?;
    if in_default.is_none() {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ('{lo}') TO ('{hi}')",
            quote_table(&part),
            quote_table(table)
        ))
        .execute(&mut *conn)
        .await?;
        return Ok(());
    }
    // Rows of this day sit in the default partition: PostgreSQL refuses to create the
    // partition over them, so they move into a new table that is then attached.
    sqlx::query(&format!(
        "CREATE TABLE {p} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
        p = quote_table(&part),
        t = quote_table(table)
    ))
    .execute(&mut *conn)
    .await?;
    let moved = sqlx::query(&format!(
        "WITH m AS (DELETE FROM {d} WHERE {col} >= $1::timestamptz AND {col} < $2::timestamptz RETURNING *) \
         INSERT INTO {p} SELECT * FROM m",
        d = quote_table(&def),
        p = quote_table(&part)
    ))
    .bind(&lo)
    .bind(&hi)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(&format!(
        "ALTER TABLE {t} ATTACH PARTITION {p} FOR VALUES FROM ('{lo}') TO ('{hi}')",
        t = quote_table(table),
        p = quote_table(&part)
    ))
    .execute(&mut *conn)
    .await?;
    tracing::info!(table, partition = %part, moved, "made a partition over rows of the default partition");
    Ok(())
}

/// What one maintenance round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// False when another process held the lock (nothing done).
    pub ran: bool,
    /// Partitions made.
    pub made: Vec<String>,
    /// Partitions dropped or detached.
    pub expired: Vec<String>,
    /// Rows in the default partition afterwards.
    pub default_rows: i64,
}

/// One maintenance round at `today` (see the module docs).
pub async fn maintain(
    pool: &PgPool,
    table: &str,
    p: &Partitioning,
    today: NaiveDate,
) -> Result<Round, PartitionError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtext('connectd:partitions:' || $1))",
    )
    .bind(table)
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Ok(Round::default());
    }
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    let mut round = Round {
        ran: true,
        ..Round::default()
    };
    match kind(&mut tx, table).await? {
        Kind::Partitioned => {}
        Kind::Hypertable => {
            if let Some(days) = p.retention_days() {
                sqlx::query(&format!(
                    "SELECT add_retention_policy($1::regclass, INTERVAL '{days} days', if_not_exists => TRUE)"
                ))
                .bind(table)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            return Ok(round);
        }
        other => {
            return Err(PartitionError::Table(format!(
                "{table} is not partitioned ({other:?})"
            )))
        }
    }
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT",
        quote_table(&default_name(table)),
        quote_table(table)
    ))
    .execute(&mut *tx)
    .await?;
    let existing = partitions(&mut tx, table).await?;
    let keep_from = p
        .retention_days()
        .map(|d| today - Days::days(d))
        .unwrap_or(today);
    let mut day = keep_from.min(today);
    while day <= today + Days::days(i64::from(p.premake)) {
        if !existing.iter().any(|(_, d)| *d == day) {
            make_day(&mut tx, table, &p.column, day).await?;
            round.made.push(partition_name(table, day));
        }
        day += Days::days(1);
    }
    if p.retention_days().is_some() {
        for (name, d) in existing.iter().filter(|(_, d)| *d < keep_from) {
            let stmt = match p.on_expire {
                OnExpire::Drop => format!("DROP TABLE {}", quote_table(name)),
                OnExpire::Detach => format!(
                    "ALTER TABLE {} DETACH PARTITION {}",
                    quote_table(table),
                    quote_table(name)
                ),
            };
            sqlx::query(&stmt).execute(&mut *tx).await?;
            tracing::info!(table, partition = %name, day = %d, action = ?p.on_expire, "partition expired");
            round.expired.push(name.clone());
        }
    }
    round.default_rows = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}",
        quote_table(&default_name(table))
    ))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(round)
}

/// Today in UTC.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// What [`convert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Rows copied into the partitioned table.
    pub rows: i64,
    /// Daily partitions made.
    pub partitions: usize,
    /// Views recreated.
    pub views: Vec<String>,
    /// False when the table was already partitioned or is a TimescaleDB hypertable (which
    /// has daily chunks of its own): nothing done.
    pub changed: bool,
}

/// Converts an unpartitioned `table` into one partitioned by day on `column`, in one
/// transaction (see the module docs). Already partitioned: nothing happens.
pub async fn convert(
    pool: &PgPool,
    table: &str,
    p: &Partitioning,
) -> Result<Converted, PartitionError> {
    let mut tx = pool.begin().await?;
    match kind(&mut tx, table).await? {
        Kind::Partitioned => {
            return Ok(Converted {
                rows: 0,
                partitions: 0,
                views: vec![],
                changed: false,
            })
        }
        Kind::Hypertable => {
            return Ok(Converted {
                rows: 0,
                partitions: 0,
                views: vec![],
                changed: false,
            })
        }
        Kind::Missing => return Err(PartitionError::Table(format!("no table {table}"))),
        Kind::Plain => {}
    }
    let t = quote_table(table);
    let (schema, name) = split(table);
    let old_name = format!("{name}_unpartitioned");
    let old = match schema {
        Some(s) => format!("{s}.{old_name}"),
        None => old_name.clone(),
    };
    sqlx::query(&format!("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *tx)
        .await?;
    // Views that read the table follow it by OID through a rename: keep their text, drop
    // them, and make them again over the new table.
    let views: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT v.oid::regclass::text, pg_get_viewdef(v.oid) \
         FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
         WHERE d.refobjid = to_regclass($1) AND v.relkind = 'v' AND v.oid <> to_regclass($1)",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    for (v, _) in &views {
        sqlx::query(&format!("DROP VIEW {v}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!("ALTER TABLE {t} RENAME TO {}", quote(&old_name)))
        .execute(&mut *tx)
        .await?;
    // The old table's index and constraint names stay with it; the new ones get their own.
    sqlx::query(&format!(
        "CREATE TABLE {t} (LIKE {o} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING STATISTICS INCLUDING COMMENTS) PARTITION BY RANGE ({c})",
        o = quote_table(&old),
        c = quote(&p.column)
    ))
    .execute(&mut *tx)
    .await
    .map_err(|e| PartitionError::Table(format!(
        "cannot partition {table} by {}: {e} (every primary key and unique index must include {})",
        p.column, p.column
    )))?;
    sqlx::query(&format!(
        "CREATE TABLE {} PARTITION OF {t} DEFAULT",
        quote_table(&default_name(table))
    ))
    .execute(&mut *tx)
    .await?;
    let days: Vec<(NaiveDate,)> = sqlx::query_as(&format!(
        "SELECT DISTINCT ({c} AT TIME ZONE 'UTC')::date FROM {o} ORDER BY 1",
        c = quote(&p.column),
        o = quote_table(&old)
    ))
    .fetch_all(&mut *tx)
    .await?;
    let mut made = 0;
    let mut all: Vec<NaiveDate> = days.into_iter().map(|(d,)| d).collect();
    let now = today();
    for i in 0..=i64::from(p.premake) {
        all.push(now + Days::days(i));
    }
    all.sort();
    all.dedup();
    for day in all {
        sqlx::query(&format!(
            "CREATE TABLE {} PARTITION OF {t} FOR VALUES FROM ('{}') TO ('{}')",
            quote_table(&partition_name(table, day)),
            bound(day),
            bound(day + Days::days(1))
        ))
        .execute(&mut *tx)
        .await?;
        made += 1;
    }
    let before: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", quote_table(&old)))
        .fetch_one(&mut *tx)
        .await?;
    let copied = sqlx::query(&format!(
        "INSERT INTO {t} SELECT * FROM {}",
        quote_table(&old)
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    if copied != before {
        return Err(PartitionError::Table(format!(
            "copied {copied} of {before} rows; nothing changed"
        )));
    }
    sqlx::query(&format!("DROP TABLE {}", quote_table(&old)))
        .execute(&mut *tx)
        .await?;
    let mut recreated = Vec::new();
    for (v, def) in &views {
        sqlx::query(&format!("CREATE VIEW {v} AS {def}"))
            .execute(&mut *tx)
            .await?;
        recreated.push(v.clone());
    }
    tx.commit().await?;
    Ok(Converted {
        rows: copied,
        partitions: made,
        views: recreated,
        changed: true,
    })
}

/// True when `table` is a plain table without rows (the sink converts those itself).
pub async fn is_empty_plain(pool: &PgPool, table: &str) -> Result<bool, PartitionError> {
    let mut conn = pool.acquire().await?;
    if kind(&mut conn, table).await? != Kind::Plain {
        return Ok(false);
    }
    let any: Option<i32> =
        sqlx::query_scalar(&format!("SELECT 1 FROM {} LIMIT 1", quote_table(table)))
            .fetch_optional(&mut *conn)
            .await?;
    Ok(any.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn partition_names_round_trip_and_ignore_other_tables() {
        assert_eq!(
            partition_name("growth_events", day("2026-11-24")),
            "growth_events_p20261124"
        );
        assert_eq!(partition_name("s.t", day("2026-01-02")), "s.t_p20260102");
        assert_eq!(default_name("s.t"), "s.t_default");
        assert_eq!(
            day_of("growth_events", "growth_events_p20261124"),
            Some(day("2026-11-24"))
        );
        assert_eq!(day_of("s.t", "t_p20260102"), Some(day("2026-01-02")));
        assert_eq!(day_of("growth_events", "growth_events_default"), None);
        assert_eq!(day_of("growth_events", "growth_events_p2026112"), None);
        assert_eq!(day_of("growth", "growth_events_p20261124"), None);
        assert_eq!(bound(day("2026-11-24")), "2026-11-24 00:00:00+00");
    }

    #[test]
    fn settings_are_checked() {
        let p: Partitioning =
            serde_json::from_value(serde_json::json!({"retention": "36h"})).expect("parses");
        assert_eq!(p.premake, 3);
        assert_eq!(p.column, "event_ts");
        let issues = p.issues(&"x".repeat(60));
        assert_eq!(issues.len(), 2, "{issues:?}");
        let p: Partitioning =
            serde_json::from_value(serde_json::json!({"retention": "14d"})).expect("parses");
        assert_eq!(p.retention_days(), Some(14));
        assert!(p.issues("growth_events").is_empty());
    }
}
