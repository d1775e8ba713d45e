//! Messages to the client: subscriptions, the log readers behind them, and acknowledgement.
//!
//! Each Kafka topic a subscription needs is one source per connection: for a clean session, a member
//! of the gateway's shared reader of the topic ([`courier_gateway::readers::fanout`]), which passes on only the records
//! its filters match; for a persistent session, a consumer group of its own; a shared subscription
//! reads through its shared group. Records are matched against the client's filters here. A record is
//! acknowledged to the log when the client has acknowledged it (PUBACK, or PUBREC for QoS 2), at once
//! when it is sent at QoS 0, and at once when no filter wants it. At most the client's receive maximum
//! of messages are unacknowledged at any time; further records wait in the sources, whose windows
//! bound them. A persistent session's QoS 2 deliveries are recorded at PUBREC ([`crate::store::exchanges`]):
//! the entry is queued, and its PUBREL (and the record's acknowledgement to the log) go out when it is
//! durable, while the connection goes on with other packets. Entries are written in the order the
//! client's packets came, so a packet id's deletion at PUBCOMP lands before its next use's entry.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use courier_gateway::{
    log::{
        Log, Position, Record, SubscribeOptions, SubscriptionControl, SubscriptionEvent,
        TopicPartition, TopicSelector, now_ms,
    },
    metrics::{self, Protocol},
    readers::fanout::MemberFilters,
};
use futures_util::{StreamExt, stream::FuturesOrdered};
use rumqttd::protocol::{
    Filter, Packet, PubRecReason, PubRel, PubRelReason, QoS, RetainForwardRule, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{StreamMap, wrappers::UnboundedReceiverStream};

use super::admission::Client;
use crate::{
    bridge::Bridge,
    codec::{Version, outgoing_publish},
    connection::Connection,
    error::{Error, Result},
    mapping::{self, Message},
    store::{
        exchanges::{Direction, RecordAt},
        sessions::{SessionRecord, StoredSubscription},
    },
};

/// Most packets written between two flushes, so a busy subscription does not starve the connection.
const BURST: usize = 64;

/// Longest SUBSCRIBE waits for a new plain reader to hold its partitions.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(10);

/// Which log reader a record came from.
type SourceId = u64;

/// Why a subscription is added: a SUBSCRIBE starts it now; a resumed session carries on where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adding {
    Subscribe,
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SourceKey {
    /// The connection's reader of one Kafka topic (non-shared subscriptions).
    Topic(String),
    /// A shared subscription's group.
    Share(String),
}

#[derive(Debug)]
struct Source {
    key: SourceKey,
    control: Arc<dyn SubscriptionControl>,
    /// For a gateway's shared reader: the filters it matches for this connection.
    filters: Option<MemberFilters>,
}

#[derive(Debug, Clone)]
struct Subscription {
    stored: StoredSubscription,
    /// The filter without `$share/<group>/`.
    filter: String,
    /// The shared group's name, for `$share/...` filters.
    share_group: Option<String>,
    qos: QoS,
    kafka_topics: Vec<String>,
}

#[derive(Debug)]
enum Pending {
    /// A record from a log reader.
    Record(SourceId, Record),
    /// A retained message for a new subscription: nothing to acknowledge in the log.
    Retained(Message, Option<usize>),
}

#[derive(Debug)]
struct Inflight {
    /// The record to acknowledge in the log when the client acknowledges; `None` once acknowledged
    /// (a QoS 2 message between PUBREC and PUBCOMP keeps its packet id) or for a retained message.
    log_ack: Option<(SourceId, TopicPartition, i64)>,
    /// A persistent session's PUBREC is being recorded; its PUBREL waits for that.
    recording: bool,
}

/// A persistent session's QoS 2 entry write that has finished.
#[derive(Debug)]
pub(crate) enum Recorded {
    /// The entry written at PUBREC: the PUBREL may go and the record be acknowledged to the log.
    Delivered {
        pkid: u16,
        outcome: courier_gateway::Result<()>,
    },
    /// The entry's deletion at PUBCOMP.
    Finished {
        pkid: u16,
        outcome: courier_gateway::Result<()>,
    },
}

type Recording = Pin<Box<dyn Future<Output = Recorded> + Send>>;

/// QoS 2 entry writes under way, finishing in the order they were queued.
#[derive(Default)]
pub(crate) struct Recordings(FuturesOrdered<Recording>);

impl Recordings {
    /// The oldest write, once it has finished; `None` at once when there is none.
    pub(crate) async fn next(&mut self) -> Option<Recorded> {
        self.0.next().await
    }

    fn push(&mut self, recording: impl Future<Output = Recorded> + Send + 'static) {
        self.0.push_back(Box::pin(recording));
    }
}

impl fmt::Debug for Recordings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Recordings").field(&self.0.len()).finish()
    }
}

/// The client's subscriptions and what is in flight to it.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    subscriptions: BTreeMap<String, Subscription>,
    /// Events of every log reader, keyed by source.
    pub(crate) sources: StreamMap<SourceId, UnboundedReceiverStream<SubscriptionEvent>>,
    controls: HashMap<SourceId, Source>,
    next_source: SourceId,
    queue: VecDeque<Pending>,
    inflight: HashMap<u16, Inflight>,
    next_pkid: u16,
    /// The session, when it is persistent: its QoS 2 exchanges are recorded in the log.
    durable_session: Option<String>,
    /// Its entry writes under way.
    pub(crate) recordings: Recordings,
    /// PUBRELs a resumed session still owes the client, sent first.
    owed_releases: Vec<u16>,
    /// Records a resumed session delivered and saw PUBREC for before a crash, which its groups may
    /// read again: acknowledged, not delivered again.
    already_delivered: HashSet<RecordAt>,
    /// `mqtt.courier_id_property`: deliveries carry their record's `courier-id`.
    courier_id_property: bool,
}

impl Outbound {
    /// Starts with the QoS 2 packet ids a resumed session had delivered and seen PUBREC for, whose
    /// PUBREL is sent again (MQTT requires it after a reconnect; the client may deliver only then).
    pub(crate) fn new(
        durable_session: Option<String>,
        awaiting_completion: Vec<(u16, Option<RecordAt>)>,
        courier_id_property: bool,
    ) -> Self {
        let mut outbound = Self {
            durable_session,
            courier_id_property,
            ..Self::default()
        };
        for (pkid, record) in awaiting_completion {
            outbound.inflight.insert(
                pkid,
                Inflight {
                    log_ack: None,
                    recording: false,
                },
            );
            outbound.owed_releases.push(pkid);
            outbound.already_delivered.extend(record);
        }
        outbound
    }

    /// The PUBRELs owed from before the reconnect, once.
    pub(crate) fn take_owed_releases(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.owed_releases)
            .into_iter()
            .map(|pkid| pubrel(pkid, PubRelReason::Success))
            .collect()
    }

    /// Should more reader events be taken? Not while records wait for in-flight room.
    pub(crate) fn wants_events(&self, client: &Client) -> bool {
        self.queue.len() < usize::from(client.receive_maximum)
    }

    /// Restores a resumed session's subscriptions (no retained messages: the session saw them). One
    /// that cannot be restored is logged and skipped, as a refused SUBSCRIBE filter would be.
    pub(crate) async fn resume(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        session: &SessionRecord,
    ) {
        for stored in &session.subscriptions {
            if let Err(code) = self
                .add(bridge, client, session, stored.clone(), Adding::Resume)
                .await
            {
                tracing::warn!(
                    filter = stored.filter,
                    ?code,
                    "could not resume a subscription"
                );
            }
        }
    }

    /// SUBSCRIBE: adds each filter, stores a persistent session's new subscriptions, then answers.
    pub(crate) async fn subscribe(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        session: &mut SessionRecord,
        pkid: u16,
        filters: Vec<Filter>,
        identifier: Option<usize>,
    ) -> Result<Packet> {
        let now = now_ms();
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            if client.version == Version::V5 && filter.nolocal && filter.path.starts_with("$share/")
            {
                return Err(Error::Protocol(
                    "no-local may not be set on a shared subscription".into(),
                ));
            }
            let existed = self.subscriptions.contains_key(&filter.path);
            let stored = StoredSubscription {
                filter: filter.path.clone(),
                qos: filter.qos as u8,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                identifier,
                since_ms: self
                    .subscriptions
                    .get(&filter.path)
                    .map_or(now, |existing| existing.stored.since_ms),
            };
            match self
                .add(bridge, client, session, stored, Adding::Subscribe)
                .await
            {
                Ok(subscription) => {
                    let send_retained = match filter.retain_forward_rule {
                        RetainForwardRule::OnEverySubscribe => true,
                        RetainForwardRule::OnNewSubscribe => !existed,
                        RetainForwardRule::Never => false,
                    };
                    if send_retained && subscription.share_group.is_none() {
                        for stored in bridge.retained.matching(&subscription.filter, now).await? {
                            let mut message = stored.message;
                            message.qos = mapping::min_qos(message.qos, subscription.qos);
                            message.retain = true;
                            self.queue.push_back(Pending::Retained(
                                message,
                                subscription.stored.identifier,
                            ));
                        }
                    }
                    codes.push(SubscribeReasonCode::Success(subscription.qos));
                }
                Err(code) => codes.push(code),
            }
        }
        if session.persistent {
            session.subscriptions = self.stored();
            bridge.sessions.save(&client.client_id, session).await?;
        }
        let codes = codes
            .into_iter()
            .map(|code| match (client.version, code) {
                (Version::V4, SubscribeReasonCode::Success(_)) => code,
                (Version::V4, _) => SubscribeReasonCode::Failure,
                (Version::V5, _) => code,
            })
            .collect();
        Ok(Packet::SubAck(
            SubAck {
                pkid,
                return_codes: codes,
            },
            None,
        ))
    }

    /// UNSUBSCRIBE: removes filters, stops readers no filter needs, stores the session, answers.
    pub(crate) async fn unsubscribe(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        session: &mut SessionRecord,
        pkid: u16,
        filters: Vec<String>,
    ) -> Result<Packet> {
        let reasons = filters
            .iter()
            .map(|filter| match self.subscriptions.remove(filter) {
                Some(_) => UnsubAckReason::Success,
                None => UnsubAckReason::NoSubscriptionExisted,
            })
            .collect();
        let needed: Vec<SourceKey> = self.subscriptions.values().flat_map(source_keys).collect();
        let unneeded: Vec<SourceId> = self
            .controls
            .iter()
            .filter(|(_, source)| !needed.contains(&source.key))
            .map(|(&id, _)| id)
            .collect();
        for id in unneeded {
            self.close_source(id).await;
        }
        self.refresh_shared_filters();
        if session.persistent {
            session.subscriptions = self.stored();
            bridge.sessions.save(&client.client_id, session).await?;
        }
        Ok(Packet::UnsubAck(UnsubAck { pkid, reasons }, None))
    }

    /// A log reader's event.
    pub(crate) fn on_event(&mut self, source: SourceId, event: SubscriptionEvent) {
        match event {
            SubscriptionEvent::Records(records) => self.queue.extend(
                records
                    .into_iter()
                    .map(|record| Pending::Record(source, record)),
            ),
            SubscriptionEvent::Revoked(partitions) => {
                // Their new owner reads them from the last commit; sending them here too would duplicate.
                self.queue.retain(|pending| match pending {
                    Pending::Record(id, record) => {
                        *id != source || !partitions.contains(&record.topic_partition())
                    }
                    Pending::Retained(..) => true,
                });
            }
            SubscriptionEvent::Assigned(_) => {}
        }
    }

    /// Sends waiting messages while the client has room for them.
    pub(crate) fn fill<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &Client,
        connection: &mut Connection<S>,
    ) -> Result<()> {
        let mut sent = 0;
        while sent < BURST && self.inflight.len() < usize::from(client.receive_maximum) {
            let Some(pending) = self.queue.pop_front() else {
                break;
            };
            match pending {
                Pending::Retained(message, identifier) => {
                    self.send(
                        client,
                        connection,
                        message,
                        identifier.into_iter().collect(),
                        None,
                    )?;
                }
                Pending::Record(source, record) => {
                    self.deliver(client, connection, source, record)?;
                }
            }
            sent += 1;
        }
        Ok(())
    }

    /// PUBACK from the client.
    pub(crate) fn on_puback(&mut self, pkid: u16) {
        if let Some(inflight) = self.inflight.remove(&pkid) {
            self.client_acked(inflight.log_ack);
        }
    }

    /// PUBREC from the client: the message is theirs; the log may forget it. Answers PUBREL, at once,
    /// or for a persistent session once the exchange is recorded ([`Self::on_recorded`]), so the
    /// PUBREL is owed even after a crash.
    pub(crate) async fn on_pubrec(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        pkid: u16,
        reason: PubRecReason,
    ) -> Result<Option<Packet>> {
        let Some(inflight) = self.inflight.get_mut(&pkid) else {
            return Ok(Some(pubrel(pkid, PubRelReason::PacketIdentifierNotFound)));
        };
        if inflight.recording {
            // A repeated PUBREC: the PUBREL follows when the first one is recorded.
            return Ok(None);
        }
        if is_failure(reason) {
            // The client refused the message: the exchange ends here.
            if let Some(log_ack) = self.inflight.remove(&pkid).and_then(|i| i.log_ack) {
                self.client_acked(Some(log_ack));
            }
            return Ok(None);
        }
        let Some(log_ack) = inflight.log_ack.take() else {
            // Acknowledged already (a repeated PUBREC, or a retained message): PUBREL again.
            return Ok(Some(pubrel(pkid, PubRelReason::Success)));
        };
        let Some(session) = &self.durable_session else {
            self.client_acked(Some(log_ack));
            return Ok(Some(pubrel(pkid, PubRelReason::Success)));
        };
        // Not acknowledged to the log until recorded: a failure delivers the record again.
        let (_, partition, offset) = &log_ack;
        let record = RecordAt {
            topic: partition.topic.to_string(),
            partition: partition.partition,
            offset: *offset,
        };
        let receipt = bridge
            .exchanges
            .delivered(&client.client_id, pkid, session, Some(record))
            .await?;
        inflight.log_ack = Some(log_ack);
        inflight.recording = true;
        self.recordings.push(async move {
            let outcome = receipt.await.map(drop);
            Recorded::Delivered { pkid, outcome }
        });
        Ok(None)
    }

    /// PUBCOMP from the client: the exchange is over. A persistent session's entry is deleted
    /// (queued: nothing waits for it).
    pub(crate) async fn on_pubcomp(&mut self, bridge: &Bridge, client: &Client, pkid: u16) {
        if self
            .inflight
            .get(&pkid)
            .is_some_and(|inflight| inflight.recording)
        {
            // No PUBREL was sent for it yet: the client is early, and the exchange goes on.
            return;
        }
        if self.inflight.remove(&pkid).is_none() || self.durable_session.is_none() {
            return;
        }
        match bridge
            .exchanges
            .finish(&client.client_id, Direction::Out, pkid)
            .await
        {
            Ok(receipt) => self.recordings.push(async move {
                let outcome = receipt.await.map(drop);
                Recorded::Finished { pkid, outcome }
            }),
            Err(error) => warn_not_deleted(&error, pkid),
        }
    }

    /// An entry write finished: the PUBREL to send, if any.
    pub(crate) fn on_recorded(&mut self, recorded: Recorded) -> Result<Option<Packet>> {
        match recorded {
            Recorded::Delivered { pkid, outcome } => {
                // Unrecorded, the PUBREL could be lost in a crash: the connection closes instead, the
                // record is not acknowledged, and the resumed session delivers it again.
                outcome.map_err(Error::from)?;
                let Some(inflight) = self.inflight.get_mut(&pkid) else {
                    return Ok(None);
                };
                inflight.recording = false;
                if let Some(log_ack) = inflight.log_ack.take() {
                    self.client_acked(Some(log_ack));
                }
                Ok(Some(pubrel(pkid, PubRelReason::Success)))
            }
            Recorded::Finished { pkid, outcome } => {
                if let Err(error) = outcome {
                    warn_not_deleted(&error, pkid);
                }
                Ok(None)
            }
        }
    }

    /// Closes every reader; group members commit what the client acknowledged.
    pub(crate) async fn close(&mut self) {
        let ids: Vec<SourceId> = self.controls.keys().copied().collect();
        for id in ids {
            self.close_source(id).await;
        }
    }

    async fn add(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        session: &SessionRecord,
        stored: StoredSubscription,
        adding: Adding,
    ) -> Result<Subscription, SubscribeReasonCode> {
        let subscription = subscription_of(bridge, stored)?;
        for key in source_keys(&subscription) {
            if self.controls.values().any(|source| source.key == key) {
                continue;
            }
            self.open_source(bridge, client, session, &subscription, key, adding)
                .await?;
        }
        self.subscriptions
            .insert(subscription.stored.filter.clone(), subscription.clone());
        self.refresh_shared_filters();
        Ok(subscription)
    }

    /// Opens the reader behind one source of a subscription: the gateway's shared reader of a topic
    /// for a clean session, else a member of the session's (or the share's) group.
    async fn open_source(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        session: &SessionRecord,
        subscription: &Subscription,
        key: SourceKey,
        adding: Adding,
    ) -> Result<(), SubscribeReasonCode> {
        let (topics, group) = match &key {
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
            Position::Timestamp(subscription.stored.since_ms)
        } else {
            Position::Latest
        };
        if let (SourceKey::Topic(topic), Some(group), Adding::Subscribe) = (&key, &group, adding) {
            pin_start(bridge.log.as_ref(), group, topic).await;
        }
        let reader = match (&key, &group) {
            // Clean-session readers of one Kafka topic are all alike: one per gateway serves them.
            (SourceKey::Topic(topic), None) => bridge
                .fanout
                .subscribe(topic, vec![subscription.filter.clone()])
                .await
                .map(|member| (Some(member.filters()), member.subscription)),
            _ => {
                let options = SubscribeOptions {
                    topics: TopicSelector::Names(topics),
                    group: group.clone(),
                    start,
                    max_in_flight: usize::from(client.receive_maximum),
                    client: client.client_id.clone(),
                    protocol: "mqtt",
                };
                bridge
                    .log
                    .subscribe(options)
                    .await
                    .map(|reader| (None, reader))
            }
        };
        let (filters, reader) = reader.map_err(|error| {
            tracing::warn!(%error, filter = subscription.stored.filter, "subscribe failed");
            match error {
                courier_gateway::Error::UnknownTopic { .. }
                | courier_gateway::Error::InvalidTopicName { .. } => {
                    SubscribeReasonCode::TopicFilterInvalid
                }
                _ => SubscribeReasonCode::Unspecified,
            }
        })?;
        let id = self.next_source;
        self.next_source += 1;
        let mut events = reader.events;
        if group.is_none() {
            let assigned = tokio::time::timeout(ASSIGNMENT_WAIT, async {
                while let Some(event) = events.recv().await {
                    match event {
                        SubscriptionEvent::Assigned(_) => return true,
                        event => self.on_event(id, event),
                    }
                }
                false
            })
            .await;
            if !matches!(assigned, Ok(true)) {
                tracing::warn!(
                    filter = subscription.stored.filter,
                    "a reader had no partitions in time"
                );
            }
        }
        self.sources
            .insert(id, UnboundedReceiverStream::new(events));
        self.controls.insert(
            id,
            Source {
                key,
                control: reader.control,
                filters,
            },
        );
        Ok(())
    }

    /// Tells each shared reader which filters of this connection read its Kafka topic.
    fn refresh_shared_filters(&self) {
        for source in self.controls.values() {
            let (SourceKey::Topic(topic), Some(filters)) = (&source.key, &source.filters) else {
                continue;
            };
            filters.set(
                self.subscriptions
                    .values()
                    .filter(|s| s.share_group.is_none() && s.kafka_topics.contains(topic))
                    .map(|s| s.filter.clone())
                    .collect(),
            );
        }
    }

    fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &Client,
        connection: &mut Connection<S>,
        source: SourceId,
        record: Record,
    ) -> Result<()> {
        let Some(key) = self.controls.get(&source).map(|source| source.key.clone()) else {
            return Ok(()); // its reader was closed
        };
        let log_ack = Some((source, record.topic_partition(), record.offset));
        if !self.already_delivered.is_empty()
            && self.already_delivered.remove(&RecordAt {
                topic: record.topic.to_string(),
                partition: record.partition,
                offset: record.offset,
            })
        {
            self.ack_log(log_ack);
            return Ok(());
        }
        let Some(mut stored) = mapping::from_record(&record, now_ms()) else {
            self.ack_log(log_ack);
            return Ok(());
        };
        if self.courier_id_property && !record.courier_id.is_empty() {
            mapping::add_courier_id(&mut stored.message, &record.courier_id);
        }
        let topic = &stored.message.topic;
        let own = stored.publisher.as_deref() == Some(client.client_id.as_str());
        let matched: Vec<&Subscription> = self
            .subscriptions
            .values()
            .filter(|subscription| match &key {
                SourceKey::Share(group) => subscription.share_group.as_ref() == Some(group),
                SourceKey::Topic(kafka_topic) => {
                    subscription.share_group.is_none()
                        && subscription.kafka_topics.contains(kafka_topic)
                        && !(own && subscription.stored.no_local)
                }
            })
            .filter(|subscription| mapping::matches(&subscription.filter, topic))
            .collect();
        if matched.is_empty() {
            self.ack_log(log_ack);
            return Ok(());
        }
        let granted =
            matched
                .iter()
                .map(|subscription| subscription.qos)
                .fold(
                    QoS::AtMostOnce,
                    |a, b| if (b as u8) > (a as u8) { b } else { a },
                );
        let retain_as_published = matched
            .iter()
            .any(|subscription| subscription.stored.retain_as_published);
        let identifiers = matched
            .iter()
            .filter_map(|subscription| subscription.stored.identifier)
            .collect();
        let mut message = stored.message;
        message.qos = mapping::min_qos(message.qos, granted);
        message.retain = retain_as_published && message.retain;
        self.send(client, connection, message, identifiers, log_ack)
    }

    fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &Client,
        connection: &mut Connection<S>,
        message: Message,
        identifiers: Vec<usize>,
        log_ack: Option<(SourceId, TopicPartition, i64)>,
    ) -> Result<()> {
        let Message {
            topic,
            payload,
            qos,
            retain,
            mut properties,
        } = message;
        properties.subscription_identifiers = identifiers;
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.allocate_pkid()
        };
        let packet = Packet::Publish(
            outgoing_publish(&topic, &payload, qos, pkid, retain),
            Some(properties),
        );
        if !connection.queue_within(packet, client.max_packet_size)? {
            // MQTT 5: a message larger than the client's maximum is not sent to it, and counts as
            // delivered [MQTT-3.1.2-25]; counted as an error so an operator can tell.
            tracing::debug!(
                topic,
                limit = client.max_packet_size,
                "message over the client's maximum packet size; not sent to it"
            );
            metrics::error(Protocol::Mqtt, "over_client_max_packet_size");
            self.ack_log(log_ack);
            return Ok(());
        }
        metrics::delivered(Protocol::Mqtt, 1, payload.len());
        if qos == QoS::AtMostOnce {
            self.ack_log(log_ack);
        } else {
            self.inflight.insert(
                pkid,
                Inflight {
                    log_ack,
                    recording: false,
                },
            );
        }
        Ok(())
    }

    fn allocate_pkid(&mut self) -> u16 {
        // In flight is bounded by the receive maximum (a u16), so a free id always exists.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// The client acknowledged a delivery: counted, and its record (if any) acknowledged to the log.
    fn client_acked(&self, log_ack: Option<(SourceId, TopicPartition, i64)>) {
        metrics::acked(Protocol::Mqtt, 1);
        self.ack_log(log_ack);
    }

    fn ack_log(&self, log_ack: Option<(SourceId, TopicPartition, i64)>) {
        if let Some((source, partition, offset)) = log_ack
            && let Some(source) = self.controls.get(&source)
        {
            source.control.ack(&partition, offset);
        }
    }

    async fn close_source(&mut self, id: SourceId) {
        self.sources.remove(&id);
        self.queue
            .retain(|pending| !matches!(pending, Pending::Record(source, _) if *source == id));
        if let Some(source) = self.controls.remove(&id)
            && let Err(error) = source.control.close().await
        {
            tracing::warn!(%error, "closing a reader failed");
        }
    }

    fn stored(&self) -> Vec<StoredSubscription> {
        self.subscriptions
            .values()
            .map(|subscription| subscription.stored.clone())
            .collect()
    }
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

/// What a stored subscription means: its filter without `$share/<group>/`, its shared group, the
/// Kafka topics it reads and the QoS it is granted; refused if the filter is not valid.
fn subscription_of(
    bridge: &Bridge,
    stored: StoredSubscription,
) -> Result<Subscription, SubscribeReasonCode> {
    let (share_group, filter) = match mapping::parse_share(&stored.filter) {
        Some((group, filter)) if !group.is_empty() && !group.contains(['+', '#']) => {
            (Some(mapping::share_group(group, filter)), filter.to_owned())
        }
        Some(_) => return Err(SubscribeReasonCode::TopicFilterInvalid),
        None if stored.filter.starts_with("$share/") => {
            return Err(SubscribeReasonCode::TopicFilterInvalid);
        }
        None => (None, stored.filter.clone()),
    };
    if !mapping::valid_filter(&filter) {
        return Err(SubscribeReasonCode::TopicFilterInvalid);
    }
    let mut qos = rumqttd::protocol::qos(stored.qos).unwrap_or(QoS::AtMostOnce);
    if share_group.is_some() {
        // A shared QoS 2 delivery cut off before PUBREC must be completed with the same client and go
        // to no other [MQTT-4.8.2-4, 4.8.2-5], but the shared Kafka group hands an unacknowledged
        // record to another member. QoS 1 allows that, so that is what is granted (a server may grant
        // less than asked, [MQTT-3.8.4-6]).
        qos = mapping::min_qos(qos, QoS::AtLeastOnce);
    }
    Ok(Subscription {
        kafka_topics: bridge.routes.topics_for_filter(&filter),
        stored,
        filter,
        share_group,
        qos,
    })
}

fn source_keys(subscription: &Subscription) -> Vec<SourceKey> {
    match &subscription.share_group {
        Some(group) => vec![SourceKey::Share(group.clone())],
        None => subscription
            .kafka_topics
            .iter()
            .cloned()
            .map(SourceKey::Topic)
            .collect(),
    }
}

fn pubrel(pkid: u16, reason: PubRelReason) -> Packet {
    Packet::PubRel(PubRel { pkid, reason }, None)
}

fn warn_not_deleted(error: &dyn fmt::Display, pkid: u16) {
    // Harmless: the next resumed connection sends this PUBREL again, and the client answers.
    tracing::warn!(%error, pkid, "could not delete a completed QoS 2 exchange");
}

fn is_failure(reason: PubRecReason) -> bool {
    !matches!(
        reason,
        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
    )
}
