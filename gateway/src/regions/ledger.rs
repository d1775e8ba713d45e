//! What the router's produce path keeps for a planned switch ([`planned`](super::planned)): the
//! writes queued in each region and not yet settled, the newest offset acknowledged per partition,
//! and whether writes are held.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering, fence},
    },
};

use tokio::sync::{MutexGuard, watch};

use crate::{
    log::{Appended, TopicPartition},
    sync::lock,
};

/// Writes in flight and acknowledged per region, and the hold of a planned switch.
#[derive(Debug)]
pub(super) struct WriteLedger {
    /// Per region: writes queued there and not yet settled.
    in_flight: Vec<AtomicUsize>,
    /// Per region: topic → partition → newest offset acknowledged through this gateway.
    acked: Vec<Mutex<BTreeMap<String, BTreeMap<i32, i64>>>>,
    /// Writes are held while this is true.
    held: watch::Sender<bool>,
    /// Writes that found writes held.
    waited: AtomicUsize,
    /// One planned switch at a time.
    switching: tokio::sync::Mutex<()>,
}

impl WriteLedger {
    pub(super) fn new(regions: usize) -> Self {
        Self {
            in_flight: (0..regions).map(|_| AtomicUsize::new(0)).collect(),
            acked: (0..regions).map(|_| Default::default()).collect(),
            held: watch::Sender::new(false),
            waited: AtomicUsize::new(0),
            switching: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits while writes are held.
    pub(super) async fn admit(&self) {
        let mut held = self.held.subscribe();
        if !*held.borrow_and_update() {
            return;
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        // The sender lives as long as the ledger: an error cannot happen while a write waits.
        let _ = held.wait_for(|held| !held).await;
    }

    /// A write about to be queued in `region`, counted until the guard drops; `None` when writes
    /// became held meanwhile (the write waits again).
    pub(super) fn queued(self: &Arc<Self>, region: usize) -> Option<InFlight> {
        self.in_flight[region].fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight {
            ledger: self.clone(),
            region,
        };
        // Pairs with the fence in `Hold::new`: either the switch sees this write in flight, or
        // this write sees the hold.
        fence(Ordering::SeqCst);
        (!*self.held.borrow()).then_some(in_flight)
    }

    /// One planned switch at a time: held while one runs.
    pub(super) async fn one_switch_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.switching.lock().await
    }

    /// Holds writes until the guard drops.
    pub(super) fn hold(&self) -> Hold<'_> {
        Hold::new(self)
    }

    /// Writes queued in `region` and not yet settled.
    pub(super) fn in_flight(&self, region: usize) -> usize {
        self.in_flight[region].load(Ordering::SeqCst)
    }

    /// Writes that found writes held since the last hold began.
    pub(super) fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed) as u64
    }

    /// The newest offset acknowledged in `region`, per partition written through this gateway.
    pub(super) fn acknowledged_in(&self, region: usize) -> Vec<(TopicPartition, i64)> {
        lock(&self.acked[region])
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions.iter().map(|(partition, offset)| {
                    (TopicPartition::new(topic.as_str(), *partition), *offset)
                })
            })
            .collect()
    }

    /// Forgets what `region` acknowledged (a planned switch accounted for it).
    pub(super) fn forget(&self, region: usize) {
        lock(&self.acked[region]).clear();
    }

    /// Records what `region` acknowledged of a write to `topic`.
    pub(super) fn acknowledged(&self, region: usize, topic: &str, appended: &[Appended]) {
        let mut acked = lock(&self.acked[region]);
        let partitions = match acked.get_mut(topic) {
            Some(partitions) => partitions,
            None => acked.entry(topic.to_owned()).or_default(),
        };
        for record in appended {
            let newest = partitions.entry(record.partition).or_insert(record.offset);
            *newest = (*newest).max(record.offset);
        }
    }
}

/// A write queued in a region, until it settles.
pub(super) struct InFlight {
    ledger: Arc<WriteLedger>,
    region: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ledger.in_flight[self.region].fetch_sub(1, Ordering::SeqCst);
    }
}

/// Releases held writes when dropped: a switch that ends any way (finished, cut off, panicked)
/// never leaves writes held.
pub(super) struct Hold<'a>(&'a WriteLedger);

impl<'a> Hold<'a> {
    fn new(ledger: &'a WriteLedger) -> Self {
        ledger.waited.store(0, Ordering::Relaxed);
        ledger.held.send_replace(true);
        // Pairs with the fence in `WriteLedger::queued`: a write either sees the hold or is
        // counted in flight before the switch looks.
        fence(Ordering::SeqCst);
        Self(ledger)
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.held.send_replace(false);
    }
}
