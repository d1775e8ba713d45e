//! A log whose consumer groups join late, as Kafka's do: a group subscription is answered at once,
//! but the member joins the inner log (where its start is decided) only once joins are let through,
//! and never if the subscriber left first. So a test can have an MQTT client subscribe and leave
//! before its group ever held a partition, on the embedded log, deterministically.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use courier_gateway::{
    Result,
    log::{
        AckOutcome, AppendReceipt, FetchLimits, Fetched, GroupDescription, Log, NewRecord,
        Position, SubscribeOptions, Subscription, SubscriptionControl, TopicDescription,
        TopicPartition, TopicSpec, TopicSummary,
    },
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Holds group joins back while [`SlowJoins::hold`] is on.
#[derive(Debug)]
pub(crate) struct SlowJoins {
    inner: Arc<dyn Log>,
    held: watch::Sender<bool>,
}

impl SlowJoins {
    pub(crate) fn new(inner: Arc<dyn Log>) -> Self {
        Self {
            inner,
            held: watch::Sender::new(false),
        }
    }

    /// Group members subscribed from now on wait to join until [`SlowJoins::release`].
    pub(crate) fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets every waiting member join (unless it left meanwhile).
    pub(crate) fn release(&self) {
        self.held.send_replace(false);
    }
}

/// A member's control before and after it joined: before, nothing is held, so acks are ignored and a
/// close only cancels the join.
#[derive(Debug, Default)]
struct LateControl {
    joined: Mutex<Option<Arc<dyn SubscriptionControl>>>,
    left: CancellationToken,
}

impl LateControl {
    fn joined(&self) -> Option<Arc<dyn SubscriptionControl>> {
        self.joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl SubscriptionControl for LateControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        self.joined().map_or(AckOutcome::Ignored, |control| {
            control.ack(partition, offset)
        })
    }
    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        match self.joined() {
            Some(control) => control.seek(partition, position).await,
            None => Ok(()),
        }
    }
    fn outstanding(&self) -> usize {
        self.joined().map_or(0, |control| control.outstanding())
    }
    async fn commit(&self) -> Result<()> {
        match self.joined() {
            Some(control) => control.commit().await,
            None => Ok(()),
        }
    }
    async fn close(&self) -> Result<()> {
        self.left.cancel();
        match self.joined() {
            Some(control) => control.close().await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Log for SlowJoins {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        self.inner.submit(topic, records).await
    }
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        if options.group.is_none() {
            return self.inner.subscribe(options).await;
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let control = Arc::new(LateControl::default());
        let (inner, late, mut held) = (self.inner.clone(), control.clone(), self.held.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = held.wait_for(|held| !*held) => {}
                () = late.left.cancelled() => return,
            }
            let Ok(mut subscription) = inner.subscribe(options).await else {
                return;
            };
            *late.joined.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(subscription.control.clone());
            if late.left.is_cancelled() {
                let _ = subscription.control.close().await;
                return;
            }
            loop {
                tokio::select! {
                    event = subscription.next_event() => {
                        let Some(event) = event else { break };
                        if events_tx.send(event).is_err() {
                            break;
                        }
                    }
                    () = events_tx.closed() => break,
                }
            }
            let _ = subscription.control.close().await;
        });
        Ok(Subscription { events, control })
    }
    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        self.inner.fetch(partition, offset, limits).await
    }
    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        self.inner.resolve(partition, position).await
    }
    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.inner.commit(group, offsets).await
    }
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        self.inner.create_topic(spec).await
    }
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.inner.delete_topic(topic).await
    }
    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.inner.list_topics().await
    }
    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.inner.describe_topic(topic).await
    }
    async fn open_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.inner.open_topic(topic).await
    }
    async fn list_groups(&self) -> Result<Vec<String>> {
        self.inner.list_groups().await
    }
    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.inner.describe_group(group).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
