//! Window arithmetic on event time, in microseconds since the Unix epoch (UTC). Windows are
//! aligned to the epoch: a one-day window runs from 00:00 UTC to the next 00:00 UTC.

/// Microseconds in a second.
pub const MICROS: i64 = 1_000_000;

/// How events are cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Fixed, non-overlapping windows of `size` µs: each event is in exactly one.
    Tumbling {
        /// Width, µs.
        size: i64,
    },
    /// Windows of `size` µs starting every `slide` µs (`size` a multiple of `slide`): each
    /// event is in `size / slide` windows.
    Hopping {
        /// Width, µs.
        size: i64,
        /// Distance between window starts, µs.
        slide: i64,
    },
}

impl Windows {
    /// Width of every window, µs.
    pub fn size(self) -> i64 {
        match self {
            Windows::Tumbling { size } | Windows::Hopping { size, .. } => size,
        }
    }

    /// Starts of the windows that contain `t`, earliest first.
    pub fn starts(self, t: i64) -> impl Iterator<Item = i64> {
        let (size, slide) = match self {
            Windows::Tumbling { size } => (size, size),
            Windows::Hopping { size, slide } => (size, slide),
        };
        let last = t.div_euclid(slide) * slide;
        let n = size / slide;
        (0..n).rev().map(move |k| last - k * slide)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * MICROS;

    #[test]
    fn tumbling_puts_each_instant_in_one_window_including_its_start() {
        let w = Windows::Tumbling { size: MIN };
        assert_eq!(w.starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(MIN - 1).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.starts(MIN).collect::<Vec<_>>(), vec![MIN]);
        // Before the epoch, floor (not truncation toward zero).
        assert_eq!(w.starts(-1).collect::<Vec<_>>(), vec![-MIN]);
    }

    #[test]
    fn hopping_windows_overlap_and_each_contains_the_instant() {
        let w = Windows::Hopping {
            size: 10 * MIN,
            slide: 5 * MIN,
        };
        let t = 12 * MIN;
        let s: Vec<i64> = w.starts(t).collect();
        assert_eq!(s, vec![5 * MIN, 10 * MIN]);
        for start in s {
            assert!(start <= t && t < start + w.size());
        }
        let w = Windows::Hopping {
            size: 60 * MIN,
            slide: MIN,
        };
        assert_eq!(w.starts(7 * MIN + 3).count(), 60);
        assert!(w
            .starts(7 * MIN + 3)
            .all(|s| s <= 7 * MIN + 3 && 7 * MIN + 3 < s + 60 * MIN));
    }
}
