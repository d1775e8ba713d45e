//! The state the embedded log's handle, its writer and its member tasks share. A module of its own so
//! that each of them depends on it rather than on the module that wires them together.

use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use fjall::{Database, Keyspace};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{groups::Coordinator, store, topics::Topics, writer::WriterHandle};
use crate::{
    Error, Result,
    config::{GroupsConfig, TopicsConfig},
    log::TopicPartition,
};

/// State shared by the log handle, the writer and the member tasks.
pub(super) struct Shared {
    pub(super) db: Database,
    pub(super) meta: Keyspace,
    pub(super) topics: Arc<Topics>,
    pub(super) coordinator: Arc<Coordinator>,
    pub(super) writer: WriterHandle,
    pub(super) writer_thread: Mutex<Option<JoinHandle<()>>>,
    pub(super) appended: watch::Receiver<u64>,
    /// Serializes topic creation and deletion.
    pub(super) topic_admin: tokio::sync::Mutex<()>,
    pub(super) topics_config: TopicsConfig,
    pub(super) groups_config: GroupsConfig,
    pub(super) closed: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("topics", &self.topics)
            .field("closed", &self.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A group's committed offset for a partition, if it ever committed one.
    pub(super) fn committed_offset(
        &self,
        group: &str,
        partition: &TopicPartition,
    ) -> Result<Option<i64>> {
        self.meta
            .get(store::offset_key(
                group,
                &partition.topic,
                partition.partition,
            ))
            .map_err(Error::storage("reading a committed offset"))?
            .map(|bytes| store::decode_i64(&bytes, "committed offset"))
            .transpose()
    }

    /// Every (topic, partition, offset) a group committed.
    pub(super) fn group_offsets(&self, group: &str) -> Result<Vec<(String, i32, i64)>> {
        let mut offsets = Vec::new();
        for guard in self.meta.prefix(store::group_offsets_prefix(group)) {
            let (key, value) = guard
                .into_inner()
                .map_err(Error::storage("reading group offsets"))?;
            if let Some((_, topic, partition)) = store::parse_offset_key(&key) {
                offsets.push((
                    topic,
                    partition,
                    store::decode_i64(&value, "committed offset")?,
                ));
            }
        }
        Ok(offsets)
    }
}
