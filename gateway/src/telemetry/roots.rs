//! Root publish spans shared by one client's requests in a row.
//!
//! A record that comes without a trace context gets no span of its own: the records a client sends
//! with none are recorded together, as one root span per *batch* (`messaging.batch.message_count`),
//! the way a gRPC request of many records always was. A protocol that carries one message a request
//! (an MQTT PUBLISH, an AMQP transfer) would otherwise pay a span per message, and a span made and
//! exported costs more than the rest of a QoS 1 publish's handling together (BENCHMARKS.md, issue
//! 23). So a client's next request to the same topic joins the root span of its previous ones while
//! that span is still open: while one of its requests is not yet durable, for at most
//! [`JOIN_WINDOW`] and [`MAX_RECORDS`]. The span starts when its first request arrived and ends
//! when its last is durable; a client that sends one message at a time and waits for each still
//! gets a span per message.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, Status, TraceId, Tracer as _},
};
use opentelemetry_sdk::trace::Span;
use tokio::time::Instant;

use super::{
    Tracing, Who,
    attributes::{self, Operation},
};

/// The longest a root span takes new requests after its first: a batch covers requests that were
/// in flight together, not a quiet client's whole minute.
pub(super) const JOIN_WINDOW: Duration = Duration::from_millis(100);

/// The most records one root span stands for.
pub(super) const MAX_RECORDS: usize = 256;

/// One client's open root span, if it has one (per connection or call, in its `Traced` layer).
#[derive(Debug, Default)]
pub struct RootSpans {
    /// Held weakly: the span ends when the last request that joined it is done with it.
    open: Mutex<Weak<RootSpan>>,
}

impl RootSpans {
    /// The root span for `records` records (none with a trace context) that `who` publishes to
    /// `topic`: the open one, if it may take them, else a new one. `body_size` is the record's
    /// size when the request is of one record.
    pub(super) fn join(
        &self,
        tracing: &Tracing,
        who: &Who,
        topic: &str,
        records: usize,
        body_size: Option<usize>,
    ) -> Arc<RootSpan> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(root) = open.upgrade()
            && root.takes(topic, records)
        {
            return root;
        }
        let root = Arc::new(RootSpan::start(tracing, who, topic, records, body_size));
        *open = Arc::downgrade(&root);
        root
    }
}

/// A root publish span, ended when its last holder drops it.
#[derive(Debug)]
pub(super) struct RootSpan {
    topic: String,
    started: Instant,
    trace_id: TraceId,
    state: Mutex<RootState>,
}

#[derive(Debug)]
struct RootState {
    span: Span,
    records: usize,
    /// The first request's record's size, while the span stands for that one record.
    body_size: Option<usize>,
    /// Where the log put the first request's record, likewise.
    placed: Option<[KeyValue; 3]>,
}

impl RootSpan {
    fn start(
        tracing: &Tracing,
        who: &Who,
        topic: &str,
        records: usize,
        body_size: Option<usize>,
    ) -> Self {
        let tracer = tracing.tracer();
        let span = tracer
            .span_builder(format!("{} {topic}", Operation::Publish.name()))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes::common(Operation::Publish, who, topic))
            .start_with_context(tracer, &Context::new());
        Self {
            topic: topic.to_owned(),
            started: Instant::now(),
            trace_id: span.span_context().trace_id(),
            state: Mutex::new(RootState {
                span,
                records,
                body_size,
                placed: None,
            }),
        }
    }

    /// Whether `records` more for `topic` may join, counting them in if so.
    fn takes(&self, topic: &str, records: usize) -> bool {
        if self.topic != topic || self.started.elapsed() >= JOIN_WINDOW {
            return false;
        }
        let mut state = self.state();
        if state.records + records > MAX_RECORDS {
            return false;
        }
        state.records += records;
        true
    }

    pub(super) fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// A request of one record that joined the span was placed at `placed`; kept while the span
    /// stands for that record alone.
    pub(super) fn placed(&self, placed: [KeyValue; 3]) {
        let mut state = self.state();
        if state.records == 1 {
            state.placed = Some(placed);
        }
    }

    /// A request that joined the span failed: so does the span.
    pub(super) fn failed(&self, error: &crate::Error) {
        self.state()
            .span
            .set_status(Status::error(error.to_string()));
    }

    fn state(&self) -> MutexGuard<'_, RootState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RootSpan {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let records = state.records;
        state
            .span
            .set_attribute(KeyValue::new(attributes::BATCH_COUNT, records as i64));
        if records == 1 {
            if let Some(size) = state.body_size {
                state
                    .span
                    .set_attribute(KeyValue::new(attributes::BODY_SIZE, size as i64));
            }
            if let Some(placed) = state.placed.take() {
                state.span.set_attributes(placed);
            }
        }
        state.span.end();
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

    use super::*;
    use crate::metrics::Protocol;

    fn tracing() -> (Tracing, InMemorySpanExporter, SdkTracerProvider) {
        crate::telemetry::in_memory()
    }

    fn count(span: &SpanData) -> Option<i64> {
        span.attributes.iter().find_map(|kv| {
            let count = match kv.value {
                opentelemetry::Value::I64(count) => count,
                _ => -1,
            };
            (kv.key.as_str() == attributes::BATCH_COUNT).then_some(count)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_together_share_a_root_span_within_its_window() {
        let (tracing, exporter, _provider) = tracing();
        let who = Who::new(Protocol::Mqtt, Some("device".into()));
        let roots = RootSpans::default();

        let first = roots.join(&tracing, &who, "t", 1, Some(10));
        let second = roots.join(&tracing, &who, "t", 2, None);
        assert!(Arc::ptr_eq(&first, &second));
        let other_topic = roots.join(&tracing, &who, "u", 1, None);
        assert!(!Arc::ptr_eq(&first, &other_topic));
        // The open span is now the other topic's: "t" starts afresh.
        let third = roots.join(&tracing, &who, "t", 1, None);
        assert!(!Arc::ptr_eq(&first, &third));

        tokio::time::advance(JOIN_WINDOW).await;
        let late = roots.join(&tracing, &who, "t", 1, None);
        assert!(!Arc::ptr_eq(&third, &late), "joined after its window");

        drop((first, other_topic, third, late));
        assert!(exporter.get_finished_spans().unwrap().len() == 3);
        drop(second);
        let spans = exporter.get_finished_spans().unwrap();
        let mut counts: Vec<_> = spans.iter().map(count).collect();
        counts.sort_unstable();
        assert_eq!(counts, [Some(1), Some(1), Some(1), Some(3)], "{spans:#?}");
        assert!(
            spans
                .iter()
                .all(|span| span.parent_span_id == opentelemetry::trace::SpanId::INVALID)
        );
    }

    #[tokio::test]
    async fn a_root_span_stands_for_at_most_its_maximum_of_records() {
        let (tracing, exporter, _provider) = tracing();
        let who = Who::new(Protocol::Amqp, None);
        let roots = RootSpans::default();
        let held: Vec<_> = (0..=MAX_RECORDS)
            .map(|_| roots.join(&tracing, &who, "t", 1, None))
            .collect();
        assert!(Arc::ptr_eq(&held[0], &held[MAX_RECORDS - 1]));
        assert!(!Arc::ptr_eq(&held[0], &held[MAX_RECORDS]));
        drop(held);
        let spans = exporter.get_finished_spans().unwrap();
        let mut counts: Vec<_> = spans.iter().map(count).collect();
        counts.sort_unstable();
        assert_eq!(counts, [Some(1), Some(MAX_RECORDS as i64)]);
    }

    #[tokio::test]
    async fn a_span_of_one_record_says_where_it_was_placed_and_its_size() {
        let (tracing, exporter, _provider) = tracing();
        let who = Who::new(Protocol::Mqtt, None);
        let root = RootSpans::default().join(&tracing, &who, "t", 1, Some(42));
        root.placed([
            KeyValue::new(attributes::PARTITION, "0"),
            KeyValue::new(attributes::OFFSET, 7),
            KeyValue::new(attributes::MESSAGE_ID, "id"),
        ]);
        drop(root);
        let spans = exporter.get_finished_spans().unwrap();
        let attribute = |key: &str| {
            spans[0]
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(attribute(attributes::OFFSET), Some(7.into()));
        assert_eq!(attribute(attributes::BODY_SIZE), Some(42.into()));
        assert_eq!(spans[0].name, "publish t");
    }
}
