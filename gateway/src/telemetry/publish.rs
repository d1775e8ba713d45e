//! Publish spans: from a request reaching the gateway's log to the log's acknowledgement.

use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, Status, TraceId, Tracer as _},
};
use opentelemetry_sdk::trace::Span;

use super::{
    Tracing, Who,
    attributes::{self, Operation},
    context,
};
use crate::{
    Error, Result,
    log::{Appended, NewRecord},
};

/// The spans of one produce request: one per record that carries a trace context (its own, or
/// the call's), each a child of it and written back as the record's `traceparent`; and one root
/// span for the records that carry none, which are left as they are.
#[derive(Debug)]
pub struct Publishes {
    /// Index-aligned with the request's records; empty when no record has a context.
    carried: Vec<Option<Span>>,
    /// For the records without a context, when there are any.
    root: Option<Span>,
}

impl Publishes {
    /// Starts the spans of `records`, published by `who` to `topic`, and writes each child span's
    /// context into its record.
    pub fn start(tracing: &Tracing, who: &Who, topic: &str, records: &mut [NewRecord]) -> Self {
        let tracer = tracing.tracer();
        let name = format!("{} {topic}", Operation::Publish.name());
        let mut carried = Vec::new();
        let mut uncarried = 0;
        for (index, record) in records.iter_mut().enumerate() {
            let Some(parent) = context::carried(&record.headers).or_else(|| who.call.clone())
            else {
                uncarried += 1;
                continue;
            };
            let mut attributes = attributes::common(Operation::Publish, who, topic);
            attributes.push(body_size(record));
            let span = tracer
                .span_builder(name.clone())
                .with_kind(SpanKind::Producer)
                .with_attributes(attributes)
                .start_with_context(tracer, &parent);
            context::carry(&mut record.headers, span.span_context());
            // Made only once a record has a context, padded to this record's place.
            carried.resize_with(index, || None);
            carried.push(Some(span));
        }
        let root = (uncarried > 0).then(|| {
            let mut attributes = attributes::common(Operation::Publish, who, topic);
            attributes.push(KeyValue::new(attributes::BATCH_COUNT, uncarried as i64));
            if let [record] = records {
                attributes.push(body_size(record));
            }
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Producer)
                .with_attributes(attributes)
                .start_with_context(tracer, &Context::new())
        });
        Self { carried, root }
    }

    /// The trace the request's first span belongs to, for the log lines written while it runs.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.carried
            .iter()
            .flatten()
            .chain(&self.root)
            .next()
            .map(|span| span.span_context().trace_id())
    }

    /// Ends the spans with what the log made of the request.
    pub fn finish(self, outcome: &Result<Vec<Appended>>) {
        match outcome {
            Ok(appended) => self.acknowledged(appended),
            Err(error) => self.failed(error),
        }
    }

    /// Ends the spans of a request the log refused.
    pub fn failed(self, error: &Error) {
        for mut span in self.carried.into_iter().flatten().chain(self.root) {
            span.set_status(Status::error(error.to_string()));
            span.end();
        }
    }

    fn acknowledged(self, appended: &[Appended]) {
        for (span, appended) in self.carried.into_iter().zip(appended) {
            if let Some(mut span) = span {
                span.set_attributes(placed(appended));
                span.end();
            }
        }
        if let Some(mut span) = self.root {
            if let [appended] = appended {
                span.set_attributes(placed(appended));
            }
            span.end();
        }
    }
}

fn body_size(record: &NewRecord) -> KeyValue {
    let size = record.value.as_ref().map_or(0, |value| value.len());
    KeyValue::new(attributes::BODY_SIZE, size as i64)
}

/// Where the log put a record.
fn placed(appended: &Appended) -> [KeyValue; 3] {
    [
        KeyValue::new(attributes::PARTITION, appended.partition.to_string()),
        KeyValue::new(attributes::OFFSET, appended.offset),
        KeyValue::new(attributes::MESSAGE_ID, appended.courier_id.clone()),
    ]
}
