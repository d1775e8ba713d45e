//! The validation layer: a request a backend would refuse is refused here, before it is queued, with
//! the same error whatever the backend (see [`validate`](crate::log::validate) for the rules).

use async_trait::async_trait;

use super::{Layer, Layered};
use crate::{
    Result,
    config::TopicsConfig,
    log::{
        AppendReceipt, Log, NewRecord, SubscribeOptions, Subscription, TopicDescription, TopicSpec,
        validate,
    },
};

/// Checks every request, and stamps records without a `courier_id`, before the log under it sees
/// them.
#[derive(Debug, Clone)]
pub struct Validation {
    max_record_bytes: usize,
}

/// A log behind the checks.
pub type Validated<L> = Layered<Validation, L>;

impl<L> Validated<L> {
    /// `inner` behind the checks, with `topics.max_record_bytes` as the record size limit.
    pub fn new(inner: L, topics: &TopicsConfig) -> Self {
        Layered::over(
            Validation {
                max_record_bytes: topics.max_record_bytes,
            },
            inner,
        )
    }
}

#[async_trait]
impl Layer for Validation {
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        mut records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        validate::stamp_records(topic, &mut records, self.max_record_bytes)?;
        inner.submit(topic, records).await
    }

    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        validate::subscription(&options)?;
        inner.subscribe(options).await
    }

    async fn create_topic(&self, inner: &dyn Log, spec: TopicSpec) -> Result<TopicDescription> {
        // The backend fills in its defaults from the same settings; checking here keeps a bad spec
        // from reaching the region router.
        validate::topic_name(&spec.name)?;
        inner.create_topic(spec).await
    }

    async fn delete_topic(&self, inner: &dyn Log, topic: &str) -> Result<()> {
        validate::topic_name(topic)?;
        inner.delete_topic(topic).await
    }

    async fn describe_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        validate::topic_name(topic)?;
        inner.describe_topic(topic).await
    }

    async fn open_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        validate::topic_name(topic)?;
        inner.open_topic(topic).await
    }
}
