//! Sparse acknowledgements. Clients may ack in any order; a group's committed offset may only cover
//! records that are all acknowledged, so it advances over the contiguous acknowledged prefix.

use std::collections::BTreeSet;

/// Delivery bookkeeping for one partition held by one subscriber.
///
/// `position` is the next offset to read; `outstanding` the offsets delivered and not yet acked. The
/// committable offset (Kafka's "next offset to consume") is the oldest outstanding offset, or the
/// position when nothing is outstanding. Offsets may have gaps (retention), which this handles because
/// it never assumes `outstanding` is a dense range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckTracker {
    position: i64,
    outstanding: BTreeSet<i64>,
}

impl AckTracker {
    /// A tracker that will read from `position`.
    pub fn starting_at(position: i64) -> Self {
        Self {
            position,
            outstanding: BTreeSet::new(),
        }
    }

    /// Next offset to read.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Records that `offset` was delivered; the position moves past it.
    pub fn delivered(&mut self, offset: i64) {
        self.outstanding.insert(offset);
        self.position = self.position.max(offset + 1);
    }

    /// Marks `offset` acknowledged. False when it was not outstanding.
    pub fn ack(&mut self, offset: i64) -> bool {
        self.outstanding.remove(&offset)
    }

    /// Marks every outstanding offset from `first` to `last` (both included) acknowledged;
    /// returns how many were.
    pub fn ack_range(&mut self, first: i64, last: i64) -> usize {
        take_range(&mut self.outstanding, first, last).len()
    }

    /// How many delivered records are unacknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The offset a group may commit: nothing below it is unacknowledged.
    pub fn committable(&self) -> i64 {
        self.outstanding.first().copied().unwrap_or(self.position)
    }

    /// Moves the read position and forgets outstanding records; returns how many were forgotten.
    pub fn seek(&mut self, position: i64) -> usize {
        let forgotten = self.outstanding.len();
        self.outstanding.clear();
        self.position = position;
        forgotten
    }
}

/// Removes the offsets of `set` from `first` to `last` (both included; none when `last` is below
/// `first`) and returns them. Costs the offsets in the range, not its span (splitting the set and
/// joining it again would cost the whole set whenever an older offset stays in it).
pub(crate) fn take_range(set: &mut BTreeSet<i64>, first: i64, last: i64) -> Vec<i64> {
    if last < first {
        return Vec::new();
    }
    let taken: Vec<i64> = set.range(first..=last).copied().collect();
    for offset in &taken {
        set.remove(offset);
    }
    taken
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_range_acknowledges_the_outstanding_offsets_in_it() {
        let mut tracker = AckTracker::starting_at(0);
        for offset in [1, 3, 4, 7, 9] {
            tracker.delivered(offset);
        }
        assert_eq!(tracker.ack_range(2, 7), 3);
        assert_eq!(tracker.ack_range(2, 7), 0, "once");
        assert_eq!(tracker.ack_range(9, 8), 0, "backwards");
        assert_eq!(tracker.outstanding(), 2);
        assert_eq!(tracker.committable(), 1);
        assert_eq!(tracker.ack_range(i64::MIN, i64::MAX), 2);
        assert_eq!(tracker.committable(), 10);
    }

    proptest! {
        /// A range acknowledges what acknowledging each of its offsets would.
        #[test]
        fn a_range_is_its_offsets_one_by_one(
            delivered in proptest::collection::btree_set(0i64..64, 0..32),
            first in 0i64..64,
            length in 0i64..64,
        ) {
            let mut by_range = AckTracker::starting_at(0);
            for &offset in &delivered {
                by_range.delivered(offset);
            }
            let mut one_by_one = by_range.clone();
            let last = first + length;
            let acked = (first..=last).filter(|&offset| one_by_one.ack(offset)).count();
            prop_assert_eq!(by_range.ack_range(first, last), acked);
            prop_assert_eq!(by_range, one_by_one);
        }
    }

    #[test]
    fn commit_stops_at_the_first_gap() {
        let mut tracker = AckTracker::starting_at(10);
        for offset in 10..15 {
            tracker.delivered(offset);
        }
        assert!(tracker.ack(10));
        assert!(tracker.ack(11));
        assert!(tracker.ack(13));
        assert_eq!(tracker.committable(), 12);
        assert!(tracker.ack(12));
        assert_eq!(tracker.committable(), 14);
        assert!(tracker.ack(14));
        assert_eq!(tracker.committable(), 15);
        assert!(
            !tracker.ack(14),
            "a second ack of the same offset is not counted"
        );
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        let mut tracker = AckTracker::starting_at(0);
        tracker.delivered(5);
        tracker.delivered(9);
        assert!(tracker.ack(5));
        assert_eq!(tracker.committable(), 9);
        assert!(tracker.ack(9));
        assert_eq!(tracker.committable(), 10);
    }

    #[test]
    fn seek_forgets_outstanding() {
        let mut tracker = AckTracker::starting_at(0);
        tracker.delivered(0);
        tracker.delivered(1);
        assert_eq!(tracker.seek(100), 2);
        assert_eq!(tracker.committable(), 100);
        assert!(!tracker.ack(0));
    }

    proptest! {
        /// Whatever order acks come in, the committable offset never passes an unacked record and equals
        /// the end once all are acked.
        #[test]
        fn committable_is_the_contiguous_acked_prefix(order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle(), acked in 0usize..40) {
            let mut tracker = AckTracker::starting_at(0);
            for offset in 0..40 { tracker.delivered(offset); }
            for &offset in &order[..acked] { tracker.ack(offset); }
            let unacked_min = order[acked..].iter().copied().min().unwrap_or(40);
            prop_assert_eq!(tracker.committable(), unacked_min);
            for &offset in &order[acked..] { tracker.ack(offset); }
            prop_assert_eq!(tracker.committable(), 40);
        }
    }
}
