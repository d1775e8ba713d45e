//! The tracing layer: a client's produces and deliveries recorded as OpenTelemetry spans and their
//! trace context carried on ([`telemetry`](crate::telemetry) says how).
//!
//! Per connection or call, added by the front end only while tracing is on (so with tracing off
//! nothing of it runs), behind [`Quoted`](super::Quoted) (a quota's wait is not the publish's) and
//! in front of [`Metered`](super::Metered). Its publish spans end when the log acknowledged; the log
//! lines written meanwhile carry the trace's id (`trace_id`), for log pipelines that join them.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;

use super::{Layer, Layered};
use crate::{
    Result,
    log::{
        AppendReceipt, FetchLimits, Fetched, Log, NewRecord, SubscribeOptions, Subscription,
        TopicPartition,
    },
    telemetry::{self, Publishes, RootSpans, Tracing, Who},
};

/// Traces one client's requests.
#[derive(Debug, Clone)]
pub struct Tracer {
    tracing: Tracing,
    who: Who,
    /// The client's requests of records without a trace context share root spans.
    roots: Arc<RootSpans>,
}

/// A log whose produces and deliveries are traced as one client's.
pub type Traced<L> = Layered<Tracer, L>;

impl<L> Traced<L> {
    /// `inner`, with what goes through it traced as `who`'s.
    pub fn new(inner: L, tracing: Tracing, who: Who) -> Self {
        Layered::over(
            Tracer {
                tracing,
                who,
                roots: Arc::default(),
            },
            inner,
        )
    }
}

#[async_trait]
impl Layer for Tracer {
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        mut records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        let publishes =
            Publishes::start(&self.tracing, &self.who, &self.roots, topic, &mut records);
        let logs = match publishes.trace_id() {
            Some(trace_id) => tracing::info_span!("publish", %trace_id, topic),
            None => tracing::Span::none(),
        };
        match inner.submit(topic, records).instrument(logs.clone()).await {
            Ok(receipt) => Ok(Box::pin(
                async move {
                    let outcome = receipt.await;
                    match &outcome {
                        Ok(appended) => tracing::debug!(records = appended.len(), "published"),
                        Err(error) => tracing::debug!(%error, "publish failed"),
                    }
                    publishes.finish(&outcome);
                    outcome
                }
                .instrument(logs),
            )),
            Err(error) => {
                publishes.failed(&error);
                Err(error)
            }
        }
    }

    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        let subscription = inner.subscribe(options).await?;
        Ok(telemetry::traced_deliveries(
            subscription,
            &self.tracing,
            &self.who,
        ))
    }

    async fn fetch(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        let mut fetched = inner.fetch(partition, offset, limits).await?;
        telemetry::trace_fetched(&mut fetched.records, &self.tracing, &self.who);
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

    use super::*;
    use crate::{
        log::{Header, Position, Record, SubscriptionEvent, TopicSelector},
        metrics::Protocol,
        telemetry::TRACEPARENT,
        testing,
    };

    const PUBLISHER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn tracing() -> (Tracing, InMemorySpanExporter, SdkTracerProvider) {
        crate::telemetry::in_memory()
    }

    fn traceparent_of(headers: &[Header]) -> Option<String> {
        headers
            .iter()
            .find(|header| header.key == TRACEPARENT)
            .map(|header| String::from_utf8_lossy(&header.value).into_owned())
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
        spans.iter().filter(|span| span.name == name).collect()
    }

    async fn next_records(subscription: &mut Subscription) -> Vec<Record> {
        loop {
            match subscription.next_event().await.expect("open") {
                SubscriptionEvent::Records(records) => return records,
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn a_message_is_published_and_delivered_in_its_publishers_trace() {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        let (tracing, exporter, _provider) = tracing();
        let who = Who::new(Protocol::Mqtt, Some("device-1".into()));
        let traced = Traced::new(log.clone(), tracing, who);

        let mut with = NewRecord::with_value("with");
        with.headers.push(Header {
            key: TRACEPARENT.into(),
            value: PUBLISHER.into(),
        });
        let without = NewRecord::with_value("without");
        let receipt = traced.submit("t", vec![with, without]).await.unwrap();
        receipt.await.unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let publishes = named(&spans, "publish t");
        assert_eq!(publishes.len(), 2, "{spans:#?}");
        let child = publishes
            .iter()
            .find(|span| span.parent_span_id != SpanId::INVALID)
            .expect("a child of the publisher's span");
        assert_eq!(
            child.span_context.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(
            child.parent_span_id,
            SpanId::from_hex("b7ad6b7169203331").unwrap()
        );
        assert!(
            child
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "messaging.kafka.offset")
        );

        // Stored: the traced record carries the publish span's context; the other carries none.
        let mut reader = traced
            .subscribe(SubscribeOptions {
                topics: TopicSelector::Names(vec!["t".into()]),
                group: Some("g".into()),
                start: Position::Earliest,
                max_in_flight: 10,
                client: "reader".into(),
                protocol: "grpc",
            })
            .await
            .unwrap();
        let records = next_records(&mut reader).await;
        assert_eq!(records.len(), 2);
        let delivered = traceparent_of(&records[0].headers).expect("carried on");
        assert!(traceparent_of(&records[1].headers).is_none());
        let stored = log
            .fetch(&records[0].topic_partition(), 0, Default::default())
            .await
            .unwrap();
        let stored = traceparent_of(&stored.records[0].headers).unwrap();
        assert_eq!(
            stored,
            format!(
                "00-{}-{}-01",
                child.span_context.trace_id(),
                child.span_context.span_id()
            )
        );

        // The deliver span ends when the client acknowledges, a child of the publish span, and
        // its context is what the client got.
        assert!(named(&exporter.get_finished_spans().unwrap(), "deliver t").is_empty());
        reader
            .control
            .ack(&records[0].topic_partition(), records[0].offset);
        reader
            .control
            .ack(&records[1].topic_partition(), records[1].offset);
        let spans = exporter.get_finished_spans().unwrap();
        let delivers = named(&spans, "deliver t");
        assert_eq!(delivers.len(), 1, "{spans:#?}");
        assert_eq!(delivers[0].parent_span_id, child.span_context.span_id());
        assert_eq!(
            delivered,
            format!(
                "00-{}-{}-01",
                delivers[0].span_context.trace_id(),
                delivers[0].span_context.span_id()
            )
        );
        reader.close().await.unwrap();
    }

    /// An MQTT client's PUBLISHes in flight together, none with a trace context, are recorded
    /// as one root span; once they are durable, the next starts another.
    #[tokio::test]
    async fn requests_in_flight_together_are_one_root_span() {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        let (tracing, exporter, _provider) = tracing();
        let traced = Traced::new(log, tracing, Who::new(Protocol::Mqtt, Some("d".into())));

        let mut receipts = Vec::new();
        for body in ["a", "b", "c"] {
            receipts.push(
                traced
                    .submit("t", vec![NewRecord::with_value(body)])
                    .await
                    .unwrap(),
            );
        }
        for receipt in receipts {
            receipt.await.unwrap();
        }
        traced
            .submit("t", vec![NewRecord::with_value("d")])
            .await
            .unwrap()
            .await
            .unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let publishes = named(&spans, "publish t");
        let count = |span: &SpanData| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "messaging.batch.message_count")
                .map(|kv| kv.value.clone())
        };
        assert_eq!(publishes.len(), 2, "{spans:#?}");
        assert_eq!(count(publishes[0]), Some(3.into()));
        assert_eq!(count(publishes[1]), Some(1.into()));
        // The span of one record says where it went; the batch's does not.
        let offset = |span: &SpanData| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "messaging.kafka.offset")
                .map(|kv| kv.value.clone())
        };
        assert_eq!(offset(publishes[0]), None);
        assert!(offset(publishes[1]).is_some());
    }
}
