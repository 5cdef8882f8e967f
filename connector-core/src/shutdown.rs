//! A cloneable shutdown signal (after mini-redis).

use tokio::sync::watch;

/// Fires once when the process (or one connector) is asked to stop. Cheap to clone.
///
/// ```
/// # tokio_test();
/// # fn tokio_test() {
/// let (trigger, shutdown) = connector_core::Shutdown::new();
/// assert!(!shutdown.is_triggered());
/// trigger.trigger();
/// assert!(shutdown.is_triggered());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that fires a [`Shutdown`].
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// A new trigger and its signal.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (
            ShutdownTrigger {
                tx: std::sync::Arc::new(tx),
            },
            Shutdown { rx },
        )
    }

    /// A signal that never fires (for tests and tools).
    pub fn never() -> Shutdown {
        let (trigger, s) = Shutdown::new();
        // Keep the sender alive forever so `wait` never returns.
        std::mem::forget(trigger);
        s
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when triggered (immediately if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: treat as shutdown.
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

impl ShutdownTrigger {
    /// Fires the signal. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// A new signal subscribed to this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}
