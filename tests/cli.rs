//! The `courier` client commands against a running gateway, as a user types them.

mod common;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use common::*;

fn courier(gateway: &Gateway, args: &[&str], stdin: Option<&str>) -> Result<Output, BoxError> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .env("COURIER_SERVER", gateway.url())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn produce_consume_and_inspect_from_the_command_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    let topic = unique("cli");

    let created = courier(
        &gateway,
        &["topics", "create", &topic, "--partitions", "2"],
        None,
    )?;
    assert!(created.status.success(), "{created:?}");
    assert!(stdout(&created).contains("partition 1"));
    let again = courier(&gateway, &["topics", "create", &topic], None)?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let lines: String = (0..250).map(|i| format!("line {i}\n")).collect();
    let produced = courier(
        &gateway,
        &["produce", &topic, "--key", "one-key", "--batch", "40"],
        Some(&lines),
    )?;
    assert!(produced.status.success(), "{produced:?}");
    assert_eq!(
        stdout(&produced).lines().count(),
        250,
        "one ack line per record"
    );
    let args = courier(
        &gateway,
        &["produce", &topic, "-H", "source=cli", "first", "second"],
        None,
    )?;
    assert!(args.status.success(), "{args:?}");

    let consumed = courier(
        &gateway,
        &[
            "consume",
            &topic,
            "--group",
            "cli-readers",
            "--count",
            "252",
            "--idle-timeout",
            "10s",
        ],
        None,
    )?;
    assert!(consumed.status.success(), "{consumed:?}");
    let mut values: Vec<String> = stdout(&consumed).lines().map(str::to_owned).collect();
    assert_eq!(values.len(), 252);
    let keyed: Vec<&String> = values.iter().filter(|v| v.starts_with("line ")).collect();
    assert_eq!(
        keyed,
        (0..250)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>(),
        "one key keeps its order"
    );
    values.sort();
    assert!(values.contains(&"first".to_owned()) && values.contains(&"second".to_owned()));

    // The group committed everything it printed: a second run finds nothing new.
    let rerun = courier(
        &gateway,
        &[
            "consume",
            &topic,
            "--group",
            "cli-readers",
            "--idle-timeout",
            "1s",
        ],
        None,
    )?;
    assert!(rerun.status.success());
    assert_eq!(stdout(&rerun), "");
    let json = courier(
        &gateway,
        &[
            "consume",
            &topic,
            "--from",
            "earliest",
            "--count",
            "1",
            "--format",
            "json",
            "--idle-timeout",
            "10s",
        ],
        None,
    )?;
    let record: serde_json::Value = serde_json::from_str(stdout(&json).trim())?;
    assert_eq!(record["topic"], topic.as_str());
    assert_eq!(record["origin"], "local");
    assert_eq!(record["courier_id"].as_str().map(str::len), Some(26));

    let described = courier(&gateway, &["groups", "describe", "cli-readers"], None)?;
    assert!(
        stdout(&described).contains("lag=0"),
        "{}",
        stdout(&described)
    );
    let listed = courier(&gateway, &["topics", "list"], None)?;
    assert!(stdout(&listed).contains(&format!("{topic}\t2 partition(s)")));
    let deleted = courier(&gateway, &["topics", "delete", &topic], None)?;
    assert!(deleted.status.success());
    let gone = courier(&gateway, &["topics", "describe", &topic], None)?;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));

    let unreachable = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["topics", "list", "--server", "http://127.0.0.1:1"])
        .output()?;
    assert!(!unreachable.status.success());
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .contains("connecting to the gateway at http://127.0.0.1:1")
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A bad config is refused before anything binds, naming the key.
#[test]
fn bad_config_names_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("courier.toml");
    std::fs::write(&file, "[grpc]\nlisten = \"not an address\"\n")?;
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("grpc.listen"), "{stderr}");
    assert!(stdout(&output).is_empty(), "no ready line");
    Ok(())
}
