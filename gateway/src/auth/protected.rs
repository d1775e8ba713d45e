//! The gateway's own state, which clients reach only through the protocol that owns it (or as an
//! admin): the MQTT tables (`mqtt.sessions`, `mqtt.retained`, `mqtt.qos2`) and their mirrored
//! copies, the region canary, MirrorMaker 2's and Kafka's internal topics, the MQTT session and
//! share groups, and the header prefixes each protocol writes for itself.
//!
//! Without this, a gRPC or AMQP client could write a session record under a device's client id
//! (and so disconnect it), read every session, skip an offline device's queue by committing its
//! session group, or forge `mqtt-*` headers that an MQTT subscriber would take as the publisher's.

use regex::Regex;

/// Topics a deployment may have that clients must not reach: Kafka's internal topics and those of
/// the tools beside it (names starting with `_`: `__consumer_offsets`, `__transaction_state`,
/// Schema Registry's `_schemas`; Kafka Connect's `connect-configs`, `-offsets`, `-status`, which can
/// hold credentials), and MirrorMaker 2's by its naming (`mm2-offset-syncs.b.internal`,
/// `a.checkpoints.internal`, `heartbeats` and its mirrored copies).
const INTERNAL_TOPICS: &str = r"^(_.*|connect-(configs|offsets|status)|mm2-(offset-syncs|configs|status|offsets)\..*|.*\.checkpoints\.internal|(.*\.)?heartbeats)$";

/// Groups that belong to one protocol, by prefix.
const OWNED_GROUPS: [(&str, &str); 2] = [("mqtt.session.", "mqtt"), ("mqtt.share.", "mqtt")];

/// Header prefixes that belong to one protocol: it writes them, and only its front end may.
/// (`courier-` is the gateway's, refused for every client by validation.)
const OWNED_HEADERS: [(&str, &str); 3] = [("mqtt-", "mqtt"), ("amqp-", "amqp"), ("dlq-", "amqp")];

/// What is protected.
#[derive(Debug, Clone)]
pub struct Protected {
    /// The gateway's own topics, by configured name; a name preceded by `<region>.` (MirrorMaker
    /// 2's copy) is protected as well.
    topics: Vec<String>,
    internal: Regex,
}

impl Protected {
    /// Protects `topics` (the MQTT tables, the canary) beside Kafka's and MM2's internal topics.
    pub fn new(topics: impl IntoIterator<Item = String>) -> Self {
        Self {
            topics: topics.into_iter().collect(),
            // A constant pattern, checked by the tests below.
            internal: Regex::new(INTERNAL_TOPICS).unwrap_or_else(|_| unreachable_pattern()),
        }
    }

    /// Whether clients may not read or write `topic` (its owner writes it through the unwrapped
    /// log, never through a client's).
    pub fn topic(&self, topic: &str) -> bool {
        // Kafka's and its tools' internal topics, and MirrorMaker 2's copies of them
        // (`a._schemas`, `a.connect-configs`: its default exclusions leave these in).
        let copies = topic.match_indices('.').map(|(at, _)| &topic[at + 1..]);
        std::iter::once(topic)
            .chain(copies)
            .any(|name| self.internal.is_match(name))
            || self.topics.iter().any(|own| {
                topic == own
                    || topic
                        .strip_suffix(own.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            })
    }

    /// The protocol that owns `group`, if one does.
    pub fn group_owner(group: &str) -> Option<&'static str> {
        OWNED_GROUPS
            .iter()
            .find(|(prefix, _)| group.starts_with(prefix))
            .map(|&(_, owner)| owner)
    }

    /// The protocol that owns a header named `key`, if one does.
    pub fn header_owner(key: &str) -> Option<&'static str> {
        OWNED_HEADERS
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map(|&(_, owner)| owner)
    }
}

fn unreachable_pattern() -> Regex {
    // Only reached if the constant above stopped compiling, which the tests catch; matching
    // everything keeps that failure safe (everything protected) rather than open.
    Regex::new(".*").unwrap_or_else(|_| unreachable!("`.*` compiles"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_and_own_topics_and_their_copies_are_protected() {
        assert!(Regex::new(INTERNAL_TOPICS).is_ok());
        let protected = Protected::new(["mqtt.sessions".to_owned(), "courier.canary".to_owned()]);
        for topic in [
            "mqtt.sessions",
            "a.mqtt.sessions",
            "courier.canary",
            "b.courier.canary",
            "__consumer_offsets",
            "_schemas",
            "connect-offsets",
            "mm2-offset-syncs.b.internal",
            "a.checkpoints.internal",
            "heartbeats",
            "b.heartbeats",
            "a._schemas",
            "a.connect-configs",
            "b.a.__consumer_offsets",
        ] {
            assert!(protected.topic(topic), "{topic}");
        }
        for topic in [
            "orders",
            "xmqtt.sessions",
            "mqtt.sessions.backup",
            "heartbeat",
        ] {
            assert!(!protected.topic(topic), "{topic}");
        }
    }

    #[test]
    fn groups_and_headers_have_owners() {
        assert_eq!(Protected::group_owner("mqtt.session.c1.t"), Some("mqtt"));
        assert_eq!(Protected::group_owner("mqtt.share.g.f"), Some("mqtt"));
        assert_eq!(Protected::group_owner("orders"), None);
        assert_eq!(Protected::header_owner("mqtt-topic"), Some("mqtt"));
        assert_eq!(Protected::header_owner("dlq-topic"), Some("amqp"));
        assert_eq!(Protected::header_owner("trace"), None);
    }
}
