//! Messages to the client: subscriptions, the log readers behind them, and acknowledgement.
//!
//! Each Kafka topic a subscription needs is one source per connection ([`sources`]); records are
//! matched against the client's filters ([`subscriptions`]). A record is acknowledged to the log
//! when the client has acknowledged it (PUBACK, or PUBREC for QoS 2; a persistent session's QoS 2
//! delivery once its PUBREC is recorded, [`inflight`]), at once when it is sent at QoS 0, and at
//! once when no filter wants it. At most the client's receive maximum of messages are
//! unacknowledged at any time; further records wait in the sources, whose windows bound them.
//!
//! This module ties the parts together and talks to the connection: SUBSCRIBE and UNSUBSCRIBE,
//! sending PUBLISH packets, and acknowledging to the log what the parts decide. The parts are:
//!
//! - [`subscriptions`]: what a filter means and which subscriptions a record matches, without I/O;
//! - [`sources`]: opening, acknowledging through and closing the log readers;
//! - [`delivery`]: the messages waiting for in-flight room and what each becomes, without I/O;
//! - [`inflight`]: packet ids in flight and the QoS 1 and 2 acknowledgements that settle them.
//!
//! Each subscription is authorized on its filter (a shared one's without `$share/<name>/`), and a
//! shared one also on joining the group `<name>`, when it is made or a resumed session restores
//! it, by the policy as it is then: a denied filter gets SUBACK 0x87 (MQTT 5) or 0x80 (3.1.1), no
//! reader and no retained messages. A filter subscribed to already and denied when subscribed to
//! again loses its subscription, as UNSUBSCRIBE would remove it. A session's group
//! readers go through the connection's own log, whose authorization layer keeps them off the
//! gateway's internal topics.

mod delivery;
mod inflight;
mod sources;
mod subscriptions;

use std::sync::Arc;

use courier_gateway::{
    auth::policy::{Action, Resource},
    log::{SubscriptionEvent, now_ms},
    metrics::{self, Protocol},
};
use rumqttd::protocol::{
    Packet, PubRecReason, QoS, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use self::inflight::{Recorded, Recordings};
use self::{
    delivery::{Outgoing, Queue},
    inflight::{Inflight, Settled},
    sources::{Adding, LogAck, SourceId, Sources},
    subscriptions::{SourceKey, Subscription, Subscriptions},
};
use super::{admission::Client, client_log::ClientLog};
use crate::{
    bridge::Bridge,
    codec::{Version, outgoing_publish},
    connection::Connection,
    error::{Error, Result},
    mapping::Message,
    store::{
        exchanges::RecordAt,
        sessions::{SessionRecord, StoredSubscription},
    },
};

/// Most packets written between two flushes, so a busy subscription does not starve the connection.
const BURST: usize = 64;

/// The client's subscriptions and what is in flight to it.
#[derive(Debug)]
pub(crate) struct Outbound {
    subscriptions: Subscriptions,
    /// The log readers, whose events the session takes while [`Self::wants_events`].
    pub(crate) sources: Sources,
    queue: Queue,
    inflight: Inflight,
    /// A persistent session's QoS 2 entry writes under way.
    pub(crate) recordings: Recordings,
}

impl Outbound {
    /// Starts with the QoS 2 packet ids a resumed session had delivered and seen PUBREC for, whose
    /// PUBREL is sent again (MQTT requires it after a reconnect; the client may deliver only then).
    pub(crate) fn new(
        durable_session: Option<Arc<str>>,
        awaiting_completion: Vec<(u16, Option<RecordAt>)>,
        courier_id_property: bool,
    ) -> Self {
        let (pkids, records): (Vec<u16>, Vec<Option<RecordAt>>) =
            awaiting_completion.into_iter().unzip();
        Self {
            subscriptions: Subscriptions::default(),
            sources: Sources::default(),
            inflight: Inflight::new(durable_session, pkids),
            queue: Queue::new(records.into_iter().flatten().collect(), courier_id_property),
            recordings: Recordings::default(),
        }
    }

    /// The PUBRELs owed from before the reconnect, once.
    pub(crate) fn take_owed_releases(&mut self) -> Vec<Packet> {
        self.inflight.take_owed_releases()
    }

    /// Should more reader events be taken? Not while records wait for in-flight room.
    pub(crate) fn wants_events(&self, client: &Client) -> bool {
        self.queue.len() < usize::from(client.receive_maximum)
    }

    /// Restores a resumed session's subscriptions (no retained messages: the session saw them). One
    /// that cannot be restored (the policy no longer allows it, say) is logged and skipped, as a
    /// refused SUBSCRIBE filter would be. Group readers read `log`, the connection's own.
    pub(crate) async fn resume(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        log: &mut ClientLog,
        session: &SessionRecord,
    ) {
        for stored in &session.subscriptions {
            if let Err(code) = self
                .add(bridge, client, log, session, stored.clone(), Adding::Resume)
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

    /// SUBSCRIBE (with its subscription identifier): adds each filter, stores a persistent
    /// session's new subscriptions, then answers.
    pub(crate) async fn subscribe(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        log: &mut ClientLog,
        session: &mut SessionRecord,
        subscribe: Subscribe,
        identifier: Option<usize>,
    ) -> Result<Packet> {
        let Subscribe { pkid, filters } = subscribe;
        let now = now_ms();
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            if client.version == Version::V5 && filter.nolocal && filter.path.starts_with("$share/")
            {
                return Err(Error::Protocol(
                    "no-local may not be set on a shared subscription".into(),
                ));
            }
            let existed = self.subscriptions.contains(&filter.path);
            if !existed && self.subscriptions.len() >= bridge.config.max_subscriptions {
                metrics::limit_refused(Protocol::Mqtt, "max_subscriptions");
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let stored = self.subscriptions.requested(&filter, identifier, now);
            match self
                .add(bridge, client, log, session, stored, Adding::Subscribe)
                .await
            {
                Ok(subscription) => {
                    if subscription.sends_retained(filter.retain_forward_rule, existed) {
                        self.queue_retained(bridge, &subscription, now).await?;
                    }
                    codes.push(SubscribeReasonCode::Success(subscription.qos));
                }
                Err(code) => {
                    if existed && code == SubscribeReasonCode::NotAuthorized {
                        // Refused now (the policy changed since it was made): the subscription it
                        // would have replaced ends too, as UNSUBSCRIBE would end it, or the client
                        // would keep getting what it was just refused.
                        self.remove(std::slice::from_ref(&filter.path)).await;
                    }
                    codes.push(code);
                }
            }
        }
        save(bridge, client, session, &self.subscriptions).await?;
        Ok(Packet::SubAck(
            SubAck {
                pkid,
                return_codes: subscriptions::suback_codes(client.version, codes),
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
        let reasons = self
            .remove(&filters)
            .await
            .into_iter()
            .map(|existed| {
                if existed {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        save(bridge, client, session, &self.subscriptions).await?;
        Ok(Packet::UnsubAck(UnsubAck { pkid, reasons }, None))
    }

    /// Removes the subscriptions to `filters` and closes the readers no remaining one needs
    /// (dropping their records still waiting); which filters had a subscription.
    async fn remove(&mut self, filters: &[String]) -> Vec<bool> {
        let existed = filters
            .iter()
            .map(|filter| self.subscriptions.remove(filter))
            .collect();
        let unneeded = self.sources.unneeded(&self.subscriptions.needed_sources());
        for id in unneeded {
            self.close_source(id).await;
        }
        self.sources.refresh_shared_filters(&self.subscriptions);
        existed
    }

    /// A log reader's event.
    pub(crate) fn on_event(&mut self, source: SourceId, event: SubscriptionEvent) {
        self.queue.on_event(source, event);
    }

    /// Sends waiting messages while the client has room for them.
    pub(crate) fn fill<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &Client,
        connection: &mut Connection<S>,
    ) -> Result<()> {
        let mut sent = 0;
        while sent < BURST && self.inflight.len() < usize::from(client.receive_maximum) {
            let next = self
                .queue
                .next(&self.subscriptions, &self.sources, &client.client_id);
            match next {
                None => break,
                Some(Outgoing::Send {
                    message,
                    identifiers,
                    log_ack,
                    courier_id,
                }) => self.send(
                    client,
                    connection,
                    message,
                    identifiers,
                    log_ack,
                    courier_id,
                )?,
                Some(Outgoing::Ack(log_ack)) => self.sources.ack(Some(log_ack)),
                Some(Outgoing::Nothing) => {}
            }
            sent += 1;
        }
        Ok(())
    }

    /// PUBACK from the client.
    pub(crate) fn on_puback(&mut self, pkid: u16) {
        let settled = self.inflight.on_puback(pkid);
        self.settle(settled);
    }

    /// PUBREC from the client: answered with PUBREL at once, or for a persistent session once the
    /// exchange is recorded ([`Self::on_recorded`]); see [`inflight`].
    pub(crate) async fn on_pubrec(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        pkid: u16,
        reason: PubRecReason,
    ) -> Result<Option<Packet>> {
        let settled = self
            .inflight
            .on_pubrec(
                bridge,
                &client.client_id,
                &mut self.recordings,
                pkid,
                reason,
            )
            .await?;
        Ok(self.settle(settled))
    }

    /// PUBCOMP from the client: the exchange is over. A persistent session's entry is deleted
    /// (queued: nothing waits for it).
    pub(crate) async fn on_pubcomp(&mut self, bridge: &Bridge, client: &Client, pkid: u16) {
        self.inflight
            .on_pubcomp(bridge, &client.client_id, &mut self.recordings, pkid)
            .await;
    }

    /// An entry write finished: the PUBREL to send, if any.
    pub(crate) fn on_recorded(&mut self, recorded: Recorded) -> Result<Option<Packet>> {
        let settled = self.inflight.on_recorded(recorded)?;
        Ok(self.settle(settled))
    }

    /// Closes every reader; group members commit what the client acknowledged.
    pub(crate) async fn close(&mut self) {
        for id in self.sources.ids() {
            self.close_source(id).await;
        }
    }

    /// Adds one subscription the policy allows, opening the readers it needs that are not open yet.
    async fn add(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        log: &mut ClientLog,
        session: &SessionRecord,
        stored: StoredSubscription,
        adding: Adding,
    ) -> Result<Subscription, SubscribeReasonCode> {
        let subscription = Subscription::of(&bridge.routes, stored)?;
        // The authorizer counts and logs a denial.
        let authorizer = &bridge.access.authorizer;
        let resource = Resource::MqttFilter(subscription.filter());
        authorizer
            .check("mqtt", client.subject(), Action::Consume, resource)
            .map_err(|_| SubscribeReasonCode::NotAuthorized)?;
        // A share takes part of its group's messages from the other members: joining one is
        // decided on its name as well, not only on the filter every member reads.
        if let Some(name) = subscription.share_name() {
            authorizer
                .check(
                    "mqtt",
                    client.subject(),
                    Action::JoinGroup,
                    Resource::Group(name),
                )
                .map_err(|_| SubscribeReasonCode::NotAuthorized)?;
        }
        for key in subscription.source_keys() {
            if self.sources.has(&key) {
                continue;
            }
            self.open_source(bridge, client, log, session, &subscription, key, adding)
                .await?;
        }
        self.subscriptions.insert(subscription.clone());
        self.sources.refresh_shared_filters(&self.subscriptions);
        Ok(subscription)
    }

    /// Opens the reader behind one source of a subscription ([`sources::open`]) and queues what it
    /// read while SUBACK waited for it.
    #[allow(
        clippy::too_many_arguments,
        reason = "what a reader is opened for and through: bundled, it would only be renamed"
    )]
    async fn open_source(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        log: &mut ClientLog,
        session: &SessionRecord,
        subscription: &Subscription,
        key: SourceKey,
        adding: Adding,
    ) -> Result<(), SubscribeReasonCode> {
        let opened =
            sources::open(bridge, log, client, session, subscription, &key, adding).await?;
        let (id, early) = self.sources.insert(key, opened);
        for event in early {
            self.queue.on_event(id, event);
        }
        Ok(())
    }

    /// Queues the retained messages a new subscription gets, at no more than its QoS.
    ///
    /// A SUBSCRIBE made again while its previous one's retained messages still wait to be sent
    /// adds nothing: those are the retained messages it asks for, not yet sent (what was retained
    /// since reaches the subscription as it is published). And no more than
    /// `mqtt.max_queued_retained` wait in all. So a client repeating `SUBSCRIBE #` over a large
    /// retained set without reading holds one bounded queue, and costs one scan of the set, not
    /// one per SUBSCRIBE.
    async fn queue_retained(
        &mut self,
        bridge: &Bridge,
        subscription: &Subscription,
        now: i64,
    ) -> Result<()> {
        if self.queue.has_retained_of(subscription.filter()) {
            return Ok(());
        }
        let room = bridge
            .config
            .max_queued_retained
            .saturating_sub(self.queue.retained_len());
        if room == 0 {
            metrics::limit_refused(Protocol::Mqtt, "max_queued_retained");
            tracing::info!(
                filter = subscription.filter(),
                "retained messages not sent: the client has mqtt.max_queued_retained waiting"
            );
            return Ok(());
        }
        let matching = bridge.retained.matching(subscription.filter(), now).await?;
        let left_out = matching.len().saturating_sub(room);
        let filter: Arc<str> = subscription.filter().into();
        for stored in matching.into_iter().take(room) {
            self.queue.push_retained(
                subscription.retained(stored.message),
                &filter,
                subscription.stored().identifier,
            );
        }
        if left_out > 0 {
            metrics::limit_refused(Protocol::Mqtt, "max_queued_retained");
            tracing::info!(
                filter = subscription.filter(),
                left_out,
                "retained messages not sent: the client has mqtt.max_queued_retained waiting"
            );
        }
        Ok(())
    }

    /// Queues one PUBLISH; QoS 1 and 2 go in flight, QoS 0 is acknowledged to the log at once.
    /// `courier_id` is the record's id (empty for a retained message).
    fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &Client,
        connection: &mut Connection<S>,
        message: Message,
        identifiers: Vec<usize>,
        log_ack: Option<LogAck>,
        courier_id: String,
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
            self.inflight.allocate_pkid()
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
            self.sources.ack(log_ack);
            return Ok(());
        }
        metrics::delivered(Protocol::Mqtt, 1, payload.len());
        if qos == QoS::AtMostOnce {
            self.sources.ack(log_ack);
        } else {
            self.inflight.sent(pkid, log_ack, courier_id);
        }
        Ok(())
    }

    /// Carries out what an acknowledgement settled: a delivery the client acknowledged is counted
    /// and its record (if any) acknowledged to the log. Returns the packet to answer with.
    fn settle(&self, settled: Settled) -> Option<Packet> {
        if let Some(log_ack) = settled.client_acked {
            metrics::acked(Protocol::Mqtt, 1);
            self.sources.ack(log_ack);
        }
        settled.reply
    }

    /// Closes one reader and drops its records still waiting.
    async fn close_source(&mut self, id: SourceId) {
        self.queue.drop_source(id);
        self.sources.close(id).await;
    }
}

/// Stores a persistent session's subscriptions as they are now. (Not a `&self` method: a
/// `&Outbound` held across the write would make the session's future need `Outbound: Sync`, which it
/// is not; the callers hold `&mut` borrows of other fields meanwhile.)
async fn save(
    bridge: &Bridge,
    client: &Client,
    session: &mut SessionRecord,
    subscriptions: &Subscriptions,
) -> Result<()> {
    if session.persistent {
        session.subscriptions = subscriptions.stored();
        bridge.sessions.save(&client.client_id, session).await?;
    }
    Ok(())
}
