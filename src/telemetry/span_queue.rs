//! The queue of spans waiting for the OTLP exporter, with what becomes of each span counted.
//!
//! The SDK's batch processor drops a span when its queue is full (a collector slower than the
//! messages) and says so only in its own internal log, once. The gateway wants that on
//! `/metrics`: [`CountedProcessor`] sits in front of the batch processor and keeps the queue's
//! bound itself (`telemetry.tracing.queue_size`), counting a span that does not fit as `dropped`;
//! [`CountedExporter`] behind it takes spans out of the count as the exporter gets them and counts
//! them `exported` or `export_failed`. A span is counted once the gateway's own bound is reached,
//! which comes no later than the SDK's (its queue has the same size, and holds no span the count
//! does not), so the SDK never drops one uncounted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use courier_gateway::metrics::names::TRACING_SPANS;
use metrics::Counter;
use opentelemetry::Context;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor},
};

/// Spans ended and not yet handed to the exporter, at most `capacity`.
#[derive(Debug)]
struct Queue {
    queued: AtomicUsize,
    capacity: usize,
}

impl Queue {
    /// Takes a place for one span, if there is one.
    fn enter(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.capacity).then_some(queued + 1)
            })
            .is_ok()
    }

    fn leave(&self, spans: usize) {
        // Never below zero: a span the batch processor got before a restart of the count (none
        // today) must not wrap it.
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                Some(queued.saturating_sub(spans))
            });
    }
}

/// What becomes of the spans: `courier_tracing_spans_total{outcome}`.
#[derive(Debug, Clone)]
struct Outcomes {
    exported: Counter,
    export_failed: Counter,
    dropped: Counter,
}

impl Outcomes {
    /// The counters, registered (at zero) with the recorder in use.
    fn register() -> Self {
        let counter = |outcome: &'static str| {
            let counter = metrics::counter!(TRACING_SPANS, "outcome" => outcome);
            counter.increment(0);
            counter
        };
        Self {
            exported: counter("exported"),
            export_failed: counter("export_failed"),
            dropped: counter("dropped"),
        }
    }
}

/// The exporter, taking spans out of the queue's count as it gets them.
#[derive(Debug)]
pub(crate) struct CountedExporter<E> {
    inner: E,
    queue: Arc<Queue>,
    outcomes: Outcomes,
}

/// The batch processor, with the queue's bound kept in front of it.
#[derive(Debug)]
pub(crate) struct CountedProcessor {
    inner: BatchSpanProcessor,
    queue: Arc<Queue>,
    outcomes: Outcomes,
}

/// `exporter` behind a batch processor whose queue holds `capacity` spans (and whose other
/// settings `batch` gives), both counted.
pub(crate) fn counted<E>(
    exporter: E,
    capacity: usize,
    batch: opentelemetry_sdk::trace::BatchConfigBuilder,
) -> CountedProcessor
where
    E: SpanExporter + Send + 'static,
{
    let queue = Arc::new(Queue {
        queued: AtomicUsize::new(0),
        capacity,
    });
    let outcomes = Outcomes::register();
    let exporter = CountedExporter {
        inner: exporter,
        queue: queue.clone(),
        outcomes: outcomes.clone(),
    };
    let inner = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch.with_max_queue_size(capacity).build())
        .build();
    CountedProcessor {
        inner,
        queue,
        outcomes,
    }
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        self.queue.leave(spans);
        let exported = self.inner.export(batch);
        async move {
            let outcome = exported.await;
            let counter = match outcome {
                Ok(()) => &self.outcomes.exported,
                Err(_) => &self.outcomes.export_failed,
            };
            counter.increment(spans as u64);
            outcome
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl SpanProcessor for CountedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Recorded but not sampled: not exported (the batch processor would take it), and not
        // queued. The gateway's sampler makes no such spans; a sampler that did must not fill the
        // queue with them.
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.enter() {
            self.inner.on_end(span);
        } else {
            self.outcomes.dropped.increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize},
    };

    use metrics_exporter_prometheus::PrometheusBuilder;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkError,
        trace::{BatchConfigBuilder, SdkTracerProvider},
    };

    use super::*;

    /// A collector that holds its first export until let go, then takes or refuses the rest.
    #[derive(Debug, Clone, Default)]
    struct Collector {
        calls: Arc<AtomicUsize>,
        released: Arc<AtomicBool>,
        refuse: Arc<AtomicBool>,
        got: Arc<Mutex<usize>>,
    }

    impl SpanExporter for Collector {
        fn export(
            &self,
            batch: Vec<SpanData>,
        ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // The batch processor exports on a thread of its own: blocking it is what a slow
            // collector does.
            while !self.released.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let outcome = if self.refuse.load(Ordering::SeqCst) {
                Err(OTelSdkError::InternalFailure("refused".into()))
            } else {
                *self.got.lock().unwrap() += batch.len();
                Ok(())
            };
            std::future::ready(outcome)
        }
    }

    fn wait_for(condition: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if condition() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("not within 10 s");
    }

    fn end_spans(provider: &SdkTracerProvider, count: usize) {
        let tracer = provider.tracer("test");
        for _ in 0..count {
            tracer.start("span").end();
        }
    }

    #[test]
    fn a_span_that_finds_the_queue_full_is_counted_dropped_and_the_rest_exported() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let collector = Collector::default();
        let provider = metrics::with_local_recorder(&recorder, || {
            // Exported when four are queued, never on the timer.
            let batch = BatchConfigBuilder::default()
                .with_max_export_batch_size(4)
                .with_scheduled_delay(Duration::from_secs(3600));
            SdkTracerProvider::builder()
                .with_span_processor(counted(collector.clone(), 4, batch))
                .build()
        });
        // Four fill the queue and go to the collector, which holds them.
        end_spans(&provider, 4);
        wait_for(|| collector.calls.load(Ordering::SeqCst) == 1);
        // Four more are queued behind them; three after those find no room.
        end_spans(&provider, 7);
        collector.released.store(true, Ordering::SeqCst);
        provider.force_flush().unwrap();
        assert_eq!(*collector.got.lock().unwrap(), 8);
        // A collector that refuses: its spans are counted as failed.
        collector.refuse.store(true, Ordering::SeqCst);
        end_spans(&provider, 2);
        let _ = provider.force_flush();

        let rendered = recorder.handle().render();
        let value = |outcome: &str| {
            rendered
                .lines()
                .find(|line| line.starts_with(&format!("{TRACING_SPANS}{{outcome=\"{outcome}\"}}")))
                .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        };
        assert_eq!(value("exported"), Some(8), "{rendered}");
        assert_eq!(value("dropped"), Some(3), "{rendered}");
        assert_eq!(value("export_failed"), Some(2), "{rendered}");
        provider.shutdown().unwrap();
    }
}
