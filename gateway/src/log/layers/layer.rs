//! What a layer is: a [`Layer`] says what it changes of the calls through it, and [`Layered`] puts it
//! in front of a log, making the two one [`Log`]. Every call a layer leaves alone goes to the log
//! under it unchanged, written here once, so a layer holds only its own behaviour and a method the
//! `Log` gains is passed through by every layer at once (a hand-written forwarder that forgot it would
//! fall back to the trait's default and skip the backend's own answer).

use std::fmt;

use async_trait::async_trait;

use crate::{
    Result,
    log::{
        AppendReceipt, FetchLimits, Fetched, GroupDescription, GroupMember, Log, NewRecord,
        Position, SubscribeOptions, Subscription, TopicDescription, TopicPartition, TopicSpec,
        TopicSummary,
    },
};

/// Behaviour in front of a log: each method gets the call and the log under the layer (`inner`),
/// and by default passes the call on as it is.
#[async_trait]
pub trait Layer: Send + Sync + fmt::Debug + 'static {
    /// See [`Log::submit`].
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        inner.submit(topic, records).await
    }

    /// See [`Log::subscribe`].
    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        inner.subscribe(options).await
    }

    /// See [`Log::create_topic`].
    async fn create_topic(&self, inner: &dyn Log, spec: TopicSpec) -> Result<TopicDescription> {
        inner.create_topic(spec).await
    }

    /// See [`Log::delete_topic`].
    async fn delete_topic(&self, inner: &dyn Log, topic: &str) -> Result<()> {
        inner.delete_topic(topic).await
    }

    /// See [`Log::describe_topic`].
    async fn describe_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        inner.describe_topic(topic).await
    }

    /// See [`Log::copies_of`].
    async fn copies_of(&self, inner: &dyn Log, topic: &str) -> Result<Vec<String>> {
        inner.copies_of(topic).await
    }

    /// See [`Log::open_topic`].
    async fn open_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        inner.open_topic(topic).await
    }

    /// See [`Log::fetch`].
    async fn fetch(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        inner.fetch(partition, offset, limits).await
    }

    /// See [`Log::resolve`].
    async fn resolve(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        position: Position,
    ) -> Result<i64> {
        inner.resolve(partition, position).await
    }

    /// See [`Log::commit`].
    async fn commit(
        &self,
        inner: &dyn Log,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        inner.commit(group, offsets).await
    }

    /// See [`Log::list_topics`].
    async fn list_topics(&self, inner: &dyn Log) -> Result<Vec<TopicSummary>> {
        inner.list_topics().await
    }

    /// See [`Log::list_groups`].
    async fn list_groups(&self, inner: &dyn Log) -> Result<Vec<String>> {
        inner.list_groups().await
    }

    /// See [`Log::describe_group`].
    async fn describe_group(&self, inner: &dyn Log, group: &str) -> Result<GroupDescription> {
        inner.describe_group(group).await
    }

    /// See [`Log::group_members`].
    async fn group_members(&self, inner: &dyn Log, group: &str) -> Result<Vec<GroupMember>> {
        inner.group_members(group).await
    }
}

/// A layer in front of a log: one [`Log`].
#[derive(Debug, Clone)]
pub struct Layered<Y, L> {
    layer: Y,
    inner: L,
}

impl<Y, L> Layered<Y, L> {
    /// `layer` in front of `inner`.
    pub fn over(layer: Y, inner: L) -> Self {
        Self { layer, inner }
    }

    /// The same, its layer changed by `change`.
    pub fn map_layer(self, change: impl FnOnce(Y) -> Y) -> Self {
        Self {
            layer: change(self.layer),
            inner: self.inner,
        }
    }

    /// The log under the layer.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// The layer.
    pub fn layer(&self) -> &Y {
        &self.layer
    }
}

/// Every call but `close` goes through [`Layer`], whose defaults pass it on.
#[async_trait]
impl<Y: Layer, L: Log> Log for Layered<Y, L> {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        self.layer.submit(&self.inner, topic, records).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.layer.subscribe(&self.inner, options).await
    }

    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        self.layer
            .fetch(&self.inner, partition, offset, limits)
            .await
    }

    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        self.layer.resolve(&self.inner, partition, position).await
    }

    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.layer.commit(&self.inner, group, offsets).await
    }

    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        self.layer.create_topic(&self.inner, spec).await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.layer.delete_topic(&self.inner, topic).await
    }

    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.layer.list_topics(&self.inner).await
    }

    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.layer.describe_topic(&self.inner, topic).await
    }

    async fn copies_of(&self, topic: &str) -> Result<Vec<String>> {
        self.layer.copies_of(&self.inner, topic).await
    }

    async fn open_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.layer.open_topic(&self.inner, topic).await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.layer.list_groups(&self.inner).await
    }

    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.layer.describe_group(&self.inner, group).await
    }

    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        self.layer.group_members(&self.inner, group).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
