//! One subscriber of the embedded log: the task that reads its partitions and delivers records, and the
//! control handle the front end acks through.
//!
//! Backpressure: the task delivers only while fewer than `max_in_flight` records are unacknowledged.
//! When the window is full it stops reading (the partitions are paused) until an ack frees a slot, so
//! the event queue never holds more than the window, whatever the client does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{
    sync::{Notify, mpsc, oneshot, watch},
    time::MissedTickBehavior,
};

use super::{
    Shared,
    groups::{GroupCommand, GroupId},
    store,
    topics::Topic,
};
use crate::{
    Error, Result,
    log::{
        AckOutcome, FetchLimits, Position, SubscriptionControl, SubscriptionEvent, TopicPartition,
        acks::AckTracker,
    },
};

/// Most records read for one delivery batch.
const MAX_BATCH_RECORDS: usize = 500;
/// Most key+value bytes read for one delivery batch.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Shared between the member task (which delivers) and the control handle (which acks).
#[derive(Debug)]
pub(super) struct AckWindow {
    state: Mutex<WindowState>,
    /// Woken on every ack, so a paused member resumes.
    acked: Notify,
    max_in_flight: usize,
}

#[derive(Debug, Default)]
struct WindowState {
    trackers: HashMap<TopicPartition, AckTracker>,
    in_flight: usize,
}

impl AckWindow {
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            state: Mutex::default(),
            acked: Notify::new(),
            max_in_flight,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        // Poisoning means a panic elsewhere; each update below leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn space(&self) -> usize {
        self.max_in_flight.saturating_sub(self.lock().in_flight)
    }

    fn position(&self, partition: &TopicPartition) -> Option<i64> {
        self.lock()
            .trackers
            .get(partition)
            .map(AckTracker::position)
    }

    fn committable(&self, partition: &TopicPartition) -> Option<i64> {
        self.lock()
            .trackers
            .get(partition)
            .map(AckTracker::committable)
    }

    fn hold(&self, partition: TopicPartition, position: i64) {
        self.lock()
            .trackers
            .insert(partition, AckTracker::starting_at(position));
    }

    fn release(&self, partition: &TopicPartition) {
        let mut state = self.lock();
        if let Some(tracker) = state.trackers.remove(partition) {
            state.in_flight -= tracker.outstanding();
        }
    }

    fn seek(&self, partition: &TopicPartition, position: i64) {
        let mut state = self.lock();
        if let Some(forgotten) = state
            .trackers
            .get_mut(partition)
            .map(|tracker| tracker.seek(position))
        {
            state.in_flight -= forgotten;
        }
    }

    fn delivered(&self, partition: &TopicPartition, offsets: impl Iterator<Item = i64>) {
        let mut state = self.lock();
        let WindowState {
            trackers,
            in_flight,
        } = &mut *state;
        if let Some(tracker) = trackers.get_mut(partition) {
            for offset in offsets {
                tracker.delivered(offset);
                *in_flight += 1;
            }
        }
    }

    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        let acked = {
            let mut state = self.lock();
            let acked = state
                .trackers
                .get_mut(partition)
                .is_some_and(|tracker| tracker.ack(offset));
            if acked {
                state.in_flight -= 1;
            }
            acked
        };
        if acked {
            self.acked.notify_one();
            AckOutcome::Acked
        } else {
            AckOutcome::Ignored
        }
    }
}

/// Requests from the front end to the member task.
#[derive(Debug)]
pub(super) enum ControlCommand {
    Seek {
        partition: TopicPartition,
        position: Position,
        reply: oneshot::Sender<Result<()>>,
    },
    Commit {
        reply: oneshot::Sender<Result<()>>,
    },
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The control handle given to the front end.
#[derive(Debug)]
pub(super) struct MemberControl {
    pub(super) window: Arc<AckWindow>,
    pub(super) commands: mpsc::UnboundedSender<ControlCommand>,
}

impl MemberControl {
    async fn request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<()>>) -> ControlCommand,
    ) -> Option<Result<()>> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).ok()?;
        answer.await.ok()
    }
}

#[async_trait]
impl SubscriptionControl for MemberControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        self.window.ack(partition, offset)
    }

    fn outstanding(&self) -> usize {
        self.window.lock().in_flight
    }

    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        let partition = partition.clone();
        self.request(|reply| ControlCommand::Seek {
            partition,
            position,
            reply,
        })
        .await
        .unwrap_or(Err(Error::ShuttingDown))
    }

    async fn commit(&self) -> Result<()> {
        self.request(|reply| ControlCommand::Commit { reply })
            .await
            .unwrap_or(Err(Error::ShuttingDown))
    }

    async fn close(&self) -> Result<()> {
        // Already closed (the task ended) counts as closed.
        self.request(|reply| ControlCommand::Close { reply })
            .await
            .unwrap_or(Ok(()))
    }
}

/// The task that delivers one subscriber's records.
#[derive(Debug)]
pub(super) struct MemberTask {
    pub(super) shared: Arc<Shared>,
    pub(super) group: GroupId,
    pub(super) member_id: String,
    pub(super) start: Position,
    pub(super) window: Arc<AckWindow>,
    pub(super) control: mpsc::UnboundedReceiver<ControlCommand>,
    pub(super) group_commands: mpsc::UnboundedReceiver<GroupCommand>,
    pub(super) events: mpsc::UnboundedSender<SubscriptionEvent>,
    pub(super) appended: watch::Receiver<u64>,
    pub(super) commit_interval: Duration,
}

impl MemberTask {
    pub(super) async fn run(mut self) {
        let mut held: BTreeMap<TopicPartition, Arc<Topic>> = BTreeMap::new();
        let mut committed: HashMap<TopicPartition, i64> = HashMap::new();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rotation = 0usize;
        let mut close_reply = None;

        loop {
            // Mark appends seen before looking, so an append after the look wakes the wait below.
            self.appended.borrow_and_update();
            let window_full = self.window.space() == 0;
            let readable = if window_full {
                None
            } else {
                self.next_readable(&held, &mut rotation)
            };
            tokio::select! {
                biased;
                command = self.group_commands.recv() => match command {
                    Some(GroupCommand::Assign(partitions)) => self.assign(partitions, &mut held, &mut committed),
                    Some(GroupCommand::Revoke { partitions, done }) => {
                        self.revoke(&partitions, &mut held, &mut committed);
                        let _ = done.send(());
                    }
                    None => break,
                },
                command = self.control.recv() => match command {
                    Some(ControlCommand::Seek { partition, position, reply }) => {
                        let _ = reply.send(self.seek(&partition, position, &held));
                    }
                    Some(ControlCommand::Commit { reply }) => {
                        let _ = reply.send(self.commit(&held, &mut committed));
                    }
                    Some(ControlCommand::Close { reply }) => {
                        close_reply = Some(reply);
                        break;
                    }
                    None => break,
                },
                () = self.events.closed() => break,
                _ = commit_tick.tick() => {
                    if let Err(error) = self.commit(&held, &mut committed) {
                        tracing::warn!(%error, group = %self.group.name, "periodic commit failed");
                    }
                }
                () = self.window.acked.notified(), if window_full => {}
                changed = self.appended.changed(), if !window_full && readable.is_none() => {
                    if changed.is_err() {
                        break; // the log closed
                    }
                }
                () = std::future::ready(()), if readable.is_some() => {
                    if let Some((partition, topic)) = readable
                        && let Err(error) = self.deliver(&partition, &topic)
                    {
                        tracing::error!(%error, %partition, "reading records failed; ending the subscription");
                        break;
                    }
                }
            }
        }

        let result = self.commit(&held, &mut committed);
        if let Err(error) = &result {
            tracing::warn!(%error, group = %self.group.name, "final commit failed; unacknowledged records will be redelivered");
        }
        self.shared.coordinator.leave(&self.group, &self.member_id);
        if let Some(reply) = close_reply {
            let _ = reply.send(result);
        }
    }

    /// The next held partition with durable records past its position, round robin for fairness.
    fn next_readable(
        &self,
        held: &BTreeMap<TopicPartition, Arc<Topic>>,
        rotation: &mut usize,
    ) -> Option<(TopicPartition, Arc<Topic>)> {
        let count = held.len();
        let start = *rotation % count.max(1);
        for (index, (partition, topic)) in held.iter().enumerate().cycle().skip(start).take(count) {
            let (_, high) = topic.watermarks(partition.partition as usize);
            if self
                .window
                .position(partition)
                .is_some_and(|position| position < high)
            {
                *rotation = index + 1;
                return Some((partition.clone(), topic.clone()));
            }
        }
        None
    }

    fn deliver(&self, partition: &TopicPartition, topic: &Topic) -> Result<()> {
        let Some(position) = self.window.position(partition) else {
            return Ok(());
        };
        let limits = FetchLimits {
            max_records: self.window.space().min(MAX_BATCH_RECORDS),
            max_bytes: MAX_BATCH_BYTES,
        };
        let records = topic.read(partition.partition as usize, position, limits)?;
        if records.is_empty() {
            return Ok(());
        }
        self.window
            .delivered(partition, records.iter().map(|record| record.offset));
        // The receiver may be gone; the loop notices through `events.closed()`.
        let _ = self.events.send(SubscriptionEvent::Records(records));
        Ok(())
    }

    fn assign(
        &self,
        partitions: Vec<TopicPartition>,
        held: &mut BTreeMap<TopicPartition, Arc<Topic>>,
        committed: &mut HashMap<TopicPartition, i64>,
    ) {
        let mut assigned = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let Some(topic) = self.shared.topics.get(&partition.topic) else {
                continue;
            };
            let index = partition.partition as usize;
            let stored = if self.group.private {
                Ok(None)
            } else {
                self.shared.committed_offset(&self.group.name, &partition)
            };
            let position = match stored {
                Ok(Some(offset)) => {
                    committed.insert(partition.clone(), offset);
                    let (low, high) = topic.watermarks(index);
                    Ok(offset.clamp(low, high))
                }
                Ok(None) => topic.resolve(index, self.start),
                Err(error) => Err(error),
            };
            match position {
                Ok(position) => {
                    self.window.hold(partition.clone(), position);
                    held.insert(partition.clone(), topic);
                    assigned.push(partition);
                }
                Err(error) => {
                    tracing::error!(%error, %partition, "cannot find where to start; partition skipped")
                }
            }
        }
        let _ = self.events.send(SubscriptionEvent::Assigned(assigned));
    }

    fn revoke(
        &self,
        partitions: &[TopicPartition],
        held: &mut BTreeMap<TopicPartition, Arc<Topic>>,
        committed: &mut HashMap<TopicPartition, i64>,
    ) {
        let mut losing = BTreeMap::new();
        for partition in partitions {
            if let Some(topic) = held.remove(partition) {
                losing.insert(partition.clone(), topic);
            }
        }
        if let Err(error) = self.commit(&losing, committed) {
            tracing::warn!(%error, group = %self.group.name, "commit on revoke failed; records will be redelivered");
        }
        for partition in losing.keys() {
            self.window.release(partition);
            committed.remove(partition);
        }
        let _ = self
            .events
            .send(SubscriptionEvent::Revoked(losing.into_keys().collect()));
    }

    fn seek(
        &self,
        partition: &TopicPartition,
        position: Position,
        held: &BTreeMap<TopicPartition, Arc<Topic>>,
    ) -> Result<()> {
        let topic = held.get(partition).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "cannot seek {partition}: it is not assigned to this subscriber"
            ))
        })?;
        let offset = topic.resolve(partition.partition as usize, position)?;
        self.window.seek(partition, offset);
        Ok(())
    }

    /// Stores the acknowledged prefix of the given partitions where it moved since the last commit.
    fn commit(
        &self,
        held: &BTreeMap<TopicPartition, Arc<Topic>>,
        committed: &mut HashMap<TopicPartition, i64>,
    ) -> Result<()> {
        if self.group.private {
            return Ok(());
        }
        let mut batch = self.shared.db.batch();
        let mut moved = Vec::new();
        for (partition, topic) in held {
            if topic.deleted.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let Some(offset) = self.window.committable(partition) else {
                continue;
            };
            if committed.get(partition) != Some(&offset) {
                let key =
                    store::offset_key(&self.group.name, &partition.topic, partition.partition);
                batch.insert(&self.shared.meta, key, offset.to_be_bytes());
                moved.push((partition.clone(), offset));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        batch
            .commit()
            .map_err(Error::storage("committing group offsets"))?;
        committed.extend(moved);
        Ok(())
    }
}
