//! Where a connector's CPU goes: the time its tasks spend being polled.
//!
//! Every connector of a process shares one tokio runtime, so the process's CPU alone cannot say
//! which stage of a pipeline spent it. The runtime runs each connector's tasks inside a
//! [`BusyTime`]: the wall-clock time spent inside `poll` of those tasks (and inside their
//! blocking closures) is added up and published as the counter
//! `connectd_connector_busy_microseconds_total{connector=…}` (blocking closures:
//! `connectd_connector_blocking_microseconds_total`). Set beside the runtime's own
//! busy time (`connectd_runtime_busy_microseconds`) it splits the CPU of the runtime's threads
//! between the stages; `scripts/bench.sh` does that for its end-to-end table.
//!
//! A connector that starts tasks of its own uses [`spawn`] and [`spawn_blocking`] instead of
//! tokio's: they carry the caller's [`BusyTime`] into the new task. Tasks started with tokio's
//! functions, or inside libraries (a Redis connection's driver, a PostgreSQL pool's reaper),
//! are not counted for any connector and show as the runtime's unattributed share.
//!
//! Wall time rather than thread CPU time: reading a thread's CPU clock is a system call (~0.7 µs
//! on this project's machines) and a busy stage is polled tens of thousands of times a second;
//! `Instant::now` is read from the vDSO. The two differ only while the OS has preempted a thread
//! in the middle of a poll, which hits every stage alike. This is a hand-written ~100 lines
//! rather than `tokio-metrics`' `TaskMonitor` because the monitor must follow a task into the
//! tasks it spawns, which a `TaskMonitor` does not do by itself.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use connector_core::metrics::Metrics;
//! use connector_core::task::{self, BusyTime};
//! let busy = BusyTime::new(&Metrics::new().with_label("connector", "pg"));
//! let inner = busy.run(async { task::spawn(async { 40 + 2 }).await.ok() }).await;
//! assert_eq!(inner, Some(42));
//! assert!(busy.polls() >= 2); // the outer task and the one it spawned
//! # }
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::metrics::{Counter, Metrics};

/// The name of the per-connector counter of time spent polling its tasks.
pub const BUSY_COUNTER: &str = "connectd_connector_busy_microseconds_total";
/// The name of the per-connector counter of time spent in its [`spawn_blocking`] closures
/// (on tokio's blocking threads, outside the runtime's busy time).
pub const BLOCKING_COUNTER: &str = "connectd_connector_blocking_microseconds_total";

/// The name of the per-connector counter of polls (and blocking closures) counted.
pub const POLLS_COUNTER: &str = "connectd_connector_polls_total";

/// Nanoseconds published as a counter of whole microseconds.
#[derive(Debug)]
struct Account {
    nanos: AtomicU64,
    counter: Counter,
}

impl Account {
    fn new(metrics: &Metrics, name: &str, help: &str) -> Self {
        Self {
            nanos: AtomicU64::new(0),
            counter: metrics.counter(name, help),
        }
    }

    fn add(&self, nanos: u64) {
        let before = self.nanos.fetch_add(nanos, Ordering::Relaxed);
        // The counter moves in whole microseconds; the remainder stays in `nanos`, so the
        // counter never drifts from the total however short each poll is.
        let micros = (before + nanos) / 1000 - before / 1000;
        if micros > 0 {
            self.counter.add(micros);
        }
    }
}

#[derive(Debug)]
struct Inner {
    polled: Account,
    blocking: Account,
    polls: Counter,
}

/// The time a connector's tasks spent being polled, shared by all of them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BusyTime(Arc<Inner>);

thread_local! {
    /// The [`BusyTime`] of the task being polled on this thread, if it has one.
    static CURRENT: RefCell<Option<BusyTime>> = const { RefCell::new(None) };
}

impl BusyTime {
    /// A new account, published as [`BUSY_COUNTER`] with `metrics`' labels.
    pub fn new(metrics: &Metrics) -> Self {
        Self(Arc::new(Inner {
            polled: Account::new(
                metrics,
                BUSY_COUNTER,
                "Wall time spent polling this connector's tasks, in microseconds",
            ),
            blocking: Account::new(
                metrics,
                BLOCKING_COUNTER,
                "Wall time spent in this connector's blocking closures, in microseconds",
            ),
            polls: metrics.counter(
                POLLS_COUNTER,
                "Polls of this connector's tasks and runs of its blocking closures",
            ),
        }))
    }

    /// The [`BusyTime`] of the task running now, if it runs inside one.
    pub fn current() -> Option<Self> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Wraps `fut` so that the time spent polling it is counted here, and tasks it starts with
    /// [`spawn`] are counted here too.
    pub fn run<F: Future>(&self, fut: F) -> Counted<F> {
        Counted {
            fut: Box::pin(fut),
            busy: Some(self.clone()),
        }
    }

    /// Time counted so far polling tasks, in nanoseconds.
    pub fn nanos(&self) -> u64 {
        self.0.polled.nanos.load(Ordering::Relaxed)
    }

    /// Time counted so far in blocking closures, in nanoseconds.
    pub fn blocking_nanos(&self) -> u64 {
        self.0.blocking.nanos.load(Ordering::Relaxed)
    }

    /// How many polls (and blocking closures) were counted.
    pub fn polls(&self) -> u64 {
        self.0.polls.get()
    }

    /// Runs `f` with this account as the current one, counting the time it takes (as blocking
    /// time when `blocking`).
    fn enter<R>(&self, blocking: bool, f: impl FnOnce() -> R) -> R {
        let _entered = Entered {
            busy: self.clone(),
            blocking,
            previous: CURRENT.with(|c| c.replace(Some(self.clone()))),
            start: Instant::now(),
        };
        f()
    }
}

/// Counts the time and puts the previous account back when dropped, also when the poll panics.
struct Entered {
    busy: BusyTime,
    blocking: bool,
    previous: Option<BusyTime>,
    start: Instant,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed().as_nanos();
        CURRENT.with(|c| *c.borrow_mut() = self.previous.take());
        let nanos = u64::try_from(elapsed).unwrap_or(u64::MAX);
        let inner = &self.busy.0;
        inner.polls.inc();
        match self.blocking {
            true => inner.blocking.add(nanos),
            false => inner.polled.add(nanos),
        }
    }
}

/// A future whose polls are counted in a [`BusyTime`]: [`BusyTime::run`].
#[must_use = "futures do nothing unless polled"]
pub struct Counted<F> {
    fut: Pin<Box<F>>,
    busy: Option<BusyTime>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        match this.busy.clone() {
            Some(busy) => busy.enter(false, || this.fut.as_mut().poll(cx)),
            None => this.fut.as_mut().poll(cx),
        }
    }
}

/// `fut`, counted in the caller's [`BusyTime`] (if it has one) wherever it is polled: for
/// executors other than [`spawn`], e.g. a `tokio::task::JoinSet`.
pub fn counted<F: Future>(fut: F) -> Counted<F> {
    Counted {
        fut: Box::pin(fut),
        busy: BusyTime::current(),
    }
}

/// `tokio::spawn`, counted in the caller's [`BusyTime`] (if it has one).
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(counted(fut))
}

/// `tokio::task::spawn_blocking`, the closure's run time counted in the caller's [`BusyTime`]
/// (if it has one).
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match BusyTime::current() {
        Some(busy) => tokio::task::spawn_blocking(move || busy.enter(true, f)),
        None => tokio::task::spawn_blocking(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(ms: u64) {
        let start = Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(ms) {
            std::hint::spin_loop();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn time_follows_a_task_into_the_tasks_and_blocking_work_it_starts() {
        let metrics = Metrics::new().with_label("connector", "a");
        let a = BusyTime::new(&metrics);
        let b = BusyTime::new(&Metrics::new().with_label("connector", "b"));
        a.run(async {
            spin(20);
            let child = spawn(async { spin(20) });
            let blocking = spawn_blocking(|| spin(20));
            let _ = child.await;
            let _ = blocking.await;
        })
        .await;
        b.run(async { spin(5) }).await;
        // Outside any account: not counted anywhere.
        let _ = spawn(async { spin(20) }).await;

        let (a_ms, b_ms) = (a.nanos() / 1_000_000, b.nanos() / 1_000_000);
        let a_blocking_ms = a.blocking_nanos() / 1_000_000;
        assert!((40..150).contains(&a_ms), "a counted {a_ms} ms polling");
        assert!(
            (20..100).contains(&a_blocking_ms),
            "a counted {a_blocking_ms} ms blocking"
        );
        assert!((5..50).contains(&b_ms), "b counted {b_ms} ms");
        assert!(BusyTime::current().is_none());
        let text = metrics.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("connectd_connector_busy_microseconds_total{"))
            .unwrap_or_default();
        let micros: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert_eq!(micros, a.nanos() / 1000, "{text}");
    }

    #[test]
    fn the_counter_keeps_sub_microsecond_polls() {
        let busy = BusyTime::new(&Metrics::new());
        for _ in 0..10 {
            busy.0.polled.add(300);
        }
        assert_eq!(busy.nanos(), 3000);
        assert_eq!(busy.0.polled.counter.get(), 3);
    }
}
