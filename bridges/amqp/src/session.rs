//! One AMQP session: its links accepted, checked before they run, and each given a task of its own
//! ([`inbound`](crate::inbound) or [`outbound`](crate::outbound)). A link that fails the check is
//! attached and at once detached with the reason (AMQP has no other way to refuse one); the session
//! carries on. The refused link waits for the client's DETACH in a task of its own, so a client
//! may answer late (one whose event loop runs only inside its calls does); its next attach is
//! taken once the answer is in, which a client's frames put first. A client that attaches again
//! without answering has its session ended after [`REFUSED_DETACH_WAIT`] (`amqp:not-allowed`):
//! fe2o3 keys a DETACH awaiting its answer by the output handle it freed, which the next link
//! takes, so that link's own DETACH would be mistaken for the answer and go unanswered. A link the
//! client's principal may not use is refused the same way, with `amqp:unauthorized-access`, before
//! anything is read or written for it.
//!
//! The refusing ATTACH is fe2o3's acceptor's, which echoes the client's terminus. Section 2.6.3's
//! example of a refusal (figure 2.33) carries none instead; that was tried and left, because
//! fe2o3's own client answers a missing terminus with a DETACH at once, and the two DETACHes
//! crossing often cost it the reason, or the session's next link.

use std::{sync::Arc, time::Duration};

use courier_gateway::{
    Error as LogError,
    metrics::{self, Protocol},
};
use fe2o3_amqp::{
    acceptor::{LinkAcceptor, LinkEndpoint, ListenerSessionHandle},
    types::{
        definitions::{self, AmqpError, Role},
        performatives::Attach,
    },
};
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    address, client::Client, error::Refusal, inbound, outbound, outbound::Plan, shared::Shared,
};

/// How long a new attach waits for the client's answers to the DETACHes of links refused before
/// it, which a client sends ahead of its next ATTACH; only one that did not send them waits.
const REFUSED_DETACH_WAIT: Duration = Duration::from_secs(5);

/// Serves one session: accepts its links, checks each, and runs it in a task of its own until the
/// session ends or the gateway drains.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    client: Arc<Client>,
    mut session: ListenerSessionHandle,
    drain: CancellationToken,
) {
    let peer = client.peer;
    let links = TaskTracker::new();
    let link_acceptor = LinkAcceptor::builder()
        .max_message_size(shared.config.max_message_size)
        .build();
    // Why the session ends early, sent in END; `None` when the client ended it or the gateway drains.
    let mut failure = None;
    // Refused links waiting for the client's DETACH (dropped, mid-close, when the session ends).
    let mut refused = JoinSet::new();
    loop {
        let attach = tokio::select! {
            () = drain.cancelled() => break,
            attach = session.next_incoming_attach() => match attach {
                Some(attach) => attach,
                None => break,
            },
        };
        if !refused.is_empty() {
            let answers = async { while refused.join_next().await.is_some() {} };
            tokio::select! {
                () = drain.cancelled() => break,
                answered = tokio::time::timeout(REFUSED_DETACH_WAIT, answers) => {
                    if answered.is_err() {
                        tracing::info!(%peer, link = %attach.name, "an attach while a refused link's DETACH went unanswered; ending the session");
                        metrics::limit_refused(Protocol::Amqp, "refused_link_detach");
                        failure = Some(definitions::Error::new(
                            AmqpError::NotAllowed,
                            Some(format!(
                                "link {:?} attached before the DETACH of a refused link was answered",
                                attach.name
                            )),
                            None,
                        ));
                        break;
                    }
                }
            }
        }
        let check = check_link(&shared, &client, &attach).await;
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
                // fe2o3's close sends the DETACH and waits for the client's.
                refused.spawn(
                    async move {
                        let _ = match endpoint {
                            LinkEndpoint::Sender(sender) => sender.close_with_error(error).await,
                            LinkEndpoint::Receiver(receiver) => {
                                receiver.close_with_error(error).await
                            }
                        };
                    }
                    .in_current_span(),
                );
                continue;
            }
        };
        let cancel = drain.child_token();
        match (route, endpoint) {
            (Route::Inbound(destination), LinkEndpoint::Receiver(receiver)) => {
                tracing::debug!(%peer, link = %name, topic = %destination.topic, "AMQP sender link attached");
                links.spawn(
                    inbound::run(
                        client.log.clone(),
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
                    outbound::run(client.log.clone(), shared.log.clone(), sender, plan, cancel)
                        .in_current_span(),
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
    refused.shutdown().await;
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

/// Checks a link before it runs: its address, whether the client's principal may use it (the
/// policy here; the gateway's own topics when the topic is opened through the client's log), and
/// its topic.
async fn check_link(shared: &Shared, client: &Client, attach: &Attach) -> Result<Route, Refusal> {
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
            client.may_send(&destination.topic)?;
            let partitions = topic_partitions(client, &destination.topic).await?;
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
            client.may_receive(&origin.topic, origin.group.as_deref())?;
            topic_partitions(client, &origin.topic).await?;
            let dead_letter_topic = format!("{}{}", origin.topic, shared.config.dead_letter_suffix);
            Ok(Route::Outbound(Plan {
                origin,
                dead_letter_topic,
                max_unsettled: shared.config.max_unsettled,
                max_delivery_count: shared.config.max_delivery_count,
                client: format!("{} {}", client.peer, attach.name),
            }))
        }
    }
}

/// The topic's partition count. The log's topic policy creates a missing topic when
/// `topics.auto_create` is on; when it is off the link is refused with `amqp:not-found`. Opened
/// through the client's log, so that the gateway's own topics are refused
/// (`amqp:unauthorized-access`).
async fn topic_partitions(client: &Client, topic: &str) -> Result<u32, Refusal> {
    match client.log.open_topic(topic).await {
        Ok(description) => Ok(description.partitions.len() as u32),
        Err(LogError::UnknownTopic { .. }) => Err(Refusal::new(
            AmqpError::NotFound,
            format!("topic {topic:?} does not exist (topics.auto_create is off)"),
        )),
        Err(error) => Err(Refusal::from(&error)),
    }
}
