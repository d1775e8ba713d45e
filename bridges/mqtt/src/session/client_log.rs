//! The client's own view of the log, made at its first use.

use std::{net::SocketAddr, sync::Arc};

use courier_gateway::{
    auth::Principal,
    log::{
        Log,
        layers::{Authorized, Quoted, Scope},
    },
    metrics::Protocol,
    telemetry::Who,
};

use super::admission::Client;
use crate::{bridge::Bridge, codec::Version};

/// The connection's view of the log ([`client_log`]), made when first needed: a client that only
/// subscribes to plain topics never needs it (the gateway's shared readers deliver to it), and an
/// idle one would hold it for nothing, a few hundred bytes of every connection.
pub(crate) struct ClientLog {
    peer: SocketAddr,
    made: Option<Arc<dyn Log>>,
}

impl ClientLog {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self { peer, made: None }
    }

    /// The log, made now if this is its first use.
    pub(crate) fn get(&mut self, bridge: &Bridge, client: &Client) -> &Arc<dyn Log> {
        self.made
            .get_or_insert_with(|| client_log(bridge, client, self.peer))
    }
}

impl std::fmt::Debug for ClientLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLog")
            .field("made", &self.made.is_some())
            .finish_non_exhaustive()
    }
}

/// The client's own view of the log: what it publishes and its session's group readers. MQTT
/// names are authorized by the session itself; the layer keeps the client off the gateway's
/// internal state (a route to `mqtt.sessions`, say). The gateway's own records (sessions, retained
/// messages, QoS 2 exchanges) go to the bridge's log. The will is the client's publish too, and
/// goes through this log. Behind the authorization, the principal's quota (`[limits.quotas]`),
/// when one applies.
fn client_log(bridge: &Bridge, client: &Client, peer: SocketAddr) -> Arc<dyn Log> {
    let quota = bridge.access.quota(
        &client.principal,
        Some(&client.client_id),
        Some(peer),
        Protocol::Mqtt,
    );
    let traced = bridge.access.traced(bridge.publish.clone(), || {
        Who::new(Protocol::Mqtt, Some(client.client_id.clone()))
    });
    let publish = match quota {
        // MQTT 3.1.1 has no way to refuse a publish but closing the connection: its clients are
        // only ever slowed.
        Some(quota) if client.version == Version::V4 => {
            Arc::new(Quoted::new(traced, quota.slowed()))
        }
        Some(quota) => Arc::new(Quoted::new(traced, quota)),
        None => traced,
    };
    Arc::new(Authorized::new(
        publish,
        bridge.access.authorizer.clone(),
        Principal::clone(&client.principal),
        Some(client.client_id.clone()),
        "mqtt",
        Scope::ProtectionOnly,
    ))
}
