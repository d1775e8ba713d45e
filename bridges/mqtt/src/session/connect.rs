//! The CONNECT handshake: version, client id, credentials, session lookup and takeover, CONNACK.

use std::time::Duration;

use courier_gateway::{auth::Verdict, log::now_ms};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill,
    LastWillProperties, Login, Packet, PublishProperties,
};
use tokio::io::{AsyncRead, AsyncWrite};
use ulid::Ulid;

use crate::{
    bridge::Bridge,
    codec::Version,
    connection::Connection,
    error::{Error, Result},
    exchanges::{Direction, ExchangeStore, Received, RecordAt},
    mapping::{self, Message},
    registry::Registration,
    sessions::SessionRecord,
};

/// Bytes a small packet spends around its reason string: fixed header, packet id, reason code,
/// property lengths and the string's own header.
const REASON_OVERHEAD: usize = 16;

/// How long a takeover waits for the previous connection here to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The facts of a connected client that do not change while it is connected.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) client_id: String,
    pub(crate) version: Version,
    pub(crate) keep_alive: u16,
    /// Most messages the client takes unacknowledged.
    pub(crate) receive_maximum: u16,
    /// Largest packet the client takes.
    pub(crate) max_packet_size: Option<u32>,
    /// MQTT 5 Request Problem Information: 0 asks for no reason strings on acknowledgements.
    pub(crate) problem_info: bool,
}

impl Client {
    /// The reason string to put in a PUBACK or PUBREC: none when the client asked for no problem
    /// information [MQTT-3.1.2-29], or when it would make the packet larger than the client takes.
    pub(crate) fn ack_reason(&self, text: String) -> Option<String> {
        self.problem_info
            .then_some(text)
            .and_then(|text| self.fitting(text))
    }

    /// `text` as a reason string, if a small packet carrying it stays within the client's Maximum
    /// Packet Size [MQTT-3.1.2-24]: the packet goes out without it rather than not at all.
    pub(crate) fn fitting(&self, text: String) -> Option<String> {
        let fits = self
            .max_packet_size
            .is_none_or(|max| text.len() + REASON_OVERHEAD <= max as usize);
        fits.then_some(text)
    }
}

/// A last will, published when the connection ends without a normal DISCONNECT.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) message: Message,
    pub(crate) delay: Duration,
}

/// A connection past CONNACK.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) client: Client,
    pub(crate) session: SessionRecord,
    pub(crate) session_present: bool,
    pub(crate) registration: Registration,
    pub(crate) will: Option<Will>,
    /// QoS 2 packet ids the client has yet to release (from the resumed session).
    pub(crate) awaiting_release: Vec<u16>,
    /// QoS 2 messages delivered, acknowledged with PUBREC and not completed (from the resumed
    /// session): PUBREL is sent again for each, and its record is not delivered again.
    pub(crate) awaiting_completion: Vec<(u16, Option<RecordAt>)>,
}

/// Reads CONNECT and answers it. `Ok(None)`: the client was refused with a CONNACK saying why.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Bridge,
    connection: &mut Connection<S>,
) -> Result<Option<Established>> {
    let frame =
        match tokio::time::timeout(bridge.config.connect_timeout, connection.read_frame()).await {
            Err(_) => {
                return Err(Error::Protocol(format!(
                    "no CONNECT within {:?} (mqtt.connect_timeout)",
                    bridge.config.connect_timeout
                )));
            }
            Ok(Err(Error::UnsupportedProtocol(level))) => {
                refuse(
                    connection,
                    ConnectReturnCode::RefusedProtocolVersion,
                    "",
                    None,
                )
                .await?;
                return Err(Error::UnsupportedProtocol(level));
            }
            Ok(frame) => frame?,
        };
    let Some(frame) = frame else {
        return Ok(None);
    };
    let Packet::Connect(connect, properties, will, will_properties, login) = frame.packet else {
        return Err(Error::Protocol("the first packet must be CONNECT".into()));
    };
    let version = connection.version().unwrap_or(Version::V4);
    let Connect {
        keep_alive: requested_keep_alive,
        client_id,
        clean_session,
    } = connect;
    let properties = properties.unwrap_or(ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    });

    if let Some((code, reason)) = connect_violation(&properties, &client_id, login.as_ref()) {
        refuse(connection, code, reason, properties.max_packet_size).await?;
        return Ok(None);
    }
    if properties.authentication_method.is_some() {
        refuse(
            connection,
            ConnectReturnCode::BadAuthenticationMethod,
            "enhanced authentication is not supported; use a username and password",
            properties.max_packet_size,
        )
        .await?;
        return Ok(None);
    }
    let assigned_id = client_id
        .is_empty()
        .then(|| format!("courier-{}", Ulid::new()));
    if assigned_id.is_some() && version == Version::V4 && !clean_session {
        refuse(
            connection,
            ConnectReturnCode::ClientIdentifierNotValid,
            "an empty client id needs a clean session",
            properties.max_packet_size,
        )
        .await?;
        return Ok(None);
    }
    let client_id = assigned_id.clone().unwrap_or(client_id);

    let login = login.map(|Login { username, password }| (username, password));
    match bridge.auth.check(login).await {
        Verdict::Allowed => {}
        Verdict::AnonymousRefused => {
            refuse(
                connection,
                ConnectReturnCode::NotAuthorized,
                "anonymous clients are not allowed; connect with a username and password",
                properties.max_packet_size,
            )
            .await?;
            return Ok(None);
        }
        Verdict::BadCredentials => {
            refuse(
                connection,
                ConnectReturnCode::BadUserNamePassword,
                "unknown user or wrong password",
                properties.max_packet_size,
            )
            .await?;
            return Ok(None);
        }
    }

    let will = match will.map(|will| to_will(will, will_properties)).transpose() {
        Ok(will) => will,
        Err(text) => {
            refuse(
                connection,
                ConnectReturnCode::TopicNameInvalid,
                &text,
                properties.max_packet_size,
            )
            .await?;
            return Ok(None);
        }
    };

    // Session lifetime: MQTT 5 names an expiry; 3.1.1 keeps a non-clean session until it is cleaned.
    let requested_expiry = match version {
        Version::V5 => properties.session_expiry_interval.unwrap_or(0),
        Version::V4 if clean_session => 0,
        Version::V4 => u32::MAX,
    };
    let max_expiry = bridge.config.max_session_expiry.as_secs();
    let expiry = if max_expiry > 0 {
        requested_expiry.min(u32::try_from(max_expiry).unwrap_or(u32::MAX))
    } else {
        requested_expiry
    };
    let now = now_ms();
    let previous = bridge.sessions.load(&client_id).await?;
    // Only persistent sessions keep QoS 2 exchanges in the log (see `exchanges`).
    let may_have_exchanges = previous
        .as_ref()
        .is_some_and(|previous| previous.persistent);
    let resumed = previous.filter(|previous| !clean_session && previous.is_resumable(now));
    let session_present = resumed.is_some();
    // A resumed session is read through its groups and delivers what it queued, whatever expiry this
    // CONNECT names: the new one (0 when absent) decides only what happens once this connection
    // ends [MQTT-3.1.2-4, 3.1.2-23]. An expiry of 0 ends it then (see `Session::finish`).
    let persistent = expiry > 0 || session_present;
    let session = SessionRecord {
        connection: Ulid::new().to_string(),
        session: resumed.as_ref().map_or_else(
            || Ulid::new().to_string(),
            |previous| previous.session.clone(),
        ),
        persistent,
        expiry_secs: (expiry != u32::MAX).then_some(expiry),
        disconnected_at_ms: None,
        subscriptions: resumed
            .as_ref()
            .map(|previous| previous.subscriptions.clone())
            .unwrap_or_default(),
        awaiting_release: resumed
            .as_ref()
            .map(|previous| previous.awaiting_release.clone())
            .unwrap_or_default(),
    };
    // The record is the fence: once it is durable, every replica hands the client id to this connection.
    let offset = bridge.sessions.save(&client_id, &session).await?;
    let (registration, predecessor) =
        bridge
            .registry
            .register(&client_id, &session.connection, offset);
    if let Some(predecessor) = predecessor {
        let _ = tokio::time::timeout(TAKEOVER_WAIT, predecessor.cancelled()).await;
    }
    let mut awaiting_release = session.awaiting_release.clone();
    if session_present
        && let Some(parked) = bridge.registry.take_parked(&client_id, &session.session)
    {
        awaiting_release = parked;
    }
    let mut awaiting_completion = Vec::new();
    if may_have_exchanges {
        let resumed_session = session_present.then_some(session.session.as_str());
        settle_exchanges(
            bridge,
            &client_id,
            resumed_session,
            &mut awaiting_release,
            &mut awaiting_completion,
        )
        .await?;
    }

    let keep_alive = served_keep_alive(version, requested_keep_alive, bridge.config.max_keep_alive);
    let connack_properties = (version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
        server_keep_alive: (keep_alive != requested_keep_alive).then_some(keep_alive),
        receive_max: Some(bridge.config.receive_maximum),
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: Some(bridge.config.max_packet_size),
        assigned_client_identifier: assigned_id,
        topic_alias_max: Some(bridge.config.topic_alias_maximum),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        ..ConnAckProperties::default()
    });
    connection.queue(Packet::ConnAck(
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
        },
        connack_properties,
    ))?;
    connection.flush().await?;

    Ok(Some(Established {
        client: Client {
            client_id,
            version,
            keep_alive,
            receive_maximum: properties
                .receive_maximum
                .unwrap_or(bridge.config.max_inflight),
            max_packet_size: properties.max_packet_size,
            problem_info: properties.request_problem_info != Some(0),
        },
        session,
        session_present,
        registration,
        will,
        awaiting_release,
        awaiting_completion,
    }))
}

/// What the spec forbids in a CONNECT that the decoder reads without complaint: U+0000 in a string
/// makes the packet malformed [MQTT-1.5.4-2]; a Receive Maximum or Maximum Packet Size of 0 is a
/// Protocol Error [MQTT 5 §3.1.2.11.3, §3.1.2.11.4].
fn connect_violation(
    properties: &ConnectProperties,
    client_id: &str,
    login: Option<&Login>,
) -> Option<(ConnectReturnCode, &'static str)> {
    let user_properties = properties.user_properties.iter();
    let has_nul = client_id.contains('\0')
        || login.is_some_and(|login| login.username.contains('\0'))
        || user_properties
            .clone()
            .any(|(key, value)| key.contains('\0') || value.contains('\0'));
    if has_nul {
        return Some((
            ConnectReturnCode::MalformedPacket,
            "a string in CONNECT holds U+0000",
        ));
    }
    if properties.receive_maximum == Some(0) {
        return Some((
            ConnectReturnCode::ProtocolError,
            "Receive Maximum must not be 0",
        ));
    }
    if properties.max_packet_size == Some(0) {
        return Some((
            ConnectReturnCode::ProtocolError,
            "Maximum Packet Size must not be 0",
        ));
    }
    None
}

/// The keep-alive the connection is held to: the client's, within `mqtt.max_keep_alive`. An MQTT 5
/// client asking for more, or for none, is told the limit in CONNACK [MQTT-3.2.2-21]; an MQTT 3.1.1
/// client cannot be told, so one asking for more is held to the limit and one asking for none is not
/// checked (it would be dropped for a silence it was never asked to break).
fn served_keep_alive(version: Version, requested: u16, limit: Duration) -> u16 {
    let limit = u16::try_from(limit.as_secs()).unwrap_or(u16::MAX);
    if limit == 0 {
        return requested;
    }
    match version {
        Version::V5 if requested == 0 || requested > limit => limit,
        Version::V4 if requested > limit => limit,
        _ => requested,
    }
}

/// Takes on the QoS 2 exchanges a resumed session left unfinished on another replica or in a gateway
/// that crashed, and deletes those of a session that is not resumed (a clean start, an expiry).
async fn settle_exchanges(
    bridge: &Bridge,
    client_id: &str,
    resumed_session: Option<&str>,
    awaiting_release: &mut Vec<u16>,
    awaiting_completion: &mut Vec<(u16, Option<RecordAt>)>,
) -> Result<()> {
    let store = &bridge.exchanges;
    let unfinished = store.unfinished(client_id).await?;
    for (pkid, received) in unfinished.received {
        let keep = Some(received.session.as_str()) == resumed_session
            && (awaiting_release.contains(&pkid) || was_appended(store, &received).await);
        if keep {
            if !awaiting_release.contains(&pkid) {
                tracing::debug!(
                    pkid,
                    "a QoS 2 message stored before the client came back awaits release"
                );
                awaiting_release.push(pkid);
            }
        } else {
            store.finished(client_id, Direction::In, pkid).await?;
        }
    }
    for (pkid, delivered) in unfinished.delivered {
        if Some(delivered.session.as_str()) == resumed_session {
            awaiting_completion.push((pkid, delivered.record));
        } else {
            store.finished(client_id, Direction::Out, pkid).await?;
        }
    }
    Ok(())
}

/// Was an inherited QoS 2 message appended? When that cannot be told (its Kafka topic is gone, the
/// log fails), the answer is no: a retransmission is then stored again, a duplicate at worst, and a
/// client is not locked out by an entry nobody can check.
async fn was_appended(store: &ExchangeStore, received: &Received) -> bool {
    store.was_appended(received).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "could not look for an inherited QoS 2 message; it counts as not stored");
        false
    })
}

/// Answers CONNECT with a refusal. MQTT 3.1.1 has six return codes; the others map onto them.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    code: ConnectReturnCode,
    reason: &str,
    max_packet_size: Option<u32>,
) -> Result<()> {
    tracing::info!(?code, reason, "refusing a connection");
    let v5 = connection.version() == Some(Version::V5);
    let code = if v5 {
        match code {
            ConnectReturnCode::RefusedProtocolVersion => {
                ConnectReturnCode::UnsupportedProtocolVersion
            }
            code => code,
        }
    } else {
        match code {
            ConnectReturnCode::RefusedProtocolVersion
            | ConnectReturnCode::ClientIdentifierNotValid
            | ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized => code,
            ConnectReturnCode::BadAuthenticationMethod => ConnectReturnCode::NotAuthorized,
            _ => ConnectReturnCode::ServiceUnavailable,
        }
    };
    // No reason string that would make the CONNACK larger than the client takes [MQTT-3.2.2-19].
    let fits = max_packet_size.is_none_or(|max| reason.len() + REASON_OVERHEAD <= max as usize);
    let properties = (v5 && !reason.is_empty() && fits).then(|| ConnAckProperties {
        reason_string: Some(reason.to_owned()),
        ..ConnAckProperties::default()
    });
    connection.queue(Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        properties,
    ))?;
    connection.close().await?;
    connection.linger().await;
    Ok(())
}

fn to_will(will: LastWill, properties: Option<LastWillProperties>) -> Result<Will, String> {
    let topic = String::from_utf8(will.topic.to_vec())
        .ok()
        .filter(|topic| mapping::valid_topic_name(topic) && !mapping::reserved_topic(topic))
        .ok_or("the will topic is not a valid topic name")?;
    let properties = properties.unwrap_or(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    });
    Ok(Will {
        message: Message {
            topic,
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            properties: PublishProperties {
                payload_format_indicator: properties.payload_format_indicator,
                message_expiry_interval: properties.message_expiry_interval,
                content_type: properties.content_type,
                response_topic: properties.response_topic,
                correlation_data: properties.correlation_data,
                user_properties: properties.user_properties,
                ..PublishProperties::default()
            },
        },
        delay: Duration::from_secs(u64::from(properties.delay_interval.unwrap_or(0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_held_to_the_servers_limit() {
        let limit = Duration::from_secs(300);
        assert_eq!(served_keep_alive(Version::V5, 30, limit), 30);
        assert_eq!(served_keep_alive(Version::V5, 0, limit), 300);
        assert_eq!(served_keep_alive(Version::V5, 65535, limit), 300);
        assert_eq!(served_keep_alive(Version::V4, 65535, limit), 300);
        assert_eq!(served_keep_alive(Version::V4, 0, limit), 0);
        assert_eq!(served_keep_alive(Version::V5, 0, Duration::ZERO), 0);
    }

    fn client(max_packet_size: Option<u32>, problem_info: bool) -> Client {
        Client {
            client_id: "c".into(),
            version: Version::V5,
            keep_alive: 30,
            receive_maximum: 10,
            max_packet_size,
            problem_info,
        }
    }

    #[test]
    fn reason_strings_respect_problem_information_and_packet_size() {
        let text = || "x".repeat(100);
        assert_eq!(client(None, true).ack_reason(text()), Some(text()));
        assert_eq!(client(None, false).ack_reason(text()), None);
        assert_eq!(client(Some(64), true).ack_reason(text()), None);
        assert_eq!(client(Some(200), true).ack_reason(text()), Some(text()));
        // DISCONNECT may carry one whatever problem information says, if it fits.
        assert_eq!(client(None, false).fitting(text()), Some(text()));
        assert_eq!(client(Some(64), false).fitting(text()), None);
    }
}
