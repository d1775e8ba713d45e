//! What a decision is asked about and what it answers: who ([`Subject`]), on what ([`Resource`]),
//! and the [`Decision`].

use std::fmt;

use super::mqtt_filters;
use crate::auth::principal::Principal;

/// What an action is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A Kafka topic, by name.
    Topic(&'a str),
    /// A consumer group, by name.
    Group(&'a str),
    /// An MQTT topic name: a PUBLISH or a will.
    MqttTopic(&'a str),
    /// An MQTT subscription filter (a shared subscription's, without its `$share/<name>/`).
    MqttFilter(&'a str),
    /// No resource: switching region, describing the cluster.
    Cluster,
}

impl Resource<'_> {
    /// Whether the resource is well formed; an MQTT topic with wildcards or an invalid filter is
    /// refused before any rule is read, so no rule can be tricked into matching it.
    pub(super) fn is_well_formed(self) -> bool {
        match self {
            Self::MqttTopic(topic) => mqtt_filters::is_valid_topic(topic),
            Self::MqttFilter(filter) => mqtt_filters::check_filter(filter).is_ok(),
            Self::Topic(_) | Self::Group(_) | Self::Cluster => true,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(name) => write!(f, "topic {name:?}"),
            Self::Group(name) => write!(f, "group {name:?}"),
            Self::MqttTopic(topic) => write!(f, "MQTT topic {topic:?}"),
            Self::MqttFilter(filter) => write!(f, "MQTT filter {filter:?}"),
            Self::Cluster => f.write_str("the cluster"),
        }
    }
}

/// The one asking.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Who the client authenticated as.
    pub principal: &'a Principal,
    /// The client's id, where its protocol has one (MQTT's client id); `%c` needs it.
    pub client_id: Option<&'a str>,
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The 1-based number of the rule that decided; `None` when no rule applied (default deny).
    pub rule: Option<usize>,
}

impl Decision {
    /// No rule applied.
    pub(super) const DEFAULT_DENY: Self = Self {
        allowed: false,
        rule: None,
    };
}
