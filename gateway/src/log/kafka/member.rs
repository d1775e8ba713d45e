//! One subscription on Kafka: a librdkafka consumer of its own, driven by one task.
//!
//! - Group members subscribe with `cooperative-sticky` assignment. On assignment each partition starts
//!   at the group's committed offset, or where the subscriber asked (`start`) when the group has none;
//!   on revocation the acknowledged prefix is committed synchronously *before* the partition is let
//!   go, so the next owner starts right after it.
//! - Plain readers (no group) assign themselves every partition of the matching topics.
//! - Patterns are matched by the gateway (full-name regular expressions, as on the embedded log) against
//!   metadata read every [`TOPIC_REFRESH`], so new topics are picked up.
//! - At most `max_in_flight` records are outstanding. Past the window, fetched records wait in a local
//!   buffer and go out first when acks make room; when the buffer is full the consumer pauses its
//!   partitions and keeps polling (to stay in the group and see rebalances).
//! - Offsets are committed over the contiguous acknowledged prefix only ([`AckTracker`]), every
//!   `groups.commit_interval`, on request, on revocation and when the subscriber leaves.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures_util::FutureExt;
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::KafkaResult,
    producer::Producer as _,
    types::RDKafkaRespErr,
};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Shared, blocking, clients, codec, metadata};
use crate::log::acks::AckTracker;
use crate::{
    Error, Result,
    log::{
        AckOutcome, Position, Record, SubscribeOptions, Subscription, SubscriptionControl,
        SubscriptionEvent, TopicPartition, TopicSelector,
    },
};

/// How often topic metadata is read to follow patterns and new partitions.
const TOPIC_REFRESH: Duration = Duration::from_secs(1);
/// Most records taken from librdkafka's queue in one go before they are handed on as one batch.
const MAX_BATCH: usize = 500;
/// How long each poll waits while the final revocation is served before leaving a group.
const RELEASE_POLL: Duration = Duration::from_millis(50);

type MemberConsumer = StreamConsumer<MemberContext>;

/// Most records held back in a subscription's buffer (fetched, waiting for room in the window) before
/// fetching pauses: a few windows' worth, within bounds.
fn buffer_limit(window: usize) -> usize {
    (window * 4).clamp(MAX_BATCH, 20_000)
}

/// This gateway's own subscribers by Kafka client id, so describe-group can show their partitions when
/// the broker's DescribeGroups answer carries no member assignments (tansu 0.6.0 sends none; Apache
/// Kafka does, and then its answer is used).
#[derive(Debug, Default)]
pub(super) struct LocalMembers {
    members: Mutex<HashMap<String, std::sync::Weak<MemberState>>>,
}

impl LocalMembers {
    fn register(&self, client_id: &str, state: &Arc<MemberState>) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.retain(|_, member| member.strong_count() > 0);
        members.insert(client_id.to_owned(), Arc::downgrade(state));
    }

    /// The protocol of a live local subscriber of `group` other than `protocol`, if any. Covers
    /// subscribers that have not finished joining, which the broker does not list yet.
    pub(super) fn other_protocol(&self, group: &str, protocol: &str) -> Option<&'static str> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|state| state.group.as_deref() == Some(group) && !state.events.is_closed())
            .map(|state| state.protocol)
            .find(|other| *other != protocol)
    }

    /// Partitions a local subscriber holds; `None` if the client id is not one of ours.
    pub(super) fn assigned(&self, client_id: &str) -> Option<Vec<TopicPartition>> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let state = members.get(client_id)?.upgrade()?;
        let mut held: Vec<TopicPartition> = state.held().keys().cloned().collect();
        held.sort();
        Some(held)
    }
}

/// A held partition's delivery state.
#[derive(Debug)]
struct Held {
    tracker: AckTracker,
    /// Last offset committed by this member, to skip commits that would change nothing.
    committed: Option<i64>,
}

impl Held {
    /// The acknowledged prefix, if it moved since this member last committed.
    fn commit_due(&self) -> Option<i64> {
        let offset = self.tracker.committable();
        (self.committed != Some(offset)).then_some(offset)
    }
}

/// What the group's committed-offset lookup said of a partition.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Committed(i64),
    NoneCommitted,
    Failed,
}

/// State shared by the consumer's callbacks, the member task and the control handle.
struct MemberState {
    shared: Arc<Shared>,
    group: Option<String>,
    protocol: &'static str,
    start: Position,
    window: usize,
    held: Mutex<HashMap<TopicPartition, Held>>,
    outstanding: AtomicUsize,
    acked: Notify,
    /// Partitions revoked inside a poll, for the task to purge from its buffer.
    revoked: Mutex<Vec<TopicPartition>>,
    paused: std::sync::atomic::AtomicBool,
    /// Set when the subscriber gave the member up without committing (its cluster was lost): no
    /// commit of this member may reach whatever cluster answers at that address later.
    abandoned: std::sync::atomic::AtomicBool,
    /// Set once the group's first assignment reached this member (librdkafka's cooperative protocol
    /// serves one after every completed join, even when it adds nothing): until then the member is
    /// between joining and syncing, the one moment it must not leave (see `MemberTask::await_join`).
    joined: std::sync::atomic::AtomicBool,
    events: mpsc::UnboundedSender<SubscriptionEvent>,
}

impl MemberState {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where each newly assigned partition starts: the group's committed offset, else `start`; `None`
    /// when the group's offset could not be read. Blocks.
    fn starting_offsets(
        &self,
        consumer: &impl Consumer<MemberContext>,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, Option<i64>)> {
        let committed = self
            .group
            .is_some()
            .then(|| self.committed_offsets(consumer, partitions));
        partitions
            .iter()
            .map(|partition| {
                let offset = match committed.as_ref().map(|c| c.get(partition)) {
                    Some(Some(Lookup::Committed(offset))) => Some(*offset),
                    // Starting at `start` here could skip what the group has not read yet (a resumed
                    // MQTT session starts at latest). `None` assigns at the stored offset instead:
                    // librdkafka reads the group's offset itself, without holding up the rebalance,
                    // and starts at the oldest record if there is none (redelivery, never loss).
                    Some(Some(Lookup::Failed) | None) => None,
                    None | Some(Some(Lookup::NoneCommitted)) => self
                        .shared
                        .resolve(partition, self.start)
                        .inspect_err(|error| {
                            tracing::warn!(%error, %partition, "resolving a start position")
                        })
                        .ok(),
                };
                (partition.clone(), offset)
            })
            .collect()
    }

    /// The group's committed offset of each partition. Blocks.
    fn committed_offsets(
        &self,
        consumer: &impl Consumer<MemberContext>,
        partitions: &[TopicPartition],
    ) -> HashMap<TopicPartition, Lookup> {
        let mut query = TopicPartitionList::new();
        for partition in partitions {
            query.add_partition(&partition.topic, partition.partition);
        }
        // This runs inside the rebalance callback: a lookup that outlasts the session timeout gets
        // the member evicted while it waits (seen on tansu under load, where the lookup then failed
        // anyway). Half the session timeout leaves time to assign at the stored offset instead.
        let timeout = self
            .shared
            .config
            .request_timeout
            .min(self.shared.config.session_timeout / 2);
        let answer = match consumer.committed_offsets(query, timeout) {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(%error, group = ?self.group, "reading committed offsets on assignment; librdkafka reads them instead");
                return partitions
                    .iter()
                    .map(|partition| (partition.clone(), Lookup::Failed))
                    .collect();
            }
        };
        answer
            .elements()
            .iter()
            .map(|element| {
                let partition = TopicPartition::new(element.topic(), element.partition());
                let lookup = match (element.error(), element.offset()) {
                    (Err(error), _) => {
                        tracing::warn!(%error, %partition, "reading a committed offset on assignment");
                        Lookup::Failed
                    }
                    (Ok(()), Offset::Offset(offset)) => Lookup::Committed(offset),
                    (Ok(()), _) => Lookup::NoneCommitted,
                };
                (partition, lookup)
            })
            .collect()
    }

    /// Takes partitions on: assigns them at their starting offsets and tells the subscriber. Blocks.
    fn assign(
        &self,
        consumer: &impl Consumer<MemberContext>,
        starts: Vec<(TopicPartition, Option<i64>)>,
    ) {
        tracing::debug!(group = ?self.group, ?starts, "partitions assigned");
        let mut list = TopicPartitionList::new();
        for (partition, offset) in &starts {
            // Without an offset (the lookup failed), librdkafka's reset policy (earliest) decides.
            let offset = offset.map_or(Offset::Stored, Offset::Offset);
            if let Err(error) =
                list.add_partition_offset(&partition.topic, partition.partition, offset)
            {
                tracing::warn!(%error, %partition, "assigning a partition");
            }
        }
        if let Err(error) = consumer.incremental_assign(&list) {
            tracing::error!(%error, "assigning partitions");
            return;
        }
        if self.paused.load(Ordering::Acquire)
            && let Err(error) = consumer.pause(&list)
        {
            tracing::warn!(%error, "pausing newly assigned partitions");
        }
        let mut held = self.held();
        for (partition, offset) in &starts {
            if let Some(offset) = offset {
                held.insert(
                    partition.clone(),
                    Held {
                        tracker: AckTracker::starting_at(*offset),
                        committed: None,
                    },
                );
            }
        }
        drop(held);
        let partitions = starts.into_iter().map(|(p, _)| p).collect();
        let _ = self.events.send(SubscriptionEvent::Assigned(partitions));
    }

    /// Lets partitions go: commits their acknowledged prefix first (unless the group already gave
    /// them to someone else), forgets their outstanding records and tells the subscriber. Blocks.
    fn revoke(&self, consumer: &impl Consumer<MemberContext>, list: &TopicPartitionList) {
        let partitions = codec::partitions_of(list);
        let mut released = Vec::new();
        {
            let mut held = self.held();
            for partition in &partitions {
                if let Some(state) = held.remove(partition) {
                    released.push((partition.clone(), state));
                }
            }
        }
        let forgotten: usize = released.iter().map(|(_, s)| s.tracker.outstanding()).sum();
        self.outstanding.fetch_sub(forgotten, Ordering::AcqRel);
        if self.group.is_some()
            && !consumer.assignment_lost()
            && !self.abandoned.load(Ordering::Acquire)
        {
            let offsets: Vec<(TopicPartition, i64)> = released
                .iter()
                .filter_map(|(p, s)| Some((p.clone(), s.commit_due()?)))
                .collect();
            if let Err(error) = commit(consumer, &offsets, CommitMode::Sync) {
                tracing::warn!(%error, "committing revoked partitions");
            }
        }
        if let Err(error) = consumer.incremental_unassign(list) {
            tracing::warn!(%error, "releasing partitions");
        }
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(partitions.iter().cloned());
        self.acked.notify_one();
        let _ = self.events.send(SubscriptionEvent::Revoked(partitions));
    }

    /// The acknowledged prefix of every held partition that moved since the last commit; nothing once
    /// the member was abandoned.
    fn commit_due(&self) -> Vec<(TopicPartition, i64)> {
        if self.abandoned.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.held()
            .iter()
            .filter_map(|(p, s)| Some((p.clone(), s.commit_due()?)))
            .collect()
    }

    /// Records a successful commit.
    fn committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut held = self.held();
        for (partition, offset) in offsets {
            if let Some(state) = held.get_mut(partition) {
                state.committed = Some(*offset);
            }
        }
    }
}

fn commit(
    consumer: &impl Consumer<MemberContext>,
    offsets: &[(TopicPartition, i64)],
    mode: CommitMode,
) -> KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    consumer.commit(&codec::offset_list(offsets)?, mode)
}

/// librdkafka's callbacks for one subscription. Rebalances are handled here, on the polling task, so
/// the commit of revoked partitions happens before librdkafka lets them go.
struct MemberContext {
    state: Arc<MemberState>,
}

impl ClientContext for MemberContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // With `enable.partition.eof`, reaching a partition's end comes through here too: it is how a
        // reader learns it is caught up, not a fault (rdkafka's default logs it at ERROR).
        if matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) {
            tracing::trace!(reason, "reached the end of a partition");
        } else {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = codec::partitions_of(list);
                let starts = self.state.starting_offsets(consumer, &partitions);
                self.state.assign(consumer, starts);
                self.state.joined.store(true, Ordering::Release);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.state.revoke(consumer, list);
            }
            other => tracing::warn!(error = ?other, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed; the next commit retries it");
            // Forget what was marked committed, so the next commit (periodic, on revocation or on
            // leaving) sends these offsets again.
            let mut held = self.state.held();
            for partition in codec::partitions_of(offsets) {
                if let Some(state) = held.get_mut(&partition) {
                    state.committed = None;
                }
            }
        }
    }
}

/// Requests from the control handle to the member task.
enum Command {
    Seek {
        partition: TopicPartition,
        position: Position,
        reply: oneshot::Sender<Result<()>>,
    },
    Commit {
        reply: oneshot::Sender<Result<()>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The handle front ends ack with.
struct MemberControl {
    state: Arc<MemberState>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for MemberControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.state.group)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl MemberControl {
    /// Sends a command to the member task and waits for its answer; a task that is gone means the
    /// subscription is closing.
    async fn request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

#[async_trait]
impl SubscriptionControl for MemberControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        let acked = self
            .state
            .held()
            .get_mut(partition)
            .is_some_and(|held| held.tracker.ack(offset));
        if !acked {
            return AckOutcome::Ignored;
        }
        self.state.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.state.acked.notify_one();
        AckOutcome::Acked
    }

    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        self.request(|reply| Command::Seek {
            partition: partition.clone(),
            position,
            reply,
        })
        .await
    }

    fn outstanding(&self) -> usize {
        self.state.outstanding.load(Ordering::Acquire)
    }

    async fn commit(&self) -> Result<()> {
        self.request(|reply| Command::Commit { reply }).await
    }

    async fn abandon(&self) -> Result<()> {
        self.state.abandoned.store(true, Ordering::Release);
        self.close().await
    }

    async fn close(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).is_ok() {
            // The task is gone already when the reply is dropped: closed either way.
            let _ = answer.await;
        }
        Ok(())
    }
}

/// Starts a subscription: creates its consumer and spawns its task.
pub(super) fn start(shared: Arc<Shared>, options: SubscribeOptions) -> Result<Subscription> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let state = Arc::new(MemberState {
        shared: shared.clone(),
        group: options.group.clone(),
        protocol: options.protocol,
        start: options.start,
        window: options.max_in_flight,
        held: Mutex::new(HashMap::new()),
        outstanding: AtomicUsize::new(0),
        acked: Notify::new(),
        revoked: Mutex::new(Vec::new()),
        paused: std::sync::atomic::AtomicBool::new(false),
        abandoned: std::sync::atomic::AtomicBool::new(false),
        joined: std::sync::atomic::AtomicBool::new(false),
        events: events_tx,
    });
    let client_id = codec::subscriber_client_id(options.protocol, &options.client);
    let consumer: MemberConsumer =
        clients::consumer(&shared.config, options.group.as_deref(), &client_id)
            .create_with_context(MemberContext {
                state: state.clone(),
            })
            .map_err(Error::kafka("creating a consumer"))?;
    if let TopicSelector::Names(names) = &options.topics
        && options.group.is_some()
    {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(Error::kafka("subscribing"))?;
    }
    shared.local_members.register(&client_id, &state);
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let task = MemberTask {
        state: state.clone(),
        consumer: Arc::new(consumer),
        topics: options.topics,
        commands,
        buffer: VecDeque::new(),
        subscribed: BTreeSet::new(),
    };
    shared.subscriptions.spawn(task.run());
    Ok(Subscription {
        events,
        control: Arc::new(MemberControl {
            state,
            commands: commands_tx,
        }),
    })
}

/// The task that polls one consumer.
struct MemberTask {
    state: Arc<MemberState>,
    consumer: Arc<MemberConsumer>,
    topics: TopicSelector,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Records fetched while the window was full.
    buffer: VecDeque<Record>,
    /// Topics the group subscription names (patterns are matched here, then subscribed by name).
    subscribed: BTreeSet<String>,
}

impl MemberTask {
    async fn run(mut self) {
        let shared = self.state.shared.clone();
        let mut commit_tick = tokio::time::interval(shared.groups_config.commit_interval);
        let mut topic_tick = tokio::time::interval(TOPIC_REFRESH);
        let follows_metadata =
            self.state.group.is_none() || matches!(self.topics, TopicSelector::Pattern(_));
        let mut closing: Option<oneshot::Sender<()>> = None;
        // A second handle, so received messages (which borrow the consumer) do not borrow `self`.
        let consumer = self.consumer.clone();
        loop {
            self.deliver_buffered();
            self.steer_window();
            tokio::select! {
                biased;
                () = shared.closed.cancelled() => break,
                () = self.state.events.closed() => break,
                command = self.commands.recv() => match command {
                    Some(Command::Close { reply }) => {
                        closing = Some(reply);
                        break;
                    }
                    Some(Command::Seek { partition, position, reply }) => {
                        let _ = reply.send(self.seek(partition, position).await);
                    }
                    Some(Command::Commit { reply }) => {
                        let _ = reply.send(self.commit(CommitMode::Sync).await);
                    }
                    None => break,
                },
                () = self.state.acked.notified() => {}
                _ = commit_tick.tick(), if self.state.group.is_some() => {
                    if let Err(error) = self.commit(CommitMode::Async).await {
                        tracing::warn!(%error, "periodic commit");
                    }
                }
                _ = topic_tick.tick(), if follows_metadata => self.follow_topics().await,
                message = consumer.recv() => {
                    self.purge_revoked();
                    match message {
                        Ok(message) => {
                            let mut records = vec![received(&message)];
                            drop(message);
                            // Take what is already queued without waiting, to hand on larger batches.
                            while records.len() < MAX_BATCH {
                                match consumer.recv().now_or_never() {
                                    Some(Ok(message)) => records.push(received(&message)),
                                    Some(Err(error)) => {
                                        tracing::warn!(%error, "consumer error");
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            self.purge_revoked();
                            self.buffer.extend(records);
                        }
                        Err(error) => tracing::warn!(%error, "consumer error"),
                    }
                }
            }
        }
        // The consumer must have one owner when it closes (see `leave`).
        drop(consumer);
        self.leave().await;
        if let Some(reply) = closing {
            let _ = reply.send(());
        }
    }

    /// Hands buffered records of held partitions to the subscriber while the window has room.
    fn deliver_buffered(&mut self) {
        let mut batch = Vec::new();
        {
            let mut held = self.state.held();
            while self.state.outstanding.load(Ordering::Acquire) < self.state.window {
                let Some(record) = self.buffer.pop_front() else {
                    break;
                };
                let partition = record.topic_partition();
                let state = match held.get_mut(&partition) {
                    Some(state) => state,
                    // Assigned without a known start (the lookup failed): start where librdkafka did.
                    None if self.state.group.is_none() || self.consumer_holds(&partition) => {
                        held.entry(partition).or_insert(Held {
                            tracker: AckTracker::starting_at(record.offset),
                            committed: None,
                        })
                    }
                    None => continue,
                };
                // Older than the position: fetched before a seek moved it on.
                if record.offset < state.tracker.position() {
                    continue;
                }
                state.tracker.delivered(record.offset);
                self.state.outstanding.fetch_add(1, Ordering::AcqRel);
                batch.push(record);
            }
        }
        if !batch.is_empty() {
            let _ = self.state.events.send(SubscriptionEvent::Records(batch));
        }
    }

    fn consumer_holds(&self, partition: &TopicPartition) -> bool {
        self.consumer.assignment().is_ok_and(|list| {
            list.find_partition(&partition.topic, partition.partition)
                .is_some()
        })
    }

    /// Pauses fetching once the local buffer holds [`buffer_limit`] records; resumes when it is down to
    /// half. The window itself is enforced on delivery, not by pausing: librdkafka drops what it
    /// prefetched when a partition pauses and fetches it again on resume, so pausing at every full
    /// window would re-read the same data over and over under load.
    fn steer_window(&mut self) {
        let limit = buffer_limit(self.state.window);
        let paused = self.state.paused.load(Ordering::Acquire);
        let pause = if paused {
            self.buffer.len() > limit / 2
        } else {
            self.buffer.len() >= limit
        };
        if pause == paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => self.state.paused.store(pause, Ordering::Release),
            Err(error) => tracing::warn!(%error, "pausing or resuming partitions"),
        }
    }

    /// Drops buffered records of partitions revoked since the last look.
    fn purge_revoked(&mut self) {
        let revoked = std::mem::take(
            &mut *self
                .state
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if !revoked.is_empty() {
            self.buffer
                .retain(|record| !revoked.contains(&record.topic_partition()));
        }
    }

    async fn seek(&mut self, partition: TopicPartition, position: Position) -> Result<()> {
        if !self.state.held().contains_key(&partition) {
            return Err(Error::InvalidRequest(format!(
                "this subscriber does not hold {partition}; it can only seek in partitions assigned to it"
            )));
        }
        let offset = {
            let partition = partition.clone();
            blocking(&self.state.shared, move |s| s.resolve(&partition, position)).await?
        };
        let consumer = self.consumer.clone();
        let timeout = self.state.shared.config.request_timeout;
        let target = partition.clone();
        tokio::task::spawn_blocking(move || {
            consumer.seek(
                &target.topic,
                target.partition,
                Offset::Offset(offset),
                timeout,
            )
        })
        .await
        .map_err(|_| Error::ShuttingDown)?
        .map_err(Error::kafka("seeking"))?;
        if let Some(state) = self.state.held().get_mut(&partition) {
            let forgotten = state.tracker.seek(offset);
            self.state
                .outstanding
                .fetch_sub(forgotten, Ordering::AcqRel);
        }
        self.buffer
            .retain(|record| record.topic_partition() != partition);
        self.state.acked.notify_one();
        Ok(())
    }

    /// Commits the acknowledged prefix of held partitions (group members only).
    async fn commit(&mut self, mode: CommitMode) -> Result<()> {
        if self.state.group.is_none() {
            return Ok(());
        }
        let offsets = self.state.commit_due();
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let committing = offsets.clone();
        let result = match mode {
            // Async commits only queue the request; no need for a blocking thread.
            CommitMode::Async => commit(&*consumer, &committing, mode),
            CommitMode::Sync => {
                tokio::task::spawn_blocking(move || commit(&*consumer, &committing, mode))
                    .await
                    .map_err(|_| Error::ShuttingDown)?
            }
        };
        result.map_err(Error::kafka("committing offsets"))?;
        self.state.committed(&offsets);
        Ok(())
    }

    /// Follows metadata: group members re-subscribe when the topics a pattern matches change; plain
    /// readers assign themselves partitions they do not hold yet.
    async fn follow_topics(&mut self) {
        let topics = match blocking(&self.state.shared, |s| {
            metadata::read_partition_counts(s.producer.client(), None, s.config.request_timeout)
        })
        .await
        {
            Ok(topics) => topics,
            Err(error) => {
                tracing::warn!(%error, "reading topics to follow");
                return;
            }
        };
        let matching: Vec<(String, u32)> = topics
            .into_iter()
            .filter(|(name, _)| self.topics.matches(name))
            .collect();
        if self.state.group.is_some() {
            let names: BTreeSet<String> = matching.into_iter().map(|(name, _)| name).collect();
            if names != self.subscribed {
                let list: Vec<&str> = names.iter().map(String::as_str).collect();
                let result = if list.is_empty() {
                    self.consumer.unsubscribe();
                    Ok(())
                } else {
                    self.consumer.subscribe(&list)
                };
                match result {
                    Ok(()) => self.subscribed = names,
                    Err(error) => tracing::warn!(%error, "subscribing to matched topics"),
                }
            }
            return;
        }
        let assigned = self.consumer.assignment().unwrap_or_default();
        let new: Vec<TopicPartition> = matching
            .iter()
            .flat_map(|(name, count)| {
                (0..*count as i32)
                    .map(move |partition| TopicPartition::new(name.as_str(), partition))
            })
            .filter(|p| assigned.find_partition(&p.topic, p.partition).is_none())
            .collect();
        if new.is_empty() {
            return;
        }
        let (state, consumer) = (self.state.clone(), self.consumer.clone());
        let assigning = tokio::task::spawn_blocking(move || {
            let starts = state.starting_offsets(&*consumer, &new);
            state.assign(&*consumer, starts);
        });
        if assigning.await.is_err() {
            tracing::warn!("assigning partitions to a reader failed");
        }
    }

    /// Commits what was acknowledged and leaves the group; the event stream ends with this task.
    async fn leave(mut self) {
        if let Err(error) = self.commit(CommitMode::Sync).await {
            tracing::warn!(%error, "committing on leave");
        }
        if self.state.group.is_some() {
            self.await_join().await;
            self.release_assignment().await;
        }
        // Closing the consumer (on drop) sends LeaveGroup, so partitions move at once rather than
        // after the session timeout. It blocks, and librdkafka can block it for good
        // (confluentinc/librdkafka#4884), so it runs on a thread of its own that nothing waits for
        // past the deadline: a stuck close costs one parked thread, never a hung drain or shutdown
        // (tokio's blocking pool would hold the runtime's shutdown on it).
        let consumer = self.consumer;
        let (closed_tx, closed) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("courier-consumer-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed_tx.send(());
            });
        match spawned {
            Ok(_) => {
                let deadline = self.state.shared.config.session_timeout;
                if tokio::time::timeout(deadline, closed).await.is_err() {
                    tracing::error!(
                        ?deadline,
                        "a Kafka consumer did not close in time; its partitions move after the \
                         session timeout"
                    );
                }
            }
            Err(error) => tracing::error!(%error, "starting a thread to close a Kafka consumer"),
        }
    }

    /// Lets a join in progress finish before the member leaves. A member that leaves between its
    /// JoinGroup answer and its SyncGroup is a departed leader to tansu 0.6.0, which goes on naming
    /// it leader to every later member: the group never assigns a partition again (a persistent MQTT
    /// session that subscribed and left at once got nothing on its return). Kafka elects a new
    /// leader; waiting costs it only the time of one join. Skipped when the cluster was given up or
    /// the gateway is stopping (nothing would answer, or nobody reads the group again soon), and when
    /// a pattern matched no topic yet (the member never joined). Bounded by the session timeout.
    async fn await_join(&mut self) {
        let subscribed =
            matches!(self.topics, TopicSelector::Names(_)) || !self.subscribed.is_empty();
        if !subscribed
            || self.state.abandoned.load(Ordering::Acquire)
            || self.state.shared.closed.is_cancelled()
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.state.shared.config.session_timeout;
        while !self.state.joined.load(Ordering::Acquire) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(group = ?self.state.group, "leaving a group before its first join completed");
                return;
            }
            // Polling serves the assignment; what it fetches is never delivered, so never acked.
            let _ = tokio::time::timeout(RELEASE_POLL, self.consumer.recv()).await;
        }
    }

    /// Unsubscribes and serves the final revocation while polling, before the consumer closes:
    /// librdkafka can hang when that revocation's unassign happens inside its close
    /// (confluentinc/librdkafka#4884). Bounded by the session timeout.
    async fn release_assignment(&mut self) {
        self.consumer.unsubscribe();
        let deadline = tokio::time::Instant::now() + self.state.shared.config.session_timeout;
        while tokio::time::Instant::now() < deadline {
            match self.consumer.assignment() {
                Ok(assigned) if assigned.count() > 0 => {}
                _ => return,
            }
            // Polling is what runs the rebalance callback; records still fetched go unacknowledged
            // and are redelivered to the partitions' next owners.
            let _ = tokio::time::timeout(RELEASE_POLL, self.consumer.recv()).await;
        }
        tracing::warn!("partitions still assigned when leaving the group");
    }
}

fn received(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    codec::record_of(&Arc::from(message.topic()), message)
}
