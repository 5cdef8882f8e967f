//! connectd's SQL migrations, embedded at build time from the `.sql` files beside this crate's
//! `Cargo.toml`, plus the optional TimescaleDB step. Applied by `connectd migrate`, by
//! connectors with `auto_migrate: true`, and by the tests. Applying them twice is harmless
//! (sqlx records what ran in `_sqlx_migrations`; the TimescaleDB step checks before acting).
#![warn(missing_docs)]

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What the TimescaleDB step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timescale {
    /// The extension is not available on this server: plain PostgreSQL schema.
    NotAvailable,
    /// Available but could not be enabled (e.g. not in `shared_preload_libraries`).
    Failed(String),
    /// `growth_events` is a hypertable (1-day chunks, compression after 7 days, segmented by
    /// `user_id`) and `daily_active_users` a continuous aggregate refreshed hourly.
    Enabled,
}

/// Applies every pending migration, then the TimescaleDB step.
pub async fn run(pool: &sqlx::PgPool) -> Result<Timescale, sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await?;
    Ok(timescale(pool).await)
}

/// Statements of the TimescaleDB step, each run on its own (a continuous aggregate cannot be
/// created inside a transaction or a multi-statement string).
const TIMESCALE: &[&str] = &[
    "CREATE EXTENSION IF NOT EXISTS timescaledb",
    "SELECT create_hypertable('growth_events', 'event_ts', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE)",
    "ALTER TABLE growth_events SET (timescaledb.compress, timescaledb.compress_segmentby = 'user_id', timescaledb.compress_orderby = 'event_ts DESC')",
    "SELECT add_compression_policy('growth_events', INTERVAL '7 days', if_not_exists => TRUE)",
    "DROP VIEW IF EXISTS daily_active_users",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS daily_active_users WITH (timescaledb.continuous) AS \
     SELECT time_bucket(INTERVAL '1 day', event_ts) AS day, count(DISTINCT user_id) AS active_users \
     FROM growth_events GROUP BY 1 WITH NO DATA",
    "SELECT add_continuous_aggregate_policy('daily_active_users', start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE)",
];

async fn timescale(pool: &sqlx::PgPool) -> Timescale {
    let available: Result<Option<i32>, sqlx::Error> =
        sqlx::query_scalar("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
            .fetch_optional(pool)
            .await;
    if !matches!(available, Ok(Some(_))) {
        return Timescale::NotAvailable;
    }
    let is_cagg: Result<Option<i32>, sqlx::Error> =
        sqlx::query_scalar("SELECT 1 FROM pg_matviews WHERE matviewname = 'daily_active_users'")
            .fetch_optional(pool)
            .await;
    for (i, stmt) in TIMESCALE.iter().enumerate() {
        // The plain view is dropped only when the continuous aggregate is not there yet.
        if i == 4 && matches!(is_cagg, Ok(Some(_))) {
            continue;
        }
        if let Err(e) = sqlx::query(stmt).execute(pool).await {
            return Timescale::Failed(format!("{stmt}: {e}"));
        }
    }
    Timescale::Enabled
}
