//! The runtime's delivery contract against the real broker, with exact counts (issue 3).
//!
//! Most tests run the real `connectd` binary as a child process, so that SIGKILL and SIGTERM
//! are real. The failure-injection test runs the runtime in-process with a test sink.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use common::*;
use connectd::config::Config;
use connectd::Builtin;
use connector_core::prelude::*;
use connector_core::ConnectorError;

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:07}")).collect()
}

fn assert_exactly_once(got: &[String], expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in got {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|v| !counts.contains_key(v.as_str()))
        .take(5)
        .collect();
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        missing.is_empty(),
        "missing {} records, e.g. {missing:?}",
        expected.len() - counts.len().min(expected.len())
    );
    assert!(dups.is_empty(), "duplicates, e.g. {dups:?}");
    assert_eq!(got.len(), expected.len());
}

fn pipeline_config(input: &str, copy: &str, out: &std::path::Path, max_records: usize) -> String {
    let out = out.display();
    format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 10s
topics:
  - name: {copy}
    partitions: 3
connectors:
  - name: mirror
    type: forward
    input: {input}
    output: {copy}
    group_id: {input}-mirror
    batch:
      max_records: {max_records}
      linger: 20ms
  - name: archive
    type: file_sink
    input: {input}
    group_id: {input}-archive
    path: {out}
    batch:
      max_records: {max_records}
      linger: 20ms
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_and_file_sink_deliver_every_record_and_commit_to_the_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rt-in");
    let copy = unique("rt-copy");
    create_topic(&input, 4).await;
    let vals = values("a", 5000);
    let ends = produce(&input, &vals).await;
    let out = dir.path().join("out.jsonl");
    let cfg = write_file(
        dir.path(),
        "c.yaml",
        &pipeline_config(&input, &copy, &out, 500),
    );
    let c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
    let n = wait_lines(&out, vals.len(), Duration::from_secs(90)).await;
    assert_eq!(n, vals.len(), "log:\n{}", c.log_text());
    wait_committed(
        &format!("{input}-archive"),
        &input,
        &ends,
        Duration::from_secs(30),
    )
    .await;
    wait_committed(
        &format!("{input}-mirror"),
        &input,
        &ends,
        Duration::from_secs(30),
    )
    .await;
    assert_exactly_once(&file_values(&out), &vals);
    let copied: Vec<String> = read_all(&copy, vals.len(), Duration::from_secs(60))
        .await
        .into_iter()
        .map(|c| c.value)
        .collect();
    assert_exactly_once(&copied, &vals);
}

// ---------- in-process failure injection ----------

/// Shared between a test and its `probe_sink` instances.
#[derive(Default)]
struct Probe {
    fail_first_writes: Mutex<u32>,
    delivered: Mutex<HashMap<String, u32>>,
    writes: Mutex<u32>,
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    probe: String,
}

struct ProbeSink(Arc<Probe>);

#[async_trait]
impl Sink for ProbeSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        *self.0.writes.lock().expect("lock") += 1;
        {
            let mut f = self.0.fail_first_writes.lock().expect("lock");
            if *f > 0 {
                *f -= 1;
                return Err(ConnectorError::retriable(
                    "connection_refused",
                    "injected outage",
                ));
            }
        }
        let mut d = self.0.delivered.lock().expect("lock");
        Ok(batch
            .iter()
            .map(|r| {
                let v = r.value_str().unwrap_or_default().to_string();
                if v.starts_with("poison") {
                    RecordOutcome::Permanent(ConnectorError::permanent(
                        "poison_value",
                        format!("refusing {v}"),
                    ))
                } else if v.ends_with("7") && *d.get(&format!("retried:{v}")).unwrap_or(&0) == 0 {
                    // Every value ending in 7 fails retriably once, alone.
                    d.insert(format!("retried:{v}"), 1);
                    RecordOutcome::Retriable(ConnectorError::retriable(
                        "timeout",
                        "injected per-record timeout",
                    ))
                } else {
                    *d.entry(v).or_default() += 1;
                    RecordOutcome::Delivered
                }
            })
            .collect())
    }
}

struct ProbePlugin;

#[async_trait]
impl SinkPlugin for ProbePlugin {
    const TYPE: &'static str = "probe_sink";
    const DESCRIPTION: &'static str = "test sink";
    type Config = ProbeConfig;
    async fn build(
        config: ProbeConfig,
        _ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let probe = PROBES
            .lock()
            .expect("lock")
            .get(&config.probe)
            .cloned()
            .unwrap_or_default();
        Ok(Box::new(ProbeSink(probe)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_failures_are_retried_and_poison_goes_to_the_dlq_with_every_header() {
    let input = unique("rt-flaky");
    let dlq = unique("rt-dlq");
    create_topic(&input, 3).await;
    let mut vals = values("ok", 3000);
    let poison: Vec<String> = (0..7).map(|i| format!("poison-{i}")).collect();
    for (i, p) in poison.iter().enumerate() {
        vals.insert(i * 400 + 13, p.clone());
    }
    let ends = produce(&input, &vals).await;
    let probe_id = unique("probe");
    let probe = Arc::new(Probe::default());
    *probe.fail_first_writes.lock().expect("lock") = 4;
    PROBES
        .lock()
        .expect("lock")
        .insert(probe_id.clone(), probe.clone());

    let mut registry = connector_core::Registry::builtin();
    registry.register_sink::<ProbePlugin>();
    let text = format!(
        "kafka:\n  brokers: {}\nadmin:\n  enabled: false\nconnectors:\n  - name: probe\n    type: probe_sink\n    probe: {probe_id}\n    input: {input}\n    dlq_topic: {dlq}\n    retry:\n      initial_backoff: 10ms\n      max_backoff: 100ms\n    batch:\n      max_records: 250\n      linger: 10ms\n",
        brokers()
    );
    let config = Config::parse(&text, &registry, |_| None).expect("valid config");
    let (trigger, shutdown) = Shutdown::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(connectd::runtime::run_until(
        config,
        trigger,
        shutdown,
        async move {
            let _ = stop_rx.await;
        },
    ));

    wait_committed("connectd-probe", &input, &ends, Duration::from_secs(90)).await;
    let _ = stop_tx.send(());
    run.await.expect("join").expect("runtime ok");

    let delivered = probe.delivered.lock().expect("lock").clone();
    let good: Vec<&String> = vals.iter().filter(|v| !v.starts_with("poison")).collect();
    for v in &good {
        assert_eq!(
            delivered.get(*v),
            Some(&1),
            "{v} must be delivered exactly once"
        );
    }
    assert_eq!(
        delivered
            .keys()
            .filter(|k| !k.starts_with("retried:"))
            .count(),
        good.len()
    );
    assert!(
        *probe.writes.lock().expect("lock") > 12,
        "outage retries and per-record retries happened"
    );

    let letters = read_all(&dlq, poison.len(), Duration::from_secs(30)).await;
    let got: HashSet<String> = letters.iter().map(|c| c.value.clone()).collect();
    assert_eq!(got, poison.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(
        letters.len(),
        poison.len(),
        "each poison record dead-lettered once"
    );
    for l in &letters {
        let h = &l.headers;
        assert_eq!(h["connectd.error.class"], "poison_value");
        assert_eq!(h["connectd.error.message"], format!("refusing {}", l.value));
        assert_eq!(h["connectd.connector"], "probe");
        assert_eq!(h["connectd.original.topic"], input);
        assert!(h["connectd.original.partition"].parse::<i32>().is_ok());
        assert!(h["connectd.original.offset"].parse::<i64>().is_ok());
        assert!(h["connectd.attempts"].parse::<u32>().is_ok_and(|a| a >= 1));
        assert!(h["connectd.failed_at"].ends_with('Z'));
    }
}

// ---------- crashes, rebalances, pause, shutdown (child processes) ----------

fn sink_config(input: &str, group: &str, max_records: usize) -> String {
    format!(
        "kafka:\n  brokers: ${{KAFKA_BROKERS}}\nadmin:\n  listen: ${{CONNECTD_ADMIN}}\nshutdown_timeout: 10s\n\
connectors:\n  - name: archive\n    type: file_sink\n    input: {input}\n    group_id: {group}\n    path: ${{OUT}}\n    max_in_flight: 2\n    batch:\n      max_records: {max_records}\n      linger: 20ms\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_three_times_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rt-kill");
    let group = unique("g-kill");
    create_topic(&input, 6).await;
    let vals = values("k", 30000);
    let ends = produce(&input, &vals).await;
    let out = dir.path().join("out.jsonl");
    let cfg = write_file(dir.path(), "c.yaml", &sink_config(&input, &group, 100));
    let env = [("OUT", out.display().to_string())];
    for stop_at in [3000, 11000, 20000] {
        let mut c = Connectd::start(&cfg, &dir.path().join("log"), &env);
        let n = wait_lines(&out, stop_at, Duration::from_secs(90)).await;
        assert!(
            n >= stop_at,
            "progress stalled at {n}; log:\n{}",
            c.log_text()
        );
        c.kill9();
    }
    let _c = Connectd::start(&cfg, &dir.path().join("log"), &env);
    wait_committed(&group, &input, &ends, Duration::from_secs(120)).await;
    assert_exactly_once(&file_values(&out), &vals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_partitions_and_one_takes_over_when_the_other_is_killed() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rt-two");
    let group = unique("g-two");
    create_topic(&input, 6).await;
    let vals = values("t", 20000);
    let ends = produce(&input, &vals).await;
    let cfg = write_file(dir.path(), "c.yaml", &sink_config(&input, &group, 50));
    let out_a = dir.path().join("a.jsonl");
    let out_b = dir.path().join("b.jsonl");
    let mut a = Connectd::start(
        &cfg,
        &dir.path().join("log-a"),
        &[("OUT", out_a.display().to_string())],
    );
    wait_lines(&out_a, 1000, Duration::from_secs(60)).await;
    let b = Connectd::start(
        &cfg,
        &dir.path().join("log-b"),
        &[("OUT", out_b.display().to_string())],
    );
    // Wait until B got partitions of its own and wrote something.
    let nb = wait_lines(&out_b, 500, Duration::from_secs(60)).await;
    assert!(
        nb >= 500,
        "second process never got partitions; log:\n{}",
        b.log_text()
    );
    a.kill9();
    wait_committed(&group, &input, &ends, Duration::from_secs(120)).await;
    let mut all = file_values(&out_a);
    let from_a = all.len();
    all.extend(file_values(&out_b));
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), vals.len(), "every record delivered");
    assert!(vals.iter().all(|v| distinct.contains(v)));
    // Redelivery is allowed only for what A had written but not committed when killed: at
    // most one batch per slot plus the commit interval's worth.
    let redelivered = all.len() - vals.len();
    eprintln!(
        "A wrote {from_a}, B wrote {}, redelivered after the kill: {redelivered}",
        all.len() - from_a
    );
    assert!(from_a > 0 && all.len() > from_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_admin_api_and_metrics_are_exposed() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rt-pause");
    let group = unique("g-pause");
    create_topic(&input, 2).await;
    let out = dir.path().join("out.jsonl");
    let cfg = write_file(dir.path(), "c.yaml", &sink_config(&input, &group, 100));
    let c = Connectd::start(
        &cfg,
        &dir.path().join("log"),
        &[("OUT", out.display().to_string())],
    );
    let first = values("p1", 1000);
    produce(&input, &first).await;
    assert_eq!(wait_lines(&out, 1000, Duration::from_secs(60)).await, 1000);

    let (code, body) = c.post("/connectors/archive/pause").await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, status) = c.get("/connectors/archive").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["state"], "paused");
    let second = values("p2", 1000);
    let ends = {
        let mut e = produce(&input, &second).await;
        for (p, o) in committed(&group, &input, &e) {
            e.entry(p).or_insert(o);
        }
        e
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        file_values(&out).len(),
        1000,
        "nothing delivered while paused"
    );

    let (code, _) = c.post("/connectors/archive/resume").await;
    assert_eq!(code, 200);
    assert_eq!(wait_lines(&out, 2000, Duration::from_secs(60)).await, 2000);
    wait_committed(&group, &input, &ends, Duration::from_secs(30)).await;
    let mut all = first.clone();
    all.extend(second);
    assert_exactly_once(&file_values(&out), &all);

    let (code, metrics) = c.get("/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "connectd_records_in_total{connector=\"archive\"} 2000",
        "connectd_records_out_total{connector=\"archive\"} 2000",
        "connectd_dlq_records_total{connector=\"archive\"} 0",
        "connectd_retries_total{connector=\"archive\"}",
        "connectd_batch_records_bucket{connector=\"archive\",le=",
        "connectd_batch_seconds_bucket{connector=\"archive\",le=",
        "connectd_connector_state{connector=\"archive\",state=\"running\"} 1",
        "connectd_consumer_lag{connector=\"archive\",topic=",
    ] {
        assert!(metrics.contains(series), "missing {series} in:\n{metrics}");
    }
    // The time the connector's tasks were polled, and the runtime's busy time to set it against.
    let value = |prefix: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
    };
    let busy = value("connectd_connector_busy_microseconds_total{connector=\"archive\"}");
    let runtime = value("connectd_runtime_busy_microseconds");
    assert!(
        busy > 0 && runtime > 0,
        "busy {busy} µs, runtime {runtime} µs"
    );
    assert!(value("connectd_connector_polls_total{connector=\"archive\"}") > 0);
    let (code, _) = c.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(c.get("/connectors/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_backlog_exits_0_in_time_and_the_restart_neither_skips_nor_repeats() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = unique("rt-term");
    let group = unique("g-term");
    create_topic(&input, 3).await;
    let vals = values("s", 30000);
    let ends = produce(&input, &vals).await;
    let out = dir.path().join("out.jsonl");
    let cfg = write_file(dir.path(), "c.yaml", &sink_config(&input, &group, 100));
    let env = [("OUT", out.display().to_string())];
    let mut c = Connectd::start(&cfg, &dir.path().join("log"), &env);
    wait_lines(&out, 5000, Duration::from_secs(60)).await;
    c.signal("TERM");
    let (code, took) = c.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "exit code; log:\n{}", c.log_text());
    assert!(
        took < Duration::from_secs(15),
        "shutdown took {took:?} (deadline 10 s)"
    );
    let written = file_values(&out).len();
    assert!(
        written < vals.len(),
        "the backlog was not finished before SIGTERM"
    );
    // Everything written was committed at shutdown: the restart starts right after it.
    let c2 = Connectd::start(&cfg, &dir.path().join("log"), &env);
    wait_committed(&group, &input, &ends, Duration::from_secs(120)).await;
    assert_exactly_once(&file_values(&out), &vals);
    // Nothing written before SIGTERM came back: file_sink skipped no record as already written.
    let (_, metrics) = c2.get("/metrics").await;
    assert!(
        metrics.contains("connectd_file_sink_redelivered_total{connector=\"archive\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "connectd_records_in_total{{connector=\"archive\"}} {}",
            vals.len() - written
        )),
        "{metrics}"
    );
}
