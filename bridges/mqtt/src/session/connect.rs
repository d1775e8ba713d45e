//! The CONNECT handshake's I/O: reads CONNECT, authenticates the client (its credentials, or the
//! TLS client certificate), checks its will against the policy, loads the previous session and
//! checks whose it is, makes the new session record the client id's fence, takes over from a
//! previous connection, settles unfinished QoS 2 exchanges and answers. What is decided (refusals, client id, will, session,
//! CONNACK) is in `admission.rs`, without I/O.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use courier_gateway::{
    auth::{
        Attempt,
        policy::{Action, Resource, Subject},
    },
    log::now_ms,
    tls::ClientIdentity,
};
use rumqttd::protocol::Packet;
use tokio::io::{AsyncRead, AsyncWrite};
use ulid::Ulid;

use super::admission::{self, Client, ConnectRequest, Refusal, Will};
use crate::{
    bridge::Bridge,
    connection::Connection,
    error::{Error, Result},
    store::{
        exchanges::{Direction, ExchangeStore, Received, RecordAt},
        sessions::SessionRecord,
    },
    takeover::Registration,
};

/// How long a takeover waits for the previous connection here to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

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
/// `certificate` is the verified TLS client certificate's identity, if any: the principal of a
/// client whose CONNECT carries no credentials.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Bridge,
    connection: &mut Connection<S>,
    peer: SocketAddr,
    certificate: Option<Box<ClientIdentity>>,
) -> Result<Option<Established>> {
    let Some(mut request) = read_connect(bridge, connection).await? else {
        return Ok(None);
    };
    let max_packet_size = request.properties.max_packet_size;
    if let Err(refusal) = admission::check_form(&request) {
        refuse(connection, &refusal, max_packet_size).await?;
        return Ok(None);
    }
    let credentials = admission::credentials(request.login.take());
    let attempt = Attempt {
        peer,
        credentials: &credentials,
        certificate: certificate.as_deref(),
    };
    // A failure is counted and logged as an audit event by the authenticator.
    let principal = match bridge.access.authenticator.authenticate(attempt).await {
        Ok(principal) => principal,
        Err(failure) => {
            let refusal = admission::authentication_refusal(failure);
            refuse(connection, &refusal, max_packet_size).await?;
            return Ok(None);
        }
    };
    let admitted = match admission::admit(&request, &bridge.config, || {
        format!("courier-{}", Ulid::new())
    }) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            refuse(connection, &refusal, max_packet_size).await?;
            return Ok(None);
        }
    };
    let client_id = admitted.client_id.clone();
    let authorizer = &bridge.access.authorizer;
    if let Some(will) = &admitted.will {
        let subject = Subject {
            principal: &principal,
            client_id: Some(&client_id),
        };
        let topic = Resource::MqttTopic(&will.message.topic);
        // A denial is counted and logged as an audit event by the authorizer.
        if let Err(denial) = authorizer.check("mqtt", subject, Action::Produce, topic) {
            refuse(
                connection,
                &admission::will_refusal(&denial),
                max_packet_size,
            )
            .await?;
            return Ok(None);
        }
    }
    // From reading the previous record until this connection's is written and registered, no
    // other handshake of this client id runs here: two principals connecting under one id at once
    // would otherwise both pass the owner check below. Across replicas nothing serialises them:
    // each reads the record it has, and if two connect within the session table's lag (the time
    // a record takes to reach the other replica) both may pass; the later record then takes the
    // client id from the earlier connection (the fence), so a principal could take over another's
    // live connection, or a session it did not own, in that window only.
    let turn = bridge.takeover.handshake(&client_id).await;
    let previous = bridge.sessions.load(&client_id).await?;
    let now = now_ms();
    // Before this connection's record is written: that record is the fence, which would take the
    // client id (and its live connection) from its owner.
    let is_admin = authorizer.is_admin(&principal);
    if let Err(refusal) = admission::check_owner(&principal, is_admin, previous.as_ref(), now) {
        tracing::warn!(
            target: "courier::audit",
            event = "session_ownership",
            outcome = "refused",
            protocol = "mqtt",
            principal = %principal.name,
            client_id,
            owner = previous.as_ref().and_then(|p| p.owner.as_deref()).unwrap_or("-"),
            "{}",
            refusal.reason
        );
        drop(turn);
        refuse(connection, &refusal, max_packet_size).await?;
        return Ok(None);
    }
    let plan = admission::plan_session(
        &request,
        &admitted,
        previous,
        now,
        Ulid::new().to_string(),
        &principal.name,
        || Ulid::new().to_string(),
    );
    let session = plan.record;
    // Within the principal's sessions (the load above caught the table up), before the record
    // that would keep one more.
    let cap = bridge.config.max_sessions_per_principal;
    if let Err(refusal) = admission::check_sessions(
        &bridge.sessions,
        cap,
        (&principal, is_admin),
        &client_id,
        &session,
        now,
    ) {
        drop(turn);
        refuse(connection, &refusal, max_packet_size).await?;
        return Ok(None);
    }
    // The record is the fence: once it is durable, every replica hands the client id to this connection.
    let version = bridge.sessions.save(&client_id, &session).await?;
    let (registration, predecessor) =
        bridge
            .takeover
            .register(&client_id, &session.connection, version.clone());
    if bridge
        .sessions
        .superseded(&client_id, &version, &session.connection)
    {
        registration.state.take_over();
    }
    drop(turn);
    if let Some(predecessor) = predecessor {
        let _ = tokio::time::timeout(TAKEOVER_WAIT, predecessor.finished()).await;
    }
    let mut awaiting_release = session.awaiting_release.clone();
    if plan.present
        && let Some(parked) = bridge.takeover.take_parked(&client_id, &session.session)
    {
        awaiting_release = parked;
    }
    let mut awaiting_completion = Vec::new();
    if plan.may_have_exchanges {
        let resumed_session = plan.present.then_some(session.session.as_str());
        settle_exchanges(
            bridge,
            &client_id,
            resumed_session,
            &mut awaiting_release,
            &mut awaiting_completion,
        )
        .await?;
    }

    let (connack, client) = admission::accept(
        &request,
        &admitted,
        plan.present,
        &bridge.config,
        Arc::new(principal),
    );
    connection.queue(connack)?;
    connection.flush().await?;
    Ok(Some(Established {
        client,
        session,
        session_present: plan.present,
        registration,
        will: admitted.will,
        awaiting_release,
        awaiting_completion,
    }))
}

/// Reads the first packet, which must be CONNECT, within `mqtt.connect_timeout`. An unsupported
/// protocol version is answered before the error returns; `Ok(None)` when the client left first.
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Bridge,
    connection: &mut Connection<S>,
) -> Result<Option<ConnectRequest>> {
    let frame =
        match tokio::time::timeout(bridge.config.connect_timeout, connection.read_frame()).await {
            Err(_) => {
                return Err(Error::Protocol(format!(
                    "no CONNECT within {:?} (mqtt.connect_timeout)",
                    bridge.config.connect_timeout
                )));
            }
            Ok(Err(Error::UnsupportedProtocol(level))) => {
                let refusal = Refusal {
                    code: rumqttd::protocol::ConnectReturnCode::RefusedProtocolVersion,
                    reason: String::new(),
                };
                refuse(connection, &refusal, None).await?;
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
    Ok(Some(ConnectRequest {
        version: connection.version().unwrap_or(crate::codec::Version::V4),
        connect,
        properties: properties.unwrap_or_else(admission::no_properties),
        will,
        will_properties,
        login,
    }))
}

/// Answers the CONNECT of a connection the limits refused (`[limits]`): CONNACK 0x9F Connection
/// rate exceeded or 0x97 Quota exceeded (MQTT 3.1.1: 3, server unavailable), then closes. Nothing
/// of the CONNECT is looked at but its version, so a refusal costs no password check.
pub(crate) async fn turn_away<S: AsyncRead + AsyncWrite + Unpin>(
    bridge: &Bridge,
    connection: &mut Connection<S>,
    limit: courier_gateway::limits::Refusal,
) -> Result<()> {
    let Some(request) = read_connect(bridge, connection).await? else {
        return Ok(());
    };
    let code = if limit.is_rate() {
        rumqttd::protocol::ConnectReturnCode::ConnectionRateExceeded
    } else {
        rumqttd::protocol::ConnectReturnCode::QuotaExceeded
    };
    let refusal = Refusal {
        code,
        reason: limit.to_string(),
    };
    let max_packet_size = request.properties.max_packet_size;
    if let Some(connack) =
        admission::refusal_connack(connection.version(), &refusal, max_packet_size)
    {
        connection.queue(connack)?;
    }
    connection.close().await?;
    connection.linger().await;
    Ok(())
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

/// Answers CONNECT with a refusal and closes the connection.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    refusal: &Refusal,
    max_packet_size: Option<u32>,
) -> Result<()> {
    tracing::info!(code = ?refusal.code, reason = refusal.reason, "refusing a connection");
    if let Some(connack) =
        admission::refusal_connack(connection.version(), refusal, max_packet_size)
    {
        connection.queue(connack)?;
    }
    connection.close().await?;
    connection.linger().await;
    Ok(())
}
