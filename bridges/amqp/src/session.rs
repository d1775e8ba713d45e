//! One AMQP session: its links accepted, checked before they run, and each given a task of its own
//! ([`inbound`](crate::inbound) or [`outbound`](crate::outbound)). A link that fails the check is
//! attached and at once detached with the reason (AMQP has no other way to refuse one); the session
//! carries on.

use std::{net::SocketAddr, sync::Arc};

use courier_gateway::Error as LogError;
use fe2o3_amqp::{
    acceptor::{LinkAcceptor, LinkEndpoint, ListenerSessionHandle},
    types::{
        definitions::{self, AmqpError, Role},
        performatives::Attach,
    },
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{address, error::Refusal, inbound, outbound, outbound::Plan, shared::Shared};

/// Serves one session: accepts its links, checks each, and runs it in a task of its own until the
/// session ends or the gateway drains.
pub(crate) async fn serve(
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
                links.spawn(
                    inbound::run(
                        shared.produce.clone(),
                        receiver,
                        destination,
                        shared.config.link_credit,
                        cancel,
                    )
                    .in_current_span(),
                );
            }
            (Route::Outbound(plan), LinkEndpoint::Sender(sender)) => {
                tracing::debug!(%peer, link = %name, topic = %plan.origin.topic, group = ?plan.origin.group, "AMQP receiver link attached");
                links.spawn(
                    outbound::run(shared.log.clone(), sender, plan, cancel).in_current_span(),
                );
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
