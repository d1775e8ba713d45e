//! One reader per topic per gateway, shared by the subscribers that read it from "now" and commit
//! nothing.
//!
//! Such subscribers of a topic all read the same records. With a reader each, 10,000 devices
//! subscribed to their command topics would be 10,000 Kafka consumers, each reading every record of
//! the topic. A hub reads the topic once and hands each record only to the members whose filters
//! match its address, found in the front end's index of filters ([`Addressing`]), so a record costs
//! the same with ten members or ten thousand. What a filter and an address are is the front end's
//! (MQTT: topic filters and the record's MQTT topic); the member's connection applies the rest of its
//! protocol's rules.
//!
//! A member holds at most `lag_limit` records it has not acknowledged. A member that goes past it (a
//! slow client) is detached rather than allowed to slow the others, and it loses nothing. It catches
//! up alone, fetching each partition from where the hub was when it left, as fast as it
//! acknowledges, and rejoins the hub once it has caught up. The rejoin is checked under the hub's
//! lock, so no batch falls between.
//!
//! Subscribers that commit (a consumer group each, or one shared group) keep readers of their own.
//! This sits beside the Log rather than in a layer: it is one reader shared by many subscriptions,
//! not a decoration of one call.

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    log::{
        AckOutcome, FetchLimits, Log, Position, Record, SubscribeOptions, Subscription,
        SubscriptionControl, SubscriptionEvent, TopicPartition, TopicSelector,
        events::{self, EventSender},
    },
    sync::lock,
};

mod by_key;
mod positions;

pub use by_key::ByKey;
use positions::Positions;

/// How a front end addresses records, and the index it finds members' filters in.
pub trait Addressing: Send + Sync + Debug + 'static {
    /// The address of a record (MQTT: its MQTT topic); `None` sends it to no member.
    fn address(&self, record: &Record) -> Option<String>;
    /// Does a member's `filter` match `address`?
    fn matches(&self, filter: &str, address: &str) -> bool;
    /// An empty index of members' filters.
    fn index(&self) -> Box<dyn FilterIndex>;
    /// The front end, named in the hub's subscription to the Log.
    fn protocol(&self) -> &'static str;
}

/// Member ids by filter, for finding the members whose filters match an address.
pub trait FilterIndex: Send + Debug {
    /// Adds member `id`'s `filter` (once, however often it is added).
    fn insert(&mut self, filter: &str, id: u64);
    /// Removes member `id`'s `filter`.
    fn remove(&mut self, filter: &str, id: u64);
    /// Appends to `out` the members with a filter matching `address`; a member matching by several
    /// filters may appear once for each (the hub deduplicates).
    fn matching(&self, address: &str, out: &mut Vec<u64>);
}

/// Records a member may hold unacknowledged before it is detached. Members share the records'
/// payloads (reference-counted bytes), so this bounds little more than record headers.
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

/// The hubs of one gateway for one front end, one per topic, made when a topic gets its first member
/// and closed when it loses its last (a hub without members would still read every record).
#[derive(Debug)]
pub struct Fanout {
    log: Arc<dyn Log>,
    addressing: Arc<dyn Addressing>,
    lag_limit: usize,
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
    cancel: CancellationToken,
}

impl Fanout {
    /// Hubs over `log` for members addressing records by `addressing`; their readers stop when
    /// `cancel` fires.
    pub fn new(
        log: Arc<dyn Log>,
        addressing: Arc<dyn Addressing>,
        lag_limit: usize,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            log,
            addressing,
            lag_limit: lag_limit.max(1),
            hubs: tokio::sync::Mutex::new(HashMap::new()),
            cancel,
        }
    }

    /// A subscription to the records appended to `topic` from now on whose addresses match one of
    /// `filters`, through this gateway's hub of the topic. Its first event is `Assigned`: the hub
    /// holds the topic's partitions.
    pub async fn subscribe(&self, topic: &str, filters: Vec<String>) -> Result<Member> {
        // A hub can close (its last member left) between the look and the join: one more try.
        for _ in 0..2 {
            let hub = self.hub(topic).await?;
            // The hub may not have handed out everything appended before now; that is not this
            // member's (it subscribed after), so it starts at each partition's end. Looked up
            // outside the map's lock: a burst of connects must not queue behind each other's round
            // trips.
            let partitions = lock(&hub.state).partitions.clone();
            let mut ends = Positions::default();
            for partition in &partitions {
                let end = self.log.resolve(partition, Position::Latest).await?;
                ends.set(partition.partition, end);
            }
            if let Some(member) = hub.join(filters.clone(), ends) {
                return Ok(member);
            }
        }
        Err(Error::InvalidRequest(format!(
            "the fan-out reader of {topic} keeps closing"
        )))
    }

    /// The open hub of `topic`, started if there is none.
    async fn hub(&self, topic: &str) -> Result<Arc<Hub>> {
        let mut hubs = self.hubs.lock().await;
        if let Some(hub) = hubs.get(topic).filter(|hub| !lock(&hub.state).closed) {
            return Ok(hub.clone());
        }
        let stop = self.cancel.child_token();
        let hub = Hub::start(
            self.log.clone(),
            self.addressing.clone(),
            topic,
            self.lag_limit,
            stop,
        )
        .await?;
        hubs.insert(topic.to_owned(), hub.clone());
        Ok(hub)
    }
}

/// A member of a hub: its subscription, and the handle that changes its filters.
#[derive(Debug)]
pub struct Member {
    /// Events and control, as from [`Log::subscribe`].
    pub subscription: Subscription,
    handle: Arc<MemberControl>,
}

impl Member {
    /// The handle that changes the member's filters.
    pub fn filters(&self) -> MemberFilters {
        MemberFilters(self.handle.clone())
    }
}

/// Changes a member's filters.
#[derive(Debug, Clone)]
pub struct MemberFilters(Arc<MemberControl>);

impl MemberFilters {
    /// From now on, the member gets records whose addresses match one of `filters`.
    pub fn set(&self, filters: Vec<String>) {
        let mut state = lock(&self.0.hub.state);
        state.set_filters(self.0.id, filters);
    }
}

/// One topic's reader and its members.
#[derive(Debug)]
struct Hub {
    log: Arc<dyn Log>,
    addressing: Arc<dyn Addressing>,
    topic: String,
    lag_limit: usize,
    /// Stops the reader: fired when the last member leaves, or with the gateway.
    stop: CancellationToken,
    state: Mutex<HubState>,
}

#[derive(Debug)]
struct HubState {
    /// Partitions the reader holds.
    partitions: Vec<TopicPartition>,
    /// Per partition, the offset after the last record dispatched.
    next: HashMap<i32, i64>,
    /// Per partition, the first offset dispatched: where a member that never saw the partition starts.
    first: HashMap<i32, i64>,
    members: HashMap<u64, MemberState>,
    /// No member joins any more: the last one left, or the reader ended.
    closed: bool,
    /// Members by their filters.
    filters: Box<dyn FilterIndex>,
    next_member: u64,
}

#[derive(Debug)]
struct MemberState {
    events: EventSender,
    flow: Arc<Flow>,
    filters: Vec<String>,
    /// While detached: per partition, the offset after the last record this member has seen. While
    /// attached: offsets below which records were already given in catching up (usually none).
    next: Positions,
    /// Fed by the hub; `false` while it catches up alone.
    attached: bool,
}

impl MemberState {
    /// Drops positions the hub has passed: an attached member needs no filtering there. None
    /// left, the map's memory goes too (a member usually has none, and a hub has thousands).
    fn forget_passed(&mut self, hub_next: &HashMap<i32, i64>) {
        self.next
            .retain(|partition, next| hub_next.get(&partition) < Some(&next));
    }

    fn wants(&self, addressing: &dyn Addressing, address: &str) -> bool {
        self.filters
            .iter()
            .any(|filter| addressing.matches(filter, address))
    }
}

/// A member's unacknowledged records, kept by the hub and its acks. Kept by offset rather than
/// counted, so an ack of a record that is not outstanding (twice, or never given) frees nothing.
#[derive(Debug, Default)]
struct Flow {
    outstanding: Mutex<HashSet<(i32, i64)>>,
    acked: Notify,
}

impl Flow {
    fn outstanding(&self) -> usize {
        lock(&self.outstanding).len()
    }
}

impl HubState {
    fn new(partitions: Vec<TopicPartition>, filters: Box<dyn FilterIndex>) -> Self {
        Self {
            partitions,
            next: HashMap::new(),
            first: HashMap::new(),
            members: HashMap::new(),
            closed: false,
            filters,
            next_member: 0,
        }
    }

    fn set_filters(&mut self, id: u64, filters: Vec<String>) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        for filter in &member.filters {
            self.filters.remove(filter, id);
        }
        for filter in &filters {
            self.filters.insert(filter, id);
        }
        member.filters = filters;
    }

    /// Removes a member; `true` when it was the last.
    fn remove(&mut self, id: u64) -> bool {
        self.set_filters(id, Vec::new());
        self.members.remove(&id);
        self.members.is_empty()
    }
}

impl Hub {
    /// Starts a plain reader of `topic` at its end and waits until it holds the partitions, so a
    /// record appended after the first member joined reaches it.
    async fn start(
        log: Arc<dyn Log>,
        addressing: Arc<dyn Addressing>,
        topic: &str,
        lag_limit: usize,
        stop: CancellationToken,
    ) -> Result<Arc<Self>> {
        let mut reader = log
            .subscribe(SubscribeOptions {
                topics: TopicSelector::Names(vec![topic.to_owned()]),
                group: None,
                start: Position::Latest,
                max_in_flight: HUB_WINDOW,
                client: format!("courier-{} fan-out of {topic}", addressing.protocol()),
                protocol: addressing.protocol(),
            })
            .await?;
        let partitions = match tokio::time::timeout(ASSIGNMENT_WAIT, reader.next_event()).await {
            Ok(Some(SubscriptionEvent::Assigned(partitions))) => partitions,
            _ => {
                tracing::warn!(topic, "the fan-out reader had no partitions in time");
                Vec::new()
            }
        };
        let state = Mutex::new(HubState::new(partitions, addressing.index()));
        let hub = Arc::new(Self {
            log,
            addressing,
            topic: topic.to_owned(),
            lag_limit,
            stop,
            state,
        });
        tokio::spawn(hub.clone().run(reader));
        Ok(hub)
    }

    /// A new member, given what the hub dispatches from now on at or past `ends` (per partition);
    /// `None` once the hub has closed.
    fn join(self: &Arc<Self>, filters: Vec<String>, ends: Positions) -> Option<Member> {
        // The queue's room is not asked: the hub bounds a member by its own rule, detaching one
        // that holds `lag_limit` records (queued or sent) unacknowledged.
        let (events, receiver) = events::channel(self.lag_limit);
        let flow = Arc::new(Flow::default());
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        let id = state.next_member;
        state.next_member += 1;
        let _ = events.send(SubscriptionEvent::Assigned(state.partitions.clone()));
        let mut member = MemberState {
            events,
            flow: flow.clone(),
            filters: Vec::new(),
            next: ends,
            attached: true,
        };
        member.forget_passed(&state.next);
        state.members.insert(id, member);
        state.set_filters(id, filters);
        let handle = Arc::new(MemberControl {
            hub: self.clone(),
            id,
            flow,
        });
        Some(Member {
            subscription: Subscription {
                events: receiver,
                control: handle.clone(),
            },
            handle,
        })
    }

    /// Removes a member, and closes the hub when it was the last.
    fn leave(&self, id: u64) {
        let mut state = lock(&self.state);
        if state.remove(id) {
            state.closed = true;
            self.stop.cancel();
        }
    }

    async fn run(self: Arc<Self>, mut reader: Subscription) {
        loop {
            let event = tokio::select! {
                () = self.stop.cancelled() => break,
                event = reader.next_event() => event,
            };
            match event {
                Some(SubscriptionEvent::Records(batch)) => {
                    for record in &batch {
                        reader.control.ack(&record.topic_partition(), record.offset);
                    }
                    self.dispatch(&batch);
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
        {
            let mut state = lock(&self.state);
            state.closed = true;
            // Dropping the members' senders ends their event streams.
            state.members.clear();
        }
        if let Err(error) = reader.close().await {
            tracing::warn!(%error, topic = self.topic, "closing the fan-out reader");
        }
    }

    /// Hands each record of a batch to the attached members that want it; detaches a member the
    /// batch would take past the lag limit.
    fn dispatch(self: &Arc<Self>, batch: &[Record]) {
        let mut detached = Vec::new();
        let mut gone = Vec::new();
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            let before = state.next.clone();
            let mut given: HashMap<u64, Vec<Record>> = HashMap::new();
            let mut recipients = Vec::new();
            for record in batch {
                state.first.entry(record.partition).or_insert(record.offset);
                let next = state.next.entry(record.partition).or_insert(0);
                *next = (*next).max(record.offset + 1);
                let Some(address) = self.addressing.address(record) else {
                    continue;
                };
                recipients.clear();
                state.filters.matching(&address, &mut recipients);
                // A member matching by several filters gets the record once.
                recipients.sort_unstable();
                recipients.dedup();
                for id in &recipients {
                    given.entry(*id).or_default().push(record.clone());
                }
            }
            for (id, records) in given {
                let Some(member) = state.members.get_mut(&id) else {
                    continue;
                };
                if !member.attached {
                    continue;
                }
                let records: Vec<Record> = if member.next.is_empty() {
                    records
                } else {
                    records
                        .into_iter()
                        .filter(|record| is_new(&member.next, record))
                        .collect()
                };
                if !records.is_empty() && member.flow.outstanding() + records.len() > self.lag_limit
                {
                    // It has seen everything before this batch (and what it was given past that
                    // while catching up); it catches up from there.
                    for (partition, offset) in &before {
                        member.next.raise(*partition, *offset);
                    }
                    member.attached = false;
                    detached.push(id);
                    continue;
                }
                member.forget_passed(&state.next);
                if !records.is_empty() && !give(member, records) {
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.leave(id);
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
                member.next.remove(partition.partition);
            }
            // The member's connection drops queued records of revoked partitions without acking.
            lock(&member.flow.outstanding)
                .retain(|(partition, _)| !partitions.iter().any(|p| p.partition == *partition));
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
            if flow.outstanding() > self.lag_limit / 2 {
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
                    member.forget_passed(&state.next);
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
            .saturating_sub(flow.outstanding())
            .min(CATCH_UP_BATCH);
        if room == 0 {
            // Full: an earlier partition of this round took the room. The next round waits for
            // acks; fetching one record anyway would take the member past the lag limit.
            return true;
        }
        let limits = FetchLimits {
            max_records: room,
            ..FetchLimits::default()
        };
        let (records, next) = match self.log.fetch(&target, from, limits).await {
            Ok(page) => match page.records.last().map(|last| last.offset + 1) {
                Some(next) => (page.records, next),
                // Nothing left below the hub's position (a gap: compaction, control records).
                None => (Vec::new(), hub_next),
            },
            Err(Error::OffsetOutOfRange { .. }) => {
                match self.log.resolve(&target, Position::Earliest).await {
                    Ok(oldest) if oldest > from => {
                        tracing::warn!(%target, from, oldest, "records a slow subscriber had not read were deleted");
                        (Vec::new(), oldest)
                    }
                    _ => (Vec::new(), hub_next),
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
        let wanted: Vec<Record> = records
            .into_iter()
            .filter(|record| record.offset >= from)
            .filter(|record| {
                self.addressing
                    .address(record)
                    .is_some_and(|address| member.wants(&*self.addressing, &address))
            })
            .collect();
        member.next.set(partition, next.max(from));
        if wanted.is_empty() || give(member, wanted) {
            return true;
        }
        drop(state);
        self.leave(id);
        false
    }
}

/// Is `record` past what the member was given? Partitions it has no position in are new to it.
fn is_new(next: &Positions, record: &Record) -> bool {
    next.get(record.partition)
        .is_none_or(|next| record.offset >= next)
}

/// Hands records to a member; `false` when its connection is gone.
fn give(member: &mut MemberState, records: Vec<Record>) -> bool {
    lock(&member.flow.outstanding).extend(
        records
            .iter()
            .map(|record| (record.partition, record.offset)),
    );
    member
        .events
        .send(SubscriptionEvent::Records(records))
        .is_ok()
}

/// The partitions where a member is behind the hub: (partition, its next offset, the hub's). A
/// partition the member has no position in starts at the first offset the hub dispatched there.
fn behind(
    hub_next: &HashMap<i32, i64>,
    hub_first: &HashMap<i32, i64>,
    member_next: &Positions,
) -> Vec<(i32, i64, i64)> {
    let mut behind: Vec<(i32, i64, i64)> = hub_next
        .iter()
        .filter_map(|(partition, hub_next)| {
            let from = member_next
                .get(*partition)
                .or_else(|| hub_first.get(partition).copied())?;
            (from < *hub_next).then_some((*partition, from, *hub_next))
        })
        .collect();
    behind.sort_unstable();
    behind
}

/// A member's control: acks free its window; closing leaves the hub.
#[derive(Debug)]
struct MemberControl {
    hub: Arc<Hub>,
    id: u64,
    flow: Arc<Flow>,
}

#[async_trait]
impl SubscriptionControl for MemberControl {
    fn ack(&self, partition: &TopicPartition, offset: i64) -> AckOutcome {
        if *partition.topic != *self.hub.topic {
            return AckOutcome::Ignored;
        }
        let released = lock(&self.flow.outstanding).remove(&(partition.partition, offset));
        if !released {
            return AckOutcome::Ignored;
        }
        self.flow.acked.notify_one();
        AckOutcome::Acked
    }

    async fn seek(&self, partition: &TopicPartition, _position: Position) -> Result<()> {
        Err(Error::InvalidRequest(format!(
            "{partition} is read through a shared fan-out reader, which cannot seek"
        )))
    }

    fn outstanding(&self) -> usize {
        self.flow.outstanding()
    }

    async fn commit(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.hub.leave(self.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::log::{NewRecord, TopicSpec};
    use bytes::Bytes;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

    const TOPIC: &str = "fanned";
    const WAIT: Duration = Duration::from_secs(10);

    async fn embedded(dir: &std::path::Path) -> Result<Arc<dyn Log>> {
        let log = crate::testing::embedded(dir).await?;
        log.create_topic(TopicSpec::named(TOPIC).partitions(3))
            .await?;
        Ok(log)
    }

    /// The hub of the test topic.
    async fn hub(fanout: &Fanout) -> std::result::Result<Arc<Hub>, &'static str> {
        fanout.hubs.lock().await.get(TOPIC).cloned().ok_or("no hub")
    }

    /// Hubs addressing records by key, each member holding at most `lag_limit`.
    fn fanout(log: &Arc<dyn Log>, lag_limit: usize) -> Fanout {
        let addressing = Arc::new(ByKey::for_protocol("grpc"));
        Fanout::new(log.clone(), addressing, lag_limit, CancellationToken::new())
    }

    /// A member whose filter matches every record [`append`] writes.
    async fn everything(fanout: &Fanout) -> Result<Subscription> {
        Ok(fanout
            .subscribe(TOPIC, vec![EVERY.into()])
            .await?
            .subscription)
    }

    /// The key of every record [`append`] writes.
    const EVERY: &str = "every";

    /// Appends records `range`, spread over the partitions, valued by their number.
    async fn append(log: &Arc<dyn Log>, range: std::ops::Range<usize>) -> Result<()> {
        let records = range
            .map(|i| NewRecord {
                key: Some(Bytes::from_static(EVERY.as_bytes())),
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
        let fanout = fanout(&log, 1000);
        let mut first = everything(&fanout).await?;
        let mut second = everything(&fanout).await?;
        assert_eq!(fanout.hubs.lock().await.len(), 1, "one hub for the topic");
        append(&log, 0..90).await?;
        assert_eq!(receive(&mut first, 90).await?, expected(0..90));
        assert_eq!(receive(&mut second, 90).await?, expected(0..90));
        first.close().await?;
        append(&log, 90..120).await?;
        assert_eq!(receive(&mut second, 30).await?, expected(90..120));

        // The last member leaving closes the hub; the next member gets a new one.
        second.close().await?;
        assert!(lock(&hub(&fanout).await?.state).closed);
        let mut third = everything(&fanout).await?;
        append(&log, 120..150).await?;
        assert_eq!(receive(&mut third, 30).await?, expected(120..150));
        Ok(())
    }

    /// Each member gets the records its filters match, a record matched by several filters once,
    /// and a change of filters applies to what comes next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_get_what_their_filters_match() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = embedded(dir.path()).await?;
        let fanout = fanout(&log, 1000);
        let device = fanout
            .subscribe(TOPIC, vec!["devices/7/commands".into()])
            .await?;
        let every_device = (0..10)
            .chain([7])
            .map(|device| format!("devices/{device}/commands"))
            .collect();
        let mut all_devices = fanout.subscribe(TOPIC, every_device).await?.subscription;
        let filters = device.filters();
        let mut device = device.subscription;
        let command = |device: usize| NewRecord {
            key: Some(Bytes::from(format!("devices/{device}/commands"))),
            ..NewRecord::with_value(Bytes::from(device.to_string()))
        };
        log.append(TOPIC, (0..10).map(command).collect()).await?;
        let mine = next(&mut device, true, WAIT).await.ok_or("no command")?;
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].value.as_deref(), Some(&b"7"[..]));
        let mut seen = 0;
        while seen < 10 {
            seen += next(&mut all_devices, true, WAIT)
                .await
                .ok_or("no commands")?
                .len();
        }
        assert_eq!(seen, 10);

        filters.set(vec!["devices/8/commands".into()]);
        log.append(TOPIC, vec![command(7), command(8)]).await?;
        let mine = next(&mut device, true, WAIT).await.ok_or("no command")?;
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].value.as_deref(), Some(&b"8"[..]));
        Ok(())
    }

    /// A member that does not acknowledge holds at most the lag limit and does not hold the others
    /// up. Once it acknowledges it catches up with everything, once and in order, and rejoins the hub.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_member_catches_up_alone_and_loses_nothing() -> TestResult {
        const LIMIT: usize = 12;
        let dir = tempfile::tempdir()?;
        let log = embedded(dir.path()).await?;
        let fanout = fanout(&log, LIMIT);
        let mut fast = everything(&fanout).await?;
        let mut slow = everything(&fanout).await?;
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

        let hub = hub(&fanout).await?;
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
