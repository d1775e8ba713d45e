//! What the status page and the probes show: the log's (region's) state, traffic per protocol over the
//! last minutes, and the consumer groups furthest behind. One probe task fills it every
//! `http.probe_interval`; HTTP handlers only read it, so a scrape never waits on Kafka.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use courier_gateway::{
    log::{Log, now_ms},
    metrics::{names, snapshot},
    regions::{RegionHealth, Regions, ReplicationStatus},
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    checkpoints,
    lag::{self, GroupLag},
};

/// Traffic samples kept: ten minutes at the default 5 s interval.
const HISTORY: usize = 120;

/// The shared state behind `/readyz` and the status page.
#[derive(Debug)]
pub(crate) struct Board {
    region: String,
    log: String,
    started: Instant,
    draining: AtomicBool,
    observed: Mutex<Observed>,
    /// The region router, when the log is one: it probes the regions itself.
    router: Option<Regions>,
}

#[derive(Debug)]
struct Observed {
    region: RegionState,
    history: VecDeque<Sample>,
    /// The last reading of consumer lag.
    lag: lag::Reading,
    /// The regions' checkpoint coverage as last rendered (`checkpoints.rs`).
    checkpoint_metrics: String,
}

/// The log's state as the probes see it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RegionState {
    name: String,
    state: Health,
    /// When the state last changed (ms since the epoch).
    since_ms: i64,
    /// Changes of state since start.
    switches: u64,
    /// Why the state last changed.
    cause: String,
    /// What goes to it: `writes`, `reads`, both, or nothing (a region router's standby region).
    traffic: Vec<&'static str>,
    /// How far behind each other region its copies are (a region router's regions only).
    replication: Vec<ReplicationStatus>,
}

/// Whether the log answers probes: `healthy` while it does, `down` once one failed. A region router's
/// regions also pass through `suspect` and `recovering` (see `courier_gateway::regions::health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Health {
    Healthy,
    Suspect,
    Down,
    Recovering,
}

impl From<RegionHealth> for Health {
    fn from(health: RegionHealth) -> Self {
        match health {
            RegionHealth::Healthy => Self::Healthy,
            RegionHealth::Suspect => Self::Suspect,
            RegionHealth::Down => Self::Down,
            RegionHealth::Recovering => Self::Recovering,
        }
    }
}

/// Running totals at one moment; the page derives rates from consecutive samples.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    at_ms: i64,
    messages_in: BTreeMap<&'static str, u64>,
    messages_out: BTreeMap<&'static str, u64>,
}

/// One protocol now.
#[derive(Debug, Clone, Serialize)]
struct ProtocolNow {
    protocol: &'static str,
    connections: u64,
    messages_in: u64,
    messages_out: u64,
}

/// What `/api/status` answers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    region: String,
    log: String,
    version: &'static str,
    uptime_seconds: u64,
    ready: bool,
    not_ready_because: Option<String>,
    draining: bool,
    regions: Vec<RegionState>,
    protocols: Vec<ProtocolNow>,
    history: Vec<Sample>,
    groups: Vec<GroupLag>,
}

impl Board {
    /// A board for a gateway in `region` over the log described by `log`; the log opened, so it
    /// starts healthy. With a region router, the regions' states are the router's.
    pub(crate) fn new(region: &str, log: &str, router: Option<Regions>) -> Self {
        if router.is_none() {
            metrics::gauge!(names::REGION_UP, "region" => region.to_owned()).set(1.0);
        }
        Self {
            region: region.to_owned(),
            log: log.to_owned(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            observed: Mutex::new(Observed {
                region: RegionState {
                    name: region.to_owned(),
                    state: Health::Healthy,
                    since_ms: now_ms(),
                    switches: 0,
                    cause: "the log opened".to_owned(),
                    traffic: vec!["writes", "reads"],
                    replication: Vec::new(),
                },
                history: VecDeque::with_capacity(HISTORY),
                lag: lag::Reading::default(),
                checkpoint_metrics: String::new(),
            }),
            router,
        }
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The drain began: readiness goes false before any listener stops.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the gateway should get no new clients, or `None` when it should.
    pub(crate) fn not_ready_because(&self) -> Option<String> {
        if self.draining.load(Ordering::Acquire) {
            return Some("draining".to_owned());
        }
        if let Some(router) = &self.router {
            let status = router.status();
            return (!status.regions.iter().any(|region| region.health.usable())).then(|| {
                let causes: Vec<String> = status
                    .regions
                    .iter()
                    .map(|region| format!("{}: {}", region.name, region.cause))
                    .collect();
                format!("no region answers ({})", causes.join("; "))
            });
        }
        let observed = self.observed();
        (observed.region.state == Health::Down)
            .then(|| format!("the log is not answering: {}", observed.region.cause))
    }

    /// What a ready gateway should still say: each standby region (one no traffic goes to) whose
    /// copies of the region writes go to are stale, since a switch to it now would lose that much.
    pub(crate) fn ready_but(&self) -> Vec<String> {
        let Some(router) = &self.router else {
            return Vec::new();
        };
        let status = router.status();
        let Some(writes) = status.regions.iter().find(|region| region.writes) else {
            return Vec::new();
        };
        status
            .regions
            .iter()
            .filter(|region| !region.writes && !region.reads)
            .flat_map(|standby| {
                standby
                    .replication
                    .iter()
                    .filter(|lag| lag.from == writes.name && lag.stale)
                    .map(|lag| match lag.lag_ms {
                        Some(ms) => format!(
                            "stale standby: {} is {:.1} s behind {}",
                            standby.name,
                            ms as f64 / 1e3,
                            writes.name
                        ),
                        None => format!(
                            "stale standby: {} holds no copy of {}'s canary (is MirrorMaker 2 mirroring it?)",
                            standby.name, writes.name
                        ),
                    })
            })
            .collect()
    }

    /// Whether the log answers (a region of the router does), so reading lag is worth a try.
    fn log_answers(&self) -> bool {
        match &self.router {
            Some(router) => router
                .status()
                .regions
                .iter()
                .any(|region| region.health.usable()),
            None => self.observed().region.state != Health::Down,
        }
    }

    /// The regions' states: the router's, or the one log's as the probes saw it.
    fn regions(&self, observed: &Observed) -> Vec<RegionState> {
        let Some(router) = &self.router else {
            return vec![observed.region.clone()];
        };
        router
            .status()
            .regions
            .into_iter()
            .map(|region| RegionState {
                traffic: [("writes", region.writes), ("reads", region.reads)]
                    .into_iter()
                    .filter_map(|(name, goes)| goes.then_some(name))
                    .collect(),
                name: region.name,
                state: region.health.into(),
                since_ms: region.since_ms,
                switches: region.changes,
                cause: region.cause,
                replication: region.replication,
            })
            .collect()
    }

    /// Everything the status page shows.
    pub(crate) fn status(&self) -> Status {
        let not_ready_because = self.not_ready_because();
        let observed = self.observed();
        Status {
            region: self.region.clone(),
            log: self.log.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs(),
            ready: not_ready_because.is_none(),
            not_ready_because,
            draining: self.draining.load(Ordering::Acquire),
            regions: self.regions(&observed),
            protocols: snapshot()
                .into_iter()
                .map(|now| ProtocolNow {
                    protocol: now.protocol.name(),
                    connections: now.connections,
                    messages_in: now.messages_in,
                    messages_out: now.messages_out,
                })
                .collect(),
            history: observed.history.iter().cloned().collect(),
            groups: observed.lag.top.clone(),
        }
    }

    fn record_probe(&self, outcome: Result<(), String>) {
        if self.router.is_some() {
            // The router probes its regions and exports their state itself.
            return;
        }
        let mut observed = self.observed();
        let (state, cause) = match outcome {
            Ok(()) => (Health::Healthy, "the log answered again".to_owned()),
            Err(error) => (Health::Down, error),
        };
        if observed.region.state == state {
            return;
        }
        observed.region.state = state;
        observed.region.since_ms = now_ms();
        observed.region.switches += 1;
        observed.region.cause = cause.clone();
        let labels = [("region", self.region.clone())];
        metrics::gauge!(names::REGION_UP, &labels)
            .set(f64::from(u8::from(state == Health::Healthy)));
        metrics::counter!(names::REGION_SWITCHES, &labels).increment(1);
        if state == Health::Healthy {
            tracing::info!(region = %self.region, "the log answers again; ready");
        } else {
            tracing::warn!(region = %self.region, %cause, "the log does not answer; not ready");
        }
    }

    fn record_sample(&self) {
        let mut sample = Sample {
            at_ms: now_ms(),
            messages_in: BTreeMap::new(),
            messages_out: BTreeMap::new(),
        };
        for now in snapshot() {
            sample
                .messages_in
                .insert(now.protocol.name(), now.messages_in);
            sample
                .messages_out
                .insert(now.protocol.name(), now.messages_out);
        }
        let mut observed = self.observed();
        if observed.history.len() == HISTORY {
            observed.history.pop_front();
        }
        observed.history.push_back(sample);
    }

    fn record_lag(&self, reading: lag::Reading) {
        self.observed().lag = reading;
    }

    /// Renders what the region router last measured of its checkpoints, `exported` groups per
    /// pair of regions one by one.
    fn record_checkpoints(&self, exported: usize) {
        let Some(router) = &self.router else {
            return;
        };
        let text = checkpoints::render(&router.checkpoint_coverage(), exported);
        self.observed().checkpoint_metrics = text;
    }

    /// `courier_consumer_lag` as the last reading left it and the regions' checkpoint series, in
    /// Prometheus' text format.
    pub(crate) fn lag_metrics(&self) -> String {
        let observed = self.observed();
        format!("{}{}", observed.lag.metrics, observed.checkpoint_metrics)
    }
}

/// How often consumer lag is read, and how many groups are exported one by one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LagReading {
    /// `http.lag_interval`.
    pub(crate) interval: Duration,
    /// `http.lag_groups`.
    pub(crate) groups: usize,
}

/// Probes the log and samples traffic every `interval` until `stop`, and reads consumer lag as
/// `lag` says on a task of its own (describing every group can take long; a probe must not wait
/// for it); also does the Prometheus recorder's upkeep (histogram buckets are drained on it).
pub(crate) async fn run_probes(
    board: Arc<Board>,
    log: Arc<dyn Log>,
    prometheus: PrometheusHandle,
    interval: Duration,
    lag: LagReading,
    stop: CancellationToken,
) {
    let lag_reader = tokio::spawn(read_lag(board.clone(), log.clone(), lag, stop.clone()));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        board.record_sample();
        prometheus.run_upkeep();
        let probe = match tokio::time::timeout(interval, log.list_topics()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no answer to a metadata request within {interval:?}"
            )),
        };
        board.record_probe(probe);
    }
    let _ = lag_reader.await;
}

/// Reads every group's lag every `interval` while the log answers its probes, until `stop`.
async fn read_lag(
    board: Arc<Board>,
    log: Arc<dyn Log>,
    every: LagReading,
    stop: CancellationToken,
) {
    let interval = every.interval;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // The router measures its checkpoints itself, whether or not the reads region answers.
        board.record_checkpoints(every.groups);
        if !board.log_answers() {
            continue;
        }
        let reading = tokio::select! {
            () = stop.cancelled() => return,
            reading = tokio::time::timeout(interval, lag::read(&*log, every.groups)) => reading,
        };
        // A reading that failed or took too long keeps the last one.
        if let Ok(Some(reading)) = reading {
            board.record_lag(reading);
        }
    }
}
