//! Checks every backend applies before anything is written, so a bad request fails the same way on the
//! embedded log and on Kafka, and before any partial write.

use ulid::Ulid;

use super::{NewRecord, SubscribeOptions, TopicSelector};
use crate::{Error, Result};

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Header names the gateway writes itself; clients may not set them.
pub const RESERVED_HEADER_PREFIX: &str = "courier-";

/// Checks a topic name against Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn topic_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > MAX_TOPIC_NAME_LEN {
        Some("the name is longer than 249 characters")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not allowed")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidTopicName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a batch of records for one topic and gives each one without a `courier_id` a new ULID.
pub fn stamp_records(
    topic: &str,
    records: &mut [NewRecord],
    max_record_bytes: usize,
) -> Result<()> {
    if records.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "a produce request for topic {topic:?} has no records"
        )));
    }
    for (index, record) in records.iter_mut().enumerate() {
        let size = record.size();
        if size > max_record_bytes {
            return Err(Error::RecordTooLarge {
                topic: topic.to_owned(),
                index,
                size,
                limit: max_record_bytes,
            });
        }
        if let Some(header) = record
            .headers
            .iter()
            .find(|h| h.key.starts_with(RESERVED_HEADER_PREFIX))
        {
            return Err(Error::InvalidRequest(format!(
                "record {index}: header {:?} is reserved (names starting with {RESERVED_HEADER_PREFIX:?} are written by the gateway)",
                header.key
            )));
        }
        if record.courier_id.is_empty() {
            record.courier_id = Ulid::new().to_string();
        } else if Ulid::from_string(&record.courier_id).is_err() {
            return Err(Error::InvalidRequest(format!(
                "record {index}: courier_id {:?} is not a ULID (26 Crockford base32 characters); leave it empty to get one",
                record.courier_id
            )));
        }
    }
    Ok(())
}

/// Most records a subscriber may hold unacknowledged.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// Checks what a subscriber asks for: a window of 1 to [`MAX_IN_FLIGHT`], at least one topic, and a
/// group name Kafka accepts.
pub fn subscription(options: &SubscribeOptions) -> Result<()> {
    if options.max_in_flight == 0 || options.max_in_flight > MAX_IN_FLIGHT {
        return Err(Error::InvalidRequest(format!(
            "max_in_flight must be 1 to {MAX_IN_FLIGHT}, not {}",
            options.max_in_flight
        )));
    }
    if let TopicSelector::Names(names) = &options.topics {
        if names.is_empty() {
            return Err(Error::InvalidRequest(
                "name at least one topic, or a topic pattern".into(),
            ));
        }
        for name in names {
            topic_name(name)?;
        }
    }
    match &options.group {
        Some(name) if name.is_empty() || name.len() > 255 || name.contains('\0') => {
            Err(Error::InvalidRequest(format!(
                "invalid group name {name:?}: 1 to 255 characters, no NUL"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks an explicit partition number against the topic's partition count.
pub fn partition(topic: &str, partition: i32, partitions: u32) -> Result<usize> {
    usize::try_from(partition)
        .ok()
        .filter(|&p| p < partitions as usize)
        .ok_or_else(|| Error::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["orders", "a.b_c-d", "X", &"a".repeat(249)] {
            assert!(topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/",
            "ümlaut",
            &"a".repeat(250),
        ] {
            assert!(
                matches!(topic_name(bad), Err(Error::InvalidTopicName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_get_ids_and_limits() {
        let mut records = vec![NewRecord::with_value("x")];
        stamp_records("t", &mut records, 10).expect("small record passes");
        assert!(Ulid::from_string(&records[0].courier_id).is_ok());

        let mut big = vec![NewRecord::with_value(vec![0u8; 11])];
        assert!(matches!(
            stamp_records("t", &mut big, 10),
            Err(Error::RecordTooLarge { size: 11, .. })
        ));

        let mut bad_id = vec![NewRecord {
            courier_id: "nope".into(),
            ..NewRecord::with_value("x")
        }];
        assert!(matches!(
            stamp_records("t", &mut bad_id, 10),
            Err(Error::InvalidRequest(_))
        ));

        assert!(matches!(
            stamp_records("t", &mut [], 10),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn partitions_are_bounded() {
        assert_eq!(partition("t", 2, 3).ok(), Some(2));
        assert!(partition("t", 3, 3).is_err());
        assert!(partition("t", -1, 3).is_err());
    }
}
