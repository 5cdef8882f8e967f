//! Per-key rate limits: requests per second with a burst of one second's worth.
//!
//! * `rate_limit_scope: instance` — a token bucket in this process. N instances behind a load
//!   balancer let a key through N times its limit.
//! * `rate_limit_scope: cluster` — one GCRA step in Redis per request (a Lua script: one round
//!   trip, atomic, on Redis' own clock so that instances' clocks need not agree), shared by
//!   every instance using the same Redis. When Redis does not answer, the local bucket decides
//!   (counted in `connectd_http_rate_limit_fallback_total`, logged once per outage); the shared
//!   connection then skips Redis for a second before asking again, so that an outage does not
//!   make every request wait for a Redis timeout.
//!
//! Either way a refusal carries `Retry-After` and the `RateLimit-Limit`, `RateLimit-Remaining`
//! and `RateLimit-Reset` headers (IETF draft `ratelimit-headers`).
//!
//! The bucket is written here rather than taken from `governor`: it is a dozen lines, and the
//! cluster path needs the same decision shape (remaining, reset) from a Redis script anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectd_redis::{redis, RedisConn};
use connector_core::metrics::Counter;

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Let it through?
    pub allowed: bool,
    /// The limit (requests per second).
    pub limit: u32,
    /// Requests left in the current burst.
    pub remaining: u32,
    /// When a refused request may come back.
    pub retry_after: Duration,
    /// When the burst is whole again.
    pub reset: Duration,
}

/// Token buckets by key name, in this process.
#[derive(Default)]
pub struct LocalLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl LocalLimiter {
    /// Takes one token from `key`'s bucket (rate `per_second`, burst one second).
    pub fn check(&self, key: &str, per_second: u32) -> Decision {
        let rate = f64::from(per_second.max(1));
        let mut g = match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let (tokens, last) = g.entry(key.to_string()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        Decision {
            allowed,
            limit: per_second.max(1),
            remaining: tokens.floor() as u32,
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((1.0 - *tokens) / rate)
            },
            reset: Duration::from_secs_f64((rate - *tokens) / rate),
        }
    }
}

/// GCRA on Redis' clock. KEYS[1] the key's theoretical arrival time (ms); ARGV[1] the emission
/// interval T (µs per request), ARGV[2] the burst in requests. Returns {allowed, retry_after_µs,
/// remaining, reset_µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + T
local allow_at = new_tat - burst * T
if now < allow_at then
  return {0, allow_at - now, 0, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - allow_at) / T)
return {1, 0, remaining, new_tat - now}
"#;

/// Where limits are kept.
pub enum Scope {
    /// This process only.
    Instance,
    /// Redis, shared by every instance; the local bucket while Redis is down.
    Cluster {
        /// The Redis connection.
        redis: Arc<RedisConn>,
        /// Prefix of the limit keys.
        prefix: String,
        /// Counts decisions taken locally because Redis did not answer.
        fallbacks: Counter,
    },
}

/// The rate limiter of an `http_source`.
pub struct RateLimiter {
    local: LocalLimiter,
    scope: Scope,
    script: redis::Script,
    redis_down: AtomicBool,
}

impl RateLimiter {
    /// A limiter keeping its limits in `scope`.
    pub fn new(scope: Scope) -> Self {
        Self {
            local: LocalLimiter::default(),
            scope,
            script: redis::Script::new(GCRA),
            redis_down: AtomicBool::new(false),
        }
    }

    /// Decides for one request of `key` limited to `per_second`.
    pub async fn check(&self, key: &str, per_second: u32) -> Decision {
        let Scope::Cluster {
            redis,
            prefix,
            fallbacks,
        } = &self.scope
        else {
            return self.local.check(key, per_second);
        };
        let per_second = per_second.max(1);
        let interval_us = 1_000_000 / u64::from(per_second);
        let answer = match redis.get().await {
            Some(mut c) => {
                let mut inv = self.script.prepare_invoke();
                inv.key(format!("{prefix}:{key}"))
                    .arg(interval_us.max(1))
                    .arg(per_second);
                match tokio::time::timeout(
                    Duration::from_millis(250),
                    inv.invoke_async::<(i64, i64, i64, i64)>(&mut c),
                )
                .await
                {
                    Ok(Ok(a)) => Some(a),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "rate-limit script failed");
                        redis.mark_unavailable();
                        None
                    }
                    Err(_) => {
                        redis.mark_unavailable();
                        None
                    }
                }
            }
            None => None,
        };
        match answer {
            Some((allowed, retry_us, remaining, reset_us)) => {
                if self.redis_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limits: Redis answers again; limits are cluster-wide");
                }
                Decision {
                    allowed: allowed == 1,
                    limit: per_second,
                    remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                    retry_after: Duration::from_micros(retry_us.max(0) as u64),
                    reset: Duration::from_micros(reset_us.max(0) as u64),
                }
            }
            None => {
                fallbacks.inc();
                if !self.redis_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "rate limits: Redis does not answer; limiting per instance until it does"
                    );
                }
                self.local.check(key, per_second)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allows_the_burst_then_refuses_with_the_wait_and_what_is_left() {
        let r = RateLimiter::new(Scope::Instance);
        for i in 0..5 {
            let d = r.check("k", 5).await;
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
        }
        let d = r.check("k", 5).await;
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining), (5, 0));
        assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(200));
        assert!(r.check("other", 5).await.allowed, "buckets are per key");
    }
}
