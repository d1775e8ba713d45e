//! Limits on calls, so that one client's load never takes the gateway from the others. Three tower
//! layers around the services (`server.rs` puts them in place, and says why in that order):
//!
//! - [`UnaryDeadlineLayer`] (`deadline`): a unary call that runs past `grpc.unary_timeout`, or past
//!   the client's shorter `grpc-timeout`, ends with DEADLINE_EXCEEDED. Streams are left alone: they
//!   live as long as their client wants.
//! - [`AdmissionLayer`] (`admission`): at most `grpc.max_unary_calls` unary calls and
//!   `grpc.max_streaming_calls` streams at once in the whole gateway, and of each at most its
//!   `_per_caller` limit for one caller (a principal, or an anonymous client's address). One over
//!   is refused at once with RESOURCE_EXHAUSTED, never queued, and counted in
//!   `courier_limit_refusals_total`.
//! - [`CallKinds`] (`kinds`): which calls stream, read from the API's descriptors.
//!
//! Unary calls and streams have a limit each. A stream holds its place for its whole life (minutes or
//! days), a unary call for milliseconds: under one shared limit, a client opening streams could take
//! every place and starve unary calls, and a burst of unary calls would keep new subscribers out.
//!
//! Why not tonic's own `Server::concurrency_limit_per_connection`, `load_shed` and `timeout`
//! (tonic 0.14): the first counts per connection, so a client with many connections is not held by
//! it, and tower's `ConcurrencyLimit` under it frees a call's place when the response *headers* are
//! ready, so an open stream counts for nothing; `load_shed`'s refusal says "for the connection";
//! `timeout` covers every call, streams included (their start), and ends it with CANCELLED, not
//! DEADLINE_EXCEEDED. Tower's own `Timeout` has one fixed duration and fails with `Elapsed`, which
//! tonic cannot map to a status (the client would see UNKNOWN). The layers here are small and
//! answer each refusal as a gRPC status themselves.

mod admission;
mod deadline;
mod kinds;

pub(crate) use self::{admission::AdmissionLayer, deadline::UnaryDeadlineLayer, kinds::CallKinds};

#[cfg(test)]
mod tests;
