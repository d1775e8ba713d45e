//! The CONNECT decision, without I/O: whether a client is let in and under which client id, with
//! which will, which session it runs (resumed or new) and what CONNACK says. `connect.rs` reads the
//! packet, checks the credentials, loads and stores the session record and writes the answer around
//! these functions.
//!
//! Refusals of who the client is (MQTT 5 code, MQTT 3.1.1 code):
//! - credentials that do not verify (wrong password, unknown user, a bad or expired token, a token
//!   where none are accepted): 0x86 Bad User Name or Password, 0x04;
//! - no credentials where they are required, or from a host anonymous clients are not served from;
//!   a will the policy does not let the client publish; a client id whose session or live
//!   connection is another principal's: 0x87 Not authorized, 0x05;
//! - too many password checks waiting: 0x89 Server busy, 0x03 Server unavailable;
//! - too many of the address's logins waiting (its failures' delays, its turn): 0x9F
//!   Connection rate exceeded, 0x03 Server unavailable.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use courier_gateway::{
    auth::{Credentials, Failure, Principal, policy::Subject},
    metrics::{self, Protocol},
};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill,
    LastWillProperties, Login, Packet, Protocol as _, PublishProperties, v5::V5,
};

use crate::{
    codec::Version,
    config::Config,
    mapping::{self, Message},
    store::sessions::{SessionRecord, SessionStore},
};

/// Bytes a small packet spends around its reason string: fixed header, packet id, reason code,
/// property lengths and the string's own header.
pub(crate) const REASON_OVERHEAD: usize = 16;

/// A decoded CONNECT. Its `Debug` leaves the password out.
pub(crate) struct ConnectRequest {
    pub(crate) version: Version,
    pub(crate) connect: Connect,
    pub(crate) properties: ConnectProperties,
    pub(crate) will: Option<LastWill>,
    pub(crate) will_properties: Option<LastWillProperties>,
    pub(crate) login: Option<Login>,
}

impl std::fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("version", &self.version)
            .field("client_id", &self.connect.client_id)
            .field("keep_alive", &self.connect.keep_alive)
            .field("clean_session", &self.connect.clean_session)
            .field("will", &self.will.as_ref().map(|will| &will.topic))
            .field(
                "username",
                &self.login.as_ref().map(|login| &login.username),
            )
            .finish_non_exhaustive()
    }
}

/// The properties of a CONNECT that carries none (every MQTT 3.1.1 one).
pub(crate) fn no_properties() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

/// A refused CONNECT: the CONNACK's code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ConnectReturnCode,
    pub(crate) reason: String,
}

impl Refusal {
    fn new(code: ConnectReturnCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

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
    /// Who the client authenticated as (by CONNECT's credentials, or by the verified TLS client
    /// certificate, which the connection's span names): the policy decides its publishes and
    /// subscriptions, and its persistent session is this principal's.
    pub(crate) principal: Arc<Principal>,
}

impl Client {
    /// The client as the policy sees it: its principal, and its client id for `%c`.
    pub(crate) fn subject(&self) -> Subject<'_> {
        Subject {
            principal: &self.principal,
            client_id: Some(&self.client_id),
        }
    }

    /// The account the client's retained messages count against: its principal, or, anonymous, its
    /// client id (see [`Principal::account_key`]).
    pub(crate) fn account(&self) -> String {
        self.principal
            .account_key(Some(&self.client_id), None)
            .to_string()
    }

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
        fits(self.max_packet_size, &text).then_some(text)
    }
}

fn fits(max_packet_size: Option<u32>, reason: &str) -> bool {
    max_packet_size.is_none_or(|max| reason.len() + REASON_OVERHEAD <= max as usize)
}

/// What CONNECT's user name and password present: a password (which may be a JWT, verified as a
/// token where tokens are accepted), as sent; MQTT 5 allows a password without a user name. No
/// login is no credentials (a client certificate, if any, is looked at then).
pub(crate) fn credentials(login: Option<Login>) -> Credentials {
    match login {
        None => Credentials::None,
        Some(Login { username, password }) => Credentials::Password {
            username: (!username.is_empty()).then_some(username),
            password: password.into_bytes(),
        },
    }
}

/// The refusal of a client whose credentials did not let it in.
pub(crate) fn authentication_refusal(failure: Failure) -> Refusal {
    let code = match failure {
        Failure::BadCredentials | Failure::TokensNotAccepted | Failure::Token(_) => {
            ConnectReturnCode::BadUserNamePassword
        }
        Failure::AnonymousRefused | Failure::NotLoopback => ConnectReturnCode::NotAuthorized,
        Failure::Busy => ConnectReturnCode::ServerBusy,
        Failure::Throttled => ConnectReturnCode::ConnectionRateExceeded,
    };
    Refusal::new(code, failure.to_string())
}

/// The refusal of a client whose will the policy does not let it publish: it could otherwise
/// publish there by connecting and dropping the connection.
pub(crate) fn will_refusal(denial: &courier_gateway::Error) -> Refusal {
    Refusal::new(
        ConnectReturnCode::NotAuthorized,
        format!("the will may not be published: {denial}"),
    )
}

/// Whether `principal` may have `client_id`'s session: not when the session record says another
/// principal's connection is live (a record with no disconnection time) or its persistent session
/// is still within its expiry. Such a client is refused before its own record is written (the
/// fence), so the owner's connection is not taken over and its session is not handed out. Records
/// written before sessions had owners name none: such a session is owned by whoever connects
/// next. Admins may take any client id.
pub(crate) fn check_owner(
    principal: &Principal,
    is_admin: bool,
    previous: Option<&SessionRecord>,
    now_ms: i64,
) -> Result<(), Refusal> {
    let Some(previous) = previous else {
        return Ok(());
    };
    let Some(owner) = previous.owner.as_deref() else {
        return Ok(());
    };
    let held = previous.disconnected_at_ms.is_none() || previous.is_resumable(now_ms);
    if !held || owner == principal.name || is_admin {
        return Ok(());
    }
    Err(Refusal::new(
        ConnectReturnCode::NotAuthorized,
        "the client id is in use by another user's session",
    ))
}

/// Whether `principal` (an admin when `is_admin`) may keep `session`, about to be written for
/// `client_id`, within `cap` sessions (`mqtt.max_sessions_per_principal`, 0: no limit): a session
/// that ends with its connection always may, as may a reconnect to one's own session, anonymous
/// clients (each client id its own account) and admins.
pub(crate) fn check_sessions(
    sessions: &SessionStore,
    cap: u64,
    (principal, is_admin): (&Principal, bool),
    client_id: &str,
    session: &SessionRecord,
    now_ms: i64,
) -> Result<(), Refusal> {
    if cap == 0
        || !session.outlives_connection()
        || principal.is_anonymous()
        || is_admin
        || sessions.within_cap(&principal.name, client_id, cap, now_ms)
    {
        return Ok(());
    }
    metrics::limit_refused(Protocol::Mqtt, "max_sessions_per_principal");
    Err(Refusal::new(
        ConnectReturnCode::QuotaExceeded,
        format!(
            "{} keeps its limit of {cap} sessions (mqtt.max_sessions_per_principal); connect \
             with a session expiry of 0, or end one of its sessions",
            principal.name
        ),
    ))
}

/// A last will, published when the connection ends without a normal DISCONNECT.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) message: Message,
    pub(crate) delay: Duration,
}

/// What can be refused before the credentials are looked at (checking a password is costly, so a
/// malformed CONNECT must not get that far).
pub(crate) fn check_form(request: &ConnectRequest) -> Result<(), Refusal> {
    if let Some((code, reason)) = connect_violation(request) {
        return Err(Refusal::new(code, reason));
    }
    if request.properties.authentication_method.is_some() {
        return Err(Refusal::new(
            ConnectReturnCode::BadAuthenticationMethod,
            "enhanced authentication is not supported; use a username and password",
        ));
    }
    if request.connect.client_id.is_empty()
        && request.version == Version::V4
        && !request.connect.clean_session
    {
        return Err(Refusal::new(
            ConnectReturnCode::ClientIdentifierNotValid,
            "an empty client id needs a clean session",
        ));
    }
    Ok(())
}

/// What the spec forbids in a CONNECT that the decoder reads without complaint: U+0000 in a string
/// makes the packet malformed [MQTT-1.5.4-2]; a Receive Maximum or Maximum Packet Size of 0 is a
/// Protocol Error [MQTT 5 §3.1.2.11.3, §3.1.2.11.4].
fn connect_violation(request: &ConnectRequest) -> Option<(ConnectReturnCode, &'static str)> {
    let properties = &request.properties;
    let nul = |text: &str| text.contains('\0');
    let pairs_nul = |pairs: &[(String, String)]| pairs.iter().any(|(k, v)| nul(k) || nul(v));
    let will_nul = request
        .will
        .as_ref()
        .is_some_and(|will| will.topic.contains(&0))
        || request.will_properties.as_ref().is_some_and(|will| {
            will.content_type.as_deref().is_some_and(nul)
                || will.response_topic.as_deref().is_some_and(nul)
                || pairs_nul(&will.user_properties)
        });
    let has_nul = nul(&request.connect.client_id)
        || request
            .login
            .as_ref()
            .is_some_and(|login| nul(&login.username))
        || pairs_nul(&properties.user_properties)
        || will_nul;
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

/// A CONNECT let in.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) client_id: String,
    /// The id the server chose for a client that sent none (MQTT 5 is told it in CONNACK).
    pub(crate) assigned_id: Option<String>,
    pub(crate) will: Option<Will>,
    /// The session expiry the client asked for (3.1.1: 0 for a clean session, else forever).
    pub(crate) requested_expiry: u32,
    /// The one served, within `mqtt.max_session_expiry`; `u32::MAX` is forever.
    pub(crate) expiry: u32,
}

/// Lets an authenticated client in, or says why not: its client id, will and session expiry.
/// `fresh_id` names a client that sent no id.
pub(crate) fn admit(
    request: &ConnectRequest,
    config: &Config,
    fresh_id: impl FnOnce() -> String,
) -> Result<Admitted, Refusal> {
    let will = request
        .will
        .clone()
        .map(|will| to_will(will, request.will_properties.clone(), config.max_will_delay))
        .transpose()
        .map_err(|reason| Refusal::new(ConnectReturnCode::TopicNameInvalid, reason))?;
    let assigned_id = request.connect.client_id.is_empty().then(fresh_id);
    let client_id = assigned_id
        .clone()
        .unwrap_or_else(|| request.connect.client_id.clone());
    // Session lifetime: MQTT 5 names an expiry; 3.1.1 keeps a non-clean session until it is cleaned.
    let requested_expiry = match request.version {
        Version::V5 => request.properties.session_expiry_interval.unwrap_or(0),
        Version::V4 if request.connect.clean_session => 0,
        Version::V4 => u32::MAX,
    };
    let max_expiry = config.max_session_expiry.as_secs();
    let expiry = if max_expiry > 0 {
        requested_expiry.min(u32::try_from(max_expiry).unwrap_or(u32::MAX))
    } else {
        requested_expiry
    };
    Ok(Admitted {
        client_id,
        assigned_id,
        will,
        requested_expiry,
        expiry,
    })
}

/// The will as the gateway keeps it: its delay shortened to `max_delay` (`mqtt.max_will_delay`),
/// so a client cannot leave a will pending for its full 136 years.
fn to_will(
    will: LastWill,
    properties: Option<LastWillProperties>,
    max_delay: Duration,
) -> Result<Will, String> {
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
        delay: Duration::from_secs(u64::from(properties.delay_interval.unwrap_or(0)))
            .min(max_delay),
    })
}

/// The session a connection runs.
#[derive(Debug)]
pub(crate) struct SessionPlan {
    pub(crate) record: SessionRecord,
    /// Resumed: CONNACK's Session Present.
    pub(crate) present: bool,
    /// Only persistent sessions keep QoS 2 exchanges in the log (see `exchanges`), so only then is
    /// there anything to settle.
    pub(crate) may_have_exchanges: bool,
}

/// Resumes the previous session when the client asked to keep it and it has not expired, else starts
/// a new one (`new_session` names it). `connection` names this connection; `owner` is the principal
/// whose session it is (checked beforehand with [`check_owner`]).
pub(crate) fn plan_session(
    request: &ConnectRequest,
    admitted: &Admitted,
    previous: Option<SessionRecord>,
    now_ms: i64,
    connection: String,
    owner: &str,
    new_session: impl FnOnce() -> String,
) -> SessionPlan {
    let may_have_exchanges = previous
        .as_ref()
        .is_some_and(|previous| previous.persistent);
    let resumed =
        previous.filter(|previous| !request.connect.clean_session && previous.is_resumable(now_ms));
    let present = resumed.is_some();
    // A resumed session is read through its groups and delivers what it queued, whatever expiry this
    // CONNECT names: the new one (0 when absent) decides only what happens once this connection
    // ends [MQTT-3.1.2-4, 3.1.2-5, 3.1.2-23]. An expiry of 0 ends it then (see `Session::finish`).
    let persistent = admitted.expiry > 0 || present;
    let (session, subscriptions, awaiting_release) = match resumed {
        Some(previous) => (
            previous.session,
            previous.subscriptions,
            previous.awaiting_release,
        ),
        None => (new_session(), Vec::new(), Vec::new()),
    };
    SessionPlan {
        record: SessionRecord {
            connection,
            owner: Some(owner.to_owned()),
            session,
            persistent,
            expiry_secs: (admitted.expiry != u32::MAX).then_some(admitted.expiry),
            disconnected_at_ms: None,
            subscriptions,
            awaiting_release,
        },
        present,
        may_have_exchanges,
    }
}

/// The accepting CONNACK, and the client as the connection serves it, as `principal`.
pub(crate) fn accept(
    request: &ConnectRequest,
    admitted: &Admitted,
    session_present: bool,
    config: &Config,
    principal: Arc<Principal>,
) -> (Packet, Client) {
    let requested_keep_alive = request.connect.keep_alive;
    let keep_alive =
        served_keep_alive(request.version, requested_keep_alive, config.max_keep_alive);
    let properties = (request.version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: (admitted.expiry != admitted.requested_expiry)
            .then_some(admitted.expiry),
        server_keep_alive: (keep_alive != requested_keep_alive).then_some(keep_alive),
        receive_max: Some(config.receive_maximum),
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: Some(config.max_packet_size),
        assigned_client_identifier: admitted.assigned_id.clone(),
        topic_alias_max: Some(config.topic_alias_maximum),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        ..ConnAckProperties::default()
    });
    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    let properties = properties
        .map(|properties| within_packet_size(&ack, properties, request.properties.max_packet_size));
    let connack = Packet::ConnAck(ack, properties);
    let client = Client {
        client_id: admitted.client_id.clone(),
        version: request.version,
        keep_alive,
        receive_maximum: request
            .properties
            .receive_maximum
            .unwrap_or(config.max_inflight)
            .min(config.max_outbound_inflight),
        max_packet_size: request.properties.max_packet_size,
        problem_info: request.properties.request_problem_info != Some(0),
        principal,
    };
    (connack, client)
}

/// CONNACK's properties, left out one by one until the packet fits the client's Maximum Packet
/// Size [MQTT-3.1.2-24]: first those whose absence says the same (features available), then the
/// gateway's limits, which it holds the client to whether or not the client knows them (topic
/// aliases, receive maximum, maximum packet size). What the client must know stays however small it
/// is (its assigned client id, a session expiry or keep-alive other than it asked for): no client
/// library sets a maximum that low.
fn within_packet_size(
    ack: &ConnAck,
    mut properties: ConnAckProperties,
    max_packet_size: Option<u32>,
) -> ConnAckProperties {
    let Some(max_packet_size) = max_packet_size else {
        return properties;
    };
    let fits = |properties: &ConnAckProperties| {
        let mut packet = BytesMut::new();
        V5.write(
            Packet::ConnAck(ack.clone(), Some(properties.clone())),
            &mut packet,
        )
        .is_ok_and(|size| size <= max_packet_size as usize)
    };
    let optional: [fn(&mut ConnAckProperties); 7] = [
        |properties| properties.retain_available = None,
        |properties| properties.wildcard_subscription_available = None,
        |properties| properties.subscription_identifiers_available = None,
        |properties| properties.shared_subscription_available = None,
        |properties| properties.topic_alias_max = None,
        |properties| properties.receive_max = None,
        |properties| properties.max_packet_size = None,
    ];
    for leave_out in optional {
        if fits(&properties) {
            break;
        }
        leave_out(&mut properties);
    }
    properties
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

/// The CONNACK refusing a CONNECT. MQTT 3.1.1 has six return codes; the others map onto them, but a
/// malformed CONNECT or a protocol error gets none: 3.1.1 closes the connection without an answer
/// [MQTT-4.8.0-1], where "server unavailable" would invite the client to retry. A reason string is
/// left out when it would make the CONNACK larger than the client takes [MQTT-3.2.2-19].
pub(crate) fn refusal_connack(
    version: Option<Version>,
    refusal: &Refusal,
    max_packet_size: Option<u32>,
) -> Option<Packet> {
    let v5 = version == Some(Version::V5);
    if !v5
        && matches!(
            refusal.code,
            ConnectReturnCode::MalformedPacket | ConnectReturnCode::ProtocolError
        )
    {
        return None;
    }
    let code = if v5 {
        match refusal.code {
            ConnectReturnCode::RefusedProtocolVersion => {
                ConnectReturnCode::UnsupportedProtocolVersion
            }
            code => code,
        }
    } else {
        match refusal.code {
            code @ (ConnectReturnCode::RefusedProtocolVersion
            | ConnectReturnCode::ClientIdentifierNotValid
            | ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized) => code,
            ConnectReturnCode::BadAuthenticationMethod => ConnectReturnCode::NotAuthorized,
            _ => ConnectReturnCode::ServiceUnavailable,
        }
    };
    let reason = &refusal.reason;
    let properties =
        (v5 && !reason.is_empty() && fits(max_packet_size, reason)).then(|| ConnAckProperties {
            reason_string: Some(reason.clone()),
            ..ConnAckProperties::default()
        });
    Some(Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        properties,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sessions::StoredSubscription;

    fn request(version: Version, client_id: &str, clean: bool) -> ConnectRequest {
        ConnectRequest {
            version,
            connect: Connect {
                keep_alive: 30,
                client_id: client_id.into(),
                clean_session: clean,
            },
            properties: no_properties(),
            will: None,
            will_properties: None,
            login: None,
        }
    }

    fn admitted(request: &ConnectRequest) -> Admitted {
        admit(request, &Config::default(), || "fresh".into())
            .unwrap_or_else(|refusal| panic!("refused: {refusal:?}"))
    }

    fn code_of(result: Result<impl std::fmt::Debug, Refusal>) -> ConnectReturnCode {
        result
            .err()
            .map(|refusal| refusal.code)
            .unwrap_or(ConnectReturnCode::Success)
    }

    /// What a client chooses is held to the gateway's caps: its receive maximum (the messages the
    /// gateway holds in flight for it) and its will delay.
    #[test]
    fn a_clients_receive_maximum_and_will_delay_are_capped() {
        let config = Config::default();
        let mut asking = request(Version::V5, "c", true);
        asking.properties.receive_maximum = Some(u16::MAX);
        asking.will = Some(LastWill {
            topic: "gone/c".into(),
            message: "bye".into(),
            qos: rumqttd::protocol::QoS::AtLeastOnce,
            retain: false,
        });
        asking.will_properties = Some(LastWillProperties {
            delay_interval: Some(u32::MAX),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        });
        let let_in = admitted(&asking);
        assert_eq!(
            let_in.will.as_ref().map(|will| will.delay),
            Some(config.max_will_delay)
        );
        let (_, client) = accept(
            &asking,
            &let_in,
            false,
            &config,
            Arc::new(Principal::anonymous()),
        );
        assert_eq!(client.receive_maximum, config.max_outbound_inflight);
    }

    #[test]
    fn malformed_and_unsupported_connects_are_refused_before_credentials() {
        let mut zero = request(Version::V5, "c", true);
        zero.properties.receive_maximum = Some(0);
        assert_eq!(code_of(check_form(&zero)), ConnectReturnCode::ProtocolError);
        let mut zero = request(Version::V5, "c", true);
        zero.properties.max_packet_size = Some(0);
        assert_eq!(code_of(check_form(&zero)), ConnectReturnCode::ProtocolError);
        let nul = request(Version::V5, "a\0b", true);
        assert_eq!(
            code_of(check_form(&nul)),
            ConnectReturnCode::MalformedPacket
        );
        let mut enhanced = request(Version::V5, "c", true);
        enhanced.properties.authentication_method = Some("SCRAM-SHA-256".into());
        assert_eq!(
            code_of(check_form(&enhanced)),
            ConnectReturnCode::BadAuthenticationMethod
        );
        // 3.1.1 only: an empty id with a session to keep [MQTT-3.1.3-8].
        assert_eq!(
            code_of(check_form(&request(Version::V4, "", false))),
            ConnectReturnCode::ClientIdentifierNotValid
        );
        assert!(check_form(&request(Version::V5, "", false)).is_ok());
    }

    #[test]
    fn authentication_failures_have_their_connack_codes() {
        use courier_gateway::auth::jwt::JwtRefusal;
        let cases = [
            (
                Failure::BadCredentials,
                ConnectReturnCode::BadUserNamePassword,
                ConnectReturnCode::BadUserNamePassword,
            ),
            (
                Failure::TokensNotAccepted,
                ConnectReturnCode::BadUserNamePassword,
                ConnectReturnCode::BadUserNamePassword,
            ),
            (
                Failure::Token(JwtRefusal::Expired),
                ConnectReturnCode::BadUserNamePassword,
                ConnectReturnCode::BadUserNamePassword,
            ),
            (
                Failure::AnonymousRefused,
                ConnectReturnCode::NotAuthorized,
                ConnectReturnCode::NotAuthorized,
            ),
            (
                Failure::NotLoopback,
                ConnectReturnCode::NotAuthorized,
                ConnectReturnCode::NotAuthorized,
            ),
            (
                Failure::Busy,
                ConnectReturnCode::ServerBusy,
                ConnectReturnCode::ServiceUnavailable,
            ),
            (
                Failure::Throttled,
                ConnectReturnCode::ConnectionRateExceeded,
                ConnectReturnCode::ServiceUnavailable,
            ),
        ];
        for (failure, v5, v311) in cases {
            let refusal = authentication_refusal(failure);
            let (code, properties) = connack_of(refusal_connack(Some(Version::V5), &refusal, None));
            assert_eq!(code, v5, "{failure:?}");
            assert!(properties.is_some_and(|p| p.reason_string.is_some()));
            let (code, _) = connack_of(refusal_connack(Some(Version::V4), &refusal, None));
            assert_eq!(code, v311, "{failure:?}");
        }
        let denial = courier_gateway::Error::Forbidden {
            principal: "alice".into(),
            action: "produce",
            resource: "MQTT topic \"x\"".into(),
            reason: "no rule of the policy allows it".into(),
        };
        let refusal = will_refusal(&denial);
        for version in [Version::V5, Version::V4] {
            let (code, _) = connack_of(refusal_connack(Some(version), &refusal, None));
            assert_eq!(code, ConnectReturnCode::NotAuthorized);
        }
    }

    #[test]
    fn connects_login_becomes_credentials() {
        assert_eq!(credentials(None), Credentials::None);
        let login = |username: &str, password: &str| Login {
            username: username.into(),
            password: password.into(),
        };
        assert_eq!(
            credentials(Some(login("alice", "pa55"))),
            Credentials::Password {
                username: Some("alice".into()),
                password: b"pa55".to_vec()
            }
        );
        // MQTT 5: a password (a token, say) without a user name.
        assert_eq!(
            credentials(Some(login("", "a.b.c"))),
            Credentials::Password {
                username: None,
                password: b"a.b.c".to_vec()
            }
        );
    }

    #[test]
    fn a_session_held_by_another_principal_is_refused() {
        let alice = Principal::new("alice", Vec::new(), courier_gateway::auth::Source::Password);
        let bob = Principal::new("bob", Vec::new(), courier_gateway::auth::Source::Password);
        let owned = |disconnected_at_ms, persistent| SessionRecord {
            owner: Some("alice".into()),
            ..previous(persistent, disconnected_at_ms)
        };
        let code = |principal, admin, record: Option<&SessionRecord>| {
            code_of(check_owner(principal, admin, record, 2_000))
        };
        // Live (connected, here or on another replica), or kept within its expiry: alice's.
        for record in [
            owned(None, false),
            owned(None, true),
            owned(Some(1_000), true),
        ] {
            assert_eq!(
                code(&bob, false, Some(&record)),
                ConnectReturnCode::NotAuthorized
            );
            assert_eq!(
                code(&alice, false, Some(&record)),
                ConnectReturnCode::Success
            );
            assert_eq!(
                code(&bob, true, Some(&record)),
                ConnectReturnCode::Success,
                "admin"
            );
        }
        // Gone: a clean session that ended, an expired one; and records from before owners.
        let expired = owned(Some(1_000), true);
        assert_eq!(
            code_of(check_owner(&bob, false, Some(&expired), 61_001)),
            ConnectReturnCode::Success
        );
        assert_eq!(
            code(&bob, false, Some(&owned(Some(1_000), false))),
            ConnectReturnCode::Success
        );
        assert_eq!(
            code(&bob, false, Some(&previous(true, None))),
            ConnectReturnCode::Success
        );
        assert_eq!(code(&bob, false, None), ConnectReturnCode::Success);
        let refusal = check_owner(&bob, false, Some(&owned(None, false)), 0)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        let (v311, _) = connack_of(refusal_connack(Some(Version::V4), &refusal, None));
        assert_eq!(v311, ConnectReturnCode::NotAuthorized);
    }

    #[test]
    fn the_will_topic_and_client_id_decide_admission() {
        let config = Config::default();
        let fresh = || String::from("fresh");
        let mut bad_will = request(Version::V5, "c", true);
        bad_will.will = Some(LastWill {
            topic: "a/+".into(),
            message: "gone".into(),
            qos: rumqttd::protocol::QoS::AtLeastOnce,
            retain: false,
        });
        let refused = admit(&bad_will, &config, fresh);
        assert_eq!(code_of(refused), ConnectReturnCode::TopicNameInvalid);
        let unnamed = admitted(&request(Version::V5, "", true));
        assert_eq!(
            (unnamed.client_id.as_str(), unnamed.assigned_id.as_deref()),
            ("fresh", Some("fresh"))
        );
    }

    #[test]
    fn the_session_expiry_is_held_to_the_servers_limit() {
        let config = Config::default();
        let limit = u32::try_from(config.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
        let mut long = request(Version::V5, "c", false);
        long.properties.session_expiry_interval = Some(u32::MAX);
        let long = admitted(&long);
        assert_eq!((long.requested_expiry, long.expiry), (u32::MAX, limit));
        let kept = admitted(&request(Version::V4, "c", false));
        assert_eq!((kept.requested_expiry, kept.expiry), (u32::MAX, limit));
        let clean = admitted(&request(Version::V4, "c", true));
        assert_eq!(clean.expiry, 0);
    }

    fn previous(persistent: bool, disconnected_at_ms: Option<i64>) -> SessionRecord {
        SessionRecord {
            connection: "old-connection".into(),
            owner: None,
            session: "old-session".into(),
            persistent,
            expiry_secs: Some(60),
            disconnected_at_ms,
            subscriptions: vec![StoredSubscription {
                filter: "a/#".into(),
                qos: 1,
                no_local: false,
                retain_as_published: false,
                identifier: None,
                since_ms: 0,
            }],
            awaiting_release: vec![7],
        }
    }

    fn plan(request: &ConnectRequest, previous: Option<SessionRecord>, now_ms: i64) -> SessionPlan {
        plan_session(
            request,
            &admitted(request),
            previous,
            now_ms,
            "new-connection".into(),
            "alice",
            || "new-session".into(),
        )
    }

    #[test]
    fn a_kept_session_is_resumed_whatever_expiry_the_reconnect_names() {
        // Clean start 0 and no expiry (paho's default): resumed, and it ends with this connection.
        let resume = request(Version::V5, "c", false);
        let plan = plan(&resume, Some(previous(true, Some(1_000))), 2_000);
        assert!(plan.present && plan.may_have_exchanges);
        assert_eq!(plan.record.session, "old-session");
        assert_eq!(plan.record.connection, "new-connection");
        assert_eq!(plan.record.owner.as_deref(), Some("alice"));
        assert_eq!(plan.record.subscriptions.len(), 1);
        assert_eq!(plan.record.awaiting_release, vec![7]);
        assert!(plan.record.persistent && !plan.record.outlives_connection());
    }

    #[test]
    fn a_clean_start_or_an_expired_session_starts_anew() {
        let mut clean = request(Version::V5, "c", true);
        clean.properties.session_expiry_interval = Some(30);
        let fresh = plan(&clean, Some(previous(true, Some(1_000))), 2_000);
        assert!(!fresh.present && fresh.may_have_exchanges);
        assert_eq!(fresh.record.session, "new-session");
        assert!(fresh.record.subscriptions.is_empty() && fresh.record.outlives_connection());
        // Left at 1 s with a 60 s expiry: gone at 61 s.
        let expired = plan(
            &request(Version::V5, "c", false),
            Some(previous(true, Some(1_000))),
            61_001,
        );
        assert!(!expired.present);
        let unknown = plan(&request(Version::V5, "c", false), None, 0);
        assert!(!unknown.present && !unknown.may_have_exchanges && !unknown.record.persistent);
    }

    #[test]
    fn connack_tells_what_the_server_changed() {
        let config = Config::default();
        let mut asking = request(Version::V5, "", false);
        asking.connect.keep_alive = 0;
        asking.properties.session_expiry_interval = Some(u32::MAX);
        asking.properties.request_problem_info = Some(0);
        let let_in = admitted(&asking);
        let (connack, client) = accept(
            &asking,
            &let_in,
            false,
            &config,
            Arc::new(Principal::anonymous()),
        );
        let Packet::ConnAck(ack, Some(properties)) = connack else {
            panic!("an MQTT 5 CONNACK has properties")
        };
        assert_eq!(ack.code, ConnectReturnCode::Success);
        assert_eq!(
            properties.assigned_client_identifier.as_deref(),
            Some("fresh")
        );
        assert_eq!(properties.session_expiry_interval, Some(let_in.expiry));
        assert!(properties.server_keep_alive.is_some());
        assert_eq!(client.receive_maximum, config.max_inflight);
        assert!(!client.problem_info);
        let v311 = request(Version::V4, "c", true);
        let (connack, _) = accept(
            &v311,
            &admitted(&v311),
            true,
            &config,
            Arc::new(Principal::anonymous()),
        );
        assert!(matches!(
            connack,
            Packet::ConnAck(
                ConnAck {
                    session_present: true,
                    ..
                },
                None
            )
        ));
    }

    /// Found by the `session` fuzz target: the CONNACK assigning a client id was larger than a
    /// client with a small Maximum Packet Size takes [MQTT-3.1.2-24].
    #[test]
    fn connack_fits_the_clients_maximum_packet_size() {
        let config = Config::default();
        let mut asking = request(Version::V5, "", true);
        let let_in = admit(&asking, &config, || {
            "courier-01M920SP07BBF26V98WZ1NQY2Y".into()
        })
        .unwrap_or_else(|refusal| panic!("refused: {refusal:?}"));
        let size = |connack: &Packet| {
            let mut bytes = BytesMut::new();
            V5.write(connack.clone(), &mut bytes).unwrap()
        };
        let accepted = |asking: &ConnectRequest| {
            accept(
                asking,
                &let_in,
                false,
                &config,
                Arc::new(Principal::anonymous()),
            )
            .0
        };

        let everything = accepted(&asking);
        assert!(size(&everything) > 48, "{}", size(&everything));
        asking.properties.max_packet_size = Some(48);
        let trimmed = accepted(&asking);
        assert!(size(&trimmed) <= 48, "{}: {trimmed:?}", size(&trimmed));
        let Packet::ConnAck(_, Some(properties)) = trimmed else {
            panic!("no properties: {trimmed:?}")
        };
        assert_eq!(
            properties.assigned_client_identifier, let_in.assigned_id,
            "the assigned id stays"
        );
        assert_eq!(properties.wildcard_subscription_available, None);
        // Room for everything: nothing left out.
        asking.properties.max_packet_size = Some(1024);
        assert_eq!(accepted(&asking), everything);
    }

    fn connack_of(packet: Option<Packet>) -> (ConnectReturnCode, Option<ConnAckProperties>) {
        match packet {
            Some(Packet::ConnAck(ack, properties)) => (ack.code, properties),
            other => panic!("not a CONNACK: {other:?}"),
        }
    }

    #[test]
    fn refusals_map_onto_what_the_version_has() {
        let refusal = Refusal::new(ConnectReturnCode::BadAuthenticationMethod, "x".repeat(100));
        let (code, properties) = connack_of(refusal_connack(Some(Version::V4), &refusal, None));
        assert_eq!((code, properties), (ConnectReturnCode::NotAuthorized, None));
        let (code, properties) = connack_of(refusal_connack(Some(Version::V5), &refusal, None));
        assert_eq!(code, ConnectReturnCode::BadAuthenticationMethod);
        assert!(properties.is_some_and(|p| p.reason_string.is_some()));
        // Within a 64-byte limit the 100-byte reason is left out.
        let (_, properties) = connack_of(refusal_connack(Some(Version::V5), &refusal, Some(64)));
        assert!(properties.is_none());
        // 3.1.1 answers a malformed CONNECT by closing, not with "server unavailable".
        let malformed = Refusal::new(ConnectReturnCode::MalformedPacket, "");
        assert!(refusal_connack(Some(Version::V4), &malformed, None).is_none());
        assert!(refusal_connack(Some(Version::V5), &malformed, None).is_some());
    }

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
            principal: Arc::new(Principal::anonymous()),
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
