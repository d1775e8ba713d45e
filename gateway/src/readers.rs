//! Readers over the Log that serve many front-end subscriptions at once, whatever the protocol.
//!
//! - [`fanout`]: one reader per topic shared by the subscribers that read from "now" and commit
//!   nothing, each handed the records its filters match;
//! - [`table`]: the latest record of every key of a compacted topic, followed live (state a front end
//!   keeps in the Log so every replica sees it).
//!
//! They sit beside the [`Log`](crate::log::Log), not inside it: each is one subscription shared by
//! many callers, where a layer decorates one call.

pub mod fanout;
pub mod table;
