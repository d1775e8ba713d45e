//! `courier bench` itself, on workloads small enough for the suite: the tool runs its brokers as
//! processes of their own, pinned when there are two cores, and reports the broker's CPU time beside
//! each rate. Its figures are read by people (BENCHMARKS.md), not checked here: what is checked is
//! that it ran every side of every workload to the end and said how it was run.

use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn bench(args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("bench")
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "courier bench {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(output)
}

fn pinning_line(report: &str) -> Option<&str> {
    report.lines().find(|line| line.starts_with("pinning: "))
}

/// The default mode: the direct side and `courier serve`'s gRPC side each produce and read back
/// every record; the gateway process's CPU time is reported.
#[test]
fn the_grpc_bench_measures_courier_serve_as_a_process_of_its_own() -> TestResult {
    let output = bench(&["--records", "2000", "--streams", "2", "--fsync", "never"])?;
    let report = String::from_utf8(output.stdout)?;
    let pinning = pinning_line(&report).ok_or(report.clone())?;
    // The cores this process may use, as the bench counts them (not a cgroup's CPU quota).
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    let cores = (0..nix::sched::CpuSet::count())
        .filter(|core| allowed.is_set(*core).unwrap_or(false))
        .count();
    assert_eq!(
        pinning.contains("alone on core"),
        cores >= 2,
        "{cores} cores: {pinning}"
    );
    for side in [
        "| produce | direct (in-process) |",
        "| produce | gRPC ProduceStream |",
        "| subscribe | direct (in-process) |",
        "| subscribe | gRPC Subscribe |",
    ] {
        assert!(report.contains(side), "no {side:?} in\n{report}");
    }
    assert!(report.contains("gateway process CPU: produce"), "{report}");
    assert!(report.contains("subscribe ratio gRPC/direct: "), "{report}");
    Ok(())
}

/// `--no-pin` leaves the brokers to the scheduler, and says so.
#[test]
fn no_pin_says_nothing_is_pinned() -> TestResult {
    let output = bench(&[
        "--records",
        "500",
        "--streams",
        "1",
        "--fsync",
        "never",
        "--no-pin",
    ])?;
    let report = String::from_utf8(output.stdout)?;
    assert_eq!(
        pinning_line(&report),
        Some("pinning: not pinned"),
        "{report}"
    );
    Ok(())
}

/// `--kafka mock`: rdkafka and the gateway on librdkafka's mock cluster, its topics made through the
/// cluster's own API (it answers no CreateTopics). The gateway is `courier serve` on that cluster,
/// pinned as in the other modes, its CPU time reported, and each subscription's rate is also given
/// from its first record (joining the group takes seconds there).
#[test]
fn the_kafka_bench_runs_on_librdkafkas_mock_cluster() -> TestResult {
    let output = bench(&[
        "--kafka",
        "mock",
        "--records",
        "2000",
        "--record-size",
        "100",
        "--partitions",
        "2",
        "--streams",
        "2",
    ])?;
    let report = String::from_utf8(output.stdout)?;
    assert!(report.contains("librdkafka's mock cluster"), "{report}");
    assert!(pinning_line(&report).is_some(), "{report}");
    for side in [
        "| produce | direct (rdkafka) |",
        "| subscribe | gRPC Subscribe |",
        "gateway process CPU: produce ",
        "subscribe from the first record: direct ",
    ] {
        assert!(report.contains(side), "no {side:?} in\n{report}");
    }
    Ok(())
}

/// MQTT against Mosquitto (installed by `scripts/test`): both brokers measured in every workload,
/// with their CPU time per message and Mosquitto's version.
#[test]
fn the_mqtt_bench_reports_each_brokers_cpu_per_message() -> TestResult {
    let output = bench(&[
        "--mqtt",
        "--records",
        "400",
        "--streams",
        "2",
        "--qos2-messages",
        "100",
        "--subscribers",
        "5",
        "--fanout-messages",
        "20",
        "--connections",
        "50",
        "--commands",
        "100",
        "--new-connections",
        "20",
        "--fsync",
        "never",
    ])?;
    let report = String::from_utf8(output.stdout)?;
    assert!(
        report
            .lines()
            .any(|line| line.starts_with("peer: mosquitto version")),
        "{report}"
    );
    for broker in ["Courier (embedded)", "Mosquitto"] {
        for workload in [
            "commands",
            "new connections",
            "QoS 1 publish",
            "QoS 2 publish",
            "fan-out",
            "QoS 2 delivery",
        ] {
            let row = format!("| {broker} | {workload} | ");
            assert!(report.contains(&row), "no {row:?} in\n{report}");
        }
    }
    Ok(())
}

/// The rows of the `--scaling` table in `report` whose first two cells are `streams` and `size`.
fn scaling_row(report: &str, streams: usize, size: usize) -> Option<Vec<&str>> {
    report
        .lines()
        .find(|line| line.starts_with(&format!("| {streams} | {size} | ")))
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
}

/// `--scaling`: a row for every point of the grid, gRPC (against the in-process store) and MQTT
/// (against Mosquitto), each point measured on both sides to the end (a ratio is a number).
#[test]
fn the_scaling_bench_measures_every_point_of_its_grid() -> TestResult {
    for (protocol, ratio_column) in [(None, 6), (Some("--mqtt"), 5)] {
        let mut args = vec![
            "--scaling",
            "--scaling-streams",
            "1,4",
            "--scaling-sizes",
            "100,2048",
            "--records",
            "200",
            "--fsync",
            "never",
        ];
        args.extend(protocol);
        let report = String::from_utf8(bench(&args)?.stdout)?;
        assert!(report.contains("scaling: "), "{report}");
        for streams in [1, 4] {
            for size in [100, 2048] {
                let row = scaling_row(&report, streams, size)
                    .ok_or(format!("no row for {streams} x {size} in\n{report}"))?;
                let ratio: f64 = row
                    .get(ratio_column)
                    .ok_or(format!("a short row in\n{report}"))?
                    .parse()?;
                assert!(ratio.is_finite() && ratio > 0.0, "{report}");
            }
        }
    }
    Ok(())
}

/// `--kafka mock --regions mock`: the region router's comparison over two mock clusters (its canary
/// topics made through the clusters' own API): both sides produce and read back in both rounds.
#[test]
fn the_region_router_bench_runs_on_two_mock_clusters() -> TestResult {
    let output = bench(&[
        "--kafka",
        "mock",
        "--regions",
        "mock",
        "--records",
        "1000",
        "--record-size",
        "100",
        "--partitions",
        "2",
        "--streams",
        "2",
    ])?;
    let report = String::from_utf8(output.stdout)?;
    for round in [1, 2] {
        for row in [
            "produce | gRPC over kafka |",
            "subscribe | gRPC over kafka |",
            "produce | gRPC over the region router |",
            "subscribe | gRPC over the region router |",
        ] {
            let row = format!("| {round} | {row}");
            assert!(report.contains(&row), "no {row:?} in\n{report}");
        }
    }
    assert!(report.contains("produce ratio router/plain: "), "{report}");
    Ok(())
}
