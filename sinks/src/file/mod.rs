//! `file_sink`: appends records as JSON lines to a local file and fsyncs once per batch.
//!
//! Each line is an object `{"topic", "partition", "offset", "timestamp_ms", "key", "value",
//! "headers"}`; `value` is embedded as JSON when it parses, as a string otherwise (`key` and
//! header values are strings, lossy UTF-8).
//!
//! **Idempotent under redelivery**: on open the sink reads the file and remembers the highest
//! offset written per topic-partition; a redelivered record at or below it is acknowledged
//! without being written again. Records without an origin are always written.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Settings of a `file_sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to; created with its parent folders when missing.
    pub path: PathBuf,
    /// fsync the file after every batch (default true). Turning it off trades durability on
    /// power loss for speed; offsets are then committed before the data is on disk.
    #[serde(default = "default_true")]
    pub fsync: bool,
}

fn default_true() -> bool {
    true
}

/// The `file_sink`.
pub struct FileSink {
    file: std::fs::File,
    fsync: bool,
    high_water: HashMap<(String, i32), i64>,
    lines: Counter,
    skipped: Counter,
}

fn io_err(e: std::io::Error, what: &str) -> ConnectorError {
    ConnectorError::retriable("io_error", format!("{what}: {e}"))
}

fn line_for(record: &Record) -> Value {
    let value = match serde_json::from_slice::<Value>(&record.value) {
        Ok(v) => v,
        Err(_) => Value::String(String::from_utf8_lossy(&record.value).into_owned()),
    };
    let headers: Map<String, Value> = record
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    json!({
        "topic": record.origin.as_ref().map(|o| o.topic.to_string()),
        "partition": record.origin.as_ref().map(|o| o.partition),
        "offset": record.origin.as_ref().map(|o| o.offset),
        "timestamp_ms": record.timestamp_ms,
        "key": record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": value,
        "headers": headers,
    })
}

/// Reads the highest offset per topic-partition already in the file.
fn scan(path: &PathBuf) -> std::io::Result<HashMap<(String, i32), i64>> {
    let mut high = HashMap::new();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(high),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(file).lines() {
        let line = line?;
        // A torn last line (crash mid-write before fsync) is ignored: its record was never
        // acknowledged, so it will be redelivered and written again in full.
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let (Some(t), Some(p), Some(o)) = (
            v["topic"].as_str(),
            v["partition"].as_i64(),
            v["offset"].as_i64(),
        ) {
            let e = high.entry((t.to_string(), p as i32)).or_insert(o);
            *e = (*e).max(o);
        }
    }
    Ok(high)
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &[Record]) -> Result<Vec<RecordOutcome>, ConnectorError> {
        let mut buf = Vec::with_capacity(batch.len() * 128);
        let mut pending = Vec::new();
        let mut skipped = 0;
        for record in batch {
            if let Some(o) = &record.origin {
                let key = (o.topic.to_string(), o.partition);
                if self.high_water.get(&key).is_some_and(|h| o.offset <= *h) {
                    skipped += 1;
                    continue;
                }
                pending.push((key, o.offset));
            }
            serde_json::to_writer(&mut buf, &line_for(record))
                .map_err(|e| ConnectorError::permanent("serialize", e.to_string()))?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf).map_err(|e| io_err(e, "append"))?;
        if self.fsync {
            self.file.sync_data().map_err(|e| io_err(e, "fsync"))?;
        }
        for (key, offset) in pending {
            let e = self.high_water.entry(key).or_insert(offset);
            *e = (*e).max(offset);
        }
        self.lines.add((batch.len() - skipped) as u64);
        self.skipped.add(skipped as u64);
        Ok(vec![RecordOutcome::Delivered; batch.len()])
    }

    async fn close(&mut self) -> Result<(), ConnectorError> {
        self.file
            .sync_all()
            .map_err(|e| io_err(e, "fsync on close"))
    }
}

/// Factory of [`FileSink`].
pub struct FileSinkPlugin;

#[async_trait]
impl SinkPlugin for FileSinkPlugin {
    const TYPE: &'static str = "file_sink";
    const DESCRIPTION: &'static str =
        "Appends records as JSON lines to a local file, fsync per batch";
    type Config = FileSinkConfig;

    fn validate(config: &FileSinkConfig) -> Result<(), Vec<ConfigIssue>> {
        if config.path.as_os_str().is_empty() {
            return Err(vec![ConfigIssue::new("path", "must not be empty")]);
        }
        Ok(())
    }

    async fn build(
        config: FileSinkConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let path = config.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_err(e, "create folder"))?;
        }
        let high_water = scan(&path).map_err(|e| io_err(e, "read existing file"))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(e, "open"))?;
        Ok(Box::new(FileSink {
            file,
            fsync: config.fsync,
            high_water,
            lines: ctx.metrics.counter(
                "connectd_file_sink_lines_total",
                "Lines appended by file_sink",
            ),
            skipped: ctx.metrics.counter(
                "connectd_file_sink_redelivered_total",
                "Records skipped by file_sink because they were already in the file",
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SinkContext {
        SinkContext::new("f", "g", Metrics::new(), Shutdown::never())
    }

    struct FileProbe(PathBuf);

    #[async_trait]
    impl connector_core::testing::Probe for FileProbe {
        async fn stored(&self, records: &[Record]) -> Result<Vec<usize>, String> {
            let text = std::fs::read_to_string(&self.0).map_err(|e| e.to_string())?;
            let lines: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            Ok(records
                .iter()
                .map(|r| {
                    let o = r.origin.as_ref();
                    lines
                        .iter()
                        .filter(|l| {
                            o.is_some_and(|o| {
                                l["topic"] == o.topic.as_ref() && l["offset"] == o.offset
                            })
                        })
                        .count()
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn passes_the_compliance_harness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        let report = connector_core::testing::SinkHarness::<FileSinkPlugin>::new(FileSinkConfig {
            path: path.clone(),
            fsync: true,
        })
        .probe(FileProbe(path))
        .run()
        .await;
        report.assert_passed();
    }

    #[tokio::test]
    async fn redelivered_records_are_not_written_twice_even_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/out.jsonl");
        let cfg = FileSinkConfig {
            path: path.clone(),
            fsync: true,
        };
        let batch: Vec<Record> = (0..5)
            .map(|i| Record::new(format!("{{\"n\":{i}}}")).with_origin("t", 0, i))
            .collect();
        let mut sink = FileSinkPlugin::build(cfg.clone(), ctx())
            .await
            .expect("build");
        let out = sink.write(&batch).await.expect("write");
        assert!(out.iter().all(RecordOutcome::is_delivered));
        sink.write(&batch[2..]).await.expect("rewrite");
        sink.close().await.expect("close");
        let mut sink = FileSinkPlugin::build(cfg, ctx()).await.expect("reopen");
        sink.write(&batch).await.expect("write after reopen");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 5);
        let first: Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(first["value"]["n"], 0);
        assert_eq!(first["offset"], 0);
    }
}
