//! The one error type of the gateway crate. Front ends map it to their wire (gRPC status, MQTT reason
//! code, AMQP condition) in one place each; callers decide with predicates, never by matching strings.

use std::io;

/// Why a Log or API operation failed. Messages are written for the person who will read them in a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topic name breaks Kafka's naming rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The topic does not exist and the request may not create it.
    #[error(
        "topic {topic:?} does not exist and automatic topic creation is off; create it first (`courier topics create {topic}`)"
    )]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },

    /// A topic with that name already exists.
    #[error("topic {topic:?} already exists")]
    TopicExists {
        /// The topic.
        topic: String,
    },

    /// The partition number is outside the topic's partitions.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// How many the topic has.
        partitions: u32,
    },

    /// A record is larger than the configured limit.
    #[error(
        "record {index} for topic {topic:?} is {size} bytes, over the {limit}-byte limit (log.max_record_bytes)"
    )]
    RecordTooLarge {
        /// The topic.
        topic: String,
        /// Position of the record in its request.
        index: usize,
        /// Key + value + headers, in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The offset asked for is no longer (or not yet) in the partition.
    #[error(
        "offset {offset} is out of range for {topic}/{partition}: the partition holds offsets {low} to {high} (exclusive)"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
        /// Oldest retained offset.
        low: i64,
        /// Next offset to be written.
        high: i64,
    },

    /// The request itself is malformed (missing field, bad value).
    #[error("{0}")]
    InvalidRequest(String),

    /// The group's members subscribe through another protocol, and one group cannot mix them.
    #[error(
        "consumer group {group:?} is already subscribed through {existing}; a {requested} subscriber cannot join it (use another group name)"
    )]
    GroupProtocolConflict {
        /// The group.
        group: String,
        /// Protocol of the current members.
        existing: String,
        /// Protocol of the refused subscriber.
        requested: String,
    },

    /// Authorization refused the request: the policy, or the gateway's protection of its own state.
    #[error("{principal} may not {action} {resource}: {reason}")]
    Forbidden {
        /// Who asked (the principal's name).
        principal: String,
        /// What they asked to do (`produce`, `consume`, ...).
        action: &'static str,
        /// On what (`topic "orders"`, `group "g"`).
        resource: String,
        /// Why: the deciding rule, or the protection.
        reason: String,
    },

    /// The caller created as many topics by naming them as it may this minute
    /// (`topics.auto_create_per_minute`).
    #[error(
        "{who} has created its {per_minute} topics of this minute by naming them (topics.auto_create_per_minute); retry later, or have an administrator create the topic"
    )]
    TopicCreationLimited {
        /// Whose share: the principal, or the anonymous client.
        who: String,
        /// The limit.
        per_minute: u32,
    },

    /// The client sends faster than its quota (`[limits.quotas]`) allows, and the gateway is set to
    /// refuse rather than slow it down.
    #[error("{who} is over its quota of {what} per second ([limits.quotas]){}", if *.at_once { "; this request alone is more than a second's worth and is never taken at once" } else { "; slow down" })]
    QuotaExceeded {
        /// Whose quota: the principal, or the anonymous client.
        who: String,
        /// Which rate: `messages` or `bytes`.
        what: &'static str,
        /// The request alone is more than the quota allows in a second.
        at_once: bool,
    },

    /// The operation needs a group with no live members.
    #[error(
        "consumer group {group:?} has {members} live subscriber(s); stop them before changing its offsets, or seek inside the subscription"
    )]
    GroupActive {
        /// The group.
        group: String,
        /// Live members.
        members: usize,
    },

    /// A region's Kafka cluster did not answer (a failed health probe, or no region is usable).
    #[error("region {region} is not answering: {reason}")]
    RegionUnavailable {
        /// The region.
        region: String,
        /// What failed.
        reason: String,
    },

    /// An operator named a region the configuration does not have.
    #[error("there is no region {region:?}; configured regions: {known}")]
    UnknownRegion {
        /// The name given.
        region: String,
        /// The configured names, comma-separated.
        known: String,
    },

    /// A table of a compacted topic could not be read up to date in time (a slow or unreachable log).
    #[error("the gateway could not read {topic} up to date in time; retry")]
    Behind {
        /// The topic.
        topic: String,
    },

    /// The gateway is shutting down or the log is closed.
    #[error("the log is shutting down; retry against another gateway replica")]
    ShuttingDown,

    /// A listener could not be bound (the address is in use, or not this host's).
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// TLS material did not load: a file missing or unreadable, not PEM, a key that does not match
    /// its certificate, a CA bundle with no certificate.
    #[error("TLS: {what}: {source}")]
    Tls {
        /// What was being done, naming the file.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The storage engine failed. The operation may be retried once the cause is fixed.
    #[error("storage error while {context}: {source}")]
    Storage {
        /// What the gateway was doing.
        context: &'static str,
        /// The storage engine's error.
        #[source]
        source: fjall::Error,
    },

    /// A file system operation failed.
    #[error("i/o error while {context}: {source}")]
    Io {
        /// What the gateway was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The Kafka cluster failed or refused a request.
    #[error("kafka error while {context}: {source}")]
    Kafka {
        /// What the gateway was doing.
        context: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// Stored data could not be decoded: the data directory is damaged or from an incompatible version.
    #[error("corrupt stored data in {what}: {detail}")]
    Corrupt {
        /// Which kind of stored item.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl Error {
    /// Builds a [`Error::Storage`] with what the gateway was doing.
    pub fn storage(context: &'static str) -> impl FnOnce(fjall::Error) -> Self {
        move |source| Self::Storage { context, source }
    }

    /// Builds a [`Error::Kafka`] with what the gateway was doing.
    pub fn kafka(context: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Self::Kafka { context, source }
    }

    /// A short, stable name of the error's kind: the `kind` label of the error metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidTopicName { .. } => "invalid_topic_name",
            Self::UnknownTopic { .. } => "unknown_topic",
            Self::TopicExists { .. } => "topic_exists",
            Self::UnknownPartition { .. } => "unknown_partition",
            Self::RecordTooLarge { .. } => "record_too_large",
            Self::OffsetOutOfRange { .. } => "offset_out_of_range",
            Self::InvalidRequest(_) => "invalid_request",
            Self::GroupProtocolConflict { .. } => "group_protocol_conflict",
            Self::GroupActive { .. } => "group_active",
            Self::Forbidden { .. } => "forbidden",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::TopicCreationLimited { .. } => "topic_creation_limited",
            Self::ShuttingDown => "shutting_down",
            Self::Behind { .. } => "behind",
            Self::RegionUnavailable { .. } => "region_unavailable",
            Self::UnknownRegion { .. } => "unknown_region",
            Self::Storage { .. } | Self::Io { .. } | Self::Corrupt { .. } => "storage",
            Self::Kafka { .. } => "kafka",
            Self::Tls { .. } => "tls",
            Self::Bind { .. } => "bind",
        }
    }

    /// True when the same request may succeed later without change (transient conditions).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ShuttingDown
            | Self::QuotaExceeded { .. }
            | Self::TopicCreationLimited { .. }
            | Self::Behind { .. }
            | Self::RegionUnavailable { .. }
            | Self::Storage { .. }
            | Self::Io { .. } => true,
            Self::Kafka { source, .. } => kafka_is_retryable(source),
            _ => false,
        }
    }

    /// True when the broker does not implement what was asked (librdkafka's mock cluster and some
    /// Kafka-compatible services cannot describe groups): a feature to do without, not a fault.
    pub fn is_unsupported_by_broker(&self) -> bool {
        matches!(
            self,
            Self::Kafka { source, .. }
                if source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnsupportedFeature)
        )
    }

    /// True when the client's request is at fault and must be changed before retrying.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidTopicName { .. }
                | Self::UnknownPartition { .. }
                | Self::RecordTooLarge { .. }
                | Self::InvalidRequest(_)
                | Self::UnknownRegion { .. }
                | Self::Forbidden { .. }
        )
    }
}

/// Whether a Kafka failure is about the cluster's state (brokers down, leaders moving, timeouts) rather
/// than about the request or the gateway's rights, which retrying cannot fix.
fn kafka_is_retryable(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    !matches!(
        error.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidTopic
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::SaslAuthenticationFailed
                | Code::Authentication
                | Code::UnsupportedVersion
                | Code::PolicyViolation
                | Code::InvalidConfig
                | Code::InvalidReplicationFactor
                | Code::InvalidPartitions
        )
    )
}

/// Result alias for the gateway crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
