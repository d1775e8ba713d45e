//! The log readers behind a connection's subscriptions: for a clean session, a member of the
//! gateway's shared reader of a topic ([`courier_gateway::readers::fanout`]), which passes on only
//! the records its filters match; for a persistent session, a consumer group of its own; for a
//! shared subscription, its shared group. Where each starts, and acknowledging through them.

use std::{sync::Arc, time::Duration};

use courier_gateway::{
    auth::policy::Action,
    log::{
        Events, Log, Position, SubscribeOptions, Subscription as Reader, SubscriptionControl,
        SubscriptionEvent, TopicPartition, TopicSelector, layers::paced_deliveries,
    },
    metrics::Protocol,
    readers::fanout::MemberFilters,
    telemetry::{self, Who},
};
use rumqttd::protocol::SubscribeReasonCode;
use tokio_stream::{StreamExt, StreamMap};

use super::subscriptions::{SourceKey, Subscription, Subscriptions};
use crate::session::admission::Client;
use crate::session::client_log::ClientLog;
use crate::{bridge::Bridge, mapping, store::sessions::SessionRecord};

/// Longest SUBSCRIBE waits for a new plain reader to hold its partitions.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(10);

/// Which log reader a record came from.
pub(crate) type SourceId = u64;

/// The record a delivery acknowledges in the log once the client acknowledges it: its reader, its
/// partition and its offset.
pub(super) type LogAck = (SourceId, TopicPartition, i64);

/// Why a subscription is added: a SUBSCRIBE starts it now; a resumed session carries on where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Adding {
    Subscribe,
    Resume,
}

/// One open reader.
#[derive(Debug)]
struct Source {
    id: SourceId,
    key: SourceKey,
    control: Arc<dyn SubscriptionControl>,
    /// For a gateway's shared reader: the filters it matches for this connection.
    filters: Option<MemberFilters>,
}

/// A reader just opened, not yet among the sources.
#[derive(Debug)]
pub(super) struct Opened {
    reader: Reader,
    filters: Option<MemberFilters>,
    /// The events a plain reader had before it held its partitions, in order.
    early: Vec<SubscriptionEvent>,
}

/// The connection's open readers.
///
/// A connection has a reader or two (one per Kafka topic or share it reads): the readers' table
/// grows one entry at a time and the event streams' map starts with room for one, where a hash
/// map (room for three at its first entry) or a vector's first growth (four) would idle at more
/// than it holds, on every one of 10,000 connections.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    /// Events of every reader, keyed by source.
    events: StreamMap<SourceId, Events>,
    controls: Vec<Source>,
    next: SourceId,
}

impl Sources {
    /// The next event of any reader; `None` at once when none is open. Not an `async fn`, whose
    /// state would be two more words of every idle connection's task.
    pub(crate) fn next(
        &mut self,
    ) -> impl Future<Output = Option<(SourceId, SubscriptionEvent)>> + '_ {
        self.events.next()
    }

    /// Is a reader open for `key`?
    pub(super) fn has(&self, key: &SourceKey) -> bool {
        self.controls.iter().any(|source| source.key == *key)
    }

    /// Adds a reader opened for `key`. Returns its id, under which its events are taken from now
    /// on, and the events it had before (a plain reader's, while SUBACK waited), for the caller to
    /// take as that source's.
    pub(super) fn insert(
        &mut self,
        key: SourceKey,
        opened: Opened,
    ) -> (SourceId, Vec<SubscriptionEvent>) {
        let id = self.next;
        self.next += 1;
        if self.events.is_empty() {
            // StreamMap grows as a vector does: room for four at its first entry.
            self.events = StreamMap::with_capacity(1);
        }
        self.events.insert(id, opened.reader.events);
        self.controls.reserve_exact(1);
        self.controls.push(Source {
            id,
            key,
            control: opened.reader.control,
            filters: opened.filters,
        });
        (id, opened.early)
    }

    fn source(&self, id: SourceId) -> Option<&Source> {
        self.controls.iter().find(|source| source.id == id)
    }

    /// What a source reads, while it is open.
    pub(super) fn key_of(&self, id: SourceId) -> Option<&SourceKey> {
        self.source(id).map(|source| &source.key)
    }

    /// Every open source.
    pub(super) fn ids(&self) -> Vec<SourceId> {
        self.controls.iter().map(|source| source.id).collect()
    }

    /// The open sources that no key in `needed` names.
    pub(super) fn unneeded(&self, needed: &[SourceKey]) -> Vec<SourceId> {
        self.controls
            .iter()
            .filter(|source| !needed.contains(&source.key))
            .map(|source| source.id)
            .collect()
    }

    /// Acknowledges a record to the reader it came from, if that is still open.
    pub(super) fn ack(&self, log_ack: Option<LogAck>) {
        if let Some((source, partition, offset)) = log_ack
            && let Some(source) = self.source(source)
        {
            source.control.ack(&partition, offset);
        }
    }

    /// Closes a reader; a group member commits what the client acknowledged.
    pub(super) async fn close(&mut self, id: SourceId) {
        self.events.remove(&id);
        let Some(at) = self.controls.iter().position(|source| source.id == id) else {
            return;
        };
        let source = self.controls.remove(at);
        if let Err(error) = source.control.close().await {
            tracing::warn!(%error, "closing a reader failed");
        }
    }

    /// Tells each shared reader which filters of this connection read its Kafka topic.
    pub(super) fn refresh_shared_filters(&self, subscriptions: &Subscriptions) {
        for source in &self.controls {
            let (SourceKey::Topic(topic), Some(filters)) = (&source.key, &source.filters) else {
                continue;
            };
            filters.set(subscriptions.filters_reading(topic));
        }
    }
}

/// Opens the reader behind one source of a subscription: the gateway's shared reader of a topic
/// for a clean session, else a member of the session's (or the share's) group, read through `log`
/// (the connection's, behind its authorization layer). A plain reader is waited for until it holds
/// its partitions, so nothing published after SUBACK is missed. A refusal is logged here and
/// answered with its SUBACK code.
pub(super) async fn open(
    bridge: &Bridge,
    log: &mut ClientLog,
    client: &Client,
    session: &SessionRecord,
    subscription: &Subscription,
    key: &SourceKey,
    adding: Adding,
) -> Result<Opened, SubscribeReasonCode> {
    let (topics, group) = match key {
        SourceKey::Topic(topic) => (
            vec![topic.clone()],
            session
                .persistent
                .then(|| mapping::session_group(&session.session, topic)),
        ),
        SourceKey::Share(group) => (subscription.kafka_topics.clone(), Some(group.clone())),
    };
    // A group's partitions without a committed offset start at the time of subscribing, so a
    // persistent session gets what was published while its client was away, even before
    // anything was committed. A plain reader starts at the end, and SUBACK waits until it holds
    // its partitions, so nothing published after SUBACK is missed.
    let start = if group.is_some() {
        Position::Timestamp(subscription.stored().since_ms)
    } else {
        Position::Latest
    };
    if let (SourceKey::Topic(topic), None) = (key, &group) {
        // The gateway's shared readers read the unwrapped log: what the authorization layer
        // would refuse a client's own reader is refused here.
        refuse_protected(bridge, client, topic)?;
    }
    if let (SourceKey::Topic(topic), Some(group), Adding::Subscribe) = (key, &group, adding) {
        pin_start(log.get(bridge, client).as_ref(), group, topic).await;
    }
    let plain = group.is_none();
    let reader = match (key, &group) {
        // Clean-session readers of one Kafka topic are all alike: one per gateway serves them.
        // The hub reads the unwrapped log, so its members' deliveries are traced here.
        (SourceKey::Topic(topic), None) => bridge
            .fanout
            .subscribe(topic, vec![subscription.filter().to_owned()])
            .await
            .map(|member| {
                let filters = member.filters();
                let reader = match &bridge.access.tracing {
                    Some(tracing) => {
                        let who = Who::new(Protocol::Mqtt, Some(client.client_id.clone()));
                        telemetry::traced_deliveries(member.subscription, tracing, &who)
                    }
                    None => member.subscription,
                };
                // Nor do the client's delivery quotas reach the hub: each member is paced on
                // its own (the account is the one the connection's publishes draw from).
                let quota = bridge.access.quota(
                    &client.principal,
                    Some(&client.client_id),
                    None,
                    Protocol::Mqtt,
                );
                let reader = match quota {
                    Some(usage) => {
                        paced_deliveries(reader, &usage, usize::from(client.receive_maximum))
                    }
                    None => reader,
                };
                (Some(filters), reader)
            }),
        _ => {
            let options = SubscribeOptions {
                topics: TopicSelector::Names(topics),
                group: group.clone(),
                start,
                max_in_flight: usize::from(client.receive_maximum),
                client: client.client_id.clone(),
                protocol: "mqtt",
            };
            log.get(bridge, client)
                .subscribe(options)
                .await
                .map(|reader| (None, reader))
        }
    };
    let (filters, mut reader): (Option<MemberFilters>, Reader) = reader.map_err(|error| {
        tracing::warn!(%error, filter = subscription.stored().filter, "subscribe failed");
        match error {
            courier_gateway::Error::UnknownTopic { .. }
            | courier_gateway::Error::InvalidTopicName { .. } => {
                SubscribeReasonCode::TopicFilterInvalid
            }
            courier_gateway::Error::Forbidden { .. } => SubscribeReasonCode::NotAuthorized,
            courier_gateway::Error::TopicCreationLimited { .. } => {
                SubscribeReasonCode::QuotaExceeded
            }
            _ => SubscribeReasonCode::Unspecified,
        }
    })?;
    let early = if plain {
        await_assignment(&mut reader, &subscription.stored().filter).await
    } else {
        Vec::new()
    };
    Ok(Opened {
        reader,
        filters,
        early,
    })
}

/// Refuses a clean session's reader of a Kafka topic that holds the gateway's internal state (a
/// route may name one), unless the client is an admin: as the authorization layer refuses it. The
/// authorizer counts and audits the refusal.
fn refuse_protected(
    bridge: &Bridge,
    client: &Client,
    topic: &str,
) -> Result<(), SubscribeReasonCode> {
    bridge
        .access
        .authorizer
        .protect_topic("mqtt", &client.principal, Action::Consume, topic)
        .map_err(|_| SubscribeReasonCode::NotAuthorized)
}

/// Reads a new plain reader's events until it holds its partitions (at most [`ASSIGNMENT_WAIT`]);
/// returns the other events read meanwhile.
async fn await_assignment(reader: &mut Reader, filter: &str) -> Vec<SubscriptionEvent> {
    let mut early = Vec::new();
    let assigned = tokio::time::timeout(ASSIGNMENT_WAIT, async {
        while let Some(event) = reader.events.recv().await {
            match event {
                SubscriptionEvent::Assigned(_) => return true,
                event => early.push(event),
            }
        }
        false
    })
    .await;
    if !matches!(assigned, Ok(true)) {
        tracing::warn!(filter, "a reader had no partitions in time");
    }
    early
}

/// Makes a persistent session's new reader of `topic` start durably before its SUBACK: the group's
/// offset of every partition is set to the partition's end. Without it the start was only the
/// subscription's time, resolved when the group first held its partitions; a client that left at once
/// left before that, and a resolve by timestamp that came later (on tansu under load) skipped what
/// had been queued meanwhile. If the group cannot be set (a member of it is still leaving), the
/// reader falls back to the subscription's time.
async fn pin_start(log: &dyn Log, group: &str, topic: &str) {
    let pinned = async {
        // Opening rather than describing: a SUBSCRIBE to a topic not made yet creates it, as the
        // subscribe after this would.
        let description = log.open_topic(topic).await?;
        let ends: Vec<(TopicPartition, i64)> = description
            .partitions
            .iter()
            .map(|partition| {
                (
                    TopicPartition::new(topic, partition.partition),
                    partition.high,
                )
            })
            .collect();
        log.commit(group, &ends).await
    };
    match pinned.await {
        Ok(()) | Err(courier_gateway::Error::UnknownTopic { .. }) => {}
        Err(error) => {
            tracing::warn!(%error, group, "could not pin a new subscription's start; it starts at the subscription's time")
        }
    }
}
