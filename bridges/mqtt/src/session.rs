//! One client's connection, from CONNECT to the end: the MQTT state machine over a [`Connection`].
//!
//! - [`admission`]: the CONNECT decision without I/O (refusals, client id, will, session, CONNACK);
//! - [`connect`]: the handshake's I/O around it (credentials, session record, takeover);
//! - [`inbound`]: what the client publishes, acknowledged once the log has it;
//! - [`outbound`]: subscriptions and deliveries, acknowledged to the log once the client has them.
//!
//! The loop waits on whichever comes first: a packet from the client (read only while the inbound
//! window has room), a finished append, a record from a log reader (taken only while the outbound
//! window has room), the keep-alive deadline, a takeover, or shutdown. A connection ends with a
//! DISCONNECT carrying the reason (MQTT 5) or by closing the socket (3.1.1), then publishes the will
//! when one is due and, for a persistent session, stores where the session stands.

mod admission;
mod client_log;
mod connect;
mod in_order;
mod inbound;
mod outbound;
mod will;

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use courier_gateway::{
    log::now_ms,
    metrics::{self, Protocol},
    tls::ClientIdentity,
};
use futures_util::FutureExt;
use rumqttd::protocol::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PingResp};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use self::{
    admission::{Client, Will},
    client_log::ClientLog,
    connect::Established,
    inbound::Inbound,
    outbound::Outbound,
    will::DueWill,
};
use crate::{
    bridge::Bridge,
    codec::{Frame, Version},
    connection::Connection,
    error::{Error, Result},
    store::sessions::SessionRecord,
    takeover::{Ending, Registration},
};

/// Longest a closing connection waits for its pending appends.
const FINISH_APPENDS: Duration = Duration::from_secs(5);

/// Serves one client until it leaves, fails, is taken over, falls silent, or the gateway shuts
/// down (the takeover fence signals those: [`crate::takeover`]). `certificate` is the identity of
/// the client certificate a TLS handshake verified: the principal of a client whose CONNECT
/// carries no credentials, and named in the connection's span.
///
/// Not an `async fn`: its future would keep its arguments beside the block's copy of them, for
/// as long as the connection lasts. For the same reason the connection is made here and the block
/// uses it where it is: a stream moved into a connection inside the block would keep its room
/// twice (a TLS stream is more than a kilobyte).
pub fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    bridge: Arc<Bridge>,
    stream: S,
    peer: SocketAddr,
    certificate: Option<Box<ClientIdentity>>,
) -> impl Future<Output = ()> + Send {
    // A root span, as it was when made inside the connection's task: made here, it would
    // otherwise be a child of whatever span the accept loop runs in.
    let span = tracing::info_span!(
        parent: None,
        "mqtt.session",
        %peer,
        client_id = tracing::field::Empty,
        principal = tracing::field::Empty,
        certificate = tracing::field::Empty,
    );
    if let Some(certificate) = &certificate {
        span.record("certificate", tracing::field::display(certificate));
    }
    let mut connection = Connection::new(stream, bridge.config.max_packet_size as usize)
        .with_write_timeout(bridge.config.write_timeout);
    async move {
        // A task is as large as its largest state, for as long as the connection lasts: what runs
        // once (the handshake, the resume, the goodbye) is boxed, so an idle connection's task
        // holds little more than its session and the loop's wait. `established` lives only inside
        // the match for the same reason.
        let mut session = match Box::pin(connect::handshake(
            &bridge,
            &mut connection,
            peer,
            certificate,
        ))
        .await
        {
            Ok(Some(established)) => {
                tracing::Span::current().record("client_id", established.client.client_id.as_str());
                tracing::Span::current().record(
                    "principal",
                    tracing::field::display(&established.client.principal),
                );
                tracing::debug!(
                    version = ?established.client.version,
                    session_present = established.session_present,
                    "connected"
                );
                Session::new(bridge, established, peer)
            }
            Ok(None) => return,
            Err(error) => {
                if !error.is_normal_close() {
                    tracing::info!(%error, "connection refused");
                    metrics::error(Protocol::Mqtt, "connection_refused");
                }
                return;
            }
        };
        Box::pin(session.outbound.resume(
            &session.bridge,
            &session.client,
            &mut session.log,
            &session.record,
        ))
        .await;
        let end = session.serve(&mut connection).await;
        Box::pin(session.finish(&mut connection, end)).await;
    }
    .instrument(span)
}

/// Refuses a connection the limits did not admit, in MQTT's way (see [`connect::turn_away`]),
/// all within `mqtt.connect_timeout`.
pub async fn turn_away<S: AsyncRead + AsyncWrite + Unpin + Send>(
    bridge: Arc<Bridge>,
    stream: S,
    peer: SocketAddr,
    refusal: courier_gateway::limits::Refusal,
) {
    let deadline = bridge.config.connect_timeout;
    let mut connection = Connection::new(stream, bridge.config.max_packet_size as usize)
        .with_write_timeout(deadline);
    let refused = tokio::time::timeout(
        deadline,
        connect::turn_away(&bridge, &mut connection, refusal),
    )
    .await;
    if let Ok(Err(error)) = refused {
        tracing::debug!(%peer, %error, "refusing a connection over the limits failed");
    }
}

/// Most pieces of ready work between two writes to the socket.
const READY_BURST: usize = 256;

/// What [`Session::step_ready`] did.
enum Progress {
    Idle,
    /// Handled a packet from the client (which resets the keep-alive deadline).
    Received,
    /// Handled an append or a delivery.
    Worked,
    Ended(End),
}

/// What woke the loop: a packet to handle, or work done.
enum Woke<F> {
    Packet(Pin<Box<F>>),
    Done(Result<Option<End>>),
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// DISCONNECT from the client; MQTT 5 may still ask for the will.
    Disconnected { publish_will: bool },
    /// The socket closed without DISCONNECT.
    Gone,
    /// The gateway closes it, for this reason.
    Failed(Error),
}

impl End {
    /// Whether this end publishes the will. A takeover does (the old connection closed without a
    /// normal DISCONNECT), unless it has a delay: the new connection came back within it.
    fn publishes_will(&self) -> bool {
        match self {
            Self::Disconnected { publish_will } => *publish_will,
            Self::Gone => true,
            // Shutdown is not the client's failure: it reconnects to another replica.
            Self::Failed(Error::ShuttingDown) => false,
            Self::Failed(_) => true,
        }
    }
}

struct Session {
    bridge: Arc<Bridge>,
    client: Client,
    record: SessionRecord,
    registration: Registration,
    /// Boxed: most clients have none, and every connection's task would carry its size.
    will: Option<Box<Will>>,
    /// The client's own view of the log, which its will is published through as well.
    log: ClientLog,
    inbound: Inbound,
    outbound: Outbound,
}

impl Session {
    fn new(bridge: Arc<Bridge>, established: Established, peer: SocketAddr) -> Self {
        let Established {
            client,
            session,
            registration,
            will,
            awaiting_release,
            awaiting_completion,
            ..
        } = established;
        // One copy, shared by both directions.
        let durable_session: Option<Arc<str>> =
            session.persistent.then(|| session.session.as_str().into());
        Self {
            inbound: Inbound::new(awaiting_release, durable_session.clone()),
            outbound: Outbound::new(
                durable_session,
                awaiting_completion,
                bridge.config.courier_id_property,
            ),
            bridge,
            client,
            log: ClientLog::new(peer),
            record: session,
            registration,
            will: will.map(Box::new),
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        connection: &mut Connection<S>,
    ) -> End {
        // MQTT: the server closes a connection silent for one and a half keep-alive periods. A
        // token's connection ends when the token does (as EMQX's and Kafka's re-authentication
        // do): the client connects again with a fresh one, and its rights are decided anew. The
        // fence's sweep watches both deadlines.
        let silence = (self.client.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(self.client.keep_alive) * 1500));
        self.registration
            .watch(silence, self.client.principal.remaining());
        let receive_maximum = self.bridge.config.receive_maximum;
        for release in self.outbound.take_owed_releases() {
            if let Err(error) = connection.queue(release) {
                return End::Failed(error);
            }
        }
        loop {
            // Work that is ready now is done before the socket is written, so one write carries many
            // acks and deliveries: a write per packet was the publish path's largest cost.
            for _ in 0..READY_BURST {
                if let Err(error) = self.outbound.fill(&self.client, connection) {
                    return End::Failed(error);
                }
                match self.step_ready(connection, receive_maximum).await {
                    Ok(Progress::Idle) => break,
                    Ok(Progress::Worked) => {}
                    Ok(Progress::Received) => self.registration.heard(),
                    Ok(Progress::Ended(end)) => return end,
                    Err(error) => return End::Failed(error),
                }
            }
            if let Err(error) = connection.flush().await {
                return End::Failed(error);
            }
            // A packet read is handled after the `select!`, in a box (see `on_frame_boxed`):
            // awaited inside it, the packet and the select's output would keep their room in the
            // task.
            let woke = tokio::select! {
                // One wait for every end the fence signals (a takeover, silence, expiry, a
                // shutdown), where a timer and a cancellation token were 180 bytes more.
                () = self.registration.state.ending() => Woke::Done(Err(
                    match self.registration.state.ended_by() {
                        Some(Ending::TakenOver) => Error::SessionTakenOver,
                        Some(Ending::Silent) => Error::KeepAliveTimeout(self.client.keep_alive),
                        Some(Ending::Expired) => Error::CredentialsExpired,
                        Some(Ending::ShuttingDown) | None => Error::ShuttingDown,
                    }
                )),
                frame = connection.read_frame(), if self.inbound.has_room(receive_maximum) => {
                    self.registration.heard();
                    match frame {
                        Ok(Some(frame)) => Woke::Packet(self.on_frame_boxed(connection, frame)),
                        Ok(None) => return End::Gone,
                        Err(error) => Woke::Done(Err(error)),
                    }
                }
                Some(completed) = self.inbound.pending.next() => Woke::Done(
                    self.inbound
                        .on_completed(&self.client, completed)
                        .and_then(|reply| reply.map_or(Ok(()), |reply| connection.queue(reply)))
                        .map(|()| None)
                ),
                Some(recorded) = self.outbound.recordings.next() => Woke::Done(
                    self.outbound
                        .on_recorded(recorded)
                        .and_then(|reply| reply.map_or(Ok(()), |reply| connection.queue(reply)))
                        .map(|()| None)
                ),
                Some((source, event)) = self.outbound.sources.next(), if self.outbound.wants_events(&self.client) => {
                    self.outbound.on_event(source, event);
                    Woke::Done(Ok(None))
                }
            };
            let step = match woke {
                Woke::Packet(handling) => handling.await,
                Woke::Done(step) => step,
            };
            match step {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(error) => return End::Failed(error),
            }
        }
    }

    /// Does one piece of work that needs no waiting: a packet already read, a finished append, a
    /// record already delivered by a reader.
    async fn step_ready<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        connection: &mut Connection<S>,
        receive_maximum: u16,
    ) -> Result<Progress> {
        if let Some(handling) = self.handle_buffered(connection, receive_maximum)? {
            return Ok(match handling.await? {
                Some(end) => Progress::Ended(end),
                None => Progress::Received,
            });
        }
        if let Some(Some(completed)) = self.inbound.pending.next().now_or_never() {
            if let Some(reply) = self.inbound.on_completed(&self.client, completed)? {
                connection.queue(reply)?;
            }
            return Ok(Progress::Worked);
        }
        if let Some(Some(recorded)) = self.outbound.recordings.next().now_or_never() {
            if let Some(reply) = self.outbound.on_recorded(recorded)? {
                connection.queue(reply)?;
            }
            return Ok(Progress::Worked);
        }
        if self.outbound.wants_events(&self.client)
            && let Some(Some((source, event))) = self.outbound.sources.next().now_or_never()
        {
            self.outbound.on_event(source, event);
            return Ok(Progress::Worked);
        }
        Ok(Progress::Idle)
    }

    /// The handling of a packet already read, if there is one and room for it; not an `async fn`,
    /// for the reason given at [`Session::on_frame_boxed`].
    #[allow(
        clippy::type_complexity,
        reason = "an `impl Future` cannot be named by a type alias on stable Rust"
    )]
    fn handle_buffered<'a, S: AsyncRead + AsyncWrite + Unpin>(
        &'a mut self,
        connection: &'a mut Connection<S>,
        receive_maximum: u16,
    ) -> Result<Option<Pin<Box<impl Future<Output = Result<Option<End>>> + 'a>>>> {
        if !self.inbound.has_room(receive_maximum) {
            return Ok(None);
        }
        Ok(connection
            .decode_buffered()?
            .map(|frame| self.on_frame_boxed(connection, frame)))
    }

    /// [`Session::on_frame`] in a box of its own. Handling a packet is the largest state of the
    /// loop (a PUBLISH's authorization and append, a SUBSCRIBE's readers: kilobytes), and a task
    /// keeps room for its largest state as long as it lives; boxed, the room is taken only while
    /// a packet is handled, an allocation per packet rather than kilobytes per idle connection.
    /// Not an `async fn`: the frame moves into the box here, so the caller keeps no room for it.
    fn on_frame_boxed<'a, S: AsyncRead + AsyncWrite + Unpin>(
        &'a mut self,
        connection: &'a mut Connection<S>,
        frame: Frame,
    ) -> Pin<Box<impl Future<Output = Result<Option<End>>> + 'a>> {
        Box::pin(self.on_frame(connection, frame))
    }

    /// Handles one packet; `Some` when it ends the connection.
    async fn on_frame<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        connection: &mut Connection<S>,
        frame: Frame,
    ) -> Result<Option<End>> {
        let reply = match frame.packet {
            Packet::Publish(publish, properties) => {
                let header = frame
                    .publish
                    .ok_or_else(|| Error::Protocol("PUBLISH without its header".into()))?;
                let log = self.log.get(&self.bridge, &self.client);
                self.inbound
                    .on_publish(&self.bridge, &self.client, log, header, publish, properties)
                    .await?
            }
            Packet::PubRel(pubrel, _) => {
                self.inbound
                    .on_pubrel(&self.bridge, &self.client, pubrel.pkid)
                    .await?
            }
            Packet::PubAck(puback, _) => {
                self.outbound.on_puback(puback.pkid);
                None
            }
            Packet::PubRec(pubrec, _) => {
                self.outbound
                    .on_pubrec(&self.bridge, &self.client, pubrec.pkid, pubrec.reason)
                    .await?
            }
            Packet::PubComp(pubcomp, _) => {
                self.outbound
                    .on_pubcomp(&self.bridge, &self.client, pubcomp.pkid)
                    .await;
                None
            }
            Packet::Subscribe(subscribe, properties) => Some(
                self.outbound
                    .subscribe(
                        &self.bridge,
                        &self.client,
                        &mut self.log,
                        &mut self.record,
                        subscribe,
                        properties.and_then(|properties| properties.id),
                    )
                    .await?,
            ),
            Packet::Unsubscribe(unsubscribe, _) => Some(
                self.outbound
                    .unsubscribe(
                        &self.bridge,
                        &self.client,
                        &mut self.record,
                        unsubscribe.pkid,
                        unsubscribe.filters,
                    )
                    .await?,
            ),
            Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
            Packet::Disconnect(disconnect, properties) => {
                if let Some(expiry) = properties.and_then(|p| p.session_expiry_interval) {
                    // CONNECT's expiry of 0 (or none) cannot be raised at DISCONNECT [MQTT-3.14.2-2].
                    if !self.record.outlives_connection() && expiry > 0 {
                        return Err(Error::Protocol(
                            "a session that ends with its connection cannot be given an expiry at DISCONNECT"
                                .into(),
                        ));
                    }
                    self.record.expiry_secs = Some(expiry);
                }
                // Only a normal disconnection deletes the will; any other reason (0x04 "with will
                // message", or a client's error code) leaves it to be published [MQTT-3.1.2-8].
                return Ok(Some(End::Disconnected {
                    publish_will: disconnect.reason_code
                        != DisconnectReasonCode::NormalDisconnection,
                }));
            }
            Packet::Connect(..) => return Err(Error::Protocol("a second CONNECT".into())),
            Packet::ConnAck(..)
            | Packet::SubAck(..)
            | Packet::UnsubAck(..)
            | Packet::PingResp(..) => {
                return Err(Error::Protocol(
                    "a packet only servers send arrived from the client".into(),
                ));
            }
        };
        if let Some(reply) = reply {
            connection.queue(reply)?;
        }
        Ok(None)
    }

    /// Says goodbye, publishes the will when due, and stores a persistent session's state.
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        connection: &mut Connection<S>,
        end: End,
    ) {
        let taken_over = matches!(end, End::Failed(Error::SessionTakenOver));
        let publish_will = end.publishes_will();
        self.finish_pending(connection).await;
        if let End::Failed(error) = &end {
            self.say_why(connection, error);
        }
        let _ = connection.close().await;

        // Readers commit what the client acknowledged; the rest is delivered again next time.
        self.outbound.close().await;
        if !taken_over {
            self.store_session().await;
        }
        let client_id = self.client.client_id.clone();
        let connection_id = self.record.connection.clone();
        let session_lifetime = if taken_over
            && successor_started_anew(&self.bridge, &client_id, &self.record.session).await
        {
            Duration::ZERO
        } else {
            self.session_lifetime()
        };
        // Made before the registration goes (it takes `self` apart), and only for a will.
        let will = self
            .will
            .take()
            .filter(|_| publish_will)
            .map(|will| (will, self.log.get(&self.bridge, &self.client).clone()));
        drop(self.registration);
        if let Some((mut will, log)) = will {
            // The will goes out when its delay has passed or the session ends, whichever is first
            // [MQTT-3.1.2-8, 3.1.3-9].
            will.delay = will.delay.min(session_lifetime);
            let due = DueWill {
                will: *will,
                client_id,
                connection: connection_id,
                principal: self.client.principal.clone(),
                log,
            };
            tokio::spawn(due.publish_later(self.bridge.clone()));
        }
        // Last, so a successor waiting for this connection to finish is not held up by it.
        connection.linger().await;
    }

    /// Appends already handed to the log finish, and their acks go out if the socket still takes
    /// them: a client told "stored" is never wrong, and one not told sends again. Recorded QoS 2
    /// deliveries are acknowledged to the log before the readers commit.
    async fn finish_pending<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        connection: &mut Connection<S>,
    ) {
        let finishing = async {
            while let Some(completed) = self.inbound.pending.next().await {
                if let Ok(Some(reply)) = self.inbound.on_completed(&self.client, completed) {
                    let _ = connection.queue(reply);
                }
            }
            while let Some(recorded) = self.outbound.recordings.next().await {
                match self.outbound.on_recorded(recorded) {
                    Ok(Some(reply)) => {
                        let _ = connection.queue(reply);
                    }
                    Ok(None) => {}
                    Err(error) => tracing::debug!(%error, "a QoS 2 delivery was not recorded"),
                }
            }
        };
        if tokio::time::timeout(FINISH_APPENDS, finishing)
            .await
            .is_err()
        {
            tracing::warn!("appends still pending at close; their publishers will send them again");
        }
    }

    /// Logs why the connection ends and tells an MQTT 5 client in DISCONNECT (when the socket works).
    fn say_why<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
        error: &Error,
    ) {
        if let Error::WriteTimeout(_) = error {
            metrics::limit_refused(Protocol::Mqtt, "write_timeout");
        }
        if error.is_normal_close() {
            tracing::debug!(%error, "connection closed");
        } else {
            tracing::info!(%error, "closing the connection");
            if !matches!(
                error,
                Error::ShuttingDown | Error::SessionTakenOver | Error::CredentialsExpired
            ) {
                metrics::error(Protocol::Mqtt, "connection_failed");
            }
        }
        if self.client.version == Version::V5
            && !matches!(error, Error::Io(_) | Error::WriteTimeout(_))
        {
            let _ = connection.queue(Packet::Disconnect(
                Disconnect {
                    reason_code: error.disconnect_reason(),
                },
                Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: self.client.fitting(error.to_string()),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            ));
        }
    }

    /// Stores where a persistent session stands, or deletes the record of one that ends here. The
    /// client may already be back on another replica (its connection dropped, it reconnected at
    /// once): then the newer record stands, and this one must not overwrite or delete it.
    async fn store_session(&mut self) {
        let client_id = self.client.client_id.clone();
        let still_owner = match self.bridge.sessions.load(&client_id).await {
            Ok(Some(latest)) => latest.connection == self.record.connection,
            Ok(None) => true,
            Err(error) => {
                tracing::warn!(%error, "could not read the session record; leaving it as it is");
                false
            }
        };
        if !still_owner {
            return;
        }
        let stored = if self.record.outlives_connection() {
            self.record.disconnected_at_ms = Some(now_ms());
            self.record.awaiting_release = self.inbound.awaiting_release();
            self.bridge.takeover.park(
                &client_id,
                &self.record.session,
                self.record.awaiting_release.clone(),
            );
            self.bridge.sessions.save(&client_id, &self.record).await
        } else {
            self.bridge.sessions.delete(&client_id).await
        };
        if let Err(error) = stored {
            tracing::warn!(%error, "could not store the session's state");
        }
    }

    /// How long the session lives on once its connection is gone.
    fn session_lifetime(&self) -> Duration {
        if !self.record.outlives_connection() {
            return Duration::ZERO;
        }
        self.record
            .expiry_secs
            .map_or(Duration::MAX, |secs| Duration::from_secs(secs.into()))
    }
}

/// Whether the connection that took a client id over started a session of its own (Clean Start 1):
/// then the old `session` has ended, and its will is due now [MQTT-3.1.2-8].
async fn successor_started_anew(bridge: &Bridge, client_id: &str, session: &str) -> bool {
    matches!(
        bridge.sessions.load(client_id).await,
        Ok(Some(latest)) if latest.session != session
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `function` returns (a future, here), without calling it.
    fn returned_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected client holds one such task for as long as it stays: what runs once or per
    /// packet is boxed (see `run` and `Session::on_frame_boxed`), so it stays small. Before that it
    /// was 5.3 KiB in a release build, a third of an idle client's memory; 2.1 KiB in a debug build
    /// before `run` was a plain function and the loop had one timer.
    #[test]
    fn a_connection_task_stays_small() {
        let size = returned_size(run::<tokio::net::TcpStream>);
        eprintln!("session::run over TCP: {size} bytes");
        // 1,008 bytes in a debug build when this bound was set (2,112 before the work on idle
        // connections' memory).
        assert!(size <= 1152, "{size} bytes");
        // The stream is kept once (a TLS stream is more than a kilobyte).
        type Tls = courier_gateway::tls::TlsStream<tokio::net::TcpStream>;
        let size = returned_size(run::<Tls>);
        let stream = std::mem::size_of::<Tls>();
        eprintln!("session::run over TLS: {size} bytes, of which the stream {stream}");
        assert!(size <= stream + 1152, "{size} bytes");
    }
}
