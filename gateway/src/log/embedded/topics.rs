//! The in-memory table of topics: each topic's keyspace, settings and per-partition watermarks.
//!
//! Watermarks are the contract between the writer and the readers: the writer raises a partition's high
//! watermark only after the records below it are durable, and readers never read at or past it. So a
//! record is never delivered before it could survive a crash.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use fjall::Keyspace;

use super::store::{self, StoredRecord, TopicMeta};
use crate::{
    Error, Result,
    log::{
        FetchLimits, PartitionWatermarks, Position, Record, TopicDescription,
        partitioner::RoundRobin,
    },
};

/// One partition's watermarks and size.
#[derive(Debug, Default)]
pub(super) struct PartitionState {
    /// Oldest retained offset.
    pub(super) low: AtomicI64,
    /// Next offset to be written; everything below it is durable.
    pub(super) high: AtomicI64,
    /// Encoded bytes held, for retention by size.
    pub(super) bytes: AtomicU64,
}

/// A topic of the embedded log.
pub(super) struct Topic {
    pub(super) name: Arc<str>,
    pub(super) meta: TopicMeta,
    pub(super) keyspace: Keyspace,
    pub(super) partitions: Vec<PartitionState>,
    /// Set before the topic's data is removed; the writer refuses appends to it from then on.
    pub(super) deleted: AtomicBool,
    pub(super) round_robin: RoundRobin,
}

impl Topic {
    /// Whether the topic is being deleted: nothing more is appended to it or committed for it.
    pub(super) fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Topic {
    /// Builds the in-memory state of a topic from its keyspace: the first and last key of each
    /// partition are its watermarks (retention never removes a partition's newest record, so the high
    /// watermark survives restarts).
    pub(super) fn load(
        name: &str,
        meta: TopicMeta,
        keyspace: Keyspace,
        sizes: Vec<u64>,
    ) -> Result<Self> {
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for partition in 0..meta.partitions as usize {
            let mut range = keyspace
                .range(store::record_key(partition, 0)..store::record_key(partition + 1, 0));
            let first = range
                .next()
                .map(|guard| guard.key())
                .transpose()
                .map_err(Error::storage("recovering a partition"))?;
            let last = range
                .next_back()
                .map(|guard| guard.key())
                .transpose()
                .map_err(Error::storage("recovering a partition"))?;
            let low = first.as_deref().map(store::offset_of_key).transpose()?;
            let high = last
                .as_deref()
                .map(store::offset_of_key)
                .transpose()?
                .map(|last| last + 1)
                .or(low.map(|low| low + 1));
            partitions.push(PartitionState {
                low: AtomicI64::new(low.unwrap_or(0)),
                high: AtomicI64::new(high.unwrap_or(0)),
                bytes: AtomicU64::new(sizes.get(partition).copied().unwrap_or(0)),
            });
        }
        Ok(Self {
            name: name.into(),
            meta,
            keyspace,
            partitions,
            deleted: AtomicBool::new(false),
            round_robin: RoundRobin::default(),
        })
    }

    pub(super) fn partition_count(&self) -> u32 {
        self.meta.partitions
    }

    pub(super) fn watermarks(&self, partition: usize) -> (i64, i64) {
        self.partitions.get(partition).map_or((0, 0), |state| {
            (
                state.low.load(Ordering::Acquire),
                state.high.load(Ordering::Acquire),
            )
        })
    }

    pub(super) fn describe(&self) -> TopicDescription {
        TopicDescription {
            name: self.name.to_string(),
            partitions: (0..self.partitions.len())
                .map(|partition| {
                    let (low, high) = self.watermarks(partition);
                    PartitionWatermarks {
                        partition: partition as i32,
                        low,
                        high,
                    }
                })
                .collect(),
            retention_ms: self.meta.retention_ms,
            retention_bytes: self.meta.retention_bytes,
        }
    }

    /// Reads durable records of a partition from `from` on, within `limits` (at least one record when
    /// any is there, even over `max_bytes`, as Kafka does).
    pub(super) fn read(
        &self,
        partition: usize,
        from: i64,
        limits: FetchLimits,
    ) -> Result<Vec<Record>> {
        let (low, high) = self.watermarks(partition);
        let from = from.max(low);
        if from >= high || limits.max_records == 0 {
            return Ok(Vec::new());
        }
        let mut records = Vec::new();
        let mut bytes = 0usize;
        for guard in self
            .keyspace
            .range(store::record_key(partition, from)..store::record_key(partition, high))
        {
            let (key, value) = guard
                .into_inner()
                .map_err(Error::storage("reading records"))?;
            let record = StoredRecord::decode(&value)?.into_record(
                self.name.clone(),
                partition as i32,
                store::offset_of_key(&key)?,
            );
            bytes += record.payload_size();
            if !records.is_empty() && bytes > limits.max_bytes {
                break;
            }
            records.push(record);
            if records.len() >= limits.max_records {
                break;
            }
        }
        Ok(records)
    }

    /// The offset a position means in a partition. Timestamps scan from the oldest record: the embedded
    /// log keeps no time index, and producer timestamps need not be monotonic.
    pub(super) fn resolve(&self, partition: usize, position: Position) -> Result<i64> {
        let (low, high) = self.watermarks(partition);
        Ok(match position {
            Position::Earliest => low,
            Position::Latest => high,
            Position::Offset(offset) => offset.clamp(low, high),
            Position::Timestamp(timestamp_ms) => {
                let range = self
                    .keyspace
                    .range(store::record_key(partition, low)..store::record_key(partition, high));
                let mut found = high;
                for guard in range {
                    let (key, value) = guard
                        .into_inner()
                        .map_err(Error::storage("searching by timestamp"))?;
                    if StoredRecord::decode(&value)?.timestamp_ms >= timestamp_ms {
                        found = store::offset_of_key(&key)?;
                        break;
                    }
                }
                found
            }
        })
    }
}

/// Every topic, by name.
#[derive(Debug, Default)]
pub(super) struct Topics {
    by_name: RwLock<HashMap<String, Arc<Topic>>>,
}

impl Topics {
    pub(super) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read_map().get(name).cloned()
    }

    pub(super) fn insert(&self, topic: Arc<Topic>) {
        self.write_map().insert(topic.name.to_string(), topic);
    }

    pub(super) fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        self.write_map().remove(name)
    }

    /// Every topic, sorted by name.
    pub(super) fn all(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.read_map().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself is still whole.
        self.by_name
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.by_name
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
