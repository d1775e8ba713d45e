//! The topic policy layer: `topics.auto_create`. A produce, a subscription or an `open_topic` (an
//! AMQP link attaching) naming a topic that does not exist creates it with the defaults when the
//! policy allows, and fails with `UnknownTopic` when it does not; backends only ever answer
//! `UnknownTopic`. Each creation is taken from the caller's share
//! ([`TopicCreations`], `topics.auto_create_per_minute`).

use std::{
    collections::HashSet,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use async_trait::async_trait;

use super::{Layer, Layered};
use crate::{
    Error, Result,
    limits::TopicCreations,
    log::{
        AppendReceipt, Log, NewRecord, SubscribeOptions, Subscription, TopicDescription,
        TopicSelector, TopicSpec,
    },
    regions::RegionalLog,
};

/// Creates missing topics on first use when `auto_create` is on.
#[derive(Debug, Clone)]
pub struct TopicRule {
    auto_create: bool,
    /// Topics a produce went to: their records go to the log without a copy kept for a retry.
    /// Only ever a cache: a topic deleted by someone else fails its next produce with
    /// `UnknownTopic` (as a Kafka producer's would) and leaves the set, so the one after creates it.
    known: Arc<RwLock<HashSet<String>>>,
    /// What each caller may still create; shared by the policies of every region.
    creations: Arc<TopicCreations>,
}

/// A log under the topic policy.
pub type TopicPolicy<L> = Layered<TopicRule, L>;

impl<L> TopicPolicy<L> {
    /// `inner` under the policy, its creations taken from `creations`.
    pub fn new(inner: L, auto_create: bool, creations: Arc<TopicCreations>) -> Self {
        Layered::over(TopicRule::new(auto_create, creations), inner)
    }
}

impl TopicRule {
    fn new(auto_create: bool, creations: Arc<TopicCreations>) -> Self {
        Self {
            auto_create,
            known: Arc::default(),
            creations,
        }
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    }

    fn remember(&self, topic: &str, known: bool) {
        let mut set = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if known {
            set.insert(topic.to_owned());
        } else {
            set.remove(topic);
        }
    }

    /// Creates `topic` with the defaults, or finds it made meanwhile (by another replica or client);
    /// the caller saw it missing. Refused with `UnknownTopic` when the policy is off.
    async fn create_missing(&self, inner: &dyn Log, topic: &str) -> Result<()> {
        if !self.auto_create {
            return Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            });
        }
        let booking = self.creations.may_create()?;
        match inner.create_topic(TopicSpec::named(topic)).await {
            Ok(_) => {
                self.creations.created(booking);
                Ok(())
            }
            Err(Error::TopicExists { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// The topic a backend said is missing, if that is what `result` says.
fn missing<T>(result: &Result<T>) -> Option<&str> {
    match result {
        Err(Error::UnknownTopic { topic }) => Some(topic),
        _ => None,
    }
}

#[async_trait]
impl Layer for TopicRule {
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        if self.is_known(topic) {
            let result = inner.submit(topic, records).await;
            if missing(&result).is_some() {
                self.remember(topic, false);
            }
            return result;
        }
        // First produce to this topic here: keep the records for the retry after creating it.
        let first = inner.submit(topic, records.clone()).await;
        let result = match missing(&first) {
            Some(_) => {
                self.create_missing(inner, topic).await?;
                inner.submit(topic, records).await
            }
            None => first,
        };
        if result.is_ok() {
            self.remember(topic, true);
        }
        result
    }

    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        // Each named topic can be missing once; patterns match what exists.
        let names = match &options.topics {
            TopicSelector::Names(names) => names.len(),
            TopicSelector::Pattern(_) | TopicSelector::Restricted { .. } => 0,
        };
        let mut created = Vec::new();
        loop {
            let result = inner.subscribe(options.clone()).await;
            match missing(&result) {
                Some(topic) if created.len() < names && !created.iter().any(|t| t == topic) => {
                    let topic = topic.to_owned();
                    self.create_missing(inner, &topic).await?;
                    created.push(topic);
                }
                _ => return result,
            }
        }
    }

    async fn delete_topic(&self, inner: &dyn Log, topic: &str) -> Result<()> {
        self.remember(topic, false);
        inner.delete_topic(topic).await
    }

    async fn open_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        let described = inner.describe_topic(topic).await;
        if missing(&described).is_none() {
            return described;
        }
        self.create_missing(inner, topic).await?;
        inner.describe_topic(topic).await
    }
}

/// A region's log under the policy is still a region: the router probes and rebuilds through it.
#[async_trait]
impl<L: RegionalLog + Clone> RegionalLog for TopicPolicy<L> {
    async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration> {
        self.inner().probe(canary, timeout).await
    }

    async fn refuses_connections(&self, timeout: Duration) -> bool {
        self.inner().refuses_connections(timeout).await
    }

    fn forget_cached_metadata(&self) {
        self.layer()
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.inner().forget_cached_metadata();
    }

    fn reopen(&self) -> Result<Option<Arc<dyn RegionalLog>>> {
        let Some(fresh) = self.inner().reopen()? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(TopicPolicy::new(
            fresh,
            self.layer().auto_create,
            self.layer().creations.clone(),
        ))))
    }
}
