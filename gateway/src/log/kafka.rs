//! The Kafka backend: the Log on a Kafka cluster through librdkafka (compiled in).
//!
//! - producing: one idempotent `acks=all` producer per gateway for clients' records (a region's
//!   probe has one of its own, see `probe`); a client's ack is the broker's delivery report. The
//!   gateway picks partitions itself with Kafka's murmur2 partitioner, so an explicit partition
//!   outside the topic is refused before anything is sent and keys land where a Java client puts
//!   them;
//! - [`member`]: one librdkafka consumer per subscription (cooperative-sticky), offsets committed only
//!   over the acknowledged prefix, pause at the in-flight window, commit before revoked partitions are
//!   handed away;
//! - [`reader`]: fetches and watermarks without a group;
//! - [`metadata`]: partition counts;
//! - [`clients`]: librdkafka settings; [`codec`]: records to messages and back;
//! - [`shared`]: what the handle and the subscriptions share; [`local`]: this gateway's members.
//!
//! The gateway keeps no state of its own here: groups, offsets and records live in Kafka, so replicas
//! behind one load balancer share consumer groups, and a replica's death only moves partitions.

mod clients;
mod codec;
mod local;
mod member;
mod metadata;
mod probe;
mod reader;
mod shared;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use rdkafka::{
    Offset, TopicPartitionList,
    admin::{NewTopic, ResourceSpecifier, TopicReplication},
    consumer::{CommitMode, Consumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer, PurgeConfig},
    types::RDKafkaErrorCode,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{
    local::LocalMembers,
    metadata::PartitionCounts,
    reader::Reader,
    shared::{Shared, blocking},
};
use super::{
    AppendReceipt, Appended, FetchLimits, Fetched, GroupDescription, GroupMember, GroupOffset, Log,
    NewRecord, PartitionWatermarks, Position, SubscribeOptions, Subscription, TopicDescription,
    TopicPartition, TopicSpec, TopicSummary, partitioner, validate,
};
use crate::{
    Error, Result,
    config::{GroupsConfig, KafkaConfig, TopicsConfig},
};

/// The Kafka backend. Cheap to clone; clones share the clients.
#[derive(Debug, Clone)]
pub struct Kafka {
    shared: Arc<Shared>,
}

impl Kafka {
    /// Connects to the cluster and checks it answers. `origin` is the region name written into every
    /// record's `courier-origin` header.
    pub async fn connect(
        config: &KafkaConfig,
        topics_config: TopicsConfig,
        groups_config: GroupsConfig,
        origin: &str,
    ) -> Result<Self> {
        let kafka = Self::open(config, topics_config, groups_config, origin)?;
        let topics = blocking(&kafka.shared, |shared| {
            metadata::read_partition_counts(
                shared.producer.client(),
                None,
                shared.config.request_timeout,
            )
        })
        .await?;
        tracing::info!(
            bootstrap = %config.bootstrap_servers,
            topics = topics.len(),
            "connected to Kafka"
        );
        Ok(kafka)
    }

    /// Makes the clients without waiting for the cluster: a region's cluster may be down when the
    /// gateway starts, and the region router's probes find out when it answers.
    pub fn open(
        config: &KafkaConfig,
        topics_config: TopicsConfig,
        groups_config: GroupsConfig,
        origin: &str,
    ) -> Result<Self> {
        let producer: FutureProducer = clients::producer(config)
            .create()
            .map_err(Error::kafka("creating the producer"))?;
        let admin = clients::admin(config)
            .create()
            .map_err(Error::kafka("creating the admin client"))?;
        let shared = Arc::new(Shared {
            reader: Reader::new(config)?,
            config: config.clone(),
            topics_config,
            groups_config,
            origin: origin.to_owned(),
            producer,
            probe_producer: std::sync::OnceLock::new(),
            admin,
            partition_counts: PartitionCounts::default(),
            local_members: LocalMembers::default(),
            round_robin: partitioner::RoundRobin::default(),
            closed: CancellationToken::new(),
            subscriptions: TaskTracker::new(),
        });
        Ok(Self { shared })
    }
}

impl Kafka {
    /// The partition count of a topic; `UnknownTopic` when it does not exist.
    async fn partitions(&self, topic: &str) -> Result<u32> {
        let name = topic.to_owned();
        blocking(&self.shared, move |s| s.partition_count(&name))
            .await?
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// Chooses each record's partition (see [`partitioner::choose`]).
    fn partition_records(
        &self,
        topic: &str,
        records: &[NewRecord],
        count: u32,
    ) -> Result<Vec<i32>> {
        partitioner::choose(topic, records, count, &self.shared.round_robin)
    }

    /// Reads a topic's partition count from metadata (not the cache) until `settled` holds or
    /// `request_timeout` passes; says whether it settled. Topic creation and deletion reach every
    /// broker's metadata a moment after the admin request answers.
    async fn await_metadata(
        &self,
        topic: &str,
        settled: impl Fn(Option<u32>) -> bool,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + self.shared.config.request_timeout;
        loop {
            self.shared.partition_counts.forget(topic);
            let name = topic.to_owned();
            if settled(blocking(&self.shared, move |s| s.partition_count(&name)).await?) {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How long to wait before offering a record again when librdkafka's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

#[async_trait]
impl Log for Kafka {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        self.shared.check_open()?;
        let mut count = self.partitions(topic).await?;
        let partitions = match self.partition_records(topic, &records, count) {
            // The cached count may be stale when partitions were just added: read it once more.
            Err(Error::UnknownPartition { .. }) => {
                self.shared.partition_counts.forget(topic);
                count = self.partitions(topic).await?;
                self.partition_records(topic, &records, count)?
            }
            other => other?,
        };

        enqueue(
            &self.shared,
            &self.shared.producer,
            topic,
            records,
            partitions,
        )
        .await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.shared.check_open()?;
        if let super::TopicSelector::Names(names) = &options.topics {
            for name in names {
                self.partitions(name).await?;
            }
        }
        member::start(self.shared.clone(), options)
    }

    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        self.shared.check_open()?;
        let partition = partition.clone();
        blocking(&self.shared, move |s| {
            s.check_partition(&partition)?;
            s.reader.fetch(&partition, offset, limits)
        })
        .await
    }

    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        self.shared.check_open()?;
        let partition = partition.clone();
        blocking(&self.shared, move |s| {
            s.check_partition(&partition)?;
            s.resolve(&partition, position)
        })
        .await
    }

    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.shared.check_open()?;
        let group = group.to_owned();
        let offsets = offsets.to_vec();
        blocking(&self.shared, move |s| {
            let members = s.group_members(&group)?;
            if !members.is_empty() {
                // Kafka refuses commits from outside a live group too; saying so here gives the reason.
                return Err(Error::GroupActive {
                    group,
                    members: members.len(),
                });
            }
            for (partition, _) in &offsets {
                s.check_partition(partition)?;
            }
            let list = codec::offset_list(&offsets).map_err(Error::kafka("committing offsets"))?;
            s.group_client(&group)?
                .commit(&list, CommitMode::Sync)
                .map_err(Error::kafka("committing offsets"))
        })
        .await
    }

    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        self.shared.check_open()?;
        let validate::TopicSettings {
            partitions,
            retention_ms,
            retention_bytes,
        } = validate::topic_spec(&spec, &self.shared.topics_config)?;
        // Kafka spells "unlimited" as -1.
        let kafka_ms = if retention_ms == 0 { -1 } else { retention_ms }.to_string();
        let kafka_bytes = if retention_bytes == 0 {
            -1
        } else {
            retention_bytes
        }
        .to_string();
        let topic = NewTopic::new(
            &spec.name,
            partitions as i32,
            TopicReplication::Fixed(self.shared.config.replication_factor),
        )
        .set("retention.ms", &kafka_ms)
        .set("retention.bytes", &kafka_bytes)
        .set(
            "cleanup.policy",
            if spec.compacted { "compact" } else { "delete" },
        );
        let results = self
            .shared
            .admin
            .create_topics([&topic], &self.shared.admin_options())
            .await
            .map_err(Error::kafka("creating a topic"))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    return Err(Error::TopicExists {
                        topic: spec.name.clone(),
                    });
                }
                Err((_, code)) => {
                    return Err(Error::kafka("creating a topic")(KafkaError::AdminOp(code)));
                }
            }
        }
        if !self
            .await_metadata(&spec.name, |count| count == Some(partitions))
            .await?
        {
            return Err(Error::kafka(
                "waiting for a new topic to appear in metadata",
            )(KafkaError::AdminOp(
                RDKafkaErrorCode::RequestTimedOut,
            )));
        }
        let name = spec.name;
        tracing::info!(topic = %name, partitions, "topic created");
        Ok(TopicDescription {
            name,
            partitions: (0..partitions as i32)
                .map(|partition| PartitionWatermarks {
                    partition,
                    low: 0,
                    high: 0,
                })
                .collect(),
            retention_ms,
            retention_bytes,
        })
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.shared.check_open()?;
        let results = self
            .shared
            .admin
            .delete_topics(&[topic], &self.shared.admin_options())
            .await
            .map_err(Error::kafka("deleting a topic"))?;
        self.shared.partition_counts.forget(topic);
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    return Err(Error::UnknownTopic {
                        topic: topic.to_owned(),
                    });
                }
                Err((_, code)) => {
                    return Err(Error::kafka("deleting a topic")(KafkaError::AdminOp(code)));
                }
            }
        }
        // Answer once metadata shows it; a broker slower than that still deletes it.
        self.await_metadata(topic, |count| count.is_none()).await?;
        self.shared.partition_counts.forget(topic);
        tracing::info!(topic, "topic deleted");
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.shared.check_open()?;
        let mut topics = blocking(&self.shared, |s| {
            metadata::read_partition_counts(s.metadata_client(), None, s.config.request_timeout)
        })
        .await?;
        topics.sort();
        Ok(topics
            .into_iter()
            .map(|(name, partitions)| TopicSummary { name, partitions })
            .collect())
    }

    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.shared.check_open()?;
        let name = topic.to_owned();
        let marks = blocking(&self.shared, move |s| {
            s.partition_counts.forget(&name);
            let count = s
                .partition_count(&name)?
                .ok_or_else(|| Error::UnknownTopic {
                    topic: name.clone(),
                })?;
            let partitions: Vec<i32> = (0..count as i32).collect();
            s.reader.watermarks(&name, &partitions)
        })
        .await?;
        let configs = self
            .shared
            .admin
            .describe_configs(
                [&ResourceSpecifier::Topic(topic)],
                &self.shared.admin_options(),
            )
            .await
            .map_err(Error::kafka("reading topic configuration"))?;
        let setting = |key: &str| -> i64 {
            configs
                .iter()
                .flatten()
                .find_map(|resource| resource.get(key)?.value.as_deref()?.parse::<i64>().ok())
                // -1 is Kafka's "unlimited", 0 the Log's.
                .map_or(0, |value| value.max(0))
        };
        Ok(TopicDescription {
            name: topic.to_owned(),
            partitions: marks
                .iter()
                .enumerate()
                .map(|(partition, mark)| PartitionWatermarks {
                    partition: partition as i32,
                    low: mark.low,
                    high: mark.high,
                })
                .collect(),
            retention_ms: setting("retention.ms"),
            retention_bytes: setting("retention.bytes"),
        })
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.shared.check_open()?;
        blocking(&self.shared, |s| {
            let groups = s
                .producer
                .client()
                .fetch_group_list(None, s.config.request_timeout)
                .map_err(Error::kafka("listing consumer groups"))?;
            let mut names: Vec<String> = groups
                .groups()
                .iter()
                .map(|g| g.name().to_owned())
                .collect();
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        self.shared.check_open()?;
        let group = group.to_owned();
        blocking(&self.shared, move |s| s.group_members(&group)).await
    }

    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.shared.check_open()?;
        let group = group.to_owned();
        blocking(&self.shared, move |s| {
            let members = s.group_members(&group)?;
            // Committed offsets of every partition of every topic; the broker answers for all at once.
            let topics = metadata::read_partition_counts(
                s.metadata_client(),
                None,
                s.config.request_timeout,
            )?;
            let mut query = TopicPartitionList::new();
            for (topic, count) in &topics {
                query.add_partition_range(topic, 0, *count as i32 - 1);
            }
            let committed = s
                .group_client(&group)?
                .committed_offsets(query, s.config.request_timeout)
                .map_err(Error::kafka("reading committed offsets"))?;
            let mut touched: BTreeMap<TopicPartition, Option<i64>> = BTreeMap::new();
            for element in committed.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    touched.insert(
                        TopicPartition::new(element.topic(), element.partition()),
                        Some(offset),
                    );
                }
            }
            for partition in members.iter().flat_map(|m| &m.assigned) {
                touched.entry(partition.clone()).or_insert(None);
            }
            let topic_names: BTreeSet<Arc<str>> = touched.keys().map(|p| p.topic.clone()).collect();
            let mut offsets = Vec::with_capacity(touched.len());
            for topic in topic_names {
                let partitions: Vec<i32> = touched
                    .keys()
                    .filter(|p| p.topic == topic)
                    .map(|p| p.partition)
                    .collect();
                let marks = s.reader.watermarks(&topic, &partitions)?;
                for (partition, mark) in partitions.iter().zip(marks) {
                    let partition = TopicPartition::new(topic.clone(), *partition);
                    let committed = touched.get(&partition).copied().flatten();
                    offsets.push(GroupOffset {
                        lag: (mark.high - committed.unwrap_or(mark.low)).max(0),
                        partition,
                        committed,
                        high_watermark: mark.high,
                    });
                }
            }
            Ok(GroupDescription {
                group,
                members,
                offsets,
            })
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        if self.shared.closed.is_cancelled() {
            return Ok(());
        }
        self.shared.closed.cancel();
        self.shared.subscriptions.close();
        self.shared.subscriptions.wait().await;
        blocking(&self.shared, |s| {
            // A canary still on its way is only a probe: dropped, not waited for.
            if let Some(probe) = s.probe_producer.get() {
                probe.purge(PurgeConfig::default().queue());
            }
            s.producer
                .flush(s.config.message_timeout)
                .map_err(Error::kafka("flushing the producer"))
        })
        .await
    }
}

/// Queues `records` into `producer`, each to its partition, in order; the receipt completes when
/// the broker has acknowledged them all.
async fn enqueue(
    shared: &Shared,
    producer: &FutureProducer,
    topic: &str,
    records: Vec<NewRecord>,
    partitions: Vec<i32>,
) -> Result<AppendReceipt> {
    let mut deliveries = Vec::with_capacity(records.len());
    let mut refreshed = false;
    for (record, partition) in records.into_iter().zip(partitions) {
        let timestamp = record.timestamp_ms.unwrap_or_else(super::now_ms);
        let headers = codec::headers_of(&record, &shared.origin);
        loop {
            let mut message = FutureRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .timestamp(timestamp)
                .headers(headers.clone());
            if let Some(key) = &record.key {
                message = message.key(&key[..]);
            }
            if let Some(value) = &record.value {
                message = message.payload(&value[..]);
            }
            match producer.send_result(message) {
                Ok(delivery) => {
                    deliveries.push((delivery, timestamp, record.courier_id));
                    break;
                }
                // Backpressure from librdkafka's queue: wait our turn, keeping the order.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    shared.check_open()?;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                // The gateway reads metadata through another client, so the producer may not know
                // yet of partitions just added, or of a topic made again: once, it reads again.
                Err((
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::UnknownPartition | RDKafkaErrorCode::UnknownTopic,
                    ),
                    _,
                )) if !refreshed => {
                    refreshed = true;
                    refresh_for_writing(shared, producer, topic).await?;
                }
                Err((error, _)) => return Err(Error::kafka("queueing records")(error)),
            }
        }
    }
    Ok(Box::pin(async move {
        let mut appended = Vec::with_capacity(deliveries.len());
        for (delivery, timestamp, courier_id) in deliveries {
            match delivery.await {
                Ok(Ok(delivered)) => appended.push(Appended {
                    partition: delivered.partition,
                    offset: delivered.offset,
                    timestamp_ms: delivered.timestamp.to_millis().unwrap_or(timestamp),
                    courier_id,
                }),
                Ok(Err((error, _))) => {
                    return Err(Error::kafka("waiting for the broker's acknowledgement")(
                        error,
                    ));
                }
                Err(_) => return Err(Error::ShuttingDown),
            }
        }
        Ok(appended)
    }))
}

/// Has `producer` read `topic`'s metadata now (its own refresh runs every
/// `topic.metadata.refresh.interval.ms`, 5 minutes by default).
async fn refresh_for_writing(
    shared: &Shared,
    producer: &FutureProducer,
    topic: &str,
) -> Result<()> {
    let (producer, topic, timeout) = (
        producer.clone(),
        topic.to_owned(),
        shared.config.request_timeout,
    );
    tokio::task::spawn_blocking(move || {
        metadata::read_partition_counts(producer.client(), Some(&topic), timeout).map(drop)
    })
    .await
    .map_err(|_| Error::ShuttingDown)?
}
