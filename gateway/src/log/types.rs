//! The values that cross the [`Log`](super::Log) boundary: records in and out, positions, subscriptions.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use regex::Regex;

/// A partition of a topic. Cheap to clone: the topic name is shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number, from 0.
    pub partition: i32,
}

impl TopicPartition {
    /// A partition of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One application header (a Kafka record header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// A record to append. Front ends fill it from their protocol; [`Log::append`](super::Log::append)
/// assigns `courier_id` when it is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Key; `None` is Kafka's null key.
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Application headers.
    pub headers: Vec<Header>,
    /// Explicit partition; otherwise the key (or, without one, the round robin) chooses.
    pub partition: Option<i32>,
    /// Producer timestamp in ms since the epoch; `None` means append time.
    pub timestamp_ms: Option<i64>,
    /// The record's id (a ULID string), stable across retries; empty means "assign one".
    pub courier_id: String,
}

impl NewRecord {
    /// A record with just a value.
    pub fn with_value(value: impl Into<Bytes>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// Bytes counted against the record size limit: key, value and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers_size(&self.headers)
    }
}

/// Key and value bytes of every header.
fn headers_size(headers: &[Header]) -> usize {
    headers.iter().map(|h| h.key.len() + h.value.len()).sum()
}

/// Where an appended record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Partition chosen.
    pub partition: i32,
    /// Offset assigned.
    pub offset: i64,
    /// Timestamp stored.
    pub timestamp_ms: i64,
    /// The record's id.
    pub courier_id: String,
}

/// A stored record, as readers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic and partition.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Application headers.
    pub headers: Vec<Header>,
    /// Timestamp in ms since the epoch.
    pub timestamp_ms: i64,
    /// The record's id; empty for records written by clients that set none.
    pub courier_id: String,
    /// Region the record was first written in; empty when unknown.
    pub origin: String,
}

impl Record {
    /// The record's partition.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }

    /// Key + value bytes, for fetch size limits.
    pub fn payload_size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len) + self.value.as_ref().map_or(0, Bytes::len)
    }

    /// Key, value and header bytes, as [`NewRecord::size`] counts a record to write.
    pub fn size(&self) -> usize {
        self.payload_size() + headers_size(&self.headers)
    }
}

/// Where a reader starts in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Position {
    /// The oldest retained record.
    Earliest,
    /// Only records appended from now on.
    #[default]
    Latest,
    /// An exact offset (clamped to the retained range).
    Offset(i64),
    /// The first record at or after this timestamp (ms since the epoch).
    Timestamp(i64),
}

/// Which topics a subscription reads.
#[derive(Debug, Clone)]
pub enum TopicSelector {
    /// These topics. Subscribing to a topic that does not exist follows the auto-create policy.
    Names(Vec<String>),
    /// Every topic whose whole name matches, including topics created later.
    Pattern(Regex),
    /// Every topic whose whole name matches and that `allowed` accepts: a pattern with what its
    /// subscriber may not read left out (authorization makes these from a client's pattern, since
    /// which topics a regex can match is only known when the backend lists them).
    Restricted {
        /// The pattern.
        pattern: Regex,
        /// Whether the subscriber may read a topic the pattern matches.
        allowed: TopicFilter,
    },
}

impl TopicSelector {
    /// Does the selector take this topic?
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Names(names) => names.iter().any(|name| name == topic),
            Self::Pattern(pattern) => pattern.is_match(topic),
            Self::Restricted { pattern, allowed } => {
                pattern.is_match(topic) && allowed.accepts(topic)
            }
        }
    }

    /// Whether the selector follows the topics that exist (a pattern) rather than naming them.
    pub fn is_pattern(&self) -> bool {
        !matches!(self, Self::Names(_))
    }

    /// Builds a pattern selector that must match a topic name as a whole.
    pub fn pattern(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(Self::Pattern)
    }
}

/// A test of topic names that travels with a subscription (see [`TopicSelector::Restricted`]).
#[derive(Clone)]
pub struct TopicFilter(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl TopicFilter {
    /// A filter accepting what `accepts` accepts.
    pub fn new(accepts: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(accepts))
    }

    /// Whether `topic` passes.
    pub fn accepts(&self, topic: &str) -> bool {
        (self.0)(topic)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TopicFilter")
    }
}

/// What to read, and how.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Topics to read.
    pub topics: TopicSelector,
    /// Consumer group; `None` for a plain reader of every partition that commits nothing.
    pub group: Option<String>,
    /// Start of partitions without a committed offset (all partitions for a plain reader).
    pub start: Position,
    /// Most delivered-but-unacknowledged records at once; reading pauses at this many.
    pub max_in_flight: usize,
    /// Who subscribes (peer address), for describe-group output and logs.
    pub client: String,
    /// Which protocol subscribes (`grpc`, `mqtt`, `amqp`): a group's members must share one.
    pub protocol: &'static str,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// Partitions now read by this subscriber.
    Assigned(Vec<TopicPartition>),
    /// Partitions taken away; unacknowledged records of them will be delivered again to the new owner.
    Revoked(Vec<TopicPartition>),
    /// Records, in offset order within each partition.
    Records(Vec<Record>),
}

/// The result of acknowledging one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The record was outstanding and is now acknowledged.
    Acked,
    /// The record is not outstanding here (already acked, never delivered, or its partition moved away).
    Ignored,
}

/// Limits of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Most records.
    pub max_records: usize,
    /// Most key+value bytes; one record is returned even if it alone is larger.
    pub max_bytes: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_records: 500,
            max_bytes: 1 << 20,
        }
    }
}

/// Records read by a fetch, with the partition's watermarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Records from the requested offset on.
    pub records: Vec<Record>,
    /// Oldest retained offset.
    pub low_watermark: i64,
    /// Next offset to be written.
    pub high_watermark: i64,
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count; `None` uses the configured default.
    pub partitions: Option<u32>,
    /// Retention by age in ms; `None` uses the default, `Some(0)` keeps forever.
    pub retention_ms: Option<i64>,
    /// Retention by bytes per partition; `None` uses the default, `Some(0)` is unlimited.
    pub retention_bytes: Option<i64>,
    /// Keep the latest record of each key (Kafka `cleanup.policy=compact`). Retention then defaults to
    /// unlimited. The embedded log keeps every record of a compacted topic; readers take the latest.
    pub compacted: bool,
}

impl TopicSpec {
    /// A topic with defaults for everything but the name.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            retention_ms: None,
            retention_bytes: None,
            compacted: false,
        }
    }

    /// Makes the topic compacted (see [`TopicSpec::compacted`]).
    pub fn compacted(mut self) -> Self {
        self.compacted = true;
        self
    }

    /// Sets the partition count.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }
}

/// A partition's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionWatermarks {
    /// Partition number.
    pub partition: i32,
    /// Oldest retained offset.
    pub low: i64,
    /// Next offset to be written.
    pub high: i64,
}

/// A topic with its partitions' watermarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// One entry per partition, in order.
    pub partitions: Vec<PartitionWatermarks>,
    /// Effective retention by age in ms; 0 is unlimited.
    pub retention_ms: i64,
    /// Effective retention by bytes per partition; 0 is unlimited.
    pub retention_bytes: i64,
}

/// A topic's name and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
}

/// A live member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Unique member id.
    pub member_id: String,
    /// The client's address.
    pub client: String,
    /// The protocol it subscribed with.
    pub protocol: String,
    /// Partitions it holds.
    pub assigned: Vec<TopicPartition>,
}

/// A group's position in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// The partition.
    pub partition: TopicPartition,
    /// Next offset the group reads; `None` if never committed.
    pub committed: Option<i64>,
    /// The partition's next offset to be written.
    pub high_watermark: i64,
    /// Records not yet consumed by the group.
    pub lag: i64,
}

/// A consumer group's members and offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// Live members.
    pub members: Vec<GroupMember>,
    /// Committed offsets and lag of every partition of every topic the group has touched.
    pub offsets: Vec<GroupOffset>,
}
