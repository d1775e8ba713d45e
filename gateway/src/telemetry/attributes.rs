//! The attributes of message spans, named by OpenTelemetry's semantic conventions for messaging
//! (v1.30: `messaging.*`, Kafka's `messaging.kafka.*`) and for the client's protocol
//! (`network.protocol.name`).

use opentelemetry::KeyValue;

use super::Who;

/// `messaging.system`: the records are Kafka's, whichever backend stores them.
pub(super) const SYSTEM: &str = "messaging.system";
/// `messaging.operation.type`: `send` for a publish, `process` for a delivery.
pub(super) const OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.operation.name`: `publish` or `deliver`, as the span's name starts.
pub(super) const OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.destination.name`: the Kafka topic.
pub(super) const DESTINATION: &str = "messaging.destination.name";
/// `messaging.destination.partition.id`.
pub(super) const PARTITION: &str = "messaging.destination.partition.id";
/// `messaging.kafka.offset`.
pub(super) const OFFSET: &str = "messaging.kafka.offset";
/// `messaging.client.id`.
pub(super) const CLIENT_ID: &str = "messaging.client.id";
/// `messaging.message.id`: the record's `courier-id`.
pub(super) const MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.message.body.size`.
pub(super) const BODY_SIZE: &str = "messaging.message.body.size";
/// `messaging.batch.message_count`: the records a root publish span stands for.
pub(super) const BATCH_COUNT: &str = "messaging.batch.message_count";
/// `network.protocol.name`: the client's protocol (`mqtt`, `amqp`, `grpc`).
pub(super) const PROTOCOL: &str = "network.protocol.name";

/// What every span of one operation by `who` on `topic` carries.
pub(super) fn common(operation: Operation, who: &Who, topic: &str) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new(SYSTEM, "kafka"),
        KeyValue::new(OPERATION_TYPE, operation.kind()),
        KeyValue::new(OPERATION_NAME, operation.name()),
        KeyValue::new(DESTINATION, topic.to_owned()),
        KeyValue::new(PROTOCOL, who.protocol.name()),
    ];
    if let Some(client) = &who.client {
        attributes.push(KeyValue::new(CLIENT_ID, client.clone()));
    }
    attributes
}

/// The two operations the gateway records.
#[derive(Debug, Clone, Copy)]
pub(super) enum Operation {
    /// Received from a client → durable in the log.
    Publish,
    /// Taken from the log for a client → acknowledged by it.
    Deliver,
}

impl Operation {
    fn kind(self) -> &'static str {
        match self {
            Operation::Publish => "send",
            Operation::Deliver => "process",
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Deliver => "deliver",
        }
    }
}
