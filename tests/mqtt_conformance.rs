//! MQTT 5 conformance (issue 16), with paho-mqtt on the embedded log and in front of a Kafka-protocol
//! broker (tansu): a resumed session delivers what it queued whatever expiry the reconnect names,
//! message expiry counts down offline, user properties pass unaltered (with and without
//! `mqtt.courier_id_property`), a client's Maximum Packet Size, `$` topics, the server's keep-alive
//! limit, and when a will is published. The checks are in `tests/python/mqtt_conformance_test.py`;
//! `bridges/mqtt/CONFORMANCE.md` lists the normative statements and the check that shows each.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use courier_testkit::Tansu;

/// Every check but the 3.1.1 keep-alive one, which needs a short limit of its own.
const CHECKS: &[&str] = &[
    "resume",
    "message-expiry",
    "user-properties",
    "responder",
    "max-packet",
    "dollar",
    "keep-alive",
    "resume-latency",
    "will",
    "refusals",
];

fn run_checks(gateway: &Gateway, extra: &[&str], checks: &[&str]) -> TestResult {
    let port = gateway.mqtt.port().to_string();
    let args = [&["--port", port.as_str()][..], extra, checks].concat();
    let stdout = run_python("mqtt_conformance_test.py", &args, gateway)?;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

/// Processes that keep both cores busy while they live, so the gateway is slow as on a loaded machine.
struct CpuLoad(Vec<Child>);

impl CpuLoad {
    fn start() -> Result<Self, BoxError> {
        let burners = (0..2)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdout(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(burners))
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        for burner in &mut self.0 {
            let _ = burner.kill();
            let _ = burner.wait();
        }
    }
}

#[test]
fn mqtt5_conformance_on_the_embedded_log() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    run_checks(&gateway, &[], CHECKS)?;
    {
        let _load = CpuLoad::start()?;
        run_checks(&gateway, &["--rounds", "30"], &["leave-at-once"])?;
    }
    assert!(gateway.terminate()?.success());

    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_MQTT__COURIER_ID_PROPERTY", "true")],
    )?;
    run_checks(&gateway, &["--courier-id-property"], &["user-properties"])?;
    assert!(gateway.terminate()?.success());

    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_MQTT__MAX_KEEP_ALIVE", "2s")],
    )?;
    run_checks(&gateway, &[], &["v311-keep-alive"])?;
    assert!(gateway.terminate()?.success());

    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_MQTT__MAX_RETAINED_PER_PRINCIPAL", "2")],
    )?;
    run_checks(&gateway, &[], &["retained-cap"])?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn mqtt5_conformance_in_front_of_kafka() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_kafka(&dir.path().join("gateway"), &broker.bootstrap(), &[])?;
    run_checks(&gateway, &[], CHECKS)?;
    // Under load, a session's reader can leave its group between its JoinGroup answer and its
    // SyncGroup, which stalls the group on tansu 0.6.0 (see gateway/tests/kafka.rs): without the
    // backend's `await_join`, 60 rounds failed by round 15 in 3 runs of 3.
    {
        let _load = CpuLoad::start()?;
        run_checks(&gateway, &["--rounds", "20"], &["leave-at-once"])?;
    }
    assert!(gateway.terminate()?.success());
    Ok(())
}
