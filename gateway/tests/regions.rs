//! The region router in process: the conformance suite over a router of two embedded regions, and the
//! router's own behaviours (failover of writes and subscriptions, fail-back, hysteresis, pinning) on
//! regions a test takes down and brings back at will. The health and steering cases run on paused
//! time, so a 30 s hold-down costs nothing; the end-to-end tests in `tests/regions.rs` keep the real
//! brokers, replication and clients.

mod conformance;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use conformance::*;
use courier_gateway::{
    Error, Result,
    config::{EmbeddedConfig, GroupsConfig, RegionsConfig, TopicsConfig},
    log::{
        AppendReceipt, Embedded, FetchLimits, Fetched, GroupDescription, Log, NewRecord, Position,
        SubscribeOptions, Subscription, SubscriptionEvent, TopicDescription, TopicPartition,
        TopicSpec, TopicSummary,
        layers::{self, TopicPolicy},
    },
    readers::table::Table,
    regions::{RegionHealth, RegionalLog, Regions, RoutingStatus},
};

/// A region a test can take down and bring back: an embedded log that, while down, refuses every
/// call as an unreachable cluster would, and whose probes answer exactly while it is up. Probes do
/// not touch the store, so on paused time they cost no I/O: health follows `up` and nothing else.
/// Down, it is silent (requests fail, as a cluster behind a cut network's would) or, killed, its
/// brokers refuse connections.
#[derive(Debug, Clone)]
struct Site {
    name: &'static str,
    log: Embedded,
    up: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
}

impl Site {
    async fn open(name: &'static str, dir: &std::path::Path) -> Result<Self> {
        let groups = GroupsConfig {
            commit_interval: Duration::from_millis(100),
            ..GroupsConfig::default()
        };
        let log = Embedded::open(
            &EmbeddedConfig::in_dir(dir.join(name)),
            TopicsConfig::default(),
            groups,
            name,
        )
        .await?;
        Ok(Self {
            name,
            log,
            up: Arc::new(AtomicBool::new(true)),
            refusing: Arc::new(AtomicBool::new(false)),
        })
    }

    fn set_up(&self, up: bool) {
        self.refusing.store(false, Ordering::SeqCst);
        self.up.store(up, Ordering::SeqCst);
    }

    /// Down as a killed cluster is: nothing listens where its brokers were.
    fn kill(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.refusing.store(true, Ordering::SeqCst);
    }

    fn answer(&self) -> Result<()> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::RegionUnavailable {
                region: self.name.to_owned(),
                reason: "the test took it down".into(),
            })
        }
    }
}

#[async_trait]
impl Log for Site {
    async fn submit(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendReceipt> {
        self.answer()?;
        self.log.submit(topic, records).await
    }
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.answer()?;
        self.log.subscribe(options).await
    }
    async fn fetch(&self, p: &TopicPartition, offset: i64, limits: FetchLimits) -> Result<Fetched> {
        self.answer()?;
        self.log.fetch(p, offset, limits).await
    }
    async fn resolve(&self, partition: &TopicPartition, position: Position) -> Result<i64> {
        self.answer()?;
        self.log.resolve(partition, position).await
    }
    async fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.answer()?;
        self.log.commit(group, offsets).await
    }
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicDescription> {
        self.answer()?;
        self.log.create_topic(spec).await
    }
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.answer()?;
        self.log.delete_topic(topic).await
    }
    async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.answer()?;
        self.log.list_topics().await
    }
    async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.answer()?;
        self.log.describe_topic(topic).await
    }
    async fn list_groups(&self) -> Result<Vec<String>> {
        self.answer()?;
        self.log.list_groups().await
    }
    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.answer()?;
        self.log.describe_group(group).await
    }
    async fn close(&self) -> Result<()> {
        self.log.close().await
    }
}

#[async_trait]
impl RegionalLog for Site {
    async fn probe(&self, _canary: &str, _timeout: Duration) -> Result<Duration> {
        self.answer().map(|()| Duration::from_millis(1))
    }
    async fn refuses_connections(&self, _timeout: Duration) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }
    fn forget_cached_metadata(&self) {}
    fn reopen(&self) -> Result<Option<Arc<dyn RegionalLog>>> {
        Ok(None)
    }
}

/// Settings of the router tests: probes every second, DOWN after three failures, HEALTHY again after
/// a 30 s hold-down, reads failing back 5 s after writes (the gateway's defaults).
fn settings() -> RegionsConfig {
    let mut config = RegionsConfig::new(BTreeMap::new());
    config.primary = "a".into();
    config
}

/// A router over sites `a` (primary) and `b`.
fn route(config: &RegionsConfig, a: &Site, b: &Site) -> Result<Regions> {
    // As `courier serve` composes it: the topic policy per region, validation over the router.
    let creations = Arc::new(courier_gateway::limits::TopicCreations::per_minute(0));
    let regional = |site: &Site| -> Arc<dyn RegionalLog> {
        Arc::new(TopicPolicy::new(site.clone(), true, creations.clone()))
    };
    let logs: BTreeMap<String, Arc<dyn RegionalLog>> =
        [("a".to_owned(), regional(a)), ("b".to_owned(), regional(b))].into();
    Regions::over(config, "a", logs)
}

struct Fixture {
    _dir: tempfile::TempDir,
    a: Site,
    b: Site,
    router: Regions,
}

impl Fixture {
    async fn new(config: &RegionsConfig) -> std::result::Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let a = Site::open("a", dir.path()).await?;
        let b = Site::open("b", dir.path()).await?;
        let router = route(config, &a, &b)?;
        Ok(Self {
            _dir: dir,
            a,
            b,
            router,
        })
    }

    /// On real time, with fast probes and no automatic fail-back: traffic moves when the test
    /// takes a region down or pins it.
    async fn switched_by_hand() -> std::result::Result<Self, BoxError> {
        let mut config = settings();
        config.probe_interval = Duration::from_millis(50);
        config.hold_down = Duration::from_secs(3600);
        Self::new(&config).await
    }

    /// Creates the topic `spec` says in both regions.
    async fn create_in_both(&self, spec: TopicSpec) -> TestResult {
        for site in [&self.a, &self.b] {
            site.log.create_topic(spec.clone()).await?;
        }
        Ok(())
    }

    async fn close(self) -> TestResult {
        self.router.close().await?;
        Ok(())
    }
}

/// Where writes and reads go, and region `a`'s health.
fn traffic(status: &RoutingStatus) -> (&str, &str, RegionHealth) {
    let to = |pick: fn(&courier_gateway::regions::RegionStatus) -> bool| {
        status
            .regions
            .iter()
            .find(|region| pick(region))
            .map_or("none", |region| region.name.as_str())
    };
    let a = status
        .regions
        .iter()
        .find(|region| region.name == "a")
        .map_or(RegionHealth::Down, |region| region.health);
    (to(|r| r.writes), to(|r| r.reads), a)
}

/// Lets paused time run for `span` in steps of 100 ms, recording each change of what `traffic`
/// shows and the switch count.
async fn watch(
    router: &Regions,
    span: Duration,
    seen: &mut Vec<(String, String, RegionHealth, u64)>,
) {
    let steps = span.as_millis() / 100;
    for _ in 0..steps {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = router.status();
        let (writes, reads, health) = traffic(&status);
        let now = (writes.to_owned(), reads.to_owned(), health, status.switches);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
}

// The conformance suite over the router: two embedded regions, traffic on the primary; every
// behaviour a client relies on holds through the router as on one log.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> TestResult {
            let dir = tempfile::tempdir()?;
            let a = Site::open("a", dir.path()).await?;
            let b = Site::open("b", dir.path()).await?;
            let router = route(&settings(), &a, &b)?;
            let log: Arc<dyn Log> = Arc::new(layers::front(router, &TopicsConfig::default()));
            conformance::$name(log.clone()).await?;
            log.close().await?;
            Ok(())
        }
    )*};
}

every_behaviour!(conformance);

/// The primary is lost: writes and reads move to b once it is DOWN (three failed probes), not at its
/// first failure. Back up, it is RECOVERING for the hold-down, then writes fail back, and reads after
/// `fail_back_consumer_delay`. Each move counts one switch.
#[tokio::test(start_paused = true)]
async fn traffic_fails_over_when_down_and_back_after_the_hold_down() -> TestResult {
    let fixture = Fixture::new(&settings()).await?;
    let router = &fixture.router;
    let mut seen = Vec::new();
    watch(router, Duration::from_secs(3), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("a", "a", RegionHealth::Healthy));

    fixture.a.set_up(false);
    watch(router, Duration::from_millis(1500), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("a", "a", RegionHealth::Suspect),
        "one or two failed probes move nothing: {seen:?}"
    );
    watch(router, Duration::from_secs(3), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("b", "b", RegionHealth::Down));
    assert_eq!(router.status().switches, 2);

    fixture.a.set_up(true);
    watch(router, Duration::from_secs(29), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("b", "b", RegionHealth::Recovering),
        "not back before the hold-down: {seen:?}"
    );
    watch(router, Duration::from_secs(3), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("a", "b", RegionHealth::Healthy),
        "writes first: {seen:?}"
    );
    watch(router, Duration::from_secs(6), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("a", "a", RegionHealth::Healthy));
    let status = router.status();
    assert_eq!(status.switches, 4, "{seen:?}");
    let last = status.last_switch.ok_or("a last switch")?;
    assert_eq!((last.from.as_str(), last.to.as_str()), ("b", "a"));
    fixture.close().await
}

/// A primary killed (its brokers refuse connections) is DOWN at its first failed probe, not its
/// third: writes and reads are on b within one probe interval. The hold-down still holds: killed
/// again while RECOVERING it is DOWN again, and traffic fails back only after a whole hold-down.
#[tokio::test(start_paused = true)]
async fn a_killed_region_is_down_at_its_first_probe_and_still_held_down() -> TestResult {
    let fixture = Fixture::new(&settings()).await?;
    let router = &fixture.router;
    let mut seen = Vec::new();
    watch(router, Duration::from_secs(3), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("a", "a", RegionHealth::Healthy));

    fixture.a.kill();
    watch(router, Duration::from_millis(1200), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("b", "b", RegionHealth::Down),
        "a killed region moves traffic at its first probe: {seen:?}"
    );
    fixture.a.set_up(true);
    watch(router, Duration::from_secs(10), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("b", "b", RegionHealth::Recovering)
    );
    fixture.a.kill();
    watch(router, Duration::from_millis(1200), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("b", "b", RegionHealth::Down));
    fixture.a.set_up(true);
    watch(router, Duration::from_secs(29), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("b", "b", RegionHealth::Recovering),
        "not back before a whole hold-down: {seen:?}"
    );
    watch(router, Duration::from_secs(9), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("a", "a", RegionHealth::Healthy));
    assert_eq!(router.status().switches, 4, "{seen:?}");
    fixture.close().await
}

/// A flapping primary (down 5 s, up 4 s, three times) moves traffic once and not back: each time it
/// returns it is RECOVERING, which a failed probe ends before the hold-down. Writes go on in b
/// throughout; once it stays up, traffic fails back once. (In process, on paused time: the same case
/// end to end froze a broker for 27 s of wall clock.)
#[tokio::test(start_paused = true)]
async fn a_flapping_region_does_not_flap_traffic() -> TestResult {
    let mut config = settings();
    config.hold_down = Duration::from_secs(10);
    let fixture = Fixture::new(&config).await?;
    let router = &fixture.router;
    let topic = unique_topic("flapping");
    router
        .create_topic(TopicSpec::named(&topic).partitions(1))
        .await?;
    fixture
        .b
        .log
        .create_topic(TopicSpec::named(&topic).partitions(1))
        .await?;
    let mut seen = Vec::new();
    let mut acked_in_b = 0;
    for _ in 0..3 {
        fixture.a.set_up(false);
        watch(router, Duration::from_secs(5), &mut seen).await;
        let appended = router
            .append(&topic, vec![value("while a is away")])
            .await?;
        acked_in_b += appended.len();
        fixture.a.set_up(true);
        watch(router, Duration::from_secs(4), &mut seen).await;
    }
    let states: Vec<RegionHealth> = seen.iter().map(|(_, _, health, _)| *health).collect();
    let recovering_then_down = states
        .windows(2)
        .filter(|pair| pair == &[RegionHealth::Recovering, RegionHealth::Down])
        .count();
    assert_eq!(
        recovering_then_down, 2,
        "a went DOWN again from RECOVERING: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, _, _, switches)| *switches <= 2),
        "traffic moved once (writes and reads) and never back while a flapped: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .skip_while(|(writes, ..)| writes == "a")
            .any(|(writes, ..)| writes == "a"),
        "writes never went back to a while it flapped: {seen:?}"
    );
    let in_b = fixture.b.log.describe_topic(&topic).await?.partitions[0].high;
    assert_eq!(
        (acked_in_b, in_b),
        (3, 3),
        "writes went on in b while a flapped"
    );

    watch(router, Duration::from_secs(20), &mut seen).await;
    let status = router.status();
    assert_eq!(
        traffic(&status),
        ("a", "a", RegionHealth::Healthy),
        "{seen:?}"
    );
    assert_eq!(
        status.switches, 4,
        "one failover and one fail-back: {seen:?}"
    );
    fixture.close().await
}

/// An operator pins traffic to b while a is healthy: both move at once, and stay while a is
/// healthy; handed back to health, writes return to a at once and reads after their delay.
#[tokio::test(start_paused = true)]
async fn an_operator_pins_traffic_and_hands_it_back() -> TestResult {
    let fixture = Fixture::new(&settings()).await?;
    let router = &fixture.router;
    let mut seen = Vec::new();
    watch(router, Duration::from_secs(2), &mut seen).await;
    assert!(matches!(
        router.switch_to("c"),
        Err(Error::UnknownRegion { .. })
    ));
    router.switch_to("b")?;
    watch(router, Duration::from_millis(500), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("b", "b", RegionHealth::Healthy));
    assert_eq!(router.status().manual.as_deref(), Some("b"));
    watch(router, Duration::from_secs(60), &mut seen).await;
    assert_eq!(
        traffic(&router.status()),
        ("b", "b", RegionHealth::Healthy),
        "{seen:?}"
    );

    router.automatic();
    watch(router, Duration::from_millis(500), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("a", "b", RegionHealth::Healthy));
    watch(router, Duration::from_secs(6), &mut seen).await;
    assert_eq!(traffic(&router.status()), ("a", "a", RegionHealth::Healthy));
    assert_eq!(router.status().switches, 4, "{seen:?}");
    fixture.close().await
}

/// Copies every record of `topic` in `from` into `to` as MirrorMaker 2 would (`<region>.<topic>`,
/// same partitions, courier-ids kept). Returns how many.
async fn mirror(from: &Site, to: &Site, topic: &str) -> Result<usize> {
    let remote = format!("{}.{topic}", from.name);
    let description = from.log.describe_topic(topic).await?;
    let partitions = description.partitions.len() as u32;
    to.log
        .create_topic(TopicSpec::named(&remote).partitions(partitions))
        .await?;
    let mut copied = 0;
    for marks in description.partitions {
        let partition = TopicPartition::new(topic, marks.partition);
        let limits = FetchLimits {
            max_records: 10_000,
            max_bytes: 64 << 20,
        };
        let records = from.log.fetch(&partition, marks.low, limits).await?.records;
        let copies: Vec<NewRecord> = records
            .into_iter()
            .map(|record| NewRecord {
                key: record.key,
                value: record.value,
                headers: record.headers,
                partition: Some(record.partition),
                timestamp_ms: Some(record.timestamp_ms),
                courier_id: record.courier_id,
            })
            .collect();
        copied += copies.len();
        to.log.append(&remote, copies).await?;
    }
    Ok(copied)
}

/// A group member reading through the router when the primary is lost: its partitions are revoked,
/// it is assigned b's topic and the mirror of a's, and every record acknowledged to a producer (in a
/// and mirrored, or written in b after the switch) reaches it at least once. On real time with fast
/// probes: delivery runs through the embedded store's own threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_follows_reads_and_loses_nothing_acknowledged() -> TestResult {
    let fixture = Fixture::switched_by_hand().await?;
    let router = &fixture.router;
    let topic = unique_topic("orders");
    let group = unique_topic("group");
    fixture
        .create_in_both(TopicSpec::named(&topic).partitions(2))
        .await?;
    let mut acked = BTreeSet::new();
    for appended in router
        .append(
            &topic,
            (0..20)
                .map(|i| keyed(&format!("k{i}"), format!("before-{i}")))
                .collect(),
        )
        .await?
    {
        acked.insert(appended.courier_id);
    }
    let mut member = router
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    let first = receive(&mut member, 20, true).await?;
    assert_eq!(first.len(), 20);
    member.control.commit().await?;

    // MirrorMaker 2 has copied all of a (no replication lag at the moment of the loss).
    assert_eq!(mirror(&fixture.a, &fixture.b, &topic).await?, 20);
    fixture.a.set_up(false);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while traffic(&router.status()).1 != "b" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads did not move to b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for appended in router
        .append(
            &topic,
            (0..10).map(|i| value(format!("after-{i}"))).collect(),
        )
        .await?
    {
        acked.insert(appended.courier_id);
    }

    let mut delivered: BTreeSet<String> = first.iter().map(|r| r.courier_id.clone()).collect();
    let mut revoked = false;
    let mut topics_after = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !acked.is_subset(&delivered) {
        let event = tokio::time::timeout_at(deadline, member.next_event())
            .await
            .map_err(|_| {
                format!(
                    "missing {:?}",
                    acked.difference(&delivered).collect::<Vec<_>>()
                )
            })?
            .ok_or("the subscription ended")?;
        match event {
            SubscriptionEvent::Revoked(_) => revoked = true,
            SubscriptionEvent::Assigned(partitions) => {
                topics_after.extend(partitions.into_iter().map(|p| p.topic.to_string()));
            }
            SubscriptionEvent::Records(records) => {
                for record in records {
                    member.control.ack(&record.topic_partition(), record.offset);
                    delivered.insert(record.courier_id);
                }
            }
        }
    }
    assert!(revoked, "the member saw its a partitions revoked");
    assert_eq!(
        topics_after,
        BTreeSet::from([topic.clone(), format!("a.{topic}")]),
        "in b it reads the topic and a's mirror"
    );
    member.close().await?;
    fixture.close().await
}

/// A planned switch holds writes until the target holds what was acknowledged in the region writes
/// leave: here the target gets its copies only while the switch waits, and a write made meanwhile
/// waits too, then goes to the target. Back the other way with nothing copied, the timeout runs
/// out and the switch says it was an ordinary one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switch_moves_traffic_once_the_target_holds_what_was_acknowledged() -> TestResult
{
    let fixture = Fixture::new(&settings()).await?;
    let router = fixture.router.clone();
    fixture
        .a
        .log
        .create_topic(TopicSpec::named("t").partitions(3))
        .await?;
    for index in 0..30 {
        router
            .append("t", vec![NewRecord::with_value(format!("before {index}"))])
            .await?;
    }

    let switching = tokio::spawn({
        let router = router.clone();
        async move { router.switch_planned("b", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(traffic(&router.status()).0, "a", "not before the copies");
    let held = tokio::spawn({
        let router = router.clone();
        async move {
            router
                .append("t", vec![NewRecord::with_value("while held")])
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a write while held waits");
    assert!(!switching.is_finished(), "nothing copied yet");

    assert_eq!(mirror(&fixture.a, &fixture.b, "t").await?, 30);
    let outcome = switching.await??;
    assert!(outcome.copied, "{outcome:?}");
    assert_eq!((outcome.from.as_str(), outcome.to.as_str()), ("a", "b"));
    assert_eq!(outcome.partitions, 3, "{outcome:?}");
    assert_eq!(outcome.writes_held, 1, "{outcome:?}");
    assert_eq!(traffic(&router.status()), ("b", "b", RegionHealth::Healthy));
    let appended = held.await??;
    let in_b = fixture
        .b
        .log
        .fetch(
            &TopicPartition::new("t", appended[0].partition),
            appended[0].offset,
            FetchLimits::default(),
        )
        .await?;
    assert_eq!(
        in_b.records.first().and_then(|record| record.value.clone()),
        Some("while held".into()),
        "the held write went to b"
    );

    // A wait longer than a planned switch may take is refused, and nothing is held or moved.
    let refused = router
        .switch_planned("a", Duration::from_secs(3600))
        .await
        .expect_err("an hour's wait is refused");
    assert!(matches!(refused, Error::InvalidRequest(_)), "{refused:?}");
    assert_eq!(traffic(&router.status()).0, "b");
    router
        .append("t", vec![NewRecord::with_value("not held")])
        .await?;

    // Back to a, with nothing of b's copied there: the timeout runs out, traffic moves anyway.
    let outcome = router
        .switch_planned("a", Duration::from_millis(500))
        .await?;
    assert!(!outcome.copied, "{outcome:?}");
    // Every partition b's two writes went to, and only those, is reported not copied.
    assert!((1..=2).contains(&outcome.partitions), "{outcome:?}");
    assert_eq!(
        outcome.missing.len() as u64,
        outcome.partitions,
        "{outcome:?}"
    );
    assert_eq!(traffic(&router.status()).0, "a");
    fixture.close().await
}

/// Waits until reads go to `region`.
async fn await_reads_on(router: &Regions, region: &str) -> TestResult {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while traffic(&router.status()).1 != region {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("reads did not move to {region}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A group that read a's records from their copies in b, then reads in a again, resumes in a past
/// them: MirrorMaker 2's checkpoints carry positions only from a to b, and without the gateway
/// bringing them back it would read every one of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_back_in_its_region_resumes_past_what_it_read_of_the_copies_elsewhere() -> TestResult
{
    let fixture = Fixture::switched_by_hand().await?;
    let router = &fixture.router;
    let topic = unique_topic("orders");
    let group = unique_topic("group");
    fixture
        .create_in_both(TopicSpec::named(&topic).partitions(2))
        .await?;
    // MirrorMaker 2 runs both ways (its checkpoints topic in a, empty: nothing was read in a).
    fixture
        .a
        .log
        .create_topic(TopicSpec::named("b.checkpoints.internal"))
        .await?;
    router
        .append(
            &topic,
            (0..20)
                .map(|i| keyed(&format!("k{i}"), format!("before-{i}")))
                .collect(),
        )
        .await?;
    assert_eq!(mirror(&fixture.a, &fixture.b, &topic).await?, 20);

    // In b the group reads a's records from their copies and leaves, committing there.
    router.switch_to("b")?;
    await_reads_on(router, "b").await?;
    // Where a's records are looked for by id (an MQTT QoS 2 message published in a, say).
    assert_eq!(
        router.copies_of(&topic).await?,
        [topic.clone(), format!("a.{topic}")]
    );
    let mut member = router
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    let read = receive(&mut member, 20, true).await?;
    assert!(
        read.iter().all(|r| *r.topic == format!("a.{topic}")),
        "{read:?}"
    );
    member.close().await?;

    // Back in a: only what was written after.
    router.switch_to("a")?;
    await_reads_on(router, "a").await?;
    assert_eq!(
        router.copies_of(&topic).await?,
        std::slice::from_ref(&topic)
    );
    router.append(&topic, vec![value("after")]).await?;
    let mut member = router
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    let read = receive(&mut member, 1, true).await?;
    assert_eq!(read.iter().map(text).collect::<Vec<_>>(), ["after"]);
    let more = next_records(&mut member, Duration::from_millis(500)).await;
    assert!(more.is_none(), "read again in a: {more:?}");
    member.close().await?;
    fixture.close().await
}

/// A compacted table read through the router holds the newest version of each key, whichever copy
/// it was read from: a value written in b after a was lost wins, back in a, over a's own older
/// one, and a deletion wins over the value it deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_keeps_the_newest_version_of_a_key_across_regions() -> TestResult {
    let fixture = Fixture::switched_by_hand().await?;
    let router = &fixture.router;
    let topic = unique_topic("sessions");
    fixture
        .create_in_both(TopicSpec::named(&topic).compacted())
        .await?;
    let log: Arc<dyn Log> = Arc::new(router.clone());
    let cancel = tokio_util::sync::CancellationToken::new();
    let table = Table::start(
        log.clone(),
        "mqtt",
        &topic,
        Box::new(|_, _, _| {}),
        cancel.clone(),
    )
    .await?;
    let write = |key: &'static str, text: Option<&'static str>| {
        let table = table.clone();
        let log = log.clone();
        let topic = topic.clone();
        async move {
            let record = NewRecord {
                key: Some(Bytes::from_static(key.as_bytes())),
                value: text.map(|text| Bytes::from_static(text.as_bytes())),
                timestamp_ms: Some(table.next_timestamp(key, courier_gateway::log::now_ms())),
                ..NewRecord::default()
            };
            log.append(&topic, vec![record]).await.map(drop)
        }
    };
    let current = |key: &str| table.get(key).map(|record| text(&record));

    write("device", Some("in-a")).await?;
    write("gone", Some("in-a")).await?;
    table.caught_up(DEADLINE).await?;
    assert_eq!(current("device").as_deref(), Some("in-a"));

    // a is lost; b holds its copies.
    assert_eq!(mirror(&fixture.a, &fixture.b, &topic).await?, 2);
    router.switch_to("b")?;
    await_reads_on(router, "b").await?;
    table.caught_up(DEADLINE).await?;
    assert_eq!(
        current("device").as_deref(),
        Some("in-a"),
        "read from a's copy in b"
    );
    write("device", Some("in-b")).await?;
    write("gone", None).await?;
    table.caught_up(DEADLINE).await?;
    assert_eq!(current("device").as_deref(), Some("in-b"));
    assert_eq!(current("gone"), None);

    // Back in a, which still holds its own older records; b's are copied there.
    assert_eq!(mirror(&fixture.b, &fixture.a, &topic).await?, 2);
    router.switch_to("a")?;
    await_reads_on(router, "a").await?;
    table.caught_up(DEADLINE).await?;
    assert_eq!(
        current("device").as_deref(),
        Some("in-b"),
        "b's newer version wins"
    );
    assert_eq!(
        current("gone"),
        None,
        "the deletion in b wins over a's value"
    );

    // A table started afresh in a decides the same.
    let fresh = Table::start(
        log.clone(),
        "mqtt",
        &topic,
        Box::new(|_, _, _| {}),
        cancel.clone(),
    )
    .await?;
    fresh.caught_up(DEADLINE).await?;
    assert_eq!(
        fresh.get("device").map(|record| text(&record)).as_deref(),
        Some("in-b")
    );
    assert!(fresh.get("gone").is_none());
    cancel.cancel();
    fixture.close().await
}
