//! What every AMQP connection of this replica shares: the logs, the config, authentication and the
//! acceptor. Its own module, so the server (which builds it) and the sessions (which read it) do
//! not import each other.

use std::sync::Arc;

use courier_gateway::{auth::Access, log::Log};
use fe2o3_amqp::acceptor::{ConnectionAcceptor, SessionAcceptor};

use crate::config::Config;

/// The fe2o3 acceptor that opens a connection once SASL (ours, see [`sasl`](crate::sasl)) is done
/// or was skipped: it starts at the AMQP protocol header.
pub(crate) type AmqpAcceptor = ConnectionAcceptor<(), ()>;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The unwrapped log: the gateway's own records (dead letters).
    pub(crate) log: Arc<dyn Log>,
    /// The log behind every client's requests, counting what they produce as AMQP's messages in.
    /// Each connection sees it through its principal's authorization
    /// ([`Client::log`](crate::client::Client)).
    pub(crate) metered: Arc<dyn Log>,
    pub(crate) config: Config,
    /// Who may connect, and what they may do.
    pub(crate) access: Access,
    pub(crate) acceptor: AmqpAcceptor,
    /// Accepts a connection's sessions, offering `amqp.max_links_per_session` as handle-max.
    pub(crate) sessions: SessionAcceptor,
}
