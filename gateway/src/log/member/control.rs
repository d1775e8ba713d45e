//! The control handle of a subscription, the same for every backend: acks go straight to the window;
//! seeks, commits and closing are requests to the backend's read loop, which alone touches its
//! consumer or store.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::AckWindow;
use crate::{
    Error, Result,
    log::{AckOutcome, Position, SubscriptionControl, TopicPartition},
};

/// A request from the control handle to the backend's read loop; each carries where to answer.
#[derive(Debug)]
pub(crate) enum ControlCommand {
    Seek {
        partition: TopicPartition,
        position: Position,
        reply: oneshot::Sender<Result<()>>,
    },
    Commit {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Commit what was acknowledged (unless abandoned) and leave; the answer is the final commit's.
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// What front ends hold: [`SubscriptionControl`] over a window and a read loop.
pub(crate) struct MemberControl {
    window: Arc<AckWindow>,
    commands: mpsc::UnboundedSender<ControlCommand>,
}

impl std::fmt::Debug for MemberControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberControl")
            .field("outstanding", &self.window.outstanding())
            .finish_non_exhaustive()
    }
}

impl MemberControl {
    pub(crate) fn new(
        window: Arc<AckWindow>,
        commands: mpsc::UnboundedSender<ControlCommand>,
    ) -> Self {
        Self { window, commands }
    }

    /// Sends a request and waits for its answer; `None` when the read loop is gone (closed).
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

    fn ack_all(&self, partition: &TopicPartition, offsets: &[i64]) -> usize {
        self.window.ack_all(partition, offsets)
    }

    fn ack_range(&self, partition: &TopicPartition, first: i64, last: i64) -> usize {
        self.window.ack_range(partition, first, last)
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

    fn outstanding(&self) -> usize {
        self.window.outstanding()
    }

    async fn commit(&self) -> Result<()> {
        self.request(|reply| ControlCommand::Commit { reply })
            .await
            .unwrap_or(Err(Error::ShuttingDown))
    }

    async fn close(&self) -> Result<()> {
        // A read loop that is gone already has closed.
        self.request(|reply| ControlCommand::Close { reply })
            .await
            .unwrap_or(Ok(()))
    }

    async fn abandon(&self) -> Result<()> {
        self.window.abandon();
        self.close().await
    }
}
