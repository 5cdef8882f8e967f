//! The `connectd` command line (SPEC §11). Exit codes: 0 ok, 1 runtime failure, 2 bad usage or
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use connector_core::Registry;

use crate::config::{schema, Config};

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a failure at run time.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code for bad usage or a bad configuration.
pub const EXIT_USAGE: u8 = 2;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Kafka Connect-style pipelines from one YAML file.
#[derive(Debug, Parser)]
#[command(name = "connectd", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every enabled connector of the configuration until SIGINT/SIGTERM.
    Run {
        /// Configuration file.
        #[arg(
            short,
            long,
            default_value = "connectors.yaml",
            env = "CONNECTD_CONFIG"
        )]
        config: PathBuf,
    },
    /// Check a configuration file and report every problem (exit 0 when valid, 2 otherwise).
    Validate {
        /// Configuration file.
        #[arg(
            short,
            long,
            default_value = "connectors.yaml",
            env = "CONNECTD_CONFIG"
        )]
        config: PathBuf,
    },
    /// Print the JSON Schema of the configuration file, with every registered plugin.
    Schema,
    /// List the registered connector types.
    Plugins,
    /// Apply the SQL migrations (api_keys, events table, dead_letters, connectd_offsets).
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Inspect and replay dead letters stored by dlq_sink.
    Dlq {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", global = true)]
        database_url: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: crate::dlq::DlqAction,
    },
    /// PostgreSQL helpers for postgres_sink users (convert a table into daily partitions).
    Postgres {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", global = true)]
        database_url: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: crate::postgres_cmd::PostgresAction,
    },
    /// Redis helpers for redis_sink users (rebuild a leaderboard from a stream).
    Redis {
        /// What to do.
        #[command(subcommand)]
        action: crate::redis_cmd::RedisAction,
    },
    /// Produce JSON lines (stdin or --file) to a topic, with keys and headers; waits for every
    /// acknowledgement.
    Produce(crate::topic_io::ProduceArgs),
    /// Print a topic's records as JSON lines (key, headers, value, coordinates).
    Tail(crate::topic_io::TailArgs),
    /// Event contracts (JSON Schemas per event type and version).
    Contracts {
        /// What to do.
        #[command(subcommand)]
        action: ContractsAction,
    },
    /// Follow an http_source's live stream (WebSocket `/v1/stream`): one envelope per line.
    Stream(crate::stream_cmd::StreamArgs),
    /// Manage http_source API keys (stored as SHA-256 hashes in `api_keys`).
    Keys {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", global = true)]
        database_url: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
}

/// `connectd contracts` actions.
#[derive(Debug, Subcommand)]
pub enum ContractsAction {
    /// Check that a new version accepts every event the old one did (exit 0), or list every
    /// violation (exit 2): `OLD.json NEW.json`, or a folder of `<event_type>/v<N>.json`.
    Check {
        /// Two contract files (old, new), or one contracts folder.
        #[arg(required = true, num_args = 1..=2)]
        paths: Vec<PathBuf>,
    },
}

/// `connectd keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it once (only its hash is stored).
    Create {
        /// Unique name (the events' default `source`).
        name: String,
        /// Requests per second allowed for this key.
        #[arg(long)]
        rate_limit: Option<i32>,
    },
    /// Disable a key (refused with 403 once caches expire).
    Disable {
        /// Key name.
        name: String,
    },
    /// Enable a disabled key.
    Enable {
        /// Key name.
        name: String,
    },
}

fn block_on<F: std::future::Future<Output = u8>>(f: F) -> u8 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            EXIT_RUNTIME
        }
    }
}

async fn connect(url: &str) -> Result<sqlx::PgPool, u8> {
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
    {
        Ok(p) => Ok(p),
        Err(e) => {
            eprintln!(
                "error: cannot connect to {}: {e}",
                connector_core::config::redact_url(url)
            );
            Err(EXIT_RUNTIME)
        }
    }
}

async fn keys(url: &str, action: KeysAction) -> u8 {
    let pool = match connect(url).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Err(e) = connectd_migrations::run(&pool).await {
        eprintln!("error: migrations failed: {e}");
        return EXIT_RUNTIME;
    }
    use connectd_sources::http::create_key;
    match action {
        KeysAction::Create { name, rate_limit } => match create_key(&pool, &name, rate_limit).await
        {
            Ok(key) => {
                println!("{key}");
                eprintln!("created API key {name:?}; it is shown only this once");
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: cannot create key {name:?}: {e}");
                EXIT_RUNTIME
            }
        },
        KeysAction::Disable { name } => toggle(&pool, &name, true).await,
        KeysAction::Enable { name } => toggle(&pool, &name, false).await,
    }
}

async fn toggle(pool: &sqlx::PgPool, name: &str, disabled: bool) -> u8 {
    match connectd_sources::http::set_disabled(pool, name, disabled).await {
        Ok(true) => {
            eprintln!(
                "key {name:?} {}",
                if disabled { "disabled" } else { "enabled" }
            );
            EXIT_OK
        }
        Ok(false) => {
            eprintln!("error: no key named {name:?}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_RUNTIME
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CONNECTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Parses the process arguments and runs the command with `registry`. The entry point of the
/// stock binary and of custom builds.
pub fn main(registry: Registry) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    init_tracing(cli.log_format);
    ExitCode::from(run_command(cli.command, registry))
}

/// A registry with refused plugins is a broken build: say so on every command.
fn refused(registry: &Registry) -> Option<u8> {
    if registry.refused().is_empty() {
        return None;
    }
    for e in registry.refused() {
        eprintln!("error: {e}");
    }
    eprintln!(
        "this connectd build registers a plugin that cannot work; fix the plugin and rebuild"
    );
    Some(EXIT_USAGE)
}

/// Runs one command; returns the exit code.
pub fn run_command(command: Command, registry: Registry) -> u8 {
    if let Some(code) = refused(&registry) {
        return code;
    }
    match command {
        Command::Validate { config } => match Config::load(&config, &registry) {
            Ok(c) => {
                println!(
                    "{}: ok ({} connector{})",
                    config.display(),
                    c.connectors.len(),
                    if c.connectors.len() == 1 { "" } else { "s" }
                );
                EXIT_OK
            }
            Err(errors) => {
                eprint!("{}: {errors}", config.display());
                EXIT_USAGE
            }
        },
        Command::Schema => {
            let s = schema::file_schema(&registry);
            match serde_json::to_string_pretty(&s) {
                Ok(text) => {
                    println!("{text}");
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_RUNTIME
                }
            }
        }
        Command::Plugins => {
            let width = registry
                .plugins()
                .map(|p| p.type_name().len())
                .max()
                .unwrap_or(4);
            for p in registry.plugins() {
                println!(
                    "{:<width$}  {:<9}  {}",
                    p.type_name(),
                    p.kind().as_str(),
                    p.description()
                );
            }
            EXIT_OK
        }
        Command::Migrate { database_url } => {
            block_on(async move {
                let pool = match connect(&database_url).await {
                    Ok(p) => p,
                    Err(code) => return code,
                };
                match connectd_migrations::run(&pool).await {
                    Ok(ts) => {
                        println!("migrations applied; TimescaleDB: {}", match ts {
                        connectd_migrations::Timescale::NotAvailable => "not available (plain PostgreSQL schema)".to_string(),
                        connectd_migrations::Timescale::Enabled => "hypertable, compression and daily_active_users aggregate in place".to_string(),
                        connectd_migrations::Timescale::Failed(e) => format!("available but not enabled: {e}"),
                    });
                        EXIT_OK
                    }
                    Err(e) => {
                        eprintln!("error: migrations failed: {e}");
                        EXIT_RUNTIME
                    }
                }
            })
        }
        Command::Dlq {
            database_url,
            action,
        } => match database_url {
            Some(url) => block_on(async move {
                match connect(&url).await {
                    Ok(pool) => crate::dlq::run(&pool, action).await,
                    Err(code) => code,
                }
            }),
            None => {
                eprintln!("error: set DATABASE_URL or pass --database-url");
                EXIT_USAGE
            }
        },
        Command::Keys {
            database_url,
            action,
        } => match database_url {
            Some(url) => block_on(keys(&url, action)),
            None => {
                eprintln!("error: set DATABASE_URL or pass --database-url");
                EXIT_USAGE
            }
        },
        Command::Postgres {
            database_url,
            action,
        } => match database_url {
            Some(url) => block_on(crate::postgres_cmd::run(&url, action)),
            None => {
                eprintln!("error: set DATABASE_URL or pass --database-url");
                EXIT_USAGE
            }
        },
        Command::Redis { action } => block_on(crate::redis_cmd::run(action)),
        Command::Produce(args) => block_on(crate::topic_io::produce(args)),
        Command::Tail(args) => block_on(crate::topic_io::tail(args)),
        Command::Stream(args) => block_on(crate::stream_cmd::run(args)),
        Command::Contracts {
            action: ContractsAction::Check { paths },
        } => crate::contracts::run_check(&paths),
        Command::Run { config } => {
            let cfg = match Config::load(&config, &registry) {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{}: {errors}", config.display());
                    return EXIT_USAGE;
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return EXIT_RUNTIME;
                }
            };
            match rt.block_on(crate::runtime::run(cfg, registry)) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "connectd stopped with an error");
                    EXIT_RUNTIME
                }
            }
        }
    }
}
