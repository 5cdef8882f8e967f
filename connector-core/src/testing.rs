//! The compliance harness for sinks (feature `testing`).
//!
//! It builds your sink from a config and runs the contract checks of connectd's delivery
//! guarantee against the real system your sink writes to, then reports which failed and why:
//!
//! | check | what it proves |
//! | --- | --- |
//! | `config_schema` | the config has a JSON Schema and every setting is documented |
//! | `outcomes_per_record` | `write` answers exactly one outcome per record |
//! | `acks_after_durable_write` | every record answered `Delivered` is readable by the probe when `write` returns |
//! | `idempotent_redelivery` | writing the same batch again stores nothing twice |
//! | `error_classification` | records that can never be written are `Permanent` (→ DLQ), not retried forever, and do not take good records down |
//! | `close_and_reopen` | `close` succeeds, a rebuilt sink sees the earlier writes (no duplicates after a restart) |
//!
//! Your part is a [`Probe`]: a way to ask your store how many times each record's effect is
//! there (usually a lookup by idempotency key).
//!
//! ```ignore
//! use connector_core::testing::{Probe, SinkHarness};
//!
//! let report = SinkHarness::<MySinkPlugin>::new(config)
//!     .probe(MyProbe::new(&url))
//!     .poison(vec![Record::new("not json").with_origin("t", 0, 999)])
//!     .run()
//!     .await;
//! report.assert_passed(); // panics with every failed check and why
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::metrics::Metrics;
use crate::{Record, RecordOutcome, Shutdown, SinkContext, SinkPlugin};

/// Reads back what a sink stored.
#[async_trait]
pub trait Probe: Send + Sync {
    /// For each record, how many times its effect is stored (0 = missing, 1 = once, 2+ = a
    /// duplicate).
    async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String>;
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Check name.
    pub name: &'static str,
    /// Passed?
    pub passed: bool,
    /// Why it failed (or what it saw).
    pub detail: String,
}

/// Every check's result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Results in order.
    pub checks: Vec<CheckResult>,
}

impl Report {
    fn push(&mut self, name: &'static str, passed: bool, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            name,
            passed,
            detail: detail.into(),
        });
    }

    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// The result of check `name`.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Panics with the report when a check failed.
    pub fn assert_passed(&self) {
        assert!(self.passed(), "sink contract violated:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "[{}] {}: {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A unique tag per harness run (time and a counter), for record keys.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{:x}", RUN.fetch_add(1, Ordering::Relaxed))
}

/// A growth-event envelope record (the shape `http_source` produces), at `offset`.
pub fn envelope_record(tag: &str, i: u64) -> Record {
    let user = format!("{:08x}-0000-4000-8000-{:012x}", i % 97, i);
    let value = serde_json::json!({
        "idempotency_key": format!("harness-{tag}-{i}"),
        "trace_id": tag,
        "schema_version": 1,
        "source": "harness",
        "event_type": if i % 2 == 0 { "signup" } else { "page_view" },
        "user_id": user,
        "event_ts": format!("2026-11-23T10:{:02}:{:02}Z", (i / 60) % 60, i % 60),
        "payload": {"i": i},
        "ingested_at": "2026-11-23T11:00:00Z"
    });
    Record::new(value.to_string())
        .with_key(user)
        .with_timestamp_ms(1_795_000_000_000 + i as i64)
        .with_origin(format!("harness-{tag}"), 0, i as i64)
}

type RecordFn = Box<dyn Fn(&str, u64) -> Record + Send + Sync>;

/// Runs the contract checks against a sink plugin `P`.
pub struct SinkHarness<P: SinkPlugin> {
    config: P::Config,
    probe: Option<Box<dyn Probe>>,
    records: RecordFn,
    poison: Vec<Record>,
    batch: u64,
    _p: PhantomData<P>,
}

impl<P: SinkPlugin> SinkHarness<P> {
    /// A harness for `config`.
    pub fn new(config: P::Config) -> Self {
        Self {
            config,
            probe: None,
            records: Box::new(envelope_record),
            poison: Vec::new(),
            batch: 50,
            _p: PhantomData,
        }
    }

    /// How to read back what the sink stored (required for the durability checks).
    pub fn probe(mut self, probe: impl Probe + 'static) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// Records to write (default: [`envelope_record`]); `(run tag, index)` → record.
    pub fn records(mut self, f: impl Fn(&str, u64) -> Record + Send + Sync + 'static) -> Self {
        self.records = Box::new(f);
        self
    }

    /// Records the sink can never write; they must come back `Permanent`.
    pub fn poison(mut self, records: Vec<Record>) -> Self {
        self.poison = records;
        self
    }

    /// Records per batch (default 50).
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch = n.max(1);
        self
    }

    fn ctx() -> SinkContext {
        SinkContext {
            name: "harness".into(),
            group_id: "harness".into(),
            metrics: Metrics::new(),
            shutdown: Shutdown::never(),
        }
    }

    fn schema_check(report: &mut Report) {
        let schema = crate::registry::inline_schema::<P::Config>();
        let mut undocumented = Vec::new();
        match schema.get("properties").and_then(|p| p.as_object()) {
            Some(props) => {
                for (k, v) in props {
                    if v.get("description")
                        .and_then(|d| d.as_str())
                        .is_none_or(str::is_empty)
                    {
                        undocumented.push(k.clone());
                    }
                }
                if undocumented.is_empty() {
                    report.push(
                        "config_schema",
                        true,
                        format!("{} settings, all documented", props.len()),
                    );
                } else {
                    report.push(
                        "config_schema",
                        false,
                        format!("settings without a doc comment (they show up undocumented in `connectd schema`): {}", undocumented.join(", ")),
                    );
                }
            }
            None => report.push(
                "config_schema",
                schema.get("type") == Some(&serde_json::json!("object")),
                "config schema has no properties",
            ),
        }
    }

    /// Runs every check.
    pub async fn run(self) -> Report {
        let mut report = Report::default();
        Self::schema_check(&mut report);
        if let Err(issues) = P::validate(&self.config) {
            let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
            report.push(
                "validate",
                false,
                format!("the config does not validate: {}", text.join("; ")),
            );
            return report;
        }
        let Some(probe) = &self.probe else {
            report.push("acks_after_durable_write", false, "no probe given: call .probe(...) so the harness can read back what the sink stored");
            return report;
        };
        let mut sink = match P::build(self.config.clone(), Self::ctx()).await {
            Ok(s) => s,
            Err(e) => {
                report.push("build", false, format!("build failed: {e}"));
                return report;
            }
        };
        let tag = run_tag();
        let batch: Vec<Record> = (0..self.batch).map(|i| (self.records)(&tag, i)).collect();

        // 1. Outcomes per record and durability at acknowledgement.
        match sink.write(&batch).await {
            Ok(outcomes) => {
                report.push(
                    "outcomes_per_record",
                    outcomes.len() == batch.len(),
                    format!("{} outcomes for {} records", outcomes.len(), batch.len()),
                );
                let delivered: Vec<usize> = (0..outcomes.len())
                    .filter(|i| outcomes[*i].is_delivered())
                    .collect();
                match probe.stored(&batch).await {
                    Ok(counts) => {
                        let missing: Vec<String> = delivered
                            .iter()
                            .filter(|i| counts.get(**i).copied().unwrap_or(0) == 0)
                            .map(|i| describe(&batch[*i]))
                            .collect();
                        if delivered.len() < batch.len() {
                            report.push(
                                "acks_after_durable_write",
                                false,
                                format!(
                                    "only {} of {} valid records were Delivered",
                                    delivered.len(),
                                    batch.len()
                                ),
                            );
                        } else if missing.is_empty() {
                            report.push(
                                "acks_after_durable_write",
                                true,
                                format!(
                                    "{} records Delivered and readable when write returned",
                                    delivered.len()
                                ),
                            );
                        } else {
                            report.push(
                                "acks_after_durable_write",
                                false,
                                format!(
                                    "{} records were acknowledged (Delivered) but not stored when write returned — the sink acks before its write is durable, so a crash loses them; e.g. {}",
                                    missing.len(),
                                    missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                                ),
                            );
                        }
                    }
                    Err(e) => report.push(
                        "acks_after_durable_write",
                        false,
                        format!("probe failed: {e}"),
                    ),
                }
            }
            Err(e) => report.push("outcomes_per_record", false, format!("write failed: {e}")),
        }

        // 2. Redelivery of the same batch stores nothing twice.
        match sink.write(&batch).await {
            Ok(outcomes) => {
                let all_delivered = outcomes.iter().all(RecordOutcome::is_delivered);
                match probe.stored(&batch).await {
                    Ok(counts) => {
                        let twice: Vec<String> = counts
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| **c > 1)
                            .map(|(i, c)| format!("{} stored {c}×", describe(&batch[i])))
                            .collect();
                        report.push(
                            "idempotent_redelivery",
                            twice.is_empty() && all_delivered,
                            if !twice.is_empty() {
                                format!("a redelivered batch was stored again: {}", twice.iter().take(3).cloned().collect::<Vec<_>>().join(", "))
                            } else if !all_delivered {
                                "the redelivered batch was not answered Delivered (a redelivery must succeed, not fail)".into()
                            } else {
                                "second delivery of the batch stored nothing new".into()
                            },
                        );
                    }
                    Err(e) => {
                        report.push("idempotent_redelivery", false, format!("probe failed: {e}"))
                    }
                }
            }
            Err(e) => report.push(
                "idempotent_redelivery",
                false,
                format!("redelivery failed: {e}"),
            ),
        }

        // 3. Poison records are permanent and do not take good ones down.
        if self.poison.is_empty() {
            report.push(
                "error_classification",
                true,
                "no poison records given (skipped: pass .poison(...) to check)",
            );
        } else {
            let good: Vec<Record> = (self.batch..self.batch + 5)
                .map(|i| (self.records)(&tag, i))
                .collect();
            let mut mixed = good.clone();
            mixed.extend(self.poison.iter().cloned());
            match sink.write(&mixed).await {
                Ok(outcomes) if outcomes.len() == mixed.len() => {
                    let bad: Vec<String> = outcomes[good.len()..]
                        .iter()
                        .zip(&self.poison)
                        .filter(|(o, _)| !matches!(o, RecordOutcome::Permanent(_)))
                        .map(|(o, r)| format!("{} → {}", describe(r), outcome_name(o)))
                        .collect();
                    let good_ok = outcomes[..good.len()].iter().all(RecordOutcome::is_delivered);
                    report.push(
                        "error_classification",
                        bad.is_empty() && good_ok,
                        if !bad.is_empty() {
                            format!("poison records must be Permanent (they go to the DLQ); got {}", bad.join(", "))
                        } else if !good_ok {
                            "good records in a batch with poison were not Delivered (one bad record must not fail the batch)".into()
                        } else {
                            format!("{} poison records Permanent, {} good ones Delivered", self.poison.len(), good.len())
                        },
                    );
                }
                Ok(outcomes) => report.push("error_classification", false, format!("{} outcomes for {} records", outcomes.len(), mixed.len())),
                Err(e) => report.push(
                    "error_classification",
                    false,
                    format!("the batch with poison failed as a whole ({e}); classify per record with RecordOutcome::Permanent"),
                ),
            }
        }

        // 4. Close, reopen, redeliver: still once.
        match sink.close().await {
            Ok(()) => match P::build(self.config.clone(), Self::ctx()).await {
                Ok(mut again) => {
                    let r = again.write(&batch).await;
                    let counts = probe.stored(&batch).await;
                    let _ = again.close().await;
                    match (r, counts) {
                        (Ok(_), Ok(c)) if c.iter().all(|n| *n == 1) => report.push(
                            "close_and_reopen",
                            true,
                            "closed, rebuilt, redelivered: still stored once",
                        ),
                        (Ok(_), Ok(c)) => report.push(
                            "close_and_reopen",
                            false,
                            format!(
                                "after a restart the batch is stored {:?} times (want 1 each)",
                                c.iter().max()
                            ),
                        ),
                        (Err(e), _) => report.push(
                            "close_and_reopen",
                            false,
                            format!("write after reopen failed: {e}"),
                        ),
                        (_, Err(e)) => {
                            report.push("close_and_reopen", false, format!("probe failed: {e}"))
                        }
                    }
                }
                Err(e) => report.push("close_and_reopen", false, format!("rebuild failed: {e}")),
            },
            Err(e) => report.push("close_and_reopen", false, format!("close failed: {e}")),
        }
        report
    }
}

fn describe(r: &Record) -> String {
    r.origin
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "record".into())
}

fn outcome_name(o: &RecordOutcome) -> &'static str {
    match o {
        RecordOutcome::Delivered => "Delivered",
        RecordOutcome::Retriable(_) => "Retriable",
        RecordOutcome::Permanent(_) => "Permanent",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{ConfigIssue, ConnectorError, Sink};

    /// An in-memory "database" shared by the sinks and the probe, keyed by idempotency key.
    type Store = Arc<Mutex<HashMap<String, usize>>>;

    fn key(r: &Record) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&r.value).ok()?["idempotency_key"]
            .as_str()
            .map(str::to_string)
    }

    static STORES: std::sync::LazyLock<Mutex<HashMap<String, Store>>> =
        std::sync::LazyLock::new(Default::default);

    fn store(name: &str) -> Store {
        STORES
            .lock()
            .map(|mut g| g.entry(name.to_string()).or_default().clone())
            .unwrap_or_default()
    }

    /// Memory sink config.
    #[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
    struct MemConfig {
        /// Store name.
        store: String,
        /// Acknowledge first and write later (the bug the harness must catch).
        broken: bool,
    }

    struct MemSink {
        store: Store,
        broken: bool,
        pending: Vec<String>,
    }

    #[async_trait]
    impl Sink for MemSink {
        async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
            // A broken sink "writes" the previous batch now and acknowledges this one unwritten.
            let mut g = self
                .store
                .lock()
                .map_err(|_| ConnectorError::retriable("lock", "poisoned"))?;
            for k in self.pending.drain(..) {
                let e = g.entry(k).or_insert(0);
                *e = 1;
            }
            Ok(batch
                .iter()
                .map(|r| match key(r) {
                    Some(k) if self.broken => {
                        self.pending.push(k);
                        RecordOutcome::Delivered
                    }
                    Some(k) => {
                        g.entry(k).or_insert(1);
                        RecordOutcome::Delivered
                    }
                    None => RecordOutcome::Permanent(ConnectorError::permanent(
                        "invalid_json",
                        "no key",
                    )),
                })
                .collect())
        }
    }

    struct MemPlugin;

    #[async_trait]
    impl SinkPlugin for MemPlugin {
        const TYPE: &'static str = "mem";
        const DESCRIPTION: &'static str = "test";
        type Config = MemConfig;
        fn validate(_: &MemConfig) -> Result<(), Vec<ConfigIssue>> {
            Ok(())
        }
        async fn build(c: MemConfig, _: SinkContext) -> Result<Box<dyn Sink>, ConnectorError> {
            Ok(Box::new(MemSink {
                store: store(&c.store),
                broken: c.broken,
                pending: vec![],
            }))
        }
    }

    struct MemProbe(Store);

    #[async_trait]
    impl Probe for MemProbe {
        async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String> {
            let g = self.0.lock().map_err(|e| e.to_string())?;
            Ok(records
                .iter()
                .map(|r| key(r).and_then(|k| g.get(&k).copied()).unwrap_or(0))
                .collect())
        }
    }

    #[tokio::test]
    async fn a_correct_sink_passes_every_check() {
        let name = run_tag();
        let report = SinkHarness::<MemPlugin>::new(MemConfig {
            store: name.clone(),
            broken: false,
        })
        .probe(MemProbe(store(&name)))
        .poison(vec![Record::new("not json").with_origin("t", 0, 1)])
        .run()
        .await;
        report.assert_passed();
        assert_eq!(report.checks.len(), 6, "{report}");
    }

    #[tokio::test]
    async fn a_sink_that_acks_before_writing_fails_with_a_clear_message() {
        let name = run_tag();
        let report = SinkHarness::<MemPlugin>::new(MemConfig {
            store: name.clone(),
            broken: true,
        })
        .probe(MemProbe(store(&name)))
        .run()
        .await;
        assert!(!report.passed());
        let c = report.check("acks_after_durable_write").expect("check ran");
        assert!(!c.passed);
        assert!(
            c.detail
                .contains("acknowledged (Delivered) but not stored when write returned"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("a crash loses them"), "{}", c.detail);
        let text = report.to_string();
        assert!(text.contains("[FAIL] acks_after_durable_write"), "{text}");
    }

    #[test]
    fn undocumented_settings_are_reported() {
        #[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Undocumented {
            x: u32,
        }
        struct P;
        #[async_trait]
        impl SinkPlugin for P {
            const TYPE: &'static str = "p";
            const DESCRIPTION: &'static str = "p";
            type Config = Undocumented;
            async fn build(
                _: Undocumented,
                _: SinkContext,
            ) -> Result<Box<dyn Sink>, ConnectorError> {
                Err(ConnectorError::permanent("no", "no"))
            }
        }
        let mut r = Report::default();
        SinkHarness::<P>::schema_check(&mut r);
        assert!(!r.passed());
        assert!(r.checks[0].detail.contains("x"), "{}", r.checks[0].detail);
    }
}
