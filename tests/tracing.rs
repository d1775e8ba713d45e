//! Message tracing end to end (`[telemetry.tracing]`): the gateway in front of a tansu broker exports
//! its spans over OTLP/gRPC to a receiver built from the official OpenTelemetry protos
//! (`tests/python/otlp_receiver.py`), and real clients of every protocol (`tracing_test.py`: paho-mqtt,
//! grpcio, python-qpid-proton, confluent-kafka) check the trace contexts they get against the spans the
//! receiver holds. With tracing off, nothing is exported and no trace context is added.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use common::*;
use courier_testkit::Tansu;

/// The OTLP receiver, stopped (its stdin closed, then killed if need be) when dropped.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(spans: &Path) -> Result<Self, BoxError> {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_receiver.py");
        let mut child = Command::new(python()?)
            .arg(script)
            .arg("--out")
            .arg(spans)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("the receiver said {line:?}"))?
            .parse()?;
        Ok(Self { child, port })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

fn traced_run(tracing: &str) -> TestResult {
    let _one = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let spans = dir.path().join("spans.jsonl");
    std::fs::write(&spans, "")?;
    let receiver = Receiver::start(&spans)?;
    let endpoint = receiver.endpoint();
    let enabled = (tracing == "on").to_string();
    let gateway = Gateway::start_kafka(
        &dir.path().join("gateway"),
        &broker.bootstrap(),
        &[
            ("COURIER_TELEMETRY__TRACING__ENABLED", enabled.as_str()),
            ("COURIER_TELEMETRY__TRACING__ENDPOINT", endpoint.as_str()),
            // The SDK's batch processor exports every 5 s by default; the test waits less.
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("COURIER_TELEMETRY__LOG_FORMAT", "json"),
        ],
    )?;
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let stdout = run_python(
        "tracing_test.py",
        &[
            "--tracing",
            tracing,
            "--spans",
            &spans.display().to_string(),
            "--grpc",
            &gateway.grpc.to_string(),
            "--amqp",
            &gateway.amqp.to_string(),
            "--mqtt-port",
            &gateway.mqtt.port().to_string(),
            "--bootstrap",
            &broker.bootstrap(),
            "--proto",
            proto,
        ],
        &gateway,
    )?;
    // What became of the spans, on /metrics: the test waited for spans at the receiver, so some
    // were exported; none was dropped at these rates.
    let (_, metrics) = scrape::get(gateway.http, "/metrics")?;
    let spans_counted = |outcome: &str| {
        scrape::series(
            &metrics,
            &format!("courier_tracing_spans_total{{outcome=\"{outcome}\"}}"),
        )
    };
    let log = gateway.log();
    assert!(gateway.terminate()?.success());
    let exported = std::fs::read_to_string(&spans)?;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("a log line that is not JSON ({error}):\n{log}"))?;
    if tracing == "on" {
        assert!(stdout.contains("tracing on: one trace"), "{stdout}");
        assert!(
            spans_counted("exported").is_some_and(|exported| exported > 0.0),
            "{metrics}"
        );
        assert_eq!(spans_counted("dropped"), Some(0.0), "{metrics}");
        // The log line the publish wrote carries its trace's id, for pipelines that join the two.
        let trace_id = stdout
            .lines()
            .find_map(|line| line.strip_prefix("publisher's trace "))
            .ok_or("no trace id printed")?;
        assert!(
            lines
                .iter()
                .any(|line| line["message"] == "published" && line["span"]["trace_id"] == trace_id),
            "no JSON log line of the publish with trace_id {trace_id}:\n{log}"
        );
    } else {
        assert!(stdout.contains("tracing off:"), "{stdout}");
        // Stopping flushes an exporter's queue: with tracing off there is none.
        assert!(exported.is_empty(), "exported with tracing off: {exported}");
        assert_eq!(spans_counted("exported"), None, "{metrics}");
    }
    Ok(())
}

#[test]
fn one_trace_from_an_mqtt_publisher_to_grpc_amqp_mqtt_and_kafka_readers() -> TestResult {
    traced_run("on")
}

#[test]
fn with_tracing_off_nothing_is_exported_and_no_trace_context_is_added() -> TestResult {
    traced_run("off")
}
