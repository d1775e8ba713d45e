//! The AMQP listener: accepts connections (SASL, then OPEN), their sessions, and their links, and gives
//! every link a task of its own ([`inbound`](crate::inbound) or [`outbound`](crate::outbound)).
//!
//! A link is checked before it runs: its address must parse and its topic must exist (or be created by
//! the log's topic policy, when `topics.auto_create` is on). A link that fails the check is attached
//! and at once detached with the reason (AMQP has no other way to refuse one); its connection carries
//! on.
//!
//! Drain: when the drain token fires the listener stops accepting, sender links stop taking deliveries
//! and settle the ones the log has, receiver links commit and detach, and each connection closes with
//! `amqp:connection:forced`.

use std::{net::SocketAddr, sync::Arc};

use courier_gateway::{
    Error as LogError,
    auth::Auth,
    log::{Log, layers::Metered},
    metrics::{self, Protocol},
};
use fe2o3_amqp::{
    acceptor::{
        ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
        ListenerSessionHandle, SessionAcceptor,
    },
    types::{
        definitions::{self, AmqpError, ConnectionError, Role},
        performatives::Attach,
    },
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    address,
    config::Config,
    error::{Error, Refusal, Result},
    inbound, outbound,
    outbound::Plan,
    sasl::Mechanisms,
};

/// The fe2o3 acceptor for connections that start with SASL: the gateway's mechanisms.
type SaslAcceptor = ConnectionAcceptor<(), Mechanisms>;
/// The fe2o3 acceptor for connections that skip SASL (allowed only when anonymous clients are).
type PlainAcceptor = ConnectionAcceptor<(), ()>;

/// The protocol header of a connection that starts with SASL (AMQP 1.0 §5.3.1).
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// What every connection of this replica shares.
#[derive(Debug)]
struct Shared {
    log: Arc<dyn Log>,
    /// The log behind what sender links produce, counted as AMQP's messages in. `log` serves the
    /// rest: reads, topic checks and the gateway's own dead letters.
    produce: Arc<dyn Log>,
    config: Config,
    sasl: SaslAcceptor,
    /// `None` when anonymous clients are not allowed: then every connection must authenticate.
    plain: Option<PlainAcceptor>,
}

/// A bound AMQP listener.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Checks the config, loads the users file and binds the listener.
    pub async fn bind(log: Arc<dyn Log>, config: Config) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let auth = Auth::load(&config.auth)?;
        let allow_anonymous = auth.allows_anonymous();
        let mechanisms = Mechanisms::new(auth);
        let idle_ms = u32::try_from(config.idle_timeout.as_millis()).unwrap_or(u32::MAX);
        let builder = || {
            ConnectionAcceptor::builder()
                .container_id(format!("courier-{}", std::process::id()))
                .max_frame_size(config.max_frame_size)
                .idle_time_out(idle_ms)
        };
        let sasl = builder().sasl_acceptor(mechanisms).build();
        let plain = allow_anonymous.then(|| builder().build());
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                produce: Arc::new(Metered::new(log.clone(), Protocol::Amqp)),
                log,
                config,
                sasl,
                plain,
            }),
        })
    }

    /// The bound address (to learn the port when configured with 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The bound addresses by what they serve: `amqp` (plain).
    pub fn addresses(&self) -> Result<Vec<(&'static str, SocketAddr)>> {
        Ok(vec![("amqp", self.local_addr()?)])
    }

    /// Accepts connections until `drain` fires, then lets every connection finish (see the module
    /// documentation) and returns.
    pub async fn serve(self, drain: CancellationToken) -> Result<()> {
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = drain.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(
                        self.shared.clone(),
                        stream,
                        peer,
                        drain.child_token(),
                    ));
                }
                // Out of descriptors and the like: the listener itself is fine, so keep accepting.
                Err(error) => {
                    tracing::warn!(%error, "AMQP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: CancellationToken,
) {
    let _open = metrics::connection_opened(Protocol::Amqp);
    // Clients that need no credentials may skip SASL and send the AMQP header at once (fe2o3's own
    // client does); the first eight bytes tell which kind of connection this is.
    let opened = match (
        &shared.plain,
        starts_with_sasl(&stream, shared.config.idle_timeout).await,
    ) {
        (Some(plain), false) => plain.accept(stream).await,
        _ => shared.sasl.accept(stream).await,
    };
    let mut connection = match opened {
        Ok(connection) => connection,
        Err(error) => {
            tracing::info!(%peer, %error, "AMQP connection refused during open");
            metrics::error(Protocol::Amqp, "connection_refused");
            return;
        }
    };
    tracing::debug!(%peer, "AMQP connection open");
    let sessions = TaskTracker::new();
    let shutting_down = loop {
        tokio::select! {
            () = drain.cancelled() => break true,
            incoming = connection.next_incoming_session() => match incoming {
                Some(incoming) => {
                    match SessionAcceptor::new().accept_incoming_session(incoming, &mut connection).await {
                        Ok(session) => {
                            sessions.spawn(serve_session(shared.clone(), session, peer, drain.child_token()));
                        }
                        Err(error) => {
                            tracing::info!(%peer, %error, "AMQP session refused");
                        }
                    }
                }
                None => break false,
            },
        }
    };
    sessions.close();
    if shutting_down {
        // Links settle what the log has and commit before the connection goes.
        sessions.wait().await;
        let _ = connection
            .close_with_error(definitions::Error::new(
                ConnectionError::ConnectionForced,
                Some("the gateway is shutting down; reconnect to another replica".to_owned()),
                None,
            ))
            .await;
    } else {
        // The client closed the connection (or it failed): links end on their own.
        drain.cancel();
        sessions.wait().await;
        close_quietly(&mut connection).await;
    }
    tracing::debug!(%peer, "AMQP connection closed");
}

/// Whether the connection's protocol header asks for SASL. A client that sends fewer than eight bytes
/// within `wait` is treated as a SASL one, whose acceptor answers what it did send.
async fn starts_with_sasl(stream: &TcpStream, wait: std::time::Duration) -> bool {
    let mut header = [0u8; 8];
    let peeked = tokio::time::timeout(wait, async {
        loop {
            match stream.peek(&mut header).await {
                Ok(n) if n >= header.len() => return true,
                Ok(0) | Err(_) => return false,
                // Part of the header so far: peek again once more has arrived.
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    !matches!(peeked, Ok(true)) || header == SASL_HEADER
}

async fn close_quietly(connection: &mut ListenerConnectionHandle) {
    if let Err(error) = connection.close().await {
        tracing::debug!(%error, "AMQP connection ended with an error");
    }
}

async fn serve_session(
    shared: Arc<Shared>,
    mut session: ListenerSessionHandle,
    peer: SocketAddr,
    drain: CancellationToken,
) {
    let links = TaskTracker::new();
    let link_acceptor = LinkAcceptor::builder()
        .max_message_size(shared.config.max_message_size)
        .build();
    // Why the session ends early, sent in END; `None` when the client ended it or the gateway drains.
    let mut failure = None;
    loop {
        let attach = tokio::select! {
            () = drain.cancelled() => break,
            attach = session.next_incoming_attach() => match attach {
                Some(attach) => attach,
                None => break,
            },
        };
        let check = check_link(&shared, &attach, peer).await;
        let name = attach.name.clone();
        let endpoint = match link_acceptor
            .accept_incoming_attach(attach, &mut session)
            .await
        {
            Ok(endpoint) => endpoint,
            Err(error) => {
                // fe2o3 leaves such an attach unanswered (a second link with a name already attached
                // on this session, say); end the session with the reason rather than let the client
                // wait. Other sessions of the connection carry on.
                tracing::info!(%peer, link = %name, ?error, "AMQP attach failed; ending its session");
                failure = Some(definitions::Error::new(
                    AmqpError::NotAllowed,
                    Some(format!("cannot attach link {name:?}: {error:?}")),
                    None,
                ));
                break;
            }
        };
        let route = match check {
            Ok(route) => route,
            Err(refusal) => {
                tracing::info!(%peer, link = %name, reason = %refusal.description, "AMQP link refused");
                let error = definitions::Error::from(refusal);
                let _ = match endpoint {
                    LinkEndpoint::Sender(sender) => sender.close_with_error(error).await,
                    LinkEndpoint::Receiver(receiver) => receiver.close_with_error(error).await,
                };
                continue;
            }
        };
        let cancel = drain.child_token();
        match (route, endpoint) {
            (Route::Inbound(destination), LinkEndpoint::Receiver(receiver)) => {
                tracing::debug!(%peer, link = %name, topic = %destination.topic, "AMQP sender link attached");
                links.spawn(inbound::run(
                    shared.produce.clone(),
                    receiver,
                    destination,
                    shared.config.link_credit,
                    cancel,
                ));
            }
            (Route::Outbound(plan), LinkEndpoint::Sender(sender)) => {
                tracing::debug!(%peer, link = %name, topic = %plan.origin.topic, group = ?plan.origin.group, "AMQP receiver link attached");
                links.spawn(outbound::run(shared.log.clone(), sender, plan, cancel));
            }
            // check_link routes by the attach's role, which is what fe2o3 accepted it as.
            (_, LinkEndpoint::Sender(sender)) => {
                let _ = sender.close().await;
            }
            (_, LinkEndpoint::Receiver(receiver)) => {
                let _ = receiver.close().await;
            }
        }
    }
    // The session is ending (the client ended it, an attach failed, or the gateway drains): its links
    // end too, settling what the log has, before END goes out.
    drain.cancel();
    links.close();
    links.wait().await;
    let _ = match failure {
        Some(reason) => session.end_with_error(reason).await,
        None => session.end().await,
    };
}

/// What a checked link does.
enum Route {
    /// The client sends; the gateway appends to this destination.
    Inbound(address::Destination),
    /// The client receives; the gateway reads by this plan.
    Outbound(Plan),
}

/// Checks a link's address and topic before it runs.
async fn check_link(shared: &Shared, attach: &Attach, peer: SocketAddr) -> Result<Route, Refusal> {
    match attach.role {
        // The client is the sender: the target names where its messages go.
        Role::Sender => {
            let address = attach.target.as_deref().and_then(|target| match target {
                fe2o3_amqp::types::messaging::TargetArchetype::Target(target) => {
                    target.address.as_deref()
                }
                #[allow(unreachable_patterns)]
                _ => None,
            });
            let destination = address::destination(address)?;
            let partitions = topic_partitions(shared, &destination.topic).await?;
            if let Some(partition) = destination.partition
                && partition as u32 >= partitions
            {
                return Err(Refusal::invalid(format!(
                    "topic {} has {partitions} partitions; there is no partition {partition}",
                    destination.topic
                )));
            }
            Ok(Route::Inbound(destination))
        }
        Role::Receiver => {
            let source = attach.source.as_deref();
            let origin = address::origin(
                source.and_then(|source| source.address.as_deref()),
                source.and_then(|source| source.filter.as_ref()),
            )?;
            topic_partitions(shared, &origin.topic).await?;
            let dead_letter_topic = format!("{}{}", origin.topic, shared.config.dead_letter_suffix);
            Ok(Route::Outbound(Plan {
                origin,
                dead_letter_topic,
                max_unsettled: shared.config.max_unsettled,
                client: format!("{peer} {}", attach.name),
            }))
        }
    }
}

/// The topic's partition count. The log's topic policy creates a missing topic when
/// `topics.auto_create` is on; when it is off the link is refused with `amqp:not-found`.
async fn topic_partitions(shared: &Shared, topic: &str) -> Result<u32, Refusal> {
    match shared.log.open_topic(topic).await {
        Ok(description) => Ok(description.partitions.len() as u32),
        Err(LogError::UnknownTopic { .. }) => Err(Refusal::new(
            AmqpError::NotFound,
            format!("topic {topic:?} does not exist (topics.auto_create is off)"),
        )),
        Err(error) => Err(Refusal::from(&error)),
    }
}
