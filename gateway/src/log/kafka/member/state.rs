//! What one subscription's consumer callbacks, its task and its control handle share.

use std::sync::{Arc, Mutex, atomic::AtomicBool};

use crate::{
    Result,
    log::{
        Position, TopicPartition, events::EventSender, kafka::shared::Shared, member::AckWindow,
    },
};

/// State shared by the consumer's callbacks, the member task and the control handle.
pub(super) struct MemberState {
    pub(super) shared: Arc<Shared>,
    pub(super) group: Option<String>,
    pub(super) start: Position,
    pub(super) window: Arc<AckWindow>,
    /// Partitions revoked inside a poll, for the task to purge from its buffer.
    pub(super) revoked: Mutex<Vec<TopicPartition>>,
    /// The last revocation's commit outcome, for the answer to closing (see `leave.rs`).
    pub(super) revoke_commit: Mutex<Option<Result<()>>>,
    /// Whether the task paused the assigned partitions (its buffer stayed full).
    pub(super) paused: AtomicBool,
    /// Whether it ever did: from then on newly assigned partitions are resumed explicitly (see
    /// `rebalance.rs`).
    pub(super) has_paused: AtomicBool,
    /// Set once the group's first assignment reached this member (librdkafka's cooperative protocol
    /// serves one after every completed join, even when it adds nothing): until then the member is
    /// between joining and syncing, the one moment it must not leave (see `leave.rs`).
    pub(super) joined: AtomicBool,
    /// The subscriber's queue: the task queues records only within its room.
    pub(super) events: EventSender,
}
