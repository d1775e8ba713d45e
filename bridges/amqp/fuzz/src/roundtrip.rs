//! What the mapping promises, checked on one decoded message: the record it becomes keeps the
//! partition key, creation time and body (under `amqp-body`), and that record, as the log stores
//! it, maps back to a message with the same body, key, application properties (typed as sent) and
//! string properties, which fe2o3 encodes and decodes to itself. A message the mapping refuses
//! (reserved property names, a key of another type, a value that does not encode) is not checked
//! further: the link rejects it.

use std::sync::Arc;

use bytes::Bytes;
use courier_amqp::mapping::{self, AmqpMessage, BODY_HEADER, PARTITION_KEY};
use courier_gateway::log::{NewRecord, Record};
use fe2o3_amqp::types::{
    messaging::{
        AmqpValue, Body, MessageId, annotations::OwnedKey, message::__private::Serializable,
    },
    primitives::{Symbol, Value},
};

use crate::known_bugs;

/// The partition a link with a fixed partition gives its records.
const PARTITION: i32 = 3;
/// The id the log gave the stored record (the message id a receiver sees).
const COURIER_ID: &str = "01JABCDEFGHJKMNPQRSTVWXYZ0";

/// Maps `message` to a record and back, asserting what the mapping promises.
pub fn check(message: AmqpMessage) {
    let Ok(record) = mapping::to_record(message.clone(), Some(PARTITION)) else {
        return;
    };
    assert_eq!(record.partition, Some(PARTITION));
    assert_eq!(record.key, partition_key(&message), "the key");
    assert_eq!(
        record.timestamp_ms,
        message
            .properties
            .as_ref()
            .and_then(|properties| properties.creation_time.as_ref())
            .map(|time| time.milliseconds()),
        "the creation time"
    );
    assert_eq!(
        record
            .headers
            .iter()
            .filter(|header| header.key == BODY_HEADER)
            .count(),
        1,
        "one {BODY_HEADER} header"
    );

    let stored = stored(record);
    let back = mapping::from_record(&stored, 0);
    // A body the mapping stored comes back as it was sent: one holding an array serde_amqp
    // would not bring back (known bug 6) is refused.
    assert_eq!(back.body, message.body, "the body, back");
    let body_round_trips = !known_bugs::holds_an_array(&message.body);
    assert_eq!(key_annotation(&back), stored.key, "the key, back");
    assert_eq!(
        back.application_properties
            .as_ref()
            .map(|properties| &properties.0)
            .filter(|properties| !properties.is_empty()),
        message
            .application_properties
            .as_ref()
            .map(|properties| &properties.0)
            .filter(|properties| !properties.is_empty()),
        "the application properties, back"
    );
    check_properties(&message, &back);
    if body_round_trips
        && !known_bugs::properties_hold_an_array(message.application_properties.as_ref())
    {
        check_encodes(&back);
    }

    let letter = mapping::dead_letter(&stored, None);
    assert_eq!((&letter.key, &letter.value), (&stored.key, &stored.value));
    assert!(letter.headers.starts_with(&stored.headers));
}

/// The record as the log returns it.
fn stored(record: NewRecord) -> Record {
    Record {
        topic: Arc::from("fuzz"),
        partition: PARTITION,
        offset: 41,
        key: record.key,
        value: record.value,
        headers: record.headers,
        timestamp_ms: record.timestamp_ms.unwrap_or(1_700_000_000_000),
        courier_id: COURIER_ID.to_owned(),
        origin: "eu".to_owned(),
    }
}

/// The key a message asks for: its `x-opt-partition-key` annotation's bytes.
fn partition_key(message: &AmqpMessage) -> Option<Bytes> {
    let annotations = &message.message_annotations.as_ref()?.0;
    match annotations.get(&OwnedKey::Symbol(Symbol::from(PARTITION_KEY)))? {
        Value::String(text) => Some(Bytes::copy_from_slice(text.as_bytes())),
        Value::Symbol(symbol) => Some(Bytes::copy_from_slice(symbol.as_str().as_bytes())),
        Value::Binary(bytes) => Some(Bytes::copy_from_slice(bytes)),
        _ => None,
    }
}

/// The key a receiver sees: text when it is UTF-8, else binary.
fn key_annotation(message: &AmqpMessage) -> Option<Bytes> {
    let annotations = &message.message_annotations.as_ref()?.0;
    match annotations.get(&OwnedKey::Symbol(Symbol::from(PARTITION_KEY)))? {
        Value::String(text) => Some(Bytes::copy_from_slice(text.as_bytes())),
        Value::Binary(bytes) => Some(Bytes::copy_from_slice(bytes)),
        other => panic!("a key annotation of {other:?}"),
    }
}

/// The properties section's text fields come back as sent; the message id is the log's.
fn check_properties(sent: &AmqpMessage, back: &AmqpMessage) {
    let back = back.properties.clone().unwrap_or_default();
    assert_eq!(
        back.message_id,
        Some(MessageId::String(COURIER_ID.to_owned()))
    );
    let Some(sent) = &sent.properties else {
        return;
    };
    assert_eq!(back.subject, sent.subject);
    assert_eq!(back.content_type, sent.content_type);
    assert_eq!(back.content_encoding, sent.content_encoding);
    assert_eq!(back.reply_to, sent.reply_to);
    assert_eq!(back.to, sent.to);
    assert_eq!(back.group_id, sent.group_id);
    if let Some(MessageId::String(correlation)) = &sent.correlation_id {
        assert_eq!(
            back.correlation_id,
            Some(MessageId::String(correlation.clone()))
        );
    }
}

/// The message a receiver link sends encodes as fe2o3's sender encodes it, and decodes to itself,
/// but for an empty body: fe2o3 sends no body as an amqp-value holding null (a message must have
/// a body section, AMQP 1.0 §3.2), and a body of no data or amqp-sequence sections as nothing,
/// which decodes as no body.
fn check_encodes(message: &AmqpMessage) {
    let bytes = serde_amqp::to_vec(&Serializable(message))
        .unwrap_or_else(|error| panic!("the message sent back does not encode: {error}"));
    let decoded = crate::message::decode(&bytes)
        .unwrap_or_else(|| panic!("the message sent back does not decode: {bytes:?}"));
    let mut expected = message.clone();
    expected.body = match &message.body {
        Body::Empty => Body::Value(AmqpValue(Value::Null)),
        Body::Data(sections) if sections.is_empty() => Body::Empty,
        Body::Sequence(sections) if sections.is_empty() => Body::Empty,
        body => body.clone(),
    };
    assert_eq!(decoded, expected, "the message sent back, decoded");
}
