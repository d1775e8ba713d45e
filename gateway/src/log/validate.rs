//! Checks every backend applies before anything is written, so a bad request fails the same way on the
//! embedded log and on Kafka, and before any partial write.

use ulid::Ulid;

use super::{NewRecord, SubscribeOptions, TopicSelector, TopicSpec};
use crate::{Error, Result, config::TopicsConfig};

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

/// Checks a batch of records for one topic (the topic's name first) and gives each one without a
/// `courier_id` a new ULID.
pub fn stamp_records(
    topic: &str,
    records: &mut [NewRecord],
    max_record_bytes: usize,
) -> Result<()> {
    topic_name(topic)?;
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

pub use crate::config::MAX_IN_FLIGHT;

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

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// What a topic is created with, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    /// 1 to [`MAX_PARTITIONS`].
    pub partitions: u32,
    /// Retention by age in ms; 0 keeps forever.
    pub retention_ms: i64,
    /// Retention by bytes per partition; 0 is unlimited.
    pub retention_bytes: i64,
}

/// Checks a topic to create (name, partition count, retention) and fills in the defaults.
pub fn topic_spec(spec: &TopicSpec, defaults: &TopicsConfig) -> Result<TopicSettings> {
    topic_name(&spec.name)?;
    let partitions = spec.partitions.unwrap_or(defaults.default_partitions);
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::InvalidRequest(format!(
            "a topic has 1 to {MAX_PARTITIONS} partitions, not {partitions}"
        )));
    }
    // A compacted topic keeps the latest record of every key: deleting by age or size by default would
    // drop keys that were simply not rewritten lately (a retained message, a session).
    let (default_ms, default_bytes) = if spec.compacted {
        (0, 0)
    } else {
        (
            defaults.default_retention.as_millis() as i64,
            defaults.default_retention_bytes as i64,
        )
    };
    let retention_ms = spec.retention_ms.unwrap_or(default_ms);
    let retention_bytes = spec.retention_bytes.unwrap_or(default_bytes);
    if retention_ms < 0 || retention_bytes < 0 {
        return Err(Error::InvalidRequest(
            "retention may not be negative (0 keeps records forever)".into(),
        ));
    }
    Ok(TopicSettings {
        partitions,
        retention_ms,
        retention_bytes,
    })
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
    fn topic_specs_get_defaults_and_bounds() {
        let defaults = TopicsConfig::default();
        let settings = topic_spec(&TopicSpec::named("t"), &defaults).expect("defaults are valid");
        assert_eq!(settings.partitions, defaults.default_partitions);
        for bad in [
            TopicSpec::named("t").partitions(0),
            TopicSpec::named("t").partitions(MAX_PARTITIONS + 1),
            TopicSpec {
                retention_ms: Some(-1),
                ..TopicSpec::named("t")
            },
            TopicSpec::named("bad name"),
        ] {
            assert!(topic_spec(&bad, &defaults).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partitions_are_bounded() {
        assert_eq!(partition("t", 2, 3).ok(), Some(2));
        assert!(partition("t", 3, 3).is_err());
        assert!(partition("t", -1, 3).is_err());
    }
}
