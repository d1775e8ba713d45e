//! The one place gateway errors become gRPC statuses. The message is the error's own text, written for
//! the person reading it in a client.

use courier_gateway::Error;
use tonic::{Code, Status};

/// The gRPC code of an error.
pub(crate) fn code_of(error: &Error) -> Code {
    match error {
        Error::InvalidTopicName { .. }
        | Error::InvalidRequest(_)
        | Error::RecordTooLarge { .. }
        | Error::UnknownPartition { .. } => Code::InvalidArgument,
        Error::UnknownTopic { .. } | Error::UnknownRegion { .. } => Code::NotFound,
        Error::TopicExists { .. } => Code::AlreadyExists,
        Error::OffsetOutOfRange { .. } => Code::OutOfRange,
        Error::GroupProtocolConflict { .. } | Error::GroupActive { .. } => Code::FailedPrecondition,
        Error::Forbidden { .. } => Code::PermissionDenied,
        Error::QuotaExceeded { .. } | Error::TopicCreationLimited { .. } => Code::ResourceExhausted,
        Error::ShuttingDown
        | Error::Behind { .. }
        | Error::RegionUnavailable { .. }
        | Error::Storage { .. }
        | Error::Io { .. } => Code::Unavailable,
        Error::Kafka { .. } if error.is_retryable() => Code::Unavailable,
        Error::Kafka { .. } => Code::FailedPrecondition,
        Error::Corrupt { .. } => Code::DataLoss,
        // Listeners and their certificates are set up before serving; no request meets these.
        Error::Tls { .. } | Error::Bind { .. } => Code::Internal,
    }
}

/// The gRPC status of an error (failures that are not the client's are logged). A function, not a
/// `From` impl: neither type is this crate's. Calls write `.map_err(to_status)?`.
pub fn to_status(error: Error) -> Status {
    if !error.is_client_error()
        && !matches!(
            error,
            Error::UnknownTopic { .. }
                | Error::TopicExists { .. }
                | Error::QuotaExceeded { .. }
                | Error::TopicCreationLimited { .. }
        )
    {
        tracing::warn!(%error, "request failed");
    }
    Status::new(code_of(&error), error.to_string())
}

/// A per-request error inside a stream (ProduceStream answers failed requests without ending).
pub(crate) fn error_to_wire(error: Error) -> crate::proto::v1::Error {
    let status = to_status(error);
    crate::proto::v1::Error {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_invalid_argument_with_the_reason() {
        let status = to_status(Error::InvalidTopicName {
            name: "a b".into(),
            reason: "no spaces",
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("a b") && status.message().contains("no spaces"));
    }

    #[test]
    fn unknown_topic_tells_how_to_create_it() {
        let status = to_status(Error::UnknownTopic {
            topic: "orders".into(),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("courier topics create orders"));
    }

    #[test]
    fn shutting_down_is_unavailable() {
        assert_eq!(to_status(Error::ShuttingDown).code(), Code::Unavailable);
    }
}
