//! A client's sender link: its deliveries become records of one topic, each settled once the log has
//! acknowledged it.
//!
//! Flow control: the link's credit is [`Config::link_credit`](crate::Config::link_credit) and is
//! topped up only as deliveries are settled (fe2o3's auto credit counts dispositions, not arrivals; a
//! pre-settled delivery is "disposed" too, without a frame, so it counts), so
//! a slow log withholds credit instead of buffering. Appends are pipelined: each delivery is queued in
//! the log at once, in arrival order, and settled in that order when its receipt resolves.
//! Pre-settled deliveries (at-most-once) are appended the same way; they only get no disposition.

use std::{future::Future, pin::Pin, sync::Arc};

use courier_gateway::{
    log::Log,
    metrics::{self, Protocol},
};
use fe2o3_amqp::{
    Receiver,
    link::{RecvError, delivery::DeliveryInfo, receiver::CreditMode},
    types::{
        definitions::{self, AmqpError, LinkError},
        messaging::Body,
        primitives::Value,
    },
};
use futures_util::{StreamExt, stream::FuturesOrdered};
use tokio_util::sync::CancellationToken;

use crate::{address::Destination, error::Refusal, mapping};

/// A delivery's settlement, once known: accepted, or rejected for a reason.
type Settlement = Pin<Box<dyn Future<Output = (DeliveryInfo, Result<(), Refusal>)> + Send>>;

/// Serves one client sender link until it detaches, fails, or the gateway drains.
pub async fn run(
    log: Arc<dyn Log>,
    mut receiver: Receiver,
    destination: Destination,
    credit: u32,
    cancel: CancellationToken,
) {
    receiver.set_credit_mode(CreditMode::Auto(credit));
    if receiver.set_credit(credit).await.is_err() {
        return;
    }
    let mut pending: FuturesOrdered<Settlement> = FuturesOrdered::new();
    let mut reading = true;
    // Why the link ends, sent in DETACH once pending deliveries are settled; `None` when the client
    // detached (or the link is already closed).
    let mut closing: Option<Refusal> = None;
    while reading || !pending.is_empty() {
        tokio::select! {
            biased;
            Some((info, settlement)) = pending.next(), if !pending.is_empty() => {
                let result = match settlement {
                    Ok(()) => receiver.accept(info).await,
                    Err(refusal) => {
                        tracing::debug!(topic = %destination.topic, reason = %refusal.description, "AMQP delivery rejected");
                        receiver.reject(info, definitions::Error::from(refusal)).await
                    }
                };
                if result.is_err() {
                    // The link or session is gone; the client resends what it did not see settled.
                    reading = false;
                }
            }
            () = cancel.cancelled(), if reading => {
                reading = false;
                closing = Some(Refusal::draining());
            }
            delivery = receiver.recv::<Body<Value>>(), if reading => match delivery {
                Ok(delivery) => {
                    let (info, message) = delivery.into_parts();
                    pending.push_back(append(&log, &destination, info, message).await);
                }
                Err(error) => {
                    reading = false;
                    closing = refusal_for(&error);
                    tracing::debug!(topic = %destination.topic, %error, "AMQP sender link ends");
                }
            },
        }
    }
    let _ = match closing {
        Some(refusal) => {
            receiver
                .close_with_error(definitions::Error::from(refusal))
                .await
        }
        None => receiver.close().await,
    };
}

/// Queues one delivery's record in the log (keeping arrival order) and returns its settlement.
async fn append(
    log: &Arc<dyn Log>,
    destination: &Destination,
    info: DeliveryInfo,
    message: mapping::AmqpMessage,
) -> Settlement {
    let record = match mapping::to_record(message, destination.partition) {
        Ok(record) => record,
        Err(refusal) => {
            metrics::error(Protocol::Amqp, "invalid_request");
            return Box::pin(async move { (info, Err(refusal)) });
        }
    };
    match log.submit(&destination.topic, vec![record]).await {
        Ok(receipt) => Box::pin(async move {
            let result = receipt.await.map(drop).map_err(|e| Refusal::from(&e));
            (info, result)
        }),
        Err(error) => {
            let refusal = Refusal::from(&error);
            Box::pin(async move { (info, Err(refusal)) })
        }
    }
}

/// The condition a link that failed to receive is closed with; `None` when it is closed already
/// (the client detached, or fe2o3 closed it for an oversized message).
fn refusal_for(error: &RecvError) -> Option<Refusal> {
    match error {
        RecvError::LinkStateError(_) | RecvError::MessageSizeExceeded(_) => None,
        RecvError::MessageDecode(_) => Some(Refusal::new(
            AmqpError::DecodeError,
            format!("a delivery could not be decoded as an AMQP message: {error}"),
        )),
        RecvError::TransferLimitExceeded => Some(Refusal::new(
            LinkError::TransferLimitExceeded,
            "more transfers than the link's credit allowed",
        )),
        _ => Some(Refusal::new(AmqpError::NotAllowed, error.to_string())),
    }
}
