//! The validation layer: a request a backend would refuse is refused here, before it is queued, with
//! the same error whatever the backend (see [`validate`](crate::log::validate) for the rules).

use async_trait::async_trait;

use crate::{
    Result,
    config::TopicsConfig,
    log::{
        AppendReceipt, FetchLimits, Fetched, GroupDescription, GroupMember, Log, NewRecord,
        Position, SubscribeOptions, Subscription, TopicDescription, TopicPartition, TopicSpec,
        TopicSummary, validate,
    },
};

/// Checks every request, and stamps records without a `courier_id`, before `inner` sees them.
#[derive(Debug, Clone)]
pub struct Validated<L> {
    inner: L,
    max_record_bytes: usize,
}

impl<L> Validated<L> {
    /// `inner` behind the checks, with `topics.max_record_bytes` as the record size limit.
    pub fn new(inner: L, topics: &TopicsConfig) -> Self {
        Self {
            inner,
            max_record_bytes: topics.max_record_bytes,
        }
    }

    /// The log behind the checks.
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

#[async_trait]
impl<L: Log> Log for Validated<L> {
    async fn submit(&self, topic: &str, mut records: Vec<NewRecord>) -> Result<AppendReceipt> {
        validate::stamp_records(topic, &mut records, self.max_record_bytes)?;
        self.inner.submit(topic, records).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        validate::subscription(&options)?;
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
        // The backend fills in its defaults from the same settings; checking here keeps a bad spec
        // from reaching the region router.
        validate::topic_name(&spec.name)?;
        self.inner.create_topic(spec).await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        validate::topic_name(topic)?;
        self.inner.delete_topic(topic).await
    }

    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.inner.list_topics().await
    }

    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        validate::topic_name(topic)?;
        self.inner.describe_topic(topic).await
    }

    async fn open_topic(&self, topic: &str) -> Result<TopicDescription> {
        validate::topic_name(topic)?;
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
