//! API-key authentication: SHA-256 hashes in `api_keys`, read through a Redis cache, with an
//! in-process cache (moka: bounded, TTL) when Redis is down, plus static keys from the
//! configuration.

use std::time::{Duration, Instant};

use connector_core::metrics::Counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use connectd_redis::RedisConn;

/// What is known about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key's name (becomes the events' default `source`).
    pub name: String,
    /// Disabled keys are refused with 403.
    pub disabled: bool,
    /// Requests per second, if limited.
    pub rate_limit: Option<u32>,
}

/// Result of authenticating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// A valid, enabled key.
    Ok(KeyInfo),
    /// No key in the request (401).
    Missing,
    /// Unknown key (401).
    Unknown,
    /// Disabled key (403).
    Disabled(String),
    /// Neither a cache nor the database could answer (503).
    Unavailable,
}

/// SHA-256 of a key, hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Counters of the key cache.
pub struct AuthMetrics {
    /// Answered by Redis or the LRU.
    pub cache_hits: Counter,
    /// Went to the database.
    pub cache_misses: Counter,
}

/// The authenticator.
pub struct Authenticator {
    static_keys: Vec<(String, KeyInfo)>,
    pool: Option<PgPool>,
    redis: Option<std::sync::Arc<RedisConn>>,
    ttl: Duration,
    /// In-process fallback while Redis is down: key hash → (lookup, when). Bounded, with O(1)
    /// eviction (moka's TinyLFU) — a stream of random invalid keys cannot make every request
    /// pay a scan. Entries live up to [`STALE_LIMIT`]; [`lru_get`](Self::lru_get) only serves
    /// fresh ones, the database-down path may use a stale one.
    lru: moka::sync::Cache<String, (Option<KeyInfo>, Instant)>,
    allow_anonymous: bool,
    metrics: AuthMetrics,
}

const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// How long a cached lookup may still be used, stale, while the database is down.
const STALE_LIMIT: Duration = Duration::from_secs(3600);

impl Authenticator {
    /// A new authenticator.
    pub fn new(
        static_keys: Vec<(String, String)>,
        pool: Option<PgPool>,
        redis: Option<std::sync::Arc<RedisConn>>,
        ttl: Duration,
        lru_capacity: usize,
        allow_anonymous: bool,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            static_keys: static_keys
                .into_iter()
                .map(|(name, key)| {
                    (
                        hash_key(&key),
                        KeyInfo {
                            name,
                            disabled: false,
                            rate_limit: None,
                        },
                    )
                })
                .collect(),
            pool,
            redis,
            ttl,
            lru: moka::sync::Cache::builder()
                .max_capacity(lru_capacity.max(1) as u64)
                .time_to_live(STALE_LIMIT.max(ttl))
                .build(),
            allow_anonymous,
            metrics,
        }
    }

    fn lru_get(&self, hash: &str) -> Option<Option<KeyInfo>> {
        self.lru.get(hash).and_then(|(info, at)| {
            let ttl = if info.is_some() {
                self.ttl
            } else {
                NEGATIVE_TTL.min(self.ttl)
            };
            (at.elapsed() < ttl).then_some(info)
        })
    }

    fn lru_put(&self, hash: &str, info: Option<KeyInfo>) {
        self.lru.insert(hash.to_string(), (info, Instant::now()));
    }

    /// Authenticates the presented key (`None` when the request carried none).
    pub async fn check(&self, presented: Option<&str>) -> AuthResult {
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            if self.allow_anonymous {
                return AuthResult::Ok(KeyInfo {
                    name: "anonymous".into(),
                    disabled: false,
                    rate_limit: None,
                });
            }
            return AuthResult::Missing;
        };
        let hash = hash_key(key);
        // Static keys: compare every hash in constant time, no early exit.
        let mut found = None;
        for (h, info) in &self.static_keys {
            if bool::from(h.as_bytes().ct_eq(hash.as_bytes())) {
                found = Some(info.clone());
            }
        }
        if let Some(info) = found {
            return AuthResult::Ok(info);
        }
        if self.pool.is_none() {
            return AuthResult::Unknown;
        }
        let info = match self.lookup(&hash).await {
            Some(i) => i,
            None => return AuthResult::Unavailable,
        };
        match info {
            None => AuthResult::Unknown,
            Some(i) if i.disabled => AuthResult::Disabled(i.name),
            Some(i) => AuthResult::Ok(i),
        }
    }

    /// Redis → (Redis down: LRU) → database. `None` when nothing could answer.
    async fn lookup(&self, hash: &str) -> Option<Option<KeyInfo>> {
        let redis_key = format!("connectd:apikey:{hash}");
        let mut redis_up = false;
        if let Some(r) = &self.redis {
            match r
                .query::<Option<String>>(redis::cmd("GET").arg(&redis_key))
                .await
            {
                Some(Some(v)) => {
                    self.metrics.cache_hits.inc();
                    let info = serde_json::from_str::<Option<KeyInfo>>(&v).ok().flatten();
                    self.lru_put(hash, info.clone());
                    return Some(info);
                }
                Some(None) => redis_up = true,
                None => {}
            }
        }
        if !redis_up {
            if let Some(hit) = self.lru_get(hash) {
                self.metrics.cache_hits.inc();
                return Some(hit);
            }
        }
        self.metrics.cache_misses.inc();
        let pool = self.pool.as_ref()?;
        let row: Result<Option<(String, bool, Option<i32>)>, sqlx::Error> =
            sqlx::query_as("SELECT name, disabled, rate_limit FROM api_keys WHERE key_hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await;
        let info = match row {
            Ok(r) => r.map(|(name, disabled, rate)| KeyInfo {
                name,
                disabled,
                rate_limit: rate.and_then(|r| u32::try_from(r).ok()),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "api key lookup failed");
                // Database down: a stale cached lookup is better than refusing everybody.
                return self.lru.get(hash).map(|(i, _)| i);
            }
        };
        let ttl = if info.is_some() {
            self.ttl
        } else {
            NEGATIVE_TTL.min(self.ttl)
        };
        if let (Some(r), Ok(v)) = (&self.redis, serde_json::to_string(&info)) {
            let _: Option<()> = r
                .query(
                    redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(v)
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64),
                )
                .await;
        }
        self.lru_put(hash, info.clone());
        Some(info)
    }
}

/// Creates a key named `name`: stores its hash and returns the key (shown once).
pub async fn create_key(
    pool: &PgPool,
    name: &str,
    rate_limit: Option<i32>,
) -> Result<String, sqlx::Error> {
    let key = format!(
        "cd_{}",
        hex::encode(uuid::Uuid::new_v4().as_bytes())
            + &hex::encode(uuid::Uuid::new_v4().as_bytes())[..16]
    );
    sqlx::query("INSERT INTO api_keys (name, key_hash, rate_limit) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(hash_key(&key))
        .bind(rate_limit)
        .execute(pool)
        .await?;
    Ok(key)
}

/// Disables (or enables) the key named `name`; returns whether it exists.
pub async fn set_disabled(pool: &PgPool, name: &str, disabled: bool) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE api_keys SET disabled = $2, disabled_at = CASE WHEN $2 THEN now() ELSE NULL END WHERE name = $1",
    )
    .bind(name)
    .bind(disabled)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: Vec<(String, String)>, anonymous: bool) -> Authenticator {
        let m = connector_core::metrics::Metrics::new();
        Authenticator::new(
            keys,
            None,
            None,
            Duration::from_secs(1),
            2,
            anonymous,
            AuthMetrics {
                cache_hits: m.counter("h", "h"),
                cache_misses: m.counter("m", "m"),
            },
        )
    }

    #[tokio::test]
    async fn static_keys() {
        let a = auth(vec![("ci".into(), "secret-1".into())], false);
        assert!(matches!(a.check(Some("secret-1")).await, AuthResult::Ok(i) if i.name == "ci"));
        assert_eq!(a.check(Some("secret-2")).await, AuthResult::Unknown);
        assert_eq!(a.check(None).await, AuthResult::Missing);
        assert_eq!(a.check(Some("")).await, AuthResult::Missing);
        let anon = auth(vec![], true);
        assert!(matches!(anon.check(None).await, AuthResult::Ok(i) if i.name == "anonymous"));
    }

    #[test]
    fn the_key_cache_stays_bounded_under_a_stream_of_unknown_keys() {
        let a = auth(vec![], false);
        let info = |n: &str| {
            Some(KeyInfo {
                name: n.into(),
                disabled: false,
                rate_limit: None,
            })
        };
        a.lru_put("good", info("good"));
        assert_eq!(a.lru_get("good"), Some(info("good")));
        // Random invalid keys, negatively cached: far more than the capacity.
        for i in 0..20_000 {
            a.lru_put(&format!("bad-{i}"), None);
        }
        a.lru.run_pending_tasks();
        assert!(a.lru.entry_count() <= 2, "{}", a.lru.entry_count());
    }

    #[test]
    fn cached_lookups_expire_after_their_ttl_negative_ones_sooner() {
        let a = Authenticator::new(
            vec![],
            None,
            None,
            Duration::from_millis(50),
            100,
            false,
            AuthMetrics {
                cache_hits: Counter::default(),
                cache_misses: Counter::default(),
            },
        );
        let known = Some(KeyInfo {
            name: "k".into(),
            disabled: false,
            rate_limit: None,
        });
        a.lru_put("k", known.clone());
        a.lru_put("x", None);
        assert_eq!(a.lru_get("k"), Some(known));
        assert_eq!(a.lru_get("x"), Some(None));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(a.lru_get("k"), None, "expired");
        // Still there for the database-down path.
        assert!(a.lru.get("k").is_some());
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
