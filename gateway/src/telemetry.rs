//! Tracing messages across protocols with OpenTelemetry (`[telemetry.tracing]`, off by default).
//!
//! A message's W3C trace context comes in with it: the `traceparent` header of a record, which is
//! where every front end's mapping already puts an MQTT 5 user property or an AMQP application
//! property of that name, and what Kafka clients' OpenTelemetry instrumentation writes; for gRPC
//! also the call's `traceparent` metadata, for records without their own. The gateway continues
//! the trace as a participant does: a *publish* span (received → durable) whose context replaces
//! the record's `traceparent`, and on the way out a *deliver* span per record (taken from the log →
//! acknowledged by the client) whose context replaces it again in what the client gets. A message
//! that came without a trace context is not given one (an MQTT 5 subscriber sees exactly the user
//! properties its publisher sent); its publish is still recorded, in a root span that the client's
//! requests in a row to one topic share ([`RootSpans`]), sampled at `sampling_ratio`.
//!
//! Nothing of this runs while tracing is off: the [`Traced`](crate::log::layers::Traced) layer is
//! only put into a front end's stack when [`Access::tracing`](crate::auth::Access) holds a
//! [`Tracing`]. The exporter (OTLP over gRPC) is set up by the binary, which hands the tracer in.

mod attributes;
mod config;
mod context;
mod deliveries;
mod publish;
mod roots;

use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracer;

pub use self::{
    config::TracingConfig,
    context::{TRACEPARENT, context_of_call},
    deliveries::{fetched as trace_fetched, traced_deliveries},
    publish::Publishes,
    roots::RootSpans,
};
use crate::metrics::Protocol;

/// The gateway's tracer, handed to every front end while tracing is on.
#[derive(Clone)]
pub struct Tracing {
    tracer: Arc<SdkTracer>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Message spans made by `tracer` (the binary's provider decides sampling and export).
    pub fn new(tracer: SdkTracer) -> Self {
        Self {
            tracer: Arc::new(tracer),
        }
    }

    fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }
}

/// Who a front end's requests come from, as the spans name it.
#[derive(Debug, Clone)]
pub struct Who {
    /// The protocol the client speaks.
    pub protocol: Protocol,
    /// The client's id, where its protocol has one (MQTT's client identifier, AMQP's container id).
    pub client: Option<String>,
    /// The trace context of the call itself (gRPC metadata): the parent of the records that carry
    /// none of their own.
    pub call: Option<Context>,
}

impl Who {
    /// A client of `protocol`, named `client` where its protocol names clients.
    pub fn new(protocol: Protocol, client: Option<String>) -> Self {
        Self {
            protocol,
            client,
            call: None,
        }
    }

    /// The same client, in a call that carries `call`'s trace context.
    pub fn in_call(mut self, call: Option<Context>) -> Self {
        self.call = call;
        self
    }
}

/// A tracer whose spans are kept in memory as they end, for tests: the tracing, the spans, and the
/// provider (which must outlive the test's spans).
#[cfg(test)]
pub(crate) fn in_memory() -> (
    Tracing,
    opentelemetry_sdk::trace::InMemorySpanExporter,
    opentelemetry_sdk::trace::SdkTracerProvider,
) {
    use opentelemetry::trace::TracerProvider as _;
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (Tracing::new(provider.tracer("test")), exporter, provider)
}
