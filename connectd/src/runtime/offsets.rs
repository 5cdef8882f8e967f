//! In-order offset tracking: which offset of a partition may be committed.
//!
//! Records are tracked in the order they are read. A record becomes *done* when its outcome is
//! final (delivered, dropped on purpose, or dead-lettered and acknowledged). The commit
//! position is one past the last record of the longest done prefix: never past a record that
//! is not done, whatever order batches complete in.

use std::collections::VecDeque;

/// Tracking for one partition.
#[derive(Debug, Default)]
pub struct PartitionTracker {
    /// Offsets read and not yet committable, ascending, with their done flag.
    pending: VecDeque<(i64, bool)>,
    /// Next offset to commit (one past the last done-prefix record), if any record was done.
    position: Option<i64>,
    /// The position last committed.
    committed: Option<i64>,
}

impl PartitionTracker {
    /// Starts tracking `offset` (offsets must be handed in ascending order).
    /// Returns false (and ignores it) when it is not above every tracked offset.
    pub fn track(&mut self, offset: i64) -> bool {
        let above_pending = self.pending.back().is_none_or(|(last, _)| offset > *last);
        let above_position = self.position.is_none_or(|p| offset >= p);
        if above_pending && above_position {
            self.pending.push_back((offset, false));
            true
        } else {
            false
        }
    }

    /// Marks `offset` done; returns false when it is not tracked.
    pub fn done(&mut self, offset: i64) -> bool {
        let found = match self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            Ok(i) => {
                self.pending[i].1 = true;
                true
            }
            Err(_) => false,
        };
        while let Some((o, true)) = self.pending.front().copied() {
            self.pending.pop_front();
            self.position = Some(o + 1);
        }
        found
    }

    /// Records tracked but not yet committable.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The position to commit, if it moved since the last [`mark_committed`](Self::mark_committed).
    pub fn to_commit(&self) -> Option<i64> {
        match (self.position, self.committed) {
            (Some(p), Some(c)) if p <= c => None,
            (p, _) => p,
        }
    }

    /// The committable position, moved or not.
    pub fn position(&self) -> Option<i64> {
        self.position
    }

    /// Notes that `position` was committed.
    pub fn mark_committed(&mut self, position: i64) {
        self.committed = Some(self.committed.map_or(position, |c| c.max(position)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_done_prefix() {
        let mut t = PartitionTracker::default();
        for o in 10..15 {
            assert!(t.track(o));
        }
        assert_eq!(t.to_commit(), None);
        t.done(12);
        t.done(13);
        assert_eq!(t.to_commit(), None, "10 and 11 are not done");
        t.done(10);
        assert_eq!(t.to_commit(), Some(11));
        t.done(11);
        assert_eq!(t.to_commit(), Some(14));
        assert_eq!(t.in_flight(), 1);
        t.mark_committed(14);
        assert_eq!(t.to_commit(), None);
        t.done(14);
        assert_eq!(t.to_commit(), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut t = PartitionTracker::default();
        for o in [3, 7, 8, 20] {
            t.track(o);
        }
        for o in [20, 8, 7, 3] {
            t.done(o);
        }
        assert_eq!(t.to_commit(), Some(21));
    }

    #[test]
    fn refuses_offsets_out_of_order_and_unknown_done() {
        let mut t = PartitionTracker::default();
        assert!(t.track(5));
        assert!(!t.track(5));
        assert!(!t.track(4));
        assert!(!t.done(6));
        assert!(t.done(5));
        assert!(!t.track(5), "below the committable position");
        assert!(t.track(6));
    }
}
