//! The MQTT bridge's error type, and where each error meets the wire (reason codes).

use std::io;

use rumqttd::protocol::{DisconnectReasonCode, PubAckReason, PubRecReason};

/// Why an MQTT connection (or the bridge) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid MQTT packet.
    #[error("malformed packet: {0}")]
    Malformed(#[source] rumqttd::protocol::Error),

    /// A packet is larger than the configured or negotiated maximum.
    #[error("packet of {size} bytes is over the {limit}-byte limit (mqtt.max_packet_size)")]
    PacketTooLarge {
        /// Size announced by the packet.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The client broke the protocol (publish before connect, a second CONNECT, bad QoS...).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The client's protocol version is not MQTT 3.1.1 or 5.
    #[error("unsupported MQTT protocol level {0}; this endpoint speaks 3.1.1 (4) and 5")]
    UnsupportedProtocol(u8),

    /// A topic alias outside the range this endpoint allows, or one never set.
    #[error("topic alias {0} is not valid here")]
    TopicAliasInvalid(u16),

    /// The client sent more unacknowledged QoS 1/2 publishes than the receive maximum.
    #[error("more than {0} unacknowledged QoS 1/2 publishes in flight (receive maximum)")]
    ReceiveMaximumExceeded(u16),

    /// The client stayed silent past its keep-alive.
    #[error("no packet within 1.5 times the keep-alive of {0} s")]
    KeepAliveTimeout(u16),

    /// The token the client connected with has expired: it must connect again with a new one.
    #[error("the token this connection was authenticated with has expired")]
    CredentialsExpired,

    /// The client did not read what the gateway wrote for this long (`mqtt.write_timeout`).
    #[error("the client read nothing the gateway wrote for {0:?} (mqtt.write_timeout)")]
    WriteTimeout(std::time::Duration),

    /// A second connection with the same client id took this one's session.
    #[error("session taken over by a newer connection with the same client id")]
    SessionTakenOver,

    /// The gateway is shutting down.
    #[error("server shutting down")]
    ShuttingDown,

    /// A publish was refused and MQTT 3.1.1 has no way to say so but closing the connection.
    #[error("{}", .0.text)]
    Refused(Refusal),

    /// The configuration is invalid.
    #[error("invalid MQTT configuration: {0}")]
    Config(String),

    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),

    /// The WebSocket layer failed.
    #[error("websocket error: {0}")]
    WebSocket(String),

    /// The Log failed in a way the session cannot answer in-protocol.
    #[error("log error: {0}")]
    Log(#[from] courier_gateway::Error),

    /// A stored session record could not be decoded.
    #[error("corrupt session record for client {client_id:?}: {detail}")]
    CorruptSession {
        /// Whose record.
        client_id: String,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    /// The MQTT 5 DISCONNECT reason this error closes a connection with.
    pub fn disconnect_reason(&self) -> DisconnectReasonCode {
        match self {
            Self::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            Self::PacketTooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            Self::Protocol(_) | Self::UnsupportedProtocol(_) => DisconnectReasonCode::ProtocolError,
            Self::TopicAliasInvalid(_) => DisconnectReasonCode::TopicAliasInvalid,
            Self::ReceiveMaximumExceeded(_) => DisconnectReasonCode::ReceiveMaximumExceeded,
            Self::KeepAliveTimeout(_) => DisconnectReasonCode::KeepAliveTimeout,
            // Never sent (the client is not reading); named for the log.
            Self::WriteTimeout(_) => DisconnectReasonCode::UnspecifiedError,
            // "The maximum connection time authorized for this connection has been exceeded."
            Self::CredentialsExpired => DisconnectReasonCode::MaximumConnectTime,
            Self::SessionTakenOver => DisconnectReasonCode::SessionTakenOver,
            Self::ShuttingDown => DisconnectReasonCode::ServerShuttingDown,
            Self::Refused(refusal) => refusal.code.disconnect_reason(),
            Self::Log(error) if error.is_retryable() => DisconnectReasonCode::ServerBusy,
            Self::Io(_)
            | Self::WebSocket(_)
            | Self::Log(_)
            | Self::Config(_)
            | Self::CorruptSession { .. } => DisconnectReasonCode::UnspecifiedError,
        }
    }

    /// True for the ways a peer normally goes away (EOF, reset, broken pipe).
    pub fn is_normal_close(&self) -> bool {
        match self {
            Self::Io(error) => matches!(
                error.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// Why a publish was refused, in terms every MQTT answer (PUBACK, PUBREC, DISCONNECT) can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason code.
    pub code: RefusalCode,
    /// A reason string a person can act on (sent to MQTT 5 clients).
    pub text: String,
}

/// The reason codes a refused publish can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The topic name is invalid, reserved, or its Kafka topic cannot be used.
    TopicNameInvalid,
    /// The policy does not allow the client to publish there, or Kafka refused the gateway's
    /// rights.
    NotAuthorized,
    /// The message is over a size limit.
    QuotaExceeded,
    /// The message breaks the mapping's rules (reserved user property names).
    ImplementationSpecific,
    /// The log failed; the client may retry.
    Unspecified,
}

impl RefusalCode {
    /// As a PUBACK reason.
    pub fn puback(self) -> PubAckReason {
        match self {
            Self::TopicNameInvalid => PubAckReason::TopicNameInvalid,
            Self::NotAuthorized => PubAckReason::NotAuthorized,
            Self::QuotaExceeded => PubAckReason::QuotaExceeded,
            Self::ImplementationSpecific => PubAckReason::ImplementationSpecificError,
            Self::Unspecified => PubAckReason::UnspecifiedError,
        }
    }

    /// As a PUBREC reason.
    pub fn pubrec(self) -> PubRecReason {
        match self {
            Self::TopicNameInvalid => PubRecReason::TopicNameInvalid,
            Self::NotAuthorized => PubRecReason::NotAuthorized,
            Self::QuotaExceeded => PubRecReason::QuotaExceeded,
            Self::ImplementationSpecific => PubRecReason::ImplementationSpecificError,
            Self::Unspecified => PubRecReason::UnspecifiedError,
        }
    }

    /// As a DISCONNECT reason (QoS 0 publishes have no other answer).
    pub fn disconnect_reason(self) -> DisconnectReasonCode {
        match self {
            Self::TopicNameInvalid => DisconnectReasonCode::TopicNameInvalid,
            Self::NotAuthorized => DisconnectReasonCode::NotAuthorized,
            Self::QuotaExceeded => DisconnectReasonCode::QuotaExceeded,
            Self::ImplementationSpecific => DisconnectReasonCode::ImplementationSpecificError,
            Self::Unspecified => DisconnectReasonCode::UnspecifiedError,
        }
    }
}

impl Refusal {
    /// A refusal with a reason string.
    pub fn new(code: RefusalCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }
}

impl From<&courier_gateway::Error> for Refusal {
    fn from(error: &courier_gateway::Error) -> Self {
        use courier_gateway::Error as Log;
        let code = match error {
            Log::InvalidTopicName { .. } | Log::UnknownTopic { .. } => {
                RefusalCode::TopicNameInvalid
            }
            Log::RecordTooLarge { .. } => RefusalCode::QuotaExceeded,
            Log::Forbidden { .. } => RefusalCode::NotAuthorized,
            Log::QuotaExceeded { .. } | Log::TopicCreationLimited { .. } => {
                RefusalCode::QuotaExceeded
            }
            error if error.is_client_error() => RefusalCode::ImplementationSpecific,
            error if !error.is_retryable() => RefusalCode::NotAuthorized,
            _ => RefusalCode::Unspecified,
        };
        Self::new(code, error.to_string())
    }
}

/// Result alias for the MQTT bridge.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_token_is_maximum_connect_time() {
        // 0xA0: "the maximum connection time authorized for this connection has been exceeded".
        assert!(matches!(
            Error::CredentialsExpired.disconnect_reason(),
            DisconnectReasonCode::MaximumConnectTime
        ));
    }
}
