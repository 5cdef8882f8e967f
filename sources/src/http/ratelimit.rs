//! Per-key token buckets (requests per second, burst of one second).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets by key name.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket (rate `per_second`); `Err(wait)` when empty.
    pub fn check(&self, key: &str, per_second: u32) -> Result<(), Duration> {
        let rate = f64::from(per_second.max(1));
        let mut g = match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let (tokens, last) = g.entry(key.to_string()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_refuses() {
        let r = RateLimiter::default();
        for _ in 0..5 {
            assert!(r.check("k", 5).is_ok());
        }
        let wait = r.check("k", 5).expect_err("empty");
        assert!(wait <= Duration::from_millis(200));
        assert!(r.check("other", 5).is_ok(), "buckets are per key");
    }
}
