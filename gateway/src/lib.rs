//! Courier's core: the [`Log`](log::Log) every front end writes to and reads from, and its backends.
//!
//! Architecture (see `DESIGN.md`): the `courier` binary wires front ends (gRPC, MQTT and AMQP, each in
//! its own bridge crate) to one `dyn Log`. Front ends never touch a storage engine; delivery
//! semantics (durable before ack, at-least-once with sparse acks) are decided behind the trait.
//!
//! Modules:
//! - [`log`]: the trait, shared types and the embedded backend;
//! - [`readers`]: readers shared by many subscriptions (the fan-out hub, the compacted-topic table);
//! - [`regions`]: the region router, a `Log` over one Kafka cluster per region with failover;
//! - [`metrics`]: what the front ends count, named once;
//! - [`auth`]: users and passwords, shared by the front ends that ask for them;
//! - [`limits`]: connection limits and quotas, so one client cannot starve the others;
//! - `testing` (tests and feature `test-util` only): an embedded log behind the layers, for test suites;
//! - [`telemetry`]: tracing messages with OpenTelemetry (their spans and W3C trace context);
//! - [`tls`]: TLS acceptors for the front ends' listeners, reloaded when their files change;
//! - [`config`]: the typed config sections this crate owns;
//! - [`error`]: the crate's error type.

pub mod auth;
pub mod config;
pub mod error;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod readers;
pub mod regions;
mod sync;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tls;

pub use error::{Error, Result};
