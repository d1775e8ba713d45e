//! What the process says about itself besides metrics: its log lines (text or JSON) and, with
//! `[telemetry.tracing]` on, message spans exported over OTLP/gRPC. The spans themselves are made
//! by the gateway's layers (`courier_gateway::telemetry`); this sets up where they go.

mod span_queue;

use std::time::Duration;

use anyhow::{Context as _, Result};
use courier_gateway::telemetry::{Tracing, TracingConfig};
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig, tonic_types};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, Sampler, SdkTracerProvider},
};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// How long stopping waits for the last spans to be exported.
const EXPORT_ON_STOP: Duration = Duration::from_secs(5);

/// Sets up the process's log lines on stderr, filtered by `RUST_LOG` (default `info`). In JSON,
/// each line carries the fields of the spans it was written in, among them the `trace_id` of the
/// message being published.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The tracer provider while tracing is on; stopping it exports what is left.
pub(crate) struct Exporting {
    provider: SdkTracerProvider,
}

/// Starts exporting spans as `config` says; `None` while tracing is off. Must run inside the
/// runtime: the OTLP exporter's channel is tonic's, made on it.
pub(crate) fn start_tracing(config: &TracingConfig) -> Result<Option<(Tracing, Exporting)>> {
    if !config.enabled {
        return Ok(None);
    }
    let mut exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone());
    if config.endpoint.starts_with("https://") {
        exporter = exporter
            .with_tls_config(tonic_types::transport::ClientTlsConfig::new().with_native_roots());
    }
    let exporter = exporter
        .build()
        .with_context(|| format!("telemetry.tracing.endpoint = {:?}", config.endpoint))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(span_queue::counted(
            exporter,
            config.queue_size,
            BatchConfigBuilder::default(),
        ))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracing = Tracing::new(provider.tracer("courier"));
    tracing::info!(
        endpoint = config.endpoint,
        sampling_ratio = config.sampling_ratio,
        "tracing messages over OTLP"
    );
    Ok(Some((tracing, Exporting { provider })))
}

impl Exporting {
    /// Exports the spans still queued and stops. The SDK's shutdown blocks, so it runs off the
    /// runtime's workers.
    pub(crate) async fn stop(self) {
        let provider = self.provider;
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(EXPORT_ON_STOP))
                .await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "exporting the last spans failed"),
            Err(error) => tracing::warn!(%error, "exporting the last spans panicked"),
        }
    }
}
