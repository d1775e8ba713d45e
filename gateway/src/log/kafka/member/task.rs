//! The task that polls one consumer: it hands fetched records on within the window, serves the
//! control handle's requests, commits on its interval and follows topic metadata.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Duration,
};

use futures_util::FutureExt;
use rdkafka::{
    Message, Offset,
    consumer::{CommitMode, Consumer},
};
use tokio::{sync::mpsc, time::Instant};

use super::{
    rebalance::{MemberConsumer, commit},
    state::MemberState,
};
use crate::{
    Error, Result,
    log::{
        Position, Record, SubscriptionEvent, TopicPartition, TopicSelector,
        kafka::{codec, metadata, shared::blocking},
        member::ControlCommand,
    },
};

/// How often topic metadata is read to follow patterns and new partitions.
const TOPIC_REFRESH: Duration = Duration::from_secs(1);
/// Most records taken from librdkafka's queue in one go before they are handed on as one batch.
const MAX_BATCH: usize = 500;

/// Most records held back in a subscription's buffer (fetched, waiting for room in the window) before
/// the task stops taking more from librdkafka: a few windows' worth, within bounds.
fn buffer_limit(window: usize) -> usize {
    (window * 4).clamp(MAX_BATCH, 20_000)
}

/// How long the buffer may stay at its limit before the partitions are paused. Until then the
/// task just stops polling, which keeps librdkafka's prefetch (bounded by
/// `queued.max.messages.kbytes`) but holds up the rebalance events queued behind it; pausing lets
/// the task poll again but drops the prefetch. A subscriber that keeps up takes records sooner
/// than this.
const STALL_BEFORE_PAUSE: Duration = Duration::from_millis(500);

pub(super) struct MemberTask {
    pub(super) state: Arc<MemberState>,
    pub(super) consumer: Arc<MemberConsumer>,
    pub(super) topics: TopicSelector,
    pub(super) commands: mpsc::UnboundedReceiver<ControlCommand>,
    /// Records fetched while the window was full.
    pub(super) buffer: VecDeque<Record>,
    /// Topics the group subscription names (patterns are matched here, then subscribed by name).
    pub(super) subscribed: BTreeSet<String>,
    /// When the buffer reached its limit (polling stopped), while it stays there unpaused.
    pub(super) full_since: Option<Instant>,
}

impl MemberTask {
    pub(super) async fn run(mut self) {
        let shared = self.state.shared.clone();
        let mut commit_tick = tokio::time::interval(shared.groups_config.commit_interval);
        let mut topic_tick = tokio::time::interval(TOPIC_REFRESH);
        let follows_metadata = self.state.group.is_none() || self.topics.is_pattern();
        let mut closing = None;
        // A second handle, so received messages (which borrow the consumer) do not borrow `self`.
        let consumer = self.consumer.clone();
        loop {
            self.deliver_buffered();
            let reading = self.steer_window();
            let pause_at = self.full_since.map(|since| since + STALL_BEFORE_PAUSE);
            tokio::select! {
                biased;
                () = shared.closed.cancelled() => break,
                () = self.state.events.closed() => break,
                command = self.commands.recv() => match command {
                    Some(ControlCommand::Close { reply }) => {
                        closing = Some(reply);
                        break;
                    }
                    Some(ControlCommand::Seek { partition, position, reply }) => {
                        let _ = reply.send(self.seek(partition, position).await);
                    }
                    Some(ControlCommand::Commit { reply }) => {
                        let _ = reply.send(self.commit(CommitMode::Sync).await);
                    }
                    None => break,
                },
                () = self.state.window.acked() => {}
                () = self.state.events.taken() => {}
                _ = commit_tick.tick(), if self.state.group.is_some() => {
                    if let Err(error) = self.commit(CommitMode::Async).await {
                        tracing::warn!(%error, "periodic commit");
                    }
                }
                _ = topic_tick.tick(), if follows_metadata => self.follow_topics().await,
                () = sleep_until_some(pause_at) => self.set_paused(true),
                message = consumer.recv(), if reading => {
                    // A rebalance this poll served revoked partitions: what the buffer holds of
                    // them is stale. The message it returned came after the rebalance.
                    let mut records = Vec::new();
                    self.purge_revoked(&mut records);
                    match message {
                        Ok(message) => {
                            records.push(received(&message));
                            drop(message);
                            // Take what is already queued without waiting, to hand on larger batches.
                            while records.len() < MAX_BATCH {
                                match consumer.recv().now_or_never() {
                                    Some(Ok(message)) => {
                                        // Each poll may serve a rebalance too: records taken before
                                        // it of the partitions it revoked are stale as well (kept,
                                        // they would be handed out if a partition came back, and
                                        // the refetched ones skipped as already delivered).
                                        self.purge_revoked(&mut records);
                                        records.push(received(&message));
                                    }
                                    Some(Err(error)) => {
                                        tracing::warn!(%error, "consumer error");
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            self.purge_revoked(&mut records);
                            self.buffer.extend(records);
                        }
                        Err(error) => tracing::warn!(%error, "consumer error"),
                    }
                }
            }
        }
        // The consumer must have one owner when it closes (see `leave`).
        drop(consumer);
        let result = self.leave().await;
        if let Some(reply) = closing {
            let _ = reply.send(result);
        }
    }

    /// Hands buffered records of held partitions to the subscriber while the window and its queue
    /// have room.
    fn deliver_buffered(&mut self) {
        let plain_reader = self.state.group.is_none();
        let consumer = self.consumer.clone();
        // A partition assigned without a known start (the lookup failed) starts where librdkafka did.
        let batch = self.state.window.deliver_from(
            &mut self.buffer,
            self.state.events.room(),
            |partition| plain_reader || consumer_holds(&consumer, partition),
        );
        if !batch.is_empty() {
            let _ = self.state.events.send(SubscriptionEvent::Records(batch));
        }
    }

    /// Decides whether to take records from librdkafka now (the answer). The window itself is
    /// enforced on delivery; this bounds the local buffer: at [`buffer_limit`] records the task
    /// stops polling, so librdkafka's prefetch fills to its own bound and waits, ready; only when
    /// the buffer stays at its limit for [`STALL_BEFORE_PAUSE`] are the partitions paused, so the
    /// task can poll again and serve rebalances. Paused, they resume once the buffer is down to
    /// half. Pausing at every full buffer costs far more: librdkafka drops what it prefetched for
    /// a paused partition and fetches it again on resume, about 0.4 s each time on the mock
    /// cluster. The clock runs while the subscriber takes records too, as long as the buffer stays
    /// at its limit (a poll can take it up to [`MAX_BATCH`] past): a subscriber taking a trickle
    /// would otherwise keep the task from polling, and its group from rebalancing, for as long.
    fn steer_window(&mut self) -> bool {
        let limit = buffer_limit(self.state.window.max_in_flight());
        if self.state.paused.load(Ordering::Acquire) {
            self.full_since = None;
            if self.buffer.len() <= limit / 2 {
                self.set_paused(false);
            }
            return true;
        }
        if self.buffer.len() < limit {
            self.full_since = None;
            return true;
        }
        self.full_since.get_or_insert_with(Instant::now);
        false
    }

    fn set_paused(&mut self, pause: bool) {
        self.full_since = None;
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.state.paused.store(pause, Ordering::Release);
                if pause {
                    self.state.has_paused.store(true, Ordering::Release);
                }
            }
            Err(error) => tracing::warn!(%error, "pausing or resuming partitions"),
        }
    }

    /// Drops the records of partitions revoked since the last look, buffered or in `taken` (read
    /// in the batch being taken).
    fn purge_revoked(&mut self, taken: &mut Vec<Record>) {
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
            taken.retain(|record| !revoked.contains(&record.topic_partition()));
        }
    }

    async fn seek(&mut self, partition: TopicPartition, position: Position) -> Result<()> {
        if !self.state.window.holds(&partition) {
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
        self.state.window.seek(&partition, offset);
        self.buffer
            .retain(|record| record.topic_partition() != partition);
        Ok(())
    }

    /// Commits the acknowledged prefix of held partitions (group members only).
    pub(super) async fn commit(&mut self, mode: CommitMode) -> Result<()> {
        if self.state.group.is_none() {
            return Ok(());
        }
        let offsets = self.state.window.commit_due(|_| true);
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
        self.state.window.committed(&offsets);
        Ok(())
    }

    /// Follows metadata: group members re-subscribe when the topics a pattern matches change; plain
    /// readers assign themselves partitions they do not hold yet.
    async fn follow_topics(&mut self) {
        let topics = match blocking(&self.state.shared, |s| {
            metadata::read_partition_counts(s.metadata_client(), None, s.config.request_timeout)
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
        let assigning = tokio::task::spawn_blocking(move || state.take_on(&*consumer, &new));
        if assigning.await.is_err() {
            tracing::warn!("assigning partitions to a reader failed");
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn consumer_holds(consumer: &MemberConsumer, partition: &TopicPartition) -> bool {
    consumer.assignment().is_ok_and(|list| {
        list.find_partition(&partition.topic, partition.partition)
            .is_some()
    })
}

fn received(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    codec::record_of(&Arc::from(message.topic()), message)
}
