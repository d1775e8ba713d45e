//! Translation between the Log's records and Kafka messages, and the few Kafka wire details the gateway
//! reads itself (member assignments in DescribeGroups answers, the client id that names a subscriber).

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    error::KafkaResult,
    message::{BorrowedMessage, Header as KafkaHeader, Headers, OwnedHeaders},
};

use crate::log::{Header, NewRecord, Record, TopicPartition};

/// Header holding a record's ULID, stable across retries: consumers can drop duplicates by it.
pub(super) const ID_HEADER: &str = "courier-id";
/// Header holding the region the record was first written in (region failover reads it).
pub(super) const ORIGIN_HEADER: &str = "courier-origin";

/// The headers of a produced record: the application's, then the gateway's two.
pub(super) fn headers_of(record: &NewRecord, origin: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 2);
    for header in &record.headers {
        headers = headers.insert(KafkaHeader {
            key: &header.key,
            value: Some(&header.value[..]),
        });
    }
    headers
        .insert(KafkaHeader {
            key: ID_HEADER,
            value: Some(record.courier_id.as_bytes()),
        })
        .insert(KafkaHeader {
            key: ORIGIN_HEADER,
            value: Some(origin.as_bytes()),
        })
}

/// A consumed message as a Log record. Records written by native Kafka clients have no courier
/// headers: their id and origin stay empty. A header with a null value reads as an empty one.
pub(super) fn record_of(topic: &Arc<str>, message: &BorrowedMessage<'_>) -> Record {
    let mut record = Record {
        topic: topic.clone(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(Bytes::copy_from_slice),
        value: message.payload().map(Bytes::copy_from_slice),
        headers: Vec::new(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
        courier_id: String::new(),
        origin: String::new(),
    };
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header.value.unwrap_or_default();
            match header.key {
                ID_HEADER => record.courier_id = String::from_utf8_lossy(value).into_owned(),
                ORIGIN_HEADER => record.origin = String::from_utf8_lossy(value).into_owned(),
                key => record.headers.push(Header {
                    key: key.to_owned(),
                    value: Bytes::copy_from_slice(value),
                }),
            }
        }
    }
    record
}

/// The partitions of a librdkafka list (offsets left out).
pub(super) fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|element| TopicPartition::new(element.topic(), element.partition()))
        .collect()
}

/// Offsets to commit, as librdkafka takes them.
pub(super) fn offset_list(offsets: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        list.add_partition_offset(
            &partition.topic,
            partition.partition,
            Offset::Offset(*offset),
        )?;
    }
    Ok(list)
}

/// The Kafka `client.id` of a subscriber: it carries the protocol and the peer, so describe-group
/// (served from the broker's view of the group, not from any gateway's memory) can show both, and a
/// unique suffix, so a gateway can tell its own subscribers apart.
pub(super) fn subscriber_client_id(protocol: &str, client: &str) -> String {
    format!("courier/{protocol}/{client}/{}", ulid::Ulid::new())
}

/// The protocol and peer of a group member, if it is a Courier subscriber.
pub(super) fn parse_subscriber_client_id(client_id: &str) -> Option<(&str, &str)> {
    let (protocol, rest) = client_id.strip_prefix("courier/")?.split_once('/')?;
    Some((protocol, rest.rsplit_once('/')?.0))
}

/// The client id of a group member as the broker describes it. Kafka fills the client id field; some
/// brokers (tansu 0.6.0) leave it empty, but every broker builds member ids as
/// `<client id>-<UUID>`, so the id is recovered from there.
pub(super) fn member_client_id<'a>(client_id: &'a str, member_id: &'a str) -> &'a str {
    const UUID_LEN: usize = 36;
    if !client_id.is_empty() {
        return client_id;
    }
    member_id
        .len()
        .checked_sub(UUID_LEN + 1)
        .filter(|&cut| member_id.is_char_boundary(cut) && member_id[cut..].starts_with('-'))
        .map_or(member_id, |cut| &member_id[..cut])
}

/// Decodes a consumer group member's assignment (Kafka's `ConsumerProtocolAssignment`: version,
/// then topics with their partitions, then user data, which is ignored). `None` if malformed.
pub(super) fn decode_assignment(mut bytes: &[u8]) -> Option<Vec<TopicPartition>> {
    fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = bytes.split_first_chunk::<N>()?;
        *bytes = rest;
        Some(*head)
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let _version = i16::from_be_bytes(take(&mut bytes)?);
    let topics = i32::from_be_bytes(take(&mut bytes)?);
    let mut assigned = Vec::new();
    for _ in 0..topics.max(0) {
        let length = usize::try_from(i16::from_be_bytes(take(&mut bytes)?)).ok()?;
        let (name, rest) = bytes.split_at_checked(length)?;
        bytes = rest;
        let topic: Arc<str> = std::str::from_utf8(name).ok()?.into();
        let partitions = i32::from_be_bytes(take(&mut bytes)?);
        for _ in 0..partitions.max(0) {
            let partition = i32::from_be_bytes(take(&mut bytes)?);
            assigned.push(TopicPartition {
                topic: topic.clone(),
                partition,
            });
        }
    }
    Some(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_decode() {
        // version 1; one topic "ab" with partitions 0 and 2; empty user data
        let bytes = [
            0, 1, 0, 0, 0, 1, 0, 2, b'a', b'b', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xff,
            0xff, 0xff,
        ];
        assert_eq!(
            decode_assignment(&bytes),
            Some(vec![
                TopicPartition::new("ab", 0),
                TopicPartition::new("ab", 2)
            ])
        );
        assert_eq!(decode_assignment(&bytes[..9]), None, "truncated");
        assert_eq!(decode_assignment(&[]), Some(Vec::new()));
    }

    #[test]
    fn client_ids_round_trip() {
        let id = subscriber_client_id("mqtt", "10.0.0.1:5000");
        assert_eq!(
            parse_subscriber_client_id(&id),
            Some(("mqtt", "10.0.0.1:5000"))
        );
        assert_eq!(parse_subscriber_client_id("rdkafka"), None);
        let member = format!("{id}-393a5ca6-074b-4666-bb9a-a9e7f4735e42");
        assert_eq!(member_client_id("", &member), id);
        assert_eq!(member_client_id("given", &member), "given");
        assert_eq!(member_client_id("", "short"), "short");
    }
}
