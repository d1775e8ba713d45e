//! What the front ends count, named once. Every front end reports through these functions, so each
//! protocol's figures mean the same thing:
//! - a message *in* is a record a client sent that the log acknowledged (what the client was told is
//!   durable), counted with its value's bytes, and its produce latency (receipt to acknowledgement);
//! - a message *out* is a record handed to a client, and an *ack* is one the client acknowledged;
//! - an *error* is a request refused or a connection ended by a fault, by [`Error::kind`].
//!
//! The figures go to the `metrics` facade (the binary installs a Prometheus recorder and serves it on
//! `/metrics`) and into per-protocol running totals that the status page samples for its rates.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    Error,
    log::{NewRecord, Record},
};

/// Names of the metrics, as Prometheus shows them.
pub mod names {
    /// Gauge: open client connections, by `protocol`.
    pub const CONNECTIONS: &str = "courier_connections";
    /// Counter: client connections accepted, by `protocol`.
    pub const CONNECTIONS_ACCEPTED: &str = "courier_connections_accepted_total";
    /// Counter: records clients sent that the log acknowledged, by `protocol`.
    pub const MESSAGES_IN: &str = "courier_messages_in_total";
    /// Counter: bytes of those records' values, by `protocol`.
    pub const BYTES_IN: &str = "courier_bytes_in_total";
    /// Counter: records delivered to clients, by `protocol`.
    pub const MESSAGES_OUT: &str = "courier_messages_out_total";
    /// Counter: bytes of delivered records' values, by `protocol`.
    pub const BYTES_OUT: &str = "courier_bytes_out_total";
    /// Counter: delivered records the client acknowledged, by `protocol`.
    pub const ACKS: &str = "courier_acks_total";
    /// Counter: refused requests and faulted connections, by `protocol` and `kind`.
    pub const ERRORS: &str = "courier_errors_total";
    /// Histogram: seconds from a record's receipt to the log's acknowledgement, by `protocol`.
    pub const PRODUCE_LATENCY: &str = "courier_produce_latency_seconds";
    /// Gauge: records a consumer group has yet to commit, by `group` and `topic`. The binary
    /// exports it from each lag reading (`src/http/lag.rs`): the groups furthest behind one by one,
    /// the others summed per topic under `group="(other)"`.
    pub const CONSUMER_LAG: &str = "courier_consumer_lag";
    /// Gauge: 1 while the log answers, 0 when it does not, by `region`.
    pub const REGION_UP: &str = "courier_region_up";
    /// Counter: TLS handshakes refused or failed, by `listener` and `reason` (`unknown_ca`,
    /// `certificate_expired`, `certificate_revoked`, `certificate_required`, `protocol_version`,
    /// `not_tls`, `timeout`, ...).
    pub const TLS_HANDSHAKE_FAILURES: &str = "courier_tls_handshake_failures_total";
    /// Counter: changes of a listener's TLS files, by `listener` and `outcome` (`loaded`, or
    /// `failed`: the previous certificates stay in use).
    pub const TLS_RELOADS: &str = "courier_tls_reloads_total";
    /// Counter: clients refused at authentication, by `protocol` and `reason` (`bad_credentials`,
    /// `anonymous_refused`, `not_loopback`, `expired`, `wrong_audience`, `busy`, ...).
    pub const AUTH_FAILURES: &str = "courier_auth_failures_total";
    /// Counter: requests authorization refused, by `protocol` and `action`.
    pub const AUTH_DENIED: &str = "courier_auth_denied_total";
    /// Counter: changes of the users or policy file or the JWKS (`jwks`: refreshes that failed or
    /// brought a changed set), by `file` and `outcome` (`loaded`;
    /// `failed`: the previous version stays in use; `unreadable`: the file has been missing or
    /// unreadable for several checks, and the previous version stays in use).
    pub const AUTH_RELOADS: &str = "courier_auth_reloads_total";
    /// Counter: changes of a region's state, by `region`.
    pub const REGION_SWITCHES: &str = "courier_region_switches_total";
    /// Gauge: how old the newest canary record copied from region `from` into region `to` is, in
    /// seconds: the writes `to` would lack if `from` were lost now.
    pub const REGION_REPLICATION_LAG: &str = "courier_region_replication_lag_seconds";
    /// Gauge: records consumer group `group` committed in region `from` past its newest
    /// MirrorMaker 2 checkpoint in region `to` (what it would read again if `from` were lost now), by
    /// `from`, `to` and `group`. The binary exports it (`src/http/checkpoints.rs`): per pair, the
    /// groups furthest behind one by one, the others summed under `group="(other)"`.
    pub const REGION_CHECKPOINT_BEHIND: &str = "courier_region_checkpoint_behind_records";
    /// Gauge: the age in seconds of the oldest of group `group`'s checkpoints in region `to` that
    /// it has committed past in `from` (0 when its checkpoints cover its commits), by `from`, `to`
    /// and `group` (under `(other)`, the oldest). No series for a group without a checkpoint.
    pub const REGION_CHECKPOINT_AGE: &str = "courier_region_checkpoint_age_seconds";
    /// Counter: moves of traffic between regions, by `traffic` (writes, reads) and `to` (region).
    pub const REGION_TRAFFIC_SWITCHES: &str = "courier_region_traffic_switches_total";
    /// Counter: requests, calls or connections refused (or ended) because a configured limit was
    /// reached, by `protocol` and `limit` (the limit's name: `max_connections`,
    /// `max_connections_per_address`, `connect_rate_per_address`, `handshake_timeout`,
    /// `write_timeout`, `max_unary_calls`, `max_streaming_calls`, `max_unary_calls_per_caller`,
    /// `max_streaming_calls_per_caller`, `unary_timeout`, `auto_create_per_minute`, ...). See [`limit_refused`](super::limit_refused).
    pub const LIMIT_REFUSALS: &str = "courier_limit_refusals_total";
    /// Counter: message spans, while tracing is on, by `outcome`: `exported` (the collector took
    /// them), `export_failed` (it did not answer or refused), `dropped` (the export queue,
    /// `telemetry.tracing.queue_size`, was full: the collector is slower than the messages).
    pub const TRACING_SPANS: &str = "courier_tracing_spans_total";
}

/// The client protocols the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// gRPC (`courier.v1`).
    Grpc,
    /// MQTT 3.1.1 and 5, over TCP and WebSocket.
    Mqtt,
    /// AMQP 1.0.
    Amqp,
}

impl Protocol {
    /// Every protocol, in the order the status page lists them.
    pub const ALL: [Protocol; 3] = [Protocol::Grpc, Protocol::Mqtt, Protocol::Amqp];

    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
        }
    }

    fn totals(self) -> &'static Totals {
        &TOTALS[self as usize]
    }
}

/// Running totals of one protocol, for rates.
#[derive(Debug)]
struct Totals {
    connections: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
}

impl Totals {
    const fn new() -> Self {
        Self {
            connections: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
        }
    }
}

static TOTALS: [Totals; Protocol::ALL.len()] = [const { Totals::new() }; Protocol::ALL.len()];

/// One protocol's figures at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The protocol.
    pub protocol: Protocol,
    /// Open connections.
    pub connections: u64,
    /// Records in since start.
    pub messages_in: u64,
    /// Records out since start.
    pub messages_out: u64,
}

/// Describes every metric (Prometheus' HELP lines) and creates each protocol's series at zero, so
/// dashboards and alerts see every series from the first scrape, not from the first event.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(names::CONNECTIONS, "Open client connections");
    describe_counter!(names::CONNECTIONS_ACCEPTED, "Client connections accepted");
    describe_counter!(
        names::MESSAGES_IN,
        "Records clients sent that the log acknowledged"
    );
    describe_counter!(
        names::BYTES_IN,
        Unit::Bytes,
        "Value bytes of acknowledged records"
    );
    describe_counter!(names::MESSAGES_OUT, "Records delivered to clients");
    describe_counter!(
        names::BYTES_OUT,
        Unit::Bytes,
        "Value bytes of delivered records"
    );
    describe_counter!(names::ACKS, "Delivered records the client acknowledged");
    describe_counter!(
        names::ERRORS,
        "Refused requests and faulted connections, by kind"
    );
    describe_counter!(
        names::TLS_HANDSHAKE_FAILURES,
        "TLS handshakes refused or failed, by listener and reason"
    );
    describe_counter!(
        names::TLS_RELOADS,
        "Changes of a listener's TLS files, loaded or failed (then the previous certificates stay)"
    );
    describe_counter!(
        names::AUTH_FAILURES,
        "Clients refused at authentication, by protocol and reason"
    );
    describe_counter!(
        names::AUTH_DENIED,
        "Requests refused by authorization, by protocol and action"
    );
    describe_counter!(
        names::AUTH_RELOADS,
        "Changes of the users or policy file or the JWKS: loaded, failed or unreadable (then the previous version stays)"
    );
    describe_histogram!(
        names::PRODUCE_LATENCY,
        Unit::Seconds,
        "From a record's receipt to the log's acknowledgement"
    );
    describe_gauge!(names::REGION_UP, "1 while the region's log answers probes");
    describe_counter!(names::REGION_SWITCHES, "Changes of a region's state");
    describe_gauge!(
        names::REGION_REPLICATION_LAG,
        Unit::Seconds,
        "Age of the newest canary record copied from region `from` into region `to`"
    );
    describe_counter!(
        names::LIMIT_REFUSALS,
        "Requests, calls or connections refused because a configured limit was reached, by protocol and limit"
    );
    describe_counter!(
        names::TRACING_SPANS,
        "Message spans exported, failed to export, or dropped with the export queue full"
    );
    describe_counter!(
        names::REGION_TRAFFIC_SWITCHES,
        "Moves of writes or reads from one region to another"
    );
    for protocol in Protocol::ALL {
        let label = protocol.name();
        metrics::gauge!(names::CONNECTIONS, "protocol" => label).increment(0.0);
        for counter in [
            names::CONNECTIONS_ACCEPTED,
            names::MESSAGES_IN,
            names::BYTES_IN,
            names::MESSAGES_OUT,
            names::BYTES_OUT,
            names::ACKS,
        ] {
            metrics::counter!(counter, "protocol" => label).increment(0);
        }
    }
}

/// Every protocol's figures now.
pub fn snapshot() -> Vec<Snapshot> {
    Protocol::ALL
        .iter()
        .map(|&protocol| {
            let totals = protocol.totals();
            Snapshot {
                protocol,
                connections: totals.connections.load(Ordering::Relaxed),
                messages_in: totals.messages_in.load(Ordering::Relaxed),
                messages_out: totals.messages_out.load(Ordering::Relaxed),
            }
        })
        .collect()
}

/// An open connection: counted while this lives.
#[derive(Debug)]
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ConnectionGuard {
    protocol: Protocol,
}

/// Counts a new connection as open until the returned guard is dropped.
pub fn connection_opened(protocol: Protocol) -> ConnectionGuard {
    let label = protocol.name();
    metrics::counter!(names::CONNECTIONS_ACCEPTED, "protocol" => label).increment(1);
    metrics::gauge!(names::CONNECTIONS, "protocol" => label).increment(1.0);
    protocol
        .totals()
        .connections
        .fetch_add(1, Ordering::Relaxed);
    ConnectionGuard { protocol }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS, "protocol" => self.protocol.name()).decrement(1.0);
        self.protocol
            .totals()
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records the log acknowledged for a client: `records` of `bytes` value bytes, `latency` after their
/// receipt.
pub fn produced(protocol: Protocol, records: usize, bytes: usize, latency: Duration) {
    let label = protocol.name();
    metrics::counter!(names::MESSAGES_IN, "protocol" => label).increment(records as u64);
    metrics::counter!(names::BYTES_IN, "protocol" => label).increment(bytes as u64);
    metrics::histogram!(names::PRODUCE_LATENCY, "protocol" => label).record(latency.as_secs_f64());
    protocol
        .totals()
        .messages_in
        .fetch_add(records as u64, Ordering::Relaxed);
}

/// One produce in flight: started when the records arrive, finished with the log's answer, which it
/// counts as records in (acknowledged) or as an error.
#[derive(Debug)]
#[must_use = "a produce counts only when finished"]
pub(crate) struct ProduceTimer {
    protocol: Protocol,
    started: std::time::Instant,
    records: usize,
    bytes: usize,
}

impl ProduceTimer {
    /// Starts timing `records` received from a client.
    pub(crate) fn start(protocol: Protocol, records: &[NewRecord]) -> Self {
        Self {
            protocol,
            started: std::time::Instant::now(),
            records: records.len(),
            bytes: records
                .iter()
                .map(|record| record.value.as_ref().map_or(0, |value| value.len()))
                .sum(),
        }
    }

    /// Counts the log's answer (the receipt's, or the refusal of the submit).
    pub(crate) fn finish<T>(self, outcome: &crate::Result<T>) {
        match outcome {
            Ok(_) => produced(
                self.protocol,
                self.records,
                self.bytes,
                self.started.elapsed(),
            ),
            Err(error) => self.failed(error),
        }
    }

    /// Counts a refusal, by the log error's kind.
    pub(crate) fn failed(self, error: &Error) {
        self::error(self.protocol, error.kind());
    }
}

/// Records handed to a client: `records` of `bytes` value bytes.
pub fn delivered(protocol: Protocol, records: usize, bytes: usize) {
    let label = protocol.name();
    metrics::counter!(names::MESSAGES_OUT, "protocol" => label).increment(records as u64);
    metrics::counter!(names::BYTES_OUT, "protocol" => label).increment(bytes as u64);
    protocol
        .totals()
        .messages_out
        .fetch_add(records as u64, Ordering::Relaxed);
}

/// Records handed to a client, counted with their value bytes.
pub fn delivered_records(protocol: Protocol, records: &[Record]) {
    let bytes = records
        .iter()
        .map(|record| record.value.as_ref().map_or(0, |value| value.len()))
        .sum();
    delivered(protocol, records.len(), bytes);
}

/// Delivered records the client acknowledged.
pub fn acked(protocol: Protocol, records: usize) {
    metrics::counter!(names::ACKS, "protocol" => protocol.name()).increment(records as u64);
}

/// A refused request or faulted connection, by kind: the log's kinds ([`Error::kind`]) and the front
/// ends' own (`invalid_request`, `invalid_topic_name`, `connection_refused`, `connection_failed`).
pub fn error(protocol: Protocol, kind: &'static str) {
    metrics::counter!(names::ERRORS, "protocol" => protocol.name(), "kind" => kind).increment(1);
}

/// A request, call or connection of `protocol` refused (or ended) because the configured limit
/// `limit` was reached: one more in `courier_limit_refusals_total{protocol, limit}`. `limit` is a
/// fixed name chosen by the code (never a client's words), so the series stay few.
pub fn limit_refused(protocol: Protocol, limit: &'static str) {
    metrics::counter!(names::LIMIT_REFUSALS, "protocol" => protocol.name(), "limit" => limit)
        .increment(1);
}
