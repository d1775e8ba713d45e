//! Who may connect to the MQTT endpoint and what they may do, on the real binary in front of a
//! Kafka-protocol broker (tansu), with real clients: the Mosquitto command line clients here, and
//! paho-mqtt (MQTT 5 and 3.1.1) with a native Kafka consumer (confluent-kafka) showing what a refused
//! publish did not store, in `tests/python/auth_mqtt_test.py`.
//!
//! The gateway has a users file (alice, bob), a policy (each device may produce and consume under
//! `devices/<its client id>/`, each user consume under `users/<its name>/`), and JWTs from a test
//! issuer; both files are re-read every 200 ms so the reload checks are quick.

mod common;

use std::path::Path;

use common::*;
use courier_gateway::auth::users_file_line;
use courier_testkit::{
    Tansu,
    identity::{AUDIENCE, Claims, ISSUER, TokenIssuer},
};

const POLICY: &str = r#"
[[rules]]
who = ["*"]
allow = ["produce", "consume"]
mqtt = ["devices/%c/#"]

[[rules]]
who = ["*"]
allow = ["consume"]
mqtt = ["users/%u/#"]
"#;

/// The gateway in front of `broker`, with `[auth]` over files in `dir`: (gateway, users file,
/// policy file, token issuer).
fn start(broker: &Tansu, dir: &Path) -> Result<(Gateway, String, String, TokenIssuer), BoxError> {
    let users = dir.join("users");
    std::fs::write(
        &users,
        [
            users_file_line("alice", "ecila", &[])?,
            users_file_line("bob", "bob-pw", &[])?,
        ]
        .join("\n"),
    )?;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let issuer = TokenIssuer::new("test-key")?;
    let jwks = TokenIssuer::write_jwks(dir, "jwks.json", &[&issuer])?;
    let path = |path: &Path| path.display().to_string();
    let config = format!(
        "[log]\nkind = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\nreplication_factor = 1\n\
         session_timeout = \"6s\"\n[log.producer_properties]\n\"batch.num.messages\" = \"1\"\n\
         [auth]\nusers_file = {users:?}\npolicy_file = {policy:?}\nreload_interval = \"200ms\"\n\
         [auth.jwt]\njwks_file = {jwks:?}\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n\
         leeway = \"0s\"\n",
        bootstrap = broker.bootstrap(),
        users = path(&users),
        policy = path(&policy),
        jwks = path(&jwks),
    );
    let gateway = Gateway::start_with_config(&dir.join("gateway"), &config, &[])?;
    Ok((gateway, path(&users), path(&policy), issuer))
}

/// paho-mqtt (5 and 3.1.1) and confluent-kafka: CONNACK codes for passwords, tokens and their
/// absence; the policy on publishes (nothing stored in Kafka) and subscriptions (nothing
/// delivered); another protocol's header refused; client ids owned by their user; the policy and
/// the users file reloaded (waited for on the reload counter of `/metrics`).
#[test]
fn paho_clients_meet_authentication_and_the_policy() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let (gateway, users, policy, issuer) = start(&broker, dir.path())?;
    let token = issuer.token(&Claims::for_subject("carol"))?;
    let expired = issuer.token(&Claims {
        expires_in: -3600,
        ..Claims::for_subject("carol")
    })?;
    // Connected first by the script, and awaited last: 20 s is its checks' time with room to spare.
    let expiring = issuer.token(&Claims {
        expires_in: 20,
        ..Claims::for_subject("svc-expiring")
    })?;
    let new_user = users_file_line("dave", "evad", &[])?;
    let port = gateway.mqtt.port().to_string();
    let bootstrap = broker.bootstrap();
    let metrics_url = format!("http://{}/metrics", gateway.http);
    let stdout = run_python(
        "auth_mqtt_test.py",
        &[
            "--port",
            &port,
            "--bootstrap",
            &bootstrap,
            "--token",
            &token,
            "--expired-token",
            &expired,
            "--expiring-token",
            &expiring,
            "--users-file",
            &users,
            "--policy-file",
            &policy,
            "--new-user-line",
            &new_user,
            "--metrics-url",
            &metrics_url,
        ],
        &gateway,
    )?;
    assert!(stdout.contains("auth: all checks passed"), "{stdout}");
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// The Mosquitto clients in both versions: in with a password or a JWT as password, out with a
/// wrong one (and told so); a subscription to `#` refused while the client's own is granted.
#[test]
fn mosquitto_clients_meet_authentication_and_the_policy() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let (gateway, _, _, issuer) = start(&broker, dir.path())?;
    let token = issuer.token(&Claims::for_subject("carol"))?;
    let port = gateway.mqtt.port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let common = ["-h", "127.0.0.1", "-p", &port, "-V", version];
        let client_id = format!("mosq-{version}");
        let own = format!("devices/{client_id}/t");
        let publish = |user: &str, password: &str| {
            mosquitto(
                "mosquitto_pub",
                &[
                    &common[..],
                    &["-i", &client_id, "-u", user, "-P", password],
                    &["-q", "1", "-t", &own, "-m", "hello"],
                ]
                .concat(),
                "",
            )
        };
        publish("alice", "ecila")?;
        // Another principal takes another client id: alice's is hers while her connection ends.
        mosquitto(
            "mosquitto_pub",
            &[
                &common[..],
                &[
                    "-i",
                    &format!("{client_id}-carol"),
                    "-u",
                    "carol",
                    "-P",
                    &token,
                ],
                &[
                    "-q",
                    "1",
                    "-t",
                    &format!("devices/{client_id}-carol/t"),
                    "-m",
                    "hi",
                ],
            ]
            .concat(),
            "",
        )?;
        let refused = publish("alice", "wrong")
            .err()
            .ok_or("a wrong password was accepted")?
            .to_string();
        assert!(
            refused.to_lowercase().contains("bad user name or password"),
            "{refused}"
        );

        // `#` is refused, the client's own subtree granted: mosquitto_sub prints the granted
        // QoS of each (-d): 128 (3.1.1) or 135 (0x87, MQTT 5) for the refused one, 0 for its own;
        // it exits on its own (-W).
        let own_filter = format!("devices/{client_id}/#");
        let output = mosquitto(
            "mosquitto_sub",
            &[
                &common[..],
                &["-i", &client_id, "-u", "alice", "-P", "ecila", "-d"],
                &["-t", "#", "-t", &own_filter, "-W", "2"],
            ]
            .concat(),
            "",
        )
        .or_else(|error| {
            // -W ends it with a non-zero status; its output is in the error.
            let text = error.to_string();
            if text.contains("SUBACK") {
                Ok(text)
            } else {
                Err(error)
            }
        })?;
        let granted = output
            .lines()
            .find(|line| line.contains("Subscribed (mid:"))
            .ok_or_else(|| format!("no SUBACK in {output}"))?;
        let refused_code = if version == "mqttv5" { "135" } else { "128" };
        assert!(
            granted.contains(&format!("{refused_code}, 0")),
            "`#` refused, the own subtree granted: {granted}"
        );
    }
    assert!(gateway.terminate()?.success());
    Ok(())
}
