//! Which of two writes of one key a table keeps: the newest, whichever copy of the topic it was read
//! from.
//!
//! Under region routing a table reads its topic in the read region and every mirror of it
//! MirrorMaker 2 made there (`a.mqtt.sessions` in region `b`), and after a switch it reads another
//! region's set. Offsets of different topics, or of one topic in two clusters, say nothing about
//! which write came later, so every write carries its version in the record's timestamp, which
//! mirrors keep: the writer sets it past the version of the key it read (a hybrid logical clock, see
//! [`next_timestamp`]), so a write made after reading another is newer whatever the clocks of the
//! two gateways say. Timestamps that tie (writers that set none and were stamped in one
//! millisecond) are ordered by offset when both records come from the same partition of the same
//! read, else by their `courier-id`. Tombstones are versions like any other, so a delete is not
//! undone by an older copy read later.
//!
//! Every replica in every region that has read the same records keeps the same winners, in
//! whatever order they were read.

use std::cmp::Ordering;

use crate::log::{Appended, Record};

/// A write's version as a writer outside the table compares it (a connection's session record
/// against another's): its timestamp, then its `courier-id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// The record's timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// The record's id.
    pub courier_id: String,
}

impl Version {
    /// The version of a record read.
    pub fn of(record: &Record) -> Self {
        Self {
            timestamp_ms: record.timestamp_ms,
            courier_id: record.courier_id.clone(),
        }
    }

    /// The version of a record written.
    pub fn written(appended: &Appended) -> Self {
        Self {
            timestamp_ms: appended.timestamp_ms,
            courier_id: appended.courier_id.clone(),
        }
    }
}

/// A key's winning record and where it was read.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The record (`value` `None`: a tombstone).
    pub(super) record: Record,
    /// The read it came from: offsets of one partition compare only within one read.
    pub(super) read: u64,
}

impl Entry {
    /// Is `record`, read in read `read`, newer than this entry?
    pub(super) fn is_older_than(&self, record: &Record, read: u64) -> bool {
        match self.record.timestamp_ms.cmp(&record.timestamp_ms) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal
                if self.read == read
                    && self.record.topic == record.topic
                    && self.record.partition == record.partition =>
            {
                self.record.offset < record.offset
            }
            Ordering::Equal => self.record.courier_id < record.courier_id,
        }
    }
}

/// The timestamp a write of a key whose newest version is `current` carries, written at `now_ms`:
/// later than `current` even when this gateway's clock is behind the one that wrote it.
pub fn next_timestamp(current: Option<i64>, now_ms: i64) -> i64 {
    current.map_or(now_ms, |current| now_ms.max(current.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(topic: &str, partition: i32, offset: i64, timestamp_ms: i64, id: &str) -> Record {
        Record {
            topic: topic.into(),
            partition,
            offset,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
            timestamp_ms,
            courier_id: id.to_owned(),
            origin: String::new(),
        }
    }

    fn entry(record: Record, read: u64) -> Entry {
        Entry { record, read }
    }

    #[test]
    fn the_later_timestamp_wins_whatever_the_topic_or_offset() {
        let own = entry(record("mqtt.sessions", 0, 90, 2_000, "01B"), 0);
        let older_mirror = record("a.mqtt.sessions", 0, 5, 1_999, "01Z");
        let newer_mirror = record("a.mqtt.sessions", 0, 4, 2_001, "01A");
        assert!(!own.is_older_than(&older_mirror, 0));
        assert!(own.is_older_than(&newer_mirror, 0));
    }

    #[test]
    fn a_tie_is_ordered_by_offset_within_one_read_of_one_partition() {
        let first = entry(record("t", 1, 10, 5, "01Z"), 3);
        assert!(first.is_older_than(&record("t", 1, 11, 5, "01A"), 3));
        assert!(!first.is_older_than(&record("t", 1, 9, 5, "01ZZ"), 3));
    }

    #[test]
    fn a_tie_across_copies_or_reads_is_ordered_by_id_the_same_both_ways() {
        let ours = record("mqtt.sessions", 0, 10, 5, "01A");
        let theirs = record("b.mqtt.sessions", 0, 3, 5, "01B");
        assert!(entry(ours.clone(), 0).is_older_than(&theirs, 0));
        assert!(!entry(theirs.clone(), 0).is_older_than(&ours, 0));
        // The same partition in another read (another region's copy): offsets say nothing.
        let later_read = record("mqtt.sessions", 0, 11, 5, "00Z");
        assert!(!entry(ours, 0).is_older_than(&later_read, 1));
    }

    #[test]
    fn a_write_after_reading_is_newer_even_on_a_slower_clock() {
        assert_eq!(next_timestamp(None, 1_000), 1_000);
        assert_eq!(next_timestamp(Some(900), 1_000), 1_000);
        assert_eq!(next_timestamp(Some(5_000), 1_000), 5_001);
        assert_eq!(next_timestamp(Some(i64::MAX), 1), i64::MAX);
    }
}
