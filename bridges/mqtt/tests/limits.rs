//! Limits on what one MQTT client may take, at the packet level over a real embedded log: the
//! connection caps at accept (answered with CONNACK), the cap on subscriptions per client, the
//! caps on what one principal retains (the same on every replica), and a clean session's
//! deliveries held to its quota.

use std::time::Instant;

use courier_gateway::limits::{ClientLimits, LimitsConfig, QuotaConfig, QuotaRates};
use courier_mqtt::Config;
use rumqttd::protocol::{
    ConnectReturnCode, Filter, Packet, QoS, RetainForwardRule, Subscribe, SubscribeReasonCode,
};

mod support;

use support::*;

/// Past `limits.max_connections_per_address`, a client's CONNECT is answered with CONNACK
/// "server unavailable" (MQTT 3.1.1's code for 0x97 Quota exceeded), and its place is free again
/// once an admitted client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_per_address_cap_is_answered_and_closed() -> TestResult {
    let limits = ClientLimits::new(&LimitsConfig {
        max_connections_per_address: 1,
        ..LimitsConfig::default()
    });
    let access = courier_gateway::auth::Access::loopback("mqtt", protected()).with_limits(limits);
    let endpoint = Endpoint::start_with_access(Config::default(), access).await?;
    let (first, _) = RawClient::connect(endpoint.address, "first", true).await?;

    let mut second = RawClient::open(endpoint.address).await?;
    second
        .send(connect_packet("second", true, 30, None))
        .await?;
    match second.read().await? {
        Some(Packet::ConnAck(connack, _)) => {
            assert_eq!(connack.code, ConnectReturnCode::ServiceUnavailable);
        }
        other => return Err(format!("expected a refusing CONNACK, got {other:?}").into()),
    }
    second.expect_closed().await?;

    drop(first);
    // The first one's place is given back when its connection task ends.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match RawClient::connect(endpoint.address, "third", true).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Past `mqtt.max_subscriptions`, new filters are refused one by one in SUBACK, while a filter
/// subscribed to already can be subscribed to again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_cap_are_refused_filter_by_filter() -> TestResult {
    let config = Config {
        max_subscriptions: 2,
        ..Config::default()
    };
    let endpoint = Endpoint::start(config).await?;
    let (mut client, _) = RawClient::connect(endpoint.address, "subscriber", true).await?;
    let filter = |path: &str| Filter {
        path: path.into(),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    };
    client
        .send(Packet::Subscribe(
            Subscribe {
                pkid: 1,
                filters: vec![filter("a/#"), filter("b/#"), filter("c/#")],
            },
            None,
        ))
        .await?;
    let codes = match client.read().await? {
        Some(Packet::SubAck(suback, _)) => suback.return_codes,
        other => return Err(format!("expected a SUBACK, got {other:?}").into()),
    };
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    client
        .send(Packet::Subscribe(
            Subscribe {
                pkid: 2,
                filters: vec![filter("a/#")],
            },
            None,
        ))
        .await?;
    match client.read().await? {
        Some(Packet::SubAck(suback, _)) => assert_eq!(
            suback.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => return Err(format!("expected a SUBACK, got {other:?}").into()),
    }
    Ok(())
}

/// A clean session reads through the gateway's shared reader of the topic, not through its own
/// connection's log, and its deliveries are still held to its quota (`messages_out_per_second`):
/// one second's burst, then the rate, and every message delivered in the end. The bound checked
/// is the token bucket's, an upper bound whatever the machine's speed (the messages are all
/// published at once: unpaced, they would all be delivered at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sessions_deliveries_are_held_to_its_quota() -> TestResult {
    const RATE: u64 = 10;
    const MESSAGES: usize = 30;
    let limits = ClientLimits::new(&LimitsConfig {
        quotas: QuotaConfig {
            mqtt: QuotaRates {
                messages_out_per_second: RATE,
                ..QuotaRates::default()
            },
            ..QuotaConfig::default()
        },
        ..LimitsConfig::default()
    });
    let access = courier_gateway::auth::Access::loopback("mqtt", protected()).with_limits(limits);
    let endpoint = Endpoint::start_with_access(Config::default(), access).await?;
    let (mut subscriber, _) = RawClient::connect(endpoint.address, "paced", true).await?;
    subscriber
        .send(subscribe_packet(1, "paced/t", QoS::AtMostOnce))
        .await?;
    match subscriber.read().await? {
        Some(Packet::SubAck(..)) => {}
        other => return Err(format!("expected a SUBACK, got {other:?}").into()),
    }

    let (mut publisher, _) = RawClient::connect(endpoint.address, "publisher", true).await?;
    // All at once, so the publisher is never what spaces the deliveries out.
    let started = Instant::now();
    for n in 0..MESSAGES {
        let pkid = u16::try_from(n + 1)?;
        let payload = format!("m{n}");
        publisher
            .send_bytes(&publish_bytes(
                "paced/t",
                payload.as_bytes(),
                QoS::AtLeastOnce,
                pkid,
                false,
            ))
            .await?;
    }
    let mut acked = 0;
    while acked < MESSAGES {
        match publisher.read().await? {
            Some(Packet::PubAck(..)) => acked += 1,
            other => return Err(format!("expected a PUBACK, got {other:?}").into()),
        }
    }
    let mut received = 0usize;
    while received < MESSAGES {
        match subscriber.read().await? {
            Some(Packet::Publish(..)) => received += 1,
            Some(_) => {}
            None => return Err(format!("closed after {received} messages").into()),
        }
        let allowed = RATE as f64 * (1.0 + started.elapsed().as_secs_f64());
        assert!(
            received as f64 <= allowed + 1.0,
            "{received} delivered in {:?}; the quota allows {allowed:.0}",
            started.elapsed()
        );
    }
    Ok(())
}

/// Publishes a retained message at QoS 1 and expects its PUBACK.
async fn retain(client: &mut RawClient, topic: &str, payload: &[u8], pkid: u16) -> TestResult {
    let mut bytes = publish_bytes(topic, payload, QoS::AtLeastOnce, pkid, false);
    bytes[0] |= 0b0001;
    client.send_bytes(&bytes).await?;
    match client.read().await? {
        Some(Packet::PubAck(ack, _)) if ack.pkid == pkid => Ok(()),
        other => Err(format!("expected PUBACK {pkid} for {topic}, got {other:?}").into()),
    }
}

/// Two retained messages per principal (an anonymous client by its client id), on two replicas
/// over one log. A 3.1.1 client at its cap has a third topic's message published but not retained
/// on the other replica too (3.1.1 has no refusal but closing the connection, after which the
/// client would send it again); replacing its own, another client's retaining, and a deletion
/// that makes room all go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_past_a_principals_cap_are_not_retained_on_any_replica() -> TestResult {
    let config = || Config {
        max_retained_per_principal: 2,
        ..Config::default()
    };
    let endpoint = Endpoint::start(config()).await?;
    let replica = endpoint.replica_with(config()).await?;
    let (mut retainer, _) = RawClient::connect(endpoint.address, "retainer", true).await?;
    retain(&mut retainer, "r/1", b"one", 1).await?;
    retain(&mut retainer, "r/2", b"two", 2).await?;
    retained_table_caught_up(endpoint.address, 0).await?;
    retain(&mut retainer, "r/1", b"one again", 3).await?;
    drop(retainer);
    retained_table_caught_up(replica, 1).await?;

    let (mut retainer, _) = RawClient::connect(replica, "retainer", true).await?;
    retain(&mut retainer, "r/3", b"three", 1).await?;
    assert!(
        endpoint
            .values_of("mqtt.messages")
            .await?
            .iter()
            .any(|value| &value[..] == b"three"),
        "the message past the cap was not published"
    );
    assert!(
        !retained_values(&endpoint)
            .await?
            .contains(&"three".to_owned()),
        "the message past the cap was retained"
    );

    let (mut other, _) = RawClient::connect(replica, "someone-else", true).await?;
    retain(&mut other, "r/9", b"nine", 1).await?;
    retain(&mut retainer, "r/2", b"", 2).await?;
    retained_table_caught_up(replica, 2).await?;
    retain(&mut retainer, "r/3", b"three, retained", 3).await?;
    assert!(
        retained_values(&endpoint)
            .await?
            .contains(&"three, retained".to_owned())
    );
    Ok(())
}

/// A byte cap (counting topic, payload and headers): a retained message that would take the
/// account past it is not retained, while a smaller replacement of one's own is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_bytes_past_a_principals_cap_are_not_retained() -> TestResult {
    let endpoint = Endpoint::start(Config {
        max_retained_bytes_per_principal: 400,
        ..Config::default()
    })
    .await?;
    let (mut retainer, _) = RawClient::connect(endpoint.address, "retainer", true).await?;
    retain(&mut retainer, "b/1", &[b'a'; 200], 1).await?;
    retained_table_caught_up(endpoint.address, 0).await?;
    retain(&mut retainer, "b/2", &[b'b'; 200], 2).await?;
    retained_table_caught_up(endpoint.address, 1).await?;
    let retained = retained_values(&endpoint).await?;
    assert!(retained.iter().any(|value| value.starts_with('a')));
    assert!(
        !retained.iter().any(|value| value.starts_with('b')),
        "b/2 was retained"
    );
    retain(&mut retainer, "b/1", &[b'c'; 100], 3).await?;
    assert!(
        retained_values(&endpoint)
            .await?
            .iter()
            .any(|value| value.starts_with('c')),
        "a smaller replacement was not retained"
    );
    Ok(())
}

/// Every value written to the retained topic.
async fn retained_values(
    endpoint: &Endpoint,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(endpoint
        .values_of("mqtt.retained")
        .await?
        .iter()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect())
}

/// Waits until the retained table of the server at `address` has read everything retained
/// before the call: a SUBSCRIBE is answered once it has (it looks up the retained messages).
async fn retained_table_caught_up(address: std::net::SocketAddr, n: u16) -> TestResult {
    let (mut client, _) = RawClient::connect(address, &format!("catching-up-{n}"), true).await?;
    client
        .send(subscribe_packet(
            1,
            "nothing/retained/here",
            QoS::AtMostOnce,
        ))
        .await?;
    match client.read().await? {
        Some(Packet::SubAck(..)) => Ok(()),
        other => Err(format!("expected a SUBACK, got {other:?}").into()),
    }
}
