//! What the Kafka log handle and its subscriptions share: the clients, the caches and the local
//! members. A module of its own so that the handle and the members each depend on it rather than on
//! each other.

use std::sync::{Arc, OnceLock};

use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::{Client, DefaultClientContext},
    consumer::BaseConsumer,
    producer::{FutureProducer, Producer},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    clients, codec,
    local::LocalMembers,
    metadata::{self, PartitionCounts},
    reader::{Reader, Watermarks},
};
use crate::{
    Error, Result,
    config::{GroupsConfig, KafkaConfig, TopicsConfig},
    log::{GroupMember, Position, TopicPartition, partitioner, validate},
};

/// What the log handle and the subscriptions share.
pub(super) struct Shared {
    pub(super) config: KafkaConfig,
    pub(super) topics_config: TopicsConfig,
    pub(super) groups_config: GroupsConfig,
    pub(super) origin: String,
    pub(super) producer: FutureProducer,
    /// The probe's producer, made at the first probe (a backend that is no region never probes).
    pub(super) probe_producer: OnceLock<FutureProducer>,
    pub(super) admin: AdminClient<DefaultClientContext>,
    pub(super) reader: Reader,
    pub(super) partition_counts: PartitionCounts,
    pub(super) local_members: LocalMembers,
    pub(super) round_robin: partitioner::RoundRobin,
    pub(super) closed: CancellationToken,
    pub(super) subscriptions: TaskTracker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Runs a blocking librdkafka call on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    call: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
) -> Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || call(&shared))
        .await
        .map_err(|_| Error::ShuttingDown)?
}

impl Shared {
    pub(super) fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    pub(super) fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.config.request_timeout))
            .operation_timeout(Some(self.config.request_timeout))
    }

    /// The client topic metadata is read through: the admin client's, not the producer's. Every
    /// topic a producer is asked about joins the partitions it serves in turn (an idle one hands
    /// its turns to the partition after it), so the producer only hears of the topics it writes.
    /// The admin client is a librdkafka producer too and collects these topics, harmlessly: it never
    /// queues a record. The producer's own view is refreshed when it refuses a record for a topic
    /// or partition it does not know yet ([`refresh_for_writing`](super::refresh_for_writing)).
    pub(super) fn metadata_client(&self) -> &Client<DefaultClientContext> {
        self.admin.inner()
    }

    /// The probe's producer ([`clients::probe_producer`]), made on first use.
    pub(super) fn probe_producer(&self) -> Result<&FutureProducer> {
        self.check_open()?;
        if let Some(producer) = self.probe_producer.get() {
            return Ok(producer);
        }
        let producer = clients::probe_producer(&self.config)
            .create()
            .map_err(Error::kafka("creating the probe's producer"))?;
        // Two probes at once may both make one; the second is dropped.
        Ok(self.probe_producer.get_or_init(|| producer))
    }

    /// A consumer of `group` that never joins it: for commits and committed-offset lookups.
    pub(super) fn group_client(&self, group: &str) -> Result<BaseConsumer> {
        clients::consumer(&self.config, Some(group), "courier-admin")
            .create()
            .map_err(Error::kafka("creating a group client"))
    }

    /// The partition count of a topic, reading metadata when the cache has none. Blocks.
    pub(super) fn partition_count(&self, topic: &str) -> Result<Option<u32>> {
        if let Some(count) = self.partition_counts.cached(topic) {
            return Ok(Some(count));
        }
        let count = metadata::read_partition_counts(
            self.metadata_client(),
            Some(topic),
            self.config.request_timeout,
        )?
        .into_iter()
        .find(|(name, _)| name == topic)
        .map(|(_, count)| count);
        match count {
            Some(count) => self.partition_counts.store(topic, count),
            None => self.partition_counts.forget(topic),
        }
        Ok(count)
    }

    /// Where a position lands in a partition. Blocks.
    pub(super) fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        let Watermarks { low, high } = self
            .reader
            .watermarks(&partition.topic, &[partition.partition])?
            .first()
            .copied()
            .ok_or_else(|| Error::UnknownTopic {
                topic: partition.topic.to_string(),
            })?;
        Ok(match position {
            Position::Earliest => low,
            Position::Latest => high,
            Position::Offset(offset) => offset.clamp(low, high),
            Position::Timestamp(timestamp) => self
                .reader
                .offset_for_time(partition, timestamp)?
                .map_or(high, |offset| offset.clamp(low, high)),
        })
    }

    /// Live members of a group as the broker sees them (empty when the group is unknown). Blocks.
    pub(super) fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        let groups = self
            .producer
            .client()
            .fetch_group_list(Some(group), self.config.request_timeout)
            .map_err(Error::kafka("describing a consumer group"))?;
        Ok(groups
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .flat_map(|g| g.members())
            .map(|member| {
                let client_id = codec::member_client_id(member.client_id(), member.id());
                let (protocol, client) = codec::parse_subscriber_client_id(client_id)
                    .unwrap_or(("kafka", member.client_host()));
                let mut assigned = member
                    .assignment()
                    .and_then(codec::decode_assignment)
                    .unwrap_or_default();
                if assigned.is_empty() {
                    assigned = self.local_members.assigned(client_id).unwrap_or_default();
                }
                GroupMember {
                    member_id: member.id().to_owned(),
                    client: client.to_owned(),
                    protocol: protocol.to_owned(),
                    assigned,
                }
            })
            .collect())
    }

    /// Checks partitions exist. Blocks.
    pub(super) fn check_partition(&self, partition: &TopicPartition) -> Result<()> {
        let count = self
            .partition_count(&partition.topic)?
            .ok_or_else(|| Error::UnknownTopic {
                topic: partition.topic.to_string(),
            })?;
        validate::partition(&partition.topic, partition.partition, count).map(drop)
    }
}
