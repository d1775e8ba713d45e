//! Who is on the other end of a connection, and what they may do: the principal SASL (or the lack
//! of it) established, and the log as that principal sees it. Links are decided here when they
//! attach, so a client learns of a refusal from the attach itself, not from its first transfer.

use std::{net::SocketAddr, sync::Arc};

use courier_gateway::{
    auth::{
        Authorizer, Principal,
        policy::{Action, Resource, Subject},
    },
    limits::Usage,
    log::{
        Log,
        layers::{Authorized, Quoted, Scope},
    },
};

use crate::error::Refusal;

/// One connection's client.
#[derive(Debug)]
pub(crate) struct Client {
    /// Where from.
    pub(crate) peer: SocketAddr,
    /// Who it is.
    pub(crate) principal: Principal,
    /// The client-facing log, every request decided as this principal's: what its sender links
    /// produce, what its receiver links read, and the topics its links open. The gateway's own
    /// records (dead letters) go to the unwrapped log.
    pub(crate) log: Arc<dyn Log>,
    authorizer: Authorizer,
}

impl Client {
    /// `principal`'s view of `log` (the metered, client-facing one), held to its quotas when any
    /// apply (`quota`).
    pub(crate) fn new(
        peer: SocketAddr,
        principal: Principal,
        log: Arc<dyn Log>,
        authorizer: Authorizer,
        quota: Option<Usage>,
    ) -> Self {
        let log = match quota {
            Some(quota) => Arc::new(Quoted::new(log, quota)),
            None => log,
        };
        let log = Arc::new(
            Authorized::new(
                log,
                authorizer.clone(),
                principal.clone(),
                None,
                "amqp",
                Scope::KafkaNames,
            )
            .calling_from(Some(peer)),
        ) as Arc<dyn Log>;
        Self {
            peer,
            principal,
            log,
            authorizer,
        }
    }

    /// Whether a sender link (the client sends) may attach to `topic`.
    pub(crate) fn may_send(&self, topic: &str) -> Result<(), Refusal> {
        self.policy(Action::Produce, Resource::Topic(topic))
    }

    /// Whether a receiver link (the client receives) may attach to `topic`, in `group` if any.
    pub(crate) fn may_receive(&self, topic: &str, group: Option<&str>) -> Result<(), Refusal> {
        self.policy(Action::Consume, Resource::Topic(topic))?;
        let Some(group) = group else {
            return Ok(());
        };
        // Other protocols' groups (MQTT's sessions and shares) are refused by the log layer on
        // subscribe too; asked here so that the attach carries the refusal.
        self.authorizer
            .protect_group("amqp", &self.principal, Action::JoinGroup, group)
            .map_err(|error| Refusal::from(&error))?;
        self.policy(Action::JoinGroup, Resource::Group(group))
    }

    /// The policy's answer. Whether the topic is the gateway's own is the layer's to say, when the
    /// link opens the topic through [`Client::log`].
    fn policy(&self, action: Action, resource: Resource<'_>) -> Result<(), Refusal> {
        let subject = Subject {
            principal: &self.principal,
            client_id: None,
        };
        self.authorizer
            .check("amqp", subject, action, resource)
            .map_err(|error| Refusal::from(&error))
    }
}
