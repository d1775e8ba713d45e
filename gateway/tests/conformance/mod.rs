//! The Log conformance suite: each behaviour written once, generic over `dyn Log`, run by every backend's
//! test file (`embedded.rs` here; the Kafka backend runs the same functions against a real broker).
//! Every check that matters to a client asserts on what was acknowledged: nothing lost, nothing twice.

#![allow(dead_code, unreachable_pub)] // each backend's runner uses the functions it can

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use courier_gateway::{
    Error,
    log::{
        AckOutcome, FetchLimits, Log, NewRecord, Position, Record, SubscribeOptions, Subscription,
        SubscriptionEvent, TopicPartition, TopicSelector, TopicSpec,
    },
    readers::{
        fanout::{ByKey, Fanout},
        table::{Table, Version},
    },
};
use tokio_util::sync::CancellationToken;

/// Calls `$runner!` with the name of every behaviour of the suite: each backend's test file defines
/// the runner (how to set its log up) and gets one test per behaviour, so none can be forgotten.
#[macro_export]
macro_rules! every_behaviour {
    ($runner:ident) => {
        $runner!(
            offsets_are_dense_per_partition,
            keyed_records_keep_order,
            fetch_limits_and_range,
            plain_readers_start_where_asked,
            group_members_share_partitions,
            sparse_acks_and_redelivery,
            dropped_member_records_are_redelivered,
            members_that_leave_at_once_leave_the_group_working,
            in_flight_window_pauses_delivery,
            a_member_that_stops_reading_does_not_hold_up_its_group,
            unread_records_stay_within_the_window,
            seek_and_commit,
            patterns_follow_new_topics,
            bad_requests_are_refused,
            a_group_changes_protocol_only_once_its_members_left,
            records_round_trip,
            delete_topic_removes_everything,
            concurrent_appends_are_all_acknowledged,
            fanout_members_keep_the_subscription_contract,
            tables_hold_the_latest_record_of_each_key,
        );
    };
}

/// Longest any single wait in the suite may take; tests fail rather than hang.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A topic name unique to this test run.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

pub fn value(text: impl Into<String>) -> NewRecord {
    NewRecord::with_value(Bytes::from(text.into()))
}

pub fn keyed(key: &str, text: impl Into<String>) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(key.to_owned())),
        ..value(text)
    }
}

pub fn options(
    topics: &[&str],
    group: Option<&str>,
    start: Position,
    max_in_flight: usize,
) -> SubscribeOptions {
    SubscribeOptions {
        topics: TopicSelector::Names(topics.iter().map(|t| (*t).to_owned()).collect()),
        group: group.map(str::to_owned),
        start,
        max_in_flight,
        client: "conformance".into(),
        protocol: "grpc",
    }
}

pub fn text(record: &Record) -> String {
    record
        .value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The next batch of records, skipping assignment events; `None` if nothing came before `wait` elapsed.
pub async fn next_records(subscription: &mut Subscription, wait: Duration) -> Option<Vec<Record>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, subscription.next_event()).await {
            Ok(Some(SubscriptionEvent::Records(records))) => return Some(records),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Waits until the subscriber holds `count` partitions (after a rebalance settles).
pub async fn wait_for_assignment(
    subscription: &mut Subscription,
    count: usize,
) -> Result<Vec<TopicPartition>, String> {
    let mut held = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while held.len() != count {
        match tokio::time::timeout_at(deadline, subscription.next_event()).await {
            Ok(Some(SubscriptionEvent::Assigned(partitions))) => held.extend(partitions),
            Ok(Some(SubscriptionEvent::Revoked(partitions))) => partitions.iter().for_each(|p| {
                held.remove(p);
            }),
            Ok(Some(SubscriptionEvent::Records(_))) => {
                return Err("records before the assignment settled".into());
            }
            Ok(None) | Err(_) => {
                return Err(format!("held {} partitions, expected {count}", held.len()));
            }
        }
    }
    Ok(held.into_iter().collect())
}

/// Waits until every member of `group` holds `per_member` partitions.
pub async fn wait_until_balanced(log: &Arc<dyn Log>, group: &str, per_member: usize) -> TestResult {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let members = log.describe_group(group).await?.members;
        if !members.is_empty() && members.iter().all(|m| m.assigned.len() == per_member) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("rebalance did not settle: {members:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives exactly `count` records, acking each if `ack`; fails on timeout.
pub async fn receive(
    subscription: &mut Subscription,
    count: usize,
    ack: bool,
) -> Result<Vec<Record>, String> {
    let mut received = Vec::new();
    while received.len() < count {
        let batch = next_records(subscription, DEADLINE)
            .await
            .ok_or_else(|| format!("received {} of {count} records", received.len()))?;
        for record in batch {
            if ack {
                subscription
                    .control
                    .ack(&record.topic_partition(), record.offset);
            }
            received.push(record);
        }
    }
    Ok(received)
}

pub async fn create(log: &Arc<dyn Log>, topic: &str, partitions: u32) -> TestResult {
    log.create_topic(TopicSpec::named(topic).partitions(partitions))
        .await?;
    Ok(())
}

/// Offsets are 0, 1, 2, ... per partition in append order, and an append returns them.
pub async fn offsets_are_dense_per_partition(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("dense");
    create(&log, &topic, 2).await?;
    let first = log
        .append(
            &topic,
            (0..5)
                .map(|i| NewRecord {
                    partition: Some(0),
                    ..value(format!("a{i}"))
                })
                .collect(),
        )
        .await?;
    let second = log
        .append(
            &topic,
            (0..3)
                .map(|i| NewRecord {
                    partition: Some(1),
                    ..value(format!("b{i}"))
                })
                .collect(),
        )
        .await?;
    let third = log
        .append(
            &topic,
            vec![NewRecord {
                partition: Some(0),
                ..value("a5")
            }],
        )
        .await?;
    assert_eq!(
        first.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(
        second.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(third[0].offset, 5);
    assert!(
        first
            .iter()
            .all(|a| a.partition == 0 && !a.courier_id.is_empty())
    );
    let described = log.describe_topic(&topic).await?;
    assert_eq!(
        described
            .partitions
            .iter()
            .map(|p| (p.low, p.high))
            .collect::<Vec<_>>(),
        vec![(0, 6), (0, 3)]
    );
    Ok(())
}

/// Records with one key land in one partition, in order; fetch returns them as acknowledged.
pub async fn keyed_records_keep_order(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("keyed");
    create(&log, &topic, 4).await?;
    let mut acked = Vec::new();
    for round in 0..10 {
        acked.extend(
            log.append(
                &topic,
                (0..5)
                    .map(|i| keyed("device-7", format!("{round}-{i}")))
                    .collect(),
            )
            .await?,
        );
    }
    let partition = acked[0].partition;
    assert!(
        acked.iter().all(|a| a.partition == partition),
        "one key, one partition"
    );
    let fetched = log
        .fetch(
            &TopicPartition::new(topic.as_str(), partition),
            0,
            FetchLimits::default(),
        )
        .await?;
    let expected: Vec<String> = (0..10)
        .flat_map(|r| (0..5).map(move |i| format!("{r}-{i}")))
        .collect();
    assert_eq!(
        fetched.records.iter().map(text).collect::<Vec<_>>(),
        expected
    );
    for (ack, record) in acked.iter().zip(&fetched.records) {
        assert_eq!(
            (ack.offset, &ack.courier_id),
            (record.offset, &record.courier_id)
        );
    }
    Ok(())
}

/// Fetch honours limits and refuses offsets outside the partition with the watermarks in the error.
pub async fn fetch_limits_and_range(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("fetch");
    create(&log, &topic, 1).await?;
    log.append(&topic, (0..20).map(|i| value(format!("r{i}"))).collect())
        .await?;
    let partition = TopicPartition::new(topic.as_str(), 0);
    let page = log
        .fetch(
            &partition,
            5,
            FetchLimits {
                max_records: 4,
                max_bytes: 1 << 20,
            },
        )
        .await?;
    assert_eq!(
        page.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    assert_eq!((page.low_watermark, page.high_watermark), (0, 20));
    let one = log
        .fetch(
            &partition,
            0,
            FetchLimits {
                max_records: 100,
                max_bytes: 1,
            },
        )
        .await?;
    assert_eq!(
        one.records.len(),
        1,
        "at least one record even over max_bytes"
    );
    assert!(
        log.fetch(&partition, 20, FetchLimits::default())
            .await?
            .records
            .is_empty()
    );
    assert!(matches!(
        log.fetch(&partition, 21, FetchLimits::default()).await,
        Err(Error::OffsetOutOfRange { high: 20, .. })
    ));
    assert!(matches!(
        log.fetch(
            &TopicPartition::new(topic.as_str(), 1),
            0,
            FetchLimits::default()
        )
        .await,
        Err(Error::UnknownPartition { .. })
    ));
    Ok(())
}

/// A plain reader from `earliest` sees everything; from `latest` only what comes after it subscribed.
pub async fn plain_readers_start_where_asked(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("plain");
    create(&log, &topic, 2).await?;
    log.append(&topic, (0..6).map(|i| value(format!("old{i}"))).collect())
        .await?;
    let mut earliest = log
        .subscribe(options(&[&topic], None, Position::Earliest, 100))
        .await?;
    let mut latest = log
        .subscribe(options(&[&topic], None, Position::Latest, 100))
        .await?;
    wait_for_assignment(&mut latest, 2).await?;
    let mut old = receive(&mut earliest, 6, true)
        .await?
        .iter()
        .map(text)
        .collect::<Vec<_>>();
    old.sort();
    assert_eq!(old, (0..6).map(|i| format!("old{i}")).collect::<Vec<_>>());
    log.append(&topic, vec![value("new")]).await?;
    assert_eq!(
        receive(&mut latest, 1, true)
            .await?
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        vec!["new"]
    );
    assert_eq!(
        receive(&mut earliest, 1, true)
            .await?
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        vec!["new"]
    );
    Ok(())
}

/// Two members of a group split the partitions; together they receive every record exactly once.
pub async fn group_members_share_partitions(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("share");
    create(&log, &topic, 4).await?;
    let group = unique_topic("group");
    let mut first = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 1000))
        .await?;
    wait_for_assignment(&mut first, 4).await?;
    let mut second = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 1000))
        .await?;
    let second_holds = wait_for_assignment(&mut second, 2).await?;
    // The first member gives up two partitions to the second.
    wait_until_balanced(&log, &group, 2).await?;
    let acked = log
        .append(
            &topic,
            (0..200)
                .map(|i| keyed(&format!("k{i}"), format!("v{i}")))
                .collect(),
        )
        .await?;
    let for_second = acked
        .iter()
        .filter(|a| second_holds.iter().any(|p| p.partition == a.partition))
        .count();
    let got_second = receive(&mut second, for_second, true).await?;
    let got_first = receive(&mut first, 200 - for_second, true).await?;
    let mut all: Vec<String> = got_first.iter().chain(&got_second).map(text).collect();
    all.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(all, expected, "every record exactly once across the group");
    assert!(
        got_second
            .iter()
            .all(|r| second_holds.contains(&r.topic_partition()))
    );
    assert!(
        next_records(&mut first, Duration::from_millis(200))
            .await
            .is_none(),
        "no duplicates"
    );
    Ok(())
}

/// Acks in any order commit only the contiguous prefix; after the member leaves, a new member gets
/// exactly the unacknowledged records again, and none of the acknowledged prefix.
pub async fn sparse_acks_and_redelivery(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("sparse");
    create(&log, &topic, 1).await?;
    let group = unique_topic("group");
    log.append(&topic, (0..10).map(|i| value(format!("m{i}"))).collect())
        .await?;
    let mut member = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    let records = receive(&mut member, 10, false).await?;
    let partition = records[0].topic_partition();
    for offset in [0, 1, 2, 4, 5, 7] {
        assert_eq!(member.control.ack(&partition, offset), AckOutcome::Acked);
    }
    assert_eq!(
        member.control.ack(&partition, 4),
        AckOutcome::Ignored,
        "a second ack is ignored"
    );
    assert_eq!(member.control.outstanding(), 4);
    member.control.commit().await?;
    let committed = log.describe_group(&group).await?.offsets;
    assert_eq!(
        committed[0].committed,
        Some(3),
        "the commit stops at the first unacknowledged offset"
    );
    member.close().await?;

    let mut next = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    let again = receive(&mut next, 7, true).await?;
    assert_eq!(
        again.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7, 8, 9]
    );
    next.close().await?;
    assert_eq!(
        log.describe_group(&group).await?.offsets[0].committed,
        Some(10)
    );
    Ok(())
}

/// A member that leaves without acking hands its partitions over; the new owner gets every
/// unacknowledged record.
pub async fn dropped_member_records_are_redelivered(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("dropped");
    create(&log, &topic, 2).await?;
    let group = unique_topic("group");
    let mut stays = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 1000))
        .await?;
    wait_for_assignment(&mut stays, 2).await?;
    let mut leaves = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 1000))
        .await?;
    let left_partitions = wait_for_assignment(&mut leaves, 1).await?;
    wait_until_balanced(&log, &group, 1).await?;
    let acked = log
        .append(
            &topic,
            (0..40)
                .map(|i| keyed(&format!("key{i}"), format!("x{i}")))
                .collect(),
        )
        .await?;
    let on_left = acked
        .iter()
        .filter(|a| a.partition == left_partitions[0].partition)
        .count();
    let taken = receive(&mut leaves, on_left, false).await?;
    drop(leaves); // gone without acking, like a client that disconnected
    let mut redelivered = Vec::new();
    let mut from_stays = Vec::new();
    while redelivered.len() < on_left || from_stays.len() < 40 - on_left {
        let batch = next_records(&mut stays, DEADLINE)
            .await
            .ok_or("the survivor stopped receiving")?;
        for record in batch {
            stays.control.ack(&record.topic_partition(), record.offset);
            if record.partition == left_partitions[0].partition {
                redelivered.push(record)
            } else {
                from_stays.push(record)
            }
        }
    }
    assert_eq!(
        redelivered.iter().map(|r| r.offset).collect::<Vec<_>>(),
        taken.iter().map(|r| r.offset).collect::<Vec<_>>()
    );
    Ok(())
}

/// Members that leave right after subscribing, each round at a later moment of their join, finish
/// joining first and leave their group working: the next member gets every record. (On tansu 0.6.0 a
/// member leaving between its JoinGroup and SyncGroup stalled the group for good; see `await_join` in
/// `log/kafka/member/leave.rs`.)
pub async fn members_that_leave_at_once_leave_the_group_working(log: Arc<dyn Log>) -> TestResult {
    const ROUNDS: u64 = 12;
    let topic = unique_topic("leave-at-once");
    create(&log, &topic, 2).await?;
    for round in 0..ROUNDS {
        let group = unique_topic("group");
        let mut leaves = log
            .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
            .await?;
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        leaves.control.close().await?;
        // It finished joining before it left: its assignment came, however soon it closed.
        let joined = tokio::time::timeout(DEADLINE, async {
            while let Some(event) = leaves.next_event().await {
                if matches!(event, SubscriptionEvent::Assigned(_)) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(joined, Ok(true)),
            "round {round}: the member left before its join completed"
        );
        drop(leaves);
        log.append(
            &topic,
            vec![keyed(&format!("k{round}"), format!("r{round}"))],
        )
        .await?;
        let mut next = log
            .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
            .await?;
        let received = receive(&mut next, round as usize + 1, true)
            .await
            .map_err(|e| format!("round {round}: {e}"))?;
        let mut texts: Vec<String> = received.iter().map(text).collect();
        texts.sort();
        let mut expected: Vec<String> = (0..=round).map(|r| format!("r{r}")).collect();
        expected.sort();
        assert_eq!(texts, expected, "round {round}: every record once");
        next.control.close().await?;
    }
    Ok(())
}

/// At most `max_in_flight` records are outstanding; acks let more through.
pub async fn in_flight_window_pauses_delivery(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("window");
    create(&log, &topic, 1).await?;
    log.append(&topic, (0..50).map(|i| value(format!("w{i}"))).collect())
        .await?;
    let mut reader = log
        .subscribe(options(&[&topic], None, Position::Earliest, 5))
        .await?;
    let first = receive(&mut reader, 5, false).await?;
    assert_eq!(first.len(), 5);
    assert!(
        next_records(&mut reader, Duration::from_millis(300))
            .await
            .is_none(),
        "paused at the window"
    );
    reader
        .control
        .ack(&first[0].topic_partition(), first[0].offset);
    let more = receive(&mut reader, 1, false).await?;
    assert_eq!(more[0].offset, 5);
    assert!(
        next_records(&mut reader, Duration::from_millis(200))
            .await
            .is_none(),
        "one ack frees one slot"
    );
    Ok(())
}

/// A member that stops reading (its window full, its queue untaken, more records waiting) still
/// gives partitions up when another member joins: the newcomer gets its share within the deadline
/// and every record of it, and the stalled member, reading again, gets every record of the
/// partitions it kept. (On Kafka a consumer that stops polling would hold the rebalance up for
/// `max.poll.interval.ms`; the member must keep serving the group while it holds records back.)
pub async fn a_member_that_stops_reading_does_not_hold_up_its_group(
    log: Arc<dyn Log>,
) -> TestResult {
    const RECORDS: usize = 2000;
    let topic = unique_topic("stalled");
    create(&log, &topic, 4).await?;
    let group = unique_topic("stalled-group");
    let acked = log
        .append(
            &topic,
            (0..RECORDS)
                .map(|i| keyed(&format!("k{i}"), format!("s{i}")))
                .collect(),
        )
        .await?;
    let mut stalled = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 2))
        .await?;
    wait_for_assignment(&mut stalled, 4).await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while stalled.events.queued_records() < 2 {
        if tokio::time::Instant::now() > deadline {
            return Err("the stalled member's window was never queued".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut newcomer = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 1000))
        .await?;
    let newcomer_holds = wait_for_assignment(&mut newcomer, 2).await?;
    let expected = |held: &[TopicPartition]| -> Vec<String> {
        let mut texts: Vec<String> = acked
            .iter()
            .enumerate()
            .filter(|(_, a)| held.iter().any(|p| p.partition == a.partition))
            .map(|(i, _)| format!("s{i}"))
            .collect();
        texts.sort();
        texts
    };
    let for_newcomer = expected(&newcomer_holds);
    let mut got: Vec<String> = receive(&mut newcomer, for_newcomer.len(), true)
        .await?
        .iter()
        .map(text)
        .collect();
    got.sort();
    assert_eq!(got, for_newcomer, "the newcomer's share, each record once");
    // Reading again, the stalled member gets the rest; records it had queued for partitions it gave
    // up are skipped (the newcomer had them too: redelivery, not loss).
    let kept: Vec<TopicPartition> = (0..4)
        .map(|p| TopicPartition::new(topic.as_str(), p))
        .filter(|p| !newcomer_holds.contains(p))
        .collect();
    let for_stalled = expected(&kept);
    let mut got = Vec::new();
    while got.len() < for_stalled.len() {
        let batch = next_records(&mut stalled, DEADLINE).await.ok_or_else(|| {
            format!(
                "the stalled member received {} of {}",
                got.len(),
                for_stalled.len()
            )
        })?;
        for record in batch {
            stalled
                .control
                .ack(&record.topic_partition(), record.offset);
            if kept.contains(&record.topic_partition()) {
                got.push(text(&record));
            }
        }
    }
    got.sort();
    assert_eq!(
        got, for_stalled,
        "the stalled member's share, each record once"
    );
    stalled.close().await?;
    newcomer.close().await?;
    Ok(())
}

/// A subscriber that reads nothing has at most its window queued, whatever it acknowledges or seeks:
/// acknowledging records it was never handed (offsets are easy to guess) or seeking frees the window,
/// but not the queue, so a client cannot make the gateway hold ever more records for it.
pub async fn unread_records_stay_within_the_window(log: Arc<dyn Log>) -> TestResult {
    const WINDOW: usize = 5;
    let topic = unique_topic("unread");
    create(&log, &topic, 1).await?;
    log.append(&topic, (0..200).map(|i| value(format!("u{i}"))).collect())
        .await?;
    let partition = TopicPartition::new(topic.as_str(), 0);
    let group = unique_topic("unread-group");
    let mut member = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, WINDOW))
        .await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while member.events.queued_records() < WINDOW {
        if tokio::time::Instant::now() > deadline {
            return Err("the first window was never queued".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for round in 0..5 {
        for offset in 0..200 {
            member.control.ack(&partition, offset);
        }
        member.control.seek(&partition, Position::Earliest).await?;
        // Long enough for a read loop to queue another window if it would.
        for _ in 0..10 {
            let queued = member.events.queued_records();
            assert!(
                queued <= WINDOW,
                "round {round}: {queued} records queued for a window of {WINDOW}"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    // Reading again, the subscription goes on from where it was sought to.
    let records = receive(&mut member, WINDOW, true).await?;
    assert!(records.iter().all(|record| record.partition == 0));
    member.close().await?;
    Ok(())
}

/// Seeking inside a subscription moves its position; resetting a group's offsets is refused while it is
/// live, and takes effect for the next member.
pub async fn seek_and_commit(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("seek");
    create(&log, &topic, 1).await?;
    let group = unique_topic("group");
    log.append(&topic, (0..10).map(|i| value(format!("s{i}"))).collect())
        .await?;
    let partition = TopicPartition::new(topic.as_str(), 0);
    let mut member = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    receive(&mut member, 10, true).await?;
    member.control.seek(&partition, Position::Offset(7)).await?;
    assert_eq!(
        receive(&mut member, 3, true)
            .await?
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    assert!(matches!(
        log.commit(&group, &[(partition.clone(), 2)]).await,
        Err(Error::GroupActive { .. })
    ));
    let other = TopicPartition::new("no-such-topic-held", 0);
    assert!(
        member
            .control
            .seek(&other, Position::Earliest)
            .await
            .is_err()
    );
    member.close().await?;
    log.commit(&group, &[(partition.clone(), 2)]).await?;
    let mut next = log
        .subscribe(options(&[&topic], Some(&group), Position::Latest, 100))
        .await?;
    assert_eq!(receive(&mut next, 8, true).await?[0].offset, 2);
    assert_eq!(log.resolve(&partition, Position::Earliest).await?, 0);
    assert_eq!(log.resolve(&partition, Position::Latest).await?, 10);
    Ok(())
}

/// A pattern subscription picks up topics created after it started.
pub async fn patterns_follow_new_topics(log: Arc<dyn Log>) -> TestResult {
    let prefix = unique_topic("pattern");
    let mut reader = log
        .subscribe(SubscribeOptions {
            topics: TopicSelector::pattern(&format!("{prefix}\\..*"))?,
            ..options(&[], None, Position::Earliest, 100)
        })
        .await?;
    let topic = format!("{prefix}.later");
    create(&log, &topic, 1).await?;
    wait_for_assignment(&mut reader, 1).await?;
    log.append(&topic, vec![value("hello")]).await?;
    assert_eq!(
        receive(&mut reader, 1, true).await?[0].topic.as_ref(),
        topic
    );
    Ok(())
}

/// Bad requests fail with the right error before anything is written.
pub async fn bad_requests_are_refused(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("bad");
    create(&log, &topic, 2).await?;
    assert!(matches!(
        log.append("not a topic", vec![value("x")]).await,
        Err(Error::InvalidTopicName { .. })
    ));
    assert!(matches!(
        log.append(&topic, vec![]).await,
        Err(Error::InvalidRequest(_))
    ));
    let wrong_partition = NewRecord {
        partition: Some(2),
        ..value("x")
    };
    assert!(matches!(
        log.append(&topic, vec![value("ok"), wrong_partition]).await,
        Err(Error::UnknownPartition { .. })
    ));
    assert!(matches!(
        log.create_topic(TopicSpec::named(&topic)).await,
        Err(Error::TopicExists { .. })
    ));
    assert!(matches!(
        log.subscribe(options(&[&topic], None, Position::Earliest, 0))
            .await,
        Err(Error::InvalidRequest(_))
    ));
    let group = unique_topic("group");
    let _member = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 10))
        .await?;
    let mqtt = SubscribeOptions {
        protocol: "mqtt",
        ..options(&[&topic], Some(&group), Position::Earliest, 10)
    };
    assert!(matches!(
        log.subscribe(mqtt).await,
        Err(Error::GroupProtocolConflict { .. })
    ));
    let described = log.describe_topic(&topic).await?;
    assert!(
        described.partitions.iter().all(|p| p.high == 0),
        "nothing of a refused batch was written"
    );
    Ok(())
}

/// One protocol holds a consumer group while the group has members; a subscriber of another
/// protocol is refused until the last of them left (closed or dropped), and may then take the group.
pub async fn a_group_changes_protocol_only_once_its_members_left(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("protocols");
    create(&log, &topic, 2).await?;
    let group = unique_topic("group");
    let grpc = || options(&[&topic], Some(&group), Position::Earliest, 10);
    let mqtt = || SubscribeOptions {
        protocol: "mqtt",
        ..grpc()
    };
    // Each member holds partitions before it leaves, as a client's would: a member that leaves in
    // the middle of its join stalls a tansu group (gateway/tests/kafka.rs), which is not what this
    // checks.
    let mut first = log.subscribe(grpc()).await?;
    wait_for_assignment(&mut first, 2).await?;
    let second = log.subscribe(grpc()).await?;
    wait_until_balanced(&log, &group, 1).await?;
    assert!(matches!(
        log.subscribe(mqtt()).await,
        Err(Error::GroupProtocolConflict { .. })
    ));
    second.close().await?;
    // The one left takes both partitions back (its rejoin finished) before it goes too.
    wait_until_balanced(&log, &group, 2).await?;
    assert!(
        matches!(
            log.subscribe(mqtt()).await,
            Err(Error::GroupProtocolConflict { .. })
        ),
        "one member is left"
    );
    drop(first);
    let mut taken = subscribe_once_free(&log, mqtt()).await?;
    wait_for_assignment(&mut taken, 2).await?;
    log.append(&topic, vec![value("after")]).await?;
    let records = receive(&mut taken, 1, true).await?;
    assert_eq!(
        text(&records[0]),
        "after",
        "the new protocol's member reads"
    );
    taken.close().await?;
    let mut back = subscribe_once_free(&log, grpc()).await?;
    wait_for_assignment(&mut back, 2).await?;
    back.close().await?;
    Ok(())
}

/// Subscribes as soon as the group is free for `options`' protocol: a broker may list a member that
/// left (a dropped member leaves in the background) for a moment.
async fn subscribe_once_free(
    log: &Arc<dyn Log>,
    options: SubscribeOptions,
) -> Result<Subscription, Error> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match log.subscribe(options.clone()).await {
            Err(Error::GroupProtocolConflict { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result,
        }
    }
}

/// Headers, keys, null values and producer timestamps come back as written; courier ids are kept.
pub async fn records_round_trip(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("roundtrip");
    create(&log, &topic, 1).await?;
    let id = ulid::Ulid::new().to_string();
    let record = NewRecord {
        key: Some(Bytes::from_static(b"k")),
        value: None,
        headers: vec![
            courier_gateway::log::Header {
                key: "h".into(),
                value: Bytes::from_static(b"1"),
            },
            courier_gateway::log::Header {
                key: "h".into(),
                value: Bytes::from_static(b"2"),
            },
        ],
        partition: None,
        timestamp_ms: Some(1_700_000_000_000),
        courier_id: id.clone(),
    };
    log.append(&topic, vec![record]).await?;
    let fetched = log
        .fetch(
            &TopicPartition::new(topic.as_str(), 0),
            0,
            FetchLimits::default(),
        )
        .await?;
    let got = &fetched.records[0];
    assert_eq!(got.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(got.value, None);
    assert_eq!(
        got.headers
            .iter()
            .map(|h| (h.key.as_str(), &h.value[..]))
            .collect::<Vec<_>>(),
        vec![("h", &b"1"[..]), ("h", &b"2"[..])]
    );
    assert_eq!(got.timestamp_ms, 1_700_000_000_000);
    assert_eq!(got.courier_id, id);
    let by_time = log
        .resolve(
            &TopicPartition::new(topic.as_str(), 0),
            Position::Timestamp(1_700_000_000_001),
        )
        .await?;
    assert_eq!(by_time, 1, "no record at or after that time: the end");
    Ok(())
}

/// Deleting a topic removes its records and offsets; a new topic of the same name starts empty and
/// takes records (on Kafka, through a producer that wrote to the old one).
pub async fn delete_topic_removes_everything(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("delete");
    create(&log, &topic, 1).await?;
    let group = unique_topic("group");
    log.append(&topic, vec![value("x")]).await?;
    log.commit(&group, &[(TopicPartition::new(topic.as_str(), 0), 1)])
        .await?;
    log.delete_topic(&topic).await?;
    assert!(matches!(
        log.describe_topic(&topic).await,
        Err(Error::UnknownTopic { .. })
    ));
    assert!(log.describe_group(&group).await?.offsets.is_empty());
    create(&log, &topic, 1).await?;
    assert_eq!(log.describe_topic(&topic).await?.partitions[0].high, 0);
    let appended = log.append(&topic, vec![value("y")]).await?;
    assert_eq!(appended[0].offset, 0);
    assert_eq!(log.describe_topic(&topic).await?.partitions[0].high, 1);
    Ok(())
}

/// Many concurrent producers: every acknowledged record is stored exactly once where its ack said.
pub async fn concurrent_appends_are_all_acknowledged(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("concurrent");
    create(&log, &topic, 3).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for producer in 0..8 {
        let (log, topic) = (log.clone(), topic.clone());
        tasks.spawn(async move {
            let mut acks = Vec::new();
            for batch in 0..25 {
                let records = (0..4)
                    .map(|i| keyed(&format!("p{producer}"), format!("{producer}-{batch}-{i}")))
                    .collect();
                let appended = log.append(&topic, records).await?;
                acks.extend(
                    appended
                        .into_iter()
                        .enumerate()
                        .map(|(i, a)| (a, format!("{producer}-{batch}-{i}"))),
                );
            }
            Ok::<_, Error>(acks)
        });
    }
    let mut expected = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (ack, text) in done?? {
            assert!(
                expected.insert((ack.partition, ack.offset), text).is_none(),
                "two acks for one offset"
            );
        }
    }
    assert_eq!(expected.len(), 800);
    let mut stored = BTreeMap::new();
    for partition in 0..3 {
        let mut offset = 0;
        loop {
            let page = log
                .fetch(
                    &TopicPartition::new(topic.as_str(), partition),
                    offset,
                    FetchLimits::default(),
                )
                .await?;
            if page.records.is_empty() {
                break;
            }
            for record in &page.records {
                stored.insert((partition, record.offset), text(record));
            }
            offset = page.records.last().map_or(offset, |r| r.offset + 1);
        }
    }
    assert_eq!(stored, expected);
    Ok(())
}

/// The values of `records` per key, in the order received.
fn values_by_key(records: &[Record]) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in records {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        by_key.entry(key).or_default().push(text(record));
    }
    by_key
}

/// `count` values per key, numbered: what a subscriber of `keys` must get, each once and in order.
fn numbered(keys: &[&str], count: usize) -> BTreeMap<String, Vec<String>> {
    keys.iter()
        .map(|key| {
            (
                (*key).to_owned(),
                (0..count).map(|i| format!("{key}-{i}")).collect(),
            )
        })
        .collect()
}

/// Members of a fan-out hub get the records addressed to them, each once and in order, whatever
/// the others do; and a member's control keeps the `SubscriptionControl` contract: an ack frees one
/// outstanding record, a second ack of it or an ack of a record it was never given is ignored, seek
/// is refused (a shared reader has no position of the member's own), and a member past its lag
/// limit holds no one up and, once it acks, catches up losing nothing.
pub async fn fanout_members_keep_the_subscription_contract(log: Arc<dyn Log>) -> TestResult {
    const LAG_LIMIT: usize = 8;
    const PER_KEY: usize = 30;
    let topic = unique_topic("fanout");
    create(&log, &topic, 2).await?;
    let addressing = Arc::new(ByKey::for_protocol("grpc"));
    let fanout = Fanout::new(log.clone(), addressing, LAG_LIMIT, CancellationToken::new());
    let mut slow = fanout
        .subscribe(&topic, vec!["sensor".into()])
        .await?
        .subscription;
    let mut fast = fanout
        .subscribe(&topic, vec!["sensor".into(), "valve".into()])
        .await?
        .subscription;
    for i in 0..PER_KEY {
        log.append(
            &topic,
            vec![
                keyed("sensor", format!("sensor-{i}")),
                keyed("valve", format!("valve-{i}")),
            ],
        )
        .await?;
    }
    let everything = receive(&mut fast, 2 * PER_KEY, true).await?;
    assert_eq!(
        values_by_key(&everything),
        numbered(&["sensor", "valve"], PER_KEY)
    );
    assert_eq!(fast.control.outstanding(), 0);

    // The slow member acks nothing: it holds at most its lag limit, and only its key.
    let mut held = Vec::new();
    while let Some(batch) = next_records(&mut slow, Duration::from_millis(500)).await {
        held.extend(batch);
    }
    assert!(
        !held.is_empty() && held.len() <= LAG_LIMIT,
        "{} records held unacknowledged (limit {LAG_LIMIT})",
        held.len()
    );
    assert_eq!(slow.control.outstanding(), held.len());
    let first = held[0].topic_partition();
    assert_eq!(slow.control.ack(&first, held[0].offset), AckOutcome::Acked);
    assert_eq!(
        slow.control.ack(&first, held[0].offset),
        AckOutcome::Ignored,
        "a second ack is ignored"
    );
    let valve = everything
        .iter()
        .find(|record| record.key.as_deref() == Some(&b"valve"[..]))
        .ok_or("no valve record")?;
    assert_eq!(
        slow.control.ack(&valve.topic_partition(), valve.offset),
        AckOutcome::Ignored,
        "an ack of a record the member was never given is ignored"
    );
    assert_eq!(slow.control.outstanding(), held.len() - 1);
    assert!(matches!(
        slow.control.seek(&first, Position::Earliest).await,
        Err(Error::InvalidRequest(_))
    ));

    for record in &held[1..] {
        assert_eq!(
            slow.control.ack(&record.topic_partition(), record.offset),
            AckOutcome::Acked
        );
    }
    let rest = receive(&mut slow, PER_KEY - held.len(), true).await?;
    held.extend(rest);
    assert_eq!(values_by_key(&held), numbered(&["sensor"], PER_KEY));
    assert!(
        next_records(&mut slow, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing twice"
    );
    slow.control.commit().await?;
    slow.close().await?;

    // The member left; the other still gets what comes next.
    log.append(&topic, vec![keyed("valve", "valve-after")])
        .await?;
    let after = receive(&mut fast, 1, true).await?;
    assert_eq!(text(&after[0]), "valve-after");
    fast.close().await?;
    Ok(())
}

/// A table holds the latest record of each key, forgets a key at its tombstone, reports each
/// change, and once `caught_up` returns holds everything written before the call.
pub async fn tables_hold_the_latest_record_of_each_key(log: Arc<dyn Log>) -> TestResult {
    let topic = unique_topic("table");
    log.create_topic(TopicSpec::named(&topic).partitions(2).compacted())
        .await?;
    log.append(&topic, vec![keyed("a", "a-1"), keyed("b", "b-1")])
        .await?;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let on_change = {
        let changes = changes.clone();
        Box::new(move |key: &str, record: Option<&Record>, _: &Version| {
            let mut changes = changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            changes.push((key.to_owned(), record.map(text)));
        })
    };
    let cancel = CancellationToken::new();
    let table = Table::start(log.clone(), "grpc", &topic, on_change, cancel.clone()).await?;
    table.caught_up(DEADLINE).await?;
    assert_eq!(
        table.get("a").map(|record| text(&record)),
        Some("a-1".into())
    );

    let tombstone = NewRecord {
        key: Some(Bytes::from_static(b"b")),
        value: None,
        ..NewRecord::default()
    };
    log.append(
        &topic,
        vec![keyed("a", "a-2"), tombstone, keyed("c", "c-1")],
    )
    .await?;
    table.caught_up(DEADLINE).await?;
    assert_eq!(
        table.get("a").map(|record| text(&record)),
        Some("a-2".into())
    );
    assert!(table.get("b").is_none(), "a tombstone removes its key");
    let mut kept: Vec<String> = table.matching(|_| true).iter().map(text).collect();
    kept.sort();
    assert_eq!(kept, ["a-2", "c-1"]);
    let mut changed = changes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // Keys on different partitions may be applied in either order; each key's changes are in order.
    changed.sort_by(|left, right| left.0.cmp(&right.0));
    assert_eq!(
        changed,
        [
            ("a".to_owned(), Some("a-1".to_owned())),
            ("a".to_owned(), Some("a-2".to_owned())),
            ("b".to_owned(), Some("b-1".to_owned())),
            ("b".to_owned(), None),
            ("c".to_owned(), Some("c-1".to_owned())),
        ]
    );
    cancel.cancel();
    Ok(())
}
