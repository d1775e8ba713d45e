//! The queue of a subscription's events, from the backend's read loop to the front end, bounded in
//! records: at most the subscriber's window waits in it, whatever the client does.
//!
//! The window alone does not bound it. A record counts as in flight from the moment it is queued, and
//! leaves the window when it is acknowledged, its partition is sought or revoked. A gRPC client
//! acknowledges by offset, so it can acknowledge records it has not read yet (offsets are easy to
//! guess), or seek over and over, or another member can make its group rebalance: each frees the
//! window while the records are still queued, and a read loop that filled the window again would
//! queue a window more each time, without end, for a client that reads nothing. So a read loop queues
//! records only while the queue has [`room`](EventSender::room), and the front end taking records
//! from the queue wakes it ([`taken`](EventSender::taken)).
//!
//! Assignment changes are always queued: librdkafka hands them to a callback that cannot wait, and
//! they are few (one per rebalance of the member).
//!
//! The queue is futures' unbounded channel, which allocates per event: tokio's allocates a block of
//! 32 events when made, over a KiB for every idle subscriber.
//!
//! A layer may look at each event as the front end takes it ([`Events::on_taken`]): tracing starts a
//! record's delivery span there and rewrites its trace context, without a task of its own between
//! the read loop and the front end.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures_channel::mpsc;
use futures_util::Stream;
use tokio::sync::{Notify, futures::Notified};

use super::SubscriptionEvent;

/// A queue for at most `max_records` records (and any number of assignment changes): what a `Log`
/// hands out as [`Subscription::events`](super::Subscription::events).
pub fn channel(max_records: usize) -> (EventSender, Events) {
    let (sender, receiver) = mpsc::unbounded();
    let queued = Arc::new(Queued {
        records: AtomicUsize::new(0),
        max_records,
        taken: Notify::new(),
        receiver_gone: AtomicBool::new(false),
        gone: Notify::new(),
    });
    (
        EventSender {
            events: sender,
            queued: queued.clone(),
        },
        Events {
            events: receiver,
            queued,
            on_taken: None,
        },
    )
}

/// The records in a queue and who waits for them to be taken.
#[derive(Debug)]
struct Queued {
    records: AtomicUsize,
    max_records: usize,
    /// Notified when the front end takes records; the read loop is the one waiter.
    taken: Notify,
    /// Set, and `gone` notified, when the front end drops its end.
    receiver_gone: AtomicBool,
    gone: Notify,
}

/// The read loop's end of the queue.
#[derive(Debug)]
pub struct EventSender {
    events: mpsc::UnboundedSender<SubscriptionEvent>,
    queued: Arc<Queued>,
}

/// The front end dropped its end of the queue; the event was not queued.
#[derive(Debug, thiserror::Error)]
#[error("the subscriber has gone")]
pub struct Gone(pub SubscriptionEvent);

impl EventSender {
    /// Queues `event`. Records should be sent only within [`room`](Self::room); the queue counts
    /// them but does not refuse them (the fan-out hub bounds its members by its own rule). Errs once
    /// the front end dropped its end.
    pub fn send(&self, event: SubscriptionEvent) -> Result<(), Gone> {
        let records = records_in(&event);
        self.queued.records.fetch_add(records, Ordering::AcqRel);
        self.events.unbounded_send(event).map_err(|refused| {
            self.queued.records.fetch_sub(records, Ordering::AcqRel);
            Gone(refused.into_inner())
        })
    }

    /// How many more records may be queued now.
    pub fn room(&self) -> usize {
        self.queued
            .max_records
            .saturating_sub(self.queued.records.load(Ordering::Acquire))
    }

    /// Completes once the front end has taken records since the last wait (at once if it did
    /// meanwhile: the wake-up is kept until then).
    pub fn taken(&self) -> Notified<'_> {
        self.queued.taken.notified()
    }

    /// Completes once the front end has dropped its end.
    pub async fn closed(&self) {
        loop {
            // Registered before the flag is read, so a drop in between is not missed.
            let gone = self.queued.gone.notified();
            let mut gone = std::pin::pin!(gone);
            gone.as_mut().enable();
            if self.queued.receiver_gone.load(Ordering::Acquire) {
                return;
            }
            gone.await;
        }
    }
}

/// What a layer does to each event as the front end takes it; see [`Events::on_taken`].
pub type OnTaken = Arc<dyn Fn(&mut SubscriptionEvent) + Send + Sync>;

/// The front end's end of the queue: a subscription's events, in order.
pub struct Events {
    events: mpsc::UnboundedReceiver<SubscriptionEvent>,
    queued: Arc<Queued>,
    on_taken: Option<OnTaken>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.queued)
            .field("on_taken", &self.on_taken.is_some())
            .finish()
    }
}

impl Events {
    /// These events, each passed to `hook` as the front end takes it (after any hook already set).
    pub fn on_taken(mut self, hook: OnTaken) -> Self {
        self.on_taken = Some(match self.on_taken.take() {
            None => hook,
            Some(first) => Arc::new(move |event: &mut SubscriptionEvent| {
                first(event);
                hook(event);
            }),
        });
        self
    }

    /// The next event; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<SubscriptionEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Records queued and not taken yet.
    pub fn queued_records(&self) -> usize {
        self.queued.records.load(Ordering::Acquire)
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionEvent>> {
        let mut event = Pin::new(&mut self.events).poll_next(cx);
        if let Poll::Ready(Some(event)) = &mut event {
            let records = records_in(event);
            if records > 0 {
                self.queued.records.fetch_sub(records, Ordering::AcqRel);
                self.queued.taken.notify_one();
            }
            if let Some(hook) = &self.on_taken {
                hook(event);
            }
        }
        event
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.queued.receiver_gone.store(true, Ordering::Release);
        self.queued.gone.notify_waiters();
    }
}

impl Stream for Events {
    type Item = SubscriptionEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

fn records_in(event: &SubscriptionEvent) -> usize {
    match event {
        SubscriptionEvent::Records(records) => records.len(),
        SubscriptionEvent::Assigned(_) | SubscriptionEvent::Revoked(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::log::Record;

    fn records(count: usize) -> SubscriptionEvent {
        let record = Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp_ms: 0,
            courier_id: String::new(),
            origin: String::new(),
        };
        SubscriptionEvent::Records(vec![record; count])
    }

    #[tokio::test]
    async fn room_is_what_the_front_end_has_not_taken() {
        let (sender, mut events) = channel(10);
        assert_eq!(sender.room(), 10);
        sender.send(SubscriptionEvent::Assigned(Vec::new())).ok();
        sender.send(records(4)).ok();
        sender.send(records(6)).ok();
        assert_eq!((sender.room(), events.queued_records()), (0, 10));
        assert!(matches!(
            events.recv().await,
            Some(SubscriptionEvent::Assigned(_))
        ));
        assert_eq!(sender.room(), 0, "assignment changes take no room");
        assert!(matches!(events.recv().await, Some(SubscriptionEvent::Records(r)) if r.len() == 4));
        assert_eq!(sender.room(), 4);
        // The take was noticed although nobody waited then.
        tokio::time::timeout(Duration::from_secs(5), sender.taken())
            .await
            .expect("the take wakes the read loop");
        drop(events);
        assert!(sender.send(records(1)).is_err());
        assert_eq!(sender.room(), 4, "a refused send is not counted");
    }
}
