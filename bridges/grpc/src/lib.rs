//! Courier's gRPC endpoint: the public API (`proto/courier/v1`) over a
//! [`Log`](courier_gateway::log::Log).
//!
//! Modules:
//! - [`config`]: `[grpc]`; `status`: the one error-to-status mapping ([`to_status`]);
//! - [`server`]: builds the tonic server (limits, keepalive, health, reflection) and drains it;
//!   `connection`: accepted connections, counted while open;
//! - `limits`: calls at once (unary and streaming apart) and the deadline of unary calls, as tower
//!   layers in front of every service;
//! - [`streams`], [`produce_stream`], [`subscribe`]: the data plane; `fetch`: what one Fetch may
//!   read and return;
//! - [`admin`]: topics, groups and regions; `admin_role`: Admin and reflection for administrators;
//! - `authentication`: every call's principal, from its `authorization` metadata, address and
//!   client certificate (a tower layer in front of every service);
//! - `convert`: wire <-> log types;
//! - [`proto`]: the generated protobuf types, servers and clients.

pub mod admin;
mod admin_role;
mod authentication;
pub mod codec;
pub mod config;
pub mod connection;
mod convert;
mod fetch;
mod limits;
pub mod produce_stream;
pub mod proto;
pub mod server;
mod status;
mod stream_end;
pub mod streams;
pub mod subscribe;

pub use self::{
    admin::AdminService,
    config::Config,
    connection::Peer,
    server::{GrpcListeners, GrpcServer},
    status::to_status,
    streams::StreamsService,
};

/// A client endpoint for a gateway at `url` with the same HTTP/2 windows the server uses, so large
/// pipelined batches flow in both directions without waiting for window updates.
pub fn client_endpoint(
    url: impl Into<String>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.into())?
        .initial_stream_window_size(Config::default_stream_window_bytes())
        .initial_connection_window_size(Config::default_connection_window_bytes())
        .tcp_nodelay(true))
}
