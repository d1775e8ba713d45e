//! What the region router's handle, its probes, its steering and its subscriptions share: the
//! regions (their logs and health) and where traffic goes.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    copies::Copies,
    coverage::PairCoverage,
    health::{HealthMachine, RegionHealth},
    ledger::WriteLedger,
    naming::ReplicationPolicy,
    regional::RegionalLog,
    status::{RegionStatus, RoutingStatus, Switch},
};
use crate::{
    Error, Result,
    config::{RegionMode, RegionsConfig},
    log::now_ms,
    sync::lock,
};

/// Longest the old clients of a lost region may take to close (their cluster may not answer).
const OLD_CLIENTS_CLOSE: std::time::Duration = std::time::Duration::from_secs(30);

/// What the router's tasks and handles share.
pub(super) struct Shared {
    /// In order of preference: the preferred region first, then the failover order.
    pub(super) regions: Vec<Region>,
    pub(super) config: RegionsConfig,
    pub(super) policy: ReplicationPolicy,
    /// The region writes go to (an index into `regions`).
    pub(super) writes: watch::Sender<usize>,
    /// The region subscriptions and reads go to.
    pub(super) reads: watch::Sender<usize>,
    /// A region an operator chose, overriding health.
    pub(super) manual: Mutex<Option<usize>>,
    pub(super) last_switch: Mutex<Option<Switch>>,
    pub(super) switches: std::sync::atomic::AtomicU64,
    /// Woken when a region's health or the manual choice changes.
    pub(super) steer: Notify,
    pub(super) closed: CancellationToken,
    pub(super) tasks: TaskTracker,
    /// The writes in flight and acknowledged per region, and the hold of a planned switch.
    pub(super) ledger: Arc<WriteLedger>,
}

/// One region: its log and what the probes found.
pub(super) struct Region {
    pub(super) name: String,
    /// The clients of the region's log; rebuilt when the region is lost (see [`Region::rebuild`]).
    pub(super) clients: std::sync::RwLock<Arc<dyn RegionalLog>>,
    pub(super) health: Mutex<HealthMachine>,
    /// Why the region is in its state (the failure, or the recovery).
    pub(super) cause: Mutex<String>,
    /// When a client request's failure was last counted against the region; a burst of failures of
    /// one incident counts once per probe interval.
    pub(super) last_reported_failure: Mutex<Option<Instant>>,
    /// The region's topic names and when that reading began: every subscription looks for new
    /// mirrors in them, and one metadata request serves them all (see [`Region::topic_names`]).
    pub(super) topic_names: tokio::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    /// What the region holds of the others' writes ([`replication`](super::replication)).
    pub(super) copies: Mutex<Copies>,
}

impl Region {
    /// The names of the region's topics, by a reading younger than `max_age` or begun after this
    /// call: callers that arrive while one reading is under way share the next, so a burst of
    /// subscriptions (clients reconnecting after a switch) costs two metadata requests, not one each
    /// in turn, and `max_age` zero still sees every topic that existed when the call was made.
    pub(super) async fn topic_names(
        &self,
        max_age: std::time::Duration,
    ) -> Result<Arc<Vec<String>>> {
        let asked = Instant::now();
        let mut cached = self.topic_names.lock().await;
        if let Some((began, names)) = &*cached
            && (*began >= asked || began.elapsed() < max_age)
        {
            return Ok(names.clone());
        }
        let began = Instant::now();
        let topics = self.log().list_topics().await?;
        let names = Arc::new(
            topics
                .into_iter()
                .map(|topic| topic.name)
                .collect::<Vec<_>>(),
        );
        *cached = Some((began, names.clone()));
        Ok(names)
    }

    /// The region's clients now.
    pub(super) fn log(&self) -> Arc<dyn RegionalLog> {
        self.clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the clients of a lost region with new ones, and closes the old ones in the background.
    /// A cluster that comes back may be a different one (rebuilt, restored): clients that carried its
    /// old metadata (topic ids), producer ids and group generations into it could misbehave, and
    /// librdkafka has crashed on such metadata. Unacknowledged records of the old producer fail and
    /// are resent where writes went.
    pub(super) fn rebuild(&self, tasks: &TaskTracker) {
        let fresh = match self.log().reopen() {
            Ok(Some(fresh)) => fresh,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(region = %self.name, %error, "could not make new clients for a lost region; keeping the old ones");
                return;
            }
        };
        let old = std::mem::replace(
            &mut *self.clients.write().unwrap_or_else(PoisonError::into_inner),
            fresh,
        );
        let name = self.name.clone();
        tasks.spawn(async move {
            match tokio::time::timeout(OLD_CLIENTS_CLOSE, old.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(region = %name, %error, "closing the clients of a lost region");
                }
                Err(_) => tracing::warn!(region = %name, "the clients of a lost region did not close in time"),
            }
        });
    }
}

impl Shared {
    /// The names of the other regions than `region`.
    pub(super) fn others(&self, region: usize) -> Vec<&str> {
        self.regions
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != region)
            .map(|(_, other)| other.name.as_str())
            .collect()
    }

    pub(super) fn names(&self) -> Vec<&str> {
        self.regions.iter().map(|r| r.name.as_str()).collect()
    }

    pub(super) fn mode_name(&self) -> &'static str {
        match self.config.mode {
            RegionMode::ActivePassive => "active-passive",
            RegionMode::ActiveActive => "active-active",
        }
    }

    pub(super) fn index_of(&self, name: &str) -> Result<usize> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| Error::UnknownRegion {
                region: name.to_owned(),
                known: self.names().join(", "),
            })
    }

    pub(super) fn health(&self, index: usize) -> RegionHealth {
        lock(&self.regions[index].health).state()
    }

    pub(super) fn coverage(&self) -> Vec<PairCoverage> {
        self.regions
            .iter()
            .flat_map(|to| {
                lock(&to.copies)
                    .coverage()
                    .map(|(from, coverage)| PairCoverage {
                        from: from.clone(),
                        to: to.name.clone(),
                        groups: coverage.groups.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(super) fn status(&self) -> RoutingStatus {
        let writes = *self.writes.borrow();
        let reads = *self.reads.borrow();
        let now = Instant::now();
        let regions = self
            .regions
            .iter()
            .enumerate()
            .map(|(index, region)| {
                let health = lock(&region.health);
                let age = now.saturating_duration_since(health.since());
                RegionStatus {
                    name: region.name.clone(),
                    health: health.state(),
                    since_ms: now_ms() - age.as_millis() as i64,
                    cause: lock(&region.cause).clone(),
                    changes: health.changes(),
                    writes: index == writes,
                    reads: index == reads,
                    preferred: index == 0,
                    replication: lock(&region.copies).status(
                        self.regions
                            .iter()
                            .filter(|source| source.name != region.name)
                            .map(|source| source.name.as_str()),
                        now_ms(),
                        self.config.replication_stale_after.as_millis() as i64,
                    ),
                }
            })
            .collect();
        RoutingStatus {
            mode: self.mode_name(),
            regions,
            manual: lock(&self.manual).map(|index| self.regions[index].name.clone()),
            switches: self.switches.load(std::sync::atomic::Ordering::Relaxed),
            last_switch: lock(&self.last_switch).clone(),
        }
    }
}
