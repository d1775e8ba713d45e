//! `[grpc]`: the gRPC listener, its message limit, HTTP/2 keepalive and flow-control windows.

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
    /// Most concurrent streams (calls) per HTTP/2 connection.
    #[serde(default = "Config::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
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
        if let Some(tls) = &self.tls {
            tls.validate_for("grpc", false)?;
        }
        Ok(())
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
    fn default_max_concurrent_streams() -> u32 {
        1024
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
            max_concurrent_streams: Self::default_max_concurrent_streams(),
            stream_window_bytes: Self::default_stream_window_bytes(),
            connection_window_bytes: Self::default_connection_window_bytes(),
            tls: None,
        }
    }
}
