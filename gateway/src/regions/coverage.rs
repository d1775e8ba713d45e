//! What MirrorMaker 2's checkpoints in a region cover of the consumer groups' positions in
//! another: the records those groups would be given again if the other region were lost now (the
//! duplicates window, beside the loss window [`replication`](super::replication) measures).
//!
//! MirrorMaker 2 writes a group's committed offsets, translated, to `<source>.checkpoints.internal`
//! in the target region every `emit.checkpoints.interval.seconds`. After a crash of the source the
//! group resumes in the target at its newest checkpoint (see `translate`), so whatever it committed
//! in the source since is read again; a partition it committed but that was never checkpointed is
//! read from the mirror's start. Every `log.checkpoint_interval`, while both regions answer, the
//! router reads in `to` the checkpoints written since its last reading, and in `from` every group's
//! commits on the topics mirrored into `to`, and counts per group the records committed past the
//! newest checkpoint.
//!
//! The figure is a lower bound: MirrorMaker 2 translates a checkpoint to an offset at or before
//! it (by up to `offset.lag.max` records). A group past its checkpoint whose source region still
//! answers, on a fail-back or a planned switch, is brought over by its commits there instead
//! (`fail_back`, for records that carry a `courier-id`): the window is what a crash costs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{checkpoint::Checkpoint, naming::ReplicationPolicy, regional::read_range};
use crate::{
    Error, Result,
    log::{Log, Position, TopicPartition},
};

/// Groups the status lists per pair of regions: the furthest behind.
const LISTED_GROUPS: usize = 10;

/// Checkpoint records read per fetch.
const READ_BATCH: i64 = 4096;

/// Groups MirrorMaker 2 leaves out by default (`groups.exclude`: `console-consumer-.*`,
/// `connect-.*`, `__.*`): never checkpointed, they would count as behind by all they read.
const NEVER_CHECKPOINTED: [&str; 3] = ["console-consumer-", "connect-", "__"];

/// One consumer group's position in the source region against its newest checkpoint in the
/// target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupCoverage {
    /// The consumer group.
    pub group: String,
    /// Records the group committed in the source past its newest checkpoint in the target (for a
    /// partition never checkpointed, from the source partition's start): at least what it would
    /// read again if the source were lost now (MirrorMaker 2 translates a checkpoint to an offset
    /// at or before it, by up to `offset.lag.max` records).
    pub records_behind: i64,
    /// The age of the group's checkpoint in the target, in ms: of the oldest checkpoint of a
    /// partition it has read past, else of its newest; `None` when it has none.
    pub checkpoint_age_ms: Option<i64>,
}

/// What one region's checkpoints cover of the groups of another, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointStatus {
    /// When this was measured, in ms since the epoch.
    pub measured_at_ms: i64,
    /// Groups with commits on topics mirrored into this region.
    pub groups: usize,
    /// Of those, groups that have no checkpoint here at all.
    pub groups_without_checkpoint: usize,
    /// Records all of them would read again, summed.
    pub records_behind: i64,
    /// The groups furthest behind (at most ten), furthest first.
    pub furthest: Vec<GroupCoverage>,
}

/// One measurement of a pair of regions: every group, furthest behind first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Coverage {
    pub(super) measured_at_ms: i64,
    pub(super) groups: Vec<GroupCoverage>,
}

impl Coverage {
    /// `groups` ranked furthest behind first, then by name (so ties rank the same each time).
    pub(super) fn new(measured_at_ms: i64, mut groups: Vec<GroupCoverage>) -> Self {
        groups.sort_by(|a, b| {
            b.records_behind
                .cmp(&a.records_behind)
                .then_with(|| a.group.cmp(&b.group))
        });
        Self {
            measured_at_ms,
            groups,
        }
    }

    pub(super) fn status(&self) -> CheckpointStatus {
        CheckpointStatus {
            measured_at_ms: self.measured_at_ms,
            groups: self.groups.len(),
            groups_without_checkpoint: self
                .groups
                .iter()
                .filter(|group| group.checkpoint_age_ms.is_none())
                .count(),
            records_behind: self
                .groups
                .iter()
                .fold(0_i64, |sum, group| sum.saturating_add(group.records_behind)),
            furthest: self.groups.iter().take(LISTED_GROUPS).cloned().collect(),
        }
    }
}

/// Every group of region `from` against region `to`'s checkpoints, furthest behind first: what the
/// metrics export (the status lists only the furthest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairCoverage {
    /// The region the groups commit in.
    pub from: String,
    /// The region holding the checkpoints.
    pub to: String,
    /// Every group, furthest behind first.
    pub groups: Vec<GroupCoverage>,
}

/// A group's newest checkpoint of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Newest {
    upstream_offset: i64,
    written_ms: i64,
}

/// The checkpoints of one source region read so far in a target region: read on from where the
/// last reading stopped, so a measurement costs what was written since.
#[derive(Debug, Default)]
pub(super) struct CheckpointsRead {
    /// The next offset to read, per partition of the checkpoints topic.
    next: BTreeMap<i32, i64>,
    /// The newest checkpoint per group, by (topic as named in the target, partition).
    newest: BTreeMap<String, BTreeMap<(String, i32), Newest>>,
}

impl CheckpointsRead {
    /// Reads what was written to `topic` in `target` since the last call.
    async fn read_on(&mut self, target: &dyn Log, topic: &str) -> Result<()> {
        let description = match target.describe_topic(topic).await {
            Ok(description) => description,
            Err(Error::UnknownTopic { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        let shrunk = description.partitions.iter().any(|watermarks| {
            watermarks.high < self.next.get(&watermarks.partition).copied().unwrap_or(0)
        });
        if shrunk {
            // The topic is not the one read before (recreated, or the region rebuilt): start over.
            *self = Self::default();
        }
        for watermarks in description.partitions {
            let partition = TopicPartition::new(topic, watermarks.partition);
            // In batches, remembering how far each got: a read cut short (a fetch that found
            // nothing in time, the measurement's deadline) goes on from there the next time, and
            // a checkpoint MirrorMaker 2 will not write again (the group did not move) is not
            // skipped.
            loop {
                let next = self.next.get(&watermarks.partition).copied().unwrap_or(0);
                let from = next.max(watermarks.low);
                if from >= watermarks.high {
                    break;
                }
                let until = watermarks.high.min(from.saturating_add(READ_BATCH));
                let records = read_range(target, &partition, from, until).await?;
                let Some(last) = records.last().map(|record| record.offset) else {
                    break;
                };
                for record in &records {
                    let (Some(key), Some(value)) = (&record.key, &record.value) else {
                        continue;
                    };
                    match Checkpoint::decode(key, value) {
                        Ok(checkpoint) => self.remember(checkpoint, record.timestamp_ms),
                        Err(error) => tracing::debug!(
                            %error, topic, offset = record.offset,
                            "skipping a checkpoint record that cannot be decoded"
                        ),
                    }
                }
                self.next.insert(watermarks.partition, last + 1);
            }
        }
        Ok(())
    }

    /// Later checkpoints of a partition replace earlier ones (the topic is read in order).
    fn remember(&mut self, checkpoint: Checkpoint, written_ms: i64) {
        self.newest.entry(checkpoint.group).or_default().insert(
            (checkpoint.topic, checkpoint.partition),
            Newest {
                upstream_offset: checkpoint.upstream_offset,
                written_ms,
            },
        );
    }
}

/// One partition a group committed in the source, as the target names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Committed {
    /// The topic in the source region.
    topic: String,
    /// Its mirror in the target region.
    mirror: String,
    partition: i32,
    offset: i64,
}

/// Measures what the checkpoints of `source` (named `source_name`) read into `read` in `target`
/// (whose topics are `target_topics`) cover of the groups' commits in `source`. `None` when
/// `target` holds no checkpoints of `source` (MirrorMaker 2 does not copy that way, or has not
/// started): every group would count from the start, on topics that may only share a name.
pub(super) async fn measure(
    source: &dyn Log,
    source_name: &str,
    target: &dyn Log,
    target_topics: &[String],
    policy: &ReplicationPolicy,
    read: &mut CheckpointsRead,
    now_ms: i64,
) -> Result<Option<Coverage>> {
    let checkpoints = policy.checkpoints_topic(source_name);
    // Reading a topic that is not there may create it.
    if !target_topics.contains(&checkpoints) {
        return Ok(None);
    }
    read.read_on(target, &checkpoints).await?;
    let mut groups = Vec::new();
    for group in source.list_groups().await? {
        if NEVER_CHECKPOINTED
            .iter()
            .any(|prefix| group.starts_with(prefix))
        {
            continue;
        }
        let description = match source.describe_group(&group).await {
            Ok(description) => description,
            // One group that cannot be described (gone since it was listed) leaves the others.
            Err(error) => {
                tracing::debug!(%group, %error, "describing a group to measure its checkpoints");
                continue;
            }
        };
        let committed: Vec<Committed> = description
            .offsets
            .iter()
            .filter_map(|offset| {
                let topic = offset.partition.topic.to_string();
                let mirror = policy.remote_topic(source_name, &topic);
                // Only what is mirrored into the target can be checkpointed there.
                target_topics.contains(&mirror).then_some(Committed {
                    topic,
                    mirror,
                    partition: offset.partition.partition,
                    offset: offset.committed?,
                })
            })
            .collect();
        if committed.is_empty() {
            continue;
        }
        let newest = read.newest.get(&group);
        let mut behind = 0;
        // The oldest checkpoint of a partition the group has read past: its age is the window's.
        let mut oldest_behind: Option<i64> = None;
        for partition in &committed {
            let checkpointed = newest
                .and_then(|newest| newest.get(&(partition.mirror.clone(), partition.partition)));
            let covered = match checkpointed {
                Some(checkpoint) => {
                    if partition.offset > checkpoint.upstream_offset {
                        oldest_behind =
                            Some(oldest_behind.map_or(checkpoint.written_ms, |oldest| {
                                oldest.min(checkpoint.written_ms)
                            }));
                    }
                    checkpoint.upstream_offset
                }
                None => {
                    let start = source
                        .resolve(
                            &TopicPartition::new(partition.topic.as_str(), partition.partition),
                            Position::Earliest,
                        )
                        .await;
                    match start {
                        Ok(start) => start,
                        // Gone since the group was described: the partition counts for nothing.
                        Err(_) => partition.offset,
                    }
                }
            };
            // Offsets come from the network: saturating, whatever they say.
            behind = partition
                .offset
                .saturating_sub(covered)
                .max(0)
                .saturating_add(behind);
        }
        // Behind: the oldest checkpoint it is past; covered: its newest.
        let checkpoint_age_ms = oldest_behind
            .or_else(|| newest.and_then(|newest| newest.values().map(|n| n.written_ms).max()))
            .map(|written| (now_ms - written).max(0));
        groups.push(GroupCoverage {
            group,
            records_behind: behind,
            checkpoint_age_ms,
        });
    }
    Ok(Some(Coverage::new(now_ms, groups)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{EmbeddedConfig, GroupsConfig, ReplicationPolicyKind, TopicsConfig},
        log::{Embedded, NewRecord, TopicSpec},
    };

    async fn embedded(dir: &std::path::Path) -> Result<Embedded> {
        Embedded::open(
            &EmbeddedConfig::in_dir(dir),
            TopicsConfig::default(),
            GroupsConfig::default(),
            "test",
        )
        .await
    }

    /// A checkpoint record as MirrorMaker 2 writes it (see `checkpoint`'s layout).
    fn checkpoint_record(group: &str, topic: &str, upstream: i64) -> NewRecord {
        let string = |text: &str| {
            let mut bytes = (text.len() as i16).to_be_bytes().to_vec();
            bytes.extend_from_slice(text.as_bytes());
            bytes
        };
        let mut key = string(group);
        key.extend(string(topic));
        key.extend(0_i32.to_be_bytes());
        let mut value = 0_i16.to_be_bytes().to_vec();
        value.extend(upstream.to_be_bytes());
        value.extend(upstream.to_be_bytes());
        value.extend(string(""));
        NewRecord {
            key: Some(key.into()),
            ..NewRecord::with_value(value)
        }
    }

    /// Over two embedded logs: a group checkpointed at 20 of the 30 it committed is 10 behind, a
    /// group never checkpointed is behind by all it committed, a group on a topic not mirrored or
    /// one MirrorMaker 2 leaves out is not counted; a later checkpoint, read on from where the last
    /// reading stopped, covers all.
    #[tokio::test]
    async fn counts_the_records_committed_past_the_newest_checkpoint()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (a, b) = (
            embedded(dirs.0.path()).await?,
            embedded(dirs.1.path()).await?,
        );
        let policy = ReplicationPolicy::new(ReplicationPolicyKind::Default, ".");
        for topic in ["orders", "local"] {
            a.create_topic(TopicSpec {
                partitions: Some(1),
                ..TopicSpec::named(topic)
            })
            .await?;
        }
        let records = (0..30)
            .map(|i| NewRecord::with_value(format!("{i}")))
            .collect();
        a.append("orders", records).await?;
        a.append("local", vec![NewRecord::with_value("x")]).await?;
        let orders = TopicPartition::new("orders", 0);
        a.commit("g1", &[(orders.clone(), 30)]).await?;
        a.commit("g2", &[(orders.clone(), 12)]).await?;
        a.commit("g3", &[(TopicPartition::new("local", 0), 1)])
            .await?;
        // MirrorMaker 2 checkpoints no console consumer by default: not counted.
        a.commit("console-consumer-42", &[(orders.clone(), 30)])
            .await?;
        for topic in ["a.orders", "a.checkpoints.internal"] {
            b.create_topic(TopicSpec {
                partitions: Some(1),
                ..TopicSpec::named(topic)
            })
            .await?;
        }
        let checkpoints = "a.checkpoints.internal";
        b.append(checkpoints, vec![checkpoint_record("g1", "a.orders", 20)])
            .await?;
        let b_topics = vec![checkpoints.to_owned(), "a.orders".to_owned()];
        let mut read = CheckpointsRead::default();
        let now = crate::log::now_ms();

        let coverage = measure(&a, "a", &b, &b_topics, &policy, &mut read, now)
            .await?
            .ok_or("no coverage")?;
        let behind: Vec<(&str, i64, bool)> = coverage
            .groups
            .iter()
            .map(|g| {
                (
                    g.group.as_str(),
                    g.records_behind,
                    g.checkpoint_age_ms.is_some(),
                )
            })
            .collect();
        assert_eq!(behind, [("g2", 12, false), ("g1", 10, true)]);

        b.append(checkpoints, vec![checkpoint_record("g1", "a.orders", 30)])
            .await?;
        let coverage = measure(&a, "a", &b, &b_topics, &policy, &mut read, now)
            .await?
            .ok_or("no coverage")?;
        let status = coverage.status();
        assert_eq!(status.records_behind, 12);
        assert_eq!(status.groups_without_checkpoint, 1);
        assert_eq!(status.furthest[1].group, "g1");
        assert_eq!(status.furthest[1].records_behind, 0);
        // Without the checkpoints topic, no measurement: not every group counted from the start.
        let without = measure(&a, "a", &b, &b_topics[1..], &policy, &mut read, now).await?;
        assert!(without.is_none());
        Ok(())
    }

    fn group(name: &str, behind: i64, age: Option<i64>) -> GroupCoverage {
        GroupCoverage {
            group: name.into(),
            records_behind: behind,
            checkpoint_age_ms: age,
        }
    }

    #[test]
    fn ranks_the_groups_furthest_behind_first_and_sums_them() {
        let mut groups: Vec<GroupCoverage> = (0..12)
            .map(|i| group(&format!("g{i:02}"), i, Some(1_000)))
            .collect();
        groups.push(group("never", 5, None));
        let status = Coverage::new(7, groups).status();
        assert_eq!(status.measured_at_ms, 7);
        assert_eq!(status.groups, 13);
        assert_eq!(status.groups_without_checkpoint, 1);
        assert_eq!(status.records_behind, (0..12).sum::<i64>() + 5);
        let listed: Vec<&str> = status.furthest.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(
            listed,
            [
                "g11", "g10", "g09", "g08", "g07", "g06", "g05", "never", "g04", "g03"
            ]
        );
    }

    #[test]
    fn a_later_checkpoint_of_a_partition_replaces_an_earlier_one() {
        let mut read = CheckpointsRead::default();
        let checkpoint = |upstream| Checkpoint {
            group: "g".into(),
            topic: "a.orders".into(),
            partition: 0,
            upstream_offset: upstream,
            downstream_offset: upstream,
            metadata: String::new(),
        };
        read.remember(checkpoint(10), 100);
        read.remember(checkpoint(25), 200);
        assert_eq!(
            read.newest["g"][&("a.orders".to_owned(), 0)],
            Newest {
                upstream_offset: 25,
                written_ms: 200
            }
        );
    }
}
