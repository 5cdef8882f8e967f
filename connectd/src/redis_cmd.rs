//! `connectd redis rebuild`: rebuilds a sorted set (a leaderboard) from the last N entries of a
//! stream that `redis_sink` appends to (seed 002's replay for downstream caches).
//!
//! ```text
//! connectd redis rebuild --from-stream activity --last 10000 --into leaderboard:rebuilt --member-field user_id
//! ```
//!
//! Reads the entries with one `XREVRANGE … COUNT N`, builds the set under a temporary key in one
//! `MULTI`/`EXEC` pipeline and `RENAME`s it over the target, so readers see the old set or the
//! new one, never a half-built one. Prints how long it took.

use std::collections::HashMap;
use std::time::Instant;

use clap::{Args, Subcommand};
use connectd_redis::redis;

use crate::cli::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// `connectd redis` actions.
#[derive(Debug, Subcommand)]
pub enum RedisAction {
    /// Rebuild a sorted set from the last N entries of a stream.
    Rebuild(RebuildArgs),
}

/// `connectd redis rebuild` arguments.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The stream to read.
    #[arg(long)]
    pub from_stream: String,
    /// How many of its newest entries.
    #[arg(long)]
    pub last: usize,
    /// The sorted set to (re)build.
    #[arg(long)]
    pub into: String,
    /// Entry field that names the member.
    #[arg(long)]
    pub member_field: String,
    /// Entry field holding each entry's score increment (default: 1 per entry).
    #[arg(long)]
    pub score_field: Option<String>,
    /// Longest wait for each Redis answer (reading a long stream on a busy Redis takes more
    /// than the client's default of 500 ms).
    #[arg(long, default_value = "30s")]
    pub timeout: connector_core::config::Duration,
}

/// What a rebuild did.
#[derive(Debug, PartialEq)]
pub struct Rebuilt {
    /// Entries read.
    pub entries: usize,
    /// Members in the new set.
    pub members: usize,
    /// Entries without the member field (or with a non-numeric score), left out.
    pub skipped: usize,
}

/// Runs the rebuild; the error is for people.
pub async fn rebuild(a: &RebuildArgs) -> Result<Rebuilt, String> {
    let client = redis::Client::open(a.redis_url.as_str()).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(a.timeout.as_std()))
        .set_response_timeout(Some(a.timeout.as_std()));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
        .arg(&a.from_stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(a.last)
        .query_async(&mut c)
        .await
        .map_err(|e| format!("XREVRANGE {}: {e}", a.from_stream))?;
    let mut scores: HashMap<&str, f64> = HashMap::new();
    let mut skipped = 0;
    for (_, fields) in &entries {
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|p| p.first().map(String::as_str) == Some(name))
                .and_then(|p| p.get(1))
        };
        let by = match &a.score_field {
            None => Some(1.0),
            Some(f) => field(f).and_then(|v| v.parse::<f64>().ok()),
        };
        match (field(&a.member_field), by) {
            (Some(m), Some(by)) => *scores.entry(m.as_str()).or_default() += by,
            _ => skipped += 1,
        }
    }
    let tmp = format!("{}:rebuild:{}", a.into, std::process::id());
    let mut pipe = redis::pipe();
    pipe.atomic().del(&tmp).ignore();
    for chunk in scores.iter().collect::<Vec<_>>().chunks(1000) {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&tmp);
        for (member, score) in chunk {
            zadd.arg(**score).arg(**member);
        }
        pipe.add_command(zadd).ignore();
    }
    if scores.is_empty() {
        pipe.del(&a.into).ignore();
    } else {
        pipe.rename(&tmp, &a.into).ignore();
    }
    pipe.query_async::<()>(&mut c)
        .await
        .map_err(|e| format!("building {}: {e}", a.into))?;
    Ok(Rebuilt {
        entries: entries.len(),
        members: scores.len(),
        skipped,
    })
}

/// Runs a `connectd redis` action.
pub async fn run(action: RedisAction) -> u8 {
    match action {
        RedisAction::Rebuild(a) => {
            if a.last == 0 {
                eprintln!("error: --last must be at least 1");
                return EXIT_USAGE;
            }
            let started = Instant::now();
            match rebuild(&a).await {
                Ok(r) => {
                    println!(
                        "rebuilt {} from the last {} entries of {} ({} members, {} entries skipped) in {:.1} ms",
                        a.into,
                        r.entries,
                        a.from_stream,
                        r.members,
                        r.skipped,
                        started.elapsed().as_secs_f64() * 1000.0
                    );
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_RUNTIME
                }
            }
        }
    }
}
