//! The runtime: runs every enabled connector of a [`Config`] until SIGINT/SIGTERM.
//!
//! * [`kafka`] — client settings, topic creation, the shared idempotent producer.
//! * [`runner`] — the consumer-group loop of a sink or transform; [`worker`] — one batch.
//! * [`offsets`] — which offset may be committed.
//! * [`supervisor`] — build, run, restart with backoff.
//! * [`status`] and [`admin`] — states, counters and the admin HTTP server.
//! * [`dlq`] — dead-letter records.

pub mod admin;
pub mod dlq;
pub mod kafka;
pub mod offsets;
pub mod runner;
pub mod status;
pub mod supervisor;
pub mod worker;

use std::time::Duration;

use anyhow::Context as _;
use connector_core::metrics::Metrics;
use connector_core::task::BusyTime;
use connector_core::{Registry, Shutdown, ShutdownTrigger};

use self::kafka::SharedProducer;
use self::status::{State, StatusRegistry};
use self::supervisor::ProcessEnv;
use crate::config::Config;

/// Resolves on the first SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the configuration until SIGINT/SIGTERM, then shuts down within `shutdown_timeout`.
pub async fn run(config: Config, _registry: Registry) -> anyhow::Result<()> {
    let (trigger, shutdown) = Shutdown::new();
    run_until(config, trigger, shutdown, wait_for_signal()).await
}

/// Runs until `stop` resolves (or `trigger` fires).
pub async fn run_until(
    config: Config,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let status = StatusRegistry::new(Metrics::new());
    {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutdown requested");
            trigger.trigger();
        });
    }

    // The admin server first, so /health answers while we wait for the broker.
    if config.global.admin.enabled {
        let addr = config.global.admin.listen.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin.listen)"))?;
        tracing::info!(%addr, "admin server listening");
        let app = admin::router(status.clone(), config.global.admin.token.clone());
        let mut s = shutdown.clone();
        tokio::spawn(async move {
            let serve =
                axum::serve(listener, app).with_graceful_shutdown(async move { s.wait().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
    }

    // Topics: retry until the broker answers (or shutdown).
    let mut wait = Duration::from_millis(500);
    loop {
        match kafka::ensure_topics(&config).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot create topics yet");
                let mut s = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.wait() => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }

    let producer = SharedProducer::new(&config.global.kafka)?;
    let env = ProcessEnv {
        kafka: config.global.kafka.clone(),
        producer: producer.clone(),
        metrics: status.metrics.clone(),
        shutdown: shutdown.clone(),
        shutdown_timeout: config.global.shutdown_timeout.as_std(),
    };
    let mut tasks = Vec::new();
    for spec in config.connectors {
        let handle = status.add(
            &spec.name,
            spec.plugin.type_name(),
            spec.kind().as_str(),
            spec.redacted_block(),
        );
        if !spec.enabled {
            handle.set_state(State::Stopped);
            continue;
        }
        // Everything this connector's tasks do is counted as its busy time (task::BusyTime).
        let busy = BusyTime::new(&status.metrics.with_label("connector", &spec.name));
        tasks.push(tokio::spawn(busy.run(supervisor::supervise(
            spec,
            env.clone(),
            handle,
        ))));
    }

    let mut s = shutdown.clone();
    s.wait().await;
    let deadline = tokio::time::Instant::now() + env.shutdown_timeout + Duration::from_secs(5);
    for t in tasks {
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            tracing::warn!("a connector did not stop within shutdown_timeout");
        }
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let p = producer.clone();
    let flushed =
        tokio::task::spawn_blocking(move || p.flush(left.max(Duration::from_millis(100)))).await;
    if let Ok(Err(e)) = flushed {
        tracing::warn!(error = %e, "producer flush incomplete at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}
