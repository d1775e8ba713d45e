//! The AMQP 1.0 endpoint end to end with python-qpid-proton (the Qpid Proton client applications use):
//! on the embedded log and in front of a Kafka-protocol broker (tansu), with SASL PLAIN, with topic
//! auto-creation off, next to a native Kafka client (confluent-kafka), and a receiver that moves to
//! another gateway replica when its gateway dies. The checks themselves are in
//! `tests/python/amqp_client_test.py`.

mod common;

use common::*;
use courier_testkit::Tansu;

/// Small enough that the oversized-message check stays cheap.
const MAX_MESSAGE_SIZE: &str = "65536";

fn proton(mode: &str, gateway: &Gateway, extra: &[&str]) -> TestResult {
    let address = gateway.amqp.to_string();
    let args = [&[mode, "--address", &address][..], extra].concat();
    let stdout = run_python("amqp_client_test.py", &args, gateway)?;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

#[test]
fn proton_clients_on_the_embedded_log() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_AMQP__MAX_MESSAGE_SIZE", MAX_MESSAGE_SIZE)],
    )?;
    proton("core", &gateway, &["--max-message-size", MAX_MESSAGE_SIZE])?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn proton_clients_in_front_of_kafka_and_next_to_a_native_kafka_client() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_kafka(
        &dir.path().join("gateway"),
        &broker.bootstrap(),
        &[("COURIER_AMQP__MAX_MESSAGE_SIZE", MAX_MESSAGE_SIZE)],
    )?;
    proton(
        "core+interop",
        &gateway,
        &[
            "--bootstrap",
            &broker.bootstrap(),
            "--max-message-size",
            MAX_MESSAGE_SIZE,
        ],
    )?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn links_to_missing_topics_are_refused_when_auto_create_is_off() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_TOPICS__AUTO_CREATE", "false")],
    )?;
    proton("no-auto-create", &gateway, &[])?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn sasl_plain_checks_the_users_file() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!(
            "{}\n",
            courier_gateway::auth::users_file_line("app-1", "s3cret")?
        ),
    )?;
    let users_file = users.display().to_string();
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_AMQP__AUTH__USERS_FILE", users_file.as_str()),
            ("COURIER_AMQP__AUTH__ALLOW_ANONYMOUS", "false"),
        ],
    )?;
    proton(
        "sasl",
        &gateway,
        &["--user", "app-1", "--password", "s3cret"],
    )?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Two replicas on one Kafka cluster: a group receiver on A accepts 100 of 300 messages (committed),
/// holds 20 more unsettled, and A is killed (SIGKILL) under it. Reattached on B, it receives the 200
/// it had not accepted, the 20 among them, and none of the 100 again.
#[test]
fn a_receiver_moves_to_another_replica_when_its_gateway_dies() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let first = Gateway::start_kafka(&dir.path().join("a"), &broker.bootstrap(), &[])?;
    let second = Gateway::start_kafka(&dir.path().join("b"), &broker.bootstrap(), &[])?;
    let first_pid = first
        .process_id()
        .ok_or("gateway A is not running")?
        .to_string();
    let second_address = second.amqp.to_string();
    proton(
        "failover",
        &first,
        &["--second", &second_address, "--first-pid", &first_pid],
    )
    .map_err(|e| format!("{e}\ngateway B log:\n{}", second.log()))?;
    assert!(second.terminate()?.success());
    Ok(())
}
