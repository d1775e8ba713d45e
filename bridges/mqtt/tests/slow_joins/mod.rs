//! A log whose consumer groups join late, as Kafka's do: a group subscription is answered at once,
//! but the member joins the inner log (where its start is decided) only once joins are let through,
//! and never if the subscriber left first. So a test can have an MQTT client subscribe and leave
//! before its group ever held a partition, on the embedded log, deterministically.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use courier_gateway::{
    Result,
    log::{
        AckOutcome, Log, Position, SubscribeOptions, Subscription, SubscriptionControl,
        TopicPartition, events,
        layers::{Layer, Layered},
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Holds group joins back while [`SlowJoins::hold`] is on.
#[derive(Debug, Clone)]
pub(crate) struct SlowJoins {
    /// The log under the layer, for the joins made after the subscribe call returned.
    log: Arc<dyn Log>,
    held: Arc<watch::Sender<bool>>,
}

impl SlowJoins {
    /// `log` with its group joins held back when asked, and the switch that holds them.
    pub(crate) fn over(log: Arc<dyn Log>) -> (Self, Arc<dyn Log>) {
        let slow = Self {
            log: log.clone(),
            held: Arc::new(watch::Sender::new(false)),
        };
        (slow.clone(), Arc::new(Layered::over(slow, log)))
    }

    /// Group members subscribed from now on wait to join until [`SlowJoins::release`].
    pub(crate) fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets every waiting member join (unless it left meanwhile).
    pub(crate) fn release(&self) {
        self.held.send_replace(false);
    }
}

/// A member's control before and after it joined: before, nothing is held, so acks are ignored and a
/// close only cancels the join.
#[derive(Debug, Default)]
struct LateControl {
    joined: Mutex<Option<Arc<dyn SubscriptionControl>>>,
    left: CancellationToken,
}

impl LateControl {
    fn joined(&self) -> Option<Arc<dyn SubscriptionControl>> {
        self.joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl SubscriptionControl for LateControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        self.joined().map_or(AckOutcome::Ignored, |control| {
            control.ack(partition, offset)
        })
    }
    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        match self.joined() {
            Some(control) => control.seek(partition, position).await,
            None => Ok(()),
        }
    }
    fn outstanding(&self) -> usize {
        self.joined().map_or(0, |control| control.outstanding())
    }
    async fn commit(&self) -> Result<()> {
        match self.joined() {
            Some(control) => control.commit().await,
            None => Ok(()),
        }
    }
    async fn close(&self) -> Result<()> {
        self.left.cancel();
        match self.joined() {
            Some(control) => control.close().await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Layer for SlowJoins {
    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        if options.group.is_none() {
            return inner.subscribe(options).await;
        }
        let (events_tx, events) = events::channel(options.max_in_flight);
        let control = Arc::new(LateControl::default());
        let (log, late, mut held) = (self.log.clone(), control.clone(), self.held.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = held.wait_for(|held| !*held) => {}
                () = late.left.cancelled() => return,
            }
            let Ok(mut subscription) = log.subscribe(options).await else {
                return;
            };
            *late.joined.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(subscription.control.clone());
            if late.left.is_cancelled() {
                let _ = subscription.control.close().await;
                return;
            }
            loop {
                tokio::select! {
                    event = subscription.next_event() => {
                        let Some(event) = event else { break };
                        if events_tx.send(event).is_err() {
                            break;
                        }
                    }
                    () = events_tx.closed() => break,
                }
            }
            let _ = subscription.control.close().await;
        });
        Ok(Subscription { events, control })
    }
}
