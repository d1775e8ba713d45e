//! The embedded backend: a partitioned, durable log for one node on fjall, with Kafka's semantics.
//!
//! - [`store`]: key layout and record encoding;
//! - [`topics`]: the in-memory topic table and watermarks (readers stop at the durable high watermark);
//! - [`writer`]: the single writer thread with group commit and retention;
//! - [`groups`]: consumer groups, cooperative rebalancing;
//! - [`member`]: one subscriber's delivery loop and ack window;
//! - [`shared`]: the state the log handle, the writer and the member tasks share.
//!
//! One process at a time may open a data directory (fjall locks it). After a crash, fjall replays its
//! journal; everything acknowledged was in the journal (and synced, with `fsync = "always"`) before the
//! ack, so it is there after restart at the offset the ack named.

mod groups;
mod member;
mod shared;
mod store;
mod topics;
mod writer;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
};

use async_trait::async_trait;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::{
    groups::{Coordinator, GroupId},
    member::MemberTask,
    shared::Shared,
    store::TopicMeta,
    topics::{Topic, Topics},
    writer::{Writer, WriterHandle},
};
use super::{
    AppendReceipt, FetchLimits, Fetched, GroupDescription, GroupOffset, Log, NewRecord, Position,
    SubscribeOptions, Subscription, TopicDescription, TopicPartition, TopicSelector, TopicSpec,
    TopicSummary, events,
    member::{AckWindow, MemberControl},
    partitioner, validate,
};
use crate::{
    Error, Result,
    config::{EmbeddedConfig, GroupsConfig, TopicsConfig},
};

/// The embedded log. Cheap to clone; clones share one store.
#[derive(Debug, Clone)]
pub struct Embedded {
    shared: Arc<Shared>,
}

impl Embedded {
    /// Opens (or creates) the log in `config.data_dir` and recovers its topics. `origin` is the region
    /// name written into every record.
    pub async fn open(
        config: &EmbeddedConfig,
        topics_config: TopicsConfig,
        groups_config: GroupsConfig,
        origin: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
            context: "creating the data directory",
            source,
        })?;
        let db = Database::builder(&config.data_dir)
            .open()
            .map_err(Error::storage("opening the data directory"))?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(Error::storage("opening metadata"))?;

        let topics = Arc::new(Topics::default());
        for guard in meta.prefix(store::TOPIC_PREFIX) {
            let (key, value) = guard
                .into_inner()
                .map_err(Error::storage("reading topic metadata"))?;
            let name = String::from_utf8_lossy(&key[store::TOPIC_PREFIX.len()..]).into_owned();
            let topic_meta: TopicMeta =
                serde_json::from_slice(&value).map_err(|error| Error::Corrupt {
                    what: "topic metadata",
                    detail: format!("{name}: {error}"),
                })?;
            let sizes = (0..topic_meta.partitions as usize)
                .map(|partition| {
                    let stored = meta
                        .get(store::size_key(topic_meta.id, partition))
                        .map_err(Error::storage("reading partition sizes"))?;
                    Ok(stored
                        .and_then(|bytes| <[u8; 8]>::try_from(&bytes[..]).ok())
                        .map_or(0, u64::from_be_bytes))
                })
                .collect::<Result<Vec<_>>>()?;
            let keyspace = store::open_topic_keyspace(&db, topic_meta.id)?;
            topics.insert(Arc::new(Topic::load(&name, topic_meta, keyspace, sizes)?));
        }
        tracing::info!(dir = %config.data_dir.display(), topics = topics.all().len(), "embedded log opened");

        let (appended_tx, appended) = watch::channel(0u64);
        let (writer, writer_thread) = Writer {
            db: db.clone(),
            meta: meta.clone(),
            topics: topics.clone(),
            fsync: config.fsync,
            group_commit_bytes: config.group_commit_bytes,
            origin: origin.to_owned(),
            appended: appended_tx,
        }
        .spawn()?;

        let shared = Arc::new(Shared {
            db,
            meta,
            coordinator: Arc::new(Coordinator::new(topics.clone())),
            topics,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            appended,
            topic_admin: tokio::sync::Mutex::new(()),
            topics_config,
            groups_config,
            closed: CancellationToken::new(),
        });
        tokio::spawn(enforce_retention(
            shared.writer.clone(),
            config.retention_check_interval,
            shared.closed.clone(),
        ));
        Ok(Self { shared })
    }

    /// Runs retention now rather than at the next interval (tests and operators).
    pub async fn enforce_retention(&self) -> Result<()> {
        self.shared.writer.enforce_retention().await
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.shared
            .topics
            .get(name)
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.to_owned(),
            })
    }

    async fn create(&self, spec: TopicSpec) -> Result<Arc<Topic>> {
        let settings = validate::topic_spec(&spec, &self.shared.topics_config)?;
        let _serial = self.shared.topic_admin.lock().await;
        if self.shared.topics.get(&spec.name).is_some() {
            return Err(Error::TopicExists { topic: spec.name });
        }
        let meta = &self.shared.meta;
        let id = meta
            .get(store::NEXT_TOPIC_ID)
            .map_err(Error::storage("allocating a topic id"))?
            .map(|bytes| store::decode_i64(&bytes, "topic id counter"))
            .transpose()?
            .unwrap_or(1) as u64;
        let topic_meta = TopicMeta {
            id,
            partitions: settings.partitions,
            retention_ms: settings.retention_ms,
            retention_bytes: settings.retention_bytes,
        };
        let encoded = serde_json::to_vec(&topic_meta).map_err(|error| Error::Corrupt {
            what: "topic metadata",
            detail: error.to_string(),
        })?;
        let keyspace = store::open_topic_keyspace(&self.shared.db, id)?;
        let mut batch = self.shared.db.batch();
        batch.insert(meta, store::NEXT_TOPIC_ID, (id as i64 + 1).to_be_bytes());
        batch.insert(
            meta,
            format!("{}{}", store::TOPIC_PREFIX, spec.name),
            encoded,
        );
        batch.commit().map_err(Error::storage("creating a topic"))?;
        self.shared
            .db
            .persist(PersistMode::SyncData)
            .map_err(Error::storage("creating a topic"))?;

        let topic = Arc::new(Topic::load(&spec.name, topic_meta, keyspace, Vec::new())?);
        self.shared.topics.insert(topic.clone());
        tracing::info!(topic = %spec.name, partitions = settings.partitions, "topic created");
        // New topics may match subscribers' patterns.
        let coordinator = self.shared.coordinator.clone();
        tokio::spawn(async move { coordinator.rebalance_all().await });
        Ok(topic)
    }

    /// Pairs each record with its partition (see [`partitioner::choose`]).
    fn choose_partitions(
        topic: &Topic,
        records: Vec<NewRecord>,
    ) -> Result<Vec<(usize, NewRecord)>> {
        let partitions = partitioner::choose(
            &topic.name,
            &records,
            topic.partition_count(),
            &topic.round_robin,
        )?;
        // Partition numbers are checked or computed below the count, so they are never negative.
        Ok(partitions
            .into_iter()
            .map(|partition| partition as usize)
            .zip(records)
            .collect())
    }

    fn partition_of(&self, partition: &TopicPartition) -> Result<(Arc<Topic>, usize)> {
        let topic = self.topic(&partition.topic)?;
        let index = validate::partition(&topic.name, partition.partition, topic.partition_count())?;
        Ok((topic, index))
    }
}

#[async_trait]
impl Log for Embedded {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        let topic = self.topic(topic)?;
        let placed = Self::choose_partitions(&topic, records)?;
        self.shared.writer.submit(topic, placed).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        if self.shared.closed.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if let TopicSelector::Names(names) = &options.topics {
            for name in names {
                self.topic(name)?;
            }
        }
        let group = match &options.group {
            Some(name) => GroupId {
                name: name.clone(),
                private: false,
            },
            None => GroupId {
                name: format!("reader-{}", ulid::Ulid::new()),
                private: true,
            },
        };
        let (member_id, group_commands) = self.shared.coordinator.join(
            &group,
            options.client.clone(),
            options.protocol,
            options.topics.clone(),
        );
        let window = Arc::new(AckWindow::new(options.max_in_flight));
        // Unbounded but bounded in fact: every command carries a reply its sender awaits, and a
        // front end awaits the answer before it reads its client's next request.
        let (control_tx, control) = mpsc::unbounded_channel();
        let (events_tx, events) = events::channel(options.max_in_flight);
        let task = MemberTask {
            shared: self.shared.clone(),
            group,
            member_id,
            start: options.start,
            window: window.clone(),
            control,
            group_commands,
            events: events_tx,
            appended: self.shared.appended.clone(),
            commit_interval: self.shared.groups_config.commit_interval,
        };
        tokio::spawn(task.run());
        Ok(Subscription {
            events,
            control: Arc::new(MemberControl::new(window, control_tx)),
        })
    }

    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        let (topic, index) = self.partition_of(partition)?;
        let (low, high) = topic.watermarks(index);
        if offset < low || offset > high {
            return Err(Error::OffsetOutOfRange {
                topic: topic.name.to_string(),
                partition: partition.partition,
                offset,
                low,
                high,
            });
        }
        let records = topic.read(index, offset, limits)?;
        Ok(Fetched {
            records,
            low_watermark: low,
            high_watermark: high,
        })
    }

    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        let (topic, index) = self.partition_of(partition)?;
        topic.resolve(index, position)
    }

    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let members = self.shared.coordinator.members(group).len();
        if members > 0 {
            return Err(Error::GroupActive {
                group: group.to_owned(),
                members,
            });
        }
        let mut batch = self.shared.db.batch();
        for (partition, offset) in offsets {
            self.partition_of(partition)?;
            if *offset < 0 {
                return Err(Error::InvalidRequest(format!(
                    "cannot commit negative offset {offset} for {partition}"
                )));
            }
            batch.insert(
                &self.shared.meta,
                store::offset_key(group, &partition.topic, partition.partition),
                offset.to_be_bytes(),
            );
        }
        batch
            .commit()
            .map_err(Error::storage("committing group offsets"))
    }

    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        Ok(self.create(spec).await?.describe())
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let _serial = self.shared.topic_admin.lock().await;
        let topic = self
            .shared
            .topics
            .remove(name)
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.to_owned(),
            })?;
        topic.deleted.store(true, Ordering::Release);
        // Members let go of the topic's partitions before its data disappears.
        self.shared.coordinator.rebalance_all().await;

        let meta = &self.shared.meta;
        let mut batch = self.shared.db.batch();
        batch.remove(meta, format!("{}{name}", store::TOPIC_PREFIX));
        for partition in 0..topic.partition_count() as usize {
            batch.remove(meta, store::size_key(topic.meta.id, partition));
        }
        for guard in meta.prefix(store::OFFSET_PREFIX) {
            let key = guard
                .key()
                .map_err(Error::storage("finding offsets of a deleted topic"))?;
            if store::parse_offset_key(&key).is_some_and(|(_, topic, _)| topic == name) {
                batch.remove(meta, key);
            }
        }
        batch.commit().map_err(Error::storage("deleting a topic"))?;
        self.shared
            .db
            .delete_keyspace(topic.keyspace.clone())
            .map_err(Error::storage("deleting a topic"))?;
        self.shared
            .db
            .persist(PersistMode::SyncData)
            .map_err(Error::storage("deleting a topic"))?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        Ok(self
            .shared
            .topics
            .all()
            .iter()
            .map(|topic| TopicSummary {
                name: topic.name.to_string(),
                partitions: topic.partition_count(),
            })
            .collect())
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        Ok(self.topic(name)?.describe())
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        let mut groups: BTreeSet<String> = self
            .shared
            .coordinator
            .active_groups()
            .into_iter()
            .collect();
        for guard in self.shared.meta.prefix(store::OFFSET_PREFIX) {
            let key = guard.key().map_err(Error::storage("listing groups"))?;
            if let Some((group, _, _)) = store::parse_offset_key(&key) {
                groups.insert(group);
            }
        }
        Ok(groups.into_iter().collect())
    }

    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let members = self.shared.coordinator.members(group);
        let mut partitions: BTreeSet<TopicPartition> = members
            .iter()
            .flat_map(|member| member.assigned.iter().cloned())
            .collect();
        let committed = self.shared.group_offsets(group)?;
        partitions.extend(
            committed
                .iter()
                .map(|(topic, partition, _)| TopicPartition::new(topic.as_str(), *partition)),
        );
        let offsets = partitions
            .into_iter()
            .filter_map(|partition| {
                let topic = self.shared.topics.get(&partition.topic)?;
                let (low, high) = topic.watermarks(partition.partition as usize);
                let committed = committed
                    .iter()
                    .find(|(topic, p, _)| *topic == *partition.topic && *p == partition.partition)
                    .map(|(_, _, offset)| *offset);
                let lag = (high - committed.unwrap_or(low)).max(0);
                Some(GroupOffset {
                    partition,
                    committed,
                    high_watermark: high,
                    lag,
                })
            })
            .collect();
        Ok(GroupDescription {
            group: group.to_owned(),
            members,
            offsets,
        })
    }

    async fn close(&self) -> Result<()> {
        if self.shared.closed.is_cancelled() {
            return Ok(());
        }
        self.shared.closed.cancel();
        let result = self.shared.writer.shutdown().await;
        let thread = self
            .shared
            .writer_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // The writer has answered its shutdown, so joining is immediate.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

/// Runs retention every `interval` until the log closes.
async fn enforce_retention(
    writer: WriterHandle,
    interval: std::time::Duration,
    closed: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await; // the first tick is immediate; nothing has expired at start-up that can't wait
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            _ = ticks.tick() => {
                if let Err(error) = writer.enforce_retention().await {
                    tracing::warn!(%error, "retention failed; will retry");
                }
            }
        }
    }
}
