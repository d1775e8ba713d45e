//! How an AMQP 1.0 message becomes a Kafka record, and a record becomes a message. The one place to
//! learn the mapping.
//!
//! Client → Kafka (a client's sender link):
//! - **key**: message annotation `x-opt-partition-key` (string, symbol or binary); none: null key.
//! - **value**: the body, its section type in header `amqp-body` so it comes back as it was sent:
//!
//!   | body                          | `amqp-body`     | record value                              |
//!   |-------------------------------|-----------------|-------------------------------------------|
//!   | one data section              | `data`          | its bytes                                 |
//!   | amqp-value holding a string   | `string`        | the string, UTF-8                         |
//!   | amqp-value holding binary     | `binary`        | the bytes                                 |
//!   | any other amqp-value          | `value`         | the value's AMQP 1.0 encoding             |
//!   | amqp-sequence section(s)      | `sequence`      | AMQP encoding of a list of the sequences  |
//!   | several data sections         | `data-sections` | AMQP encoding of a list of binaries       |
//!   | no body                       | `empty`         | empty                                     |
//!
//!   So a native Kafka consumer reads text and bytes as they were sent, and every body round-trips.
//! - **headers**: each application property is a header of the same name. Strings are UTF-8; symbols
//!   UTF-8 and binaries raw; other types (numbers, booleans, timestamps, ...) their AMQP encoding. The
//!   non-string ones are listed in header `amqp-property-types` (a JSON object, name → `symbol`,
//!   `binary`, `null` or `amqp`) so they come back with their type. Names starting with `amqp-`,
//!   `dlq-` (the dead-letter headers) or `courier-` are reserved.
//! - **properties section**: `subject`, `content-type`, `content-encoding`, `reply-to`, `to`,
//!   `group-id` and string `correlation-id`/`message-id` travel as headers `amqp-<field>`;
//!   `creation-time` is the record's timestamp.
//!
//! Kafka → client (a client's receiver link):
//! - **message-id**: the record's `courier-id` (the same across retries and failover: deduplicate on
//!   it). A message-id the client set is kept in header `amqp-message-id` for Kafka readers.
//! - **message annotations**: `x-opt-topic`, `x-opt-partition`, `x-opt-offset`, `x-opt-timestamp`,
//!   `x-opt-partition-key` (the key), `x-opt-origin` (region the record was written in).
//! - **header section**: durable; `delivery-count` counts the times the gateway delivered it again on
//!   this link after a release or modify.
//! - **application properties**: every header that is not the gateway's `amqp-*` bookkeeping, typed
//!   back as described above. Records from native Kafka clients have no `amqp-body`: their value is
//!   one data section and their headers strings (binary when not UTF-8).

use std::collections::BTreeMap;

use bytes::Bytes;
use courier_gateway::log::{Header as RecordHeader, NewRecord, Record};
use fe2o3_amqp::types::{
    messaging::{
        AmqpSequence, AmqpValue, ApplicationProperties, Batch, Body, Data, Header, Message,
        MessageAnnotations, MessageId, Properties, annotations::OwnedKey,
    },
    primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value},
};

use crate::error::Refusal;

/// The message type the bridge reads and writes: any body.
pub type AmqpMessage = Message<Body<Value>>;

/// Header naming the body's section type.
pub const BODY_HEADER: &str = "amqp-body";
/// Header listing application properties that are not strings, with their types.
pub const PROPERTY_TYPES_HEADER: &str = "amqp-property-types";
/// Headers the gateway writes for AMQP's own fields start with this.
pub const AMQP_HEADER_PREFIX: &str = "amqp-";
/// Message annotation carrying the record key.
pub const PARTITION_KEY: &str = "x-opt-partition-key";

/// Headers of a dead-lettered record: where it came from and why the client rejected it.
pub mod dead_letter {
    /// The dead-letter headers start with this; clients may not set such headers.
    pub const PREFIX: &str = "dlq-";
    /// Topic the rejected record was read from.
    pub const TOPIC: &str = "dlq-topic";
    /// Its partition.
    pub const PARTITION: &str = "dlq-partition";
    /// Its offset.
    pub const OFFSET: &str = "dlq-offset";
    /// The rejecting client's error condition (`amqp:...`), when it gave one.
    pub const CONDITION: &str = "dlq-condition";
    /// The rejecting client's error description, when it gave one.
    pub const DESCRIPTION: &str = "dlq-description";
    /// The `dlq-condition` of a record dead-lettered because it was delivered
    /// `amqp.max_delivery_count` times without being accepted or rejected.
    pub const DELIVERY_LIMIT_CONDITION: &str = "courier:delivery-limit-exceeded";
}

/// The properties-section fields that travel as `amqp-<field>` headers.
mod property_header {
    pub(super) const MESSAGE_ID: &str = "amqp-message-id";
    pub(super) const CORRELATION_ID: &str = "amqp-correlation-id";
    pub(super) const SUBJECT: &str = "amqp-subject";
    pub(super) const CONTENT_TYPE: &str = "amqp-content-type";
    pub(super) const CONTENT_ENCODING: &str = "amqp-content-encoding";
    pub(super) const REPLY_TO: &str = "amqp-reply-to";
    pub(super) const TO: &str = "amqp-to";
    pub(super) const GROUP_ID: &str = "amqp-group-id";
}

/// The record a client's message becomes. `partition` is the link's fixed partition, if any.
pub fn to_record(message: AmqpMessage, partition: Option<i32>) -> Result<NewRecord, Refusal> {
    let mut headers = Vec::new();
    let key = match &message.message_annotations {
        Some(annotations) => partition_key(annotations)?,
        None => None,
    };
    let mut timestamp_ms = None;
    if let Some(properties) = message.properties {
        timestamp_ms = properties
            .creation_time
            .as_ref()
            .map(Timestamp::milliseconds);
        property_headers(properties, &mut headers);
    }
    if let Some(ApplicationProperties(properties)) = message.application_properties {
        application_headers(properties, &mut headers)?;
    }
    let (kind, value) = encode_body(message.body)?;
    headers.push(header(BODY_HEADER, kind));
    Ok(NewRecord {
        key,
        value: Some(value),
        headers,
        partition,
        timestamp_ms,
        courier_id: String::new(),
    })
}

/// Whether `payload`, a delivery's message, passes what the gateway checks before fe2o3 decodes it
/// (`frame_guard`): AMQP's encoding, values nested at most as deep as the gateway decodes. A
/// delivery that does not is refused with its connection and never reaches [`to_record`].
pub fn passes_frame_checks(payload: &[u8]) -> bool {
    crate::nesting::Scanner::new(crate::nesting::MAX_NESTING)
        .feed(payload)
        .is_ok()
}

/// The message a record becomes. `redeliveries` is how often this link delivered it before.
pub fn from_record(record: &Record, redeliveries: u32) -> AmqpMessage {
    let types = property_types(&record.headers);
    let mut properties = Properties {
        message_id: Some(MessageId::String(if record.courier_id.is_empty() {
            format!("{}/{}/{}", record.topic, record.partition, record.offset)
        } else {
            record.courier_id.clone()
        })),
        creation_time: Some(Timestamp::from_milliseconds(record.timestamp_ms)),
        ..Properties::default()
    };
    let mut application = OrderedMap::new();
    let mut body_kind = None;
    for RecordHeader { key, value } in &record.headers {
        let text = || String::from_utf8_lossy(value).into_owned();
        match key.as_str() {
            BODY_HEADER => body_kind = Some(text()),
            PROPERTY_TYPES_HEADER | property_header::MESSAGE_ID => {}
            property_header::CORRELATION_ID => {
                properties.correlation_id = Some(MessageId::String(text()))
            }
            property_header::SUBJECT => properties.subject = Some(text()),
            property_header::CONTENT_TYPE => properties.content_type = Some(Symbol(text())),
            property_header::CONTENT_ENCODING => properties.content_encoding = Some(Symbol(text())),
            property_header::REPLY_TO => properties.reply_to = Some(text()),
            property_header::TO => properties.to = Some(text()),
            property_header::GROUP_ID => properties.group_id = Some(text()),
            name => {
                application.insert(
                    name.to_owned(),
                    decode_property(types.get(name).map(String::as_str), value),
                );
            }
        }
    }

    let mut annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from("x-opt-topic"),
            Value::String(record.topic.to_string()),
        )
        .insert(
            Symbol::from("x-opt-partition"),
            Value::Int(record.partition),
        )
        .insert(Symbol::from("x-opt-offset"), Value::Long(record.offset))
        .insert(
            Symbol::from("x-opt-timestamp"),
            Value::Timestamp(Timestamp::from_milliseconds(record.timestamp_ms)),
        );
    if let Some(key) = &record.key {
        let key = match std::str::from_utf8(key) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => Value::Binary(Binary::from(key.to_vec())),
        };
        annotations = annotations.insert(Symbol::from(PARTITION_KEY), key);
    }
    if !record.origin.is_empty() {
        annotations = annotations.insert(
            Symbol::from("x-opt-origin"),
            Value::String(record.origin.clone()),
        );
    }

    Message {
        header: Some(
            Header::builder()
                .durable(true)
                .first_acquirer(redeliveries == 0)
                .delivery_count(redeliveries)
                .build(),
        ),
        delivery_annotations: None,
        message_annotations: Some(annotations.build()),
        properties: Some(properties),
        application_properties: (!application.is_empty())
            .then_some(ApplicationProperties(application)),
        body: decode_body(body_kind.as_deref(), record.value.as_ref()),
        footer: None,
    }
}

/// The record a rejected delivery is dead-lettered as: the original key, value and headers, plus
/// where it came from and the client's reason.
pub fn dead_letter(record: &Record, reason: Option<&Refusal>) -> NewRecord {
    let mut headers = record.headers.clone();
    headers.push(header(dead_letter::TOPIC, &record.topic));
    headers.push(header(
        dead_letter::PARTITION,
        &record.partition.to_string(),
    ));
    headers.push(header(dead_letter::OFFSET, &record.offset.to_string()));
    if let Some(reason) = reason {
        headers.push(header(dead_letter::CONDITION, &reason.condition_symbol()));
        headers.push(header(dead_letter::DESCRIPTION, &reason.description));
    }
    NewRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        partition: None,
        timestamp_ms: Some(record.timestamp_ms),
        courier_id: record.courier_id.clone(),
    }
}

fn header(key: &str, value: &str) -> RecordHeader {
    RecordHeader {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn partition_key(annotations: &MessageAnnotations) -> Result<Option<Bytes>, Refusal> {
    let key = OwnedKey::Symbol(Symbol::from(PARTITION_KEY));
    match annotations.0.get(&key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(Bytes::from(text.clone().into_bytes()))),
        Some(Value::Symbol(symbol)) => Ok(Some(Bytes::from(symbol.0.clone().into_bytes()))),
        Some(Value::Binary(bytes)) => Ok(Some(Bytes::from(bytes.to_vec()))),
        Some(other) => Err(Refusal::invalid(format!(
            "message annotation {PARTITION_KEY} must be a string or binary, not {other:?}"
        ))),
    }
}

fn property_headers(properties: Properties, headers: &mut Vec<RecordHeader>) {
    let text_id = |id: MessageId| match id {
        MessageId::String(text) => Some(text),
        MessageId::Ulong(number) => Some(number.to_string()),
        MessageId::Uuid(uuid) => Some(format!("{uuid:?}")),
        MessageId::Binary(_) => None,
    };
    let fields = [
        (
            property_header::MESSAGE_ID,
            properties.message_id.and_then(text_id),
        ),
        (
            property_header::CORRELATION_ID,
            properties.correlation_id.and_then(text_id),
        ),
        (property_header::SUBJECT, properties.subject),
        (
            property_header::CONTENT_TYPE,
            properties.content_type.map(|s| s.0),
        ),
        (
            property_header::CONTENT_ENCODING,
            properties.content_encoding.map(|s| s.0),
        ),
        (property_header::REPLY_TO, properties.reply_to),
        (property_header::TO, properties.to),
        (property_header::GROUP_ID, properties.group_id),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            headers.push(header(name, &value));
        }
    }
}

fn application_headers(
    properties: OrderedMap<String, SimpleValue>,
    headers: &mut Vec<RecordHeader>,
) -> Result<(), Refusal> {
    let mut types = BTreeMap::new();
    for (name, value) in properties.into_inner() {
        if name.starts_with(AMQP_HEADER_PREFIX)
            || name.starts_with(dead_letter::PREFIX)
            || name.starts_with(courier_gateway::log::validate::RESERVED_HEADER_PREFIX)
        {
            return Err(Refusal::invalid(format!(
                "application property {name:?}: names starting with amqp-, dlq- or courier- are reserved"
            )));
        }
        let (kind, bytes) = match value {
            SimpleValue::String(text) => (None, text.into_bytes()),
            SimpleValue::Symbol(symbol) => (Some("symbol"), symbol.0.into_bytes()),
            SimpleValue::Binary(bytes) => (Some("binary"), bytes.into_vec()),
            SimpleValue::Null => (Some("null"), Vec::new()),
            SimpleValue::Described(described) if is_compound(&described.value) => {
                return Err(Refusal::invalid(format!(
                    "application property {name:?}: values are restricted to simple types, not \
                     maps, lists or arrays (AMQP 1.0 section 3.2.5), described or not"
                )));
            }
            other => {
                let encoded = serde_amqp::to_vec(&other).map_err(|error| {
                    Refusal::invalid(format!("application property {name:?}: {error}"))
                })?;
                (Some("amqp"), encoded)
            }
        };
        if let Some(kind) = kind {
            types.insert(name.clone(), kind);
        }
        headers.push(RecordHeader {
            key: name,
            value: Bytes::from(bytes),
        });
    }
    if !types.is_empty() {
        let listed = serde_json::to_string(&types)
            .map_err(|error| Refusal::invalid(format!("application properties: {error}")))?;
        headers.push(header(PROPERTY_TYPES_HEADER, &listed));
    }
    Ok(())
}

fn property_types(headers: &[RecordHeader]) -> BTreeMap<String, String> {
    headers
        .iter()
        .find(|h| h.key == PROPERTY_TYPES_HEADER)
        .and_then(|h| serde_json::from_slice(&h.value).ok())
        .unwrap_or_default()
}

fn decode_property(kind: Option<&str>, value: &Bytes) -> SimpleValue {
    let as_text_or_binary = || match std::str::from_utf8(value) {
        Ok(text) => SimpleValue::String(text.to_owned()),
        Err(_) => SimpleValue::Binary(Binary::from(value.to_vec())),
    };
    match kind {
        Some("symbol") => SimpleValue::Symbol(Symbol(String::from_utf8_lossy(value).into_owned())),
        Some("binary") => SimpleValue::Binary(Binary::from(value.to_vec())),
        Some("null") => SimpleValue::Null,
        Some("amqp") => serde_amqp::from_slice(value).unwrap_or_else(|_| as_text_or_binary()),
        _ => as_text_or_binary(),
    }
}

/// Whether `value`, or any value inside it (list items, map keys and values, array elements, a
/// described value), is one `wanted` picks. The depth is bounded by the frame guard's nesting
/// limit, checked before a message is decoded.
fn holds(value: &Value, wanted: &impl Fn(&Value) -> bool) -> bool {
    wanted(value)
        || match value {
            Value::List(items) => items.iter().any(|item| holds(item, wanted)),
            Value::Array(items) => items.iter().any(|item| holds(item, wanted)),
            Value::Map(map) => map
                .iter()
                .any(|(key, value)| holds(key, wanted) || holds(value, wanted)),
            Value::Described(described) => holds(&described.value, wanted),
            _ => false,
        }
}

/// Does `value` hold a map keyed by a timestamp? serde_amqp 0.18.0 leaves the key's type noted
/// for the value after it, and panics on a string there (`fuzz/src/known_bugs.rs`, bug 7); other
/// values after it may be written as timestamps. Such a body is refused, not stored wrong.
fn holds_a_timestamp_key(value: &Value) -> bool {
    let timestamp = |key: &Value| matches!(key, Value::Timestamp(_));
    holds(
        value,
        &|value| matches!(value, Value::Map(map) if map.keys().any(timestamp)),
    )
}

/// Whether `value` is a map, list or array, or a described one.
fn is_compound(value: &Value) -> bool {
    match value {
        Value::Map(_) | Value::List(_) | Value::Array(_) => true,
        Value::Described(described) => is_compound(&described.value),
        _ => false,
    }
}

/// Whether an array is anywhere in `value`.
fn holds_an_array(value: &Value) -> bool {
    holds(value, &|value| matches!(value, Value::Array(_)))
}

/// Whether `value` holds an array serde_amqp 0.18.0 writes malformed, though its own decoder
/// reads it back: elements encoded in no bytes (nulls, empty lists) get a byte too many, and
/// described elements their descriptor again each. Other AMQP clients misread such bytes.
fn holds_a_malformed_array(value: &Value) -> bool {
    holds(value, &|value| {
        matches!(value, Value::Array(items) if items.iter().any(|item| {
            matches!(item, Value::Null | Value::Described(_))
                || matches!(item, Value::List(list) if list.is_empty())
        }))
    })
}

fn encode_body(body: Body<Value>) -> Result<(&'static str, Bytes), Refusal> {
    let encode = |value: &Value| {
        if holds_a_timestamp_key(value) {
            return Err(Refusal::invalid(
                "message body: a map keyed by a timestamp cannot be stored (the AMQP encoder \
                 Courier uses, serde_amqp 0.18.0, cannot write one)",
            ));
        }
        let encoded = serde_amqp::to_vec(value)
            .map(Bytes::from)
            .map_err(|error| Refusal::invalid(format!("message body: {error}")))?;
        // serde_amqp 0.18.0 writes some arrays malformed (an array of nulls or of described
        // values) and reads others back wrongly (an array of maps, an array as a map key): a body
        // holding one is refused, so no receiver is handed other bytes or another message than
        // the sender's.
        if holds_an_array(value)
            && (holds_a_malformed_array(value)
                || serde_amqp::from_slice::<Value>(&encoded).ok().as_ref() != Some(value))
        {
            return Err(Refusal::invalid(
                "message body: this array does not survive the AMQP codec Courier uses \
                 (serde_amqp 0.18.0 writes or reads it differently); send it as a list",
            ));
        }
        Ok(encoded)
    };
    Ok(match body {
        Body::Data(sections) if sections.len() == 1 => {
            let Data(bytes) = sections.into_inner().remove(0);
            ("data", Bytes::from(bytes.into_vec()))
        }
        Body::Data(sections) => {
            let list = sections
                .into_inner()
                .into_iter()
                .map(|Data(bytes)| Value::Binary(bytes))
                .collect();
            ("data-sections", encode(&Value::List(list))?)
        }
        Body::Value(AmqpValue(Value::String(text))) => ("string", Bytes::from(text.into_bytes())),
        Body::Value(AmqpValue(Value::Binary(bytes))) => ("binary", Bytes::from(bytes.into_vec())),
        Body::Value(AmqpValue(value)) => ("value", encode(&value)?),
        Body::Sequence(sequences) => {
            let list = sequences
                .into_inner()
                .into_iter()
                .map(|AmqpSequence(items)| Value::List(items))
                .collect();
            ("sequence", encode(&Value::List(list))?)
        }
        Body::Empty => ("empty", Bytes::new()),
    })
}

/// The body a record's value becomes. A value that does not decode as its header claims (a native
/// client wrote the header, say) is delivered as plain data rather than dropped.
fn decode_body(kind: Option<&str>, value: Option<&Bytes>) -> Body<Value> {
    let Some(value) = value else {
        return Body::Empty;
    };
    let data = || Body::Data(Batch::new(vec![Data(Binary::from(value.to_vec()))]));
    let decoded = || serde_amqp::from_slice::<Value>(value).ok();
    let lists = |value: Value| match value {
        Value::List(items) => Some(items),
        _ => None,
    };
    match kind {
        Some("string") => match std::str::from_utf8(value) {
            Ok(text) => Body::Value(AmqpValue(Value::String(text.to_owned()))),
            Err(_) => data(),
        },
        Some("binary") => Body::Value(AmqpValue(Value::Binary(Binary::from(value.to_vec())))),
        Some("value") => decoded().map_or_else(data, |value| Body::Value(AmqpValue(value))),
        Some("sequence") => decoded()
            .and_then(lists)
            .and_then(|sequences| {
                sequences
                    .into_iter()
                    .map(|sequence| lists(sequence).map(AmqpSequence))
                    .collect::<Option<Vec<_>>>()
            })
            .map_or_else(data, |sequences| Body::Sequence(Batch::new(sequences))),
        Some("data-sections") => decoded()
            .and_then(lists)
            .and_then(|sections| {
                sections
                    .into_iter()
                    .map(|section| match section {
                        Value::Binary(bytes) => Some(Data(bytes)),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .map_or_else(data, |sections| Body::Data(Batch::new(sections))),
        Some("empty") => Body::Empty,
        _ => data(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fe2o3_amqp::types::primitives::OrderedMap;

    use super::*;

    fn stored(record: NewRecord) -> Record {
        Record {
            topic: Arc::from("orders"),
            partition: 2,
            offset: 41,
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms.unwrap_or(1_700_000_000_000),
            courier_id: "01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
            origin: "eu".into(),
        }
    }

    #[test]
    fn a_body_keyed_by_a_timestamp_is_refused_not_a_panic() {
        let mut inner = OrderedMap::new();
        inner.insert(
            Value::Timestamp(Timestamp::from_milliseconds(5)),
            Value::String("m-1".into()),
        );
        let body = Value::List(vec![Value::Map(inner)]);
        let refused = to_record(message(Body::Value(AmqpValue(body))), None);
        assert!(refused.is_err());
    }

    /// serde_amqp 0.18.0 writes an array of nulls with a byte too many (`e0 03 02 40 40`): such a
    /// body is refused, not stored to come back as something else. An array it carries faithfully
    /// is stored and comes back as sent.
    #[test]
    fn a_body_whose_array_does_not_survive_the_codec_is_refused() {
        let nulls = Value::Array(vec![Value::Null, Value::Null].into());
        let refused = to_record(message(Body::Value(AmqpValue(nulls))), None);
        assert!(refused.is_err());
        // Read back as something else (serde_amqp reads the values in an array's maps wrongly).
        let mut map = OrderedMap::new();
        map.insert(Value::String("k".into()), Value::Long(1));
        let maps = Value::Array(vec![Value::Map(map.clone()), Value::Map(map)].into());
        let refused = to_record(message(Body::Value(AmqpValue(maps))), None);
        assert!(refused.is_err());

        let longs = Value::List(vec![
            Value::Array(vec![Value::Long(1), Value::Long(2)].into()),
            Value::String("after".into()),
        ]);
        let record = to_record(message(Body::Value(AmqpValue(longs.clone()))), None)
            .expect("an array of longs round trips");
        assert_eq!(
            from_record(&stored(record), 0).body,
            Body::Value(AmqpValue(longs))
        );
    }

    /// Application properties are simple values (AMQP 1.0 section 3.2.5): a described list is
    /// refused.
    #[test]
    fn an_application_property_holding_a_compound_value_is_refused() {
        let mut with_list = message(Body::Value(AmqpValue(Value::Null)));
        if let Some(ApplicationProperties(properties)) = &mut with_list.application_properties {
            properties.insert(
                "tags".to_owned(),
                SimpleValue::Described(Box::new(serde_amqp::described::Described {
                    descriptor: serde_amqp::descriptor::Descriptor::Code(7),
                    value: Value::List(vec![Value::Long(1)]),
                })),
            );
        }
        assert!(to_record(with_list, None).is_err());
    }

    fn message(body: Body<Value>) -> AmqpMessage {
        let mut properties = OrderedMap::new();
        properties.insert("colour".to_owned(), SimpleValue::String("red".into()));
        properties.insert("count".to_owned(), SimpleValue::Long(7));
        properties.insert("flag".to_owned(), SimpleValue::Bool(true));
        properties.insert("kind".to_owned(), SimpleValue::Symbol(Symbol::from("k")));
        properties.insert(
            "raw".to_owned(),
            SimpleValue::Binary(Binary::from(vec![0, 255])),
        );
        Message {
            header: None,
            delivery_annotations: None,
            message_annotations: Some(
                MessageAnnotations::builder()
                    .insert(
                        Symbol::from(PARTITION_KEY),
                        Value::String("customer-9".into()),
                    )
                    .build(),
            ),
            properties: Some(Properties {
                subject: Some("created".into()),
                content_type: Some(Symbol::from("application/json")),
                correlation_id: Some(MessageId::String("req-1".into())),
                ..Properties::default()
            }),
            application_properties: Some(ApplicationProperties(properties)),
            body,
            footer: None,
        }
    }

    #[test]
    fn every_body_section_round_trips() {
        let bodies = vec![
            Body::Data(Batch::new(vec![Data(Binary::from(b"raw".to_vec()))])),
            Body::Data(Batch::new(vec![
                Data(Binary::from(b"a".to_vec())),
                Data(Binary::from(b"b".to_vec())),
            ])),
            Body::Value(AmqpValue(Value::String("hello".into()))),
            Body::Value(AmqpValue(Value::Binary(Binary::from(vec![1, 2, 3])))),
            Body::Value(AmqpValue(Value::Long(42))),
            Body::Value(AmqpValue(Value::List(vec![
                Value::Bool(true),
                Value::Uint(3),
            ]))),
            Body::Sequence(Batch::new(vec![AmqpSequence(vec![
                Value::String("x".into()),
                Value::Int(1),
            ])])),
            Body::Empty,
        ];
        for body in bodies {
            let record = to_record(message(body.clone()), None).unwrap();
            let back = from_record(&stored(record), 0);
            assert_eq!(format!("{:?}", back.body), format!("{body:?}"));
        }
    }

    #[test]
    fn text_and_bytes_are_stored_as_sent_for_native_consumers() {
        let record = to_record(
            message(Body::Value(AmqpValue(Value::String("hello".into())))),
            Some(1),
        )
        .unwrap();
        assert_eq!(record.value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(record.key.as_deref(), Some(&b"customer-9"[..]));
        assert_eq!(record.partition, Some(1));
        let colour = record.headers.iter().find(|h| h.key == "colour").unwrap();
        assert_eq!(&colour.value[..], b"red");
    }

    #[test]
    fn properties_keep_their_types_and_ids_come_from_the_log() {
        let record = to_record(message(Body::Empty), None).unwrap();
        let back = from_record(&stored(record), 2);
        let application = back.application_properties.unwrap().0;
        assert_eq!(
            application.get("colour"),
            Some(&SimpleValue::String("red".into()))
        );
        assert_eq!(application.get("count"), Some(&SimpleValue::Long(7)));
        assert_eq!(application.get("flag"), Some(&SimpleValue::Bool(true)));
        assert_eq!(
            application.get("kind"),
            Some(&SimpleValue::Symbol(Symbol::from("k")))
        );
        assert_eq!(
            application.get("raw"),
            Some(&SimpleValue::Binary(Binary::from(vec![0, 255])))
        );
        assert!(application.keys().all(|name| !name.starts_with("amqp-")));

        let properties = back.properties.unwrap();
        assert_eq!(
            properties.message_id,
            Some(MessageId::String("01JABCDEFGHJKMNPQRSTVWXYZ0".into()))
        );
        assert_eq!(properties.subject.as_deref(), Some("created"));
        assert_eq!(
            properties.correlation_id,
            Some(MessageId::String("req-1".into()))
        );
        assert_eq!(back.header.unwrap().delivery_count, 2);
        let annotations = back.message_annotations.unwrap().0;
        let annotation = |name: &str| {
            annotations
                .get(&OwnedKey::Symbol(Symbol::from(name)))
                .cloned()
        };
        assert_eq!(annotation("x-opt-offset"), Some(Value::Long(41)));
        assert_eq!(
            annotation(PARTITION_KEY),
            Some(Value::String("customer-9".into()))
        );
    }

    #[test]
    fn native_records_arrive_as_data_with_string_properties() {
        let record = stored(NewRecord {
            value: Some(Bytes::from_static(b"{\"n\":1}")),
            headers: vec![header("trace", "abc")],
            ..NewRecord::default()
        });
        let message = from_record(&record, 0);
        assert_eq!(
            format!("{:?}", message.body),
            format!(
                "{:?}",
                Body::<Value>::Data(Batch::new(vec![Data(Binary::from(b"{\"n\":1}".to_vec()))]))
            )
        );
        let application = message.application_properties.unwrap().0;
        assert_eq!(
            application.get("trace"),
            Some(&SimpleValue::String("abc".into()))
        );
    }

    #[test]
    fn reserved_property_names_and_bad_keys_are_refused() {
        for name in ["courier-id", "amqp-subject", dead_letter::TOPIC] {
            let mut bad = message(Body::Empty);
            if let Some(ApplicationProperties(properties)) = &mut bad.application_properties {
                properties.insert(name.into(), SimpleValue::String("x".into()));
            }
            assert!(to_record(bad, None).is_err(), "{name}");
        }

        let mut bad_key = message(Body::Empty);
        bad_key.message_annotations = Some(
            MessageAnnotations::builder()
                .insert(Symbol::from(PARTITION_KEY), Value::Double(1.5.into()))
                .build(),
        );
        let refusal = to_record(bad_key, None).unwrap_err();
        assert_eq!(refusal.condition_symbol(), "amqp:invalid-field");
    }

    #[test]
    fn dead_letters_say_where_and_why() {
        let record = stored(to_record(message(Body::Empty), None).unwrap());
        let reason = Refusal::invalid("bad order");
        let letter = dead_letter(&record, Some(&reason));
        let get = |name: &str| {
            letter
                .headers
                .iter()
                .find(|h| h.key == name)
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        };
        assert_eq!(get(dead_letter::TOPIC).as_deref(), Some("orders"));
        assert_eq!(get(dead_letter::OFFSET).as_deref(), Some("41"));
        assert_eq!(
            get(dead_letter::CONDITION).as_deref(),
            Some("amqp:invalid-field")
        );
        assert_eq!(get(dead_letter::DESCRIPTION).as_deref(), Some("bad order"));
        assert_eq!(letter.courier_id, record.courier_id);
    }
}
