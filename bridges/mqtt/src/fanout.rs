//! One reader per Kafka topic per gateway, shared by the clean-session subscriptions of all its
//! connections.
//!
//! A clean-session subscription reads from "now" and commits nothing, so all such subscribers of a
//! Kafka topic read the same records. With a reader each, 10,000 devices subscribed to their command
//! topics would be 10,000 Kafka consumers. A [`Hub`] reads the topic once and hands every batch to
//! each member; the member's connection matches records against its filters as before.
//!
//! A member holds at most `lag_limit` records it has not acknowledged. A member that goes past it (a
//! slow client) is detached rather than allowed to slow the others, and it loses nothing. It catches
//! up alone, fetching each partition from where it was as fast as it acknowledges, and rejoins the hub
//! once it has caught up. The rejoin is checked under the hub's lock, so no batch falls between.
//!
//! Persistent sessions (a consumer group each, which commits) and shared subscriptions (one group)
//! keep readers of their own.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use courier_gateway::{
    Error, Result,
    log::{
        AckOutcome, FetchLimits, Log, Position, Record, SubscribeOptions, Subscription,
        SubscriptionControl, SubscriptionEvent, TopicPartition, TopicSelector,
    },
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// Records a member may hold unacknowledged before it is detached. Batches share their payloads
/// between members (reference-counted bytes), so this bounds little more than record headers.
pub const LAG_LIMIT: usize = 10_000;

/// The hub's own reader acknowledges as it dispatches; this only bounds its prefetch.
const HUB_WINDOW: usize = 10_000;

/// How long a new hub waits for its reader to hold its partitions.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(10);

/// Most records one catch-up fetch asks for.
const CATCH_UP_BATCH: usize = 500;

/// How long a catching-up member's task waits before looking again (acks wake it sooner), and after
/// a failed fetch.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(200);

/// The hubs of one gateway, one per Kafka topic, made on first use and kept while the gateway runs
/// (MQTT routes map onto a few Kafka topics).
#[derive(Debug)]
pub struct Fanout {
    log: Arc<dyn Log>,
    lag_limit: usize,
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
    cancel: CancellationToken,
}

impl Fanout {
    /// Hubs over `log`, whose readers stop when `cancel` fires.
    pub fn new(log: Arc<dyn Log>, lag_limit: usize, cancel: CancellationToken) -> Self {
        Self {
            log,
            lag_limit: lag_limit.max(1),
            hubs: tokio::sync::Mutex::new(HashMap::new()),
            cancel,
        }
    }

    /// A subscription to every record appended to `topic` from now on, through this gateway's hub of
    /// it. Its first event is `Assigned`: the hub holds the topic's partitions.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        let hub = {
            let mut hubs = self.hubs.lock().await;
            match hubs.get(topic) {
                Some(hub) if hub.alive.load(Ordering::Acquire) => hub.clone(),
                _ => {
                    let hub =
                        Hub::start(self.log.clone(), topic, self.lag_limit, self.cancel.clone())
                            .await?;
                    hubs.insert(topic.to_owned(), hub.clone());
                    hub
                }
            }
        };
        Ok(hub.join())
    }
}

/// One Kafka topic's reader and its members.
#[derive(Debug)]
struct Hub {
    log: Arc<dyn Log>,
    topic: String,
    lag_limit: usize,
    alive: AtomicBool,
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    /// Partitions the reader holds.
    partitions: Vec<TopicPartition>,
    /// Per partition, the offset after the last record dispatched.
    next: HashMap<i32, i64>,
    /// Per partition, the first offset dispatched: where a member that never saw the partition starts.
    first: HashMap<i32, i64>,
    members: HashMap<u64, Member>,
    next_member: u64,
}

#[derive(Debug)]
struct Member {
    events: mpsc::UnboundedSender<SubscriptionEvent>,
    flow: Arc<Flow>,
    /// Per partition, the offset after the last record this member was given.
    next: HashMap<i32, i64>,
    /// Fed by the hub; `false` while it catches up alone.
    attached: bool,
}

/// A member's unacknowledged records, counted by the hub and its acks.
#[derive(Debug, Default)]
struct Flow {
    outstanding: AtomicUsize,
    acked: Notify,
}

impl Hub {
    /// Starts a plain reader of `topic` at its end and waits until it holds the partitions, so a
    /// record appended after the first member joined reaches it.
    async fn start(
        log: Arc<dyn Log>,
        topic: &str,
        lag_limit: usize,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>> {
        let mut reader = log
            .subscribe(SubscribeOptions {
                topics: TopicSelector::Names(vec![topic.to_owned()]),
                group: None,
                start: Position::Latest,
                max_in_flight: HUB_WINDOW,
                client: format!("courier-mqtt fan-out of {topic}"),
                protocol: "mqtt",
            })
            .await?;
        let partitions = match tokio::time::timeout(ASSIGNMENT_WAIT, reader.next_event()).await {
            Ok(Some(SubscriptionEvent::Assigned(partitions))) => partitions,
            _ => {
                tracing::warn!(topic, "the fan-out reader had no partitions in time");
                Vec::new()
            }
        };
        let hub = Arc::new(Self {
            log,
            topic: topic.to_owned(),
            lag_limit,
            alive: AtomicBool::new(true),
            state: Mutex::new(HubState {
                partitions,
                ..HubState::default()
            }),
        });
        tokio::spawn(hub.clone().run(reader, cancel));
        Ok(hub)
    }

    /// A new member, fed from the hub's current position.
    fn join(self: &Arc<Self>) -> Subscription {
        let (events, receiver) = mpsc::unbounded_channel();
        let flow = Arc::new(Flow::default());
        let mut state = lock(&self.state);
        let id = state.next_member;
        state.next_member += 1;
        let _ = events.send(SubscriptionEvent::Assigned(state.partitions.clone()));
        let next = state.next.clone();
        state.members.insert(
            id,
            Member {
                events,
                flow: flow.clone(),
                next,
                attached: true,
            },
        );
        Subscription {
            events: receiver,
            control: Arc::new(MemberControl {
                hub: self.clone(),
                id,
                flow,
            }),
        }
    }

    async fn run(self: Arc<Self>, mut reader: Subscription, cancel: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => break,
                event = reader.next_event() => event,
            };
            match event {
                Some(SubscriptionEvent::Records(batch)) => {
                    for record in &batch {
                        reader.control.ack(&record.topic_partition(), record.offset);
                    }
                    self.dispatch(batch);
                }
                Some(SubscriptionEvent::Assigned(partitions)) => {
                    let mut state = lock(&self.state);
                    state.partitions.extend(partitions.iter().cloned());
                    for member in state.members.values() {
                        let _ = member
                            .events
                            .send(SubscriptionEvent::Assigned(partitions.clone()));
                    }
                }
                Some(SubscriptionEvent::Revoked(partitions)) => self.revoke(&partitions),
                None => break,
            }
        }
        self.alive.store(false, Ordering::Release);
        // Dropping the members' senders ends their event streams.
        lock(&self.state).members.clear();
        if let Err(error) = reader.close().await {
            tracing::warn!(%error, topic = self.topic, "closing the fan-out reader");
        }
    }

    /// Hands a batch to every attached member, each the records past its own position; detaches a
    /// member the batch would take past the lag limit.
    fn dispatch(self: &Arc<Self>, batch: Vec<Record>) {
        let mut detached = Vec::new();
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            for record in &batch {
                state.first.entry(record.partition).or_insert(record.offset);
                let next = state.next.entry(record.partition).or_insert(0);
                *next = (*next).max(record.offset + 1);
            }
            state.members.retain(|id, member| {
                if !member.attached {
                    return true;
                }
                let records: Vec<Record> = batch
                    .iter()
                    .filter(|record| is_new(&member.next, record))
                    .cloned()
                    .collect();
                if records.is_empty() {
                    return true;
                }
                if member.flow.outstanding.load(Ordering::Acquire) + records.len() > self.lag_limit
                {
                    member.attached = false;
                    detached.push(*id);
                    return true;
                }
                give(member, records)
            });
        }
        for id in detached {
            tracing::debug!(
                topic = self.topic,
                member = id,
                "a slow subscriber catches up alone"
            );
            tokio::spawn(self.clone().catch_up(id));
        }
    }

    /// The reader let partitions go (the region router moved it): positions there mean nothing in
    /// the next cluster, so they are forgotten, and members are told.
    fn revoke(&self, partitions: &[TopicPartition]) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        state.partitions.retain(|held| !partitions.contains(held));
        for partition in partitions {
            state.next.remove(&partition.partition);
            state.first.remove(&partition.partition);
        }
        for member in state.members.values_mut() {
            for partition in partitions {
                member.next.remove(&partition.partition);
            }
            // The member's connection drops queued records of revoked partitions without acking.
            member.flow.outstanding.store(0, Ordering::Release);
            let _ = member
                .events
                .send(SubscriptionEvent::Revoked(partitions.to_vec()));
        }
    }

    /// Feeds a detached member by fetching until it has caught up with the hub, then reattaches it.
    async fn catch_up(self: Arc<Self>, id: u64) {
        loop {
            let Some(flow) = lock(&self.state).members.get(&id).map(|m| m.flow.clone()) else {
                return;
            };
            if flow.outstanding.load(Ordering::Acquire) > self.lag_limit / 2 {
                let _ = tokio::time::timeout(CATCH_UP_PAUSE, flow.acked.notified()).await;
                continue;
            }
            let behind = {
                let mut guard = lock(&self.state);
                let state = &mut *guard;
                let Some(member) = state.members.get_mut(&id) else {
                    return;
                };
                let behind = behind(&state.next, &state.first, &member.next);
                if behind.is_empty() {
                    member.attached = true;
                    tracing::debug!(topic = self.topic, member = id, "a subscriber caught up");
                    return;
                }
                behind
            };
            for (partition, from, hub_next) in behind {
                if !self.fetch_for(id, &flow, partition, from, hub_next).await {
                    return;
                }
            }
        }
    }

    /// Fetches one partition of the topic from `from` for member `id`; `false` once it is gone.
    async fn fetch_for(
        &self,
        id: u64,
        flow: &Flow,
        partition: i32,
        from: i64,
        hub_next: i64,
    ) -> bool {
        let target = TopicPartition::new(self.topic.as_str(), partition);
        let room = self
            .lag_limit
            .saturating_sub(flow.outstanding.load(Ordering::Acquire))
            .clamp(1, CATCH_UP_BATCH);
        let limits = FetchLimits {
            max_records: room,
            ..FetchLimits::default()
        };
        let next = match self.log.fetch(&target, from, limits).await {
            Ok(page) => {
                let records: Vec<Record> = page
                    .records
                    .into_iter()
                    .filter(|record| record.offset >= from)
                    .collect();
                if !records.is_empty() {
                    let mut state = lock(&self.state);
                    let Some(member) = state.members.get_mut(&id) else {
                        return false;
                    };
                    return give(member, records);
                }
                // Nothing left below the hub's position (a gap: compaction, control records).
                hub_next
            }
            Err(Error::OffsetOutOfRange { .. }) => {
                match self.log.resolve(&target, Position::Earliest).await {
                    Ok(oldest) if oldest > from => {
                        tracing::warn!(%target, from, oldest, "records a slow subscriber had not read were deleted");
                        oldest
                    }
                    _ => hub_next,
                }
            }
            Err(error) => {
                tracing::warn!(%error, %target, "fetching for a slow subscriber");
                tokio::time::sleep(CATCH_UP_PAUSE).await;
                return true;
            }
        };
        let mut state = lock(&self.state);
        let Some(member) = state.members.get_mut(&id) else {
            return false;
        };
        member.next.insert(partition, next);
        true
    }
}

/// Is `record` past what the member was given? Partitions it never saw are new to it.
fn is_new(next: &HashMap<i32, i64>, record: &Record) -> bool {
    next.get(&record.partition)
        .is_none_or(|next| record.offset >= *next)
}

/// Hands records to a member; `false` when its connection is gone.
fn give(member: &mut Member, records: Vec<Record>) -> bool {
    for record in &records {
        member.next.insert(record.partition, record.offset + 1);
    }
    member
        .flow
        .outstanding
        .fetch_add(records.len(), Ordering::AcqRel);
    member
        .events
        .send(SubscriptionEvent::Records(records))
        .is_ok()
}

/// The partitions where a member is behind the hub: (partition, its next offset, the hub's). A
/// partition the member never saw starts at the first offset the hub dispatched there.
fn behind(
    hub_next: &HashMap<i32, i64>,
    hub_first: &HashMap<i32, i64>,
    member_next: &HashMap<i32, i64>,
) -> Vec<(i32, i64, i64)> {
    let mut behind: Vec<(i32, i64, i64)> = hub_next
        .iter()
        .filter_map(|(partition, hub_next)| {
            let from = member_next
                .get(partition)
                .or_else(|| hub_first.get(partition))
                .copied()?;
            (from < *hub_next).then_some((*partition, from, *hub_next))
        })
        .collect();
    behind.sort_unstable();
    behind
}

/// A member's handle: acks free its window; closing leaves the hub.
#[derive(Debug)]
struct MemberControl {
    hub: Arc<Hub>,
    id: u64,
    flow: Arc<Flow>,
}

#[async_trait]
impl SubscriptionControl for MemberControl {
    fn ack(&self, _partition: &TopicPartition, _offset: i64) -> AckOutcome {
        let released =
            self.flow
                .outstanding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.flow.acked.notify_one();
        match released {
            Ok(_) => AckOutcome::Acked,
            Err(_) => AckOutcome::Ignored,
        }
    }

    async fn seek(&self, partition: &TopicPartition, _position: Position) -> Result<()> {
        Err(Error::InvalidRequest(format!(
            "{partition} is read through a shared fan-out reader, which cannot seek"
        )))
    }

    fn outstanding(&self) -> usize {
        self.flow.outstanding.load(Ordering::Acquire)
    }

    async fn commit(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        lock(&self.hub.state).members.remove(&self.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use courier_gateway::{
        config::{EmbeddedConfig, GroupsConfig, TopicsConfig},
        log::{Embedded, NewRecord, TopicSpec},
    };

    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

    const TOPIC: &str = "fanned";
    const WAIT: Duration = Duration::from_secs(10);

    async fn embedded(dir: &std::path::Path) -> Result<Arc<dyn Log>> {
        let log: Arc<dyn Log> = Arc::new(
            Embedded::open(
                &EmbeddedConfig::in_dir(dir),
                TopicsConfig::default(),
                GroupsConfig::default(),
                "test",
            )
            .await?,
        );
        log.create_topic(TopicSpec::named(TOPIC).partitions(3))
            .await?;
        Ok(log)
    }

    /// Appends records `range`, spread over the partitions, valued by their number.
    async fn append(log: &Arc<dyn Log>, range: std::ops::Range<usize>) -> Result<()> {
        let records = range
            .map(|i| NewRecord {
                partition: Some((i % 3) as i32),
                ..NewRecord::with_value(Bytes::from(i.to_string()))
            })
            .collect();
        log.append(TOPIC, records).await.map(drop)
    }

    /// The next records, acknowledged at once when `ack`; `None` if none come within `wait`.
    async fn next(member: &mut Subscription, ack: bool, wait: Duration) -> Option<Vec<Record>> {
        loop {
            match tokio::time::timeout(wait, member.next_event()).await {
                Ok(Some(SubscriptionEvent::Records(records))) => {
                    if ack {
                        for record in &records {
                            member.control.ack(&record.topic_partition(), record.offset);
                        }
                    }
                    return Some(records);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Receives (and acks) until `count` records came; their values by partition, in order.
    async fn receive(
        member: &mut Subscription,
        count: usize,
    ) -> std::result::Result<BTreeMap<i32, Vec<usize>>, String> {
        let mut received: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let mut total = 0;
        while total < count {
            let records = next(member, true, WAIT)
                .await
                .ok_or(format!("received {total} of {count}"))?;
            total += records.len();
            for record in records {
                let value = record.value.as_deref().unwrap_or_default();
                let number = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or("a record that is not a number")?;
                received.entry(record.partition).or_default().push(number);
            }
        }
        Ok(received)
    }

    /// Every number of `range` once, each partition's in order.
    fn expected(range: std::ops::Range<usize>) -> BTreeMap<i32, Vec<usize>> {
        let mut expected: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for i in range {
            expected.entry((i % 3) as i32).or_default().push(i);
        }
        expected
    }

    /// Members of one topic share one hub, and each gets every record appended after it joined.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_member_gets_every_record() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = embedded(dir.path()).await?;
        let fanout = Fanout::new(log.clone(), 1000, CancellationToken::new());
        let mut first = fanout.subscribe(TOPIC).await?;
        let mut second = fanout.subscribe(TOPIC).await?;
        assert_eq!(fanout.hubs.lock().await.len(), 1, "one hub for the topic");
        append(&log, 0..90).await?;
        assert_eq!(receive(&mut first, 90).await?, expected(0..90));
        assert_eq!(receive(&mut second, 90).await?, expected(0..90));
        first.close().await?;
        append(&log, 90..120).await?;
        assert_eq!(receive(&mut second, 30).await?, expected(90..120));
        Ok(())
    }

    /// A member that does not acknowledge holds at most the lag limit and does not hold the others
    /// up. Once it acknowledges it catches up with everything, once and in order, and rejoins the hub.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_member_catches_up_alone_and_loses_nothing() -> TestResult {
        const LIMIT: usize = 12;
        let dir = tempfile::tempdir()?;
        let log = embedded(dir.path()).await?;
        let fanout = Fanout::new(log.clone(), LIMIT, CancellationToken::new());
        let mut fast = fanout.subscribe(TOPIC).await?;
        let mut slow = fanout.subscribe(TOPIC).await?;
        for start in (0..300).step_by(6) {
            append(&log, start..start + 6).await?;
        }
        assert_eq!(receive(&mut fast, 300).await?, expected(0..300));

        let mut held = Vec::new();
        while let Some(records) = next(&mut slow, false, Duration::from_millis(500)).await {
            held.extend(records);
        }
        assert!(
            !held.is_empty() && held.len() <= LIMIT,
            "the slow member holds {} records unacknowledged (limit {LIMIT})",
            held.len()
        );
        let mut got = BTreeMap::<i32, Vec<usize>>::new();
        for record in &held {
            slow.control.ack(&record.topic_partition(), record.offset);
            let value = std::str::from_utf8(record.value.as_deref().unwrap_or_default())?;
            got.entry(record.partition)
                .or_default()
                .push(value.parse()?);
        }
        for (partition, numbers) in receive(&mut slow, 300 - held.len()).await? {
            got.entry(partition).or_default().extend(numbers);
        }
        assert_eq!(got, expected(0..300));

        let hub = fanout
            .hubs
            .lock()
            .await
            .get(TOPIC)
            .cloned()
            .ok_or("no hub")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !lock(&hub.state)
            .members
            .values()
            .all(|member| member.attached)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slow member never rejoined"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        append(&log, 300..330).await?;
        assert_eq!(receive(&mut slow, 30).await?, expected(300..330));
        assert_eq!(receive(&mut fast, 30).await?, expected(300..330));
        Ok(())
    }
}
