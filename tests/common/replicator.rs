//! A test replicator standing in for MirrorMaker 2 between two regions (tansu processes): it copies
//! topic `T` of the source region into `<source>.T` of the target region (same partition, key, value,
//! headers and timestamp) and writes the source's consumer group positions, translated, to
//! `<source>.checkpoints.internal` in the target region in MirrorMaker 2's exact binary format, so the
//! gateway is tested against the records MirrorMaker 2 writes. Written from MirrorMaker 2's
//! `Checkpoint` layout, independently of the gateway's decoder.
//!
//! It runs on a thread of its own, survives either region going away and coming back (a source that
//! comes back empty is copied again from its start), and records the `courier-id` and the value of every
//! record it copied, so a test can tell "lost in the replication lag" from "lost by the gateway" (MQTT
//! and AMQP publishers know their payloads, not the ids the gateway gave them).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};

/// Each region's request timeout: short, so a dead region slows a round by this much only.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between rounds.
const ROUND: Duration = Duration::from_millis(100);
/// How often checkpoints are written (MirrorMaker 2's `emit.checkpoints.interval.seconds`).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// One direction of replication, running until dropped.
pub struct Replicator {
    stop: Arc<AtomicBool>,
    /// While set, nothing is copied or checkpointed (a replicator stopped by its operator).
    paused: Arc<AtomicBool>,
    /// Held through each round, so [`Replicator::pause`] can wait out the one under way.
    round: Arc<Mutex<()>>,
    /// A record is copied only once it is this old (ms; a replicator that falls behind).
    delay_ms: Arc<AtomicU64>,
    copied: Arc<Mutex<Copied>>,
    thread: Option<JoinHandle<()>>,
}

impl Replicator {
    /// Copies `topics` from `source` (region `source_name`) to `target`, and checkpoints `groups`
    /// (a name ending in `*` stands for every group of the source whose name starts with the rest,
    /// found as they appear, as MirrorMaker 2's `groups` patterns are).
    pub fn start(
        source_name: &str,
        source: &str,
        target: &str,
        topics: &[&str],
        groups: &[&str],
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let copied = Arc::new(Mutex::new(Copied::default()));
        let mut state = State {
            source_name: source_name.to_owned(),
            source: source.to_owned(),
            target: target.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            next: HashMap::new(),
            last_copied: HashMap::new(),
            offsets: HashMap::new(),
            written_checkpoints: HashMap::new(),
            copied: copied.clone(),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let delay_ms = state.delay_ms.clone();
        let stop_flag = stop.clone();
        let paused = Arc::new(AtomicBool::new(false));
        let paused_flag = paused.clone();
        let round = Arc::new(Mutex::new(()));
        let round_held = round.clone();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let Ok(mut clients) = Clients::new(&state.source, &state.target) else {
                return;
            };
            let mut last_checkpoint = std::time::Instant::now();
            while !stop_flag.load(Ordering::Relaxed) {
                let in_round = round_held.lock().unwrap_or_else(PoisonError::into_inner);
                if paused_flag.load(Ordering::Relaxed) {
                    drop(in_round);
                    std::thread::sleep(ROUND);
                    continue;
                }
                let copied = runtime.block_on(state.copy_round(&clients));
                if !copied {
                    // A region went away. New clients, so none carries the old cluster's metadata
                    // (topic ids) into the one that comes back: librdkafka has crashed on that. The
                    // old ones close on a thread of their own, as their brokers may not answer.
                    if let Ok(fresh) = Clients::new(&state.source, &state.target) {
                        let old = std::mem::replace(&mut clients, fresh);
                        std::thread::spawn(move || drop(old));
                    }
                }
                if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                    state.find_groups(&mut clients);
                    runtime.block_on(state.checkpoint_round(&clients));
                    last_checkpoint = std::time::Instant::now();
                }
                drop(in_round);
                if !copied {
                    std::thread::sleep(Duration::from_secs(1));
                }
                std::thread::sleep(ROUND);
            }
        });
        Self {
            stop,
            paused,
            round,
            delay_ms,
            copied,
            thread: Some(thread),
        }
    }

    /// Stops copying and checkpointing until [`Replicator::resume`]. Returns once the round under
    /// way has ended, so nothing written after it returns is copied or checkpointed while paused.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        drop(self.round.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Copies a record only once it is `delay` old (by its timestamp), as a replicator that keeps
    /// `delay` behind does; zero copies at once again.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Copies again, from where it stopped.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// The `courier-id`s and values (as UTF-8) of the records copied before `moment`.
    pub fn copied_before(&self, moment: std::time::Instant) -> HashSet<String> {
        self.copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_copied
            .iter()
            .filter(|(_, at)| **at < moment)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The value (as UTF-8) of the last record copied from the source's `topic`.
    pub fn last_copied_value(&self, topic: &str) -> Option<String> {
        self.copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_values
            .get(topic)
            .cloned()
    }

    /// The values (as UTF-8) of the records copied from the source's `topic`, in the order copied.
    pub fn copied_values_of(&self, topic: &str) -> Vec<String> {
        self.copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values_by_topic
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    /// The newest upstream offset checkpointed for each (group, source topic, partition) of the
    /// groups whose names start with `prefix`.
    pub fn checkpointed(&self, prefix: &str) -> Vec<((String, String, i32), i64)> {
        self.copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .checkpoints
            .iter()
            .filter(|((group, _, _), _)| group.starts_with(prefix))
            .map(|(key, (upstream, _))| (key.clone(), *upstream))
            .collect()
    }

    /// The `courier-id`s of every record copied so far.
    pub fn copied_ids(&self) -> HashSet<String> {
        self.copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .clone()
    }

    /// The values (as UTF-8) of every record copied so far.
    pub fn copied_values(&self) -> HashSet<String> {
        self.copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values
            .clone()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Clients {
    reader: BaseConsumer,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// One client per group, on the source, only to read the group's committed offsets.
    groups: BTreeMap<String, BaseConsumer>,
    source: String,
}

/// A client of `source` in `group` that only reads.
fn source_consumer(source: &str, group: &str) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", source)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        // As MirrorMaker 2's: an offset no longer there is read from the oldest, not skipped.
        .set("auto.offset.reset", "earliest")
        .set("socket.timeout.ms", "1000")
        .create::<BaseConsumer>()
}

impl Clients {
    fn new(source: &str, target: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let mut target_config = ClientConfig::new();
        target_config
            .set("bootstrap.servers", target)
            .set("allow.auto.create.topics", "false")
            .set("message.timeout.ms", "2000")
            .set("socket.timeout.ms", "1000")
            // tansu 0.6.0 reads a batch from its first record only (see gateway/tests/kafka.rs).
            .set("batch.num.messages", "1");
        Ok(Self {
            reader: source_consumer(source, "courier-test-replicator")?,
            producer: target_config.create()?,
            admin: target_config.create()?,
            groups: BTreeMap::new(),
            source: source.to_owned(),
        })
    }
}

struct State {
    source_name: String,
    source: String,
    target: String,
    topics: Vec<String>,
    groups: Vec<String>,
    /// Next source offset to copy, by (topic, partition).
    next: HashMap<(String, i32), i64>,
    /// The source offset and `courier-id` of the last record copied, by (topic, partition): a
    /// source that came back as a new log is told by the record there no longer being the same.
    last_copied: HashMap<(String, i32), (i64, String)>,
    /// Source offset -> target offset of every copied record, by (topic, partition).
    offsets: HashMap<(String, i32), BTreeMap<i64, i64>>,
    /// The last checkpoint written, by (group, topic, partition).
    written_checkpoints: HashMap<(String, String, i32), i64>,
    copied: Arc<Mutex<Copied>>,
    /// See [`Replicator::set_delay`].
    delay_ms: Arc<AtomicU64>,
}

/// What was copied so far, by `courier-id` and by value, the last value of each topic, and when
/// each id and value was first copied.
#[derive(Default)]
struct Copied {
    ids: HashSet<String>,
    values: HashSet<String>,
    last_values: HashMap<String, String>,
    values_by_topic: HashMap<String, Vec<String>>,
    first_copied: HashMap<String, std::time::Instant>,
    /// The last checkpoint written: (group, source topic, partition) -> (upstream, downstream).
    checkpoints: HashMap<(String, String, i32), (i64, i64)>,
}

impl State {
    fn remote(&self, topic: &str) -> String {
        format!("{}.{topic}", self.source_name)
    }

    /// Copies what is new; false when either region did not answer.
    async fn copy_round(&mut self, clients: &Clients) -> bool {
        let mut answered = true;
        for topic in self.topics.clone() {
            let Some(partitions) = partition_count(&clients.reader, &topic) else {
                answered &= source_answers(&clients.reader);
                continue;
            };
            if !ensure_topic(clients, &self.remote(&topic), partitions).await {
                answered = false;
                continue;
            }
            for partition in 0..partitions {
                self.copy_partition(clients, &topic, partition).await;
            }
        }
        answered
    }

    async fn copy_partition(&mut self, clients: &Clients, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        let Ok((_, high)) = clients.reader.fetch_watermarks(topic, partition, TIMEOUT) else {
            return;
        };
        let mut next = self.next.get(&key).copied().unwrap_or(0);
        if high < next {
            // The source came back empty: a new log, copied from its start.
            next = 0;
            self.offsets.remove(&key);
            self.last_copied.remove(&key);
        }
        if next >= high {
            self.next.insert(key, next);
            return;
        }
        // Read from the last record copied, to see that it is still there: a source that came back
        // empty and was written past this offset before this round (the gateway writes there as
        // soon as it is back) is a new log too, whose records before `next` were never copied.
        let expected = self
            .last_copied
            .get(&key)
            .filter(|(offset, _)| *offset == next - 1)
            .map(|(_, id)| id.clone());
        let from = if expected.is_some() { next - 1 } else { next };
        let mut assignment = TopicPartitionList::new();
        if assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .is_err()
            || clients.reader.assign(&assignment).is_err()
        {
            return;
        }
        let remote = self.remote(topic);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut sent = Vec::new();
        while next < high && std::time::Instant::now() < deadline {
            let Some(Ok(message)) = clients.reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            if message.offset() < next {
                if let Some(expected) = &expected
                    && message.offset() == next - 1
                    && courier_id(&message).as_ref() != Some(expected)
                {
                    let _ = clients.reader.unassign();
                    self.next.insert(key.clone(), 0);
                    self.offsets.remove(&key);
                    self.last_copied.remove(&key);
                    return;
                }
                continue;
            }
            let delay = self.delay_ms.load(Ordering::Relaxed) as i64;
            if delay > 0
                && message
                    .timestamp()
                    .to_millis()
                    .is_some_and(|written| now_ms() - written < delay)
            {
                // Not old enough: copied in a later round, from this record on.
                break;
            }
            let mut headers = OwnedHeaders::new();
            let courier_id = courier_id(&message);
            if let Some(source_headers) = message.headers() {
                for header in source_headers.iter() {
                    headers = headers.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&remote)
                .partition(partition)
                .headers(headers);
            if let Some(timestamp) = message.timestamp().to_millis() {
                record = record.timestamp(timestamp);
            }
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            // Sent without waiting for each: up to librdkafka's in-flight window at a time, as
            // MirrorMaker 2's producer does (one record a round trip fell behind the clients).
            let Ok(delivery) = clients.producer.send_result(record) else {
                break;
            };
            let value = message
                .payload()
                .map(|payload| String::from_utf8_lossy(payload).into_owned());
            sent.push((message.offset(), courier_id, value, delivery));
            next = message.offset() + 1;
        }
        // A fresh assignment each time: librdkafka takes the same assignment made again as no
        // change and keeps its fetch state, which left a partition that was polled empty stuck
        // (seen while every other partition was idle, as in a planned switch).
        let _ = clients.reader.unassign();
        for (offset, courier_id, value, delivery) in sent {
            let Ok(Ok(delivered)) = delivery.await else {
                // The target is away: copy from this record again next round.
                next = offset;
                break;
            };
            self.offsets
                .entry(key.clone())
                .or_default()
                .insert(offset, delivered.offset);
            match &courier_id {
                Some(id) => self.last_copied.insert(key.clone(), (offset, id.clone())),
                None => self.last_copied.remove(&key),
            };
            let mut copied = self.copied.lock().unwrap_or_else(PoisonError::into_inner);
            let now = std::time::Instant::now();
            for key in courier_id.iter().chain(&value) {
                copied.first_copied.entry(key.clone()).or_insert(now);
            }
            copied.ids.extend(courier_id);
            if let Some(value) = value {
                copied.values.insert(value.clone());
                copied
                    .values_by_topic
                    .entry(topic.to_owned())
                    .or_default()
                    .push(value.clone());
                copied.last_values.insert(topic.to_owned(), value);
            }
        }
        self.next.insert(key, next);
    }

    /// Adds a client for each group to checkpoint that has none yet: the groups named, and those
    /// of the source a prefix pattern matches.
    fn find_groups(&self, clients: &mut Clients) {
        let mut wanted: Vec<String> = self
            .groups
            .iter()
            .filter(|group| !group.ends_with('*'))
            .cloned()
            .collect();
        let prefixes: Vec<&str> = self
            .groups
            .iter()
            .filter_map(|group| group.strip_suffix('*'))
            .collect();
        if !prefixes.is_empty()
            && let Ok(listed) = clients.reader.fetch_group_list(None, TIMEOUT)
        {
            wanted.extend(
                listed
                    .groups()
                    .iter()
                    .map(|group| group.name().to_owned())
                    .filter(|name| prefixes.iter().any(|prefix| name.starts_with(prefix))),
            );
        }
        for group in wanted {
            if !clients.groups.contains_key(&group)
                && let Ok(consumer) = source_consumer(&clients.source, &group)
            {
                clients.groups.insert(group, consumer);
            }
        }
    }

    async fn checkpoint_round(&mut self, clients: &Clients) {
        let checkpoints_topic = format!("{}.checkpoints.internal", self.source_name);
        if !ensure_topic(clients, &checkpoints_topic, 1).await {
            return;
        }
        for (group, consumer) in &clients.groups {
            let mut wanted = TopicPartitionList::new();
            for (topic, partition) in self.offsets.keys() {
                wanted.add_partition(topic, *partition);
            }
            let Ok(committed) = consumer.committed_offsets(wanted, TIMEOUT) else {
                continue;
            };
            for element in committed.elements() {
                let Offset::Offset(upstream) = element.offset() else {
                    continue;
                };
                let key = (element.topic().to_owned(), element.partition());
                let Some(downstream) = self.offsets.get(&key).and_then(|map| {
                    map.range(..upstream)
                        .next_back()
                        .map(|(_, target)| target + 1)
                }) else {
                    continue;
                };
                let remote = self.remote(element.topic());
                let written = (group.clone(), remote.clone(), element.partition());
                if self.written_checkpoints.get(&written) == Some(&downstream) {
                    continue;
                }
                let record_key = checkpoint_key(group, &remote, element.partition());
                let record_value = checkpoint_value(upstream, downstream, "");
                let record = FutureRecord::<[u8], [u8]>::to(&checkpoints_topic)
                    .partition(0)
                    .key(&record_key)
                    .payload(&record_value);
                if clients.producer.send(record, TIMEOUT).await.is_ok() {
                    self.written_checkpoints.insert(written, downstream);
                    self.copied
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .checkpoints
                        .insert(
                            (
                                group.clone(),
                                element.topic().to_owned(),
                                element.partition(),
                            ),
                            (upstream, downstream),
                        );
                }
            }
        }
    }
}

/// The record's `courier-id` header, which the gateway gives every record it writes.
fn courier_id(message: &BorrowedMessage<'_>) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|header| header.key == "courier-id")
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// `Checkpoint.recordKey()`: group, topic (strings: int16 length, UTF-8), partition (int32).
fn checkpoint_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for text in [group, topic] {
        bytes.extend((text.len() as i16).to_be_bytes());
        bytes.extend(text.as_bytes());
    }
    bytes.extend(partition.to_be_bytes());
    bytes
}

/// `Checkpoint.recordValue()`: version header (int16 0), upstream offset, downstream offset (int64),
/// metadata (string).
fn checkpoint_value(upstream: i64, downstream: i64, metadata: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend(0_i16.to_be_bytes());
    bytes.extend(upstream.to_be_bytes());
    bytes.extend(downstream.to_be_bytes());
    bytes.extend((metadata.len() as i16).to_be_bytes());
    bytes.extend(metadata.as_bytes());
    bytes
}

/// Whether the source answers a metadata request (a topic not created yet is no failure).
fn source_answers(client: &BaseConsumer) -> bool {
    client.fetch_metadata(None, TIMEOUT).is_ok()
}

fn partition_count(client: &BaseConsumer, topic: &str) -> Option<i32> {
    let metadata = client.fetch_metadata(Some(topic), TIMEOUT).ok()?;
    let topic = metadata.topics().first()?;
    (topic.error().is_none() && !topic.partitions().is_empty())
        .then(|| topic.partitions().len() as i32)
}

/// Creates `topic` in the target when missing; false when the target does not answer.
async fn ensure_topic(clients: &Clients, topic: &str, partitions: i32) -> bool {
    let Ok(metadata) = clients
        .producer
        .client()
        .fetch_metadata(Some(topic), TIMEOUT)
    else {
        return false;
    };
    let exists = metadata
        .topics()
        .first()
        .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return true;
    }
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    clients
        .admin
        .create_topics([&new_topic], &options)
        .await
        .is_ok()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
