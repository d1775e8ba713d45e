//! Courier's tools: `courier bench` (the load tool) and the client commands (`produce`, `consume`,
//! `topics`, `groups`, `regions`), each with the clap arguments it takes. They stay `courier`
//! subcommands for users: the binary names these argument types in its command line and calls the
//! commands here, and links this crate only for them. The gateway library and the server code do not
//! depend on it, nor on what only the load tool uses (rumqttc, hdrhistogram).
//!
//! The modules depend one way: [`bench`](mod@bench) opens its gRPC subscriptions with
//! [`client`]'s, and [`client`] uses nothing of [`bench`](mod@bench).

pub mod bench;
pub mod client;
