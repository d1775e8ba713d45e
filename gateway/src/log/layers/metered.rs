//! The metrics layer: what a front end's clients produce, counted under the front end's protocol
//! ([`metrics`](crate::metrics)): records and bytes in once the log acknowledged them, the produce
//! latency from the submit to the acknowledgement, and a refusal by its kind.
//!
//! Each front end wraps the shared stack in its own `Metered` for its clients' requests, and uses
//! the unwrapped log for the gateway's own records (MQTT sessions, retained messages and QoS 2
//! exchanges, AMQP dead letters), which are not messages in. Outermost, so a refusal by any layer
//! counts, and the latency includes everything the request waited for.
//!
//! What goes out is counted by the front ends: only they know which records reached a client (an
//! MQTT connection acknowledges at once a record no filter of its wants) and which the client
//! acknowledged.

use async_trait::async_trait;

use crate::{
    Result,
    log::{
        AppendReceipt, FetchLimits, Fetched, GroupDescription, GroupMember, Log, NewRecord,
        Position, SubscribeOptions, Subscription, TopicDescription, TopicPartition, TopicSpec,
        TopicSummary,
    },
    metrics::{ProduceTimer, Protocol},
};

/// Counts produces through `inner` as `protocol`'s.
#[derive(Debug, Clone)]
pub struct Metered<L> {
    inner: L,
    protocol: Protocol,
}

impl<L> Metered<L> {
    /// `inner`, with what goes through it counted as `protocol`'s clients'.
    pub fn new(inner: L, protocol: Protocol) -> Self {
        Self { inner, protocol }
    }
}

#[async_trait]
impl<L: Log> Log for Metered<L> {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        let timer = ProduceTimer::start(self.protocol, &records);
        match self.inner.submit(topic, records).await {
            Ok(receipt) => Ok(Box::pin(async move {
                let outcome = receipt.await;
                timer.finish(&outcome);
                outcome
            })),
            Err(error) => {
                timer.failed(&error);
                Err(error)
            }
        }
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.inner.subscribe(options).await
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

    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        self.inner.group_members(group).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
