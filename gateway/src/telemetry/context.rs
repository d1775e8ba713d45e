//! W3C trace context in a record's headers: read as OpenTelemetry's propagator reads it, written
//! back in place.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::log::Header;

/// The header (and MQTT user property, AMQP application property, gRPC metadata key) holding a
/// message's trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The context `headers` carry, when they carry a valid one.
pub(super) fn carried(headers: &[Header]) -> Option<Context> {
    if !headers.iter().any(|header| header.key == TRACEPARENT) {
        return None;
    }
    valid(TraceContextPropagator::new().extract(&HeadersIn(headers)))
}

/// A call's trace context, from its `traceparent` (and `tracestate`) metadata.
pub fn context_of_call(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Context> {
    let traceparent = traceparent?;
    valid(TraceContextPropagator::new().extract(&CallIn {
        traceparent,
        tracestate,
    }))
}

/// Writes `span` as `headers`' trace context: its `traceparent` (and `tracestate`, when the span
/// has one) replace the first header of that name, keeping its place, or are added at the end.
pub(super) fn carry(headers: &mut Vec<Header>, span: &SpanContext) {
    let context = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&context, &mut HeadersOut(headers));
}

fn valid(context: Context) -> Option<Context> {
    context.span().span_context().is_valid().then_some(context)
}

struct HeadersIn<'a>(&'a [Header]);

impl Extractor for HeadersIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|header| header.key == key)
            .and_then(|header| std::str::from_utf8(&header.value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|header| header.key.as_str()).collect()
    }
}

struct CallIn<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for CallIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, "tracestate"]
    }
}

struct HeadersOut<'a>(&'a mut Vec<Header>);

impl Injector for HeadersOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` for a span that has none: adding it would
        // hand subscribers a user property their publisher never sent.
        if value.is_empty() {
            return;
        }
        match self.0.iter_mut().find(|header| header.key == key) {
            Some(header) => header.value = value.into(),
            None => self.0.push(Header {
                key: key.to_owned(),
                value: value.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn header(key: &str, value: &str) -> Header {
        Header {
            key: key.into(),
            value: value.as_bytes().to_vec().into(),
        }
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_read_and_an_invalid_one_is_not() {
        let context = carried(&[header("a", "1"), header(TRACEPARENT, PARENT)]).expect("valid");
        let span = context.span().span_context().clone();
        assert_eq!(
            span.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex")
        );
        assert!(span.is_sampled() && span.is_remote());
        assert!(carried(&[header(TRACEPARENT, "00-nonsense")]).is_none());
        assert!(carried(&[header("a", "1")]).is_none());
        assert!(context_of_call(Some(PARENT), None).is_some());
        assert!(context_of_call(Some("garbage"), None).is_none());
    }

    #[test]
    fn carrying_replaces_the_header_in_its_place() {
        let mut headers = vec![
            header("first", "1"),
            header(TRACEPARENT, PARENT),
            header("last", "2"),
        ];
        let span = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        carry(&mut headers, &span);
        let keys: Vec<&str> = headers.iter().map(|header| header.key.as_str()).collect();
        assert_eq!(keys, ["first", TRACEPARENT, "last"]);
        assert_eq!(
            &headers[1].value[..],
            b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
    }
}
