//! The AMQP listeners: accepts connections (SASL, then OPEN) and their sessions, each served in a
//! task of its own (`session`: its links, checked, each in a task of its own).
//!
//! With `[amqp.tls]`, AMQPS: a TLS listener beside the plain one (`tls.listen`), or the plain address
//! speaking TLS instead. The TLS handshake runs in the connection's task, never the accept loop, so a
//! slow handshake holds up no one else; a client may start it at once (as `amqps://` clients do) or
//! ask for it AMQP's way first, with the TLS protocol header. AMQP then runs on the TLS stream as on
//! a plain one, and the verified client certificate's identity stays with the connection.
//!
//! Who the client is comes from SASL ([`sasl`](crate::sasl)), run by the connection's task before
//! fe2o3 opens the connection; a client that skips SASL is served only where it could have been
//! anonymous (or as its certificate's name), and is otherwise closed at once with
//! `amqp:unauthorized-access`. Each connection then sees the log as its principal
//! ([`Client`](crate::client::Client)).
//!
//! Limits: the whole handshake (TLS if any, protocol headers, SASL and OPEN) must be done within
//! `amqp.handshake_timeout` of the accept, or the connection is closed and counted
//! (`courier_limit_refusals_total{limit="handshake_timeout"}`). fe2o3 reads the client's frames
//! through a [`FrameGuard`](crate::frame_guard) (sizes, channels, link handles and nesting checked
//! before anything is decoded) and writes through a [`WriteDeadline`](crate::write_deadline) (a
//! client that stops reading is cut off after `amqp.write_timeout`). A connection the accept loop's
//! [`Admission`] turns away is answered in AMQP ([`refusal`](crate::refusal)) in its own task.
//!
//! Drain: when the drain token fires the listener stops accepting, sender links stop taking deliveries
//! and settle the ones the log has, receiver links commit and detach, and each connection closes with
//! `amqp:connection:forced`.

use std::{fmt::Debug, net::SocketAddr, sync::Arc, time::Duration};

use courier_gateway::{
    auth::{Access, Attempt, Credentials, Principal},
    log::{Log, layers::Metered},
    metrics::{self, Protocol},
    telemetry::Who,
    tls::{ClientIdentity, TlsAcceptor, accept_on},
};
use fe2o3_amqp::{
    acceptor::{ConnectionAcceptor, ListenerConnectionHandle, SessionAcceptor},
    connection::OpenError,
    types::definitions::{self, AmqpError, ConnectionError},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};
use tracing::{Instrument as _, field};

use crate::{
    client::Client,
    config::Config,
    error::{Error, Refusal, Result},
    frame_guard::{FrameGuard, Limits},
    refusal::{self, Admission},
    sasl::{self, Peer},
    session,
    shared::Shared,
    transport, wire,
    write_deadline::WriteDeadline,
};

/// The bound AMQP listeners.
#[derive(Debug)]
pub struct Server {
    /// Plain AMQP on `listen`; `None` when `[amqp.tls]` turned `listen` to TLS.
    plain: Option<TcpListener>,
    /// AMQPS: on `tls.listen`, or on `listen` when TLS replaced plain text.
    secure: Option<(TcpListener, Tls)>,
    shared: Arc<Shared>,
    /// Stops the TLS acceptor's certificate watcher when the server goes (served or not).
    _tls_watcher: DropGuard,
}

/// Refused connections answered in AMQP at once (each for at most `amqp.handshake_timeout`);
/// past it a refused connection is closed at accept.
const REFUSING_AT_ONCE: usize = 64;

/// A connection just accepted.
#[derive(Debug)]
struct Accepted {
    /// When its handshake must be done by.
    deadline: Instant,
    admission: Admission,
}

/// What a connection on the TLS listener is handshaken with.
#[derive(Debug, Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    /// Also bounds the wait for a client to show whether it asks for TLS AMQP's way.
    handshake_timeout: Duration,
}

/// Who is on the other end of a connection, before it has authenticated.
#[derive(Debug, Clone)]
struct Connecting {
    peer: SocketAddr,
    /// The identity of the verified certificate the client presented on the TLS listener: what
    /// SASL EXTERNAL takes its principal from.
    identity: Option<Arc<ClientIdentity>>,
}

impl Server {
    /// Checks the config, loads the TLS certificates, and binds the listeners. `access` decides
    /// who may connect (SASL) and what each client may do.
    pub async fn bind(log: Arc<dyn Log>, config: Config, access: Access) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let tls_watcher = CancellationToken::new();
        let tls = start_tls(&config, &tls_watcher)?;
        let idle_ms = u32::try_from(config.idle_timeout.as_millis()).unwrap_or(u32::MAX);
        // fe2o3 offers channel-max and handle-max, and refuses sessions past channel-max itself
        // (with `amqp:not-implemented`); the frame guard refuses channels and handles past either
        // with the spec's `amqp:connection:framing-error` before fe2o3 sees them.
        let acceptor = ConnectionAcceptor::builder()
            .container_id(wire::container_id())
            .max_frame_size(config.max_frame_size)
            .channel_max(config.channel_max())
            .idle_time_out(idle_ms)
            .build();
        let sessions = SessionAcceptor::builder()
            .handle_max(config.handle_max())
            .build();
        let (plain_listener, secure) = bind_listeners(&config, tls).await?;
        Ok(Self {
            plain: plain_listener,
            secure,
            _tls_watcher: tls_watcher.drop_guard(),
            shared: Arc::new(Shared {
                metered: Arc::new(Metered::new(log.clone(), Protocol::Amqp)),
                log,
                config,
                access,
                acceptor,
                sessions,
            }),
        })
    }

    /// The bound address of `listen` (to learn the port when configured with 0), whether it speaks
    /// plain AMQP or, when TLS replaced plain text, AMQPS.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let listener = match (&self.plain, &self.secure) {
            (Some(plain), _) => plain,
            (None, Some((secure, _))) => secure,
            (None, None) => return Err(Error::Config("no AMQP listener".into())),
        };
        Ok(listener.local_addr()?)
    }

    /// The bound addresses by what they serve: `amqp` (plain) and `amqps` (TLS).
    pub fn addresses(&self) -> Result<Vec<(&'static str, SocketAddr)>> {
        let mut addresses = Vec::new();
        if let Some(plain) = &self.plain {
            addresses.push(("amqp", plain.local_addr()?));
        }
        if let Some((secure, _)) = &self.secure {
            addresses.push(("amqps", secure.local_addr()?));
        }
        Ok(addresses)
    }

    /// Accepts connections until `drain` fires, then lets every connection finish (see the module
    /// documentation) and returns.
    pub async fn serve(self, drain: CancellationToken) -> Result<()> {
        let Self {
            plain,
            secure,
            shared,
            _tls_watcher,
        } = self;
        let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
        let connections = TaskTracker::new();
        let limits = &shared.access.limits.connections;
        let (plain_gate, tls_gate) = (
            limits.gate(Protocol::Amqp, "amqp"),
            limits.gate(Protocol::Amqp, "amqps"),
        );
        loop {
            let (accepted, tls, gate) = tokio::select! {
                () = drain.cancelled() => break,
                accepted = accept_on(plain.as_ref()) => (accepted, None, &plain_gate),
                accepted = accept_on(secure.as_ref().map(|(listener, _)| listener)) => {
                    (accepted, secure.as_ref().map(|(_, tls)| tls.clone()), &tls_gate)
                }
            };
            match accepted {
                Ok((stream, peer)) => {
                    let admission = match gate.admit(peer) {
                        Ok(permit) => Admission::Serve(permit),
                        // Answered in AMQP on plain text only, a few at a time: on the TLS
                        // listener the answer would cost a handshake, which is what a flood
                        // wants spent. Counted by the gate; dropping the stream closes it.
                        Err(limit) => {
                            let answerable = tls.is_none();
                            match (answerable, refusing.clone().try_acquire_owned()) {
                                (true, Ok(turn)) => Admission::Refuse(
                                    Refusal::new(
                                        AmqpError::ResourceLimitExceeded,
                                        limit.to_string(),
                                    ),
                                    turn,
                                ),
                                _ => continue,
                            }
                        }
                    };
                    let accepted = Accepted {
                        deadline: Instant::now() + shared.config.handshake_timeout,
                        admission,
                    };
                    let _ = stream.set_nodelay(true);
                    let (shared, drain) = (shared.clone(), drain.child_token());
                    match tls {
                        None => {
                            let client = Connecting {
                                peer,
                                identity: None,
                            };
                            connections
                                .spawn(serve_connection(shared, stream, client, accepted, drain))
                        }
                        Some(tls) => {
                            connections.spawn(serve_tls(shared, tls, stream, peer, accepted, drain))
                        }
                    };
                }
                // Out of descriptors and the like: the listener itself is fine, so keep accepting.
                Err(error) => {
                    tracing::warn!(%error, "AMQP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        // New clients are refused at once rather than left waiting while the others drain.
        drop((plain, secure));
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

/// Loads `[amqp.tls]`'s certificates into an acceptor whose watcher runs until `stop`.
fn start_tls(config: &Config, stop: &CancellationToken) -> Result<Option<Tls>> {
    let Some(settings) = &config.tls else {
        return Ok(None);
    };
    let acceptor = TlsAcceptor::start("amqp", settings, &[], stop.clone()).map_err(Error::Tls)?;
    Ok(Some(Tls {
        acceptor,
        handshake_timeout: settings.handshake_timeout,
    }))
}

/// Binds `listen` and, with TLS, `tls.listen`: the plain listener and the TLS one.
async fn bind_listeners(
    config: &Config,
    tls: Option<Tls>,
) -> Result<(Option<TcpListener>, Option<(TcpListener, Tls)>)> {
    let listener = TcpListener::bind(config.listen).await?;
    let tls_listen = config.tls.as_ref().and_then(|settings| settings.listen);
    Ok(match (tls, tls_listen) {
        (None, _) => (Some(listener), None),
        // No TLS address of its own: the TLS table turns the plain address to TLS.
        (Some(tls), None) => (None, Some((listener, tls))),
        (Some(tls), Some(address)) => (
            Some(listener),
            Some((TcpListener::bind(address).await?, tls)),
        ),
    })
}

/// A connection on the TLS listener: AMQP's TLS upgrade when the client asks for it, the handshake
/// (the acceptor logs and counts refusals, and bounds it by `tls.handshake_timeout`), then AMQP on
/// the TLS stream, all of it within the connection's handshake deadline.
async fn serve_tls(
    shared: Arc<Shared>,
    tls: Tls,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Accepted,
    drain: CancellationToken,
) {
    let handshake = async {
        let stream = match transport::start_tls(stream, tls.handshake_timeout).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "AMQP TLS start failed");
                return None;
            }
        };
        tls.acceptor.accept(stream, peer).await
    };
    let Ok(handshaken) = tokio::time::timeout_at(accepted.deadline, handshake).await else {
        handshake_timed_out(peer);
        return;
    };
    let Some((stream, identity)) = handshaken else {
        return;
    };
    let client = Connecting {
        peer,
        identity: identity.map(Arc::new),
    };
    serve_connection(shared, stream, client, accepted, drain).await;
}

/// Serves one connection, plain or TLS, in its own span (named by the client certificate, if any),
/// or turns it away as its admission says.
async fn serve_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    client: Connecting,
    accepted: Accepted,
    drain: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + Debug + 'static,
{
    // Its place under the limits, given back when the connection ends.
    let _admitted = match accepted.admission {
        Admission::Serve(permit) => permit,
        Admission::Refuse(refusal, _turn) => {
            let left = accepted.deadline.saturating_duration_since(Instant::now());
            let peer = client.peer;
            if let Err(error) =
                refusal::refuse(stream, refusal.condition, refusal.description, left).await
            {
                tracing::debug!(%peer, %error, "AMQP refusal cut short");
            }
            return;
        }
    };
    let span = tracing::info_span!(
        "amqp.connection",
        peer = %client.peer,
        client_cert = field::Empty,
        principal = field::Empty
    );
    if let Some(identity) = &client.identity {
        span.record("client_cert", field::display(identity));
    }
    run_connection(shared, stream, client, accepted.deadline, drain)
        .instrument(span)
        .await;
}

/// A client that did not finish its handshake in time: its connection is closed.
fn handshake_timed_out(peer: SocketAddr) {
    tracing::info!(%peer, "AMQP handshake not done within amqp.handshake_timeout; closing");
    metrics::limit_refused(Protocol::Amqp, "handshake_timeout");
}

/// Why a connection did not open.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Sasl(#[from] sasl::SaslError),
    #[error(transparent)]
    Open(#[from] OpenError),
    /// It skipped SASL where it may not connect without credentials; it was told so in CLOSE.
    #[error("no SASL: {0}")]
    Unauthenticated(courier_gateway::auth::Failure),
}

impl Refused {
    /// The `courier_errors_total` kind.
    fn kind(&self) -> &'static str {
        match self {
            Self::Sasl(sasl::SaslError::Refused { .. }) | Self::Unauthenticated(_) => {
                "unauthenticated"
            }
            Self::Sasl(sasl::SaslError::Io(_)) | Self::Open(_) => "connection_refused",
        }
    }
}

/// Authenticates and opens the connection: SASL or not, as its protocol header asks.
async fn open<S>(
    shared: &Shared,
    stream: S,
    client: &Connecting,
) -> Result<(ListenerConnectionHandle, Principal), Refused>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Debug + 'static,
{
    let authenticator = &shared.access.authenticator;
    let peer = Peer {
        address: client.peer,
        certificate: client.identity.as_deref(),
    };
    // The first eight bytes tell a SASL connection from one that skips SASL (fe2o3's own client
    // does when it has no credentials).
    let (mut stream, sasl) = transport::read_header(stream, shared.config.idle_timeout).await;
    if sasl {
        let principal = sasl::negotiate(
            &mut stream,
            authenticator,
            peer,
            shared.config.max_frame_size,
            shared.config.idle_timeout,
        )
        .await?;
        let connection = shared
            .acceptor
            .accept(guarded(shared, stream, client))
            .await?;
        return Ok((connection, principal));
    }
    // No SASL is no credentials: served as the certificate's name, or anonymously where this peer
    // may be. The refusal is said in AMQP (an OPEN, then CLOSE with the reason), as a client that
    // skipped SASL expects to hear it; so the connection opens first (which also keeps a client
    // that sent no AMQP header at all from counting as a failed login).
    let mut connection = shared
        .acceptor
        .accept(guarded(shared, stream, client))
        .await?;
    let attempt = Attempt {
        peer: client.peer,
        credentials: &Credentials::None,
        certificate: peer.certificate,
    };
    match authenticator.authenticate(attempt).await {
        Ok(principal) => Ok((connection, principal)),
        Err(failure) => {
            let _ = connection
                .close_with_error(definitions::Error::new(
                    AmqpError::UnauthorizedAccess,
                    Some(format!(
                        "{failure}; authenticate with SASL (PLAIN or EXTERNAL)"
                    )),
                    None,
                ))
                .await;
            Err(Refused::Unauthenticated(failure))
        }
    }
}

/// The stream fe2o3 reads the client's frames from: each checked before it is decoded.
fn guarded<S>(shared: &Shared, stream: S, client: &Connecting) -> FrameGuard<S> {
    FrameGuard::new(stream, Limits::from(&shared.config), client.peer)
}

async fn run_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    connecting: Connecting,
    deadline: Instant,
    drain: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + Debug + 'static,
{
    let _open = metrics::connection_opened(Protocol::Amqp);
    let peer = connecting.peer;
    let stream = WriteDeadline::new(stream, shared.config.write_timeout);
    let Ok(opened) = tokio::time::timeout_at(deadline, open(&shared, stream, &connecting)).await
    else {
        handshake_timed_out(peer);
        return;
    };
    let (mut connection, principal) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            tracing::info!(%peer, %error, "AMQP connection refused during open");
            metrics::error(Protocol::Amqp, error.kind());
            return;
        }
    };
    tracing::Span::current().record("principal", field::display(&principal));
    // A token's connection ends when the token does (as Kafka's re-authentication and EMQX do):
    // the client connects again with a fresh one, and its rights are decided anew.
    let expiry = principal.remaining();
    let expires_at = tokio::time::Instant::now() + expiry.unwrap_or(FAR);
    let quota = shared
        .access
        .quota(&principal, None, Some(peer), Protocol::Amqp);
    // AMQP names no client the way MQTT does (the container id is the process's): spans name
    // the protocol only.
    let log = shared
        .access
        .traced(shared.metered.clone(), || Who::new(Protocol::Amqp, None));
    let client = Arc::new(Client::new(
        peer,
        principal,
        log,
        shared.access.authorizer.clone(),
        quota,
    ));
    tracing::debug!(%peer, "AMQP connection open");
    let sessions = TaskTracker::new();
    let ending = loop {
        tokio::select! {
            () = drain.cancelled() => break Ending::Drain,
            () = tokio::time::sleep_until(expires_at), if expiry.is_some() => break Ending::Expired,
            incoming = connection.next_incoming_session() => match incoming {
                Some(incoming) => {
                    match shared.sessions.accept_incoming_session(incoming, &mut connection).await {
                        Ok(session) => {
                            sessions.spawn(session::serve(shared.clone(), client.clone(), session, drain.child_token()).in_current_span());
                        }
                        Err(error) => {
                            tracing::info!(%peer, %error, "AMQP session refused");
                        }
                    }
                }
                None => break Ending::Client,
            },
        }
    };
    sessions.close();
    match ending {
        Ending::Drain => {
            // Links settle what the log has and commit, and detach saying why, before the
            // connection goes.
            sessions.wait().await;
            let _ = connection
                .close_with_error(definitions::Error::new(
                    ConnectionError::ConnectionForced,
                    Some("the gateway is shutting down; reconnect to another replica".to_owned()),
                    None,
                ))
                .await;
        }
        Ending::Expired => {
            // Closed first, so the client hears why (not the drain's "reattach elsewhere" from
            // each link); its links then end as if it had gone: what they took is settled or
            // sent again, what their client accepted is committed.
            tracing::info!(%peer, "closing the connection: its token has expired");
            let _ = connection
                .close_with_error(definitions::Error::new(
                    AmqpError::UnauthorizedAccess,
                    Some(
                        "the token this connection was authenticated with has expired; reconnect with a fresh one"
                            .to_owned(),
                    ),
                    None,
                ))
                .await;
            drain.cancel();
            sessions.wait().await;
        }
        Ending::Client => {
            // The client closed the connection (or it failed): links end on their own.
            drain.cancel();
            sessions.wait().await;
            close_quietly(&mut connection).await;
        }
    }
    tracing::debug!(%peer, "AMQP connection closed");
}

/// A deadline that never comes, for a connection whose credentials do not expire.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a connection's session loop ended.
enum Ending {
    /// The gateway drains.
    Drain,
    /// The token the client authenticated with expired.
    Expired,
    /// The client closed the connection, or it failed.
    Client,
}

async fn close_quietly(connection: &mut ListenerConnectionHandle) {
    if let Err(error) = connection.close().await {
        tracing::debug!(%error, "AMQP connection ended with an error");
    }
}
