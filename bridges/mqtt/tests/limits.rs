//! Limits on what one MQTT client may take, at the packet level over a real embedded log: the
//! connection caps at accept (answered with CONNACK), the cap on subscriptions per client, and a
//! clean session's deliveries held to its quota.

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
