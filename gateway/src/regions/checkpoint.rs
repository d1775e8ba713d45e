//! MirrorMaker 2's checkpoint records, decoded. MirrorMaker 2 writes one to
//! `<source>.checkpoints.internal` in the target region per consumer group and partition, in Kafka's
//! protocol encoding (big-endian integers, strings as an int16 length and UTF-8):
//! - key: group (string), topic (string, the topic's name in the target region), partition (int32);
//! - value: version (int16, 0), upstream offset (int64), downstream offset (int64), metadata (string).
//!
//! The downstream offset is the group's committed offset translated into the target region.

use thiserror::Error;

/// One checkpoint: group `group` may resume `topic`/`partition` of the target region at
/// `downstream_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The consumer group.
    pub group: String,
    /// The topic as named in the region the checkpoint is in (`<source>.T` under the default policy).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset in the source region.
    pub upstream_offset: i64,
    /// The same position in the target region.
    pub downstream_offset: i64,
    /// The commit's metadata.
    pub metadata: String,
}

/// Why a checkpoint record could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The record ended early.
    #[error("checkpoint record too short reading {0}")]
    Truncated(&'static str),
    /// A string was not UTF-8.
    #[error("checkpoint {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A version this gateway does not know.
    #[error("checkpoint version {0} is not supported (only 0)")]
    Version(i16),
}

impl Checkpoint {
    /// Decodes a checkpoint record's key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, CheckpointError> {
        let mut key = Reader(key);
        let group = key.string("group")?;
        let topic = key.string("topic")?;
        let partition = i32::from_be_bytes(key.array("partition")?);
        let mut value = Reader(value);
        let version = i16::from_be_bytes(value.array("version")?);
        if version != 0 {
            return Err(CheckpointError::Version(version));
        }
        Ok(Self {
            group,
            topic,
            partition,
            upstream_offset: i64::from_be_bytes(value.array("upstream offset")?),
            downstream_offset: i64::from_be_bytes(value.array("downstream offset")?),
            metadata: value.string("metadata")?,
        })
    }
}

/// Reads Kafka protocol primitives off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CheckpointError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(CheckpointError::Truncated(what))?;
        self.0 = rest;
        Ok(*head)
    }

    fn string(&mut self, what: &'static str) -> Result<String, CheckpointError> {
        let length = usize::try_from(i16::from_be_bytes(self.array(what)?))
            .map_err(|_| CheckpointError::Truncated(what))?;
        if self.0.len() < length {
            return Err(CheckpointError::Truncated(what));
        }
        let (text, rest) = self.0.split_at(length);
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| CheckpointError::NotUtf8(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as MirrorMaker 2's `Checkpoint.recordKey()` and `recordValue()` lay them out, written out
    /// by hand: group "g1", topic "eu.orders", partition 2; version 0, upstream 1234, downstream 987,
    /// metadata "".
    const KEY: &[u8] = &[
        0, 2, b'g', b'1', 0, 9, b'e', b'u', b'.', b'o', b'r', b'd', b'e', b'r', b's', 0, 0, 0, 2,
    ];
    const VALUE: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0xD2, 0, 0, 0, 0, 0, 0, 0x03, 0xDB, 0, 0,
    ];

    #[test]
    fn decodes_mirrormakers_layout() {
        assert_eq!(
            Checkpoint::decode(KEY, VALUE),
            Ok(Checkpoint {
                group: "g1".into(),
                topic: "eu.orders".into(),
                partition: 2,
                upstream_offset: 1234,
                downstream_offset: 987,
                metadata: String::new(),
            })
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(
            Checkpoint::decode(&KEY[..KEY.len() - 1], VALUE),
            Err(CheckpointError::Truncated("partition"))
        );
        let mut future = VALUE.to_vec();
        future[1] = 1;
        assert_eq!(
            Checkpoint::decode(KEY, &future),
            Err(CheckpointError::Version(1))
        );
        assert_eq!(
            Checkpoint::decode(KEY, &VALUE[..VALUE.len() - 1]),
            Err(CheckpointError::Truncated("metadata"))
        );
    }
}
