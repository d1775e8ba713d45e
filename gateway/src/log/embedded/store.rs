//! How the embedded log lays Kafka's model onto fjall keyspaces, and the encoding of what it stores.
//!
//! - keyspace `meta`: `topic/<name>` -> [`TopicMeta`] (JSON, so a person can read it with fjall's CLI);
//!   `size/<topic id><partition>` -> bytes held by the partition (for retention by size);
//!   `offset/<group>\0<topic>\0<partition>` -> the group's committed offset; `next-topic-id`.
//! - keyspace `topic-<id>` per topic: `<partition u32 BE><offset u64 BE>` -> [`StoredRecord`] (postcard).
//!   Big-endian keys sort by partition, then offset, so a partition is one contiguous key range and its
//!   first and last keys are its watermarks. Topics get fresh ids, so a deleted and recreated name never
//!   sees old records.

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    log::{Header, Record},
};

/// Metadata key prefix of topics.
pub(super) const TOPIC_PREFIX: &str = "topic/";
/// Metadata key of the topic id counter.
pub(super) const NEXT_TOPIC_ID: &str = "next-topic-id";
/// Metadata key prefix of committed offsets.
pub(super) const OFFSET_PREFIX: &str = "offset/";

/// A topic's persistent settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TopicMeta {
    /// Id naming the topic's keyspace.
    pub(super) id: u64,
    /// Partition count.
    pub(super) partitions: u32,
    /// Retention by age, ms; 0 is unlimited.
    pub(super) retention_ms: i64,
    /// Retention by size per partition, bytes; 0 is unlimited.
    pub(super) retention_bytes: i64,
}

/// A record as stored: everything but its topic, partition and offset, which are in the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredRecord {
    pub(super) timestamp_ms: i64,
    pub(super) key: Option<Bytes>,
    pub(super) value: Option<Bytes>,
    pub(super) headers: Vec<(String, Bytes)>,
    pub(super) courier_id: String,
    pub(super) origin: String,
}

impl StoredRecord {
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        // Sized up front: grown from empty, a 1 KiB value's buffer was copied through six sizes.
        postcard::to_extend(self, Vec::with_capacity(self.encoded_len_bound())).map_err(|error| {
            Error::Corrupt {
                what: "record",
                detail: error.to_string(),
            }
        })
    }

    /// At least the encoded length: every byte string and its length (a varint of at most 10
    /// bytes), and the timestamp's and the lengths' varints.
    fn encoded_len_bound(&self) -> usize {
        const VARINT: usize = 10;
        let field = |bytes: usize| bytes + VARINT;
        let optional = |bytes: Option<&Bytes>| 1 + bytes.map_or(0, |bytes| field(bytes.len()));
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| field(name.len()) + field(value.len()))
            .sum();
        VARINT
            + optional(self.key.as_ref())
            + optional(self.value.as_ref())
            + VARINT
            + headers
            + field(self.courier_id.len())
            + field(self.origin.len())
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|error| Error::Corrupt {
            what: "record",
            detail: error.to_string(),
        })
    }

    pub(super) fn into_record(
        self,
        topic: std::sync::Arc<str>,
        partition: i32,
        offset: i64,
    ) -> Record {
        Record {
            topic,
            partition,
            offset,
            key: self.key,
            value: self.value,
            headers: self
                .headers
                .into_iter()
                .map(|(key, value)| Header { key, value })
                .collect(),
            timestamp_ms: self.timestamp_ms,
            courier_id: self.courier_id,
            origin: self.origin,
        }
    }
}

/// Key of a record: partition, then offset, both big-endian.
pub(super) fn record_key(partition: usize, offset: i64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&(partition as u32).to_be_bytes());
    key[4..].copy_from_slice(&(offset.max(0) as u64).to_be_bytes());
    key
}

/// The offset encoded in a record key.
pub(super) fn offset_of_key(key: &[u8]) -> Result<i64> {
    key.get(4..12)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(|bytes| u64::from_be_bytes(bytes) as i64)
        .ok_or_else(|| Error::Corrupt {
            what: "record key",
            detail: format!("{} bytes, expected 12", key.len()),
        })
}

/// Name of a topic's keyspace.
pub(super) fn topic_keyspace_name(id: u64) -> String {
    format!("topic-{id}")
}

/// Opens (or creates) a topic's keyspace.
pub(super) fn open_topic_keyspace(db: &Database, id: u64) -> Result<Keyspace> {
    db.keyspace(&topic_keyspace_name(id), KeyspaceCreateOptions::default)
        .map_err(Error::storage("opening a topic keyspace"))
}

/// Key of a partition's byte counter.
pub(super) fn size_key(topic_id: u64, partition: usize) -> Vec<u8> {
    let mut key = b"size/".to_vec();
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&(partition as u32).to_be_bytes());
    key
}

/// Key prefix of every committed offset of a group.
pub(super) fn group_offsets_prefix(group: &str) -> Vec<u8> {
    let mut key = OFFSET_PREFIX.as_bytes().to_vec();
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key
}

/// Key of a group's committed offset for one partition.
pub(super) fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = group_offsets_prefix(group);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&(partition as u32).to_be_bytes());
    key
}

/// Splits an offset key into (group, topic, partition).
pub(super) fn parse_offset_key(key: &[u8]) -> Option<(String, String, i32)> {
    let rest = key.strip_prefix(OFFSET_PREFIX.as_bytes())?;
    let group_end = rest.iter().position(|&b| b == 0)?;
    let (group, rest) = (&rest[..group_end], &rest[group_end + 1..]);
    let topic_end = rest.iter().position(|&b| b == 0)?;
    let (topic, partition) = (&rest[..topic_end], &rest[topic_end + 1..]);
    let partition = u32::from_be_bytes(<[u8; 4]>::try_from(partition).ok()?) as i32;
    Some((
        String::from_utf8(group.to_vec()).ok()?,
        String::from_utf8(topic.to_vec()).ok()?,
        partition,
    ))
}

/// Decodes a big-endian i64 value (committed offsets).
pub(super) fn decode_i64(bytes: &[u8], what: &'static str) -> Result<i64> {
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_be_bytes)
        .map_err(|_| Error::Corrupt {
            what,
            detail: format!("{} bytes, expected 8", bytes.len()),
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn record_keys_sort_by_partition_then_offset() {
        assert!(record_key(0, 255) < record_key(0, 256));
        assert!(record_key(0, i64::MAX) < record_key(1, 0));
        assert_eq!(offset_of_key(&record_key(7, 123_456)).ok(), Some(123_456));
        assert!(offset_of_key(b"short").is_err());
    }

    #[test]
    fn offset_keys_round_trip() {
        let key = offset_key("g1", "orders", 3);
        assert!(key.starts_with(&group_offsets_prefix("g1")));
        assert!(!key.starts_with(&group_offsets_prefix("g")));
        assert_eq!(
            parse_offset_key(&key),
            Some(("g1".into(), "orders".into(), 3))
        );
    }

    proptest! {
        #[test]
        fn stored_records_round_trip(
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
            headers in proptest::collection::vec(("[a-z-]{1,12}", proptest::collection::vec(any::<u8>(), 0..16)), 0..4),
            timestamp_ms in any::<i64>(),
        ) {
            let stored = StoredRecord {
                timestamp_ms,
                key: key.map(Bytes::from),
                value: value.map(Bytes::from),
                headers: headers.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect(),
                courier_id: "01J0000000000000000000000".into(),
                origin: "local".into(),
            };
            let encoded = stored.encode().expect("encodes");
            // The buffer is made once: the bound is never short.
            prop_assert!(encoded.len() <= stored.encoded_len_bound());
            let bound = stored.encoded_len_bound();
            prop_assert_eq!(encoded.capacity(), Vec::<u8>::with_capacity(bound).capacity());
            prop_assert_eq!(StoredRecord::decode(&encoded).expect("decodes"), stored);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StoredRecord::decode(&bytes);
            let _ = parse_offset_key(&bytes);
            let _ = offset_of_key(&bytes);
        }
    }
}
