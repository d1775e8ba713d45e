//! kill -9 during a produce stream: after a restart, every acknowledged record is where its ack said,
//! with its value and courier id.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use courier_grpc::proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let gateway = Gateway::start(&data, &[])?;
    let (_, topic) = create_topic(&gateway, "crash", 3).await?;

    // A producer pipelines requests as fast as the gateway takes them; acks are collected as they come.
    let mut client = gateway.streams().await?;
    let (sender, mut responses) =
        produce_continuously(&mut client, &topic, 100_000, |request_id| {
            (0..20)
                .map(|i| {
                    record(
                        Some(&format!("k{}", (request_id + i) % 7)),
                        &format!("{request_id}/{i}"),
                    )
                })
                .collect()
        })
        .await?;
    let mut acked: BTreeMap<(i32, i64), (String, String)> = BTreeMap::new();
    while acked.len() < 5_000 {
        let response = tokio::time::timeout(DEADLINE, responses.message())
            .await?
            .map_err(|s| format!("{s}"))?
            .ok_or("stream ended")?;
        assert!(response.error.is_none(), "{:?}", response.error);
        for (i, ack) in response.acks.iter().enumerate() {
            let value = format!("{}/{i}", response.request_id);
            assert!(
                acked
                    .insert((ack.partition, ack.offset), (value, ack.courier_id.clone()))
                    .is_none(),
                "offset acked twice"
            );
        }
    }
    gateway.kill9()?;
    // Whatever acks were already on the wire when the process died are acks too.
    while let Ok(Ok(Some(response))) =
        tokio::time::timeout(Duration::from_secs(2), responses.message()).await
    {
        for (i, ack) in response.acks.iter().enumerate() {
            acked.insert(
                (ack.partition, ack.offset),
                (
                    format!("{}/{i}", response.request_id),
                    ack.courier_id.clone(),
                ),
            );
        }
    }
    sender.abort();

    let gateway = Gateway::start(&data, &[])?;
    let mut client = gateway.streams().await?;
    let mut found = 0;
    for partition in 0..3 {
        let wanted: Vec<_> = acked.range((partition, 0)..(partition + 1, 0)).collect();
        let mut offset = 0;
        let mut stored = BTreeMap::new();
        loop {
            let page = client
                .fetch(pb::FetchRequest {
                    topic: topic.clone(),
                    partition,
                    offset,
                    max_records: 5000,
                    max_bytes: 0,
                })
                .await?
                .into_inner();
            if page.records.is_empty() {
                break;
            }
            for record in &page.records {
                stored.insert(record.offset, (value_of(record), record.courier_id.clone()));
            }
            offset = page.records.last().map_or(offset, |r| r.offset + 1);
        }
        for ((_, offset), expected) in wanted {
            assert_eq!(
                stored.get(offset),
                Some(expected),
                "acknowledged record at {partition}@{offset} lost or changed"
            );
            found += 1;
        }
    }
    assert_eq!(found, acked.len());
    eprintln!("{found} acknowledged records checked after kill -9");
    assert!(gateway.terminate()?.success());
    Ok(())
}
