//! Runs the Python clients against the real gateway: the `grpcio` client (`grpc_client_test.py`, stubs
//! generated from `proto/` at test time) on the embedded log and in front of a Kafka-protocol broker
//! (tansu), and the interop test with the native Kafka client `confluent-kafka`
//! (`kafka_interop_test.py`). `scripts/test` installs the libraries into `.venv`; `COURIER_PYTHON` may
//! name another interpreter that has them.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use courier_testkit::Tansu;

fn python() -> Result<PathBuf, String> {
    if let Ok(python) = std::env::var("COURIER_PYTHON") {
        return Ok(python.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    Err("no Python with grpcio: run scripts/test (it installs one into .venv) or set COURIER_PYTHON".into())
}

/// Runs `tests/python/<script>` with `args`; fails with its output (and the gateway's log) unless it
/// exits 0 within two minutes. Returns its stdout.
fn run_python(script: &str, args: &[&str], gateway: &Gateway) -> Result<String, BoxError> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python()?)
        .arg(root.join("tests/python").join(script))
        .args(args)
        .arg("--proto")
        .arg(root.join("proto"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            return Err(format!("{script} did not finish in 120 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}");
    if !output.status.success() {
        return Err(format!(
            "{script} failed:\n{stdout}\n{}\ngateway log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            gateway.log()
        )
        .into());
    }
    Ok(stdout)
}

fn grpcio_client_against(gateway: Gateway) -> TestResult {
    let server = gateway.grpc.to_string();
    let stdout = run_python("grpc_client_test.py", &["--server", &server], &gateway)?;
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
        ],
        &gateway,
    )?;
    assert!(stdout.contains("records intact"));
    assert!(gateway.terminate()?.success());
    Ok(())
}
