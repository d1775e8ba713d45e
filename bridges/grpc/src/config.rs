//! `[grpc]`: the gRPC listener, its message limit, HTTP/2 keepalive and flow-control windows, and the
//! limits that keep one client's load from the others: calls at once, how long a unary call may run,
//! how much one Fetch may read.

use std::{net::SocketAddr, time::Duration};

use courier_gateway::tls::TlsConfig;
use serde::{Deserialize, Serialize};

/// `[grpc]`: the gRPC listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds (port 0 picks a free port; the ready line names the bound one).
    #[serde(default = "Config::default_listen")]
    pub listen: SocketAddr,
    /// Largest gRPC message accepted or sent, in bytes.
    #[serde(default = "Config::default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Interval of HTTP/2 keepalive pings to clients, so dead peers are noticed.
    #[serde(
        default = "Config::default_keepalive_interval",
        with = "humantime_serde"
    )]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[serde(
        default = "Config::default_keepalive_timeout",
        with = "humantime_serde"
    )]
    pub keepalive_timeout: Duration,
    /// How long a new connection may take to send HTTP/2's preface (after its TLS handshake, which
    /// `tls.handshake_timeout` bounds): a client dripping bytes is closed after it.
    #[serde(
        default = "Config::default_handshake_timeout",
        with = "humantime_serde"
    )]
    pub handshake_timeout: Duration,
    /// Most concurrent streams (calls) per HTTP/2 connection.
    #[serde(default = "Config::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Most unary calls (Produce, Fetch, Commit, Seek, the Admin calls) served at once by the whole
    /// gateway, every connection together. One more is refused at once with RESOURCE_EXHAUSTED, never
    /// queued; the client retries with backoff.
    #[serde(default = "Config::default_max_unary_calls")]
    pub max_unary_calls: usize,
    /// Most streaming calls (ProduceStream, Subscribe, reflection) open at once in the whole gateway.
    /// Counted apart from unary calls, so open streams never take the slots of unary calls, nor a
    /// burst of unary calls keep a subscriber out. One more is refused at once with RESOURCE_EXHAUSTED.
    #[serde(default = "Config::default_max_streaming_calls")]
    pub max_streaming_calls: usize,
    /// Most unary calls one caller has in progress at once: a principal by name, over all its
    /// connections, or an anonymous client by its address. One more is refused at once with
    /// RESOURCE_EXHAUSTED while other callers are served. 0 is no limit. Unset: half of
    /// `max_unary_calls` (at least one), so no one caller can take every place of a gateway with
    /// two or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unary_calls_per_caller: Option<usize>,
    /// Most streaming calls one caller has open at once, counted as `max_unary_calls_per_caller`
    /// counts unary calls. 0 is no limit. Unset: half of `max_streaming_calls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streaming_calls_per_caller: Option<usize>,
    /// Longest a unary call may run; then it ends with DEADLINE_EXCEEDED (a client's shorter
    /// `grpc-timeout` ends it sooner, the same way). Streams are not bound by it.
    #[serde(default = "Config::default_unary_timeout", with = "humantime_serde")]
    pub unary_timeout: Duration,
    /// Most records one Fetch returns, whatever it asks for.
    #[serde(default = "Config::default_max_fetch_records")]
    pub max_fetch_records: usize,
    /// Most key and value bytes one Fetch reads, whatever it asks for (one record is returned even if
    /// larger). The response is also kept within `max_message_bytes`.
    #[serde(default = "Config::default_max_fetch_bytes")]
    pub max_fetch_bytes: usize,
    /// HTTP/2 flow-control window per stream, in bytes: how much one call may send before the gateway
    /// acknowledges it. HTTP/2's 64 KiB default holds a pipelining producer to one batch per round trip.
    #[serde(default = "Config::default_stream_window_bytes")]
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window per connection, shared by its streams, in bytes.
    #[serde(default = "Config::default_connection_window_bytes")]
    pub connection_window_bytes: u32,
    /// `[grpc.tls]`: gRPC over TLS (ALPN `h2`), on `tls.listen` beside the plain listener, or, with
    /// no `tls.listen`, on `listen` instead of plain text. Unset: plain text (h2c) only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Config {
    /// Checks what the types cannot: the TLS table's own rules. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_unary_calls", self.max_unary_calls),
            ("max_streaming_calls", self.max_streaming_calls),
            ("max_fetch_records", self.max_fetch_records),
            ("max_fetch_bytes", self.max_fetch_bytes),
        ] {
            if value == 0 {
                return Err(format!("grpc.{key} must be at least 1"));
            }
        }
        if self.unary_timeout.is_zero() {
            return Err("grpc.unary_timeout must be longer than 0s".to_owned());
        }
        if let Some(tls) = &self.tls {
            tls.validate_for("grpc", false)?;
        }
        Ok(())
    }

    /// Most unary calls one caller may have in progress (0: no limit).
    pub fn unary_calls_per_caller(&self) -> usize {
        self.max_unary_calls_per_caller
            .unwrap_or_else(|| half_of(self.max_unary_calls))
    }

    /// Most streams one caller may have open (0: no limit).
    pub fn streaming_calls_per_caller(&self) -> usize {
        self.max_streaming_calls_per_caller
            .unwrap_or_else(|| half_of(self.max_streaming_calls))
    }

    fn default_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 50051))
    }
    fn default_max_message_bytes() -> usize {
        16 << 20
    }
    fn default_keepalive_interval() -> Duration {
        Duration::from_secs(30)
    }
    fn default_keepalive_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_max_concurrent_streams() -> u32 {
        1024
    }
    fn default_max_unary_calls() -> usize {
        1024
    }
    fn default_max_streaming_calls() -> usize {
        1024
    }
    /// Longer than the Kafka producer's default `log.message_timeout` (30 s), so a produce the broker
    /// cannot take ends with the log's own UNAVAILABLE, which says why, before this cut.
    fn default_unary_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_max_fetch_records() -> usize {
        10_000
    }
    fn default_max_fetch_bytes() -> usize {
        8 << 20
    }
    /// Default HTTP/2 window per stream; clients use it too ([`crate::client_endpoint`]).
    pub const fn default_stream_window_bytes() -> u32 {
        4 << 20
    }
    /// Default HTTP/2 window per connection.
    pub const fn default_connection_window_bytes() -> u32 {
        16 << 20
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            max_message_bytes: Self::default_max_message_bytes(),
            keepalive_interval: Self::default_keepalive_interval(),
            keepalive_timeout: Self::default_keepalive_timeout(),
            handshake_timeout: Self::default_handshake_timeout(),
            max_concurrent_streams: Self::default_max_concurrent_streams(),
            max_unary_calls: Self::default_max_unary_calls(),
            max_streaming_calls: Self::default_max_streaming_calls(),
            max_unary_calls_per_caller: None,
            max_streaming_calls_per_caller: None,
            unary_timeout: Self::default_unary_timeout(),
            max_fetch_records: Self::default_max_fetch_records(),
            max_fetch_bytes: Self::default_max_fetch_bytes(),
            stream_window_bytes: Self::default_stream_window_bytes(),
            connection_window_bytes: Self::default_connection_window_bytes(),
            tls: None,
        }
    }
}

/// The default share of one caller: half the places, and at least one (a limit of 0 is none).
fn half_of(places: usize) -> usize {
    (places / 2).max(1)
}
