//! SIGTERM during live traffic: streams answer what they hold and end with UNAVAILABLE, subscribers
//! commit what was acknowledged, the process exits 0; after a restart nothing acknowledged is missing and
//! nothing acknowledged is delivered again.

mod common;

use std::collections::BTreeSet;

use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_and_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let gateway = Gateway::start(&data, &[("COURIER_GROUPS__COMMIT_INTERVAL", "1h")])?;
    let (_, topic) = create_topic(&gateway, "drain", 2).await?;
    let group = unique("drainers");
    let mut client = gateway.streams().await?;

    // A subscriber that acknowledges everything it gets, on its own task.
    let mut subscriber =
        SubscribeStream::open(&mut client, start_in_group(&topic, &group, 500)).await?;
    let consumer = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        loop {
            match subscriber.next_records(DEADLINE).await {
                Ok(Some(batch)) => {
                    if subscriber.ack(&batch).await.is_err() {
                        return Ok::<_, String>((acked, None));
                    }
                    acked.extend(batch.iter().map(value_of));
                }
                Ok(None) => return Ok((acked, None)),
                Err(status) => return Ok((acked, Some(status.code()))),
            }
        }
    });

    // A producer streaming continuously.
    let (producer, mut responses) =
        produce_continuously(&mut client, &topic, 1_000_000, |request_id| {
            (0..10)
                .map(|i| record(None, &format!("{request_id}/{i}")))
                .collect()
        })
        .await?;
    let mut produced = BTreeSet::new();
    while produced.len() < 3_000 {
        let response = responses
            .message()
            .await?
            .ok_or("produce stream ended early")?;
        produced.extend((0..response.acks.len()).map(|i| format!("{}/{i}", response.request_id)));
    }

    let stopping = std::thread::spawn(move || gateway.terminate());
    // Like any client: once requests come back "not written, shutting down", stop sending.
    let mut refused = 0;
    let ending = loop {
        match responses.message().await {
            Ok(Some(response)) => match response.error {
                None => produced.extend(
                    (0..response.acks.len()).map(|i| format!("{}/{i}", response.request_id)),
                ),
                Some(error) => {
                    assert_eq!(error.code, Code::Unavailable as i32, "{error:?}");
                    assert!(response.acks.is_empty());
                    refused += 1;
                    producer.abort();
                }
            },
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    producer.abort();
    let status = stopping.join().map_err(|_| "terminate panicked")??;
    eprintln!("{refused} request(s) refused during the drain");
    assert!(status.success(), "exit status {status:?}");
    let ending = ending.ok_or("the produce stream ended without a status")?;
    assert_eq!(ending.code(), Code::Unavailable, "{ending:?}");
    assert!(
        ending.message().contains("shutting down"),
        "{}",
        ending.message()
    );
    let (acked, subscriber_end) = consumer.await??;
    assert_eq!(
        subscriber_end,
        Some(Code::Unavailable),
        "the subscriber is told why"
    );
    assert!(!acked.is_empty());

    // After a restart: every acknowledged produce is stored, and the group resumes exactly after what
    // its member acknowledged (drain committed it, though the periodic commit never ran).
    let gateway = Gateway::start(&data, &[])?;
    let mut client = gateway.streams().await?;
    let mut next = SubscribeStream::open(&mut client, start_in_group(&topic, &group, 1000)).await?;
    let mut redelivered = BTreeSet::new();
    while let Some(batch) = next.next_records(std::time::Duration::from_secs(2)).await? {
        next.ack(&batch).await?;
        redelivered.extend(batch.iter().map(value_of));
    }
    let again: Vec<_> = acked.intersection(&redelivered).collect();
    assert!(
        again.is_empty(),
        "{} acknowledged records were delivered again, e.g. {:?}",
        again.len(),
        again.first()
    );
    let stored: BTreeSet<_> = acked.union(&redelivered).cloned().collect();
    let missing: Vec<_> = produced.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged produces missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    eprintln!(
        "produced {} acked, consumer acked {}, {} after restart",
        produced.len(),
        acked.len(),
        redelivered.len()
    );
    drop(next);
    assert!(gateway.terminate()?.success());
    Ok(())
}
