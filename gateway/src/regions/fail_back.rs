//! Where a group resumes in a region when it reads there again after reading in another one (a
//! fail-back, or a planned switch): past the records it consumed elsewhere of what this region
//! holds.
//!
//! MirrorMaker 2's checkpoints carry a group's position on `T` of region `a` over to `a.T` in
//! region `b`, not back: once traffic returns to `a`, the group's position on `a`'s own `T` is where
//! it was when `a` was lost, and everything it read of `b`'s copy `a.T` meanwhile would be
//! delivered again. And a checkpoint is written on an interval, so one a switch comes too soon for
//! leaves the group behind on `b.T` in `a` too. Copies keep each record's `courier-id` and
//! timestamp, so the record just before the group's commit in the region it read in is looked for
//! in this region's copy by its id, and the group resumes after it: on `T` for what it read of
//! `a.T` in `b`, on `b.T` for what it read of `b`'s own `T`. Copies keep a partition's order, so
//! everything before that record was copied, and read, before it.
//!
//! It only ever moves a group forward ([`super::translate::apply`]), asks only regions that are
//! healthy now (all of it within the probe timeout), and looks only for records with an id (the
//! gateway gives every record one; a client may have set its own, found the same way): whatever it
//! cannot find is read again, a duplicate. A group that began in the other region at its requested
//! start without a checkpoint there skipped what it had not read of the copies; it continues here
//! after what it read there, so that stays skipped, as the client's start asked.

use std::collections::BTreeMap;

use super::{RegionHealth, regional::read_range, shared::Shared};
use crate::{
    Result,
    log::{FetchLimits, Log, Position, Record, TopicPartition},
};

/// Records of a region's own partition looked through, from the sought record's timestamp on.
const SEARCH: i64 = 4096;

/// The positions in `region` on `topics` and their mirrors past what `group` consumed of the same
/// records in the other regions, where it found them. `committed` is where the group is in
/// `region`: a partition it has read past the same point here already is not searched.
pub(super) async fn positions_read_elsewhere(
    shared: &Shared,
    region: usize,
    group: &str,
    topics: &[String],
    committed: &BTreeMap<TopicPartition, i64>,
) -> BTreeMap<TopicPartition, i64> {
    let mut positions = BTreeMap::new();
    let here = shared.regions[region].log();
    let name = shared.regions[region].name.as_str();
    for (index, other) in shared.regions.iter().enumerate() {
        if index == region || shared.health(index) != RegionHealth::Healthy {
            continue;
        }
        // (name there, name here) of each topic read: this region's own topics, copied there;
        // that region's, copied here. Under the identity policy a copy has its topic's own name,
        // and nothing tells the two apart: nothing is brought back.
        let pairs: Vec<(String, String)> = topics
            .iter()
            .flat_map(|topic| {
                [
                    (shared.policy.remote_topic(name, topic), topic.clone()),
                    (
                        topic.clone(),
                        shared.policy.remote_topic(&other.name, topic),
                    ),
                ]
            })
            .filter(|(there, here)| there != here)
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let there = other.log();
        let bound = shared.config.probe_timeout;
        let Ok(Ok(description)) = tokio::time::timeout(bound, there.describe_group(group)).await
        else {
            continue;
        };
        for offset in description.offsets {
            let Some(read_there) = offset.committed.filter(|committed| *committed > 0) else {
                continue;
            };
            let Some((_, own)) = pairs
                .iter()
                .find(|(copy, _)| **copy == *offset.partition.topic)
            else {
                continue;
            };
            let own = TopicPartition::new(own.as_str(), offset.partition.partition);
            let read_here = committed.get(&own).copied();
            let found = found_here(
                &*there,
                &offset.partition,
                read_there,
                &*here,
                &own,
                read_here,
            );
            match tokio::time::timeout(bound, found).await {
                Ok(Ok(Some(next))) => {
                    let position = positions.entry(own).or_insert(next);
                    *position = (*position).max(next);
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(group, read = %offset.partition, %error, "could not bring a group's position over from another region");
                }
                Err(_) => {
                    tracing::debug!(group, read = %offset.partition, "bringing a group's position over from another region timed out");
                }
            }
        }
    }
    positions
}

/// The offset in `own` just past the record before `read_there` in `copy` (read through
/// `there`), when `own` holds it among the [`SEARCH`] records from its timestamp on; `None` too
/// when the group's position here, `read_here`, is already past a record as new.
async fn found_here(
    there: &dyn Log,
    copy: &TopicPartition,
    read_there: i64,
    here: &dyn Log,
    own: &TopicPartition,
    read_here: Option<i64>,
) -> Result<Option<i64>> {
    let Some(last) = record_at(there, copy, read_there - 1).await? else {
        return Ok(None);
    };
    if last.courier_id.is_empty() {
        return Ok(None);
    }
    if let Some(read_here) = read_here.filter(|offset| *offset > 0)
        && let Some(here_last) = record_at(here, own, read_here - 1).await?
        && here_last.timestamp_ms >= last.timestamp_ms
    {
        return Ok(None);
    }
    let from = here
        .resolve(own, Position::Timestamp(last.timestamp_ms))
        .await?;
    let end = here.resolve(own, Position::Latest).await?;
    let records = read_range(here, own, from, end.min(from.saturating_add(SEARCH))).await?;
    Ok(records
        .iter()
        .find(|record| record.courier_id == last.courier_id)
        .map(|record| record.offset + 1))
}

/// The record at `offset` of `partition`, if it is there.
async fn record_at(
    log: &dyn Log,
    partition: &TopicPartition,
    offset: i64,
) -> Result<Option<Record>> {
    let limits = FetchLimits {
        max_records: 1,
        max_bytes: 1 << 20,
    };
    let fetched = log.fetch(partition, offset, limits).await?;
    Ok(fetched
        .records
        .into_iter()
        .find(|record| record.offset == offset))
}
