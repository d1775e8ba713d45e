//! A client's receiver link: records of one topic become deliveries, and the client's outcome decides
//! what happens to each record.
//!
//! | outcome            | effect                                                                   |
//! |--------------------|--------------------------------------------------------------------------|
//! | accepted           | acknowledged to the log (the group commits its contiguous acked prefix) |
//! | released           | delivered again on this link                                             |
//! | modified           | delivered again; `delivery-failed` counts in the header's delivery-count |
//! | rejected           | written to `T.dlq` with the client's error in headers, then acknowledged |
//! | pre-settled link   | acknowledged as sent (at-most-once, as the client asked)                 |
//!
//! A record is delivered at most [`Config::max_delivery_count`](crate::Config::max_delivery_count)
//! times on one link: released or modified that many times (or settled with no outcome), it is
//! dead-lettered as a rejected one is, with condition `courier:delivery-limit-exceeded`, and
//! acknowledged. Every redelivery counts, `released` too, though the spec does not count a release
//! as a failed attempt (it does not reach the header's delivery-count): a client that releases
//! whatever it gets would otherwise have it back forever.
//!
//! Flow control: a delivery goes out only against the client's credit; a drain request is answered by
//! fe2o3 at once, consuming the credit left, and records not yet sent wait for the next credit. The
//! subscription stops reading at [`Config::max_unsettled`](crate::Config::max_unsettled) records sent or
//! queued and not acknowledged. Records of a partition the group moves elsewhere are dropped from the
//! queue (one already handed to the link's sending side goes out all the same), and the outcomes of
//! its deliveries are ignored: the new owner reads them from the committed offset. No delivery's
//! frames are interleaved with another's, however many frames it takes: see [`send_each`].

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
};

use courier_gateway::{
    log::{
        Log, Record, SubscribeOptions, Subscription, SubscriptionEvent, TopicPartition,
        TopicSelector,
    },
    metrics::{self, Protocol},
};
use fe2o3_amqp::{
    Sender,
    link::{
        SendError,
        delivery::{DeliveryFut, Sendable},
    },
    types::{
        definitions::{self, ErrorCondition, LinkError},
        messaging::{Body, Outcome},
        primitives::{Symbol, Value},
    },
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{address::Origin, error::Refusal, mapping};

/// A record waiting to be sent, or sent again.
#[derive(Debug)]
struct Queued {
    record: Record,
    /// Deliveries of it on this link that the client modified with `delivery-failed`.
    failed_deliveries: u32,
    /// Deliveries of it on this link, whatever their outcome.
    deliveries: u32,
}

/// A sent delivery's outcome, once the client settles it.
type Settled = Pin<Box<dyn Future<Output = (Queued, Result<Outcome, SendError>)> + Send>>;

/// A send's result: the delivery's outcome to come, or why it could not be sent.
type Sent = Result<DeliveryFut<Result<Outcome, SendError>>, SendError>;

/// A delivery handed to the link's sending side, and where its result goes.
type Handed = (Sendable<Body<Value>>, oneshot::Sender<Sent>);

/// The topics a receiver link's subscription reads, and where rejected records go.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the link names.
    pub origin: Origin,
    /// Topic for rejected records.
    pub dead_letter_topic: String,
    /// Most records sent or queued and not acknowledged.
    pub max_unsettled: usize,
    /// Most deliveries of one record on the link before it is dead-lettered.
    pub max_delivery_count: u32,
    /// The client's address, for describe-group output.
    pub client: String,
}

/// Serves one client receiver link until it detaches, fails, or the gateway drains. `log` is the
/// client's (its subscription is the client's principal's); `dead_letters` the gateway's own, to
/// which rejected records are written. A client can dead-letter only to the dead-letter topic of
/// the topic it was allowed to consume ([`Plan::dead_letter_topic`]), and only records it was
/// delivered.
pub async fn run(
    log: Arc<dyn Log>,
    dead_letters: Arc<dyn Log>,
    mut sender: Sender,
    plan: Plan,
    cancel: CancellationToken,
) {
    let options = SubscribeOptions {
        topics: TopicSelector::Names(vec![plan.origin.topic.clone()]),
        group: plan.origin.group.clone(),
        start: plan.origin.start,
        max_in_flight: plan.max_unsettled,
        client: plan.client.clone(),
        protocol: "amqp",
    };
    let subscription = match log.subscribe(options).await {
        Ok(subscription) => subscription,
        Err(error) => {
            let _ = sender
                .close_with_error(definitions::Error::from(Refusal::from(&error)))
                .await;
            return;
        }
    };
    let mut link = Link {
        dead_letters,
        plan,
        queue: VecDeque::new(),
        unsettled: FuturesUnordered::new(),
        revoked: HashSet::new(),
    };
    let closing = link.serve(&mut sender, subscription, cancel).await;
    let _ = match closing {
        Some(refusal) => {
            sender
                .close_with_error(definitions::Error::from(refusal))
                .await
        }
        None => sender.close().await,
    };
}

struct Link {
    /// The gateway's own log, for dead letters.
    dead_letters: Arc<dyn Log>,
    plan: Plan,
    queue: VecDeque<Queued>,
    unsettled: FuturesUnordered<Settled>,
    /// Partitions the group moved elsewhere (until they come back): outcomes of their records
    /// still out on the link are of no use.
    revoked: HashSet<TopicPartition>,
}

impl Link {
    /// The link's loop. Returns the condition to detach with, `None` when the client went away.
    async fn serve(
        &mut self,
        sender: &mut Sender,
        mut subscription: Subscription,
        cancel: CancellationToken,
    ) -> Option<Refusal> {
        // One delivery at a time is handed to the sending side, which sends it to its last frame.
        let (hand, handed) = mpsc::channel::<Handed>(1);
        let sending = send_each(sender, handed);
        tokio::pin!(sending);
        // The delivery handed over and its result to come.
        let mut in_flight: Option<(Queued, oneshot::Receiver<Sent>)> = None;
        let closing = loop {
            if in_flight.is_none()
                && let Some(queued) = self.queue.pop_front()
            {
                let message = mapping::from_record(&queued.record, queued.failed_deliveries);
                let (result, sent) = oneshot::channel();
                if hand
                    .try_send((Sendable::builder().message(message).build(), result))
                    .is_err()
                {
                    // The sending side has ended: the client detached.
                    break None;
                }
                in_flight = Some((queued, sent));
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Some(Refusal::draining()),
                Some((queued, outcome)) = self.unsettled.next(), if !self.unsettled.is_empty() => {
                    if let Err(refusal) = self.settled(&subscription, queued, outcome).await {
                        break refusal;
                    }
                }
                event = subscription.next_event() => match event {
                    Some(SubscriptionEvent::Records(records)) => {
                        self.queue.extend(records.into_iter().map(|record| Queued { record, failed_deliveries: 0, deliveries: 0 }));
                    }
                    // A record already handed over is delivered all the same; its outcome is then
                    // ignored, as those of the partition's deliveries the client still holds.
                    Some(SubscriptionEvent::Revoked(partitions)) => {
                        self.queue.retain(|queued| !partitions.contains(&queued.record.topic_partition()));
                        self.revoked.extend(partitions);
                    }
                    Some(SubscriptionEvent::Assigned(partitions)) => {
                        for partition in &partitions {
                            self.revoked.remove(partition);
                        }
                    }
                    None => break Some(Refusal::new(
                        LinkError::DetachForced,
                        "the gateway's subscription ended; reattach",
                    )),
                },
                sent = async {
                    match &mut in_flight {
                        Some((_, sent)) => sent.await,
                        None => std::future::pending().await,
                    }
                } => {
                    // (Always `Some`: only a send in flight has a result to come.)
                    let Some((mut queued, _)) = in_flight.take() else { continue };
                    match sent {
                        Ok(Ok(delivery)) => {
                            queued.deliveries += 1;
                            metrics::delivered_records(Protocol::Amqp, std::slice::from_ref(&queued.record));
                            self.unsettled.push(Box::pin(async move { (queued, delivery.await) }));
                        }
                        Ok(Err(SendError::MessageSizeExceeded(exceeded))) => {
                            break Some(Refusal::new(
                                LinkError::MessageSizeExceeded,
                                format!(
                                    "record at offset {} is {} bytes, over this link's max-message-size of {}; attach with a larger one",
                                    queued.record.offset, exceeded.size, exceeded.max_size
                                ),
                            ));
                        }
                        Ok(Err(_)) | Err(_) => break None,
                    }
                }
                () = &mut sending => break None,
            }
        };
        // Commit what was acknowledged and leave the group; what was not is delivered again, to this
        // client when it reattaches or to another member.
        if let Err(error) = subscription.close().await {
            tracing::warn!(%error, topic = %self.plan.origin.topic, "closing an AMQP link's subscription");
        }
        closing
    }

    /// Acts on a delivery's outcome. An error ends the link.
    async fn settled(
        &mut self,
        subscription: &Subscription,
        mut queued: Queued,
        outcome: Result<Outcome, SendError>,
    ) -> Result<(), Option<Refusal>> {
        let partition = queued.record.topic_partition();
        if self.revoked.contains(&partition) {
            // The new owner delivers the record from the committed offset: released here it would
            // be delivered here again, rejected it would be dead-lettered while the new owner may
            // have it accepted.
            return Ok(());
        }
        match outcome {
            Ok(Outcome::Accepted(_)) => {
                metrics::acked(Protocol::Amqp, 1);
                subscription.control.ack(&partition, queued.record.offset);
            }
            Ok(Outcome::Released(_)) => self.again(subscription, queued, "released").await?,
            Ok(Outcome::Modified(modified)) => {
                if modified.delivery_failed == Some(true) {
                    queued.failed_deliveries += 1;
                }
                self.again(subscription, queued, "modified").await?;
            }
            Ok(Outcome::Rejected(rejected)) => {
                let reason = rejected.error.map(|error| Refusal {
                    condition: error.condition,
                    description: error.description.unwrap_or_default(),
                });
                dead_letter(
                    &self.dead_letters,
                    &self.plan.dead_letter_topic,
                    &queued.record,
                    reason.as_ref(),
                )
                .await?;
                metrics::acked(Protocol::Amqp, 1);
                subscription.control.ack(&partition, queued.record.offset);
            }
            // Settled with no outcome, or with a non-terminal one: deliver it again.
            Err(SendError::IllegalDeliveryState | SendError::NonTerminalDeliveryState) => {
                self.again(subscription, queued, "settled with no outcome")
                    .await?
            }
            Err(_) => return Err(None),
        }
        Ok(())
    }

    /// Delivers a record again, unless it has been delivered as often as a record may be: then it
    /// is dead-lettered and acknowledged.
    async fn again(
        &mut self,
        subscription: &Subscription,
        queued: Queued,
        outcome: &str,
    ) -> Result<(), Option<Refusal>> {
        if queued.deliveries < self.plan.max_delivery_count {
            self.queue.push_front(queued);
            return Ok(());
        }
        let reason = Refusal::new(
            ErrorCondition::Custom(Symbol::from(mapping::dead_letter::DELIVERY_LIMIT_CONDITION)),
            format!(
                "delivered {} times without being accepted or rejected (amqp.max_delivery_count); the last delivery was {outcome}",
                queued.deliveries
            ),
        );
        tracing::info!(partition = %queued.record.topic_partition(), offset = queued.record.offset, dead_letter_topic = %self.plan.dead_letter_topic, reason = %reason.description, "AMQP record dead-lettered");
        dead_letter(
            &self.dead_letters,
            &self.plan.dead_letter_topic,
            &queued.record,
            Some(&reason),
        )
        .await?;
        metrics::acked(Protocol::Amqp, 1);
        subscription
            .control
            .ack(&queued.record.topic_partition(), queued.record.offset);
        Ok(())
    }
}

/// The link's sending side: sends each delivery handed to it, to its last transfer frame, and
/// watches for the client detaching between them. Returns when the client detached or nothing more
/// will be handed over.
///
/// A delivery larger than the client's max-frame-size goes out as several frames, and fe2o3's send
/// yields between them (when the connection's queue is full, or the task's budget is spent). A
/// send dropped there leaves the delivery half sent, and the next one's first frame then breaks
/// it (deliveries of a link may not interleave, AMQP 1.0 §2.6.14): so a send is never raced with
/// the link's other events, only waited for. (When the link ends, a send under way is dropped:
/// DETACH follows its frames, which ends the delivery for the receiver.)
async fn send_each(sender: &mut Sender, mut handed: mpsc::Receiver<Handed>) {
    loop {
        tokio::select! {
            biased;
            next = handed.recv() => match next {
                Some((sendable, result)) => {
                    let _ = result.send(sender.send_batchable_ref(&sendable).await);
                }
                None => return,
            },
            // Cancel safe: it only reads the link's incoming frames.
            _ = sender.on_detach() => return,
        }
    }
}

/// Writes a rejected record to the dead-letter topic. Until that is durable the record is not
/// acknowledged; if it cannot be written, the link ends so the record is delivered again.
async fn dead_letter(
    log: &Arc<dyn Log>,
    topic: &str,
    record: &Record,
    reason: Option<&Refusal>,
) -> Result<(), Option<Refusal>> {
    let letter = mapping::dead_letter(record, reason);
    match log.append(topic, vec![letter]).await {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(%error, partition = %record.topic_partition(), offset = record.offset, dead_letter_topic = %topic, "cannot dead-letter a rejected AMQP delivery; it will be delivered again");
            let mut refusal = Refusal::from(&error);
            refusal.description = format!(
                "a rejected delivery could not be written to {topic}: {}",
                refusal.description
            );
            Err(Some(refusal))
        }
    }
}
