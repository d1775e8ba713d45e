//! A connection the limits turn away (here: past one connection per address, while one is held)
//! is told why in AMQP: Qpid Proton clients (SASL ANONYMOUS, SASL PLAIN, no SASL) each see CLOSE
//! with `amqp:resource-limit-exceeded` and the description. The checks are in
//! `tests/python/amqp_refusal_test.py` at the workspace root; the interpreter is `COURIER_PYTHON`,
//! else the workspace's `.venv`.

mod support;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use courier_amqp::Config;
use courier_gateway::limits::LimitsConfig;
use support::*;

const DESCRIPTION: &str = "too many connections from this address";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Result<PathBuf, Error> {
    if let Ok(python) = std::env::var("COURIER_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    Err("no Python with the client libraries: set COURIER_PYTHON (scripts/test installs them into .venv)".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_clients_hear_why_they_are_refused() -> TestResult {
    let gateway = Gateway::start_limited(
        Config::default(),
        LimitsConfig {
            max_connections_per_address: 1,
            ..LimitsConfig::default()
        },
    )
    .await?;
    // The address's one connection, held while the Proton clients try theirs.
    let _held = gateway.connect("held").await?;
    let address = gateway.address.to_string();
    let mut child = Command::new(python()?)
        .arg(workspace().join("tests/python/amqp_refusal_test.py"))
        .args(["--address", &address, "--description", DESCRIPTION])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            return Err("amqp_refusal_test.py did not finish in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    gateway.stop().await
}
