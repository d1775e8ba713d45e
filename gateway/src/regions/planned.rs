//! A planned switch: traffic moved to another region while the one it leaves still answers, without
//! the loss window of a failover.
//!
//! Writes through this gateway are held (new ones wait, so clients see backpressure, not errors)
//! and the ones already queued are let finish. Then, for every partition this gateway wrote to in
//! the region it leaves, the newest record it had acknowledged there is looked for in the target
//! region's mirror of that partition (by its `courier-id`, which MirrorMaker 2 copies with it):
//! MirrorMaker 2 copies a partition in order, so once that record is there, so is everything
//! before it. When every one is there (or the timeout ran out, and the switch is an ordinary one,
//! which the outcome says), traffic is pinned to the target as by `courier regions switch`, and the
//! held writes go there.
//!
//! Only this gateway's writes are held and checked: every replica of the gateway has to be switched
//! (the operator's CLI or Admin call, once per replica behind the load balancer, or one call per
//! replica from a script) for the whole region to move without loss.

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use tokio::time::Instant;

use super::{
    regional::{RegionalLog, read_range},
    shared::{Region, Shared},
};
use crate::{
    Error, Result,
    log::{FetchLimits, Position, TopicPartition},
    sync::lock,
};

/// The longest a planned switch may wait for the copies.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the target's mirrors are looked at while waiting for them.
const POLL: Duration = Duration::from_millis(100);

/// Records looked at, at most, from a mirror's end: MirrorMaker 2 copies in order, so the record
/// sought is near the end unless other writers (other gateways) wrote many after it.
const SEARCH: i64 = 4096;

/// What a planned switch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedSwitch {
    /// The region traffic left.
    pub from: String,
    /// The region traffic went to.
    pub to: String,
    /// Whether every acknowledged record was seen copied before traffic moved; false when the
    /// timeout ran out first (an ordinary switch: what was not copied yet is in the loss window).
    pub copied: bool,
    /// How long writes were held, in ms.
    pub paused_ms: u64,
    /// Writes that waited while they were held.
    pub writes_held: u64,
    /// Partitions whose newest acknowledged record was looked for in the target.
    pub partitions: u64,
    /// Of those, the ones not seen copied (when `copied` is false).
    pub missing: Vec<String>,
}

/// Moves traffic to region `to` once what this gateway acknowledged in the region writes go to
/// now is copied there, or `timeout` ran out.
pub(super) async fn switch(shared: &Shared, to: usize, timeout: Duration) -> PlannedSwitch {
    let ledger = &shared.ledger;
    let _one_at_a_time = ledger.one_switch_at_a_time().await;
    let started = Instant::now();
    let deadline = started + timeout;
    let from = *shared.writes.borrow();
    let hold = ledger.hold();
    tracing::warn!(from = %shared.regions[from].name, to = %shared.regions[to].name, ?timeout, "planned switch: writes held until the target has copied them");

    // What was queued before the hold settles first (acknowledged in `from`, which answers).
    while ledger.in_flight(from) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let unsettled = ledger.in_flight(from);
    let written = ledger.acknowledged_in(from);
    let mut missing = Vec::new();
    if unsettled > 0 {
        missing.push(format!("{unsettled} write(s) not acknowledged in time"));
    }
    if from != to {
        let checks = check_partitions(shared, from, to, &written, started, deadline);
        // Every step inside is bounded by the deadline; this bounds their sum.
        match tokio::time::timeout_at(deadline, checks).await {
            Ok(not_copied) => missing.extend(not_copied),
            Err(_) => missing.push("the checks ran out of time".to_owned()),
        }
    }
    let copied = missing.is_empty();

    // Moved as an operator's pin is; the held writes go where writes went. Once writes leave
    // `from`, what this gateway acknowledged there is accounted for: a later planned switch away
    // from it looks at newer writes only.
    if from != to {
        ledger.forget(from);
    }
    *lock(&shared.manual) = Some(to);
    shared.steer.notify_one();
    let mut writes = shared.writes.subscribe();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        writes.wait_for(|writes| *writes == to),
    )
    .await;
    drop(hold);
    let outcome = PlannedSwitch {
        from: shared.regions[from].name.clone(),
        to: shared.regions[to].name.clone(),
        copied,
        paused_ms: started.elapsed().as_millis() as u64,
        writes_held: ledger.waited(),
        partitions: written.len() as u64,
        missing,
    };
    if outcome.copied {
        tracing::warn!(
            ?outcome,
            "planned switch: every acknowledged record was copied before traffic moved"
        );
    } else {
        tracing::error!(
            ?outcome,
            "planned switch: not every acknowledged record was seen copied in time; switched as an ordinary switch"
        );
    }
    outcome
}

/// The partitions of `written` whose newest acknowledged record was not seen in the target's
/// mirror by `deadline`, as `topic/partition`.
async fn check_partitions(
    shared: &Shared,
    from: usize,
    to: usize,
    written: &[(TopicPartition, i64)],
    started: Instant,
    deadline: Instant,
) -> Vec<String> {
    let source = shared.regions[from].log();
    let target = &shared.regions[to];
    let mut missing = Vec::new();
    for (partition, offset) in written {
        let mirror = TopicPartition::new(
            shared
                .policy
                .remote_topic(&shared.regions[from].name, &partition.topic)
                .as_str(),
            partition.partition,
        );
        let copied = copied_by(&source, partition, *offset, target, &mirror, deadline).await;
        tracing::debug!(topic = %partition.topic, partition = partition.partition, offset, copied, after_ms = started.elapsed().as_millis() as u64, "planned switch: looked for the newest acknowledged record in the target");
        if !copied {
            missing.push(format!("{}/{}", partition.topic, partition.partition));
        }
    }
    missing
}

/// Whether the record at `offset` of `partition` in the source is in `mirror` in the target,
/// waiting for it until `deadline`.
async fn copied_by(
    source: &Arc<dyn RegionalLog>,
    partition: &TopicPartition,
    offset: i64,
    target: &Region,
    mirror: &TopicPartition,
    deadline: Instant,
) -> bool {
    let Some(id) = record_at(source, partition, offset, deadline).await else {
        return false;
    };
    let Some(id) = id else {
        // Gone from the source (retention): nothing of it to wait for.
        return true;
    };
    let mut scanned = None;
    loop {
        // Never read a mirror that is not there (yet): reading may create a topic.
        let exists = target
            .topic_names(POLL)
            .await
            .is_ok_and(|names| names.iter().any(|name| **name == *mirror.topic));
        let found = if exists {
            holds(&target.log(), mirror, &id, &mut scanned).await
        } else {
            Ok(false)
        };
        match found {
            Ok(true) => return true,
            Ok(false) => {}
            Err(error) => {
                tracing::debug!(mirror = %mirror.topic, %error, "planned switch: reading the mirror");
            }
        }
        if Instant::now() + POLL > deadline {
            tracing::warn!(topic = %partition.topic, partition = partition.partition, offset, courier_id = %id, mirror = %mirror.topic, "planned switch: not seen copied in time");
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The `courier-id` of the record at `offset` of `partition`, or of the first after it when
/// compaction removed it (copied in order, it is copied only after the one sought); `Some(None)`
/// when retention removed it, `None` when it could not be read by `deadline`.
async fn record_at(
    log: &Arc<dyn RegionalLog>,
    partition: &TopicPartition,
    offset: i64,
    deadline: Instant,
) -> Option<Option<String>> {
    let limits = FetchLimits {
        max_records: 1,
        max_bytes: 1 << 20,
    };
    loop {
        match log.fetch(partition, offset, limits).await {
            Ok(fetched) => {
                if let Some(record) = fetched.records.into_iter().find(|r| r.offset >= offset) {
                    return Some(Some(record.courier_id));
                }
            }
            Err(Error::OffsetOutOfRange { low, .. }) if offset < low => return Some(None),
            Err(error) => {
                tracing::debug!(topic = %partition.topic, partition = partition.partition, %error, "planned switch: reading the newest acknowledged record");
            }
        }
        // An empty answer (a fetch that timed out) or an error: again, until the deadline.
        if Instant::now() + POLL > deadline {
            tracing::warn!(topic = %partition.topic, partition = partition.partition, offset, "planned switch: could not read the newest acknowledged record");
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `mirror` holds the record `id` among the records from `*scanned` (the first time, its
/// last [`SEARCH`] records) to its end; `*scanned` moves to that end, so each look reads only
/// what was copied since the last.
async fn holds(
    log: &Arc<dyn RegionalLog>,
    mirror: &TopicPartition,
    id: &str,
    scanned: &mut Option<i64>,
) -> Result<bool> {
    let end = log.resolve(mirror, Position::Latest).await?;
    let start = log.resolve(mirror, Position::Earliest).await?;
    let from = scanned.unwrap_or(end - SEARCH).max(start);
    let records = read_range(&**log, mirror, from, end).await?;
    // From after the last record read: a read cut short is taken up again next time.
    *scanned = Some(records.last().map_or(from, |record| record.offset + 1));
    Ok(records.iter().any(|record| record.courier_id == id))
}
