//! The in-flight window of one subscriber: an [`AckTracker`] per held partition, the count of records
//! delivered and not acknowledged, and what was last committed. Front ends ack through it from any
//! task while the backend's read loop delivers; one lock keeps the count and the trackers in step.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::{Notify, futures::Notified};

use crate::log::{AckOutcome, Record, TopicPartition, acks::AckTracker};

#[derive(Debug)]
struct Held {
    tracker: AckTracker,
    /// Last offset stored for the group, so commits that would change nothing are skipped.
    committed: Option<i64>,
}

impl Held {
    fn commit_due(&self) -> Option<i64> {
        let offset = self.tracker.committable();
        (self.committed != Some(offset)).then_some(offset)
    }
}

#[derive(Debug, Default)]
struct WindowState {
    held: HashMap<TopicPartition, Held>,
    in_flight: usize,
}

/// Shared by a backend's read loop (which delivers) and the control handle (which acks).
#[derive(Debug)]
pub(crate) struct AckWindow {
    state: Mutex<WindowState>,
    /// Woken on every ack (and by the backend when it must look again), so a full window resumes.
    acked: Notify,
    max_in_flight: usize,
    /// Set when the subscriber gave the member up without committing (its cluster was lost): no
    /// commit may reach whatever cluster answers at that address later.
    abandoned: AtomicBool,
}

impl AckWindow {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Self {
            state: Mutex::default(),
            acked: Notify::new(),
            max_in_flight,
            abandoned: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        // Poisoning means a panic elsewhere; every update below leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// How many more records may be delivered now.
    pub(crate) fn space(&self) -> usize {
        self.max_in_flight.saturating_sub(self.lock().in_flight)
    }

    /// Delivered records not acknowledged yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().in_flight
    }

    pub(crate) fn holds(&self, partition: &TopicPartition) -> bool {
        self.lock().held.contains_key(partition)
    }

    /// The partitions held, in no order.
    pub(crate) fn held_partitions(&self) -> Vec<TopicPartition> {
        self.lock().held.keys().cloned().collect()
    }

    /// The next offset to deliver from `partition`, if held.
    pub(crate) fn position(&self, partition: &TopicPartition) -> Option<i64> {
        self.lock()
            .held
            .get(partition)
            .map(|held| held.tracker.position())
    }

    /// Takes `partition` on at `position`; `committed` is the group's stored offset when the start
    /// came from it (nothing to commit until it moves).
    pub(crate) fn hold(&self, partition: TopicPartition, position: i64, committed: Option<i64>) {
        let mut state = self.lock();
        let previous = state.held.insert(
            partition,
            Held {
                tracker: AckTracker::starting_at(position),
                committed,
            },
        );
        if let Some(previous) = previous {
            state.in_flight -= previous.tracker.outstanding();
        }
    }

    /// Lets partitions go, forgetting their outstanding records. Returns the acknowledged prefix of
    /// each that moved since its last commit (nothing once abandoned), for the caller to commit.
    pub(crate) fn release(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let abandoned = self.is_abandoned();
        let mut due = Vec::new();
        {
            let mut state = self.lock();
            for partition in partitions {
                if let Some(held) = state.held.remove(partition) {
                    state.in_flight -= held.tracker.outstanding();
                    if let Some(offset) = held.commit_due().filter(|_| !abandoned) {
                        due.push((partition.clone(), offset));
                    }
                }
            }
        }
        self.wake();
        due
    }

    /// Moves `partition`'s position, forgetting its outstanding records; false when not held.
    pub(crate) fn seek(&self, partition: &TopicPartition, position: i64) -> bool {
        let sought = {
            let mut state = self.lock();
            let forgotten = state
                .held
                .get_mut(partition)
                .map(|held| held.tracker.seek(position));
            if let Some(forgotten) = forgotten {
                state.in_flight -= forgotten;
            }
            forgotten.is_some()
        };
        self.wake();
        sought
    }

    /// Takes records off the front of `buffer` for delivery while the window has room, at most
    /// `room` (what the subscriber's queue can take, [`crate::log::events`]), under one lock: those
    /// of held partitions at or past their position (others are dropped: fetched before a seek, or
    /// after a revocation). A partition not held yet is taken on at its first record when `adopt`
    /// says so (assigned without a known start). Returns what to hand to the subscriber.
    pub(crate) fn deliver_from(
        &self,
        buffer: &mut VecDeque<Record>,
        room: usize,
        mut adopt: impl FnMut(&TopicPartition) -> bool,
    ) -> Vec<Record> {
        let mut batch = Vec::new();
        let mut state = self.lock();
        let WindowState { held, in_flight } = &mut *state;
        while *in_flight < self.max_in_flight && batch.len() < room {
            let Some(record) = buffer.pop_front() else {
                break;
            };
            let partition = record.topic_partition();
            let held = match held.get_mut(&partition) {
                Some(held) => held,
                None if adopt(&partition) => held.entry(partition).or_insert(Held {
                    tracker: AckTracker::starting_at(record.offset),
                    committed: None,
                }),
                None => continue,
            };
            if record.offset < held.tracker.position() {
                continue;
            }
            held.tracker.delivered(record.offset);
            *in_flight += 1;
            batch.push(record);
        }
        batch
    }

    /// Marks one delivered record acknowledged and wakes the read loop.
    pub(crate) fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        if self.acknowledge(partition, |tracker| usize::from(tracker.ack(offset))) > 0 {
            AckOutcome::Acked
        } else {
            AckOutcome::Ignored
        }
    }

    /// Marks delivered records of one partition acknowledged, under one lock, and wakes the read
    /// loop once; returns how many were outstanding.
    pub(crate) fn ack_all(&self, partition: &TopicPartition, offsets: &[i64]) -> usize {
        self.acknowledge(partition, |tracker| {
            offsets
                .iter()
                .filter(|&&offset| tracker.ack(offset))
                .count()
        })
    }

    /// Marks the delivered records of one partition from `first` to `last` acknowledged, under
    /// one lock, and wakes the read loop once; returns how many were outstanding.
    pub(crate) fn ack_range(&self, partition: &TopicPartition, first: i64, last: i64) -> usize {
        self.acknowledge(partition, |tracker| tracker.ack_range(first, last))
    }

    /// Applies `take` (which returns how many records it acknowledged) to the tracker of a held
    /// partition under the lock, takes those records off the in-flight count, and wakes the read
    /// loop if there were any. Nothing is acknowledged of a partition not held.
    fn acknowledge(
        &self,
        partition: &TopicPartition,
        take: impl FnOnce(&mut AckTracker) -> usize,
    ) -> usize {
        let acked = {
            let mut state = self.lock();
            let acked = state
                .held
                .get_mut(partition)
                .map_or(0, |held| take(&mut held.tracker));
            state.in_flight -= acked;
            acked
        };
        if acked > 0 {
            self.acked.notify_one();
        }
        acked
    }

    /// Resolves at the next ack (or [`AckWindow::wake`]).
    pub(crate) fn acked(&self) -> Notified<'_> {
        self.acked.notified()
    }

    /// Makes the read loop look again (a partition was released or sought).
    pub(crate) fn wake(&self) {
        self.acked.notify_one();
    }

    /// The acknowledged prefix of every held partition `include` accepts that moved since its last
    /// commit; nothing once abandoned.
    pub(crate) fn commit_due(
        &self,
        include: impl Fn(&TopicPartition) -> bool,
    ) -> Vec<(TopicPartition, i64)> {
        if self.is_abandoned() {
            return Vec::new();
        }
        self.lock()
            .held
            .iter()
            .filter(|(partition, _)| include(partition))
            .filter_map(|(partition, held)| Some((partition.clone(), held.commit_due()?)))
            .collect()
    }

    /// Records a commit made (or, for an asynchronous one, sent: a failure comes back through
    /// [`AckWindow::commit_failed`]).
    pub(crate) fn committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut state = self.lock();
        for (partition, offset) in offsets {
            if let Some(held) = state.held.get_mut(partition) {
                held.committed = Some(*offset);
            }
        }
    }

    /// Forgets what was marked committed (an asynchronous commit failed), so the next commit sends
    /// these partitions' offsets again.
    pub(crate) fn commit_failed(&self, partitions: &[TopicPartition]) {
        let mut state = self.lock();
        for partition in partitions {
            if let Some(held) = state.held.get_mut(partition) {
                held.committed = None;
            }
        }
    }

    /// No commit of this subscriber may happen from now on.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(index: i32) -> TopicPartition {
        TopicPartition::new("t", index)
    }

    /// Offers one record; true when it was delivered.
    fn offer(window: &AckWindow, partition: i32, offset: i64) -> bool {
        let mut buffer = VecDeque::from([record(partition, offset)]);
        !window
            .deliver_from(&mut buffer, usize::MAX, |_| false)
            .is_empty()
    }

    #[test]
    fn the_window_counts_what_is_delivered_and_not_acked() {
        let window = AckWindow::new(2);
        window.hold(partition(0), 5, None);
        assert!(offer(&window, 0, 5));
        assert!(offer(&window, 0, 6));
        assert_eq!(window.space(), 0);
        assert!(!offer(&window, 1, 0), "not held");
        assert_eq!(window.ack(&partition(0), 6), AckOutcome::Acked);
        assert_eq!(window.ack(&partition(0), 6), AckOutcome::Ignored);
        assert_eq!(window.space(), 1);
        // Only the contiguous acknowledged prefix is committable: 5 is still out.
        assert_eq!(window.commit_due(|_| true), vec![(partition(0), 5)]);
        window.ack(&partition(0), 5);
        assert_eq!(window.commit_due(|_| true), vec![(partition(0), 7)]);
        window.committed(&[(partition(0), 7)]);
        assert!(window.commit_due(|_| true).is_empty());
        window.commit_failed(&[partition(0)]);
        assert_eq!(window.commit_due(|_| true), vec![(partition(0), 7)]);
    }

    #[test]
    fn acks_of_one_partition_at_once_count_only_what_was_outstanding() {
        let window = AckWindow::new(10);
        window.hold(partition(0), 0, None);
        for offset in 0..4 {
            assert!(offer(&window, 0, offset));
        }
        // 9 was never delivered and 1 is named twice: neither frees a second place.
        assert_eq!(window.ack_all(&partition(0), &[0, 1, 1, 9]), 2);
        assert_eq!(window.outstanding(), 2);
        assert_eq!(window.ack_all(&partition(1), &[2, 3]), 0, "not held");
        assert_eq!(window.ack_all(&partition(0), &[3, 2]), 2);
        assert_eq!(window.outstanding(), 0);
        assert_eq!(window.commit_due(|_| true), vec![(partition(0), 4)]);
    }

    #[test]
    fn a_start_from_the_stored_offset_is_not_committed_again() {
        let window = AckWindow::new(10);
        window.hold(partition(0), 3, Some(3));
        window.hold(partition(1), 3, None);
        assert_eq!(window.commit_due(|_| true), vec![(partition(1), 3)]);
    }

    #[test]
    fn seek_and_release_forget_outstanding_records() {
        let window = AckWindow::new(10);
        window.hold(partition(0), 0, None);
        window.hold(partition(1), 0, None);
        for offset in 0..3 {
            assert!(offer(&window, 0, offset) && offer(&window, 1, offset));
        }
        window.ack(&partition(1), 0);
        assert_eq!(window.outstanding(), 5);
        assert!(window.seek(&partition(0), 10));
        assert!(!offer(&window, 0, 2), "behind the position");
        assert_eq!(window.outstanding(), 2);
        assert_eq!(window.release(&[partition(1)]), vec![(partition(1), 1)]);
        assert_eq!(window.outstanding(), 0);
        assert_eq!(window.ack(&partition(1), 1), AckOutcome::Ignored);
    }

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: std::sync::Arc::from("t"),
            partition,
            offset,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp_ms: 0,
            courier_id: String::new(),
            origin: String::new(),
        }
    }

    #[test]
    fn buffered_records_are_delivered_within_the_window() {
        let window = AckWindow::new(3);
        window.hold(partition(0), 5, None);
        // 4 is behind the position, partition 1 is adopted, partition 2 is not held.
        let mut buffer: VecDeque<Record> = [
            record(0, 4),
            record(0, 5),
            record(2, 0),
            record(1, 9),
            record(0, 6),
            record(0, 7),
        ]
        .into_iter()
        .collect();
        let delivered = window.deliver_from(&mut buffer, usize::MAX, |p| p.partition == 1);
        let got: Vec<(i32, i64)> = delivered.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(got, vec![(0, 5), (1, 9), (0, 6)]);
        assert_eq!(buffer.len(), 1, "the window is full: the rest waits");
        assert_eq!(window.outstanding(), 3);
        assert_eq!(window.position(&partition(1)), Some(10));
    }

    #[test]
    fn an_abandoned_window_commits_nothing() {
        let window = AckWindow::new(10);
        window.hold(partition(0), 4, None);
        window.abandon();
        assert!(window.commit_due(|_| true).is_empty());
        assert!(window.release(&[partition(0)]).is_empty());
    }
}
