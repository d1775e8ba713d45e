//! Which write of one key a table keeps: the newest, whichever copy of the topic it was read from.
//!
//! Under region routing a table reads its topic in the read region and every mirror of it
//! MirrorMaker 2 made there (`a.mqtt.sessions` in region `b`). Within one partition of one of them
//! the log's order says which write came later, exactly, as it did before regions: a copy keeps its
//! source's order. Between copies it says nothing, so every write carries its version in the
//! record's timestamp, which mirrors keep: the writer sets it past the version of the key it read (a
//! hybrid logical clock, see [`next_timestamp`]), so a write made after reading another is newer
//! whatever the clocks of the two gateways say. A key's winner is the newest, by that version (then
//! by `courier-id`, for writers that set none and were stamped in one millisecond), of the latest
//! record of each partition it was read from. Tombstones are versions like any other, so a delete
//! is not undone by an older copy.
//!
//! The winner depends only on what was read, not on the order copies were read in, so every replica
//! in a region that has read the same records keeps the same winners.

use std::{cmp::Ordering, sync::Arc};

use crate::log::{Appended, Record};

/// A write's version as a writer outside the table compares it (a connection's session record
/// against another's), by the table's rule: [`Version::is_newer_than`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The record's timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// The record's id.
    pub courier_id: String,
    /// Where it was read: the table's read (after a move the table reads another region, whose
    /// own topic has the same name and unrelated offsets), topic (or copy), partition, offset.
    /// `None` for a record as written, until it is read back: the region the router wrote it to
    /// need not be the one the table reads.
    pub place: Option<(u64, Arc<str>, i32, i64)>,
}

impl Version {
    /// The version of a record read in the table's read `read`.
    pub fn read_in(read: u64, record: &Record) -> Self {
        Self {
            timestamp_ms: record.timestamp_ms,
            courier_id: record.courier_id.clone(),
            place: Some((read, record.topic.clone(), record.partition, record.offset)),
        }
    }

    /// The version of a record written, not read back yet.
    pub fn written(appended: &Appended) -> Self {
        Self {
            timestamp_ms: appended.timestamp_ms,
            courier_id: appended.courier_id.clone(),
            place: None,
        }
    }

    /// Is this write newer than `other`? Read in one partition of one topic in one read, the
    /// later offset; otherwise the later timestamp, then the greater id.
    pub fn is_newer_than(&self, other: &Self) -> bool {
        if let (Some((read, topic, partition, offset)), Some(other_place)) =
            (&self.place, &other.place)
        {
            let (other_read, other_topic, other_partition, other_offset) = other_place;
            if read == other_read && topic == other_topic && partition == other_partition {
                return offset > other_offset;
            }
        }
        (self.timestamp_ms, &self.courier_id) > (other.timestamp_ms, &other.courier_id)
    }
}

/// Orders two records of a key read from different copies: by version.
fn by_version(left: &Record, right: &Record) -> Ordering {
    left.timestamp_ms
        .cmp(&right.timestamp_ms)
        .then_with(|| left.courier_id.cmp(&right.courier_id))
}

/// What a table read of one key: the latest record of each partition it came from (a few: the
/// region's own topic and a mirror per other region), and the last timestamp this replica gave a
/// write of it that may not be read back yet.
#[derive(Debug, Clone, Default)]
pub(super) struct Versions {
    held: Vec<Record>,
    stamped: Option<i64>,
}

impl Versions {
    /// Takes in `record`, read after every earlier record of its partition. Returns the key's
    /// newest record when that changed.
    pub(super) fn apply(&mut self, record: Record) -> Option<&Record> {
        let before = self.newest().map(place);
        let same_partition = self
            .held
            .iter()
            .position(|held| held.topic == record.topic && held.partition == record.partition);
        match same_partition {
            Some(index) if self.held[index].offset >= record.offset => return None,
            Some(index) => self.held[index] = record,
            None => {
                // Exactly: a key is nearly always read in one partition, and a `Vec`'s first
                // push makes room for four records (700 bytes for each session or retained
                // message the table holds).
                self.held.reserve_exact(1);
                self.held.push(record);
            }
        }
        let newest = self.newest()?;
        (before != Some(place(newest))).then_some(newest)
    }

    /// The key's newest record (a tombstone when it was deleted).
    pub(super) fn newest(&self) -> Option<&Record> {
        self.held
            .iter()
            .max_by(|left, right| by_version(left, right))
    }

    /// Did this replica stamp a write of the key at `horizon` or later?
    pub(super) fn stamped_since(&self, horizon: i64) -> bool {
        self.stamped.is_some_and(|stamped| stamped >= horizon)
    }

    /// Read from one partition only?
    pub(super) fn read_in_one_partition(&self) -> bool {
        self.held.len() == 1
    }

    /// The timestamp of a write of the key made at `now_ms`: past every version read and every
    /// timestamp given before, so two writes from here in one millisecond are ordered too.
    pub(super) fn stamp(&mut self, now_ms: i64) -> i64 {
        let read = self.newest().map(|record| record.timestamp_ms);
        let current = read.max(self.stamped);
        let stamp = next_timestamp(current, now_ms);
        self.stamped = Some(stamp);
        stamp
    }
}

/// Where a record was read: its partition and offset.
fn place(record: &Record) -> (Arc<str>, i32, i64) {
    (record.topic.clone(), record.partition, record.offset)
}

/// The timestamp a write of a key whose newest version is `current` carries, written at `now_ms`:
/// later than `current` even when this gateway's clock is behind the one that wrote it.
fn next_timestamp(current: Option<i64>, now_ms: i64) -> i64 {
    current.map_or(now_ms, |current| now_ms.max(current.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(topic: &str, offset: i64, timestamp_ms: i64, id: &str) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            offset,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from(id.to_owned())),
            headers: Vec::new(),
            timestamp_ms,
            courier_id: id.to_owned(),
            origin: String::new(),
        }
    }

    fn version(read: u64, topic: &str, offset: i64, timestamp_ms: i64, id: &str) -> Version {
        Version::read_in(read, &record(topic, offset, timestamp_ms, id))
    }

    impl Version {
        fn with_timestamp(self, timestamp_ms: i64) -> Self {
            Self {
                timestamp_ms,
                ..self
            }
        }
    }

    #[test]
    fn versions_compare_as_the_table_does() {
        let first = version(0, "t", 1, 2_000, "01Z");
        let later_behind = version(0, "t", 2, 1_500, "01A");
        assert!(
            later_behind.is_newer_than(&first),
            "one partition: its order"
        );
        assert!(!first.is_newer_than(&later_behind));
        let copy = version(0, "a.t", 1, 1_800, "01Y");
        assert!(first.is_newer_than(&copy), "between copies: the timestamp");
        assert!(!copy.is_newer_than(&first));
        // The same name read after a move is another region's topic.
        let elsewhere = version(1, "t", 0, 2_500, "01B");
        assert!(elsewhere.is_newer_than(&first));
        assert!(!first.is_newer_than(&elsewhere));
        // As written, not read back yet: where it went is not known.
        let written = Version {
            place: None,
            ..version(0, "t", 0, 2_100, "01C")
        };
        assert!(written.is_newer_than(&first));
        assert!(!written.is_newer_than(&later_behind.clone().with_timestamp(2_200)));
    }

    #[test]
    fn stamps_given_here_increase_before_they_are_read_back() {
        let mut versions = Versions::default();
        versions.apply(record("t", 0, 5_000, "read"));
        assert_eq!(versions.stamp(1_000), 5_001);
        assert_eq!(versions.stamp(1_000), 5_002);
        assert_eq!(versions.stamp(9_000), 9_000);
    }

    fn newest(versions: &Versions) -> Option<&str> {
        versions.newest().map(|record| record.courier_id.as_str())
    }

    #[test]
    fn within_one_partition_the_later_write_wins_whatever_its_timestamp() {
        let mut versions = Versions::default();
        assert!(versions.apply(record("t", 0, 2_000, "first")).is_some());
        // Written later by a gateway whose clock is behind.
        assert!(versions.apply(record("t", 1, 1_500, "second")).is_some());
        assert_eq!(newest(&versions), Some("second"));
        assert!(
            versions.apply(record("t", 0, 2_000, "first")).is_none(),
            "read again"
        );
        assert_eq!(newest(&versions), Some("second"));
    }

    #[test]
    fn between_copies_the_newer_version_wins_in_any_order_of_reading() {
        let own = [record("t", 0, 10, "a-1"), record("t", 1, 30, "a-2")];
        let mirror = [record("b.t", 0, 20, "b-1"), record("b.t", 1, 25, "b-2")];
        let orders: [Vec<&Record>; 3] = [
            own.iter().chain(&mirror).collect(),
            mirror.iter().chain(&own).collect(),
            vec![&own[0], &mirror[0], &mirror[1], &own[1]],
        ];
        for order in orders {
            let mut versions = Versions::default();
            for record in order {
                versions.apply(record.clone());
            }
            assert_eq!(newest(&versions), Some("a-2"));
        }
    }

    #[test]
    fn a_newer_deletion_wins_over_an_older_copy_read_later() {
        let mut versions = Versions::default();
        let mut deletion = record("t", 4, 50, "gone");
        deletion.value = None;
        versions.apply(deletion);
        assert!(versions.apply(record("a.t", 9, 40, "old")).is_none());
        assert!(versions.newest().is_some_and(|r| r.value.is_none()));
    }

    #[test]
    fn the_newest_of_a_partition_can_fall_behind_another_copy() {
        let mut versions = Versions::default();
        versions.apply(record("t", 0, 100, "a-1"));
        versions.apply(record("b.t", 0, 50, "b-1"));
        // a's partition moves on to a write stamped behind b's.
        let changed = versions
            .apply(record("t", 1, 40, "a-2"))
            .map(|r| r.courier_id.clone());
        assert_eq!(changed.as_deref(), Some("b-1"));
    }

    #[test]
    fn a_tie_between_copies_is_ordered_by_id_the_same_both_ways() {
        let ours = record("t", 10, 5, "01A");
        let theirs = record("b.t", 3, 5, "01B");
        for order in [[&ours, &theirs], [&theirs, &ours]] {
            let mut versions = Versions::default();
            for record in order {
                versions.apply(record.clone());
            }
            assert_eq!(newest(&versions), Some("01B"));
        }
    }

    #[test]
    fn a_write_after_reading_is_newer_even_on_a_slower_clock() {
        assert_eq!(next_timestamp(None, 1_000), 1_000);
        assert_eq!(next_timestamp(Some(900), 1_000), 1_000);
        assert_eq!(next_timestamp(Some(5_000), 1_000), 5_001);
        assert_eq!(next_timestamp(Some(i64::MAX), 1), i64::MAX);
    }
}
