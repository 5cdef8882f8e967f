//! The compliance harness for sinks (feature `testing`).
//!
//! It builds your sink from a config and runs the contract checks of connectd's delivery
//! guarantee against the real system your sink writes to, then reports which failed and why:
//!
//! | check | what it proves |
//! | --- | --- |
//! | `config_schema` | the config has a JSON Schema and every setting is documented |
//! | `reserved_settings` | the config declares none of the settings the runtime adds to every sink block (such a plugin is refused at registration) |
//! | `outcomes_per_record` | `write` answers exactly one outcome per record |
//! | `acks_after_durable_write` | every record answered `Delivered` is readable by the probe when `write` returns |
//! | `idempotent_redelivery` | writing the same batch again stores nothing twice |
//! | `error_classification` | records that can never be written are `Permanent` (→ DLQ), not retried forever, and do not take good records down — **skipped** without [`poison`](SinkHarness::poison) records |
//! | `survives_unclean_drop` | a sink dropped without `close` (a crash of the process) has kept what it acknowledged, and a fresh instance (after your [`reopen`](SinkHarness::reopen) hook, if any) stores a redelivery once |
//! | `concurrent_instances` | two instances built and writing at once, each its own records (as `max_in_flight: 2` runs them in one process), store every record once — **skipped** for [`SINGLE_INSTANCE`](crate::SinkPlugin::SINGLE_INSTANCE) plugins |
//! | `close_and_reopen` | `close` succeeds, a rebuilt sink sees the earlier writes (no duplicates after a restart) |
//!
//! Not checked, and said so in every report: durability across a power loss or an OS crash
//! (the harness cannot pull the plug; use `fsync` or your store's durable commit), and
//! behaviour across several processes (run the pipeline test for that).
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
    /// Passed? (A skipped check counts as not failed.)
    pub passed: bool,
    /// Not run (the detail says why and how to run it).
    pub skipped: bool,
    /// Why it failed (or what it saw).
    pub detail: String,
}

/// What the harness cannot check, printed with every report.
pub const NOT_CHECKED: &[&str] = &[
    "durability across a power loss or OS crash (the harness cannot pull the plug: fsync or use your store's durable commit)",
    "several connectd processes sharing the partitions (run your pipeline test for that)",
];

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
            skipped: false,
            detail: detail.into(),
        });
    }

    fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            name,
            passed: true,
            skipped: true,
            detail: detail.into(),
        });
    }

    /// True when no check failed (skipped ones included: see [`skipped`](Self::skipped)).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The checks that were not run.
    pub fn skipped(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| c.skipped).collect()
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// The result of check `name`.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Panics with the report when a check failed; otherwise prints it (skipped checks and
    /// what was not checked included) to stderr, where `cargo test -- --nocapture` shows it.
    pub fn assert_passed(&self) {
        assert!(self.passed(), "sink contract violated:\n{self}");
        eprint!("{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let mark = match (c.passed, c.skipped) {
                (_, true) => "skip",
                (true, false) => "pass",
                (false, false) => "FAIL",
            };
            writeln!(f, "[{mark}] {}: {}", c.name, c.detail)?;
        }
        for n in NOT_CHECKED {
            writeln!(f, "[not checked] {n}")?;
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let skipped = self.checks.iter().filter(|c| c.skipped).count();
        writeln!(
            f,
            "harness: {} passed, {failed} failed, {skipped} skipped",
            self.checks.len() - failed - skipped
        )
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
type ReopenFn = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Runs the contract checks against a sink plugin `P`.
pub struct SinkHarness<P: SinkPlugin> {
    config: P::Config,
    probe: Option<Box<dyn Probe>>,
    records: RecordFn,
    poison: Vec<Record>,
    batch: u64,
    reopen: Option<ReopenFn>,
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
            reopen: None,
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

    /// Runs after a sink was dropped without `close` and before a fresh one is built, e.g. to
    /// restart an embedded store or reopen a file the way a new process would.
    pub fn reopen<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.reopen = Some(Box::new(move || Box::pin(f())));
        self
    }

    fn ctx() -> SinkContext {
        SinkContext::new("harness", "harness", Metrics::new(), Shutdown::never())
    }

    fn reserved_check(report: &mut Report) {
        match crate::PluginDescriptor::sink::<P>().check_reserved() {
            Ok(()) => report.push(
                "reserved_settings",
                true,
                "no setting clashes with the runtime's own",
            ),
            Err(e) => report.push("reserved_settings", false, e.to_string()),
        }
    }

    /// Writes `batch`, drops the sink without `close`, runs the reopen hook, and checks what
    /// was acknowledged is there and a fresh instance stores a redelivery once.
    async fn unclean_drop_check(&self, report: &mut Report, probe: &dyn Probe, batch: &[Record]) {
        const NAME: &str = "survives_unclean_drop";
        let mut sink = match P::build(self.config.clone(), Self::ctx()).await {
            Ok(s) => s,
            Err(e) => return report.push(NAME, false, format!("build failed: {e}")),
        };
        let outcomes = match sink.write(batch).await {
            Ok(o) => o,
            Err(e) => return report.push(NAME, false, format!("write failed: {e}")),
        };
        // A crash: no close, no flush — whatever the sink buffered and did not write is lost.
        drop(sink);
        if let Some(reopen) = &self.reopen {
            if let Err(e) = reopen().await {
                return report.push(NAME, false, format!("the reopen hook failed: {e}"));
            }
        }
        let lost: Vec<String> = match probe.stored(batch).await {
            Ok(counts) => outcomes
                .iter()
                .zip(batch)
                .zip(counts)
                .filter(|((o, _), c)| o.is_delivered() && *c == 0)
                .map(|((_, r), _)| describe(r))
                .collect(),
            Err(e) => return report.push(NAME, false, format!("probe failed: {e}")),
        };
        if !lost.is_empty() {
            return report.push(NAME, false, format!(
                "{} acknowledged records are gone after the sink was dropped without close (buffered, written only on close?); e.g. {}",
                lost.len(),
                lost.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut fresh = match P::build(self.config.clone(), Self::ctx()).await {
            Ok(s) => s,
            Err(e) => {
                return report.push(NAME, false, format!("rebuild after the drop failed: {e}"))
            }
        };
        let redelivered = fresh.write(batch).await;
        let counts = probe.stored(batch).await;
        let _ = fresh.close().await;
        match (redelivered, counts) {
            (Ok(_), Ok(c)) if c.iter().all(|n| *n == 1) => report.push(
                NAME,
                true,
                format!("{} records kept after a drop without close; a fresh instance stored the redelivery once", batch.len()),
            ),
            (Ok(_), Ok(c)) => report.push(
                NAME,
                false,
                format!("after the drop and a redelivery records are stored up to {:?} times (want 1)", c.iter().max()),
            ),
            (Err(e), _) => report.push(NAME, false, format!("write after the drop failed: {e}")),
            (_, Err(e)) => report.push(NAME, false, format!("probe failed: {e}")),
        }
    }

    /// Two instances at once, on their own records and on the same ones.
    async fn concurrent_check(&self, report: &mut Report, probe: &dyn Probe, tag: &str) {
        const NAME: &str = "concurrent_instances";
        if P::SINGLE_INSTANCE {
            return report.skip(
                NAME,
                "the plugin declares SINGLE_INSTANCE: the runtime never runs two instances at once",
            );
        }
        // As the runtime runs them in one process: each instance its own partitions, at once.
        let base = self.batch * 10;
        let own_a: Vec<Record> = (base..base + self.batch)
            .map(|i| (self.records)(tag, i))
            .collect();
        // Instance b's records sit on the next partition: the runtime never gives one
        // partition to two instances of a process.
        let own_b: Vec<Record> = (base + self.batch..base + 2 * self.batch)
            .map(|i| {
                let mut r = (self.records)(tag, i);
                if let Some(o) = r.origin.as_mut() {
                    o.partition += 1;
                }
                r
            })
            .collect();
        let (a, b) = tokio::join!(
            P::build(self.config.clone(), Self::ctx().with_instance(0, 2)),
            P::build(self.config.clone(), Self::ctx().with_instance(1, 2))
        );
        let (mut a, mut b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return report.push(NAME, false, format!(
                "building two instances at once failed ({e}); if the plugin cannot run as several instances, set SINGLE_INSTANCE"
            )),
        };
        let (ra, rb) = tokio::join!(a.write(&own_a), b.write(&own_b));
        let (ra2, rb2) = tokio::join!(a.write(&own_a), b.write(&own_b));
        let _ = tokio::join!(a.close(), b.close());
        for r in [ra, rb, ra2, rb2] {
            match r {
                Ok(o) if o.iter().all(RecordOutcome::is_delivered) => {}
                Ok(_) => {
                    return report.push(
                        NAME,
                        false,
                        "a record written by one of two concurrent instances was not Delivered",
                    )
                }
                Err(e) => {
                    return report.push(NAME, false, format!("a concurrent write failed: {e}"))
                }
            }
        }
        let all: Vec<Record> = own_a.into_iter().chain(own_b).collect();
        match probe.stored(&all).await {
            Ok(c) => {
                let wrong: Vec<String> = c
                    .iter()
                    .zip(&all)
                    .filter(|(n, _)| **n != 1)
                    .map(|(n, r)| format!("{} stored {n}×", describe(r)))
                    .collect();
                if wrong.is_empty() {
                    report.push(
                        NAME,
                        true,
                        format!(
                            "two instances at once: {} records stored once each",
                            all.len()
                        ),
                    );
                } else {
                    report.push(NAME, false, format!(
                        "with two instances writing at once {} records are not stored exactly once (e.g. {}); if the plugin cannot run as several instances, set SINGLE_INSTANCE",
                        wrong.len(),
                        wrong.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            Err(e) => report.push(NAME, false, format!("probe failed: {e}")),
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
        Self::reserved_check(&mut report);
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
            report.skip(
                "error_classification",
                "no poison records given: pass .poison(...) with records your sink can never store",
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

        // 5. A crash (drop without close), then a fresh instance; 6. two instances at once.
        // (Every earlier instance is closed: a SINGLE_INSTANCE sink never has two open.)
        let dropped: Vec<Record> = (self.batch * 2..self.batch * 3)
            .map(|i| (self.records)(&tag, i))
            .collect();
        self.unclean_drop_check(&mut report, probe.as_ref(), &dropped)
            .await;
        self.concurrent_check(&mut report, probe.as_ref(), &tag)
            .await;
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
        /// Hold the store exclusively while open, like a file lock (breaks with two instances).
        #[serde(default)]
        exclusive: bool,
    }

    static OPEN: std::sync::LazyLock<Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);

    struct MemSink {
        store: Store,
        broken: bool,
        lock: Option<String>,
        pending: Vec<String>,
    }

    impl Drop for MemSink {
        fn drop(&mut self) {
            if let (Some(l), Ok(mut open)) = (&self.lock, OPEN.lock()) {
                open.remove(l);
            }
        }
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
            if c.exclusive {
                let mut open = OPEN
                    .lock()
                    .map_err(|_| ConnectorError::retriable("lock", "poisoned"))?;
                if !open.insert(c.store.clone()) {
                    return Err(ConnectorError::permanent(
                        "locked",
                        "the store is open in another instance",
                    ));
                }
            }
            Ok(Box::new(MemSink {
                store: store(&c.store),
                broken: c.broken,
                lock: c.exclusive.then(|| c.store.clone()),
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

    fn mem_harness(broken: bool, exclusive: bool) -> SinkHarness<MemPlugin> {
        let name = run_tag();
        SinkHarness::<MemPlugin>::new(MemConfig {
            store: name.clone(),
            broken,
            exclusive,
        })
        .probe(MemProbe(store(&name)))
    }

    #[tokio::test]
    async fn a_correct_sink_passes_every_check() {
        let report = mem_harness(false, false)
            .poison(vec![Record::new("not json").with_origin("t", 0, 1)])
            .run()
            .await;
        report.assert_passed();
        assert_eq!(report.checks.len(), 9, "{report}");
        assert!(report.skipped().is_empty(), "{report}");
    }

    #[tokio::test]
    async fn a_sink_that_acks_before_writing_fails_with_a_clear_message() {
        let report = mem_harness(true, false).run().await;
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

    #[tokio::test]
    async fn a_check_without_its_input_is_reported_skipped_not_passed() {
        let report = mem_harness(false, false).run().await;
        assert!(report.passed(), "{report}");
        let skipped: Vec<&str> = report.skipped().iter().map(|c| c.name).collect();
        assert_eq!(skipped, vec!["error_classification"]);
        let text = report.to_string();
        assert!(text.contains("[skip] error_classification"), "{text}");
        assert!(text.contains("1 skipped"), "{text}");
        assert!(
            text.contains("[not checked] durability across a power loss"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_sink_that_locks_its_store_fails_with_two_instances() {
        let report = mem_harness(false, true).run().await;
        let c = report.check("concurrent_instances").expect("ran");
        assert!(!c.passed, "{report}");
        assert!(c.detail.contains("SINGLE_INSTANCE"), "{}", c.detail);
    }

    #[tokio::test]
    async fn the_reopen_hook_runs_between_the_drop_and_the_fresh_instance() {
        let report = mem_harness(false, false)
            .reopen(|| async { Err("the store did not come back".to_string()) })
            .run()
            .await;
        let c = report.check("survives_unclean_drop").expect("ran");
        assert!(!c.passed);
        assert!(
            c.detail.contains("the store did not come back"),
            "{}",
            c.detail
        );
    }
}
