//! librdkafka's callbacks for one subscription: partitions taken on (at the group's offset, else the
//! subscriber's start) and let go (their acknowledged prefix committed first). Rebalances are handled
//! here, on the polling task, so the commit of revoked partitions happens before librdkafka lets them
//! go.

use std::{collections::HashMap, sync::PoisonError, sync::atomic::Ordering};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::KafkaResult,
    types::RDKafkaRespErr,
};

use super::state::MemberState;
use crate::{
    Error,
    log::{SubscriptionEvent, TopicPartition, kafka::codec},
};

/// A subscription's consumer, with its callbacks.
pub(super) type MemberConsumer = StreamConsumer<MemberContext>;

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At the group's committed offset.
    Committed(i64),
    /// Where the subscriber asked: the group has no offset, or this is a plain reader.
    Resolved(i64),
    /// Unknown, the group's offset could not be read: librdkafka reads it itself, without holding
    /// up the rebalance, and starts at the oldest record if there is none (redelivery, never loss).
    Stored,
}

/// What the group's committed-offset lookup said of a partition.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Committed(i64),
    NoneCommitted,
    Failed,
}

impl MemberState {
    /// Where each newly assigned partition starts. Blocks.
    fn starting_offsets(
        &self,
        consumer: &impl Consumer<MemberContext>,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, Start)> {
        let committed = self
            .group
            .is_some()
            .then(|| self.committed_offsets(consumer, partitions));
        partitions
            .iter()
            .map(|partition| {
                let start = match committed.as_ref().map(|c| c.get(partition)) {
                    Some(Some(Lookup::Committed(offset))) => Start::Committed(*offset),
                    // Starting at `start` here could skip what the group has not read yet (a resumed
                    // MQTT session starts at latest).
                    Some(Some(Lookup::Failed) | None) => Start::Stored,
                    None | Some(Some(Lookup::NoneCommitted)) => self
                        .shared
                        .resolve(partition, self.start)
                        .inspect_err(|error| {
                            tracing::warn!(%error, %partition, "resolving a start position")
                        })
                        .map_or(Start::Stored, Start::Resolved),
                };
                (partition.clone(), start)
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

    /// Takes new partitions on: finds where each starts, assigns them there and tells the
    /// subscriber. Blocks.
    pub(super) fn take_on(
        &self,
        consumer: &impl Consumer<MemberContext>,
        partitions: &[TopicPartition],
    ) {
        let starts = self.starting_offsets(consumer, partitions);
        tracing::debug!(group = ?self.group, ?starts, "partitions assigned");
        let mut list = TopicPartitionList::new();
        for (partition, start) in &starts {
            let offset = match start {
                Start::Committed(offset) | Start::Resolved(offset) => Offset::Offset(*offset),
                Start::Stored => Offset::Stored,
            };
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
        // As the member's other partitions are. Resumed explicitly otherwise, once the member has
        // ever paused: librdkafka keeps an application's pause on a partition through its
        // revocation, so one revoked while the member was paused (and not resumed with the rest,
        // no longer held) would come back paused, and never be fetched. Not before: a resume
        // discards the partition's offset lookup in flight, retried half a second later.
        let steered = if self.paused.load(Ordering::Acquire) {
            consumer.pause(&list)
        } else if self.has_paused.load(Ordering::Acquire) {
            consumer.resume(&list)
        } else {
            Ok(())
        };
        if let Err(error) = steered {
            tracing::warn!(%error, "pausing or resuming newly assigned partitions");
        }
        for (partition, start) in &starts {
            match *start {
                Start::Committed(offset) => {
                    self.window.hold(partition.clone(), offset, Some(offset))
                }
                Start::Resolved(offset) => self.window.hold(partition.clone(), offset, None),
                // Held at the first record fetched (the task's `deliver_buffered`).
                Start::Stored => {}
            }
        }
        let partitions = starts.into_iter().map(|(p, _)| p).collect();
        let _ = self.events.send(SubscriptionEvent::Assigned(partitions));
    }

    /// Lets partitions go: commits their acknowledged prefix first (unless the group already gave
    /// them to someone else, or the member was abandoned), forgets their outstanding records and tells
    /// the subscriber. Blocks.
    fn revoke(&self, consumer: &impl Consumer<MemberContext>, list: &TopicPartitionList) {
        let partitions = codec::partitions_of(list);
        let due = self.window.release(&partitions);
        if self.group.is_some() && !consumer.assignment_lost() {
            let committed = commit(consumer, &due, CommitMode::Sync);
            if let Err(error) = &committed {
                tracing::warn!(%error, "committing revoked partitions");
            }
            *self
                .revoke_commit
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some(committed.map_err(Error::kafka("committing revoked partitions")));
        }
        if let Err(error) = consumer.incremental_unassign(list) {
            tracing::warn!(%error, "releasing partitions");
        }
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(partitions.iter().cloned());
        self.window.wake();
        let _ = self.events.send(SubscriptionEvent::Revoked(partitions));
    }
}

impl MemberState {
    /// The outcome of the last revocation's commit, if one happened since the last look.
    pub(super) fn take_revoke_commit(&self) -> Option<crate::Result<()>> {
        self.revoke_commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Commits `offsets` for the consumer's group; nothing to do when empty.
pub(super) fn commit(
    consumer: &impl Consumer<MemberContext>,
    offsets: &[(TopicPartition, i64)],
    mode: CommitMode,
) -> KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    consumer.commit(&codec::offset_list(offsets)?, mode)
}

/// librdkafka's callbacks for one subscription.
pub(super) struct MemberContext {
    pub(super) state: std::sync::Arc<MemberState>,
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
                self.state.take_on(consumer, &codec::partitions_of(list));
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
            // The next commit (periodic, on revocation or on leaving) sends these offsets again.
            self.state
                .window
                .commit_failed(&codec::partitions_of(offsets));
        }
    }
}
