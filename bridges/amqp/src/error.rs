//! Errors of the AMQP endpoint, and the AMQP error conditions clients see for them.

use fe2o3_amqp::types::{
    definitions::{self, AmqpError, ConnectionError, ErrorCondition, LinkError},
    primitives::Symbol,
};

/// What can go wrong while serving AMQP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[amqp]` section is invalid.
    #[error("invalid [amqp] config: {0}")]
    Config(String),
    /// The listener could not be bound or accept.
    #[error("AMQP listener: {0}")]
    Io(#[from] std::io::Error),
    /// The `[amqp.tls]` certificates or keys did not load.
    #[error("amqp.tls: {0}")]
    Tls(#[source] courier_gateway::Error),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] courier_gateway::Error),
}

/// Result with the endpoint's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a link, a delivery or a connection is refused: an AMQP error condition and a sentence a
/// person can act on. Sent to the client in DETACH, a rejected outcome, or CLOSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The AMQP error condition (`amqp:not-found`, ...).
    pub condition: ErrorCondition,
    /// What was wrong.
    pub description: String,
}

impl Refusal {
    /// A refusal with `condition`.
    pub fn new(condition: impl Into<ErrorCondition>, description: impl Into<String>) -> Self {
        Self {
            condition: condition.into(),
            description: description.into(),
        }
    }

    /// `amqp:connection:forced`: the gateway is draining; the link ends once what it holds is settled.
    pub fn draining() -> Self {
        Self::new(
            ConnectionError::ConnectionForced,
            "the gateway is shutting down; reattach to another replica",
        )
    }

    /// `amqp:invalid-field`: the client sent something the gateway cannot map.
    pub fn invalid(description: impl Into<String>) -> Self {
        Self::new(AmqpError::InvalidField, description)
    }

    /// The condition's symbol, e.g. `amqp:not-found`, for logs and dead-letter headers.
    pub fn condition_symbol(&self) -> String {
        let symbol = match &self.condition {
            ErrorCondition::AmqpError(e) => Symbol::from(e),
            ErrorCondition::LinkError(e) => Symbol::from(e),
            ErrorCondition::ConnectionError(e) => Symbol::from(e),
            ErrorCondition::SessionError(e) => Symbol::from(e),
            ErrorCondition::Custom(custom) => custom.clone(),
        };
        symbol.0
    }
}

impl From<Refusal> for definitions::Error {
    fn from(refusal: Refusal) -> Self {
        definitions::Error::new(refusal.condition, Some(refusal.description), None)
    }
}

impl From<&courier_gateway::Error> for Refusal {
    /// The condition a log error is reported with. Errors the client can fix name the field at fault;
    /// errors that may pass (a shutting-down or unreachable log) say so, so the client retries.
    fn from(error: &courier_gateway::Error) -> Self {
        use courier_gateway::Error as Log;
        let condition: ErrorCondition = match error {
            Log::UnknownTopic { .. } => AmqpError::NotFound.into(),
            Log::RecordTooLarge { .. } => LinkError::MessageSizeExceeded.into(),
            Log::InvalidTopicName { .. }
            | Log::UnknownPartition { .. }
            | Log::InvalidRequest(_)
            | Log::OffsetOutOfRange { .. } => AmqpError::InvalidField.into(),
            Log::Forbidden { .. } => AmqpError::UnauthorizedAccess.into(),
            Log::GroupProtocolConflict { .. } | Log::GroupActive { .. } => {
                AmqpError::PreconditionFailed.into()
            }
            // Shutting down, storage and broker hiccups: the client may send again.
            _ if error.is_retryable() => AmqpError::ResourceLimitExceeded.into(),
            _ => AmqpError::InternalError.into(),
        };
        let description = if error.is_retryable() {
            format!("{error} (temporary: send again)")
        } else {
            error.to_string()
        };
        Self {
            condition,
            description,
        }
    }
}
