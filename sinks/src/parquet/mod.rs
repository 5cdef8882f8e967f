//! `parquet_sink`: the cold tier. Records become compressed columnar Parquet files in
//! Hive-style folders, on a local disk or object storage, each record exactly once (issue 20).
//!
//! ```yaml
//! - name: archive
//!   type: parquet_sink
//!   input: events.enriched
//!   url: ${CONNECTD_ARCHIVE_URL}          # /var/lib/connectd/archive, s3://bucket/events, gs://…, az://…
//!   partition_by: [{column: event_type}, {date: event_ts}]
//!   roll: { max_records: 100000, max_bytes: 67108864, max_age: 60s }
//!   zstd_level: 3
//! ```
//!
//! # Layout
//! `<url>/event_type=purchase/date=2026-11-24/<topic>-<partition>-<first>-<last>.parquet`:
//! one folder level per `partition_by` entry, values escaped as Hive does; a file's name is
//! derived from the Kafka topic and partition and the first and last offsets of its flush, so
//! rewriting a flush after a crash produces the same objects. Columns come from `columns`, in
//! the same style as `postgres_sink` (default: the event envelope); `jsonb` columns such as
//! `payload` are kept as JSON text, `timestamptz` as UTC microsecond timestamps. Files keep
//! every column, including those that name their folders, so each file stands alone.
//!
//! # Exactly once
//! Records are buffered per Kafka partition and written when a roll limit is reached (records,
//! input bytes or age since the buffer's first record — the age roll also runs while no batch
//! arrives). A flush writes its files (fsync + rename on a local disk, a completed PUT
//! remotely) and then adds a commit to the partition's log under `_connectd/log/` with
//! put-if-absent (see [`log`]); the log, not the consumer group, holds the offsets: on
//! assignment the runtime seeks to the log's next offset. A record is therefore in the
//! archive exactly when its commit is: a kill -9 before the commit re-reads the buffer's
//! records and rewrites the same files; files of flushes that never committed are deleted
//! once the partition commits past them. Two writers of one partition (a rebalance's zombie)
//! race for the same commit key and the loser deletes its files and restarts from the log.
//! Readers that must be exact even while a crashed flush awaits cleanup read the files that
//! the log names; listing the folders is exact once every partition has committed since.
//!
//! While the store is unavailable the buffers keep filling up to one pending flush plus one
//! full roll per partition; then batches fail as retriable (the runtime backs off and pauses
//! consumption). Records that cannot be encoded (a value that does not fit its column) are
//! dead letters with class `invalid_value`, `missing_field` or `invalid_json`.
//!
//! A record delivered at an offset above the partition's log (the runtime resumed from the
//! consumer group's offsets because the log could not be read at assignment) fails the batch
//! (`offset_gap`) and the connector restarts from the log. One double fault is not caught: a
//! partition whose log is still empty (killed before its first commit) *and* whose log cannot
//! be read at the next assignment resumes from the group's offsets, which `write` may have
//! moved past buffered records.
//!
//! One connector per `url`: two connectors archiving the same topic into one place would
//! share their log.

pub mod encode;
pub mod layout;
pub mod log;
mod sink;

use std::collections::BTreeMap;
use std::sync::Arc;

use connector_core::config::Duration;
use connector_core::{ConfigIssue, ConnectorError, Sink, SinkContext, SinkPlugin};
use object_store::ObjectStore;
use schemars::JsonSchema;
use serde::Deserialize;

use self::layout::PartitionBy;
use self::sink::{ParquetSink, Shared};
use crate::postgres::mapping::{columns_or_envelope, valid_source, ColumnSpec, SqlType, META};

/// When a partition's buffer becomes a file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Roll {
    /// Records per flush (one file per folder the records fall into).
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1))]
    pub max_records: usize,
    /// Input bytes (record values, keys and headers) per flush.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
    /// Longest a record waits in the buffer (from the buffer's first record).
    #[serde(default = "default_max_age")]
    pub max_age: Duration,
}

impl Default for Roll {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
        }
    }
}

fn default_max_records() -> usize {
    100_000
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_age() -> Duration {
    Duration::from_secs(60)
}
fn default_partition_by() -> Vec<PartitionBy> {
    vec![PartitionBy::Date("event_ts".into())]
}
fn default_zstd_level() -> i32 {
    3
}

/// Settings of a `parquet_sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Where the files go: a local directory (`/var/lib/connectd/archive`, `./archive` or
    /// `file:///…`, created when absent), or object storage: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`. Credentials, region and endpoint come
    /// from the environment as the `object_store` crate reads them (`AWS_ACCESS_KEY_ID`,
    /// `AWS_REGION`, `AWS_ENDPOINT` for S3-compatible stores, `GOOGLE_SERVICE_ACCOUNT`,
    /// `AZURE_STORAGE_ACCOUNT_NAME`, …).
    pub url: String,
    /// Column → source and type, as for `postgres_sink`. Default: the event envelope.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, ColumnSpec>>,
    /// Folder levels, outermost first. Default: `[{date: event_ts}]`. `[]`: all files in
    /// the root.
    #[serde(default = "default_partition_by")]
    pub partition_by: Vec<PartitionBy>,
    /// When a buffer becomes a file.
    #[serde(default)]
    pub roll: Roll,
    /// zstd compression level, 1 (fastest) to 22 (smallest).
    #[serde(default = "default_zstd_level")]
    #[schemars(range(min = 1, max = 22))]
    pub zstd_level: i32,
}

impl ParquetSinkConfig {
    fn columns(&self) -> Vec<(String, ColumnSpec)> {
        columns_or_envelope(&self.columns)
    }
}

/// Where a `url` points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Local(std::path::PathBuf),
    Remote {
        scheme: &'static str,
        bucket: String,
        prefix: String,
    },
}

fn target(url: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.is_empty() {
            return Err("must not be empty".into());
        }
        return Ok(Target::Local(url.into()));
    };
    let scheme = match scheme {
        "file" => return Ok(Target::Local(rest.into())),
        "s3" | "s3a" => "s3",
        "gs" => "gs",
        "az" | "abfs" | "abfss" => "az",
        other => {
            return Err(format!(
                "unknown scheme {other}://: use a local path, file://, s3://, gs:// or az://"
            ))
        }
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{scheme}:// needs a bucket (container) name"));
    }
    Ok(Target::Remote {
        scheme,
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
    })
}

/// Opens the object store of `url` and the root prefix inside it.
fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, String), ConnectorError> {
    let bad = |e: String| ConnectorError::permanent("bad_url", format!("url: {e}"));
    let store_err = |e: object_store::Error| ConnectorError::permanent("bad_url", e.to_string());
    match target(url).map_err(bad)? {
        Target::Local(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| {
                ConnectorError::retriable(
                    "object_store",
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(store_err)?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Ok((Arc::new(store), String::new()))
        }
        Target::Remote {
            scheme,
            bucket,
            prefix,
        } => {
            let store: Arc<dyn ObjectStore> = match scheme {
                "s3" => Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_bucket_name(&bucket)
                        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                        .build()
                        .map_err(store_err)?,
                ),
                "gs" => Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(&bucket)
                        .build()
                        .map_err(store_err)?,
                ),
                _ => Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_container_name(&bucket)
                        .build()
                        .map_err(store_err)?,
                ),
            };
            Ok((store, prefix))
        }
    }
}

/// The `parquet_sink` plugin.
pub struct ParquetSinkPlugin;

#[connector_core::async_trait]
impl SinkPlugin for ParquetSinkPlugin {
    const TYPE: &'static str = "parquet_sink";
    const DESCRIPTION: &'static str =
        "Parquet files (zstd) in Hive-style folders on a local disk or object storage, exactly once through a commit log";
    type Config = ParquetSinkConfig;

    fn validate(c: &ParquetSinkConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if let Err(e) = target(&c.url) {
            issues.push(ConfigIssue::new("url", e));
        }
        let cols = c.columns();
        if cols.is_empty() {
            issues.push(ConfigIssue::new("columns", "needs at least one column"));
        }
        for (name, spec) in &cols {
            if name.is_empty() || name.contains(['/', '=']) {
                issues.push(ConfigIssue::new(
                    format!("columns.{name}"),
                    "a column name must not be empty or contain / or =",
                ));
            }
            if !valid_source(&spec.from) {
                issues.push(ConfigIssue::new(
                    format!("columns.{name}.from"),
                    format!("expected a JSON pointer or one of {META:?}"),
                ));
            }
        }
        for (i, level) in c.partition_by.iter().enumerate() {
            let path = format!("partition_by.{i}");
            match cols.iter().find(|(n, _)| n == level.column()) {
                None => issues.push(ConfigIssue::new(
                    path,
                    format!("{} is not one of the columns", level.column()),
                )),
                Some((_, spec)) => {
                    let time = match level {
                        PartitionBy::Column(_) => true,
                        PartitionBy::Date(_) => {
                            matches!(spec.sql_type, SqlType::Timestamptz | SqlType::Date)
                        }
                        PartitionBy::Hour(_) => spec.sql_type == SqlType::Timestamptz,
                    };
                    if !time {
                        issues.push(ConfigIssue::new(
                            path,
                            format!(
                                "{} is a {} column; date needs timestamptz or date, hour needs timestamptz",
                                level.column(),
                                spec.sql_type.sql()
                            ),
                        ));
                    }
                }
            }
        }
        if c.roll.max_records == 0 {
            issues.push(ConfigIssue::new("roll.max_records", "must be at least 1"));
        }
        if c.roll.max_bytes == 0 {
            issues.push(ConfigIssue::new("roll.max_bytes", "must be at least 1"));
        }
        if c.roll.max_age.as_std().is_zero() {
            issues.push(ConfigIssue::new("roll.max_age", "must be more than 0"));
        }
        if !(1..=22).contains(&c.zstd_level) {
            issues.push(ConfigIssue::new("zstd_level", "must be between 1 and 22"));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        c: ParquetSinkConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let (store, root) = open_store(&c.url)?;
        let log = log::Log::new(store, &root);
        // Fail at start-up, not at the first flush, when the store cannot be reached.
        log.last("_connectd_probe", 0).await.map_err(|e| {
            ConnectorError::retriable(
                "object_store",
                format!("{}: {e}", connector_core::config::redact_url(&c.url)),
            )
        })?;
        let shared = Arc::new(Shared::new(&c, log, &ctx)?);
        Ok(Box::new(ParquetSink::new(shared, &ctx)))
    }
}

/// Opens the log of a `parquet_sink` URL (for `connectd` tools and tests).
pub fn open_log(url: &str) -> Result<log::Log, ConnectorError> {
    let (store, root) = open_store(url)?;
    Ok(log::Log::new(store, &root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: serde_json::Value) -> ParquetSinkConfig {
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn urls_name_a_local_directory_or_a_bucket() {
        assert_eq!(target("./archive"), Ok(Target::Local("./archive".into())));
        assert_eq!(target("file:///var/a"), Ok(Target::Local("/var/a".into())));
        assert_eq!(
            target("s3://bucket/events/raw/"),
            Ok(Target::Remote {
                scheme: "s3",
                bucket: "bucket".into(),
                prefix: "events/raw".into()
            })
        );
        assert!(target("ftp://x")
            .expect_err("refused")
            .contains("unknown scheme"));
        assert!(target("gs:///x").expect_err("refused").contains("bucket"));
    }

    #[test]
    fn defaults_are_the_envelope_by_day() {
        let c = config(json!({"url": "/tmp/a"}));
        assert_eq!(ParquetSinkPlugin::validate(&c), Ok(()));
        assert_eq!(c.partition_by, [PartitionBy::Date("event_ts".into())]);
        assert_eq!(c.roll.max_records, 100_000);
        assert_eq!(
            c.columns().len(),
            crate::postgres::mapping::envelope_columns().len()
        );
    }

    #[test]
    fn mistakes_are_reported_with_their_path() {
        let c = config(json!({
            "url": "ftp://x",
            "columns": {"a/b": {"from": "x", "type": "text"}, "n": {"from": "/n", "type": "integer"}},
            "partition_by": [{"column": "nope"}, {"date": "n"}],
            "roll": {"max_records": 0, "max_age": "0s"},
            "zstd_level": 30
        }));
        let issues: Vec<String> = ParquetSinkPlugin::validate(&c)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "url: unknown scheme",
            "columns.a/b: a column name",
            "columns.a/b.from: expected a JSON pointer",
            "partition_by.0: nope is not one of the columns",
            "partition_by.1: n is a integer column",
            "roll.max_records: must be at least 1",
            "roll.max_age: must be more than 0",
            "zstd_level: must be between 1 and 22",
        ] {
            assert!(
                issues.iter().any(|i| i.starts_with(want)),
                "{want} not in {issues:?}"
            );
        }
        assert_eq!(issues.len(), 8, "{issues:?}");
    }
}
