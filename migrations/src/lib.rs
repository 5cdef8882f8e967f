//! connectd's SQL migrations, embedded at build time from the `.sql` files beside this crate's
//! `Cargo.toml`. Applied by `connectd migrate`, by connectors with `auto_migrate: true`, and by
//! the tests. Every migration is idempotent in effect: applying the set twice is harmless
//! (sqlx records what ran in `_sqlx_migrations`).
#![warn(missing_docs)]

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration.
pub async fn run(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
