//! The public gRPC API (`proto/courier/v1`) over a [`Log`](crate::log::Log).
//!
//! - [`server`]: builds the tonic server (limits, keepalive, health, reflection) and drains it;
//! - [`streams`], [`produce_stream`], [`subscribe`]: the data plane;
//! - [`admin`]: topics and groups;
//! - `connection`: accepted connections, counted while open;
//! - `convert` and `status`: wire <-> log types, and the one error-to-status mapping.

pub mod admin;
mod connection;
mod convert;
pub mod produce_stream;
pub mod server;
mod status;
pub mod streams;
pub mod subscribe;

pub use self::{admin::AdminService, server::GrpcServer, streams::StreamsService};

use crate::config::GrpcConfig;

/// A client endpoint for a gateway at `url` with the same HTTP/2 windows the server uses, so large
/// pipelined batches flow in both directions without waiting for window updates.
pub fn client_endpoint(
    url: impl Into<String>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.into())?
        .initial_stream_window_size(GrpcConfig::default_stream_window_bytes())
        .initial_connection_window_size(GrpcConfig::default_connection_window_bytes())
        .tcp_nodelay(true))
}
