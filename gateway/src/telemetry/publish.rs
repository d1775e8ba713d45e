//! Publish spans: from a request reaching the gateway's log to the log's acknowledgement.

use std::sync::Arc;

use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, Status, TraceId, Tracer as _},
};
use opentelemetry_sdk::trace::Span;

use super::{
    Tracing, Who,
    attributes::{self, Operation},
    context,
    roots::{RootSpan, RootSpans},
};
use crate::{
    Error, Result,
    log::{Appended, NewRecord},
};

/// The spans of one produce request: one per record that carries a trace context (its own, or
/// the call's), each a child of it and written back as the record's `traceparent`; and for the
/// records that carry none, which are left as they are, the client's root span they joined
/// ([`RootSpans`]).
#[derive(Debug)]
pub struct Publishes {
    /// Index-aligned with the request's records; empty when no record has a context.
    carried: Vec<Option<Span>>,
    /// For the records without a context, when there are any.
    root: Option<Arc<RootSpan>>,
    /// Whether the request is of one record (the root span names where it was placed).
    single: bool,
}

impl Publishes {
    /// Starts the spans of `records`, published by `who` to `topic`, and writes each child span's
    /// context into its record; the records without one join a root span of `roots`.
    pub fn start(
        tracing: &Tracing,
        who: &Who,
        roots: &RootSpans,
        topic: &str,
        records: &mut [NewRecord],
    ) -> Self {
        let tracer = tracing.tracer();
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
                .span_builder(format!("{} {topic}", Operation::Publish.name()))
                .with_kind(SpanKind::Producer)
                .with_attributes(attributes)
                .start_with_context(tracer, &parent);
            context::carry(&mut record.headers, span.span_context());
            // Made only once a record has a context, padded to this record's place.
            carried.resize_with(index, || None);
            carried.push(Some(span));
        }
        let single = records.len() == 1;
        let root = (uncarried > 0).then(|| {
            let size = match records {
                [record] => Some(record.value.as_ref().map_or(0, |value| value.len())),
                _ => None,
            };
            roots.join(tracing, who, topic, uncarried, size)
        });
        Self {
            carried,
            root,
            single,
        }
    }

    /// The trace the request's first span belongs to, for the log lines written while it runs.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.carried
            .iter()
            .flatten()
            .map(|span| span.span_context().trace_id())
            .chain(self.root.as_ref().map(|root| root.trace_id()))
            .next()
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
        for mut span in self.carried.into_iter().flatten() {
            span.set_status(Status::error(error.to_string()));
            span.end();
        }
        if let Some(root) = self.root {
            root.failed(error);
        }
    }

    fn acknowledged(self, appended: &[Appended]) {
        for (span, appended) in self.carried.into_iter().zip(appended) {
            if let Some(mut span) = span {
                span.set_attributes(placed(appended));
                span.end();
            }
        }
        if let (Some(root), true, [appended]) = (self.root, self.single, appended) {
            root.placed(placed(appended));
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
