//! Edge idempotency for requests with an `Idempotency-Key` header: a Redis `SET NX` lock while
//! the request is in flight (a concurrent duplicate gets 409) and the completed response cached
//! and replayed byte for byte. Redis down: skipped, never fails the request.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use connectd_redis::RedisConn;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// HTTP status.
    pub status: u16,
    /// Body, exactly as first sent.
    pub body: String,
}

/// Result of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: handle the request, then [`Edge::finish`].
    Claimed,
    /// Another request with this key is in flight (409).
    InFlight,
    /// Already answered: replay this.
    Replay(Stored),
    /// Redis is unavailable: handle without edge idempotency.
    Bypassed,
}

const IN_FLIGHT: &str = "in-flight";

/// The edge idempotency store.
pub struct Edge {
    redis: Arc<RedisConn>,
    prefix: String,
    lock_ttl: Duration,
    response_ttl: Duration,
}

impl Edge {
    /// A store under `connectd:idem:<connector>:`.
    pub fn new(
        redis: Arc<RedisConn>,
        connector: &str,
        lock_ttl: Duration,
        response_ttl: Duration,
    ) -> Self {
        Self {
            redis,
            prefix: format!("connectd:idem:{connector}:"),
            lock_ttl,
            response_ttl,
        }
    }

    fn key(&self, principal: &str, key: &str) -> String {
        format!("{}{principal}:{key}", self.prefix)
    }

    /// Claims `key` for `principal` (the API key's name).
    pub async fn claim(&self, principal: &str, key: &str) -> Claim {
        let k = self.key(principal, key);
        let set: Option<Option<String>> = self
            .redis
            .query(
                redis::cmd("SET")
                    .arg(&k)
                    .arg(IN_FLIGHT)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.lock_ttl.as_millis().max(1) as u64),
            )
            .await;
        match set {
            None => Claim::Bypassed,
            Some(Some(_)) => Claim::Claimed,
            Some(None) => match self
                .redis
                .query::<Option<String>>(redis::cmd("GET").arg(&k))
                .await
            {
                None => Claim::Bypassed,
                Some(None) => Claim::InFlight, // expired between SET and GET: treat as busy
                Some(Some(v)) if v == IN_FLIGHT => Claim::InFlight,
                Some(Some(v)) => match serde_json::from_str::<Stored>(&v) {
                    Ok(s) => Claim::Replay(s),
                    Err(_) => Claim::InFlight,
                },
            },
        }
    }

    /// Stores the final response (2xx/4xx) or releases the lock (5xx: the client may retry).
    pub async fn finish(&self, principal: &str, key: &str, response: &Stored) {
        let k = self.key(principal, key);
        if response.status >= 500 {
            let _: Option<i64> = self.redis.query(redis::cmd("DEL").arg(&k)).await;
            return;
        }
        if let Ok(v) = serde_json::to_string(response) {
            let _: Option<()> = self
                .redis
                .query(
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(v)
                        .arg("PX")
                        .arg(self.response_ttl.as_millis().max(1) as u64),
                )
                .await;
        }
    }
}
