//! Topic metadata: partition counts, cached briefly so a produce does not cost a metadata round trip.
//! The gateway partitions records itself (so a bad partition is refused before anything is sent), which
//! needs the count; a count older than [`FRESH_FOR`] is read again, so partitions added to a topic are
//! picked up without a restart.

use std::{
    collections::HashMap,
    sync::{PoisonError, RwLock},
    time::{Duration, Instant},
};

use rdkafka::{
    client::{Client, ClientContext},
    types::RDKafkaRespErr,
};

use crate::{Error, Result};

/// How long a cached partition count is trusted.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// Partition counts by topic.
#[derive(Debug, Default)]
pub(super) struct PartitionCounts {
    counts: RwLock<HashMap<String, (u32, Instant)>>,
}

impl PartitionCounts {
    /// A fresh cached count.
    pub(super) fn cached(&self, topic: &str) -> Option<u32> {
        let counts = self.counts.read().unwrap_or_else(PoisonError::into_inner);
        counts
            .get(topic)
            .filter(|(_, read)| read.elapsed() < FRESH_FOR)
            .map(|(count, _)| *count)
    }

    pub(super) fn store(&self, topic: &str, count: u32) {
        let mut counts = self.counts.write().unwrap_or_else(PoisonError::into_inner);
        counts.insert(topic.to_owned(), (count, Instant::now()));
    }

    /// Drops every count: after a cluster was lost, its topics may come back different (or not at all).
    pub(super) fn forget_all(&self) {
        let mut counts = self.counts.write().unwrap_or_else(PoisonError::into_inner);
        counts.clear();
    }

    pub(super) fn forget(&self, topic: &str) {
        let mut counts = self.counts.write().unwrap_or_else(PoisonError::into_inner);
        counts.remove(topic);
    }
}

/// Whether a topic is Kafka's own (`__consumer_offsets`, ...), hidden from listings.
pub(super) fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// Partition counts of topics (all of them with `None`) as the cluster reports them now. Topics that
/// do not exist are left out. Blocks.
pub(super) fn read_partition_counts<C: ClientContext>(
    client: &Client<C>,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<Vec<(String, u32)>> {
    let metadata = client
        .fetch_metadata(topic, timeout)
        .map_err(Error::kafka("reading topic metadata"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| {
            !matches!(
                t.error(),
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            ) && !t.partitions().is_empty()
                && !is_internal(t.name())
        })
        .map(|t| (t.name().to_owned(), t.partitions().len() as u32))
        .collect())
}
