//! Deliver spans: from a record taken from the log for a client to the client's acknowledgement.
//!
//! A subscription's records are looked at as the front end takes them
//! ([`Events::on_taken`](crate::log::events::Events::on_taken)): each record carrying a trace context
//! gets a span, a child of that context, whose own context replaces the record's `traceparent`, so
//! the client continues the trace from the delivery. The span ends when the client acknowledges the
//! record (through the subscription's control), or, unacknowledged, when its partition is revoked or
//! sought, or the subscription ends.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, Status, Tracer as _},
};
use opentelemetry_sdk::trace::Span;

use super::{
    Tracing, Who,
    attributes::{self, Operation},
    context,
};
use crate::{
    Result,
    log::{
        AckOutcome, Position, Record, Subscription, SubscriptionControl, SubscriptionEvent,
        TopicPartition,
    },
    sync::lock,
};

/// Open delivery spans per subscription at most: a front end that never acknowledges (a reader
/// that commits nothing) leaves its spans open until the partition moves, so past this many the
/// newest records go without one rather than the map growing.
const MAX_OPEN: usize = 65_536;

/// `subscription`, its records' deliveries traced for `who`.
pub fn traced_deliveries(subscription: Subscription, tracing: &Tracing, who: &Who) -> Subscription {
    let open = Arc::new(Open::default());
    let taken = {
        let open = open.clone();
        let tracing = tracing.clone();
        let who = who.clone();
        Arc::new(move |event: &mut SubscriptionEvent| match event {
            SubscriptionEvent::Records(records) => {
                for record in records.iter_mut() {
                    if let Some(span) = start(&tracing, &who, record) {
                        open.insert(record, span);
                    }
                }
            }
            SubscriptionEvent::Revoked(partitions) => open.end_partitions(partitions),
            SubscriptionEvent::Assigned(_) => {}
        })
    };
    Subscription {
        events: subscription.events.on_taken(taken),
        control: Arc::new(TracedControl {
            inner: subscription.control,
            open,
        }),
    }
}

/// Traces the delivery of fetched records, which nobody acknowledges: each span ends at once.
pub fn fetched(records: &mut [Record], tracing: &Tracing, who: &Who) {
    for record in records {
        if let Some(mut span) = start(tracing, who, record) {
            span.end();
        }
    }
}

/// The delivery span of `record`, when it carries a trace context; the record now carries the
/// span's.
fn start(tracing: &Tracing, who: &Who, record: &mut Record) -> Option<Span> {
    let parent = context::carried(&record.headers)?;
    let tracer = tracing.tracer();
    let mut attributes = attributes::common(Operation::Deliver, who, &record.topic);
    attributes.extend([
        KeyValue::new(attributes::PARTITION, record.partition.to_string()),
        KeyValue::new(attributes::OFFSET, record.offset),
        KeyValue::new(
            attributes::BODY_SIZE,
            record.value.as_ref().map_or(0, |value| value.len()) as i64,
        ),
    ]);
    if !record.courier_id.is_empty() {
        attributes.push(KeyValue::new(
            attributes::MESSAGE_ID,
            record.courier_id.clone(),
        ));
    }
    let span = tracer
        .span_builder(format!("{} {}", Operation::Deliver.name(), record.topic))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    context::carry(&mut record.headers, span.span_context());
    Some(span)
}

/// A subscription's delivery spans not ended yet, by record.
#[derive(Debug, Default)]
struct Open {
    spans: std::sync::Mutex<HashMap<(TopicPartition, i64), Span>>,
}

impl Open {
    fn insert(&self, record: &Record, span: Span) {
        let mut spans = lock(&self.spans);
        if spans.len() < MAX_OPEN {
            // A record delivered again replaces (and so ends) its earlier span.
            spans.insert((record.topic_partition(), record.offset), span);
        }
    }

    fn acknowledged(&self, partition: &TopicPartition, offset: i64) {
        let span = lock(&self.spans).remove(&(partition.clone(), offset));
        if let Some(mut span) = span {
            span.end();
        }
    }

    /// Ends the spans of the records of `partition` from `first` to `last`, taking the lock once.
    fn acknowledged_range(&self, partition: &TopicPartition, first: i64, last: i64) {
        let ended: Vec<Span> = {
            let mut spans = lock(&self.spans);
            if spans.is_empty() || last < first {
                return;
            }
            // Whichever is fewer: the range's offsets looked up, or the open spans looked through.
            let span = usize::try_from(last.abs_diff(first)).unwrap_or(usize::MAX);
            let keys: Vec<(TopicPartition, i64)> = if span < spans.len() {
                (first..=last)
                    .map(|offset| (partition.clone(), offset))
                    .collect()
            } else {
                spans
                    .keys()
                    .filter(|(open, offset)| open == partition && (first..=last).contains(offset))
                    .cloned()
                    .collect()
            };
            keys.iter().filter_map(|key| spans.remove(key)).collect()
        };
        for mut span in ended {
            span.end();
        }
    }

    /// Ends the spans of acknowledged records, taking the lock once.
    fn acknowledged_all(&self, partition: &TopicPartition, offsets: &[i64]) {
        let ended: Vec<Span> = {
            let mut spans = lock(&self.spans);
            if spans.is_empty() {
                // Nothing open (untraced records): no key made per offset of a long ack.
                return;
            }
            offsets
                .iter()
                .filter_map(|&offset| spans.remove(&(partition.clone(), offset)))
                .collect()
        };
        for mut span in ended {
            span.end();
        }
    }

    /// Ends the spans of records in `partitions`, which will not be acknowledged here.
    fn end_partitions(&self, partitions: &[TopicPartition]) {
        let ended: Vec<Span> = lock(&self.spans)
            .extract_if(|(partition, _), _| partitions.contains(partition))
            .map(|(_, span)| span)
            .collect();
        unacknowledged(ended);
    }

    fn end_all(&self) {
        let ended: Vec<Span> = lock(&self.spans).drain().map(|(_, span)| span).collect();
        unacknowledged(ended);
    }
}

fn unacknowledged(spans: Vec<Span>) {
    for mut span in spans {
        span.set_status(Status::error("not acknowledged"));
        span.end();
    }
}

/// A subscription's control that ends a record's delivery span when the client acknowledges it.
#[derive(Debug)]
struct TracedControl {
    inner: Arc<dyn SubscriptionControl>,
    open: Arc<Open>,
}

#[async_trait]
impl SubscriptionControl for TracedControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        let outcome = self.inner.ack(partition, offset);
        self.open.acknowledged(partition, offset);
        outcome
    }

    fn ack_all(&self, partition: &TopicPartition, offsets: &[i64]) -> usize {
        let acked = self.inner.ack_all(partition, offsets);
        self.open.acknowledged_all(partition, offsets);
        acked
    }

    fn ack_range(&self, partition: &TopicPartition, first: i64, last: i64) -> usize {
        let acked = self.inner.ack_range(partition, first, last);
        self.open.acknowledged_range(partition, first, last);
        acked
    }

    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        self.open.end_partitions(std::slice::from_ref(partition));
        self.inner.seek(partition, position).await
    }

    fn outstanding(&self) -> usize {
        self.inner.outstanding()
    }

    async fn commit(&self) -> Result<()> {
        self.inner.commit().await
    }

    async fn close(&self) -> Result<()> {
        self.open.end_all();
        self.inner.close().await
    }

    async fn abandon(&self) -> Result<()> {
        self.open.end_all();
        self.inner.abandon().await
    }
}
