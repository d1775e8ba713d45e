//! Courier's MQTT endpoint: MQTT 3.1.1 and 5 clients publish into and subscribe out of the
//! [`Log`](courier_gateway::log::Log), with MQTT's guarantees kept end to end.
//!
//! Architecture: the `courier` binary builds a [`Server`] over the shared Log. Every connection runs a
//! [`session`] over a [`connection`] (framed bytes, [`codec`] from rumqttd's v4/v5 codecs). How MQTT
//! concepts become Kafka topics, keys, headers and groups is in [`mapping`]. State that must survive a
//! replica (sessions, retained messages, unfinished QoS 2 exchanges) is in the [`store`], compacted
//! topics read by every replica; the [`takeover`] fence keeps one live connection per client id.
//! Clean-session subscribers share the gateway's fan-out hubs
//! ([`courier_gateway::readers::fanout`]), which find them by their filters through [`addressing`].
//!
//! Modules:
//! - [`config`]: `[mqtt]`; [`error`]: the error type and reason codes;
//! - [`codec`], [`connection`]: bytes ↔ packets ↔ socket;
//! - [`server`]: listeners, accept loops, limits; [`session`]: one client's state machine;
//! - [`mapping`]: MQTT ↔ Log;
//! - who may connect and what they may do: `courier_gateway::auth` decides, the [`session`] asks it
//!   at CONNECT (credentials or the client certificate, the will, whose session a client id is)
//!   and for each PUBLISH and SUBSCRIBE, on MQTT topic names and filters;
//! - [`bridge`]: state shared by connections; [`store`], [`takeover`], [`addressing`].

pub mod addressing;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod mapping;
pub mod server;
pub mod session;
pub mod store;
mod sync;
pub mod takeover;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;
