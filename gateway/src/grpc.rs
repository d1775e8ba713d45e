//! The public gRPC API (`proto/courier/v1`) over a [`Log`](crate::log::Log).
//!
//! - [`server`]: builds the tonic server (limits, keepalive, health, reflection) and drains it;
//! - [`streams`], [`produce_stream`], [`subscribe`]: the data plane;
//! - [`admin`]: topics and groups;
//! - `convert` and `status`: wire <-> log types, and the one error-to-status mapping.

pub mod admin;
mod convert;
pub mod produce_stream;
pub mod server;
mod status;
pub mod streams;
pub mod subscribe;

pub use self::{admin::AdminService, server::GrpcServer, streams::StreamsService};
