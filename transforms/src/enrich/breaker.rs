//! The circuit breaker around the lookup store.
//!
//! Written here rather than taken from a crate: the candidates (`failsafe`, and smaller ones)
//! either hide the state (we export it as a gauge and in `/connectors`), let every call
//! through while half-open (we want exactly one probe, the rest served by the fallback), or
//! combine policies only one way. The state machine is small and fully unit-tested below.
//!
//! ```text
//!   closed ──(N consecutive failures, or error ratio ≥ r over the window with ≥ m calls)──▶ open
//!     ▲                                                                                    │
//!     │ probe succeeds                                                        cool-down over
//!     └──────────────────────────── half_open (one probe at a time) ◀─────────────────────┘
//!                                      │ probe fails ──▶ open (cool-down again)
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The breaker's state, as exported (gauge value in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Lookups go to the store (0).
    Closed,
    /// One probe lookup is allowed; others are refused until it answers (1).
    HalfOpen,
    /// Lookups are refused until the cool-down ends (2).
    Open,
}

impl BreakerState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Thresholds.
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    /// Consecutive failed lookups that open the breaker.
    pub consecutive_failures: u32,
    /// Error ratio over `window` that opens it (with at least `min_calls` lookups).
    pub error_ratio: f64,
    /// The window of the ratio.
    pub window: Duration,
    /// Lookups in the window before the ratio counts.
    pub min_calls: u32,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
}

/// What the breaker says about a lookup about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead.
    Call,
    /// Go ahead: this lookup is the half-open probe.
    Probe,
    /// Do not call the store.
    Refused,
}

/// The breaker. Not thread-safe by itself: the transform keeps it under a mutex.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
    consecutive: u32,
    /// (time, failed) of recent lookups, oldest first.
    recent: VecDeque<(Instant, bool)>,
    opened_at: Option<Instant>,
    probe_out: bool,
    opens: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed,
            consecutive: 0,
            recent: VecDeque::new(),
            opened_at: None,
            probe_out: false,
            opens: 0,
        }
    }

    /// The state at `now` (an open breaker whose cool-down ended reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(t)) if now.duration_since(t) >= self.policy.cooldown => {
                BreakerState::HalfOpen
            }
            (s, _) => s,
        }
    }

    /// Times the breaker opened.
    pub fn opens(&self) -> u64 {
        self.opens
    }

    /// Asks to make a lookup.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state(now) {
            BreakerState::Closed => Permit::Call,
            BreakerState::Open => Permit::Refused,
            BreakerState::HalfOpen if self.probe_out => Permit::Refused,
            BreakerState::HalfOpen => {
                self.state = BreakerState::HalfOpen;
                self.probe_out = true;
                Permit::Probe
            }
        }
    }

    /// Records the result of a lookup made under `permit`.
    pub fn record(&mut self, permit: Permit, ok: bool, now: Instant) {
        if permit == Permit::Probe {
            self.probe_out = false;
            if ok {
                self.close();
            } else {
                self.open(now);
            }
            return;
        }
        if permit == Permit::Refused || self.state != BreakerState::Closed {
            return; // A late answer of a call made before the breaker opened.
        }
        self.recent.push_back((now, !ok));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        self.consecutive = if ok { 0 } else { self.consecutive + 1 };
        let calls = self.recent.len() as u32;
        let failed = self.recent.iter().filter(|(_, f)| *f).count() as f64;
        if self.consecutive >= self.policy.consecutive_failures
            || (calls >= self.policy.min_calls
                && failed / f64::from(calls.max(1)) >= self.policy.error_ratio)
        {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        if self.state != BreakerState::Open {
            self.opens += 1;
        }
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        tracing::warn!(
            cooldown_ms = self.policy.cooldown.as_millis() as u64,
            "enrich: circuit breaker open"
        );
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.consecutive = 0;
        self.recent.clear();
        tracing::info!("enrich: circuit breaker closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            error_ratio: 0.5,
            window: Duration::from_secs(10),
            min_calls: 10,
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn consecutive_failures_open_then_one_probe_closes() {
        let mut b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.permit(t0), Permit::Call);
            b.record(Permit::Call, false, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record(Permit::Call, false, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.permit(t0 + Duration::from_secs(4)), Permit::Refused);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.permit(t1), Permit::Probe);
        assert_eq!(b.permit(t1), Permit::Refused, "one probe at a time");
        b.record(Permit::Probe, true, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.permit(t1), Permit::Call);
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn a_failed_probe_opens_again_for_a_full_cooldown() {
        let mut b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(Permit::Call, false, t0);
        }
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(b.permit(t1), Permit::Probe);
        b.record(Permit::Probe, false, t1);
        assert_eq!(b.state(t1 + Duration::from_secs(4)), BreakerState::Open);
        assert_eq!(b.state(t1 + Duration::from_secs(5)), BreakerState::HalfOpen);
        assert_eq!(b.opens(), 2);
    }

    #[test]
    fn error_ratio_over_the_window_opens_without_a_streak() {
        let mut b = Breaker::new(policy());
        let t0 = Instant::now();
        // Alternating failures never make 3 in a row, but 50% of 10 calls do.
        for i in 0..9 {
            b.record(Permit::Call, i % 2 == 0, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record(Permit::Call, false, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..5 {
            b.record(Permit::Call, false, t0);
            b.record(Permit::Call, true, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        let mut b = Breaker::new(policy());
        for _ in 0..4 {
            b.record(Permit::Call, false, t0);
            b.record(Permit::Call, true, t0);
        }
        let later = t0 + Duration::from_secs(11);
        b.record(Permit::Call, false, later);
        b.record(Permit::Call, true, later);
        assert_eq!(
            b.state(later),
            BreakerState::Closed,
            "2 calls in the window"
        );
    }
}
