//! Subscriptions through the router. A subscription reads, in the read region, the topics asked for
//! and their mirrors from the other regions; a consumer group first takes the positions MirrorMaker
//! 2's checkpoints translated. When reads move to another region, the subscription there replaces the
//! one here: the front end sees its partitions revoked and new ones assigned, as in a rebalance.
//!
//! MirrorMaker 2 makes a mirror when it first copies a topic, which can be long after a subscription
//! started; the subscription looks for new mirrors of its topics every `MIRROR_CHECK` and, when one
//! appeared, subscribes again in the same region so the group reads it too.
//!
//! Acknowledgements are routed by delivery: a record delivered by one region's subscription is
//! acknowledged to that one, even when a record of the same topic, partition and offset has been
//! delivered since from another region (offsets of `T` in two clusters are unrelated).

mod control;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::sync::watch;

use self::control::RoutedControl;
use super::{fail_back, shared::Shared, translate};
use crate::{
    Result,
    log::{
        Events, Position, SubscribeOptions, Subscription, SubscriptionEvent, TopicPartition,
        TopicSelector,
        events::{self, EventSender},
    },
};

/// Pause before subscribing again after a region's subscription failed or ended on its own.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);
/// How often a subscription looks for mirrors of its topics that appeared since it started.
const MIRROR_CHECK: Duration = Duration::from_secs(5);
/// Longest a closed subscription's task waits for the region's subscription to end (see
/// `Forward::forward_until_closed`); the close itself is what ends it.
const CLOSE_DRAIN: Duration = Duration::from_secs(10);

/// Starts a subscription in the read region. Errors of the first attempt (a bad topic name, a missing
/// topic without auto-creation) are the caller's.
pub(super) async fn subscribe(
    shared: &Arc<Shared>,
    options: SubscribeOptions,
) -> Result<Subscription> {
    let mut reads = shared.reads.subscribe();
    let region = *reads.borrow_and_update();
    let (first, reading) = open(shared, region, &options, Uncommitted::AsAsked).await?;
    let control = Arc::new(RoutedControl::new(first.control));
    let (events, outer) = events::channel(options.max_in_flight);
    let forward = Forward {
        shared: shared.clone(),
        options,
        region,
        reading,
        reads,
        events,
        control: control.clone(),
        assigned: BTreeSet::new(),
        last_timestamp: None,
    };
    shared.tasks.spawn(forward.run(first.events));
    Ok(Subscription {
        events: outer,
        control,
    })
}

/// The topics of `region`, by a list at most `max_age` old.
async fn existing(shared: &Shared, region: usize, max_age: Duration) -> Result<Arc<Vec<String>>> {
    shared.regions[region].topic_names(max_age).await
}

/// What a subscription to `options.topics` reads in a region with the `existing` topics: the topics
/// and the mirrors of them that exist there.
fn expand(
    shared: &Shared,
    region: usize,
    options: &SubscribeOptions,
    existing: &[String],
) -> TopicSelector {
    shared
        .policy
        .expand(&options.topics, &shared.others(region), existing)
}

/// Where a group starts the partitions it has neither a checkpoint nor a commit for in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Uncommitted {
    /// Where the subscription asked (its start position): its first subscription, or again in the
    /// same region, where the member that left committed where it was.
    AsAsked,
    /// At their oldest record, all of them: after a switch, the group never read this region's copy
    /// of its topics, and its old member could not commit.
    Oldest,
    /// At their oldest record, those of these topics: mirrors that appeared after it subscribed.
    OldestIn(Vec<String>),
}

/// Subscribes in `region`: the topics and their mirrors there, a group at its translated positions.
/// Returns the subscription and what it reads.
async fn open(
    shared: &Shared,
    region: usize,
    options: &SubscribeOptions,
    uncommitted: Uncommitted,
) -> Result<(Subscription, TopicSelector)> {
    let log = shared.regions[region].log();
    let others = shared.others(region);
    let existing = existing(shared, region, Duration::ZERO).await?;
    let topics = expand(shared, region, options, &existing);
    // Positions to set come from checkpoints, or from the oldest records; with neither, a group
    // starts as it would on a plain cluster, without the cost of describing it.
    let oldest: Vec<String> = match (uncommitted, &topics) {
        (Uncommitted::Oldest, TopicSelector::Names(names)) => names.clone(),
        (Uncommitted::OldestIn(names), _) => names,
        (Uncommitted::AsAsked | Uncommitted::Oldest, _) => Vec::new(),
    };
    let checkpointed = others
        .iter()
        .any(|source| existing.contains(&shared.policy.checkpoints_topic(source)));
    // A group with live members is left where they hold it (the first member to arrive translated
    // its positions), so only a group without members reads the checkpoints.
    let idle_group = match &options.group {
        Some(group) if checkpointed || !oldest.is_empty() => {
            let description = log.describe_group(group).await?;
            description
                .members
                .is_empty()
                .then_some((group, description))
        }
        Some(_) | None => None,
    };
    if let Some((group, description)) = idle_group {
        let mut translated = translate::checkpointed_offsets(
            log.as_ref(),
            &shared.policy,
            &others,
            &existing,
            group,
            &topics,
        )
        .await?;
        // Back in a region after reading its topics' copies elsewhere: past what was read there.
        if let TopicSelector::Names(asked) = &options.topics {
            let committed_here = description
                .offsets
                .iter()
                .filter_map(|offset| Some((offset.partition.clone(), offset.committed?)))
                .collect();
            // Bounded as a whole: past the bound the group starts where it is here (duplicates).
            let returned = tokio::time::timeout(
                shared.config.probe_timeout,
                fail_back::positions_read_elsewhere(shared, region, group, asked, &committed_here),
            )
            .await
            .unwrap_or_default();
            for (partition, offset) in returned {
                let position = translated.entry(partition).or_insert(offset);
                *position = (*position).max(offset);
            }
        }
        translate::start_uncommitted_at_earliest(log.as_ref(), &oldest, &mut translated).await?;
        let moved = translate::apply(log.as_ref(), group, &description, translated).await?;
        if moved > 0 {
            tracing::info!(group, region = %shared.regions[region].name, partitions = moved, "group positions translated from checkpoints");
        }
    }
    let subscription = log
        .subscribe(SubscribeOptions {
            topics: topics.clone(),
            ..options.clone()
        })
        .await?;
    Ok((subscription, topics))
}

/// The task between one region's subscription and the front end.
struct Forward {
    shared: Arc<Shared>,
    options: SubscribeOptions,
    region: usize,
    /// What the region's subscription reads (the topics and their mirrors there).
    reading: TopicSelector,
    reads: watch::Receiver<usize>,
    /// The front end's queue: the task takes an event from the region's subscription only while
    /// it has room, so the region's window is not freed into this queue (see [`events`]).
    events: EventSender,
    control: Arc<RoutedControl>,
    assigned: BTreeSet<TopicPartition>,
    /// The newest record timestamp delivered: where a plain reader resumes in another region.
    last_timestamp: Option<i64>,
}

impl Forward {
    async fn run(mut self, mut inner: Events) {
        let mut mirror_check = tokio::time::interval(MIRROR_CHECK);
        mirror_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        mirror_check.reset();
        loop {
            let resubscribe = tokio::select! {
                () = self.control.closed.cancelled() => {
                    self.forward_until_closed(inner).await;
                    return;
                }
                // The router is closing: commit what was acknowledged and end the front end's stream.
                () = self.shared.closed.cancelled() => {
                    self.control.close_current().await;
                    return;
                }
                // The front end dropped its subscription: leave the group now (as a backend's
                // member does), not at the next event, which for an idle partition never comes.
                () = self.events.closed() => {
                    self.control.close_current().await;
                    return;
                }
                changed = self.reads.changed() => match changed {
                    Ok(()) => (*self.reads.borrow_and_update() != self.region)
                        .then_some(Uncommitted::Oldest),
                    Err(_) => return,
                },
                _ = mirror_check.tick() => self.new_mirrors().await.map(Uncommitted::OldestIn),
                () = self.events.taken(), if self.events.room() == 0 => None,
                event = inner.recv(), if self.events.room() > 0 => match event {
                    Some(event) => {
                        if !self.forward(event) {
                            self.control.close_current().await;
                            return;
                        }
                        None
                    }
                    // The region's subscription ended on its own (its cluster failed it, perhaps
                    // before it could commit): start over.
                    None => {
                        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                        Some(Uncommitted::Oldest)
                    }
                },
            };
            if let Some(uncommitted) = resubscribe {
                match self.move_on(uncommitted).await {
                    Some(next) => inner = next,
                    None => return,
                }
            }
        }
    }

    /// The mirrors of the subscribed topics that appeared in this region since it subscribed, if any.
    async fn new_mirrors(&self) -> Option<Vec<String>> {
        let TopicSelector::Names(reading) = &self.reading else {
            // A pattern already covers mirrors that appear later.
            return None;
        };
        // Only in a healthy region, not one that may be failing: the question would wait for its
        // timeout while a switch waits for this task. Bounded by the probe timeout for the same reason.
        if self.shared.health(self.region) != super::RegionHealth::Healthy {
            return None;
        }
        let listed = tokio::time::timeout(
            self.shared.config.probe_timeout,
            existing(&self.shared, self.region, MIRROR_CHECK),
        );
        let Ok(Ok(existing)) = listed.await else {
            // The region does not answer now: its health decides about that.
            return None;
        };
        let TopicSelector::Names(now) = expand(&self.shared, self.region, &self.options, &existing)
        else {
            return None;
        };
        let appeared: Vec<String> = now
            .into_iter()
            .filter(|name| !reading.contains(name))
            .collect();
        if appeared.is_empty() {
            return None;
        }
        tracing::info!(mirrors = ?appeared, group = ?self.options.group, "new mirrors to read; subscribing again");
        Some(appeared)
    }

    /// After the front end's close: passes on what the region's subscription still says until its
    /// own close ends it (within [`CLOSE_DRAIN`]). Closing lets a member finish joining first, and
    /// the front end sees its assignment, as it would from the backend itself.
    async fn forward_until_closed(&mut self, mut inner: Events) {
        let _ = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(event) = inner.recv().await {
                if !self.forward(event) {
                    return;
                }
            }
        })
        .await;
    }

    /// Passes one event on, noting what it says; false once the front end is gone.
    fn forward(&mut self, event: SubscriptionEvent) -> bool {
        match &event {
            SubscriptionEvent::Assigned(partitions) => {
                self.assigned.extend(partitions.iter().cloned());
            }
            SubscriptionEvent::Revoked(partitions) => {
                for partition in partitions {
                    self.assigned.remove(partition);
                }
            }
            SubscriptionEvent::Records(records) => {
                self.control
                    .delivered(records.iter().map(|r| (r.topic_partition(), r.offset)));
                if let Some(newest) = records.iter().map(|r| r.timestamp_ms).max() {
                    self.last_timestamp =
                        Some(self.last_timestamp.map_or(newest, |t| t.max(newest)));
                }
            }
        }
        self.events.send(event).is_ok()
    }

    /// Retires this region's subscription and subscribes in the read region, retrying until it works
    /// or the subscription is closed.
    /// Partitions without a checkpoint or commit start as `uncommitted` says if the subscription
    /// stays in this region, and at their oldest record if it moves to another.
    async fn move_on(&mut self, uncommitted: Uncommitted) -> Option<Events> {
        let revoked: Vec<TopicPartition> = std::mem::take(&mut self.assigned).into_iter().collect();
        if !revoked.is_empty()
            && self
                .events
                .send(SubscriptionEvent::Revoked(revoked))
                .is_err()
        {
            self.control.close_current().await;
            return None;
        }
        let lost = !self.shared.health(self.region).usable();
        let leaving = self.control.retire_current(&self.shared, lost);
        // The old member commits and leaves first (within `RETIRE_TIMEOUT`) unless its region was
        // lost: staying in this region (new mirrors, or its subscription ended on its own), the
        // group is then idle when the new one sets its start positions; moving from a region that
        // still answers (a planned switch, a fail-back), its last commit there is what the new
        // region's start is brought over from (`fail_back`).
        if (*self.reads.borrow() == self.region || !lost)
            && let Some(leaving) = leaving
        {
            tokio::select! {
                _ = leaving => {}
                () = self.control.closed.cancelled() => return None,
                () = self.shared.closed.cancelled() => return None,
            }
        }
        // A plain reader resumes at the time it had reached: records are copied between regions with
        // their timestamps, offsets are not.
        let mut options = self.options.clone();
        if options.group.is_none()
            && let Some(timestamp) = self.last_timestamp
        {
            options.start = Position::Timestamp(timestamp);
        }
        loop {
            let region = *self.reads.borrow_and_update();
            let name = &self.shared.regions[region].name;
            let uncommitted = if region == self.region {
                uncommitted.clone()
            } else {
                Uncommitted::Oldest
            };
            match open(&self.shared, region, &options, uncommitted).await {
                Ok((subscription, reading)) => {
                    tracing::info!(region = %name, group = ?self.options.group, client = %self.options.client, "subscribed in the read region again");
                    self.region = region;
                    self.reading = reading;
                    if !self.control.install(subscription.control) {
                        return None;
                    }
                    return Some(subscription.events);
                }
                Err(error) => {
                    tracing::warn!(region = %name, %error, "subscribing in the read region failed; retrying");
                    tokio::select! {
                        () = self.control.closed.cancelled() => return None,
                        () = self.shared.closed.cancelled() => return None,
                        _ = self.reads.changed() => {}
                        () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
                    }
                }
            }
        }
    }
}
