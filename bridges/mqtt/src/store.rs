//! MQTT state that must outlive a replica, each kept in a compacted topic of its own and read by
//! every replica through a [`Table`](courier_gateway::readers::table::Table):
//! - [`sessions`]: who owns a client id, and a persistent session's subscriptions;
//! - [`retained`]: the retained message of each MQTT topic;
//! - [`exchanges`]: QoS 2 exchanges a persistent session has not finished, in both directions.

pub mod exchanges;
pub mod retained;
pub mod sessions;
