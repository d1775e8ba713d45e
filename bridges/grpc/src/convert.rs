//! Conversions between the wire types of `proto/courier/v1` and the Log's types. Requests are checked
//! here, so a malformed message fails with INVALID_ARGUMENT before it reaches the log.

use courier_gateway::{
    log::{self, Position, TopicPartition, TopicSelector},
    regions::{CheckpointStatus, PlannedSwitch, RoutingStatus},
};
use tonic::Status;

use crate::proto::v1 as pb;

/// The wire form of a stored record.
pub(crate) fn record_to_wire(record: log::Record) -> pb::Record {
    pb::Record {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        key: record.key,
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|h| pb::Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        timestamp_ms: record.timestamp_ms,
        courier_id: record.courier_id,
        origin: record.origin,
    }
}

/// A record to write, from the wire.
pub(crate) fn record_from_wire(record: pb::ProduceRecord) -> log::NewRecord {
    log::NewRecord {
        key: record.key,
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|h| log::Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        partition: record.partition,
        timestamp_ms: record.timestamp_ms,
        courier_id: record.courier_id,
    }
}

/// Acks of appended records, in order.
pub(crate) fn acks_to_wire(appended: Vec<log::Appended>) -> Vec<pb::RecordAck> {
    appended
        .into_iter()
        .map(|a| pb::RecordAck {
            partition: a.partition,
            offset: a.offset,
            courier_id: a.courier_id,
            timestamp_ms: a.timestamp_ms,
        })
        .collect()
}

/// A position from the wire; absent means `default`.
pub(crate) fn position_from_wire(position: Option<pb::Position>, default: Position) -> Position {
    match position.and_then(|p| p.kind) {
        None => default,
        Some(pb::position::Kind::Earliest(_)) => Position::Earliest,
        Some(pb::position::Kind::Latest(_)) => Position::Latest,
        Some(pb::position::Kind::Offset(offset)) => Position::Offset(offset),
        Some(pb::position::Kind::TimestampMs(timestamp)) => Position::Timestamp(timestamp),
    }
}

/// A required position from the wire.
pub(crate) fn required_position(
    position: Option<pb::Position>,
    field: &str,
) -> Result<Position, Status> {
    match position.and_then(|p| p.kind) {
        None => Err(Status::invalid_argument(format!(
            "{field} is required: earliest, latest, offset or timestamp_ms"
        ))),
        kind => Ok(position_from_wire(
            Some(pb::Position { kind }),
            Position::Latest,
        )),
    }
}

/// Which topics a subscription reads, from the wire: exactly one of a list or a pattern.
pub(crate) fn selector_from_wire(
    topics: Vec<String>,
    pattern: String,
) -> Result<TopicSelector, Status> {
    match (topics.is_empty(), pattern.is_empty()) {
        (false, true) => Ok(TopicSelector::Names(topics)),
        (true, false) => TopicSelector::pattern(&pattern).map_err(|error| {
            Status::invalid_argument(format!(
                "topic_pattern {pattern:?} is not a valid regular expression: {error}"
            ))
        }),
        (true, true) => Err(Status::invalid_argument(
            "name the topics to read (topics) or a topic_pattern",
        )),
        (false, false) => Err(Status::invalid_argument(
            "give either topics or topic_pattern, not both",
        )),
    }
}

/// A partition named on the wire.
pub(crate) fn partition_from_wire(topic: String, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

/// The wire form of a partition list.
pub(crate) fn assignment_to_wire(partitions: Vec<TopicPartition>) -> pb::Assignment {
    pb::Assignment {
        partitions: partitions
            .into_iter()
            .map(|tp| pb::TopicPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            })
            .collect(),
    }
}

/// The wire form of a topic description.
pub(crate) fn topic_to_wire(topic: log::TopicDescription) -> pb::TopicDescription {
    pb::TopicDescription {
        name: topic.name,
        partitions: topic
            .partitions
            .into_iter()
            .map(|p| pb::PartitionDescription {
                partition: p.partition,
                low_watermark: p.low,
                high_watermark: p.high,
            })
            .collect(),
        retention_ms: topic.retention_ms,
        retention_bytes: topic.retention_bytes,
    }
}

/// The wire form of a group description.
pub(crate) fn group_to_wire(group: log::GroupDescription) -> pb::GroupDescription {
    pb::GroupDescription {
        group: group.group,
        members: group
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id,
                client: m.client,
                protocol: m.protocol,
                assigned: assignment_to_wire(m.assigned).partitions,
            })
            .collect(),
        partitions: group
            .offsets
            .into_iter()
            .map(|o| pb::GroupPartition {
                topic: o.partition.topic.to_string(),
                partition: o.partition.partition,
                committed: o.committed.unwrap_or(-1),
                high_watermark: o.high_watermark,
                lag: o.lag,
            })
            .collect(),
    }
}

/// The region router's status on the wire.
pub(crate) fn regions_to_wire(status: RoutingStatus) -> pb::RegionsStatus {
    pb::RegionsStatus {
        mode: status.mode.to_owned(),
        regions: status
            .regions
            .into_iter()
            .map(|region| pb::RegionState {
                name: region.name,
                health: region.health.as_str().to_owned(),
                since_ms: region.since_ms,
                cause: region.cause,
                writes: region.writes,
                reads: region.reads,
                preferred: region.preferred,
                replication: region
                    .replication
                    .into_iter()
                    .map(|lag| pb::ReplicationLag {
                        from: lag.from,
                        lag_ms: lag.lag_ms,
                        stale: lag.stale,
                        checkpoints: lag.checkpoints.map(checkpoint_coverage),
                    })
                    .collect(),
            })
            .collect(),
        manual: status.manual.unwrap_or_default(),
        switches: status.switches,
        last_switch: status.last_switch.map(|switch| pb::RegionSwitch {
            at_ms: switch.at_ms,
            traffic: switch.traffic.as_str().to_owned(),
            from: switch.from,
            to: switch.to,
            cause: switch.cause,
        }),
        planned: None,
    }
}

/// What a planned switch did, on the wire.
pub(crate) fn planned_to_wire(outcome: PlannedSwitch) -> pb::PlannedSwitch {
    pb::PlannedSwitch {
        from: outcome.from,
        to: outcome.to,
        copied: outcome.copied,
        paused_ms: outcome.paused_ms,
        writes_held: outcome.writes_held,
        partitions: outcome.partitions,
        missing: outcome.missing,
    }
}

fn checkpoint_coverage(coverage: CheckpointStatus) -> pb::CheckpointCoverage {
    pb::CheckpointCoverage {
        measured_at_ms: coverage.measured_at_ms,
        groups: coverage.groups as u64,
        groups_without_checkpoint: coverage.groups_without_checkpoint as u64,
        records_behind: coverage.records_behind,
        furthest: coverage
            .furthest
            .into_iter()
            .map(|group| pb::GroupCheckpoint {
                group: group.group,
                records_behind: group.records_behind,
                checkpoint_age_ms: group.checkpoint_age_ms,
            })
            .collect(),
    }
}
