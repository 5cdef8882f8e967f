//! Builds and runs one connector; restarts it with backoff when it crashes (SPEC §5).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_core::metrics::Metrics;
use connector_core::{
    ConnectorKind, Shutdown, SinkContext, SinkOutput, SourceContext, TransformContext,
};

use super::kafka::{ProducerEmitter, SharedProducer};
use super::runner::{self, RunnerParams};
use super::status::{ConnectorHandle, State};
use super::worker::{BatchError, Breaker, Instance, WorkerEnv};
use crate::config::{ConnectorSpec, KafkaSettings};

/// What every connector task needs from the process.
#[derive(Clone)]
pub struct ProcessEnv {
    /// Broker settings.
    pub kafka: KafkaSettings,
    /// Shared producer.
    pub producer: SharedProducer,
    /// Process metrics registry.
    pub metrics: Metrics,
    /// Fires on shutdown.
    pub shutdown: Shutdown,
    /// Graceful shutdown deadline.
    pub shutdown_timeout: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs `spec` until shutdown, restarting it after crashes.
pub async fn supervise(spec: ConnectorSpec, env: ProcessEnv, handle: ConnectorHandle) {
    let mut backoff = MIN_BACKOFF;
    let mut shutdown = env.shutdown.clone();
    loop {
        if shutdown.is_triggered() {
            break;
        }
        handle.set_state(State::Starting);
        let started = std::time::Instant::now();
        let result = run_once(&spec, &env, &handle).await;
        match result {
            Ok(()) | Err(BatchError::Abandoned) => break,
            Err(BatchError::Crash(msg)) => {
                if shutdown.is_triggered() {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = MIN_BACKOFF;
                }
                tracing::error!(connector = %spec.name, error = %msg, backoff_ms = backoff.as_millis() as u64, "connector crashed; restarting");
                handle.set_error(msg);
                handle.set_state(State::Restarting);
                handle.metrics.restarts.inc();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(BatchError::Fatal(msg)) => {
                tracing::error!(connector = %spec.name, error = %msg, "connector failed; POST /connectors/{}/resume to start it again", spec.name);
                handle.set_error(msg);
                handle.set_state(State::Failed);
                tokio::select! {
                    _ = handle.restart_requested() => { backoff = MIN_BACKOFF; }
                    _ = shutdown.wait() => break,
                }
            }
        }
    }
    handle.set_state(if handle.state() == State::Failed {
        State::Failed
    } else {
        State::Stopped
    });
}

async fn run_once(
    spec: &ConnectorSpec,
    env: &ProcessEnv,
    handle: &ConnectorHandle,
) -> Result<(), BatchError> {
    let metrics = env.metrics.with_label("connector", &spec.name);
    let build_err = |e: connector_core::ConnectorError| {
        if e.is_retriable() {
            BatchError::Crash(format!("build: {e}"))
        } else {
            BatchError::Fatal(format!("build: {e}"))
        }
    };
    match spec.kind() {
        ConnectorKind::Source => {
            let output = spec.output.clone().unwrap_or_default();
            let ctx = SourceContext {
                name: spec.name.clone(),
                output_topic: output.clone(),
                emitter: Arc::new(ProducerEmitter {
                    producer: env.producer.clone(),
                    output_topic: output,
                    ack_timeout: Duration::from_secs(10),
                    shutdown: env.shutdown.clone(),
                    acked: Some(handle.metrics.records_out.clone()),
                }),
                metrics,
                shutdown: env.shutdown.clone(),
            };
            let source = spec
                .plugin
                .build_source(spec.config.clone(), ctx.clone())
                .await
                .map_err(build_err)?;
            handle.set_state(State::Running);
            source
                .run(ctx)
                .await
                .map_err(|e| BatchError::Crash(e.to_string()))
        }
        kind => {
            let Some(consumer) = spec.consumer.clone() else {
                return Err(BatchError::Fatal("no consumer settings".into()));
            };
            let slots = consumer.max_in_flight.max(1);
            let mut instances = Vec::with_capacity(slots);
            for slot in 0..slots {
                let instance = if kind == ConnectorKind::Sink {
                    let mut ctx = SinkContext::new(
                        spec.name.clone(),
                        consumer.group(&spec.name),
                        metrics.clone(),
                        env.shutdown.clone(),
                    )
                    .with_instance(slot, slots);
                    if let Some(topic) = &spec.output {
                        ctx = ctx.with_output(SinkOutput {
                            topic: topic.clone(),
                            emitter: Arc::new(ProducerEmitter {
                                producer: env.producer.clone(),
                                output_topic: topic.clone(),
                                ack_timeout: Duration::from_secs(10),
                                shutdown: env.shutdown.clone(),
                                acked: None,
                            }),
                        });
                    }
                    Instance::Sink(
                        spec.plugin
                            .build_sink(spec.config.clone(), ctx)
                            .await
                            .map_err(build_err)?,
                    )
                } else {
                    let output = spec.output.clone().unwrap_or_default();
                    let ctx = TransformContext {
                        name: spec.name.clone(),
                        output_topic: output.clone(),
                        metrics: metrics.clone(),
                        shutdown: env.shutdown.clone(),
                    };
                    Instance::Transform(
                        spec.plugin
                            .build_transform(spec.config.clone(), ctx)
                            .await
                            .map_err(build_err)?,
                        output,
                    )
                };
                instances.push(instance);
            }
            // Exactly-once sinks answer stored_offsets with Some: give the runner its own
            // instance to ask on every assignment.
            let mut offset_store = None;
            if kind == ConnectorKind::Sink {
                let ctx = SinkContext::new(
                    spec.name.clone(),
                    consumer.group(&spec.name),
                    metrics.clone(),
                    env.shutdown.clone(),
                )
                .with_instance(slots, slots);
                if let Instance::Sink(first) = &mut instances[0] {
                    if matches!(first.stored_offsets(&[]).await, Ok(Some(_))) {
                        offset_store = Some(
                            spec.plugin
                                .build_sink(spec.config.clone(), ctx)
                                .await
                                .map_err(build_err)?,
                        );
                    }
                }
            }
            let worker_env = Arc::new(WorkerEnv {
                name: spec.name.clone(),
                dlq_topic: consumer.dlq_topic.clone(),
                retry: consumer.retry.clone(),
                producer: env.producer.clone(),
                handle: handle.clone(),
                shutdown: env.shutdown.clone(),
                breaker: consumer
                    .dlq_breaker
                    .clone()
                    .map(|b| Arc::new(Mutex::new(Breaker::new(b)))),
            });
            runner::run(RunnerParams {
                name: spec.name.clone(),
                consumer,
                kafka: env.kafka.clone(),
                instances,
                env: worker_env,
                handle: handle.clone(),
                shutdown: env.shutdown.clone(),
                shutdown_timeout: env.shutdown_timeout,
                offset_store,
            })
            .await
        }
    }
}
