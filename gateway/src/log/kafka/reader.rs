//! Reads that join no group: fetches, watermarks, offsets by time. One consumer serves them all, one
//! request at a time; every call blocks, so callers run it on a blocking thread.
//!
//! An offset found by time is checked against the record it names: a broker that answers with an
//! earlier record (tansu 0.6.0 answers 0 for every timestamp) is corrected by reading forward, so a
//! "start at this time" never replays older records.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use super::{clients, codec};
use crate::{
    Error, Result,
    config::KafkaConfig,
    log::{FetchLimits, Fetched, Record, TopicPartition},
};

/// A partition's oldest retained offset and next offset to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Watermarks {
    pub(super) low: i64,
    pub(super) high: i64,
}

/// The shared group-less reader.
pub(super) struct Reader {
    consumer: Mutex<BaseConsumer>,
    timeout: Duration,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    pub(super) fn new(config: &KafkaConfig) -> Result<Self> {
        let consumer = clients::reader(config)
            .create()
            .map_err(Error::kafka("creating the reader"))?;
        Ok(Self {
            consumer: Mutex::new(consumer),
            timeout: config.request_timeout,
        })
    }

    /// Watermarks of partitions of one topic, in the order given.
    pub(super) fn watermarks(&self, topic: &str, partitions: &[i32]) -> Result<Vec<Watermarks>> {
        let consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        self.watermarks_locked(&consumer, topic, partitions)
    }

    fn watermarks_locked(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<Watermarks>> {
        partitions
            .iter()
            .map(|&partition| {
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, self.timeout)
                    .map_err(Error::kafka("reading watermarks"))?;
                Ok(Watermarks { low, high })
            })
            .collect()
    }

    /// Records of one partition from `offset`, within `limits`.
    pub(super) fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        let consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        self.fetch_locked(&consumer, partition, offset, limits)
    }

    fn fetch_locked(
        &self,
        consumer: &BaseConsumer,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        let Watermarks { low, high } = self
            .watermarks_locked(consumer, &partition.topic, &[partition.partition])?
            .first()
            .copied()
            .ok_or_else(|| Error::UnknownTopic {
                topic: partition.topic.to_string(),
            })?;
        if offset < low || offset > high {
            return Err(Error::OffsetOutOfRange {
                topic: partition.topic.to_string(),
                partition: partition.partition,
                offset,
                low,
                high,
            });
        }
        let mut records: Vec<Record> = Vec::new();
        if offset == high || limits.max_records == 0 {
            return Ok(Fetched {
                records,
                low_watermark: low,
                high_watermark: high,
            });
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                &partition.topic,
                partition.partition,
                Offset::Offset(offset),
            )
            .map_err(Error::kafka("fetching"))?;
        consumer
            .assign(&assignment)
            .map_err(Error::kafka("fetching"))?;
        let topic: Arc<str> = partition.topic.clone();
        let mut bytes = 0;
        let deadline = Instant::now() + self.timeout;
        let outcome = loop {
            if records.len() >= limits.max_records
                || (bytes >= limits.max_bytes && !records.is_empty())
            {
                break Ok(());
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break Ok(());
            };
            match consumer.poll(left) {
                Some(Ok(message)) => {
                    let record = codec::record_of(&topic, &message);
                    let size = record.payload_size();
                    if !records.is_empty() && bytes + size > limits.max_bytes {
                        break Ok(());
                    }
                    bytes += size;
                    records.push(record);
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => break Ok(()),
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    break Err(Error::OffsetOutOfRange {
                        topic: partition.topic.to_string(),
                        partition: partition.partition,
                        offset,
                        low,
                        high,
                    });
                }
                Some(Err(error)) => {
                    let error = Error::kafka("fetching")(error);
                    // librdkafka reports lost connections as events and reconnects by itself.
                    if !error.is_retryable() {
                        break Err(error);
                    }
                    tracing::debug!(%error, "transient error while fetching");
                }
            }
        };
        consumer.unassign().map_err(Error::kafka("fetching"))?;
        outcome?;
        let high = high.max(records.last().map_or(high, |r| r.offset + 1));
        Ok(Fetched {
            records,
            low_watermark: low,
            high_watermark: high,
        })
    }

    /// The first offset at or after `timestamp_ms`; `None` when no record is that recent.
    pub(super) fn offset_for_time(
        &self,
        partition: &TopicPartition,
        timestamp_ms: i64,
    ) -> Result<Option<i64>> {
        let consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(
                &partition.topic,
                partition.partition,
                Offset::Offset(timestamp_ms),
            )
            .map_err(Error::kafka("looking up an offset by time"))?;
        let answer = consumer
            .offsets_for_times(query, self.timeout)
            .map_err(Error::kafka("looking up an offset by time"))?;
        let Some(mut offset) = answer
            .find_partition(&partition.topic, partition.partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
        else {
            return Ok(None);
        };
        // Check the answer: read forward while records are older than asked (see the module docs).
        loop {
            let page = self.fetch_locked(&consumer, partition, offset, FetchLimits::default())?;
            match page
                .records
                .iter()
                .find(|record| record.timestamp_ms >= timestamp_ms)
            {
                Some(record) => return Ok(Some(record.offset)),
                None => match page.records.last() {
                    Some(last) => offset = last.offset + 1,
                    None => return Ok(None),
                },
            }
        }
    }
}
