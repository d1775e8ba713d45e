//! The Log: what every front end needs from Kafka (or the embedded store), and nothing more.
//!
//! Front ends (gRPC, MQTT, AMQP) never talk to a storage engine directly; they talk to a `dyn Log`. That
//! keeps delivery semantics decided in one place. The trait is shaped for Kafka's model (partitions,
//! consumer groups whose members share partitions and see assignment and revocation, offsets,
//! watermarks) so the Kafka backend fits it without reshaping, and the embedded backend copies Kafka's
//! behaviour as far as a client can see.
//!
//! Modules:
//! - [`types`]: records, positions, options and descriptions that cross the boundary;
//! - [`events`]: a subscription's queue of events, bounded in records;
//! - [`acks`]: the sparse-ack tracker (committed offset = contiguous acknowledged prefix);
//! - [`partitioner`]: Kafka's default partitioner, so keys land where a Kafka client would put them;
//! - [`validate`]: topic names and record checks, applied by the validation layer;
//! - [`layers`]: what every backend shares (validation, the topic policy), as decorators;
//! - [`embedded`]: the single-node on-disk backend;
//! - [`kafka`]: the backend on a Kafka cluster.

pub mod acks;
pub mod embedded;
pub mod events;
pub mod kafka;
pub mod layers;
mod member;
pub mod partitioner;
pub mod types;
pub mod validate;

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;

pub use self::embedded::Embedded;
pub use self::events::Events;
pub use self::kafka::Kafka;
pub use self::types::*;
use crate::Result;

/// Now, in ms since the epoch: the timestamp of records appended without one, and the clock front
/// ends compare record timestamps with.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Resolves once submitted records are durable, with where each landed, in submission order.
pub type AppendReceipt = Pin<Box<dyn Future<Output = Result<Vec<Appended>>> + Send + 'static>>;

/// A partitioned, replicated-or-durable log with consumer groups: Kafka's model.
///
/// Every method is safe to call concurrently. A produce is acknowledged (its future resolves `Ok`) only
/// once the records are durable by the backend's definition (Kafka: `acks=all`; embedded: written to its
/// journal and, with `fsync = "always"`, synced to disk).
#[async_trait]
pub trait Log: Send + Sync + fmt::Debug + 'static {
    /// Queues records for one topic and returns a receipt that resolves once they are durable.
    ///
    /// Two phases, like a Kafka producer's `send`: the call returns once the records hold their place in
    /// the queue, so records submitted one after another by one task are stored in that order even while
    /// many receipts are awaited at once (pipelining). Validation errors are returned before anything is
    /// queued. Empty `courier_id`s are filled with fresh ULIDs.
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt>;

    /// Appends records to one topic durably and returns where each landed, in input order.
    async fn append(&self, topic: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        self.submit(topic, records).await?.await
    }

    /// Starts reading: as a member of a consumer group (partitions shared among members), or as a plain
    /// reader of every partition. The subscription ends (and the member leaves its group, committing its
    /// acknowledged prefix) when the returned [`Subscription`] is closed or dropped.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription>;

    /// Reads records of one partition from `offset`, joining no group.
    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched>;

    /// Translates a position into an offset of one partition (for seeks and offset resets).
    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64>;

    /// Sets a group's committed offsets (next offset to read). Fails with
    /// [`Error::GroupActive`](crate::Error::GroupActive) while the group has live members.
    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()>;

    /// Creates a topic.
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription>;

    /// Deletes a topic, its records and the offsets committed for it.
    async fn delete_topic(&self, topic: &str) -> Result<()>;

    /// Every topic.
    async fn list_topics(&self) -> Result<Vec<TopicSummary>>;

    /// One topic with watermarks.
    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription>;

    /// The topics that hold `topic`'s records where this log reads: the topic, and under region
    /// routing its mirrors from the other regions that exist in the read region (a record written
    /// in a region that was lost is found in its mirror, under another offset).
    async fn copies_of(&self, topic: &str) -> Result<Vec<String>> {
        Ok(vec![topic.to_owned()])
    }

    /// The topic a client is about to use (an AMQP link attaching to it), described, after creating
    /// it first where the topic policy allows ([`layers::TopicPolicy`]); a backend only describes.
    async fn open_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.describe_topic(topic).await
    }

    /// Every group with committed offsets or live members.
    async fn list_groups(&self) -> Result<Vec<String>>;

    /// A group's members, committed offsets and lag.
    async fn describe_group(&self, group: &str) -> Result<GroupDescription>;

    /// A group's live members, without offsets: what the group-protocol rule
    /// ([`layers::GroupProtocols`]) asks on every group subscription, so a backend whose
    /// [`describe_group`](Log::describe_group) reads offsets and watermarks answers it cheaper.
    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        Ok(self.describe_group(group).await?.members)
    }

    /// Makes everything acknowledged so far durable and stops background work. Later calls fail with
    /// [`Error::ShuttingDown`](crate::Error::ShuttingDown).
    async fn close(&self) -> Result<()>;
}

/// A shared log is a log: layers and the router hold their inner log as `Arc<dyn Log>` (or a
/// regional one) as readily as a concrete backend.
#[async_trait]
impl<L: Log + ?Sized> Log for Arc<L> {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        (**self).submit(topic, records).await
    }
    async fn append(&self, topic: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        (**self).append(topic, records).await
    }
    async fn copies_of(&self, topic: &str) -> Result<Vec<String>> {
        (**self).copies_of(topic).await
    }
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        (**self).subscribe(options).await
    }
    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        (**self).fetch(partition, offset, limits).await
    }
    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        (**self).resolve(partition, position).await
    }
    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        (**self).commit(group, offsets).await
    }
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        (**self).create_topic(spec).await
    }
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        (**self).delete_topic(topic).await
    }
    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        (**self).list_topics().await
    }
    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        (**self).describe_topic(topic).await
    }
    async fn open_topic(&self, topic: &str) -> Result<TopicDescription> {
        (**self).open_topic(topic).await
    }
    async fn list_groups(&self) -> Result<Vec<String>> {
        (**self).list_groups().await
    }
    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        (**self).describe_group(group).await
    }
    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        (**self).group_members(group).await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

/// How a front end acknowledges and steers a subscription. Held next to the event stream so acks can
/// be given from another task than the one reading events.
#[async_trait]
pub trait SubscriptionControl: Send + Sync + fmt::Debug {
    /// Acknowledges one delivered record. Cheap and non-blocking: front ends call it per record.
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome;

    /// Acknowledges delivered records of one partition at once; returns how many were acknowledged
    /// (the others were not outstanding). For front ends that receive acks in batches (a gRPC `Ack`
    /// carries hundreds): a backend's window takes its lock and wakes its read loop once for them
    /// all. The default acks them one by one.
    fn ack_all(&self, partition: &TopicPartition, offsets: &[i64]) -> usize {
        offsets
            .iter()
            .filter(|&&offset| self.ack(partition, offset) == AckOutcome::Acked)
            .count()
    }

    /// Acknowledges the delivered records of one partition from `first` to `last` (both
    /// included); returns how many were outstanding. The default acknowledges each offset of the
    /// range, so a caller bounds its span; a backend's window overrides it to cost the records in
    /// the range, and the region router to take a range a generation starts and ends whole from
    /// that generation.
    fn ack_range(&self, partition: &TopicPartition, first: i64, last: i64) -> usize {
        ack_range_by_offsets(self, partition, first, last)
    }

    /// Moves the read position of a partition this subscriber holds. Outstanding records of it are
    /// forgotten (they no longer count against the in-flight window).
    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()>;

    /// How many delivered records are not acknowledged yet.
    fn outstanding(&self) -> usize;

    /// Commits the acknowledged prefix of every held partition now, rather than at the next interval.
    async fn commit(&self) -> Result<()>;

    /// Commits and leaves the group; the event stream ends. Idempotent.
    async fn close(&self) -> Result<()>;

    /// Leaves without committing anything more: the region router gives up a subscription this way
    /// when its cluster was lost, so a late commit cannot land in whatever cluster answers at that
    /// address later (a rebuilt one would take positions that mean nothing there).
    async fn abandon(&self) -> Result<()> {
        self.close().await
    }
}

/// Acknowledges the offsets from `first` to `last` one by one through `ack_all` (none when `last`
/// is below `first`): [`SubscriptionControl::ack_range`]'s default, and the fallback of an
/// override that cannot take a range whole.
pub(crate) fn ack_range_by_offsets<C: SubscriptionControl + ?Sized>(
    control: &C,
    partition: &TopicPartition,
    first: i64,
    last: i64,
) -> usize {
    if last < first {
        return 0;
    }
    let offsets: Vec<i64> = (first..=last).collect();
    control.ack_all(partition, &offsets)
}

/// A live subscription: events to forward to the client, and the control to ack with.
///
/// The event queue holds at most `max_in_flight` records whatever the client acknowledges or seeks
/// ([`events`] says how), and assignment changes, which are few.
#[derive(Debug)]
pub struct Subscription {
    /// Assignment changes and records, in order.
    pub events: Events,
    /// Acks, seeks, commits.
    pub control: Arc<dyn SubscriptionControl>,
}

impl Subscription {
    /// The next event; `None` once the subscription is closed.
    pub async fn next_event(&mut self) -> Option<SubscriptionEvent> {
        self.events.recv().await
    }

    /// Commits and leaves; see [`SubscriptionControl::close`].
    pub async fn close(self) -> Result<()> {
        self.control.close().await
    }
}
