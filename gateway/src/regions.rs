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
//! - measures how far behind each other region every region's copies are, by the canary records
//!   MirrorMaker 2 copies ([`replication`]);
//! - answers operators: each region's state and replication lag, the last switch and its cause
//!   ([`status`]), a manual switch, and a planned one that moves traffic once the target has copied
//!   what this gateway acknowledged ([`planned`]).
//!
//! The state the router's handle and its tasks share is in [`shared`], so each part depends on it
//! rather than on this module.

pub mod checkpoint;
mod copies;
mod coverage;
mod fail_back;
pub mod health;
mod ledger;
mod naming;
mod planned;
mod produce;
pub mod regional;
mod replication;
mod shared;
pub mod status;
mod steer;
mod subscription;
mod translate;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::coverage::{CheckpointStatus, GroupCoverage, PairCoverage};
pub use self::{
    copies::ReplicationStatus,
    health::RegionHealth,
    planned::PlannedSwitch,
    regional::RegionalLog,
    status::{RegionStatus, RoutingStatus, Switch, Traffic},
};
use self::{
    health::HealthMachine,
    naming::ReplicationPolicy,
    shared::{Region, Shared},
};
use crate::{
    Error, Result,
    config::{GroupsConfig, RegionMode, RegionsConfig, TopicsConfig},
    limits::TopicCreations,
    log::{
        AppendReceipt, FetchLimits, Fetched, GroupDescription, GroupMember, Kafka, Log, NewRecord,
        Position, SubscribeOptions, Subscription, TopicDescription, TopicPartition, TopicSelector,
        TopicSpec, TopicSummary, layers::TopicPolicy,
    },
    sync::lock,
};

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
        let creations = Arc::new(TopicCreations::per_minute(topics.auto_create_per_minute));
        for (name, kafka_config) in &config.regions {
            let kafka = Kafka::open(kafka_config, topics.clone(), groups.clone(), name)?;
            // The topic policy per region: a write resent to another region creates its topic there.
            let log = TopicPolicy::new(kafka, topics.auto_create, creations.clone());
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
                copies: Mutex::default(),
                name,
            });
        }
        let regions_count = regions.len();
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
            ledger: Arc::new(ledger::WriteLedger::new(regions_count)),
        });
        steer::start(&shared);
        tracing::info!(regions = ?shared.names(), mode = shared.mode_name(), "region router started");
        Ok(Self { shared })
    }

    /// Each region's state, where traffic goes and the last switch.
    pub fn status(&self) -> RoutingStatus {
        self.shared.status()
    }

    /// What each region's checkpoints cover of every other region's consumer groups, as last
    /// measured: every group, for the metrics (the status lists the furthest behind only).
    pub fn checkpoint_coverage(&self) -> Vec<PairCoverage> {
        self.shared.coverage()
    }

    /// Pins writes and reads to `region` until [`Regions::automatic`], whatever the health says.
    pub fn switch_to(&self, region: &str) -> Result<()> {
        let index = self.shared.index_of(region)?;
        *lock(&self.shared.manual) = Some(index);
        tracing::warn!(region, "an operator pinned traffic to a region");
        self.shared.steer.notify_one();
        Ok(())
    }

    /// Pins writes and reads to `region` as [`Regions::switch_to`] does, once what this gateway
    /// acknowledged in the region writes go to now has been copied to `region` (or `timeout` ran
    /// out first, which the outcome says); writes are held meanwhile. See [`planned`].
    pub async fn switch_planned(&self, region: &str, timeout: Duration) -> Result<PlannedSwitch> {
        let index = self.shared.index_of(region)?;
        if timeout > planned::MAX_TIMEOUT {
            return Err(Error::InvalidRequest(format!(
                "a planned switch waits at most {:?} for the copies, not {timeout:?}",
                planned::MAX_TIMEOUT
            )));
        }
        // On a task of its own: a caller that goes away (a cut-off Admin call) does not cut the
        // switch short, which ends within its timeout either way.
        let shared = self.shared.clone();
        self.shared
            .tasks
            .spawn(async move { planned::switch(&shared, index, timeout).await })
            .await
            .map_err(|error| Error::RegionUnavailable {
                region: region.to_owned(),
                reason: format!("the planned switch failed: {error}"),
            })
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

    async fn copies_of(&self, topic: &str) -> Result<Vec<String>> {
        let region = *self.shared.reads.borrow();
        // A fresh list: it is asked rarely (a QoS 2 exchange taken over at a connect), and a
        // mirror made a moment ago may hold what is looked for.
        let existing = self.shared.regions[region]
            .topic_names(Duration::ZERO)
            .await?;
        let names = TopicSelector::Names(vec![topic.to_owned()]);
        Ok(
            match self
                .shared
                .policy
                .expand(&names, &self.shared.others(region), &existing)
            {
                TopicSelector::Names(copies) => copies,
                TopicSelector::Pattern(_) | TopicSelector::Restricted { .. } => {
                    vec![topic.to_owned()]
                }
            },
        )
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

    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>> {
        self.read_region().log().group_members(group).await
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
