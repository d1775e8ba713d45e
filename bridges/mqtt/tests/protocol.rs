//! The MQTT endpoint at the packet level, in process over a real embedded log: what real client
//! libraries do not let a test do on purpose (retransmit a QoS 2 packet id, send malformed bytes, break
//! the protocol). Client packets are written with rumqttd's 3.1.1 codec; replies are read with it too.

use bytes::{Bytes, BytesMut};
use courier_gateway::log::Log;
use courier_mqtt::Config;
use rumqttd::protocol::{ConnectReturnCode, Packet, Protocol, QoS, v4::V4};
use tokio::io::AsyncReadExt as _;

mod slow_joins;
mod support;

use slow_joins::SlowJoins;
use support::*;

/// A QoS 2 packet id sent again (DUP), on the same connection and after a reconnect, is answered with
/// PUBREC each time but stored once; PUBREL releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_retransmissions_store_one_record() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let (mut client, _) = RawClient::connect(endpoint.address, "qos2-client", false).await?;
    publish_expecting_pubrec(&mut client, false).await?;
    publish_expecting_pubrec(&mut client, true).await?;
    drop(client); // the connection drops before PUBREL

    let (mut client, session_present) =
        RawClient::connect(endpoint.address, "qos2-client", false).await?;
    assert!(session_present);
    publish_expecting_pubrec(&mut client, true).await?;
    release(&mut client, 7).await?;

    let stored = endpoint.stored_values().await?;
    let copies = stored
        .iter()
        .filter(|value| &value[..] == b"exactly-once")
        .count();
    assert_eq!(copies, 1, "stored {copies} copies");
    Ok(())
}

/// The client moves to another replica (as after a gateway crash, the first one's memory is of no
/// use) between PUBREC and PUBREL, and retransmits: the new replica finds the message it recorded and
/// stores it once. The packet id, released, then carries a new message, which is stored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_retransmissions_to_another_replica_store_one_record() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let other = endpoint.replica().await?;
    let (mut client, _) = RawClient::connect(endpoint.address, "mover", false).await?;
    publish_expecting_pubrec(&mut client, false).await?;

    let (mut moved, session_present) = RawClient::connect(other, "mover", false).await?;
    assert!(session_present);
    client.expect_closed().await?;
    publish_expecting_pubrec(&mut moved, true).await?;
    release(&mut moved, 7).await?;
    assert_eq!(endpoint.copies_of(b"exactly-once").await?, 1);

    moved
        .send_bytes(&publish_bytes("q/2", b"next", QoS::ExactlyOnce, 7, false))
        .await?;
    assert!(matches!(moved.read().await?, Some(Packet::PubRec(rec, _)) if rec.pkid == 7));
    release(&mut moved, 7).await?;
    assert_eq!(
        endpoint.copies_of(b"next").await?,
        1,
        "a reused packet id is a new message"
    );
    Ok(())
}

/// A QoS 2 subscriber acknowledged a message with PUBREC, got PUBREL and moved to another replica
/// before PUBCOMP. MQTT clients such as paho hand the message to the application only at PUBREL,
/// so the new replica sends that PUBREL again, first, and does not deliver the message a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_qos2_subscriber_gets_its_pubrel_again() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let other = endpoint.replica().await?;
    let (mut subscriber, _) = RawClient::connect(endpoint.address, "receiver", false).await?;
    subscriber
        .send(subscribe_packet(1, "q/out", QoS::ExactlyOnce))
        .await?;
    assert!(matches!(subscriber.read().await?, Some(Packet::SubAck(..))));
    let (mut publisher, _) = RawClient::connect(endpoint.address, "sender", true).await?;
    publish_acked(&mut publisher, "q/out", b"first", 1).await?;

    let pkid = match subscriber.read().await? {
        Some(Packet::Publish(publish, _)) if &publish.payload[..] == b"first" => subscriber
            .last_publish_pkid
            .ok_or("a QoS 2 PUBLISH without a packet id")?,
        other => return Err(format!("expected the first message, got {other:?}").into()),
    };
    subscriber.send(pubrec(pkid)).await?;
    assert!(matches!(subscriber.read().await?, Some(Packet::PubRel(rel, _)) if rel.pkid == pkid));

    let (mut moved, session_present) = RawClient::connect(other, "receiver", false).await?;
    assert!(session_present);
    subscriber.expect_closed().await?;
    match moved.read().await? {
        Some(Packet::PubRel(rel, _)) if rel.pkid == pkid => {}
        other => return Err(format!("expected PUBREL {pkid} first, got {other:?}").into()),
    }
    moved.send(pubcomp(pkid)).await?;
    publish_acked(&mut publisher, "q/out", b"second", 2).await?;
    match moved.read().await? {
        Some(Packet::Publish(publish, _)) if &publish.payload[..] == b"second" => Ok(()),
        other => Err(format!(
            "expected the second message and no repeat of the first, got {other:?}"
        )
        .into()),
    }
}

/// A persistent QoS 2 subscriber answers a burst of deliveries with PUBRECs back to back, while the
/// gateway is still recording earlier ones: each PUBREC gets one PUBREL, each message is delivered
/// once, and after PUBCOMPs and a move to another replica nothing is owed or delivered again (a lost
/// or misordered deletion would show as a PUBREL sent again at the reconnect, a lost log
/// acknowledgement as a message delivered again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_qos2_deliveries_are_released_once_and_not_repeated() -> TestResult {
    const MESSAGES: usize = 60;
    let endpoint = Endpoint::start(Config::default()).await?;
    let other = endpoint.replica().await?;
    let (mut subscriber, _) = RawClient::connect(endpoint.address, "burst", false).await?;
    subscriber
        .send(subscribe_packet(1, "q/burst", QoS::ExactlyOnce))
        .await?;
    assert!(matches!(subscriber.read().await?, Some(Packet::SubAck(..))));
    let (mut publisher, _) = RawClient::connect(endpoint.address, "burst-sender", true).await?;
    for i in 0..MESSAGES {
        let pkid = u16::try_from(i + 1)?;
        let payload = format!("m{i}");
        publisher
            .send_bytes(&publish_bytes(
                "q/burst",
                payload.as_bytes(),
                QoS::AtLeastOnce,
                pkid,
                false,
            ))
            .await?;
    }
    for _ in 0..MESSAGES {
        assert!(matches!(publisher.read().await?, Some(Packet::PubAck(..))));
    }

    let mut delivered = Vec::new();
    let mut released = 0;
    while released < MESSAGES {
        match subscriber.read().await? {
            Some(Packet::Publish(publish, _)) => {
                delivered.push(String::from_utf8(publish.payload.to_vec())?);
                let pkid = subscriber
                    .last_publish_pkid
                    .ok_or("a QoS 2 PUBLISH without a packet id")?;
                subscriber.send(pubrec(pkid)).await?;
            }
            Some(Packet::PubRel(rel, _)) => {
                released += 1;
                subscriber.send(pubcomp(rel.pkid)).await?;
            }
            other => return Err(format!("expected PUBLISH or PUBREL, got {other:?}").into()),
        }
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(delivered, expected);
    subscriber
        .send(Packet::Disconnect(
            rumqttd::protocol::Disconnect {
                reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
        .await?;
    subscriber.expect_closed().await?;

    let (mut moved, session_present) = RawClient::connect(other, "burst", false).await?;
    assert!(session_present);
    publish_acked(&mut publisher, "q/burst", b"after", 1).await?;
    match moved.read().await? {
        Some(Packet::Publish(publish, _)) if &publish.payload[..] == b"after" => Ok(()),
        other => Err(format!("expected only the new message after the move, got {other:?}").into()),
    }
}

/// Each kind of bad input closes the offending connection; a well-behaved client on the same endpoint
/// carries on and nothing it had acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_connection() -> TestResult {
    let endpoint = Endpoint::start(Config {
        max_packet_size: 1024,
        ..Config::default()
    })
    .await?;
    let (mut good, _) = RawClient::connect(endpoint.address, "good", true).await?;
    good.send(subscribe_packet(1, "good/#", QoS::AtLeastOnce))
        .await?;
    assert!(matches!(good.read().await?, Some(Packet::SubAck(..))));
    good.send_bytes(&publish_bytes(
        "good/1",
        b"before",
        QoS::AtLeastOnce,
        1,
        false,
    ))
    .await?;

    let connect = {
        let mut bytes = BytesMut::new();
        V4.write(connect_packet("bad", true, 30, None), &mut bytes)?;
        bytes
    };
    let bad_inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "publish before connect",
            publish_bytes("a", b"x", QoS::AtMostOnce, 0, false).to_vec(),
        ),
        ("garbage", b"\xff\xff\xff\xff\xff\xff".to_vec()),
        (
            "QoS 3",
            [&connect[..], b"\x36\x05\x00\x01a\x00\x01"].concat(),
        ),
        (
            "oversized packet",
            [
                &connect[..],
                &publish_bytes("a", &[0; 2048], QoS::AtMostOnce, 0, false)[..],
            ]
            .concat(),
        ),
        (
            "wildcard topic",
            [
                &connect[..],
                &publish_bytes("a/+", b"x", QoS::AtLeastOnce, 1, false)[..],
            ]
            .concat(),
        ),
        ("second connect", [&connect[..], &connect[..]].concat()),
        (
            "server-only packet",
            [&connect[..], b"\x20\x02\x00\x00"].concat(),
        ),
    ];
    for (what, bytes) in bad_inputs {
        let mut bad = RawClient::open(endpoint.address).await?;
        bad.send_bytes(&bytes).await?;
        bad.expect_closed()
            .await
            .map_err(|error| format!("{what}: {error}"))?;
    }

    good.send_bytes(&publish_bytes(
        "good/2",
        b"after",
        QoS::AtLeastOnce,
        2,
        false,
    ))
    .await?;
    let mut acked = Vec::new();
    let mut delivered = Vec::new();
    while acked.len() < 2 || delivered.len() < 2 {
        match good.read().await? {
            Some(Packet::PubAck(ack, _)) => acked.push(ack.pkid),
            Some(Packet::Publish(publish, _)) => {
                delivered.push(publish.payload.clone());
                // Delivered at QoS 1 with its own packet id: acknowledge it.
                let raw = publish.serialize();
                let pkid = u16::from_be_bytes([raw[1], raw[2]]);
                good.send(Packet::PubAck(
                    rumqttd::protocol::PubAck {
                        pkid,
                        reason: rumqttd::protocol::PubAckReason::Success,
                    },
                    None,
                ))
                .await?;
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(acked, [1, 2]);
    assert_eq!(
        delivered,
        [Bytes::from_static(b"before"), Bytes::from_static(b"after")]
    );
    Ok(())
}

/// MQTT 3.1 (protocol level 3) is refused with return code 1, in a CONNACK it can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocol_versions_are_refused_in_protocol() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let mut client = RawClient::open(endpoint.address).await?;
    client
        .send_bytes(b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02c1")
        .await?;
    match client.read().await? {
        Some(Packet::ConnAck(connack, _)) => {
            assert_eq!(connack.code, ConnectReturnCode::RefusedProtocolVersion)
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    client.expect_closed().await
}

/// An MQTT 5 client whose maximum packet size leaves no room for a reason string is still told why
/// it is disconnected: the DISCONNECT keeps its reason code. Found by the `session` fuzz target:
/// it went out as a normal disconnection (rumqttd writes a DISCONNECT of empty properties so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_too_small_for_its_reason_string_keeps_its_reason_code() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let mut client = RawClient::open(endpoint.address).await?;
    // MQTT 5 CONNECT of client "tiny" with Maximum Packet Size 48, then a QoS 1 PUBLISH with
    // packet id 0, which is malformed.
    client
        .send_bytes(b"\x10\x16\x00\x04MQTT\x05\x02\x00\x3c\x05\x27\x00\x00\x00\x30\x00\x04tiny")
        .await?;
    client.send_bytes(b"\x32\x07\x00\x01a\x00\x00\x00x").await?;
    let mut received = Vec::new();
    tokio::time::timeout(DEADLINE, client.stream.read_to_end(&mut received)).await??;
    assert!(
        received.starts_with(b"\x20") && received.ends_with(b"\xe0\x02\x81\x00"),
        "expected CONNACK, then DISCONNECT 0x81 (malformed packet): {received:x?}"
    );
    Ok(())
}

/// A second connection with the same client id takes the session; the first is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_takes_the_client_id_over() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let (mut first, _) = RawClient::connect(endpoint.address, "twin", false).await?;
    let (mut second, session_present) = RawClient::connect(endpoint.address, "twin", false).await?;
    assert!(session_present);
    first.expect_closed().await?;
    second
        .send(Packet::PingReq(rumqttd::protocol::PingReq))
        .await?;
    assert!(matches!(second.read().await?, Some(Packet::PingResp(_))));
    Ok(())
}

/// A client silent past one and a half keep-alives is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_disconnected_after_the_keep_alive() -> TestResult {
    let endpoint = Endpoint::start(Config::default()).await?;
    let mut client = RawClient::open(endpoint.address).await?;
    client.send(connect_packet("sleepy", true, 1, None)).await?;
    assert!(matches!(client.read().await?, Some(Packet::ConnAck(..))));
    client.expect_closed().await
}

/// A client that sends more QoS 1 publishes than the server's receive maximum without waiting for
/// PUBACKs (all in one write) is slowed down, not cut off (the server reads no further while that
/// many appends are unacknowledged): every publish is acknowledged and stored once, and the
/// connection stays open, where a DISCONNECT 0x93 would fail the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_receive_maximum_wait_their_turn() -> TestResult {
    const SENT: u16 = 50;
    let endpoint = Endpoint::start(Config {
        receive_maximum: 4,
        ..Config::default()
    })
    .await?;
    let (mut client, _) = RawClient::connect(endpoint.address, "eager-client", true).await?;
    let mut burst = BytesMut::new();
    for pkid in 1..=SENT {
        burst.extend_from_slice(&publish_bytes(
            "eager/t",
            format!("e{pkid}").as_bytes(),
            QoS::AtLeastOnce,
            pkid,
            false,
        ));
    }
    client.send_bytes(&burst).await?;
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < usize::from(SENT) {
        match client.read().await? {
            Some(Packet::PubAck(ack, _)) => {
                assert!(acked.insert(ack.pkid), "PUBACK {} twice", ack.pkid);
            }
            other => return Err(format!("after {} PUBACKs: {other:?}", acked.len()).into()),
        }
    }
    let mut stored = endpoint.stored_values().await?;
    stored.sort();
    let mut expected: Vec<Bytes> = (1..=SENT)
        .map(|pkid| Bytes::from(format!("e{pkid}")))
        .collect();
    expected.sort();
    assert_eq!(stored, expected, "each publish stored once");
    client
        .send(Packet::PingReq(rumqttd::protocol::PingReq))
        .await?;
    assert!(
        matches!(client.read().await?, Some(Packet::PingResp(_))),
        "the connection is still open"
    );
    Ok(())
}

/// A persistent subscription's start is durable before its SUBACK: the session's group already has
/// an offset for every partition, at the end, though its member has not joined yet (held back as a
/// slow Kafka group would be), so a client that leaves at once is sent everything published after the
/// SUBACK when it comes back. Before, the start was decided only when the group first held the
/// partitions (issue 16: on tansu under load, 0 of the queued messages arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscription_starts_durably_before_its_suback() -> TestResult {
    let mut joins = None;
    let endpoint = Endpoint::start_over(Config::default(), |log| {
        let (slow, wrapped) = SlowJoins::over(log);
        joins = Some(slow);
        wrapped
    })
    .await?;
    let joins = joins.ok_or("the log was not wrapped")?;
    let (mut publisher, _) = RawClient::connect(endpoint.address, "sender", true).await?;
    for pkid in 1..=3 {
        publish_acked(&mut publisher, "dev/before", b"before", pkid).await?;
    }
    // The device's group does not join until it has left, as on a slow Kafka.
    joins.hold();
    let (mut device, _) = RawClient::connect(endpoint.address, "leaves-at-once", false).await?;
    device
        .send(subscribe_packet(1, "dev/#", QoS::AtLeastOnce))
        .await?;
    assert!(matches!(device.read().await?, Some(Packet::SubAck(..))));

    let groups = endpoint.log.list_groups().await?;
    let group = groups
        .iter()
        .find(|group| group.starts_with("mqtt.session.") && group.ends_with(".mqtt.messages"))
        .ok_or_else(|| format!("no session group among {groups:?}"))?;
    let described = endpoint.log.describe_group(group).await?;
    let topic = endpoint.log.describe_topic("mqtt.messages").await?;
    assert_eq!(
        described.offsets.len(),
        topic.partitions.len(),
        "{described:?}"
    );
    for offset in &described.offsets {
        assert_eq!(
            offset.committed,
            Some(offset.high_watermark),
            "every partition starts at its end: {described:?}"
        );
    }
    drop(device);
    joins.release();

    let sent: Vec<String> = (0..5).map(|i| format!("queued-{i}")).collect();
    for (pkid, payload) in (10..).zip(&sent) {
        publish_acked(&mut publisher, "dev/queued", payload.as_bytes(), pkid).await?;
    }
    let (mut back, session_present) =
        RawClient::connect(endpoint.address, "leaves-at-once", false).await?;
    assert!(session_present);
    let mut received = Vec::new();
    while received.len() < sent.len() {
        match back.read().await? {
            Some(Packet::Publish(publish, _)) => {
                received.push(String::from_utf8_lossy(&publish.payload).into_owned());
                if let Some(pkid) = back.last_publish_pkid {
                    back.send(Packet::PubAck(
                        rumqttd::protocol::PubAck {
                            pkid,
                            reason: rumqttd::protocol::PubAckReason::Success,
                        },
                        None,
                    ))
                    .await?;
                }
            }
            Some(_) => {}
            None => return Err("the resumed session closed".into()),
        }
    }
    received.sort();
    assert_eq!(
        received, sent,
        "every message queued after the SUBACK, none from before"
    );
    Ok(())
}
