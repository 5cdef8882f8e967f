//! `connectd postgres partition`: converts an unpartitioned events table into one partitioned
//! by UTC day (issue 20), in one transaction, for `postgres_sink`'s `partitioning`.
//!
//! ```text
//! connectd postgres partition --table growth_events --column event_ts --premake 3
//! ```
//!
//! The table is locked for the copy (writers wait): run it in a maintenance window sized to the
//! table. Already partitioned: says so and changes nothing.

use clap::Subcommand;
use connectd_sinks::postgres::partitions::{convert, Partitioning};
use connectd_sinks::postgres::sql::valid_table;

use crate::cli::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// `connectd postgres` actions.
#[derive(Debug, Subcommand)]
pub enum PostgresAction {
    /// Convert a table into daily partitions (copying its rows) in one transaction.
    Partition {
        /// The table (optionally schema.table).
        #[arg(long, default_value = "growth_events")]
        table: String,
        /// The timestamptz column to partition by.
        #[arg(long, default_value = "event_ts")]
        column: String,
        /// Days of partitions to make ahead of today.
        #[arg(long, default_value_t = 3)]
        premake: u32,
    },
}

/// Runs an action; returns the exit code.
pub async fn run(database_url: &str, action: PostgresAction) -> u8 {
    let PostgresAction::Partition {
        table,
        column,
        premake,
    } = action;
    if !valid_table(&table) {
        eprintln!("error: {table:?} is not a valid table name");
        return EXIT_USAGE;
    }
    let p = Partitioning {
        column,
        premake,
        retention: None,
        on_expire: Default::default(),
        check_every: connector_core::config::Duration::from_secs(3600),
    };
    if let Some((field, msg)) = p.issues(&table).into_iter().next() {
        eprintln!("error: {field}: {msg}");
        return EXIT_USAGE;
    }
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot connect to PostgreSQL: {e}");
            return EXIT_RUNTIME;
        }
    };
    match convert(&pool, &table, &p).await {
        Ok(c) if !c.changed => {
            println!("{table} is already partitioned (or a TimescaleDB hypertable, with daily chunks of its own); nothing changed");
            EXIT_OK
        }
        Ok(c) => {
            println!(
                "{table}: {} rows copied into {} daily partitions (+ {}_default); views recreated: {}",
                c.rows,
                c.partitions,
                table.rsplit('.').next().unwrap_or(&table),
                if c.views.is_empty() { "none".to_string() } else { c.views.join(", ") }
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_RUNTIME
        }
    }
}
