//! `aggregate`: counts, sums, minimums, maximums and exact distinct counts over event-time
//! windows, merged into a PostgreSQL table exactly once (issue 17).
//!
//! ```yaml
//! - name: per-minute
//!   type: aggregate
//!   input: events.unique
//!   database_url: ${DATABASE_URL}
//!   table: event_counts_per_minute
//!   window: { tumbling: 1m }            # or { hopping: { size: 1h, slide: 5m } }
//!   group_by: { event_type: /event_type }
//!   aggregates:
//!     events: count
//!     revenue: { sum: /payload/amount }
//!     users: { count_distinct: /user_id }
//!   allowed_lateness: 10s
//!   idle_timeout: 30s
//!   late_events: update                 # or dlq, drop
//! ```
//!
//! # The table
//! One row per window and group: `window_start`, `window_end`, the group columns (text), one
//! column per aggregate (`bigint` for `count`/`count_distinct`, `numeric` for `sum`/`min`/`max`),
//! `closed` and `updated_at`; primary key `(window_start, <group columns>)`. Created at start-up
//! when absent (`auto_create`). Windows are aligned to the Unix epoch in UTC (a `1d` window is a
//! UTC calendar day). A row exists once its window has an event; it is updated while the window
//! is open and marked `closed = true` when the watermark passes `window_end`. Consumers that want
//! final figures read `WHERE closed`.
//!
//! # Watermarks and late events
//! Each input partition's watermark is the largest event time it delivered minus
//! `allowed_lateness`; the connector's watermark is the smallest over its partitions, except
//! that a partition which delivered nothing for `idle_timeout` stops holding it back (when every
//! partition is idle, the largest is used). A partition just assigned holds the watermark until
//! it delivers or goes idle. The watermark never moves back. An event whose window has closed
//! is *late*; `late_events` decides: `update` (default) merges it into the closed row anyway (the
//! row stays closed and its figures are corrected), `drop` counts it and leaves the row alone,
//! `dlq` sends it to the dead-letter topic with class `late`. With hopping windows an event is
//! counted in those of its windows that are still open; `drop`/`dlq` apply when none is.
//!
//! # Exactly once
//! Every batch is one transaction that locks its partitions' rows in `connectd_offsets` and
//! skips records at offsets already stored, inserts the distinct members and merges the
//! partial aggregates of the batch (`INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n`,
//! rows in key order), records the partitions' event times, moves the watermark
//! (`connectd_agg_watermarks`, locked) and stores the next offsets. On assignment the runtime
//! seeks to the stored offsets. No state lives only in memory: after a kill -9 the open
//! windows are the table's open rows, the watermark and the partitions' times are in the
//! tables, and nothing is counted twice or lost. Under `late_events: drop` or `dlq` an event's
//! fate depends on the watermark, so a batch locks the watermark row *first* and the batches
//! of a connector commit one at a time (across slots and processes); under `update` they merge
//! in parallel and lock it only at the end. Rows are marked `closed` right after the commit
//! (and by the ticker), outside the watermark lock.
//!
//! # Distinct counts
//! `count_distinct` is exact: its members are stored in `<table>_members` (one row per window,
//! group, aggregate and distinct value; the merge adds only the members that insert returned as
//! new). That table is the state: its size is the number of distinct values per window and
//! group — for daily active users by event type, one row per user and type per day. With
//! `late_events: drop` or `dlq` the members of a window are deleted when it closes (a closed
//! window cannot change any more); with `update` they are kept so a late event is still counted
//! once — delete old days yourself (`DELETE FROM <table>_members WHERE window_start < …`) when
//! you no longer accept corrections for them.
//!
//! # Poison
//! An event without a valid RFC 3339 time, without a group-by field, with a non-numeric value
//! for `sum`/`min`/`max`, or with text PostgreSQL cannot store goes to the dead-letter topic
//! with its reason; the others of the batch are aggregated.
//!
//! # Closed windows on a topic (`output`)
//! With `output: <topic>`, closed rows are also published there as JSON (`window_start`,
//! `window_end`, the group and aggregate columns, `closed: true`), keyed by
//! `<window_start>/<group values…>` — a changelog a compacted topic can keep. The ticker
//! publishes closed rows whose `published` flag is false, oldest first, and sets the flag after
//! the broker acknowledged them; a late event merged into a closed row clears the flag, so the
//! corrected row is published again under the same key. At least once: a crash between the
//! acknowledgement and the flag publishes a row twice (same key, same figures). One process at
//! a time publishes (a transaction-level advisory lock).

pub mod partial;
pub mod sink;
pub mod sql;
pub mod watermark;
pub mod window;

use std::collections::{BTreeMap, HashSet};

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use self::partial::{Extractor, Func};
use self::sink::AggregateSink;
use self::window::Windows;
use crate::postgres::connect;
use crate::postgres::sql::{valid_ident, valid_table};

/// Window shape.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    /// Fixed windows of this width, e.g. `{ tumbling: 1m }`.
    Tumbling(Duration),
    /// Overlapping windows, e.g. `{ hopping: { size: 1h, slide: 5m } }`; `size` must be a
    /// multiple of `slide`.
    Hopping {
        /// Width of each window.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
}

/// One aggregate column.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AggregateSpec {
    /// Number of events: `count`.
    Count,
    /// Sum of a numeric field: `{ sum: /payload/amount }`.
    Sum(String),
    /// Smallest value of a numeric field.
    Min(String),
    /// Largest value of a numeric field.
    Max(String),
    /// Exact number of distinct values of a field: `{ count_distinct: /user_id }`.
    CountDistinct(String),
}

impl AggregateSpec {
    fn func(&self) -> Func {
        match self {
            AggregateSpec::Count => Func::Count,
            AggregateSpec::Sum(p) => Func::Sum(p.clone()),
            AggregateSpec::Min(p) => Func::Min(p.clone()),
            AggregateSpec::Max(p) => Func::Max(p.clone()),
            AggregateSpec::CountDistinct(p) => Func::CountDistinct(p.clone()),
        }
    }

    fn pointer(&self) -> Option<&str> {
        match self {
            AggregateSpec::Count => None,
            AggregateSpec::Sum(p)
            | AggregateSpec::Min(p)
            | AggregateSpec::Max(p)
            | AggregateSpec::CountDistinct(p) => Some(p),
        }
    }
}

/// What to do with an event whose window has already closed.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Merge it into the closed row (figures corrected, the row stays closed). Default.
    #[default]
    Update,
    /// Send it to the dead-letter topic with class `late`.
    Dlq,
    /// Count it (`connectd_agg_late_events_total{policy="drop"}`) and leave the row alone.
    Drop,
}

impl LatePolicy {
    fn as_str(self) -> &'static str {
        match self {
            LatePolicy::Update => "update",
            LatePolicy::Dlq => "dlq",
            LatePolicy::Drop => "drop",
        }
    }
}

/// Settings of an `aggregate` connector.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// PostgreSQL URL.
    pub database_url: Secret,
    /// Table of window rows, optionally schema-qualified (at most 55 characters: the members
    /// table is `<table>_members`).
    pub table: String,
    /// JSON pointer of the event time (RFC 3339, any offset; stored in UTC).
    #[serde(default = "default_time")]
    pub time: String,
    /// Window shape.
    pub window: WindowSpec,
    /// Group-by columns: column name → JSON pointer. Empty: one row per window.
    #[serde(default)]
    pub group_by: BTreeMap<String, String>,
    /// Aggregate columns: column name → aggregate.
    pub aggregates: BTreeMap<String, AggregateSpec>,
    /// How far behind the largest event time of a partition events may still arrive before
    /// their window closes.
    #[serde(default = "default_lateness")]
    pub allowed_lateness: Duration,
    /// A partition that delivers nothing for this long stops holding the watermark back.
    #[serde(default = "default_idle")]
    pub idle_timeout: Duration,
    /// `update`, `dlq` or `drop`.
    #[serde(default)]
    pub late_events: LatePolicy,
    /// How often the watermark is re-examined while no records arrive (idle partitions).
    #[serde(default = "default_tick")]
    pub tick: Duration,
    /// Connections in the pool.
    #[serde(default = "default_pool")]
    #[schemars(range(min = 1, max = 100))]
    pub pool_size: u32,
    /// Apply connectd's migrations and create the tables when absent.
    #[serde(default = "default_true")]
    pub auto_create: bool,
    /// Longest a statement may run before it is cancelled (and retried).
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: Duration,
}

fn default_time() -> String {
    "/event_ts".into()
}
fn default_lateness() -> Duration {
    Duration::from_secs(0)
}
fn default_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_tick() -> Duration {
    Duration::from_secs(1)
}
fn default_pool() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(60)
}

const RESERVED_COLUMNS: &[&str] = &[
    "window_start",
    "window_end",
    "closed",
    "updated_at",
    "published",
];

fn micros(d: &Duration) -> i64 {
    i64::try_from(d.as_std().as_micros()).unwrap_or(i64::MAX)
}

impl AggregateConfig {
    fn windows(&self) -> Windows {
        match &self.window {
            WindowSpec::Tumbling(size) => Windows::Tumbling { size: micros(size) },
            WindowSpec::Hopping { size, slide } => Windows::Hopping {
                size: micros(size),
                slide: micros(slide),
            },
        }
    }

    fn extractor(&self) -> Extractor {
        let group_by: Vec<String> = self.group_by.values().cloned().collect();
        let funcs = self.aggregates.values().map(AggregateSpec::func).collect();
        Extractor::new(&self.time, &group_by, funcs)
    }
}

fn check_pointer(issues: &mut Vec<ConfigIssue>, path: String, p: &str) {
    if !(p.starts_with('/') && p.len() > 1) {
        issues.push(ConfigIssue::new(
            path,
            format!("{p:?} is not a JSON pointer (e.g. /user_id)"),
        ));
    }
}

/// Factory of [`AggregateSink`].
pub struct AggregatePlugin;

#[async_trait]
impl SinkPlugin for AggregatePlugin {
    const TYPE: &'static str = "aggregate";
    const OUTPUT: bool = true;
    const DESCRIPTION: &'static str = "Event-time windows (tumbling, hopping) with watermarks: count, sum, min, max, exact count_distinct, merged into PostgreSQL exactly once";
    type Config = AggregateConfig;

    fn validate(c: &AggregateConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if !valid_table(&c.table) || c.table.rsplit('.').next().is_some_and(|t| t.len() > 55) {
            issues.push(ConfigIssue::new(
                "table",
                format!("{:?} is not a valid table name ([A-Za-z_][A-Za-z0-9_]*, at most 55 characters, optionally schema.table)", c.table),
            ));
        }
        check_pointer(&mut issues, "time".into(), &c.time);
        match &c.window {
            WindowSpec::Tumbling(size) if size.as_std().is_zero() => {
                issues.push(ConfigIssue::new("window.tumbling", "must be longer than 0"))
            }
            WindowSpec::Hopping { size, slide } => {
                let (size, slide) = (micros(size), micros(slide));
                if slide == 0 || size == 0 {
                    issues.push(ConfigIssue::new(
                        "window.hopping",
                        "size and slide must be longer than 0",
                    ));
                } else if size % slide != 0 || size < slide {
                    issues.push(ConfigIssue::new(
                        "window.hopping",
                        "size must be a whole multiple of slide (e.g. size 1h, slide 5m)",
                    ));
                } else if size / slide > 1000 {
                    issues.push(ConfigIssue::new(
                        "window.hopping",
                        "more than 1000 windows per event (size / slide); use a larger slide",
                    ));
                }
            }
            WindowSpec::Tumbling(_) => {}
        }
        if c.aggregates.is_empty() {
            issues.push(ConfigIssue::new(
                "aggregates",
                "needs at least one aggregate (e.g. events: count)",
            ));
        }
        let mut seen = HashSet::new();
        let columns = c
            .group_by
            .iter()
            .map(|(n, p)| (format!("group_by.{n}"), n, Some(p.as_str())))
            .chain(
                c.aggregates
                    .iter()
                    .map(|(n, a)| (format!("aggregates.{n}"), n, a.pointer())),
            );
        for (path, name, pointer) in columns {
            if !valid_ident(name) {
                issues.push(ConfigIssue::new(
                    &path,
                    "is not a valid column name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            } else if RESERVED_COLUMNS.contains(&name.as_str()) {
                issues.push(ConfigIssue::new(
                    &path,
                    format!("{name} is a column of every window table; choose another name"),
                ));
            } else if !seen.insert(name.clone()) {
                issues.push(ConfigIssue::new(
                    &path,
                    "is both a group-by column and an aggregate",
                ));
            }
            if let Some(p) = pointer {
                check_pointer(&mut issues, path, p);
            }
        }
        if c.tick.as_std().is_zero() {
            issues.push(ConfigIssue::new("tick", "must be longer than 0"));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: AggregateConfig,
        ctx: SinkContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        // UTC: published windows render times in the session time zone.
        let pool = connect(
            &config.database_url,
            config.pool_size,
            &config.statement_timeout,
            true,
        )
        .await?;
        AggregateSink::open(config, pool, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As connectd reads it: YAML to a JSON value, then the typed config.
    fn config(yaml: &str) -> AggregateConfig {
        let v: serde_json::Value = serde_yaml::from_str(yaml).expect("yaml");
        serde_json::from_value(v).expect("config")
    }

    #[test]
    fn a_config_reads_windows_groups_and_aggregates() {
        let c = config(
            "database_url: postgres://x\ntable: per_minute\nwindow: { hopping: { size: 10m, slide: 5m } }\n\
             group_by: { event_type: /event_type }\naggregates:\n  events: count\n  revenue: { sum: /amount }\n  users: { count_distinct: /user_id }\n",
        );
        assert_eq!(AggregatePlugin::validate(&c), Ok(()));
        assert_eq!(
            c.windows(),
            Windows::Hopping {
                size: 600_000_000,
                slide: 300_000_000
            }
        );
        assert_eq!(c.aggregates["events"], AggregateSpec::Count);
        assert_eq!(c.late_events, LatePolicy::Update);
        assert_eq!(c.extractor().group_by[0].to_string(), "/event_type");
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let c = config(
            "database_url: postgres://x\ntable: \"bad name\"\ntime: event_ts\nwindow: { hopping: { size: 10m, slide: 3m } }\n\
             group_by: { closed: /x, n: /y }\naggregates:\n  n: count\n  s: { sum: amount }\n",
        );
        let issues: Vec<String> = AggregatePlugin::validate(&c)
            .expect_err("refused")
            .iter()
            .map(|i| i.to_string())
            .collect();
        let all = issues.join("\n");
        for part in [
            "table",
            "time",
            "window.hopping",
            "group_by.closed",
            "aggregates.n",
            "aggregates.s",
        ] {
            assert!(all.contains(part), "{part} missing in:\n{all}");
        }
        let empty = config("database_url: x\ntable: t\nwindow: { tumbling: 1m }\naggregates: {}\n");
        assert!(AggregatePlugin::validate(&empty).is_err());
    }
}
