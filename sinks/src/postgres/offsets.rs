//! Kafka offsets stored in the sink's own transaction (`connectd_offsets`), shared by every
//! exactly-once Postgres sink (`postgres_sink` with `exactly_once: true`, `aggregate`).
//!
//! Within the transaction that writes a batch: [`claim`] creates and locks the rows of the
//! batch's partitions (`FOR UPDATE`, so a zombie writer of the same partitions serializes with
//! us) and reads the offsets already stored; records below them were written by an earlier
//! transaction and are skipped ([`OffsetClaim::is_new`]); [`OffsetClaim::store`] moves the
//! offsets past the batch before the commit. On assignment the runtime seeks to [`read`].

use std::collections::HashMap;

use connector_core::prelude::*;
use sqlx::postgres::PgConnection;
use sqlx::PgPool;

/// The offsets of one batch's partitions, locked in the open transaction.
pub struct OffsetClaim {
    topics: Vec<String>,
    parts: Vec<i32>,
    next: Vec<i64>,
    /// (topic, partition, stored next offset): a batch spans a few partitions, so a scan
    /// beats hashing a freshly allocated key per record.
    stored: Vec<(String, i32, i64)>,
}

/// Locks (creating them) the offset rows of the partitions in `batch` and reads them.
pub async fn claim(
    tx: &mut PgConnection,
    group_id: &str,
    batch: &[Record],
) -> Result<OffsetClaim, sqlx::Error> {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for r in batch {
        if let Some(o) = &r.origin {
            let e = next
                .entry((o.topic.to_string(), o.partition))
                .or_insert(o.offset + 1);
            *e = (*e).max(o.offset + 1);
        }
    }
    // Sorted, so two transactions lock shared partitions in the same order.
    let mut next: Vec<((String, i32), i64)> = next.into_iter().collect();
    next.sort();
    let topics: Vec<String> = next.iter().map(|((t, _), _)| t.clone()).collect();
    let parts: Vec<i32> = next.iter().map(|((_, p), _)| *p).collect();
    let next: Vec<i64> = next.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "INSERT INTO connectd_offsets (group_id, topic, partition, next_offset) \
         SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS u(t, p) ON CONFLICT DO NOTHING",
    )
    .bind(group_id)
    .bind(&topics)
    .bind(&parts)
    .execute(&mut *tx)
    .await?;
    let stored: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM connectd_offsets \
         WHERE group_id = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[])) \
         ORDER BY topic, partition FOR UPDATE",
    )
    .bind(group_id)
    .bind(&topics)
    .bind(&parts)
    .fetch_all(&mut *tx)
    .await?;
    Ok(OffsetClaim {
        topics,
        parts,
        next,
        stored,
    })
}

impl OffsetClaim {
    /// False when an earlier transaction already stored this record's effect.
    pub fn is_new(&self, record: &Record) -> bool {
        record.origin.as_ref().is_none_or(|o| {
            let stored = self
                .stored
                .iter()
                .find(|(t, p, _)| *p == o.partition && **t == *o.topic)
                .map_or(0, |(_, _, n)| *n);
            o.offset >= stored
        })
    }

    /// Moves the stored offsets past the batch (never backwards).
    pub async fn store(&self, tx: &mut PgConnection, group_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE connectd_offsets o SET next_offset = GREATEST(o.next_offset, u.n), updated_at = now() \
             FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n) \
             WHERE o.group_id = $1 AND o.topic = u.t AND o.partition = u.p",
        )
        .bind(group_id)
        .bind(&self.topics)
        .bind(&self.parts)
        .bind(&self.next)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// The next offsets to read for `partitions`, as stored (partitions never written are absent).
pub async fn read(
    pool: &PgPool,
    group_id: &str,
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>, sqlx::Error> {
    let topics: Vec<String> = partitions.iter().map(|p| p.topic.clone()).collect();
    let parts: Vec<i32> = partitions.iter().map(|p| p.partition).collect();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM connectd_offsets \
         WHERE group_id = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))",
    )
    .bind(group_id)
    .bind(&topics)
    .bind(&parts)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, _, o)| *o > 0)
        .map(|(topic, partition, o)| (TopicPartition { topic, partition }, o))
        .collect())
}
