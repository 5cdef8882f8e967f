//! The connector's watermark, per record: pure, no I/O. The sink loads the partitions' state
//! (largest event time, idle or not) at the start of a batch, then asks, record by record,
//! whether a window has closed *before* observing the record — so an event's fate does not
//! depend on how the records happened to be cut into batches.

use std::collections::BTreeMap;

/// A partition: topic and number.
pub type Partition = (String, i32);

/// What the watermark is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTime {
    /// Largest event time it delivered, µs (`None`: nothing yet).
    pub max: Option<i64>,
    /// Quiet for longer than `idle_timeout`: does not hold the watermark back.
    pub idle: bool,
}

/// The smallest largest-event-time over the partitions that are not idle; the largest over all
/// of them when every one is idle; `None` while a partition that is not idle has delivered
/// nothing yet, or there is no partition.
pub fn candidate<'a>(parts: impl IntoIterator<Item = &'a PartitionTime>) -> Option<i64> {
    let (mut active_min, mut any_active, mut all_max, mut any) =
        (None::<i64>, false, None::<i64>, false);
    for p in parts {
        any = true;
        all_max = all_max.max(p.max);
        if !p.idle {
            any_active = true;
            active_min = Some(match (active_min, p.max) {
                (_, None) => return None,
                (None, Some(m)) => m,
                (Some(a), Some(m)) => a.min(m),
            });
        }
    }
    match (any, any_active) {
        (false, _) => None,
        (true, false) => all_max,
        (true, true) => active_min,
    }
}

/// The watermark as records go by.
#[derive(Debug, Clone)]
pub struct Watermark {
    parts: BTreeMap<Partition, PartitionTime>,
    lateness: i64,
    stored: Option<i64>,
    current: Option<i64>,
}

impl Watermark {
    /// From the stored state: partitions, `allowed_lateness` (µs) and the stored watermark.
    pub fn new(
        parts: BTreeMap<Partition, PartitionTime>,
        lateness: i64,
        current: Option<i64>,
    ) -> Self {
        let mut w = Self {
            parts,
            lateness,
            stored: current,
            current,
        };
        w.recompute();
        w
    }

    /// The watermark as it was loaded, µs.
    pub fn stored(&self) -> Option<i64> {
        self.stored
    }

    /// The watermark now, µs (never lower than the stored one).
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// A record of `partition` arrived (with event time `ts`, when it had a valid one).
    pub fn observe(&mut self, partition: &Partition, ts: Option<i64>) {
        let p = self
            .parts
            .entry(partition.clone())
            .or_insert(PartitionTime {
                max: None,
                idle: false,
            });
        p.idle = false;
        p.max = p.max.max(ts);
        self.recompute();
    }

    fn recompute(&mut self) {
        let next = candidate(self.parts.values()).map(|c| c.saturating_sub(self.lateness));
        self.current = self.current.max(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(max: Option<i64>, idle: bool) -> PartitionTime {
        PartitionTime { max, idle }
    }

    #[test]
    fn the_slowest_active_partition_holds_the_watermark_and_idle_ones_do_not() {
        assert_eq!(candidate(&[]), None);
        assert_eq!(
            candidate(&[pt(Some(5), false), pt(Some(9), false)]),
            Some(5)
        );
        assert_eq!(candidate(&[pt(Some(5), true), pt(Some(9), false)]), Some(9));
        // An active partition that has delivered nothing yet holds everything.
        assert_eq!(candidate(&[pt(None, false), pt(Some(9), false)]), None);
        assert_eq!(candidate(&[pt(None, true), pt(Some(9), false)]), Some(9));
        // Everything quiet: as far as the data seen allows.
        assert_eq!(candidate(&[pt(Some(5), true), pt(Some(9), true)]), Some(9));
    }

    #[test]
    fn record_by_record_the_watermark_rises_with_lateness_and_never_falls() {
        let p0: Partition = ("t".into(), 0);
        let p1: Partition = ("t".into(), 1);
        let mut w = Watermark::new(BTreeMap::new(), 10, None);
        assert_eq!(w.current(), None);
        w.observe(&p0, Some(100));
        assert_eq!(w.current(), Some(90));
        w.observe(&p0, Some(50)); // out of order: no change
        assert_eq!(w.current(), Some(90));
        w.observe(&p1, None); // a poison record: p1 is active, has no time, holds
        assert_eq!(w.current(), Some(90), "never moves back");
        w.observe(&p1, Some(200));
        assert_eq!(w.current(), Some(90), "p0 is the slowest");
        w.observe(&p0, Some(300));
        assert_eq!(w.current(), Some(190));
        // Loaded from the table with an idle partition far behind.
        let parts = BTreeMap::from([
            (p0.clone(), pt(Some(1_000), false)),
            (p1, pt(Some(10), true)),
        ]);
        assert_eq!(Watermark::new(parts, 0, Some(500)).current(), Some(1_000));
    }
}
