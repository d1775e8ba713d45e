//! Link addresses and source filters: which topic, partition, group and start position a link names.
//!
//! | link (client's role) | address              | meaning                                             |
//! |----------------------|----------------------|-----------------------------------------------------|
//! | sender (target)      | `T`                  | produce to topic `T`, partition by key              |
//! | sender (target)      | `T/partitions/N`     | produce to partition `N` of `T`                     |
//! | receiver (source)    | `T/groups/G`         | read `T` as a member of consumer group `G`          |
//! | receiver (source)    | `T` + filter `courier:group` = `G` | the same                              |
//! | receiver (source)    | `T`                  | a plain reader of every partition, joining no group |
//!
//! Source filter `courier:start` sets where reading starts: `earliest`, `latest`, `offset:N` or
//! `timestamp:MS` (ms since the epoch). For a group it applies to partitions the group has no committed
//! offset for (default `earliest`: a new group reads the topic like a queue); a plain reader starts every
//! partition there (default `latest`). Kafka topic names cannot hold `/`, so the forms never collide.

use courier_gateway::log::Position;
use fe2o3_amqp::types::{messaging::FilterSet, primitives::Value};

use crate::error::Refusal;

/// Source filter naming the consumer group.
pub const GROUP_FILTER: &str = "courier:group";
/// Source filter naming the start position.
pub const START_FILTER: &str = "courier:start";

/// Where a client's sender link writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Kafka topic.
    pub topic: String,
    /// Fixed partition, from `T/partitions/N`.
    pub partition: Option<i32>,
}

/// What a client's receiver link reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Kafka topic.
    pub topic: String,
    /// Consumer group; `None` for a plain reader.
    pub group: Option<String>,
    /// Start of partitions without a committed offset (all partitions for a plain reader).
    pub start: Position,
}

/// Parses a sender link's target address.
pub fn destination(address: Option<&str>) -> Result<Destination, Refusal> {
    let address = required(address, "target")?;
    match address.split('/').collect::<Vec<_>>()[..] {
        [topic] => Ok(Destination {
            topic: topic.to_owned(),
            partition: None,
        }),
        [topic, "partitions", partition] => {
            let partition = partition
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    Refusal::invalid(format!(
                        "target {address:?}: partition {partition:?} is not a partition number"
                    ))
                })?;
            Ok(Destination {
                topic: topic.to_owned(),
                partition: Some(partition),
            })
        }
        _ => Err(Refusal::invalid(format!(
            "target {address:?} is not `TOPIC` or `TOPIC/partitions/N`"
        ))),
    }
}

/// Parses a receiver link's source address and filters.
pub fn origin(address: Option<&str>, filters: Option<&FilterSet>) -> Result<Origin, Refusal> {
    let address = required(address, "source")?;
    let (topic, address_group) = match address.split('/').collect::<Vec<_>>()[..] {
        [topic] => (topic, None),
        [topic, "groups", group] if !group.is_empty() => (topic, Some(group.to_owned())),
        _ => {
            return Err(Refusal::invalid(format!(
                "source {address:?} is not `TOPIC` or `TOPIC/groups/GROUP`"
            )));
        }
    };
    let filter_group = filter_text(filters, GROUP_FILTER)?;
    let group = match (address_group, filter_group) {
        (Some(a), Some(f)) if a != f => {
            return Err(Refusal::invalid(format!(
                "source {address:?} names group {a:?} but filter {GROUP_FILTER} names {f:?}"
            )));
        }
        (a, f) => a.or(f),
    };
    let start = match filter_text(filters, START_FILTER)? {
        Some(text) => start_position(&text)?,
        None if group.is_some() => Position::Earliest,
        None => Position::Latest,
    };
    Ok(Origin {
        topic: topic.to_owned(),
        group,
        start,
    })
}

fn required<'a>(address: Option<&'a str>, what: &str) -> Result<&'a str, Refusal> {
    match address {
        Some(address) if !address.is_empty() => Ok(address),
        _ => Err(Refusal::invalid(format!(
            "the link's {what} has no address; name a Kafka topic"
        ))),
    }
}

/// A filter's value as text. Filters may be described values (as JMS selectors are) or plain ones.
fn filter_text(filters: Option<&FilterSet>, name: &str) -> Result<Option<String>, Refusal> {
    let Some(value) = filters.and_then(|filters| {
        filters
            .iter()
            .find(|(key, _)| key.0 == name)
            .map(|(_, value)| value)
    }) else {
        return Ok(None);
    };
    let value = match value {
        Value::Described(described) => &described.value,
        value => value,
    };
    match value {
        Value::String(text) => Ok(Some(text.clone())),
        Value::Symbol(symbol) => Ok(Some(symbol.0.clone())),
        Value::Null => Ok(None),
        other => Err(Refusal::invalid(format!(
            "filter {name} must be a string, not {other:?}"
        ))),
    }
}

fn start_position(text: &str) -> Result<Position, Refusal> {
    let number = |digits: &str| digits.parse::<i64>().ok().filter(|n| *n >= 0);
    let position = match text.split_once(':') {
        None if text == "earliest" => Some(Position::Earliest),
        None if text == "latest" => Some(Position::Latest),
        Some(("offset", digits)) => number(digits).map(Position::Offset),
        Some(("timestamp", digits)) => number(digits).map(Position::Timestamp),
        _ => None,
    };
    position.ok_or_else(|| {
        Refusal::invalid(format!(
            "filter {START_FILTER} = {text:?}: use earliest, latest, offset:N or timestamp:MS"
        ))
    })
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::primitives::{Symbol, Value};

    use super::*;

    fn filters(pairs: &[(&str, &str)]) -> FilterSet {
        let mut set = FilterSet::new();
        for (key, value) in pairs {
            set.insert(Symbol::from(*key), Value::String((*value).to_owned()));
        }
        set
    }

    #[test]
    fn targets_name_a_topic_and_maybe_a_partition() {
        assert_eq!(
            destination(Some("orders")).unwrap(),
            Destination {
                topic: "orders".into(),
                partition: None
            }
        );
        assert_eq!(
            destination(Some("orders/partitions/3")).unwrap().partition,
            Some(3)
        );
        for bad in [
            "",
            "orders/partitions/-1",
            "orders/partitions/x",
            "a/b",
            "a/groups/g",
        ] {
            assert!(destination(Some(bad)).is_err(), "{bad}");
        }
        assert!(destination(None).is_err());
    }

    #[test]
    fn sources_name_a_group_by_address_or_filter() {
        let by_address = origin(Some("orders/groups/billing"), None).unwrap();
        assert_eq!(by_address.group.as_deref(), Some("billing"));
        assert_eq!(by_address.start, Position::Earliest);

        let by_filter = origin(Some("orders"), Some(&filters(&[(GROUP_FILTER, "billing")])));
        assert_eq!(by_filter.unwrap(), by_address);

        let conflict = origin(
            Some("orders/groups/a"),
            Some(&filters(&[(GROUP_FILTER, "b")])),
        );
        assert!(conflict.is_err());

        let plain = origin(Some("orders"), None).unwrap();
        assert_eq!(plain.group, None);
        assert_eq!(plain.start, Position::Latest);
    }

    #[test]
    fn start_filters_parse_every_position() {
        let start = |text: &str| {
            origin(Some("t"), Some(&filters(&[(START_FILTER, text)]))).map(|origin| origin.start)
        };
        assert_eq!(start("earliest").unwrap(), Position::Earliest);
        assert_eq!(start("latest").unwrap(), Position::Latest);
        assert_eq!(start("offset:42").unwrap(), Position::Offset(42));
        assert_eq!(
            start("timestamp:1700000000000").unwrap(),
            Position::Timestamp(1_700_000_000_000)
        );
        for bad in ["", "offset:", "offset:-1", "first", "timestamp:x"] {
            assert!(start(bad).is_err(), "{bad}");
        }
    }
}
