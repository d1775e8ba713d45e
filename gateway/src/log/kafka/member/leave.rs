//! How a member leaves: it commits what was acknowledged, lets a join in progress finish, serves its
//! final revocation while still polling, and only then closes its consumer (which sends LeaveGroup),
//! on a thread of its own. Every step is bounded, so a stuck broker or client cannot hang a drain.

use std::{sync::atomic::Ordering, time::Duration};

use rdkafka::consumer::{CommitMode, Consumer};

use super::task::MemberTask;
use crate::{Result, log::TopicSelector};

/// How long each poll waits while a member finishes joining or serves its final revocation.
const RELEASE_POLL: Duration = Duration::from_millis(50);

impl MemberTask {
    /// Commits what was acknowledged and leaves the group; the event stream ends with this task.
    /// Returns whether what was acknowledged is committed: the outcome of the last commit, which is
    /// the final revocation's when one came after the commit here (it retries what failed).
    pub(super) async fn leave(mut self) -> Result<()> {
        let mut committed = self.commit(CommitMode::Sync).await;
        if let Err(error) = &committed {
            tracing::warn!(%error, "committing on leave");
        }
        if self.state.group.is_some() {
            // Only the revocation that leaving causes counts; forget any before it.
            let _ = self.state.take_revoke_commit();
            self.await_join().await;
            self.release_assignment().await;
            if let Some(revoked) = self.state.take_revoke_commit() {
                committed = revoked;
            }
        }
        // Closing the consumer (on drop) sends LeaveGroup, so partitions move at once rather than
        // after the session timeout. It blocks, and librdkafka can block it for good
        // (confluentinc/librdkafka#4884), so it runs on a thread of its own that nothing waits for
        // past the deadline: a stuck close costs one parked thread, never a hung drain or shutdown
        // (tokio's blocking pool would hold the runtime's shutdown on it).
        let consumer = self.consumer;
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
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
        committed
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
            || self.state.window.is_abandoned()
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
            tokio::select! {
                // A drain that starts meanwhile does not wait for the join.
                () = self.state.shared.closed.cancelled() => return,
                _ = tokio::time::timeout(RELEASE_POLL, self.consumer.recv()) => {}
            }
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
