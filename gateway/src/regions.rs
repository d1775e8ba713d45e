//! Region-aware routing: a [`Log`] over one log per region (a Kafka cluster each in production; any
//! [`RegionalLog`]), which moves traffic to another region when one is lost and back when it returns.
//!
//! MirrorMaker 2 copies topic `T` of region `a` into every other region as `a.T` (default replication
//! policy) and checkpoints `a`'s consumer groups there. The router:
//! - probes every region and keeps its health ([`health`]): HEALTHY -> SUSPECT -> DOWN -> RECOVERING
//!   -> HEALTHY, with hysteresis both ways;
//! - steers ([`steer`]) writes and reads to the preferred region (the primary in active-passive mode,
//!   the gateway's own region in active-active mode), or, while it is not usable, to the next usable
//!   region; failing back waits for the hold-down, producers first, then consumers;
//! - resends records whose region was lost before it acknowledged them ([`produce`]), with their
//!   `courier-id`, so a client sees one acknowledgement and a reader can drop duplicates;
//! - reads, in a region, each topic and its mirrors from the other regions, a consumer group starting
//!   on the mirrors where MirrorMaker 2's checkpoints put it ([`translate`], [`checkpoint`]), and moves
//!   subscriptions across regions without the front end noticing more than a revocation
//!   ([`subscription`]);
//! - answers operators: each region's state, the last switch and its cause, and a manual switch.

pub mod checkpoint;
pub mod health;
mod naming;
mod produce;
pub mod regional;
mod steer;
mod subscription;
mod translate;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use async_trait::async_trait;
use serde::Serialize;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{health::HealthMachine, naming::ReplicationPolicy};
pub use self::{health::RegionHealth, regional::RegionalLog};
use crate::{
    Error, Result,
    config::{GroupsConfig, RegionMode, RegionsConfig, TopicsConfig},
    log::{
        AppendReceipt, FetchLimits, Fetched, GroupDescription, Kafka, Log, NewRecord, Position,
        SubscribeOptions, Subscription, TopicDescription, TopicPartition, TopicSpec, TopicSummary,
        layers::TopicPolicy, now_ms,
    },
    sync::lock,
};

/// Longest the old clients of a lost region may take to close (their cluster may not answer).
const OLD_CLIENTS_CLOSE: std::time::Duration = std::time::Duration::from_secs(30);

/// The region router. Cheap to clone.
#[derive(Clone)]
pub struct Regions {
    shared: Arc<Shared>,
}

impl fmt::Debug for Regions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Regions")
            .field("regions", &self.shared.names())
            .finish_non_exhaustive()
    }
}

/// What the router's tasks and handles share.
struct Shared {
    /// In order of preference: the preferred region first, then the failover order.
    regions: Vec<Region>,
    config: RegionsConfig,
    policy: ReplicationPolicy,
    /// The region writes go to (an index into `regions`).
    writes: watch::Sender<usize>,
    /// The region subscriptions and reads go to.
    reads: watch::Sender<usize>,
    /// A region an operator chose, overriding health.
    manual: Mutex<Option<usize>>,
    last_switch: Mutex<Option<Switch>>,
    switches: std::sync::atomic::AtomicU64,
    /// Woken when a region's health or the manual choice changes.
    steer: Notify,
    closed: CancellationToken,
    tasks: TaskTracker,
}

/// One region: its log and what the probes found.
struct Region {
    name: String,
    /// The clients of the region's log; rebuilt when the region is lost (see [`Region::rebuild`]).
    clients: std::sync::RwLock<Arc<dyn RegionalLog>>,
    health: Mutex<HealthMachine>,
    /// Why the region is in its state (the failure, or the recovery).
    cause: Mutex<String>,
    /// When a client request's failure was last counted against the region; a burst of failures of
    /// one incident counts once per probe interval.
    last_reported_failure: Mutex<Option<Instant>>,
    /// The region's topic names and when that reading began: every subscription looks for new
    /// mirrors in them, and one metadata request serves them all (see [`Region::topic_names`]).
    topic_names: tokio::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>,
}

/// Which traffic a switch moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// Produced records.
    Writes,
    /// Subscriptions, fetches and admin reads.
    Reads,
}

impl Traffic {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writes => "writes",
            Self::Reads => "reads",
        }
    }
}

/// A change of the region traffic goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// What moved.
    pub traffic: Traffic,
    /// The region traffic left.
    pub from: String,
    /// The region traffic went to.
    pub to: String,
    /// Why.
    pub cause: String,
}

/// One region, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionStatus {
    /// The region's name.
    pub name: String,
    /// Its health.
    pub health: RegionHealth,
    /// Since when, in ms since the epoch.
    pub since_ms: i64,
    /// Why it is in that state.
    pub cause: String,
    /// Changes of its health since the gateway started.
    pub changes: u64,
    /// Whether writes go to it.
    pub writes: bool,
    /// Whether reads go to it.
    pub reads: bool,
    /// Whether it is the region traffic prefers.
    pub preferred: bool,
}

/// The router as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutingStatus {
    /// `active-passive` or `active-active`.
    pub mode: &'static str,
    /// Every region, preferred first.
    pub regions: Vec<RegionStatus>,
    /// The region an operator pinned traffic to, if any.
    pub manual: Option<String>,
    /// Switches of writes or reads since the gateway started.
    pub switches: u64,
    /// The last switch.
    pub last_switch: Option<Switch>,
}

impl Regions {
    /// Makes a Kafka client per region, each under the topic policy, and starts probing them. The
    /// router expects requests checked already: serve it under
    /// [`Validated`](crate::log::layers::Validated). No region needs to answer yet: a region that
    /// does not is found DOWN by its probes and traffic goes elsewhere. `local` is the region this
    /// gateway runs in (the preferred one in active-active mode, and the default primary).
    pub fn open(
        config: &RegionsConfig,
        local: &str,
        topics: TopicsConfig,
        groups: GroupsConfig,
    ) -> Result<Self> {
        let mut logs: BTreeMap<String, Arc<dyn RegionalLog>> = BTreeMap::new();
        for (name, kafka_config) in &config.regions {
            let kafka = Kafka::open(kafka_config, topics.clone(), groups.clone(), name)?;
            // The topic policy per region: a write resent to another region creates its topic there.
            let log = TopicPolicy::new(kafka, topics.auto_create);
            logs.insert(name.clone(), Arc::new(log));
        }
        Self::over(config, local, logs)
    }

    /// The router over `logs`, one per region by name, and starts probing them; `config.regions`
    /// (the Kafka settings) is not read. Any backend can be a region: tests route over embedded logs.
    pub fn over(
        config: &RegionsConfig,
        local: &str,
        mut logs: BTreeMap<String, Arc<dyn RegionalLog>>,
    ) -> Result<Self> {
        let names: Vec<String> = logs.keys().cloned().collect();
        let order = preference_order(config, &names, local)?;
        let now = Instant::now();
        let mut regions = Vec::with_capacity(order.len());
        for name in order {
            let Some(log) = logs.remove(&name) else {
                continue;
            };
            regions.push(Region {
                clients: std::sync::RwLock::new(log),
                health: Mutex::new(HealthMachine::new(config.down_after, config.hold_down, now)),
                cause: Mutex::new("not probed yet".into()),
                last_reported_failure: Mutex::new(None),
                topic_names: tokio::sync::Mutex::new(None),
                name,
            });
        }
        for region in &regions {
            metrics::gauge!(crate::metrics::names::REGION_UP, "region" => region.name.clone())
                .set(1.0);
        }
        let shared = Arc::new(Shared {
            regions,
            policy: ReplicationPolicy::new(
                config.replication_policy,
                &config.replication_separator,
            ),
            config: config.clone(),
            writes: watch::Sender::new(0),
            reads: watch::Sender::new(0),
            manual: Mutex::new(None),
            last_switch: Mutex::new(None),
            switches: std::sync::atomic::AtomicU64::new(0),
            steer: Notify::new(),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        steer::start(&shared);
        tracing::info!(regions = ?shared.names(), mode = shared.mode_name(), "region router started");
        Ok(Self { shared })
    }

    /// Each region's state, where traffic goes and the last switch.
    pub fn status(&self) -> RoutingStatus {
        self.shared.status()
    }

    /// Pins writes and reads to `region` until [`Regions::automatic`], whatever the health says.
    pub fn switch_to(&self, region: &str) -> Result<()> {
        let index = self.shared.index_of(region)?;
        *lock(&self.shared.manual) = Some(index);
        tracing::warn!(region, "an operator pinned traffic to a region");
        self.shared.steer.notify_one();
        Ok(())
    }

    /// Lets health decide again (fail-back to the preferred region follows its usual rules).
    pub fn automatic(&self) {
        *lock(&self.shared.manual) = None;
        tracing::warn!("an operator handed routing back to the region health checks");
        self.shared.steer.notify_one();
    }

    fn write_region(&self) -> &Region {
        &self.shared.regions[*self.shared.writes.borrow()]
    }

    fn read_region(&self) -> &Region {
        &self.shared.regions[*self.shared.reads.borrow()]
    }
}

/// The regions (`names`) in order of preference: the preferred one (primary, or local in
/// active-active mode), then `failover_order`, then the rest by name.
fn preference_order(config: &RegionsConfig, names: &[String], local: &str) -> Result<Vec<String>> {
    let known = || names.join(", ");
    let preferred = match config.mode {
        RegionMode::ActivePassive if !config.primary.is_empty() => config.primary.as_str(),
        _ => local,
    };
    let mut order = vec![preferred.to_owned()];
    order.extend(config.failover_order.iter().cloned());
    order.extend(names.iter().cloned());
    let mut seen = Vec::new();
    for name in order {
        if !names.contains(&name) {
            return Err(Error::UnknownRegion {
                region: name,
                known: known(),
            });
        }
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    if seen.len() < 2 {
        return Err(Error::InvalidRequest(format!(
            "log.regions names {} region(s); region routing needs at least two",
            seen.len()
        )));
    }
    Ok(seen)
}

impl Region {
    /// The names of the region's topics, by a reading younger than `max_age` or begun after this
    /// call: callers that arrive while one reading is under way share the next, so a burst of
    /// subscriptions (clients reconnecting after a switch) costs two metadata requests, not one each
    /// in turn, and `max_age` zero still sees every topic that existed when the call was made.
    async fn topic_names(&self, max_age: std::time::Duration) -> Result<Arc<Vec<String>>> {
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
    fn log(&self) -> Arc<dyn RegionalLog> {
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
    fn rebuild(&self, tasks: &TaskTracker) {
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
    fn names(&self) -> Vec<&str> {
        self.regions.iter().map(|r| r.name.as_str()).collect()
    }

    fn mode_name(&self) -> &'static str {
        match self.config.mode {
            RegionMode::ActivePassive => "active-passive",
            RegionMode::ActiveActive => "active-active",
        }
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| Error::UnknownRegion {
                region: name.to_owned(),
                known: self.names().join(", "),
            })
    }

    fn health(&self, index: usize) -> RegionHealth {
        lock(&self.regions[index].health).state()
    }

    fn status(&self) -> RoutingStatus {
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

#[async_trait]
impl Log for Regions {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        produce::submit(&self.shared, topic, records).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        subscription::subscribe(&self.shared, options).await
    }

    async fn fetch(
        &self,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        self.read_region()
            .log()
            .fetch(partition, offset, limits)
            .await
    }

    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        self.read_region().log().resolve(partition, position).await
    }

    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.read_region().log().commit(group, offsets).await
    }

    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        self.write_region().log().create_topic(spec).await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.write_region().log().delete_topic(topic).await
    }

    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.read_region().log().list_topics().await
    }

    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.read_region().log().describe_topic(topic).await
    }

    async fn open_topic(&self, topic: &str) -> Result<TopicDescription> {
        // It may create the topic: a write, so in the region that takes writes.
        self.write_region().log().open_topic(topic).await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.read_region().log().list_groups().await
    }

    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.read_region().log().describe_group(group).await
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        let mut first_error = None;
        for region in &self.shared.regions {
            if let Err(error) = region.log().close().await {
                tracing::warn!(region = %region.name, %error, "closing a region's clients failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
