//! How MQTT meets Kafka: the one place to read to learn the mapping.
//!
//! - **Topics.** An MQTT message goes to the Kafka topic of the first route whose filter matches its MQTT
//!   topic (`[[mqtt.routes]]`), else to `mqtt.messages`. The Kafka key is the MQTT topic, so one MQTT
//!   topic keeps its order in one partition.
//! - **Headers.** The MQTT topic, QoS, retain flag and publishing client travel as `mqtt-*` headers;
//!   MQTT 5 properties too (content type, response topic, correlation data, payload format, and message
//!   expiry as an absolute time so it keeps counting down while the record waits in Kafka). User
//!   properties become plain headers, and every header that is not `mqtt-*` comes back out as a user
//!   property, in order, unaltered [MQTT-3.3.2-17, 3.3.2-18]. A `courier-id` user property from the
//!   publisher is the record's id (a ULID: the same id across the publisher's retries lets readers
//!   deduplicate) and goes back out where it was among the others; the gateway adds `courier-id` to
//!   messages that do not carry it only when `mqtt.courier_id_property` is on.
//! - **Records from native Kafka clients.** Their MQTT topic is the `mqtt-topic` header, else the key
//!   when it is a valid topic name, else the Kafka topic's name; they count as QoS 1 (Kafka's own
//!   at-least-once).
//! - **Subscriptions.** A filter reads every Kafka topic a matching message could be in (the routes
//!   whose filters overlap it, and `mqtt.messages`), and the gateway filters by MQTT topic. A
//!   persistent session reads through consumer groups of its own (`mqtt.session.<session>.<topic>`);
//!   `$share/<g>/<filter>` is the group `mqtt.share.<g>.<filter>` (`.` and `%` in `<g>` written
//!   `%2E` and `%25`), shared with every replica.
//! - **Retained messages and sessions** live in compacted topics keyed by MQTT topic and client id.

use bytes::Bytes;
use courier_gateway::log::{Header, NewRecord, Record};
use rumqttd::protocol::{PublishProperties, QoS};

use crate::{
    config::Route,
    error::{Refusal, RefusalCode},
};

/// Header: the MQTT topic.
pub const HEADER_TOPIC: &str = "mqtt-topic";
/// Header: the QoS it was published with (`0`, `1`, `2`).
pub const HEADER_QOS: &str = "mqtt-qos";
/// Header: `1` when it was published with the retain flag.
pub const HEADER_RETAIN: &str = "mqtt-retain";
/// Header: the client id of the publisher (for MQTT 5 no-local).
pub const HEADER_CLIENT: &str = "mqtt-client";
/// Header: MQTT 5 payload format indicator.
pub const HEADER_PAYLOAD_FORMAT: &str = "mqtt-payload-format";
/// Header: MQTT 5 content type.
pub const HEADER_CONTENT_TYPE: &str = "mqtt-content-type";
/// Header: MQTT 5 response topic.
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt-response-topic";
/// Header: MQTT 5 correlation data.
pub const HEADER_CORRELATION_DATA: &str = "mqtt-correlation-data";
/// Header: when the message expires, in ms since the epoch (from MQTT 5 message expiry interval).
pub const HEADER_EXPIRES_AT: &str = "mqtt-expires-at";
/// Header: where the publisher's own `courier-id` user property stood among its user properties.
pub const HEADER_COURIER_ID_AT: &str = "mqtt-courier-id-at";
/// Header, on retained messages only: the account that retained it (its principal, or an
/// anonymous client's id), which the per-principal caps count.
pub const HEADER_OWNER: &str = "mqtt-owner";
/// User properties may not use this prefix: it is the bridge's own.
pub const RESERVED_PREFIX: &str = "mqtt-";
/// The user property that carries a record's `courier-id` to MQTT 5 subscribers.
pub const COURIER_ID_PROPERTY: &str = "courier-id";

/// An application message as MQTT sees it, whichever way it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// MQTT topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties (user properties, content type...), minus topic alias and subscription ids.
    pub properties: PublishProperties,
}

/// A message read from the log, with what delivery decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message.
    pub message: Message,
    /// Client id of the publisher, when it came through MQTT.
    pub publisher: Option<String>,
}

/// Where MQTT topics are stored: the routes and the default topic.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
    default_topic: String,
}

impl Routes {
    /// Routes in order, then the default topic.
    pub fn new(routes: Vec<Route>, default_topic: String) -> Result<Self, String> {
        for route in &routes {
            if !valid_filter(&route.filter) {
                return Err(format!(
                    "mqtt.routes: {:?} is not a valid MQTT topic filter",
                    route.filter
                ));
            }
            courier_gateway::log::validate::topic_name(&route.topic)
                .map_err(|error| format!("mqtt.routes: {error}"))?;
        }
        courier_gateway::log::validate::topic_name(&default_topic)
            .map_err(|error| format!("mqtt.messages_topic: {error}"))?;
        Ok(Self {
            routes,
            default_topic,
        })
    }

    /// The Kafka topic a message on this MQTT topic is written to.
    pub fn topic_for(&self, mqtt_topic: &str) -> &str {
        self.routes
            .iter()
            .find(|route| matches(&route.filter, mqtt_topic))
            .map_or(&self.default_topic, |route| &route.topic)
    }

    /// Every Kafka topic a message matching `filter` may be in.
    pub fn topics_for_filter(&self, filter: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .routes
            .iter()
            .filter(|route| filters_overlap(&route.filter, filter))
            .map(|route| route.topic.clone())
            .collect();
        topics.push(self.default_topic.clone());
        topics.sort();
        topics.dedup();
        topics
    }
}

/// Turns an MQTT message into the record written for it.
pub fn to_record(message: &Message, client_id: &str, now_ms: i64) -> Result<NewRecord, Refusal> {
    let mut headers = vec![
        header(HEADER_TOPIC, message.topic.as_bytes()),
        header(HEADER_QOS, qos_text(message.qos).as_bytes()),
        header(HEADER_CLIENT, client_id.as_bytes()),
    ];
    if message.retain {
        headers.push(header(HEADER_RETAIN, b"1"));
    }
    let properties = &message.properties;
    if let Some(format) = properties.payload_format_indicator {
        headers.push(header(HEADER_PAYLOAD_FORMAT, format.to_string().as_bytes()));
    }
    if let Some(content_type) = &properties.content_type {
        headers.push(header(HEADER_CONTENT_TYPE, content_type.as_bytes()));
    }
    if let Some(response_topic) = &properties.response_topic {
        headers.push(header(HEADER_RESPONSE_TOPIC, response_topic.as_bytes()));
    }
    if let Some(correlation) = &properties.correlation_data {
        headers.push(Header {
            key: HEADER_CORRELATION_DATA.into(),
            value: correlation.clone(),
        });
    }
    if let Some(seconds) = properties.message_expiry_interval {
        let expires_at = now_ms + i64::from(seconds) * 1000;
        headers.push(header(HEADER_EXPIRES_AT, expires_at.to_string().as_bytes()));
    }
    let mut courier_id = String::new();
    for (index, (key, value)) in properties.user_properties.iter().enumerate() {
        if key == COURIER_ID_PROPERTY && courier_id.is_empty() {
            if ulid::Ulid::from_string(value).is_err() {
                return Err(Refusal::new(
                    RefusalCode::ImplementationSpecific,
                    format!(
                        "user property courier-id {value:?} is not a ULID (26 Crockford base32 characters)"
                    ),
                ));
            }
            courier_id.clone_from(value);
            headers.push(header(HEADER_COURIER_ID_AT, index.to_string().as_bytes()));
            continue;
        }
        if key.starts_with(RESERVED_PREFIX) || key.starts_with("courier-") {
            return Err(Refusal::new(
                RefusalCode::ImplementationSpecific,
                format!(
                    "user property {key:?} uses a prefix reserved by the gateway (mqtt-, courier-)"
                ),
            ));
        }
        headers.push(header(key, value.as_bytes()));
    }
    Ok(NewRecord {
        key: Some(Bytes::copy_from_slice(message.topic.as_bytes())),
        value: Some(message.payload.clone()),
        headers,
        courier_id,
        ..NewRecord::default()
    })
}

/// Adds the record's id as the `courier-id` user property, last, unless the message carries one
/// (`mqtt.courier_id_property`).
pub fn add_courier_id(message: &mut Message, courier_id: &str) {
    let user = &mut message.properties.user_properties;
    if !user.iter().any(|(key, _)| key == COURIER_ID_PROPERTY) {
        user.push((COURIER_ID_PROPERTY.into(), courier_id.to_owned()));
    }
}

/// Is this a topic clients may not publish to? `$SYS/...` is the server's own and `$share/...` names
/// shared subscriptions; other `$` topics are accepted, as Mosquitto does (wildcards at the first
/// level never match them [MQTT-4.7.2-1]).
pub fn reserved_topic(topic: &str) -> bool {
    topic == "$SYS"
        || topic.starts_with("$SYS/")
        || topic == "$share"
        || topic.starts_with("$share/")
}

/// A message's record as its topic's retained message (same key and headers): an empty payload
/// becomes a tombstone, which deletes the retained message.
pub fn as_retained(mut record: NewRecord) -> NewRecord {
    if record.value.as_ref().is_some_and(Bytes::is_empty) {
        record.value = None;
    }
    record
}

/// The MQTT topic a stored record is delivered on: its `mqtt-topic` header, else its key when that is
/// a topic name, else its Kafka topic's name. `None` when that is not a valid topic name.
pub fn record_topic(record: &Record) -> Option<String> {
    let topic = record
        .headers
        .iter()
        .find(|header| header.key == HEADER_TOPIC)
        .map_or_else(
            || topic_without_header(record),
            |header| String::from_utf8_lossy(&header.value).into_owned(),
        );
    valid_topic_name(&topic).then_some(topic)
}

/// The topic of a record without `mqtt-topic` (written by a native Kafka client).
fn topic_without_header(record: &Record) -> String {
    record
        .key
        .as_deref()
        .and_then(|key| std::str::from_utf8(key).ok())
        .filter(|key| valid_topic_name(key))
        .map_or_else(|| record.topic.to_string(), str::to_owned)
}

/// Reads a stored record back as an MQTT message; `None` when it has expired or names no usable topic.
pub fn from_record(record: &Record, now_ms: i64) -> Option<Stored> {
    let mut topic = None;
    let mut qos = QoS::AtLeastOnce;
    let mut retain = false;
    let mut publisher = None;
    let mut properties = PublishProperties::default();
    let mut courier_id_at = None;
    for Header { key, value } in &record.headers {
        let text = || String::from_utf8_lossy(value).into_owned();
        match key.as_str() {
            HEADER_TOPIC => topic = Some(text()),
            HEADER_QOS => qos = parse_qos(value).unwrap_or(QoS::AtLeastOnce),
            HEADER_RETAIN => retain = value.as_ref() == b"1",
            HEADER_CLIENT => publisher = Some(text()),
            HEADER_PAYLOAD_FORMAT => properties.payload_format_indicator = text().parse().ok(),
            HEADER_CONTENT_TYPE => properties.content_type = Some(text()),
            HEADER_RESPONSE_TOPIC => properties.response_topic = Some(text()),
            HEADER_CORRELATION_DATA => properties.correlation_data = Some(value.clone()),
            HEADER_EXPIRES_AT => {
                let expires_at: i64 = text().parse().ok()?;
                let left_ms = expires_at - now_ms;
                if left_ms <= 0 {
                    return None;
                }
                properties.message_expiry_interval =
                    Some(u32::try_from((left_ms + 999) / 1000).unwrap_or(u32::MAX));
            }
            HEADER_COURIER_ID_AT => courier_id_at = text().parse::<usize>().ok(),
            other if other.starts_with(RESERVED_PREFIX) => {}
            other => properties.user_properties.push((other.to_owned(), text())),
        }
    }
    if let Some(index) = courier_id_at.filter(|_| !record.courier_id.is_empty()) {
        let index = index.min(properties.user_properties.len());
        properties.user_properties.insert(
            index,
            (COURIER_ID_PROPERTY.into(), record.courier_id.clone()),
        );
    }
    let topic = topic.unwrap_or_else(|| topic_without_header(record));
    if !valid_topic_name(&topic) {
        return None;
    }
    Some(Stored {
        message: Message {
            topic,
            payload: record.value.clone().unwrap_or_default(),
            qos,
            retain,
            properties,
        },
        publisher,
    })
}

/// The consumer group through which a persistent session reads one Kafka topic.
pub fn session_group(session_id: &str, kafka_topic: &str) -> String {
    format!("mqtt.session.{session_id}.{kafka_topic}")
}

/// The consumer group of a shared subscription (`$share/<group>/<filter>`). A `.` or `%` in the
/// share name is written `%2E` or `%25`, so the first `.` after the prefix ends the name: else
/// `$share/a/b.c` and `$share/a.b/c` would be one group, and a client allowed share `a` would take
/// share `a.b`'s messages (and acknowledge those its filter does not match).
pub fn share_group(group: &str, filter: &str) -> String {
    let name = group.replace('%', "%25").replace('.', "%2E");
    format!("mqtt.share.{name}.{filter}")
}

/// Splits `$share/<group>/<filter>` into its group and filter.
pub fn parse_share(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, filter) = rest.split_once('/')?;
    Some((group, filter))
}

/// Is this a valid MQTT topic name (for PUBLISH): not empty, no wildcards, no NUL, fits 64 KiB.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= usize::from(u16::MAX) && !topic.contains(['+', '#', '\0'])
}

/// Does a string property of a PUBLISH hold U+0000, which makes the packet malformed
/// [MQTT-1.5.4-2]? (Topic names are checked by [`valid_topic_name`].)
pub fn holds_nul(properties: &PublishProperties) -> bool {
    let nul = |text: &str| text.contains('\0');
    properties.content_type.as_deref().is_some_and(nul)
        || properties.response_topic.as_deref().is_some_and(nul)
        || properties
            .user_properties
            .iter()
            .any(|(key, value)| nul(key) || nul(value))
}

/// Is this a valid MQTT topic filter (wildcards whole levels, `#` last only).
pub fn valid_filter(filter: &str) -> bool {
    !filter.contains('\0')
        && filter.len() <= usize::from(u16::MAX)
        && rumqttd::protocol::valid_filter(filter)
}

/// Does `topic` match `filter`? Wildcards at the first level do not match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(_) if level == "+" => {}
            Some(topic_level) if topic_level == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Could one topic match both filters?
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut a_levels, mut b_levels) = (a.split('/'), b.split('/'));
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// The lower of two QoS levels.
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

fn qos_text(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

fn parse_qos(value: &[u8]) -> Option<QoS> {
    match value {
        b"0" => Some(QoS::AtMostOnce),
        b"1" => Some(QoS::AtLeastOnce),
        b"2" => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

fn header(key: &str, value: &[u8]) -> Header {
    Header {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn share_groups_of_different_shares_never_meet() {
        assert_eq!(
            share_group("fleet", "devices/#"),
            "mqtt.share.fleet.devices/#"
        );
        assert_ne!(share_group("a", "b.c"), share_group("a.b", "c"));
        assert_ne!(share_group("a%2Eb", "c"), share_group("a.b", "c"));
        assert_eq!(share_group("a.b", "c"), "mqtt.share.a%2Eb.c");
    }

    #[test]
    fn filters_match_like_the_spec() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a+"));
        assert!(!valid_topic_name("a/+"));
    }

    #[test]
    fn routes_pick_the_first_match_and_subscriptions_read_every_overlap() {
        let routes = Routes::new(
            vec![
                Route {
                    filter: "sensors/+/temp".into(),
                    topic: "temps".into(),
                },
                Route {
                    filter: "sensors/#".into(),
                    topic: "sensors".into(),
                },
            ],
            "mqtt.messages".into(),
        )
        .unwrap();
        assert_eq!(routes.topic_for("sensors/1/temp"), "temps");
        assert_eq!(routes.topic_for("sensors/1/hum"), "sensors");
        assert_eq!(routes.topic_for("other"), "mqtt.messages");
        assert_eq!(
            routes.topics_for_filter("sensors/1/+"),
            ["mqtt.messages", "sensors", "temps"]
        );
        assert_eq!(routes.topics_for_filter("home/#"), ["mqtt.messages"]);
        assert!(Routes::new(vec![], "bad name!".into()).is_err());
    }

    /// A new record as the log hands it back, at offset 0 of `mqtt.messages`.
    fn as_stored(record: &NewRecord, timestamp_ms: i64, courier_id: &str) -> Record {
        Record {
            topic: Arc::from("mqtt.messages"),
            partition: 0,
            offset: 0,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record.headers.clone(),
            timestamp_ms,
            courier_id: courier_id.into(),
            origin: String::new(),
        }
    }

    #[test]
    fn a_message_round_trips_through_a_record() {
        let message = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\xffdata"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(0),
                content_type: Some("application/octet-stream".into()),
                response_topic: Some("replies/1".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                message_expiry_interval: Some(60),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                ..PublishProperties::default()
            },
        };
        let record = to_record(&message, "client-1", 1_000).unwrap();
        assert_eq!(record.key.as_deref(), Some(&b"a/b"[..]));
        let stored = as_stored(&record, 1_000, "01J");
        let back = from_record(&stored, 31_000).unwrap();
        assert_eq!(back.publisher.as_deref(), Some("client-1"));
        let mut expected = message.clone();
        expected.properties.message_expiry_interval = Some(30);
        // Unaltered: the gateway's own id is not added (`mqtt.courier_id_property` does, in outbound).
        assert_eq!(back.message, expected);
        assert!(from_record(&stored, 61_000).is_none(), "expired");
    }

    #[test]
    fn a_publishers_courier_id_is_the_records_id_and_goes_back_where_it_was() {
        let id = "01JQ2Z3B4C5D6E7F8G9H0JKMNP";
        let user_properties: Vec<(String, String)> = vec![
            ("a".into(), "1".into()),
            ("courier-id".into(), id.into()),
            ("a".into(), "2".into()),
        ];
        let message = Message {
            topic: "req/1".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties {
                user_properties: user_properties.clone(),
                ..PublishProperties::default()
            },
        };
        let record = to_record(&message, "responder", 0).unwrap();
        assert_eq!(record.courier_id, id);
        let stored = as_stored(&record, 0, &record.courier_id);
        let back = from_record(&stored, 0).unwrap();
        assert_eq!(back.message.properties.user_properties, user_properties);

        let mut not_a_ulid = message;
        not_a_ulid.properties.user_properties = vec![("courier-id".into(), "nope".into())];
        let refusal = to_record(&not_a_ulid, "c", 0).unwrap_err();
        assert!(refusal.text.contains("not a ULID"), "{}", refusal.text);
    }

    #[test]
    fn native_records_use_key_or_topic_and_count_as_qos_1() {
        let record = Record {
            topic: Arc::from("orders"),
            partition: 0,
            offset: 3,
            key: Some(Bytes::from_static(b"shop/1")),
            value: Some(Bytes::from_static(b"x")),
            headers: vec![Header {
                key: "trace".into(),
                value: Bytes::from_static(b"t1"),
            }],
            timestamp_ms: 0,
            courier_id: String::new(),
            origin: String::new(),
        };
        let stored = from_record(&record, 0).unwrap();
        assert_eq!(stored.message.topic, "shop/1");
        assert_eq!(stored.message.qos, QoS::AtLeastOnce);
        assert_eq!(
            stored.message.properties.user_properties,
            [("trace".to_string(), "t1".to_string())]
        );
        let keyless = Record {
            key: None,
            ..record
        };
        assert_eq!(from_record(&keyless, 0).unwrap().message.topic, "orders");
    }

    #[test]
    fn reserved_user_properties_are_refused() {
        let message = Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties {
                user_properties: vec![("mqtt-topic".into(), "x".into())],
                ..PublishProperties::default()
            },
        };
        assert!(to_record(&message, "c", 0).is_err());
    }
}
