//! `[telemetry.tracing]`: whether messages are traced, and where the spans go.

use serde::{Deserialize, Serialize};

/// `[telemetry.tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Off by default: nothing is exported and no record is touched.
    pub enabled: bool,
    /// The OTLP/gRPC collector spans are exported to.
    pub endpoint: String,
    /// The share of new traces recorded, from 0 to 1. A message that arrives with a trace context
    /// follows its sampling decision instead (parent-based), so a trace is never cut in the middle.
    pub sampling_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Spans waiting for the collector at most; one that finds the queue full is dropped and
    /// counted (`courier_tracing_spans_total{outcome="dropped"}`).
    pub queue_size: usize,
}

/// `validate` refuses a NaN ratio, so the config compares as a whole with `Eq`.
impl Eq for TracingConfig {}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            sampling_ratio: 1.0,
            service_name: "courier".into(),
            queue_size: 2048,
        }
    }
}

impl TracingConfig {
    /// What the types cannot check; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(format!(
                "telemetry.tracing.sampling_ratio: {} is not between 0 and 1",
                self.sampling_ratio
            ));
        }
        if self.queue_size == 0 {
            return Err("telemetry.tracing.queue_size: must be at least 1".into());
        }
        if self.enabled
            && !self.endpoint.starts_with("http://")
            && !self.endpoint.starts_with("https://")
        {
            return Err(format!(
                "telemetry.tracing.endpoint: {:?} is not an http:// or https:// URL",
                self.endpoint
            ));
        }
        Ok(())
    }
}
