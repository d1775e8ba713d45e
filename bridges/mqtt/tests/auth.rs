//! Who may connect and what they may do, at the packet level (MQTT 3.1.1) over the embedded log:
//! CONNACK codes for credentials, the policy on publishes (accepted but not stored: 3.1.1 has no
//! code to refuse one with) and subscriptions (SUBACK 0x80), client ids owned by their principal,
//! a policy reloaded while a client is connected, and a token's connection ended when the token
//! expires. MQTT 5's codes are tested with real clients
//! in the root crate's `tests/auth_mqtt.rs`.

mod support;

use std::{path::Path, time::Duration};

use courier_gateway::auth::{Access, Auth, AuthConfig, jwt::JwtConfig, users_file_line};
use courier_mqtt::Config;
use courier_testkit::identity::{Claims, TokenIssuer};
use rumqttd::protocol::{ConnectReturnCode, Packet, PingReq, QoS, SubscribeReasonCode};
use support::*;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Authentication and authorization as `[auth]` configures them, stopped when dropped.
struct Configured {
    access: Access,
    _stop: DropGuard,
    dir: tempfile::TempDir,
}

/// Users `alice`, `bob` and `carol` (password: their name backwards), no anonymous clients, and the
/// policy `policy` if any.
async fn configured(
    policy: Option<&str>,
) -> Result<Configured, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users");
    let mut lines = String::new();
    for name in ["alice", "bob", "carol"] {
        let password: String = name.chars().rev().collect();
        lines.push_str(&users_file_line(name, &password, &[])?);
        lines.push('\n');
    }
    std::fs::write(&users, lines)?;
    let policy_file = match policy {
        Some(text) => {
            let path = dir.path().join("policy.toml");
            std::fs::write(&path, text)?;
            Some(path)
        }
        None => None,
    };
    let config = AuthConfig {
        allow_anonymous: Some(false),
        users_file: Some(users),
        policy_file,
        reload_interval: Duration::from_millis(50),
        ..AuthConfig::default()
    };
    let stop = CancellationToken::new();
    let auth = Auth::start(&config, protected(), &[], stop.clone()).await?;
    Ok(Configured {
        access: auth.access("mqtt", None),
        _stop: stop.drop_guard(),
        dir,
    })
}

fn password_of(name: &str) -> String {
    name.chars().rev().collect()
}

/// Connects as `user` (with the right password) under `client_id`; the CONNACK's code.
async fn connect_as(
    endpoint: &Endpoint,
    user: &str,
    client_id: &str,
    clean: bool,
) -> Result<(RawClient, ConnectReturnCode), Box<dyn std::error::Error + Send + Sync>> {
    connect_to(endpoint.address, user, client_id, clean).await
}

/// [`connect_as`] to the server at `address`.
async fn connect_to(
    address: std::net::SocketAddr,
    user: &str,
    client_id: &str,
    clean: bool,
) -> Result<(RawClient, ConnectReturnCode), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = RawClient::open(address).await?;
    let password = password_of(user);
    client
        .send(connect_packet(
            client_id,
            clean,
            30,
            Some((user, &password)),
        ))
        .await?;
    match client.read().await? {
        Some(Packet::ConnAck(connack, _)) => Ok((client, connack.code)),
        other => Err(format!("expected a CONNACK, got {other:?}").into()),
    }
}

async fn suback_of(
    client: &mut RawClient,
    pkid: u16,
    filter: &str,
) -> Result<SubscribeReasonCode, Box<dyn std::error::Error + Send + Sync>> {
    client
        .send(subscribe_packet(pkid, filter, QoS::AtLeastOnce))
        .await?;
    match client.read().await? {
        Some(Packet::SubAck(suback, _)) if suback.pkid == pkid => suback
            .return_codes
            .first()
            .copied()
            .ok_or_else(|| "an empty SUBACK".into()),
        other => Err(format!("expected SUBACK {pkid}, got {other:?}").into()),
    }
}

/// With a users file and no anonymous access: right password in, wrong password and no username
/// out, each with its 3.1.1 return code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_against_the_users_file() -> TestResult {
    let auth = configured(None).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    for (login, expected) in [
        (Some(("alice", "ecila")), ConnectReturnCode::Success),
        (
            Some(("alice", "wrong")),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            Some(("nobody", "ecila")),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (None, ConnectReturnCode::NotAuthorized),
    ] {
        let mut client = RawClient::open(endpoint.address).await?;
        client.send(connect_packet("auth", true, 30, login)).await?;
        match client.read().await? {
            Some(Packet::ConnAck(connack, _)) => assert_eq!(connack.code, expected, "{login:?}"),
            other => return Err(format!("expected a CONNACK, got {other:?}").into()),
        }
    }
    Ok(())
}

/// A client that connected with a token is disconnected when the token expires (3.1.1 has no
/// reason code: the connection is closed; MQTT 5 is told 0xA0 Maximum connect time), and not
/// before: it works until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_connection_ends_when_the_token_expires() -> TestResult {
    let dir = tempfile::tempdir()?;
    let issuer = TokenIssuer::new("k1")?;
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer])?;
    let config = AuthConfig {
        allow_anonymous: Some(false),
        jwt: Some(JwtConfig {
            leeway: Duration::ZERO,
            ..JwtConfig::with_file(jwks)
        }),
        ..AuthConfig::default()
    };
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let auth = Auth::start(&config, protected(), &[], stop).await?;
    let endpoint =
        Endpoint::start_with_access(Config::default(), auth.access("mqtt", None)).await?;
    let token = issuer.token(&Claims {
        expires_in: 6,
        ..Claims::for_subject("device-1")
    })?;
    let mut client = RawClient::open(endpoint.address).await?;
    client
        .send(connect_packet(
            "device-1",
            true,
            0,
            Some(("device-1", &token)),
        ))
        .await?;
    match client.read().await? {
        Some(Packet::ConnAck(connack, _)) => assert_eq!(connack.code, ConnectReturnCode::Success),
        other => return Err(format!("expected a CONNACK, got {other:?}").into()),
    }
    client.send(Packet::PingReq(PingReq)).await?;
    assert!(matches!(client.read().await?, Some(Packet::PingResp(_))));
    // Keep-alive 0: nothing but the token's expiry ends this connection.
    client.expect_closed().await?;
    Ok(())
}

const DEVICES: &str = r#"
[[rules]]
who = ["*"]
allow = ["produce", "consume"]
mqtt = ["devices/%c/#", "users/%u/#"]
"#;

/// MQTT 3.1.1 under a policy: a publish outside the client's topics is acknowledged as usual and
/// not stored (QoS 1 and 2); a subscription to `#` is refused with 0x80 and nothing reaches the
/// client through it, while its own filter works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_publishes_and_subscriptions() -> TestResult {
    let auth = configured(Some(DEVICES)).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    let (mut device, code) = connect_as(&endpoint, "alice", "dev-1", true).await?;
    assert_eq!(code, ConnectReturnCode::Success);

    assert_eq!(
        suback_of(&mut device, 1, "#").await?,
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        suback_of(&mut device, 2, "devices/dev-1/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        suback_of(&mut device, 3, "users/alice/inbox").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );

    publish_acked(&mut device, "devices/dev-2/t", b"not-mine-1", 10).await?;
    device
        .send_bytes(&publish_bytes(
            "devices/dev-2/t",
            b"not-mine-2",
            QoS::ExactlyOnce,
            11,
            false,
        ))
        .await?;
    match device.read().await? {
        Some(Packet::PubRec(rec, _)) if rec.pkid == 11 => {}
        other => return Err(format!("expected PUBREC 11, got {other:?}").into()),
    }
    release(&mut device, 11).await?;

    // Another device publishes on its own topic: allowed, stored, and not delivered to dev-1,
    // whose `#` was refused.
    let (mut other, code) = connect_as(&endpoint, "bob", "dev-2", true).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    publish_acked(&mut other, "devices/dev-2/t", b"dev-2's own", 1).await?;
    // Its own message comes back to it, before or after its PUBACK.
    device
        .send_bytes(&publish_bytes(
            "devices/dev-1/t",
            b"mine",
            QoS::AtLeastOnce,
            12,
            false,
        ))
        .await?;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match device.read().await? {
            Some(Packet::PubAck(ack, _)) if ack.pkid == 12 && !acked => acked = true,
            Some(Packet::Publish(publish, _)) if !delivered => {
                assert_eq!(&publish.topic[..], b"devices/dev-1/t");
                assert_eq!(&publish.payload[..], b"mine");
                delivered = true;
            }
            other => {
                return Err(
                    format!("expected PUBACK 12 and dev-1's message, got {other:?}").into(),
                );
            }
        }
    }

    assert_eq!(endpoint.copies_of(b"mine").await?, 1);
    assert_eq!(endpoint.copies_of(b"dev-2's own").await?, 1);
    assert_eq!(endpoint.copies_of(b"not-mine-1").await?, 0);
    assert_eq!(endpoint.copies_of(b"not-mine-2").await?, 0);
    Ok(())
}

/// A route to the gateway's own session topic does not let a client write session records: the
/// connection's authorization layer refuses the append (3.1.1 closes the connection) and nothing
/// is stored there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_internal_state_is_refused() -> TestResult {
    let auth = configured(None).await?;
    let config = Config {
        routes: vec![courier_mqtt::config::Route {
            filter: "sneaky/#".into(),
            topic: "mqtt.sessions".into(),
        }],
        ..Config::default()
    };
    let endpoint = Endpoint::start_with_access(config, auth.access.clone()).await?;
    let (mut client, code) = connect_as(&endpoint, "alice", "sneaky-client", true).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    client
        .send_bytes(&publish_bytes(
            "sneaky/x",
            b"forged",
            QoS::AtLeastOnce,
            1,
            false,
        ))
        .await?;
    client.expect_closed().await?;
    let (mut subscriber, _) = connect_as(&endpoint, "bob", "sneaky-reader", true).await?;
    assert_eq!(
        suback_of(&mut subscriber, 1, "sneaky/#").await?,
        SubscribeReasonCode::Failure
    );
    let stored = endpoint.values_of("mqtt.sessions").await?;
    assert!(!stored.iter().any(|value| &value[..] == b"forged"));
    Ok(())
}

/// A client id whose live connection, or whose kept session, is another user's is refused with
/// 0x05, and the owner's connection is not taken over; the owner comes back to its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_its_owners() -> TestResult {
    let auth = configured(None).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    let (mut owner, code) = connect_as(&endpoint, "alice", "thermostat", false).await?;
    assert_eq!(code, ConnectReturnCode::Success);

    let (_, code) = connect_as(&endpoint, "bob", "thermostat", true).await?;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    owner.send(Packet::PingReq(PingReq)).await?;
    assert!(
        matches!(owner.read().await?, Some(Packet::PingResp(_))),
        "the owner's connection was not taken over"
    );

    drop(owner);
    // Kept after its client left: still alice's, and hers to come back to.
    let (_, code) = connect_as(&endpoint, "bob", "thermostat", false).await?;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    let (_, code) = connect_as(&endpoint, "alice", "thermostat", false).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    Ok(())
}

/// The policy file rewritten while a client is connected: its next subscription follows the new
/// rules, without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_policy_decides_the_next_subscription() -> TestResult {
    let auth = configured(Some(DEVICES)).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    let (mut client, code) = connect_as(&endpoint, "alice", "dev-1", true).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    assert_eq!(
        suback_of(&mut client, 1, "alerts/#").await?,
        SubscribeReasonCode::Failure
    );

    rewrite(
        &auth.dir.path().join("policy.toml"),
        &format!(
            "{DEVICES}\n[[rules]]\nwho = [\"alice\"]\nallow = [\"consume\"]\nmqtt = [\"alerts/#\"]\n"
        ),
    )?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut pkid = 2;
    loop {
        let code = suback_of(&mut client, pkid, "alerts/#").await?;
        if code != SubscribeReasonCode::Failure {
            assert_eq!(code, SubscribeReasonCode::Success(QoS::AtLeastOnce));
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the new policy was not taken within the deadline".into());
        }
        // No pause between attempts: each is a SUBSCRIBE's round trip, bounded by the deadline.
        pkid += 1;
    }
    Ok(())
}

/// A shared subscription takes part of its group's messages from the other members: under a
/// policy, joining `$share/<name>/...` needs `join_group` on `<name>` as well as the filter, so
/// a principal allowed the filter cannot join another team's share (SUBACK 0x80).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_is_joined_only_as_the_policy_allows() -> TestResult {
    let policy = r#"
[[rules]]
who = ["*"]
allow = ["consume"]
mqtt = ["jobs/#"]

[[rules]]
who = ["*"]
allow = ["join_group"]
groups = ["%u-*"]
"#;
    let auth = configured(Some(policy)).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    let (mut alice, code) = connect_as(&endpoint, "alice", "worker-a", true).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    assert_eq!(
        suback_of(&mut alice, 1, "$share/alice-workers/jobs/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        suback_of(&mut alice, 2, "$share/bob-workers/jobs/#").await?,
        SubscribeReasonCode::Failure,
        "bob's share, though alice may read its filter"
    );
    assert_eq!(
        suback_of(&mut alice, 3, "jobs/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    Ok(())
}

/// A filter subscribed to again after the policy stopped allowing it is refused, and the
/// subscription made before ends with it: nothing more is delivered through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_again_ends_the_old_one() -> TestResult {
    let before = format!(
        "{DEVICES}\n[[rules]]\nwho = [\"*\"]\nallow = [\"consume\", \"produce\"]\nmqtt = [\"alerts/#\"]\n"
    );
    let after = format!(
        "{DEVICES}\n[[rules]]\nwho = [\"bob\"]\nallow = [\"consume\", \"produce\"]\nmqtt = [\"alerts/#\"]\n\
         [[rules]]\nwho = [\"*\"]\nallow = [\"consume\", \"produce\"]\nmqtt = [\"news/#\"]\n"
    );
    let auth = configured(Some(&before)).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    let (mut alice, _) = connect_as(&endpoint, "alice", "alice-1", true).await?;
    let (mut bob, _) = connect_as(&endpoint, "bob", "bob-1", true).await?;
    assert_eq!(
        suback_of(&mut alice, 1, "alerts/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        suback_of(&mut bob, 1, "alerts/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );

    rewrite(&auth.dir.path().join("policy.toml"), &after)?;
    // The new policy is in force once what it adds is granted.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut pkid = 2;
    while suback_of(&mut alice, pkid, "news/#").await? == SubscribeReasonCode::Failure {
        if tokio::time::Instant::now() > deadline {
            return Err("the new policy was not taken within the deadline".into());
        }
        pkid += 1;
    }
    assert_eq!(
        suback_of(&mut alice, pkid + 1, "alerts/#").await?,
        SubscribeReasonCode::Failure
    );

    // Bob (still allowed) gets the alert: the shared reader both clients' subscriptions go
    // through has handed it to every subscription it matched. Alice's next message is the news
    // published after it, not the alert.
    let (mut publisher, _) = connect_as(&endpoint, "bob", "bob-2", true).await?;
    publish_acked(&mut publisher, "alerts/fire", b"alert", 1).await?;
    match bob.read().await? {
        Some(Packet::Publish(publish, _)) => assert_eq!(&publish.payload[..], b"alert"),
        other => return Err(format!("expected bob's alert, got {other:?}").into()),
    }
    publish_acked(&mut publisher, "news/today", b"news", 2).await?;
    match alice.read().await? {
        Some(Packet::Publish(publish, _)) => assert_eq!(
            &publish.payload[..],
            b"news",
            "delivered through the refused subscription"
        ),
        other => return Err(format!("expected the news, got {other:?}").into()),
    }
    Ok(())
}

/// Two principals connecting under one client id at the same moment: the owner check and the
/// record it guards happen one handshake at a time, so never both are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_principals_connecting_at_once_gets_the_client_id() -> TestResult {
    let auth = configured(None).await?;
    let endpoint = Endpoint::start_with_access(Config::default(), auth.access.clone()).await?;
    for round in 0..20 {
        let client_id = format!("contested-{round}");
        let (alice, bob) = tokio::join!(
            connect_as(&endpoint, "alice", &client_id, false),
            connect_as(&endpoint, "bob", &client_id, false),
        );
        let ((_alice, alice_code), (_bob, bob_code)) = (alice?, bob?);
        let accepted = [alice_code, bob_code]
            .iter()
            .filter(|code| **code == ConnectReturnCode::Success)
            .count();
        assert_eq!(accepted, 1, "round {round}: {alice_code:?}, {bob_code:?}");
    }
    Ok(())
}

fn rewrite(path: &Path, text: &str) -> std::io::Result<()> {
    // Written beside and renamed over, as an operator's tools do, so no half-written file is read.
    let new = path.with_extension("new");
    std::fs::write(&new, text)?;
    std::fs::rename(new, path)
}

/// Two persistent sessions per principal, on two replicas over one log: alice's third is refused
/// on the other replica (3.1.1 has no 0x97: CONNACK 3, server unavailable), while her own session
/// resumes, a clean session goes, and bob keeps sessions of his own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_past_a_principals_cap_are_refused_on_every_replica() -> TestResult {
    let configured = configured(None).await?;
    let config = || Config {
        max_sessions_per_principal: 2,
        ..Config::default()
    };
    let endpoint = Endpoint::start_with_access(config(), configured.access.clone()).await?;
    let replica = endpoint.replica_with(config()).await?;

    let (first, code) = connect_as(&endpoint, "alice", "alice-1", false).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_second, code) = connect_as(&endpoint, "alice", "alice-2", false).await?;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_, code) = connect_to(replica, "alice", "alice-3", false).await?;
    assert_eq!(
        code,
        ConnectReturnCode::ServiceUnavailable,
        "a third session"
    );

    let (_bobs, code) = connect_to(replica, "bob", "bob-1", false).await?;
    assert_eq!(
        code,
        ConnectReturnCode::Success,
        "another principal's session"
    );
    let (_clean, code) = connect_to(replica, "alice", "alice-3", true).await?;
    assert_eq!(code, ConnectReturnCode::Success, "a clean session");
    drop(first);
    let (_resumed, code) = connect_to(replica, "alice", "alice-1", false).await?;
    assert_eq!(code, ConnectReturnCode::Success, "her own session again");
    Ok(())
}
