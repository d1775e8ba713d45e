//! What one Fetch may read and return, whatever it asks for: at most `grpc.max_fetch_records`
//! records and `grpc.max_fetch_bytes` key and value bytes from the log, and never more than one
//! response may carry (`grpc.max_message_bytes`, the records encoded). Lowered, not refused: a
//! client pages by offset anyway, so a shorter answer only means one more Fetch.

use courier_gateway::log::{FetchLimits, Record};
use prost::Message as _;

use crate::{Config, convert::record_to_wire, proto::v1 as pb};

/// Room in a FetchResponse for what is not records: the two watermarks, each a tag and a varint.
const WATERMARKS_BYTES: usize = 2 * (1 + 10);

/// The caps on one Fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchCaps {
    max_records: usize,
    max_bytes: usize,
    max_message_bytes: usize,
}

impl FetchCaps {
    /// The caps `config` sets.
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            max_records: config.max_fetch_records,
            max_bytes: config.max_fetch_bytes,
            max_message_bytes: config.max_message_bytes,
        }
    }

    /// What to ask the log for when a client asks for `max_records` and `max_bytes` (0: the
    /// default), within the caps.
    pub(crate) fn limits(&self, max_records: u32, max_bytes: u32) -> FetchLimits {
        let defaults = FetchLimits::default();
        let asked = |value: u32, default: usize| match value {
            0 => default,
            asked => asked as usize,
        };
        FetchLimits {
            max_records: asked(max_records, defaults.max_records).min(self.max_records),
            max_bytes: asked(max_bytes, defaults.max_bytes)
                .min(self.max_bytes)
                .min(self.max_message_bytes),
        }
    }

    /// The records as the response carries them: the longest prefix that fits in one message (the
    /// first record always, as the log returns one record even past `max_bytes`).
    pub(crate) fn fit(&self, records: Vec<Record>) -> Vec<pb::Record> {
        let mut room = self.max_message_bytes.saturating_sub(WATERMARKS_BYTES);
        let mut fitted = Vec::with_capacity(records.len());
        for record in records {
            let record = record_to_wire(record);
            let length = record.encoded_len();
            // The field's tag (one byte) and length prefix, then the record.
            let size = 1 + prost::length_delimiter_len(length) + length;
            if size > room && !fitted.is_empty() {
                break;
            }
            room = room.saturating_sub(size);
            fitted.push(record);
        }
        fitted
    }
}

#[cfg(test)]
mod tests {
    use prost::bytes::Bytes;

    use super::*;

    fn caps(max_records: usize, max_bytes: usize, max_message_bytes: usize) -> FetchCaps {
        FetchCaps {
            max_records,
            max_bytes,
            max_message_bytes,
        }
    }

    fn record(offset: i64, value_bytes: usize) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            value: Some(Bytes::from(vec![b'x'; value_bytes])),
            headers: Vec::new(),
            timestamp_ms: 0,
            courier_id: "01J00000000000000000000000".into(),
            origin: "local".into(),
        }
    }

    #[test]
    fn asks_past_the_caps_are_lowered_to_them() {
        let caps = caps(100, 4096, 1 << 20);
        let limits = caps.limits(10_000_000, u32::MAX);
        assert_eq!((limits.max_records, limits.max_bytes), (100, 4096));
        let limits = caps.limits(7, 10);
        assert_eq!((limits.max_records, limits.max_bytes), (7, 10));
        let defaults = FetchLimits::default();
        let limits = caps.limits(0, 0);
        assert_eq!(limits.max_records, defaults.max_records.min(100));
        assert_eq!(limits.max_bytes, defaults.max_bytes.min(4096));
    }

    #[test]
    fn bytes_never_exceed_one_message() {
        let limits = caps(100, 8 << 20, 1 << 20).limits(0, u32::MAX);
        assert_eq!(limits.max_bytes, 1 << 20);
    }

    #[test]
    fn the_response_fits_in_one_message_and_keeps_at_least_one_record() {
        let caps = caps(100, 1 << 20, 10_000);
        let records: Vec<Record> = (0..10).map(|offset| record(offset, 3_000)).collect();
        let fitted = caps.fit(records);
        assert_eq!(fitted.len(), 3);
        let response = pb::FetchResponse {
            records: fitted,
            low_watermark: i64::MAX,
            high_watermark: i64::MAX,
        };
        assert!(response.encoded_len() <= 10_000);
        assert_eq!(caps.fit(vec![record(0, 20_000)]).len(), 1);
    }
}
