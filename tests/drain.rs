//! SIGTERM during live gRPC, MQTT and AMQP traffic, all on one gateway: gRPC streams answer what they
//! hold and end with UNAVAILABLE, the MQTT 5 client gets DISCONNECT "server shutting down" (0x8B), the
//! AMQP connection closes with `amqp:connection:forced`, subscribers commit what was acknowledged, and
//! the process exits 0 within `shutdown.grace`. After a restart nothing any protocol acknowledged is
//! missing and nothing acknowledged is delivered again.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{
    clients::{Acked, OnDisconnect, acked_payloads, spawn_amqp_sender, spawn_mqtt_publisher},
    *,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// The drain deadline the test gives the gateway; the process must have exited by then.
const GRACE: Duration = Duration::from_secs(10);
const MQTT_TOPIC: &str = "drain/mqtt";

fn assert_all_stored(what: &str, acked: &BTreeSet<String>, stored: &BTreeSet<String>) {
    let missing: Vec<_> = acked.difference(stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records {what} acknowledged are missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_protocol_and_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let grace = format!("{}s", GRACE.as_secs());
    let gateway = Gateway::start(
        &data,
        &[
            ("COURIER_GROUPS__COMMIT_INTERVAL", "1h"),
            ("COURIER_SHUTDOWN__GRACE", &grace),
        ],
    )?;
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
    let amqp_topic = unique("drain-amqp");
    let (mqtt_acked, amqp_acked) = (Acked::default(), Acked::default());
    let never = CancellationToken::new();
    let mqtt = spawn_mqtt_publisher(
        gateway.mqtt,
        MQTT_TOPIC,
        "m",
        mqtt_acked.clone(),
        OnDisconnect::Stop,
        never.clone(),
    );
    let amqp = spawn_amqp_sender(
        gateway.amqp,
        &amqp_topic,
        "a",
        amqp_acked.clone(),
        OnDisconnect::Stop,
        never,
    );
    let mut produced = BTreeSet::new();
    // Until every protocol has traffic acknowledged (gRPC's responses are read meanwhile).
    while produced.len() < 3_000
        || acked_payloads(&mqtt_acked).len() < 20
        || acked_payloads(&amqp_acked).len() < 20
    {
        let response = responses
            .message()
            .await?
            .ok_or("produce stream ended early")?;
        produced.extend((0..response.acks.len()).map(|i| format!("{}/{i}", response.request_id)));
    }

    let sigterm = Instant::now();
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
    let stopped_after = sigterm.elapsed();
    eprintln!("{refused} request(s) refused during the drain; exited after {stopped_after:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        stopped_after < GRACE,
        "exited after {stopped_after:?}, past the {GRACE:?} grace"
    );
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
    let mqtt_told = mqtt.await??;
    eprintln!("MQTT client told: {mqtt_told}");
    assert!(
        mqtt_told.starts_with("ServerShuttingDown"),
        "the MQTT client is told why: {mqtt_told}"
    );
    let amqp_told = amqp.await??;
    eprintln!("AMQP client told: {amqp_told}");
    assert!(
        amqp_told.contains("ConnectionForced") && amqp_told.contains("shutting down"),
        "the AMQP client is told why: {amqp_told}"
    );
    let mqtt_acked: BTreeSet<String> = acked_payloads(&mqtt_acked).into_iter().collect();
    let amqp_acked: BTreeSet<String> = acked_payloads(&amqp_acked).into_iter().collect();

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
    assert_all_stored(
        "MQTT",
        &mqtt_acked,
        &stored_values(&gateway, "mqtt.messages")
            .await?
            .into_iter()
            .collect(),
    );
    assert_all_stored(
        "AMQP",
        &amqp_acked,
        &stored_values(&gateway, &amqp_topic)
            .await?
            .into_iter()
            .collect(),
    );
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
        "gRPC: produced {} acked, consumer acked {}, {} after restart; MQTT {} acked; AMQP {} acked",
        produced.len(),
        acked.len(),
        redelivered.len(),
        mqtt_acked.len(),
        amqp_acked.len()
    );
    drop(next);
    assert!(gateway.terminate()?.success());
    Ok(())
}
