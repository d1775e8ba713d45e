//! Messages the client publishes: into the log, acknowledged (PUBACK, PUBREC) only once durable.
//!
//! Appends are pipelined: each PUBLISH is queued to the log at once and its receipt awaited in order,
//! so acks go out in the order the publishes came. A QoS 2 packet id is remembered from the moment its
//! append starts until the client's PUBREL, so a retransmission never appends a second record. A
//! persistent session also records it in the log first (see [`crate::store::exchanges`]), so neither a crash
//! nor a reconnect to another replica forgets it.
//!
//! Each PUBLISH is authorized on its MQTT topic before anything is stored, by the policy as it is
//! now (a reloaded policy decides the next publish). A denied one stores nothing: MQTT 5 answers
//! PUBACK or PUBREC 0x87 Not authorized; QoS 0 and MQTT 3.1.1, which cannot say so, are answered as
//! usual and the message is dropped (as Mosquitto does: closing the connection would only make
//! the client send it again). The client's messages go through the connection's own log, whose
//! authorization layer keeps them off the gateway's internal topics whatever a route says.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    pin::Pin,
    sync::Arc,
};

use super::in_order::InOrder;
use courier_gateway::{
    auth::policy::{Action, Resource},
    log::{AppendReceipt, Log, NewRecord, now_ms},
    metrics::{self, Protocol},
};
use rumqttd::protocol::{
    Packet, PubAck, PubAckProperties, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecProperties, PubRecReason, Publish, PublishProperties, QoS,
};
use ulid::Ulid;

use super::admission::Client;
use crate::{
    bridge::Bridge,
    codec::{PublishHeader, Version},
    error::{Error, Refusal, RefusalCode, Result},
    mapping::{self, Message},
    store::exchanges::{Direction, ExchangeStore, Received},
};

/// Inbound work that was waiting for the log, done.
#[derive(Debug)]
pub(crate) enum Completed {
    /// A publish's append.
    Appended {
        qos: QoS,
        pkid: u16,
        outcome: Result<(), Refusal>,
    },
    /// A PUBREL's deletion of a persistent session's QoS 2 entry.
    Released {
        pkid: u16,
        outcome: courier_gateway::Result<()>,
    },
}

type Pending = Pin<Box<dyn Future<Output = Completed> + Send>>;

/// The client's publishes in flight and its QoS 2 state.
pub(crate) struct Inbound {
    /// Appends and releases, in the order the client's packets came.
    pub(crate) pending: InOrder<Pending>,
    /// QoS 1 and 2 appends not acknowledged yet (the receive maximum counts these).
    unacknowledged: usize,
    /// QoS 2 exchanges and topic aliases, made at the first use (see [`Exchanges`]).
    exchanges: Option<Box<Exchanges>>,
    /// The session, when it is persistent: its QoS 2 exchanges are recorded in the log.
    durable_session: Option<Arc<str>>,
}

/// What only a client publishing at QoS 2 or with topic aliases needs: most never do, and an
/// idle connection holds a pointer for it rather than three trees (72 bytes of its task).
#[derive(Debug, Default)]
struct Exchanges {
    /// QoS 2 packet ids being appended.
    appending: BTreeSet<u16>,
    /// QoS 2 packet ids acknowledged with PUBREC, until PUBREL.
    awaiting_release: BTreeSet<u16>,
    /// MQTT 5 topic aliases the client set.
    aliases: BTreeMap<u16, String>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("pending", &self.pending.len())
            .field("exchanges", &self.exchanges)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Starts with the QoS 2 packet ids a resumed session still waits to see released; the
    /// client's messages go to `log`.
    pub(crate) fn new(awaiting_release: Vec<u16>, durable_session: Option<Arc<str>>) -> Self {
        let exchanges = (!awaiting_release.is_empty()).then(|| {
            Box::new(Exchanges {
                awaiting_release: awaiting_release.into_iter().collect(),
                ..Exchanges::default()
            })
        });
        Self {
            pending: InOrder::default(),
            unacknowledged: 0,
            exchanges,
            durable_session,
        }
    }

    fn exchanges_mut(&mut self) -> &mut Exchanges {
        self.exchanges.get_or_insert_with(Box::default)
    }

    fn exchanges(&self) -> Option<&Exchanges> {
        self.exchanges.as_deref()
    }

    /// May another packet be read? Reading stops while `limit` appends are in flight, so a client that
    /// publishes faster than the log stores is slowed by TCP rather than buffered.
    pub(crate) fn has_room(&self, limit: u16) -> bool {
        self.pending.len() < usize::from(limit)
    }

    /// QoS 2 packet ids still to be released (kept with a persistent session).
    pub(crate) fn awaiting_release(&self) -> Vec<u16> {
        let Some(exchanges) = self.exchanges() else {
            return Vec::new();
        };
        let mut ids: Vec<u16> = exchanges
            .awaiting_release
            .iter()
            .chain(&exchanges.appending)
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Handles a PUBLISH: starts its append, or answers at once (a retransmitted QoS 2, a refusal).
    pub(crate) async fn on_publish(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        log: &Arc<dyn Log>,
        header: PublishHeader,
        publish: Publish,
        properties: Option<PublishProperties>,
    ) -> Result<Option<Packet>> {
        let Accepted {
            qos,
            pkid,
            message,
            mut record,
        } = match self.check(bridge, client, header, publish, properties)? {
            Checked::Answer(answer) => return Ok(answer),
            Checked::Accepted(accepted) => accepted,
        };
        // Within the publisher's retained caps. Past them, MQTT 5 refuses it (0x97) before
        // anything is stored; QoS 0 and 3.1.1, whose only answer is closing the connection (and a
        // 3.1.1 client sends an unacknowledged message again on reconnecting, to be closed
        // again), have it published without being retained.
        let mut owner = message.retain.then(|| client.account());
        if let Some(account) = &owner
            && let Err(refusal) = bridge
                .retained
                .admit(account, &message.topic, &record)
                .await
        {
            if client.version == Version::V5 && qos != QoS::AtMostOnce {
                return refuse(client, qos, pkid, refusal);
            }
            tracing::info!(reason = %refusal.text, "published without retaining it");
            owner = None;
        }
        let kafka_topic = bridge.routes.topic_for(&message.topic);
        let recorded = match (qos, &self.durable_session) {
            (QoS::ExactlyOnce, Some(session)) => {
                match record_exchange(
                    bridge,
                    client,
                    session,
                    pkid,
                    &mut record,
                    kafka_topic,
                    &message.topic,
                )
                .await
                {
                    Ok(recorded) => Some(recorded),
                    Err(refusal) => return refuse(client, qos, pkid, refusal),
                }
            }
            _ => None,
        };
        // A retained message is stored twice: as a message (subscribers now) and as its topic's retained
        // message (subscribers later). The client's ack waits for both.
        let retained_record = owner.map(|owner| (record.clone(), owner));
        let receipts = async {
            let receipt = log.submit(kafka_topic, vec![record]).await?;
            let retained = match retained_record {
                Some((record, owner)) => Some(bridge.retained.submit(record, &owner).await?),
                None => None,
            };
            Ok::<_, courier_gateway::Error>((receipt, retained))
        };
        let (receipt, retained) = match receipts.await {
            Ok(receipts) => receipts,
            Err(error) => {
                if let Some(recorded) = recorded {
                    recorded.refused().await;
                }
                return refuse(client, qos, pkid, Refusal::from(&error));
            }
        };
        self.pending.push_back(Box::pin(async move {
            let mut outcome = receipt.await.map(drop);
            if let (Ok(()), Some(retained)) = (&outcome, retained) {
                outcome = retained.await.map(drop);
            }
            if let Some(recorded) = recorded {
                match &outcome {
                    Ok(()) => recorded.stored().await,
                    Err(_) => recorded.refused().await,
                }
            }
            Completed::Appended {
                qos,
                pkid,
                outcome: outcome.map_err(|error| Refusal::from(&error)),
            }
        }));
        if qos != QoS::AtMostOnce {
            self.unacknowledged += 1;
        }
        if qos == QoS::ExactlyOnce {
            self.exchanges_mut().appending.insert(pkid);
        }
        Ok(None)
    }

    /// Decides, without I/O, what becomes of a PUBLISH: answered at once (a retransmitted QoS 2, a
    /// refused topic or message) or accepted as a record to append. A protocol breach is an error
    /// that closes the connection.
    fn check(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        header: PublishHeader,
        publish: Publish,
        properties: Option<PublishProperties>,
    ) -> Result<Checked> {
        let PublishHeader { qos, pkid, .. } = header;
        let mut properties = properties.unwrap_or_default();
        let topic = self.resolve_topic(bridge, &publish, properties.topic_alias.take())?;
        if mapping::holds_nul(&properties) {
            return Err(Error::Malformed(rumqttd::protocol::Error::MalformedPacket));
        }
        properties.subscription_identifiers.clear();

        if qos == QoS::ExactlyOnce
            && let Some(exchanges) = self.exchanges()
        {
            if exchanges.awaiting_release.contains(&pkid) {
                return Ok(Checked::Answer(Some(pubrec(
                    pkid,
                    PubRecReason::Success,
                    None,
                ))));
            }
            if exchanges.appending.contains(&pkid) {
                // Answered when the first copy's append completes.
                return Ok(Checked::Answer(None));
            }
        }
        if qos != QoS::AtMostOnce
            && self.unacknowledged >= usize::from(bridge.config.receive_maximum)
        {
            return Err(Error::ReceiveMaximumExceeded(bridge.config.receive_maximum));
        }
        if !mapping::valid_topic_name(&topic) || mapping::reserved_topic(&topic) {
            let refusal = Refusal::new(
                RefusalCode::TopicNameInvalid,
                format!("{topic:?} is not a topic name clients may publish to"),
            );
            metrics::error(Protocol::Mqtt, "invalid_topic_name");
            return refuse(client, qos, pkid, refusal).map(Checked::Answer);
        }
        let authorizer = &bridge.access.authorizer;
        let resource = Resource::MqttTopic(&topic);
        if let Err(denial) = authorizer.check("mqtt", client.subject(), Action::Produce, resource) {
            return Ok(Checked::Answer(denied(client, qos, pkid, &denial)));
        }
        let message = Message {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            properties,
        };
        match mapping::to_record(&message, &client.client_id, now_ms()) {
            Ok(record) => Ok(Checked::Accepted(Accepted {
                qos,
                pkid,
                message,
                record,
            })),
            Err(refusal) => {
                metrics::error(Protocol::Mqtt, "invalid_request");
                refuse(client, qos, pkid, refusal).map(Checked::Answer)
            }
        }
    }

    /// Pending work completed: the answer to send, if any.
    pub(crate) fn on_completed(
        &mut self,
        client: &Client,
        completed: Completed,
    ) -> Result<Option<Packet>> {
        let (qos, pkid, outcome) = match completed {
            Completed::Appended { qos, pkid, outcome } => (qos, pkid, outcome),
            Completed::Released { pkid, outcome } => {
                // Without the deletion, PUBCOMP would let the client use the id for a new message
                // that a later connection takes for this one: the connection closes instead, and the
                // client sends PUBREL again.
                outcome.map_err(Error::from)?;
                let reason = PubCompReason::Success;
                return Ok(Some(Packet::PubComp(PubComp { pkid, reason }, None)));
            }
        };
        if qos != QoS::AtMostOnce {
            self.unacknowledged = self.unacknowledged.saturating_sub(1);
        }
        if qos == QoS::ExactlyOnce
            && let Some(exchanges) = &mut self.exchanges
        {
            exchanges.appending.remove(&pkid);
        }
        match (qos, outcome) {
            (QoS::AtMostOnce, Ok(())) => Ok(None),
            (QoS::AtMostOnce, Err(refusal)) => {
                tracing::warn!(reason = %refusal.text, "a QoS 0 message could not be stored");
                Ok(None)
            }
            (QoS::AtLeastOnce, Ok(())) => Ok(Some(puback(pkid, PubAckReason::Success, None))),
            (QoS::ExactlyOnce, Ok(())) => {
                self.exchanges_mut().awaiting_release.insert(pkid);
                Ok(Some(pubrec(pkid, PubRecReason::Success, None)))
            }
            (_, Err(refusal)) => refuse(client, qos, pkid, refusal),
        }
    }

    /// PUBREL: the client will not send this QoS 2 packet id again. A persistent session's entry is
    /// deleted first, and PUBCOMP goes out once that is durable (see [`Completed::Released`]).
    pub(crate) async fn on_pubrel(
        &mut self,
        bridge: &Bridge,
        client: &Client,
        pkid: u16,
    ) -> Result<Option<Packet>> {
        let released = self
            .exchanges
            .as_mut()
            .is_some_and(|exchanges| exchanges.awaiting_release.remove(&pkid));
        if !released {
            let reason = PubCompReason::PacketIdentifierNotFound;
            return Ok(Some(Packet::PubComp(PubComp { pkid, reason }, None)));
        }
        if self.durable_session.is_none() {
            let reason = PubCompReason::Success;
            return Ok(Some(Packet::PubComp(PubComp { pkid, reason }, None)));
        }
        let deletion = bridge
            .exchanges
            .finish(&client.client_id, Direction::In, pkid)
            .await?;
        self.pending.push_back(Box::pin(async move {
            Completed::Released {
                pkid,
                outcome: deletion.await.map(drop),
            }
        }));
        Ok(None)
    }

    fn resolve_topic(
        &mut self,
        bridge: &Bridge,
        publish: &Publish,
        alias: Option<u16>,
    ) -> Result<String> {
        let topic = std::str::from_utf8(&publish.topic)
            .map_err(|_| Error::Malformed(rumqttd::protocol::Error::TopicNotUtf8))?;
        if topic.contains('\0') {
            // Malformed [MQTT-1.5.4-2]: refused before it could become an alias.
            return Err(Error::Malformed(rumqttd::protocol::Error::MalformedPacket));
        }
        match alias {
            None if topic.is_empty() => Err(Error::Protocol(
                "PUBLISH with an empty topic and no topic alias".into(),
            )),
            None => Ok(topic.to_owned()),
            Some(alias) if alias == 0 || alias > bridge.config.topic_alias_maximum => {
                Err(Error::TopicAliasInvalid(alias))
            }
            Some(alias) if topic.is_empty() => self
                .exchanges()
                .and_then(|exchanges| exchanges.aliases.get(&alias))
                .cloned()
                .ok_or(Error::TopicAliasInvalid(alias)),
            Some(alias) => {
                self.exchanges_mut().aliases.insert(alias, topic.to_owned());
                Ok(topic.to_owned())
            }
        }
    }
}

/// What [`Inbound::check`] decided.
enum Checked {
    /// Answered at once (or, for a QoS 2 copy still appending, later): nothing to append.
    Answer(Option<Packet>),
    Accepted(Accepted),
}

/// A PUBLISH accepted for the log.
struct Accepted {
    qos: QoS,
    pkid: u16,
    message: Message,
    record: NewRecord,
}

/// Records a persistent session's QoS 2 exchange before its append: a gateway that finds the entry
/// after a crash looks for this record's id from its timestamp on, so the record gets both now.
async fn record_exchange(
    bridge: &Bridge,
    client: &Client,
    session: &str,
    pkid: u16,
    record: &mut NewRecord,
    kafka_topic: &str,
    mqtt_topic: &str,
) -> std::result::Result<RecordedExchange, Refusal> {
    let now = now_ms();
    if record.courier_id.is_empty() {
        record.courier_id = Ulid::new().to_string();
    }
    record.timestamp_ms = Some(now);
    let received = Received {
        session: session.to_owned(),
        courier_id: record.courier_id.clone(),
        timestamp_ms: now,
        kafka_topic: kafka_topic.to_owned(),
        key: mqtt_topic.to_owned(),
    };
    let entry = bridge
        .exchanges
        .received(&client.client_id, pkid, received)
        .await
        .map_err(|error| {
            Refusal::new(
                RefusalCode::Unspecified,
                format!("could not record the QoS 2 exchange: {error}"),
            )
        })?;
    Ok(RecordedExchange {
        exchanges: bridge.exchanges.clone(),
        client_id: client.client_id.clone(),
        pkid,
        entry,
    })
}

/// A persistent session's QoS 2 message whose exchange entry was queued before its append.
struct RecordedExchange {
    exchanges: ExchangeStore,
    client_id: String,
    pkid: u16,
    /// The entry's receipt.
    entry: AppendReceipt,
}

impl RecordedExchange {
    /// The message is stored: PUBREC may go once the entry is durable too. An entry that failed
    /// leaves the exchange to this connection's memory, as for a session that is not persistent.
    async fn stored(self) {
        if let Err(error) = self.entry.await {
            tracing::warn!(%error, pkid = self.pkid, "the QoS 2 entry of a stored message was not recorded");
        }
    }

    /// The append was refused: the exchange ends with the refusal, and the client may use the packet
    /// id for a new message, which the entry must not be mistaken for after a reconnect.
    async fn refused(self) {
        // Its outcome does not matter: the deletion is queued after it either way.
        let _ = self.entry.await;
        if let Err(error) = self
            .exchanges
            .finished(&self.client_id, Direction::In, self.pkid)
            .await
        {
            tracing::warn!(%error, pkid = self.pkid, "could not delete the entry of a refused QoS 2 message");
        }
    }
}

/// Answers a refused publish. MQTT 5 says why in PUBACK/PUBREC; QoS 0 and MQTT 3.1.1 have no such
/// answer, so the connection closes (an unacknowledged 3.1.1 publish is sent again on reconnect).
fn refuse(client: &Client, qos: QoS, pkid: u16, refusal: Refusal) -> Result<Option<Packet>> {
    match (client.version, qos) {
        (Version::V5, QoS::AtLeastOnce) => Ok(Some(puback(
            pkid,
            refusal.code.puback(),
            client.ack_reason(refusal.text),
        ))),
        (Version::V5, QoS::ExactlyOnce) => Ok(Some(pubrec(
            pkid,
            refusal.code.pubrec(),
            client.ack_reason(refusal.text),
        ))),
        _ => Err(Error::Refused(refusal)),
    }
}

/// Answers a publish the policy does not allow (the authorizer counted and logged it); nothing is
/// stored. MQTT 5 says so with 0x87, which ends a QoS 2 exchange at PUBREC. QoS 0 has no answer,
/// and MQTT 3.1.1 no code to say it with: acknowledged as usual, the message is dropped.
fn denied(client: &Client, qos: QoS, pkid: u16, denial: &courier_gateway::Error) -> Option<Packet> {
    let reason = || client.ack_reason(denial.to_string());
    match (client.version, qos) {
        (_, QoS::AtMostOnce) => None,
        (Version::V5, QoS::AtLeastOnce) => {
            Some(puback(pkid, PubAckReason::NotAuthorized, reason()))
        }
        (Version::V5, QoS::ExactlyOnce) => {
            Some(pubrec(pkid, PubRecReason::NotAuthorized, reason()))
        }
        (Version::V4, QoS::AtLeastOnce) => Some(puback(pkid, PubAckReason::Success, None)),
        // Not remembered as awaiting release: the PUBREL that follows is answered with PUBCOMP
        // all the same (3.1.1's has no reason code), and a retransmission is decided again.
        (Version::V4, QoS::ExactlyOnce) => Some(pubrec(pkid, PubRecReason::Success, None)),
    }
}

fn puback(pkid: u16, reason: PubAckReason, text: Option<String>) -> Packet {
    Packet::PubAck(
        PubAck { pkid, reason },
        text.map(|text| PubAckProperties {
            reason_string: Some(text),
            user_properties: Vec::new(),
        }),
    )
}

fn pubrec(pkid: u16, reason: PubRecReason, text: Option<String>) -> Packet {
    Packet::PubRec(
        PubRec { pkid, reason },
        text.map(|text| PubRecProperties {
            reason_string: Some(text),
            user_properties: Vec::new(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use courier_gateway::auth::Principal;

    use super::*;

    fn client(version: Version) -> Client {
        Client {
            client_id: "c".into(),
            version,
            keep_alive: 30,
            receive_maximum: 10,
            max_packet_size: None,
            problem_info: true,
            principal: Arc::new(Principal::anonymous()),
        }
    }

    #[test]
    fn a_denied_publish_is_answered_as_each_version_can() {
        let denial = courier_gateway::Error::Forbidden {
            principal: "anonymous".into(),
            action: "produce",
            resource: "MQTT topic \"x\"".into(),
            reason: "no rule of the policy allows it".into(),
        };
        let v5 = client(Version::V5);
        match denied(&v5, QoS::AtLeastOnce, 1, &denial) {
            Some(Packet::PubAck(ack, Some(properties))) => {
                assert_eq!(ack.reason, PubAckReason::NotAuthorized);
                assert!(properties.reason_string.is_some());
            }
            other => panic!("expected PUBACK 0x87, got {other:?}"),
        }
        assert!(matches!(
            denied(&v5, QoS::ExactlyOnce, 2, &denial),
            Some(Packet::PubRec(
                PubRec {
                    pkid: 2,
                    reason: PubRecReason::NotAuthorized
                },
                _
            ))
        ));
        assert!(denied(&v5, QoS::AtMostOnce, 0, &denial).is_none());
        // 3.1.1: acknowledged as usual (the message is not stored).
        let v311 = client(Version::V4);
        assert!(matches!(
            denied(&v311, QoS::AtLeastOnce, 3, &denial),
            Some(Packet::PubAck(
                PubAck {
                    pkid: 3,
                    reason: PubAckReason::Success
                },
                None
            ))
        ));
        assert!(matches!(
            denied(&v311, QoS::ExactlyOnce, 4, &denial),
            Some(Packet::PubRec(
                PubRec {
                    pkid: 4,
                    reason: PubRecReason::Success
                },
                None
            ))
        ));
        assert!(denied(&v311, QoS::AtMostOnce, 0, &denial).is_none());
    }
}
