#![warn(missing_docs)]
//! Shared by the built-in connectors that use Redis (`http_source`, `redis_dedup`, `redis_sink`).
//!
//! A lazily (re)connected Redis handle with short timeouts, so that a Redis outage costs a
//! request milliseconds, not seconds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use redis;

/// Shared Redis connection that connects on first use and retries at most once a second.
///
/// After a command found Redis unreachable (connection error or timeout), [`get`](Self::get)
/// answers `None` at once for [`PAUSE_AFTER_FAILURE`] before Redis is tried again: during an
/// outage callers fall back immediately instead of each waiting for the timeout.
pub struct RedisConn {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
    down_until: Mutex<Option<Instant>>,
    timeout: Duration,
}

/// How long Redis is considered down after a command could not reach it.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl RedisConn {
    /// A handle for `url` (nothing is connected yet).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            down_until: Mutex::new(None),
            timeout,
        })
    }

    /// The client (for connections of their own, e.g. Pub/Sub subscribers).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Records that a command could not reach Redis: [`get`](Self::get) answers `None` for
    /// [`PAUSE_AFTER_FAILURE`].
    pub fn mark_unavailable(&self) {
        let mut d = match self.down_until.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        *d = Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }

    fn paused(&self) -> bool {
        let d = match self.down_until.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        d.is_some_and(|t| Instant::now() < t)
    }

    /// A connection, or `None` while Redis is unreachable.
    pub async fn get(&self) -> Option<ConnectionManager> {
        if self.paused() {
            return None;
        }
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Some(c.clone());
        }
        {
            let mut last = match self.last_attempt.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        match tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => {
                *g = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis unreachable");
                None
            }
            Err(_) => {
                tracing::warn!("redis connection timed out");
                None
            }
        }
    }

    /// Runs `cmd` with the timeout; `None` when Redis is down or slow.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut c = self.get().await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                if unreachable(&e) {
                    self.mark_unavailable();
                }
                tracing::debug!(error = %e, "redis command failed");
                None
            }
            Err(_) => {
                self.mark_unavailable();
                None
            }
        }
    }
}

/// Why a Redis call did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    /// Not connected, or no answer within the timeout.
    #[error("redis unavailable")]
    Unavailable,
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisConn {
    /// Runs a pipeline with the timeout.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisCallError> {
        let mut c = self.get().await.ok_or(RedisCallError::Unavailable)?;
        self.noted(answer(
            tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut c)).await,
        ))
    }

    /// Passes `r` on, pausing Redis use when it says Redis was unreachable.
    fn noted<T>(&self, r: Result<T, RedisCallError>) -> Result<T, RedisCallError> {
        if matches!(r, Err(RedisCallError::Unavailable)) {
            self.mark_unavailable();
        }
        r
    }

    /// Runs one command with the timeout, telling errors apart.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisCallError> {
        let mut c = self.get().await.ok_or(RedisCallError::Unavailable)?;
        self.noted(answer(
            tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut c)).await,
        ))
    }
}

fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

/// Maps a call's result: connection trouble and timeouts mean "unavailable".
fn answer<T>(
    r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
) -> Result<T, RedisCallError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if unreachable(&e) => Err(RedisCallError::Unavailable),
        Ok(Err(e)) => Err(RedisCallError::Redis(e)),
        Err(_) => Err(RedisCallError::Unavailable),
    }
}
