//! Two gateway processes in front of one Kafka-protocol broker (tansu): the gateway holds no state, so
//! a consumer group spreads over both, and when one gateway dies (kill -9) its subscriber reconnects to
//! the other (as through a load balancer) and carries on from the group's committed offsets. Nothing
//! acknowledged to the producer is lost; the only records delivered twice are ones the dead gateway had
//! delivered (at-least-once: its last acknowledgements may not have been committed).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::*;
use courier_grpc::proto::v1 as pb;
use courier_testkit::Tansu;

const RECORDS: u64 = 600;

/// Reads from a subscription, acking everything, until `until` holds or the stream ends.
async fn drain_into(
    stream: &mut SubscribeStream,
    seen: &mut Vec<String>,
    until: impl Fn(&[String]) -> bool,
) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !until(seen) && tokio::time::Instant::now() < deadline {
        match stream.next_records(Duration::from_millis(500)).await {
            Ok(Some(records)) => {
                seen.extend(records.iter().map(value_of));
                stream.ack(&records).await?;
            }
            Ok(None) => {}
            // The gateway behind this stream died: the caller reconnects.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spreads_over_two_gateways_and_survives_one() -> TestResult {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let settings = [("COURIER_GROUPS__COMMIT_INTERVAL", "200ms")];
    let doomed = Gateway::start_kafka(&dir.path().join("a"), &broker.bootstrap(), &settings)?;
    let survivor = Gateway::start_kafka(&dir.path().join("b"), &broker.bootstrap(), &settings)?;
    let (mut admin, topic) = create_topic(&survivor, "replicas", 4).await?;
    let group = unique("group");

    let mut on_doomed = SubscribeStream::open(
        &mut doomed.streams().await?,
        start_in_group(&topic, &group, 50),
    )
    .await?;
    let mut on_survivor = SubscribeStream::open(
        &mut survivor.streams().await?,
        start_in_group(&topic, &group, 50),
    )
    .await?;
    // Two members, two partitions each, one through each gateway. (Read from the streams: tansu's
    // DescribeGroups carries no member assignments, so a gateway only knows its own members'.)
    let (doomed_holds, survivor_holds) = tokio::try_join!(
        on_doomed.wait_for_partitions(2),
        on_survivor.wait_for_partitions(2)
    )?;
    assert!(doomed_holds.is_disjoint(&survivor_holds));
    let members = admin
        .describe_group(pb::DescribeGroupRequest {
            group: group.clone(),
        })
        .await?
        .into_inner()
        .members;
    assert_eq!(
        members.len(),
        2,
        "the broker sees both members: {members:?}"
    );

    // Produce through the survivor, keyed over all partitions; remember what was acknowledged.
    let (producer, mut responses) =
        produce_continuously(&mut survivor.streams().await?, &topic, RECORDS, |n| {
            vec![record(Some(&format!("k{}", n % 16)), &format!("v{n}"))]
        })
        .await?;
    let mut acked = BTreeSet::new();
    let mut from_doomed = Vec::new();
    let mut from_survivor = Vec::new();
    // Both members read about a third of the records, then the first gateway dies.
    while acked.len() < (RECORDS / 3) as usize {
        if let Some(response) = responses.message().await?
            && response.error.is_none()
        {
            acked.insert(format!("v{}", response.request_id));
        }
    }
    drain_into(&mut on_doomed, &mut from_doomed, |seen| seen.len() >= 20).await?;
    doomed.kill9()?;

    // Its client reconnects to the other gateway, same group.
    let mut reconnected = SubscribeStream::open(
        &mut survivor.streams().await?,
        start_in_group(&topic, &group, 50),
    )
    .await?;
    while let Some(response) = responses.message().await? {
        if response.error.is_none() {
            acked.insert(format!("v{}", response.request_id));
        }
    }
    producer.await?;
    assert_eq!(
        acked.len(),
        RECORDS as usize,
        "every produce was acknowledged"
    );

    let mut from_reconnected = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let received: BTreeSet<&String> = from_doomed
            .iter()
            .chain(&from_survivor)
            .chain(&from_reconnected)
            .collect();
        if acked.iter().all(|value| received.contains(value)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged records never arrived: {:?}",
            acked
                .iter()
                .filter(|v| !received.contains(v))
                .take(10)
                .collect::<Vec<_>>()
        );
        for (stream, seen) in [
            (&mut reconnected, &mut from_reconnected),
            (&mut on_survivor, &mut from_survivor),
        ] {
            if let Some(records) = stream.next_records(Duration::from_millis(200)).await? {
                seen.extend(records.iter().map(value_of));
                stream.ack(&records).await?;
            }
        }
    }

    // Duplicates: only records the dead gateway had delivered may come again.
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for value in from_doomed
        .iter()
        .chain(&from_survivor)
        .chain(&from_reconnected)
    {
        *counts.entry(value).or_default() += 1;
    }
    let doomed_set: BTreeSet<&String> = from_doomed.iter().collect();
    for (value, count) in &counts {
        assert!(
            *count == 1 || (*count == 2 && doomed_set.contains(value)),
            "{value} delivered {count} times"
        );
    }
    eprintln!(
        "delivered: {} via the killed gateway, {} via the survivor, {} after reconnecting; {} duplicates",
        from_doomed.len(),
        from_survivor.len(),
        from_reconnected.len(),
        counts.values().filter(|c| **c > 1).count()
    );
    assert!(survivor.terminate()?.success());
    Ok(())
}
