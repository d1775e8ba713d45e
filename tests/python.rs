//! Runs the Python `grpcio` client (`tests/python/grpc_client_test.py`, stubs generated from `proto/` at
//! test time) against the real gateway. `scripts/test` installs grpcio into `.venv`; `COURIER_PYTHON`
//! may name another interpreter that has `grpcio`, `grpcio-tools` and `grpcio-reflection`.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::*;

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

#[test]
fn python_grpcio_client_generated_from_the_proto() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_GROUPS__COMMIT_INTERVAL", "200ms")],
    )?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python()?)
        .arg(root.join("tests/python/grpc_client_test.py"))
        .args(["--server", &gateway.grpc.to_string(), "--proto"])
        .arg(root.join("proto"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            return Err("the Python client did not finish in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        gateway.log()
    );
    assert!(stdout.contains("0 lost, 0 acknowledged twice"));
    assert!(gateway.terminate()?.success());
    Ok(())
}
