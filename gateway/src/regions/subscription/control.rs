//! The control a front end holds on a routed subscription: acknowledgements go to the region
//! subscription that delivered the record, including one replaced since (its deliveries are
//! remembered while `RETIRED_KEPT` newer ones have not replaced it).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::super::shared::Shared;
use crate::{
    Result,
    log::{self, AckOutcome, Position, SubscriptionControl, TopicPartition, acks},
    sync::lock,
};

/// How long a replaced subscription may take to commit and leave (its region may be gone).
const RETIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Replaced subscriptions whose deliveries are still remembered for acks.
const RETIRED_KEPT: usize = 8;

/// One region's subscription control and what it delivered that is not acknowledged yet.
#[derive(Debug)]
struct Generation {
    control: Option<Arc<dyn SubscriptionControl>>,
    delivered: HashMap<TopicPartition, BTreeSet<i64>>,
}

impl Generation {
    pub(super) fn new(control: Arc<dyn SubscriptionControl>) -> Self {
        Self {
            control: Some(control),
            delivered: HashMap::new(),
        }
    }

    /// Did this generation deliver `offset` of `partition` (not yet acknowledged)?
    fn holds(&self, partition: &TopicPartition, offset: i64) -> bool {
        self.delivered
            .get(partition)
            .is_some_and(|offsets| offsets.contains(&offset))
    }

    /// Takes the offsets this generation delivered of `partition` from `first` to `last`.
    fn take_range(&mut self, partition: &TopicPartition, first: i64, last: i64) -> Vec<i64> {
        let Some(offsets) = self.delivered.get_mut(partition) else {
            return Vec::new();
        };
        let taken = acks::take_range(offsets, first, last);
        if offsets.is_empty() {
            self.delivered.remove(partition);
        }
        taken
    }

    /// Takes a delivery off the books; true when it was on them.
    fn take(&mut self, partition: &TopicPartition, offset: i64) -> bool {
        let Some(offsets) = self.delivered.get_mut(partition) else {
            return false;
        };
        let taken = offsets.remove(&offset);
        if offsets.is_empty() {
            self.delivered.remove(partition);
        }
        taken
    }
}

#[derive(Debug)]
struct Generations {
    current: Generation,
    /// Replaced ones, oldest first.
    retired: Vec<Generation>,
}

/// The control the front end holds: acks go to the region subscription that delivered the record.
#[derive(Debug)]
pub(super) struct RoutedControl {
    generations: Mutex<Generations>,
    pub(super) closed: CancellationToken,
}

impl RoutedControl {
    pub(super) fn new(control: Arc<dyn SubscriptionControl>) -> Self {
        Self {
            generations: Mutex::new(Generations {
                current: Generation::new(control),
                retired: Vec::new(),
            }),
            closed: CancellationToken::new(),
        }
    }

    pub(super) fn current(&self) -> Option<Arc<dyn SubscriptionControl>> {
        lock(&self.generations).current.control.clone()
    }

    pub(super) fn delivered(&self, records: impl Iterator<Item = (TopicPartition, i64)>) {
        let mut generations = lock(&self.generations);
        for (partition, offset) in records {
            generations
                .current
                .delivered
                .entry(partition)
                .or_default()
                .insert(offset);
        }
    }

    /// Moves the current subscription to the retired ones and closes it in the background: it commits
    /// what was acknowledged when its region still answers, and is abandoned without a commit when its
    /// region was `lost` (the groups' positions there come back through MirrorMaker 2's checkpoints).
    /// Returns the closing task.
    pub(super) fn retire_current(
        &self,
        shared: &Shared,
        lost: bool,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let control = {
            let mut generations = lock(&self.generations);
            let control = generations.current.control.take();
            let delivered = std::mem::take(&mut generations.current.delivered);
            generations.retired.push(Generation {
                control: control.clone(),
                delivered,
            });
            if generations.retired.len() > RETIRED_KEPT {
                generations.retired.remove(0);
            }
            control
        };
        control.map(|control| {
            shared.tasks.spawn(async move {
                let leaving = async {
                    if lost {
                        control.abandon().await
                    } else {
                        control.close().await
                    }
                };
                match tokio::time::timeout(RETIRE_TIMEOUT, leaving).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "closing a subscription in the region left behind failed; its unacknowledged records will be delivered again"),
                    Err(_) => tracing::warn!("closing a subscription in the region left behind timed out"),
                }
            })
        })
    }

    /// Makes `control` current; false (and closes it) when the subscription was closed meanwhile.
    pub(super) fn install(&self, control: Arc<dyn SubscriptionControl>) -> bool {
        if self.closed.is_cancelled() {
            tokio::spawn(async move { control.close().await });
            return false;
        }
        lock(&self.generations).current = Generation::new(control);
        true
    }

    pub(super) async fn close_current(&self) {
        if let Some(control) = self.current()
            && let Err(error) = control.close().await
        {
            tracing::warn!(%error, "closing a region's subscription failed");
        }
    }
}

#[async_trait]
impl SubscriptionControl for RoutedControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        let control = {
            let mut generations = lock(&self.generations);
            // The oldest delivery of this record first: clients ack in the order they received.
            let retired = generations.retired.iter_mut().find_map(|generation| {
                generation
                    .take(partition, offset)
                    .then(|| generation.control.clone())
            });
            generations
                .retired
                .retain(|generation| !generation.delivered.is_empty());
            match retired {
                Some(control) => control,
                None if generations.current.take(partition, offset) => {
                    generations.current.control.clone()
                }
                None => return AckOutcome::Ignored,
            }
        };
        control.map_or(AckOutcome::Ignored, |control| {
            control.ack(partition, offset)
        })
    }

    /// A range that starts and ends at records one generation delivered (a run of one batch, as
    /// clients send) is taken whole from the oldest such generation: offsets of two regions are
    /// unrelated, so a gap in it must not acknowledge the other region's record. Any other range
    /// is taken offset by offset, as single acks are.
    fn ack_range(&self, partition: &TopicPartition, first: i64, last: i64) -> usize {
        if last < first {
            return 0;
        }
        let found = {
            let mut generations = lock(&self.generations);
            let generations = &mut *generations;
            let bounded = |generation: &Generation| {
                generation.holds(partition, first) && generation.holds(partition, last)
            };
            let found = match generations.retired.iter_mut().find(|g| bounded(g)) {
                Some(generation) => Some(generation),
                None if bounded(&generations.current) => Some(&mut generations.current),
                None => None,
            }
            .map(|generation| {
                let taken = generation.take_range(partition, first, last);
                (generation.control.clone(), taken)
            });
            generations
                .retired
                .retain(|generation| !generation.delivered.is_empty());
            found
        };
        match found {
            Some((control, offsets)) => {
                control.map_or(0, |control| control.ack_all(partition, &offsets))
            }
            None => log::ack_range_by_offsets(self, partition, first, last),
        }
    }

    async fn seek(&self, partition: &TopicPartition, position: Position) -> Result<()> {
        let control = {
            let mut generations = lock(&self.generations);
            generations.current.delivered.remove(partition);
            generations.current.control.clone()
        };
        match control {
            Some(control) => control.seek(partition, position).await,
            None => Err(crate::Error::RegionUnavailable {
                region: "read".into(),
                reason: "the subscription is moving to another region; seek again".into(),
            }),
        }
    }

    fn outstanding(&self) -> usize {
        self.current().map_or(0, |control| control.outstanding())
    }

    async fn commit(&self) -> Result<()> {
        match self.current() {
            Some(control) => control.commit().await,
            None => Ok(()),
        }
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        match self.current() {
            Some(control) => control.close().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region's subscription control that records what it was asked to acknowledge.
    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<i64>>);

    #[async_trait]
    impl SubscriptionControl for Recorded {
        fn ack(&self, _: &TopicPartition, offset: i64) -> AckOutcome {
            lock(&self.0).push(offset);
            AckOutcome::Acked
        }

        async fn seek(&self, _: &TopicPartition, _: Position) -> Result<()> {
            Ok(())
        }

        fn outstanding(&self) -> usize {
            0
        }

        async fn commit(&self) -> Result<()> {
            Ok(())
        }

        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    /// A range from the region left behind acknowledges what that region delivered in it and
    /// nothing of the new region's, whose offsets fall in its gaps; the new region's own range
    /// then acknowledges its records.
    #[test]
    fn a_range_is_acknowledged_in_the_region_that_delivered_it() {
        let partition = TopicPartition::new("orders", 0);
        let (old, new) = (Arc::new(Recorded::default()), Arc::new(Recorded::default()));
        let routed = RoutedControl::new(old.clone());
        routed.delivered([(partition.clone(), 100), (partition.clone(), 103)].into_iter());
        {
            let mut generations = lock(&routed.generations);
            let retired = std::mem::replace(&mut generations.current, Generation::new(new.clone()));
            generations.retired.push(retired);
        }
        routed.delivered((99..=104).map(|offset| (partition.clone(), offset)));

        assert_eq!(routed.ack_range(&partition, 100, 103), 2);
        assert_eq!(*lock(&old.0), vec![100, 103]);
        assert!(
            lock(&new.0).is_empty(),
            "the new region's 101 and 102 are not the client's yet"
        );

        assert_eq!(routed.ack_range(&partition, 99, 104), 6);
        assert_eq!(*lock(&new.0), (99..=104).collect::<Vec<_>>());
        assert_eq!(routed.ack_range(&partition, 99, 104), 0, "once");
    }

    /// A range no one generation bounds is taken offset by offset; one the new region bounds is
    /// the new region's even while the region left behind still has records in it.
    #[test]
    fn a_range_across_regions_is_taken_offset_by_offset() {
        let partition = TopicPartition::new("orders", 0);
        let (old, new) = (Arc::new(Recorded::default()), Arc::new(Recorded::default()));
        let routed = RoutedControl::new(old.clone());
        routed.delivered(
            [100, 103]
                .map(|offset| (partition.clone(), offset))
                .into_iter(),
        );
        {
            let mut generations = lock(&routed.generations);
            let retired = std::mem::replace(&mut generations.current, Generation::new(new.clone()));
            generations.retired.push(retired);
        }
        routed.delivered((99..=104).map(|offset| (partition.clone(), offset)));

        // The new region's batch first: it bounds 99..=104, the old one does not.
        assert_eq!(routed.ack_range(&partition, 99, 104), 6);
        assert_eq!(*lock(&new.0), (99..=104).collect::<Vec<_>>());
        assert!(
            lock(&old.0).is_empty(),
            "the old region's 100 and 103 are not acknowledged"
        );

        // 100 from the old region and 101..=104 from the new, in one range (the old region's 103
        // acknowledged alone first, so no offset of the range is both regions').
        assert_eq!(routed.ack(&partition, 103), AckOutcome::Acked);
        routed.delivered((101..=104).map(|offset| (partition.clone(), offset)));
        lock(&old.0).clear();
        lock(&new.0).clear();
        assert_eq!(routed.ack_range(&partition, 100, 104), 5);
        assert_eq!(*lock(&old.0), vec![100]);
        assert_eq!(*lock(&new.0), (101..=104).collect::<Vec<_>>());
    }
}
