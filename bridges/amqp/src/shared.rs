//! What every AMQP connection of this replica shares: the log, the config and the acceptors. Its own
//! module, so the server (which builds it) and the sessions (which read it) do not import each other.

use std::sync::Arc;

use courier_gateway::log::Log;
use fe2o3_amqp::acceptor::ConnectionAcceptor;

use crate::{config::Config, sasl::Mechanisms};

/// The fe2o3 acceptor for connections that start with SASL: the gateway's mechanisms.
pub(crate) type SaslAcceptor = ConnectionAcceptor<(), Mechanisms>;
/// The fe2o3 acceptor for connections that skip SASL (allowed only when anonymous clients are).
pub(crate) type PlainAcceptor = ConnectionAcceptor<(), ()>;

/// What every connection of this replica shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) log: Arc<dyn Log>,
    /// The log behind what sender links produce, counted as AMQP's messages in. `log` serves the
    /// rest: reads, topic checks and the gateway's own dead letters.
    pub(crate) produce: Arc<dyn Log>,
    pub(crate) config: Config,
    pub(crate) sasl: SaslAcceptor,
    /// `None` when anonymous clients are not allowed: then every connection must authenticate.
    pub(crate) plain: Option<PlainAcceptor>,
}
