//! Types, servers and clients generated from `proto/courier/v1`. The `.proto` files are the contract;
//! this module only includes what `build.rs` generated from them.

#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

/// `courier.v1`: the public API.
pub mod v1 {
    tonic::include_proto!("courier.v1");
}

/// Encoded file descriptors of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("courier_descriptor");
