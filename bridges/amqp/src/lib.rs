//! Courier's AMQP 1.0 endpoint: applications send into and receive from the
//! [`Log`](courier_gateway::log::Log) over AMQP 1.0, with AMQP's settlement and credit kept end to end.
//!
//! Architecture: the `courier` binary builds a [`Server`] over the shared Log. fe2o3-amqp's acceptor
//! runs the protocol engine (frames, SASL, sessions, links, flow); the [`server`] accepts connections,
//! sessions and links and gives every link a task of its own: a client's sender link is an
//! [`inbound`] link (its deliveries become records, settled once the log acknowledged), a client's
//! receiver link an [`outbound`] one (records become deliveries; the client's outcome acknowledges,
//! redelivers or dead-letters). [`address`] parses what a link names; [`mapping`] turns messages
//! into records and back.
//!
//! Modules:
//! - [`config`]: `[amqp]`; [`error`]: the error type and AMQP error conditions;
//! - [`server`]: listeners (plain and TLS), connections and the handshake deadline; `session`: a
//!   session's links, checked and dispatched; `transport`: the protocol header before AMQP's frames,
//!   and AMQP's TLS upgrade; `refusal`: a connection turned away, answered in AMQP;
//! - `frame_guard`: every frame a client sends, checked before fe2o3 decodes it (`nesting`: how deep
//!   values nest, found without recursion); `write_deadline`: a client that stops reading is cut
//!   off; `wire`: the OPEN and CLOSE the gateway writes itself;
//! - [`sasl`]: EXTERNAL, PLAIN and ANONYMOUS, to a principal; `client`: a connection's principal,
//!   the log as it sees it, and what its links may do;
//! - [`address`]: link addresses and source filters; [`mapping`]: AMQP message ↔ record;
//! - [`inbound`], [`outbound`]: one link each way.

pub mod address;
mod client;
pub mod config;
pub mod error;
mod frame_guard;
pub mod inbound;
pub mod mapping;
mod nesting;
pub mod outbound;
mod refusal;
pub mod sasl;
pub mod server;
mod session;
mod shared;
mod transport;
mod wire;
mod write_deadline;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;
