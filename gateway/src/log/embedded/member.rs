//! One subscriber of the embedded log: the task that reads its partitions and delivers records, and the
//! control handle the front end acks through.
//!
//! Backpressure: the task delivers only while fewer than `max_in_flight` records are unacknowledged
//! and fewer than that wait in the subscriber's queue ([`crate::log::events`]). When either is full
//! it stops reading (the partitions are paused) until an ack or the front end taking records frees a
//! place, so the queue never holds more than the window, whatever the client acks or seeks.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::MissedTickBehavior,
};

use super::{
    groups::{GroupCommand, GroupId},
    shared::Shared,
    store,
    topics::Topic,
};
use crate::{
    Error, Result,
    log::{
        FetchLimits, Position, SubscriptionEvent, TopicPartition,
        events::EventSender,
        member::{AckWindow, ControlCommand},
    },
};

/// Most records read for one delivery batch.
const MAX_BATCH_RECORDS: usize = 500;
/// Most key+value bytes read for one delivery batch.
const MAX_BATCH_BYTES: usize = 1 << 20;

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
    pub(super) events: EventSender,
    pub(super) appended: watch::Receiver<u64>,
    pub(super) commit_interval: Duration,
}

impl MemberTask {
    pub(super) async fn run(mut self) {
        let mut held: BTreeMap<TopicPartition, Arc<Topic>> = BTreeMap::new();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rotation = 0usize;
        let mut close_reply = None;

        loop {
            // Mark appends seen before looking, so an append after the look wakes the wait below.
            self.appended.borrow_and_update();
            let window_full = self.window.space() == 0;
            let queue_full = self.events.room() == 0;
            let readable = if window_full || queue_full {
                None
            } else {
                self.next_readable(&held, &mut rotation)
            };
            tokio::select! {
                biased;
                command = self.group_commands.recv() => match command {
                    Some(GroupCommand::Assign(partitions)) => self.assign(partitions, &mut held),
                    Some(GroupCommand::Revoke { partitions, done }) => {
                        self.revoke(&partitions, &mut held);
                        let _ = done.send(());
                    }
                    None => break,
                },
                command = self.control.recv() => match command {
                    Some(ControlCommand::Seek { partition, position, reply }) => {
                        let _ = reply.send(self.seek(&partition, position, &held));
                    }
                    Some(ControlCommand::Commit { reply }) => {
                        let _ = reply.send(self.commit(&held));
                    }
                    Some(ControlCommand::Close { reply }) => {
                        close_reply = Some(reply);
                        break;
                    }
                    None => break,
                },
                () = self.events.closed() => break,
                _ = commit_tick.tick() => {
                    if let Err(error) = self.commit(&held) {
                        tracing::warn!(%error, group = %self.group.name, "periodic commit failed");
                    }
                }
                () = self.window.acked(), if window_full => {}
                () = self.events.taken(), if queue_full => {}
                changed = self.appended.changed(), if !window_full && !queue_full && readable.is_none() => {
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

        let result = self.commit(&held);
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
        let room = self.events.room();
        let limits = FetchLimits {
            max_records: self.window.space().min(room).min(MAX_BATCH_RECORDS),
            max_bytes: MAX_BATCH_BYTES,
        };
        let mut read = topic
            .read(partition.partition as usize, position, limits)?
            .into();
        let records = self.window.deliver_from(&mut read, room, |_| false);
        if records.is_empty() {
            return Ok(());
        }
        // The receiver may be gone; the loop notices through `events.closed()`.
        let _ = self.events.send(SubscriptionEvent::Records(records));
        Ok(())
    }

    fn assign(
        &self,
        partitions: Vec<TopicPartition>,
        held: &mut BTreeMap<TopicPartition, Arc<Topic>>,
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
            let start = match stored {
                Ok(Some(offset)) => {
                    let (low, high) = topic.watermarks(index);
                    Ok((offset.clamp(low, high), Some(offset)))
                }
                Ok(None) => topic
                    .resolve(index, self.start)
                    .map(|position| (position, None)),
                Err(error) => Err(error),
            };
            match start {
                Ok((position, committed)) => {
                    self.window.hold(partition.clone(), position, committed);
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
    ) {
        let mut losing = BTreeMap::new();
        for partition in partitions {
            if let Some(topic) = held.remove(partition) {
                losing.insert(partition.clone(), topic);
            }
        }
        let losing_partitions: Vec<TopicPartition> = losing.keys().cloned().collect();
        let mut due = self.window.release(&losing_partitions);
        due.retain(|(partition, _)| {
            losing
                .get(partition)
                .is_some_and(|topic| !topic.is_deleted())
        });
        if let Err(error) = self.store_offsets(&due) {
            tracing::warn!(%error, group = %self.group.name, "commit on revoke failed; records will be redelivered");
        }
        let _ = self
            .events
            .send(SubscriptionEvent::Revoked(losing_partitions));
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

    /// Stores the acknowledged prefix of the held partitions where it moved since the last commit.
    fn commit(&self, held: &BTreeMap<TopicPartition, Arc<Topic>>) -> Result<()> {
        let due = self
            .window
            .commit_due(|partition| held.get(partition).is_some_and(|topic| !topic.is_deleted()));
        self.store_offsets(&due)?;
        self.window.committed(&due);
        Ok(())
    }

    /// Writes group offsets in one batch (nothing for a private group).
    fn store_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        if self.group.private || offsets.is_empty() {
            return Ok(());
        }
        let mut batch = self.shared.db.batch();
        for (partition, offset) in offsets {
            let key = store::offset_key(&self.group.name, &partition.topic, partition.partition);
            batch.insert(&self.shared.meta, key, offset.to_be_bytes());
        }
        batch
            .commit()
            .map_err(Error::storage("committing group offsets"))
    }
}
