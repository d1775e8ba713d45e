//! The latest record of every key of a compacted topic, followed live.
//!
//! A front end keeps state that must outlive a replica (MQTT: sessions, retained messages, unfinished
//! QoS 2 exchanges) in compacted topics. Each gateway replica reads such a topic from its start with a
//! plain reader and keeps the newest record per key in memory, so a lookup is a map access and every
//! replica sees what the others wrote. [`Table::caught_up`] waits until the table holds everything
//! written before the call: a client that reconnects to another replica sees its own session, and a
//! subscriber sees a retained message published a moment earlier elsewhere.
//!
//! Under region routing the reader also reads the topic's mirrors from the other regions, and moves
//! to another region's copies on a switch; which write of a key is the newest is then decided by
//! the log's order within a partition and by the version each write carries between copies
//! ([`merge`]), not by the order copies are read in. Writers set that version with
//! [`Table::next_timestamp`].

use std::{
    collections::{BTreeSet, HashMap, hash_map},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    log::{
        Log, Position, Record, SubscribeOptions, Subscription, SubscriptionEvent, TopicDescription,
        TopicPartition, TopicSelector,
    },
    sync::lock,
};

mod merge;

pub use self::merge::Version;
use self::merge::Versions;

/// Called for every record that becomes its key's newest: the key, the record (`None` for a
/// tombstone) and its version.
pub type OnChange = Box<dyn Fn(&str, Option<&Record>, &Version) + Send + Sync>;

/// Records a reader keeps at once before acknowledging: large, since the table acks as it applies.
const WINDOW: usize = 10_000;
/// Pause before reading the topic again after opening a reader failed.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);
/// How long a table that reads mirrors keeps a deletion in memory: long past the replication lag,
/// within which a mirror could still deliver an older copy of the key. A table read afresh (after
/// a move) reads the deletions again from the log, which keeps them `delete.retention.ms` (Kafka's
/// default 24 h).
const TOMBSTONE_KEPT_MS: i64 = 60 * 60 * 1000;
/// How often old deletions are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A live key → latest record map over one topic.
#[derive(Debug, Clone)]
pub struct Table {
    topic: String,
    log: Arc<dyn Log>,
    state: Arc<Mutex<State>>,
    progress: watch::Receiver<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// What was read of every key (its newest record a tombstone when it was deleted).
    entries: HashMap<String, Versions>,
    /// Next offset to apply, per partition of the current read.
    next_offsets: HashMap<TopicPartition, i64>,
    /// The partitions the current read was assigned (the topic and its mirrors); `None` until it
    /// was, which is after a revocation too.
    assigned: Option<BTreeSet<TopicPartition>>,
    /// Which read of the topic this is: the reader starts over from the start after a revocation.
    read: u64,
}

/// The reader task's own state.
struct Follower {
    log: Arc<dyn Log>,
    protocol: &'static str,
    topic: String,
    state: Arc<Mutex<State>>,
    progress: watch::Sender<u64>,
    on_change: OnChange,
    cancel: CancellationToken,
}

impl Table {
    /// Starts following `topic` from its start for the front end named `protocol`; stops when
    /// `cancel` fires.
    pub async fn start(
        log: Arc<dyn Log>,
        protocol: &'static str,
        topic: &str,
        on_change: OnChange,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let subscription = open(log.as_ref(), protocol, topic).await?;
        let state = Arc::new(Mutex::new(State::default()));
        let (progress_tx, progress) = watch::channel(0u64);
        let follower = Follower {
            log: log.clone(),
            protocol,
            topic: topic.to_owned(),
            state: state.clone(),
            progress: progress_tx,
            on_change,
            cancel,
        };
        tokio::spawn(follower.run(subscription));
        Ok(Self {
            topic: topic.to_owned(),
            log,
            state,
            progress,
        })
    }

    /// Waits until every record written before this call to the topic, and to the mirrors of it
    /// the table reads, has been applied.
    pub async fn caught_up(&self, deadline: Duration) -> Result<()> {
        let mut progress = self.progress.clone();
        let wait = async {
            // The ends of the topics of one read, described once each.
            let mut ends: HashMap<String, TopicDescription> = HashMap::new();
            let mut ends_of_read = None;
            loop {
                progress.borrow_and_update();
                let reading = {
                    let state = lock(&self.state);
                    state.assigned.as_ref().map(|assigned| {
                        let mut topics: BTreeSet<String> =
                            assigned.iter().map(|p| p.topic.to_string()).collect();
                        topics.insert(self.topic.clone());
                        (state.read, topics)
                    })
                };
                if let Some((read, topics)) = reading {
                    let topics_len = topics.len();
                    if ends_of_read != Some(read) {
                        ends.clear();
                        ends_of_read = Some(read);
                    }
                    for topic in topics {
                        if let hash_map::Entry::Vacant(end) = ends.entry(topic) {
                            match self.log.describe_topic(end.key()).await {
                                Ok(description) => {
                                    end.insert(description);
                                }
                                // Asked of the region reads just moved to, a mirror of the read
                                // under way may not exist there: behind until the next read.
                                Err(Error::UnknownTopic { .. }) => {}
                                Err(error) => return Err(error),
                            }
                        }
                    }
                    let described = ends.len() == topics_len;
                    if described && !self.behind(read, &ends) {
                        return Ok(());
                    }
                }
                if progress.changed().await.is_err() {
                    return Err(Error::ShuttingDown);
                }
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .map_err(|_| Error::Behind {
                topic: self.topic.clone(),
            })?
    }

    /// Has read `read` not applied everything up to `ends` yet? (A read replaced since counts as
    /// behind: the next pass describes the new one's topics.)
    fn behind(&self, read: u64, ends: &HashMap<String, TopicDescription>) -> bool {
        let state = lock(&self.state);
        state.read != read
            || ends.values().any(|description| {
                description.partitions.iter().any(|partition| {
                    let applied = state
                        .next_offsets
                        .get(&TopicPartition::new(
                            description.name.as_str(),
                            partition.partition,
                        ))
                        .copied()
                        .unwrap_or(partition.low);
                    applied < partition.high
                })
            })
    }

    /// The latest record of a key (`None` when it was deleted).
    pub fn get(&self, key: &str) -> Option<Record> {
        lock(&self.state)
            .entries
            .get(key)
            .and_then(Versions::newest)
            .filter(|record| record.value.is_some())
            .cloned()
    }

    /// Every latest record whose key passes `keep` (deleted keys left out).
    pub fn matching(&self, keep: impl Fn(&str) -> bool) -> Vec<Record> {
        lock(&self.state)
            .entries
            .iter()
            .filter(|(key, _)| keep(key))
            .filter_map(|(_, versions)| versions.newest())
            .filter(|record| record.value.is_some())
            .cloned()
            .collect()
    }

    /// The timestamp a write of `key` made at `now_ms` carries: past the newest version the table
    /// holds (a tombstone's included) and every timestamp given here before, so the write wins
    /// over them wherever they are read.
    pub fn next_timestamp(&self, key: &str, now_ms: i64) -> i64 {
        lock(&self.state)
            .entries
            .entry(key.to_owned())
            .or_default()
            .stamp(now_ms)
    }

    /// The latest record of a key (a deletion's included) and its version.
    pub fn newest(&self, key: &str) -> Option<(Record, Version)> {
        let state = lock(&self.state);
        let newest = state.entries.get(key).and_then(Versions::newest)?;
        Some((newest.clone(), Version::read_in(state.read, newest)))
    }
}

/// A plain reader of `topic` (and, through the region router, its mirrors) from the start.
async fn open(log: &dyn Log, protocol: &'static str, topic: &str) -> Result<Subscription> {
    log.subscribe(SubscribeOptions {
        topics: TopicSelector::Names(vec![topic.to_owned()]),
        group: None,
        start: Position::Earliest,
        max_in_flight: WINDOW,
        client: format!("courier-{protocol} table of {topic}"),
        protocol,
    })
    .await
}

impl Follower {
    async fn run(self, mut subscription: Subscription) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                () = self.cancel.cancelled() => break,
                _ = prune.tick() => {
                    self.forget_old_tombstones();
                    continue;
                }
                event = subscription.next_event() => event,
            };
            match event {
                None => break,
                Some(SubscriptionEvent::Assigned(partitions)) => {
                    lock(&self.state)
                        .assigned
                        .get_or_insert_default()
                        .extend(partitions);
                }
                // The reader moves to another region's copies, or the partitions it reads change:
                // read everything again from the start, so where each partition starts is known
                // (a moved reader would resume at a time), and what is kept is what this region
                // holds (its own topic has the name the last region's had). Meanwhile the table
                // is behind: `caught_up` waits.
                Some(SubscriptionEvent::Revoked(_)) => {
                    {
                        let mut state = lock(&self.state);
                        state.assigned = None;
                        state.next_offsets.clear();
                        state.entries.clear();
                        state.read += 1;
                    }
                    self.progress.send_modify(|applied| *applied += 1);
                    let Some(next) = self.reopen().await else {
                        break;
                    };
                    let replaced = std::mem::replace(&mut subscription, next);
                    tokio::spawn(async move {
                        let _ = replaced.close().await;
                    });
                    continue;
                }
                Some(SubscriptionEvent::Records(records)) => self.apply(&subscription, records),
            }
            self.progress.send_modify(|applied| *applied += 1);
        }
        let _ = subscription.close().await;
    }

    fn apply(&self, subscription: &Subscription, records: Vec<Record>) {
        let mut state = lock(&self.state);
        let read = state.read;
        // Reading one topic, a deletion is final at once (no copy can bring an older write back
        // later); reading mirrors too, it is kept a while (see `TOMBSTONE_KEPT_MS`).
        let one_topic = state.assigned.as_ref().is_none_or(|assigned| {
            assigned
                .iter()
                .all(|partition| *partition.topic == *self.topic)
        });
        for record in records {
            subscription
                .control
                .ack(&record.topic_partition(), record.offset);
            state
                .next_offsets
                .insert(record.topic_partition(), record.offset + 1);
            let Some(key) = record
                .key
                .as_deref()
                .and_then(|key| std::str::from_utf8(key).ok())
                .map(str::to_owned)
            else {
                continue;
            };
            let versions = state.entries.entry(key.clone()).or_default();
            // `on_change` runs under the table's lock: it must not call back into the table.
            if let Some(newest) = versions.apply(record) {
                let version = Version::read_in(read, newest);
                (self.on_change)(&key, newest.value.is_some().then_some(newest), &version);
            }
            if one_topic
                && versions.read_in_one_partition()
                && versions
                    .newest()
                    .is_some_and(|newest| newest.value.is_none())
            {
                state.entries.remove(&key);
            }
        }
    }

    /// Opens the reader again, retrying until it opens or the table is stopped (`None`).
    async fn reopen(&self) -> Option<Subscription> {
        loop {
            match open(self.log.as_ref(), self.protocol, &self.topic).await {
                Ok(subscription) => return Some(subscription),
                Err(error) => {
                    tracing::warn!(topic = %self.topic, %error, "reading a table again failed; retrying");
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                () = tokio::time::sleep(REOPEN_PAUSE) => {}
            }
        }
    }

    fn forget_old_tombstones(&self) {
        let horizon = crate::log::now_ms().saturating_sub(TOMBSTONE_KEPT_MS);
        lock(&self.state).entries.retain(|_, versions| {
            versions.stamped_since(horizon)
                || versions
                    .newest()
                    .is_some_and(|record| record.value.is_some() || record.timestamp_ms >= horizon)
        });
    }
}
