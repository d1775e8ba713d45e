//! The group-protocol rule: the members of one consumer group all subscribe through one protocol
//! (gRPC, MQTT or AMQP). Each protocol acknowledges, filters and commits in its own way (an MQTT
//! session group skips records no filter of the session matches; an AMQP receiver rejects to a
//! dead-letter topic), so a group mixing them would hand one member's partitions to another that
//! reads them differently. A subscriber that would mix them is refused with
//! [`Error::GroupProtocolConflict`].
//!
//! Two places know a group's members: this process, which sees a subscriber the moment it asks (the
//! broker lists a member only once it has joined), and the log, which knows the members on other
//! replicas ([`Log::group_members`]). The local claim is taken before the log is asked and held for
//! the subscription's life, so two subscribers of different protocols racing for one new group on
//! this replica cannot both get in.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use async_trait::async_trait;

use super::{Layer, Layered};
use crate::{
    Error, Result,
    log::{
        AckOutcome, Log, Position, SubscribeOptions, Subscription, SubscriptionControl,
        TopicPartition,
    },
};

/// Refuses a group subscriber whose protocol differs from the group's members'.
#[derive(Debug, Clone, Default)]
pub struct GroupRule {
    local: Arc<LocalGroups>,
}

/// A log under the group-protocol rule.
pub type GroupProtocols<L> = Layered<GroupRule, L>;

impl<L> GroupProtocols<L> {
    /// `inner` under the rule.
    pub fn new(inner: L) -> Self {
        Layered::over(GroupRule::default(), inner)
    }
}

/// This process's live group subscribers: per group, their protocol and how many there are.
#[derive(Debug, Default)]
struct LocalGroups {
    groups: Mutex<HashMap<String, (&'static str, usize)>>,
}

impl LocalGroups {
    /// A place in `group` for a `protocol` subscriber, or the protocol of the group's live
    /// subscribers here when it is another.
    fn claim(self: &Arc<Self>, group: &str, protocol: &'static str) -> Result<Claim, &'static str> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let (held_by, count) = groups.entry(group.to_owned()).or_insert((protocol, 0));
        if *held_by != protocol {
            return Err(held_by);
        }
        *count += 1;
        Ok(Claim {
            groups: self.clone(),
            group: group.to_owned(),
        })
    }

    fn release(&self, group: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, count)) = groups.get_mut(group) {
            *count -= 1;
            if *count == 0 {
                groups.remove(group);
            }
        }
    }
}

/// One subscriber's place in its group's local entry, given back when dropped.
#[derive(Debug)]
struct Claim {
    groups: Arc<LocalGroups>,
    group: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.groups.release(&self.group);
    }
}

fn conflict(group: &str, existing: &str, requested: &str) -> Error {
    Error::GroupProtocolConflict {
        group: group.to_owned(),
        existing: existing.to_owned(),
        requested: requested.to_owned(),
    }
}

/// A group subscription's control, holding its claim until the subscriber leaves: closed,
/// abandoned, or dropped (with every clone of the handle).
#[derive(Debug)]
struct Claimed {
    inner: Arc<dyn SubscriptionControl>,
    claim: Mutex<Option<Claim>>,
}

impl Claimed {
    fn release(&self) {
        self.claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[async_trait]
impl SubscriptionControl for Claimed {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        self.inner.ack(partition, offset)
    }

    fn ack_all(&self, partition: &TopicPartition, offsets: &[i64]) -> usize {
        self.inner.ack_all(partition, offsets)
    }

    fn ack_range(&self, partition: &TopicPartition, first: i64, last: i64) -> usize {
        self.inner.ack_range(partition, first, last)
    }

    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        self.inner.seek(partition, position).await
    }

    fn outstanding(&self) -> usize {
        self.inner.outstanding()
    }

    async fn commit(&self) -> Result<()> {
        self.inner.commit().await
    }

    async fn close(&self) -> Result<()> {
        let closed = self.inner.close().await;
        self.release();
        closed
    }

    async fn abandon(&self) -> Result<()> {
        let abandoned = self.inner.abandon().await;
        self.release();
        abandoned
    }
}

#[async_trait]
impl Layer for GroupRule {
    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        let Some(group) = options.group.clone() else {
            return inner.subscribe(options).await;
        };
        let requested = options.protocol;
        let claim = self
            .local
            .claim(&group, requested)
            .map_err(|existing| conflict(&group, existing, requested))?;
        match inner.group_members(&group).await {
            Ok(members) => {
                if let Some(other) = members.iter().find(|member| member.protocol != requested) {
                    return Err(conflict(&group, &other.protocol, requested));
                }
            }
            // Such a broker (librdkafka's mock cluster, some Kafka-compatible services) cannot show
            // other replicas' members: only this replica's were checked.
            Err(error) if error.is_unsupported_by_broker() => {
                tracing::warn!(%group, "the broker cannot describe groups; the group's protocol is checked among this gateway's subscribers only");
            }
            Err(error) => return Err(error),
        }
        let subscription = inner.subscribe(options).await?;
        Ok(Subscription {
            events: subscription.events,
            control: Arc::new(Claimed {
                inner: subscription.control,
                claim: Mutex::new(Some(claim)),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_held_by_one_protocol_while_it_has_local_subscribers() {
        let local = Arc::new(LocalGroups::default());
        let first = local.claim("g", "grpc");
        let second = local.claim("g", "grpc");
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(local.claim("g", "mqtt").err(), Some("grpc"));
        assert!(local.claim("other", "mqtt").is_ok(), "groups are apart");
        drop(first);
        assert_eq!(local.claim("g", "mqtt").err(), Some("grpc"), "one left");
        drop(second);
        assert!(local.claim("g", "mqtt").is_ok(), "the last one left");
    }
}
