//! Runs the Python clients against the real gateway: the `grpcio` client (`grpc_client_test.py`, stubs
//! generated from `proto/` at test time) on the embedded log and in front of a Kafka-protocol broker
//! (tansu), and the interop test with the native Kafka client `confluent-kafka`
//! (`kafka_interop_test.py`). `scripts/test` installs the libraries into `.venv`; `COURIER_PYTHON` may
//! name another interpreter that has them.

mod common;

use std::path::PathBuf;

use common::*;
use courier_testkit::Tansu;

/// The `.proto` files, from which the Python scripts generate their stubs.
fn proto_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("proto")
        .display()
        .to_string()
}

fn grpcio_client_against(gateway: Gateway) -> TestResult {
    let server = gateway.grpc.to_string();
    let proto = proto_dir();
    let stdout = run_python(
        "grpc_client_test.py",
        &["--server", &server, "--proto", &proto],
        &gateway,
    )?;
    assert!(stdout.contains("0 lost, 0 acknowledged twice"));
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn python_grpcio_client_generated_from_the_proto() -> TestResult {
    let dir = tempfile::tempdir()?;
    grpcio_client_against(Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_GROUPS__COMMIT_INTERVAL", "200ms")],
    )?)
}

/// The same client, the gateway in front of Kafka: the API behaves the same whatever the backend.
#[test]
fn python_grpcio_client_in_front_of_kafka() -> TestResult {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    grpcio_client_against(Gateway::start_kafka(
        &dir.path().join("gateway"),
        &broker.bootstrap(),
        &[("COURIER_GROUPS__COMMIT_INTERVAL", "200ms")],
    )?)
}

/// gRPC clients and native Kafka clients (confluent-kafka) read each other's records intact.
#[test]
fn grpc_and_native_kafka_clients_interoperate() -> TestResult {
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_kafka(
        &dir.path().join("gateway"),
        &broker.bootstrap(),
        &[("COURIER_REGION", "eu-test")],
    )?;
    let server = gateway.grpc.to_string();
    let bootstrap = broker.bootstrap();
    let stdout = run_python(
        "kafka_interop_test.py",
        &[
            "--server",
            &server,
            "--bootstrap",
            &bootstrap,
            "--region",
            "eu-test",
            "--proto",
            &proto_dir(),
        ],
        &gateway,
    )?;
    assert!(stdout.contains("records intact"));
    assert!(gateway.terminate()?.success());
    Ok(())
}
