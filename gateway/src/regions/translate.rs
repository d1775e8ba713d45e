//! Where a consumer group starts in a region on the topics mirrored into it: at the offsets
//! MirrorMaker 2's checkpoints translated from the group's commits in the other regions.

use std::collections::BTreeMap;

use super::{checkpoint::Checkpoint, naming::ReplicationPolicy};
use crate::{
    Error, Result,
    log::{FetchLimits, GroupDescription, Log, TopicPartition, TopicSelector},
};

/// Checkpoint records read per fetch.
const CHECKPOINT_BATCH: usize = 500;

/// The latest translated offset of `group` per partition of the topics `reads` takes, from every
/// `<source>.checkpoints.internal` of `sources` in `region` (whose topics are `existing`).
pub(super) async fn checkpointed_offsets(
    region: &dyn Log,
    policy: &ReplicationPolicy,
    sources: &[&str],
    existing: &[String],
    group: &str,
    reads: &TopicSelector,
) -> Result<BTreeMap<TopicPartition, i64>> {
    let mut offsets = BTreeMap::new();
    for source in sources {
        let topic = policy.checkpoints_topic(source);
        // Asking for a topic that is not there costs a metadata wait: skip it by the topic list.
        if !existing.contains(&topic) {
            continue;
        }
        let description = match region.describe_topic(&topic).await {
            Ok(description) => description,
            Err(Error::UnknownTopic { .. }) => continue,
            Err(error) => return Err(error),
        };
        for watermarks in description.partitions {
            let partition = TopicPartition::new(topic.as_str(), watermarks.partition);
            let mut offset = watermarks.low;
            while offset < watermarks.high {
                let fetched = region
                    .fetch(
                        &partition,
                        offset,
                        FetchLimits {
                            max_records: CHECKPOINT_BATCH,
                            max_bytes: 1 << 20,
                        },
                    )
                    .await?;
                let Some(last) = fetched.records.last() else {
                    break;
                };
                offset = last.offset + 1;
                for record in &fetched.records {
                    let (Some(key), Some(value)) = (&record.key, &record.value) else {
                        continue;
                    };
                    match Checkpoint::decode(key, value) {
                        Ok(checkpoint)
                            if checkpoint.group == group && reads.matches(&checkpoint.topic) =>
                        {
                            // Later checkpoints of a partition replace earlier ones.
                            offsets.insert(
                                TopicPartition::new(checkpoint.topic, checkpoint.partition),
                                checkpoint.downstream_offset,
                            );
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(
                            %error, topic = %topic, offset = record.offset,
                            "skipping a checkpoint record that cannot be decoded"
                        ),
                    }
                }
            }
        }
    }
    Ok(offsets)
}

/// Commits, for `group` in `region` (described as `description`), each translated offset that is
/// ahead of what the group has committed there (a checkpoint never moves a group back over records
/// it already consumed here). Returns how many partitions moved.
pub(super) async fn apply(
    region: &dyn Log,
    group: &str,
    description: &GroupDescription,
    translated: BTreeMap<TopicPartition, i64>,
) -> Result<usize> {
    let committed: BTreeMap<&TopicPartition, Option<i64>> = description
        .offsets
        .iter()
        .map(|offset| (&offset.partition, offset.committed))
        .collect();
    let moves: Vec<(TopicPartition, i64)> = translated
        .into_iter()
        .filter(|(partition, offset)| {
            committed
                .get(partition)
                .copied()
                .flatten()
                .is_none_or(|current| current < *offset)
        })
        .collect();
    if moves.is_empty() {
        return Ok(0);
    }
    match region.commit(group, &moves).await {
        Ok(()) => Ok(moves.len()),
        // A member arrived meanwhile (another replica's subscriber): it translated first.
        Err(Error::GroupActive { .. }) => Ok(0),
        Err(error) => Err(error),
    }
}

/// After a switch, a group starts every partition it has neither a checkpoint nor a commit for in
/// this region at its oldest record: a reader that began at "latest" before the switch (an MQTT
/// subscription, say) would otherwise skip what the lost region wrote and MirrorMaker 2 copied, and
/// what clients wrote into this region's own topic while the group was joining here (writes move
/// first). At-least-once prefers redelivery to loss.
pub(super) async fn start_uncommitted_at_earliest(
    region: &dyn Log,
    topics: &[String],
    translated: &mut BTreeMap<TopicPartition, i64>,
) -> Result<()> {
    for topic in topics {
        let description = match region.describe_topic(topic).await {
            Ok(description) => description,
            Err(Error::UnknownTopic { .. }) => continue,
            Err(error) => return Err(error),
        };
        for watermarks in description.partitions {
            translated
                .entry(TopicPartition::new(topic.as_str(), watermarks.partition))
                .or_insert(watermarks.low);
        }
    }
    Ok(())
}
