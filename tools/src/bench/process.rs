//! The brokers a bench compares, each a process of its own.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// `courier serve` (this binary, or the one `COURIER_BENCH_SERVER` names, to tell a change in the
/// gateway from one in the load tool) on a fresh embedded log in a temporary directory, every listener
/// on a free loopback port: the process, its ready line (naming the addresses) and the directory. Its
/// log level is `warn`, or `COURIER_BENCH_LOG` (a `RUST_LOG` filter) when set, to see what it did.
/// `env` adds `COURIER_*` settings (TLS, say).
pub(super) fn start_courier(
    fsync: &str,
    env: &[(&str, String)],
) -> Result<(Child, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let server = match std::env::var_os("COURIER_BENCH_SERVER") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe().context("finding the courier binary")?,
    };
    let mut child = Command::new(server)
        .args(["serve", "--grpc-listen", "127.0.0.1:0"])
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("COURIER_LOG__FSYNC", fsync)
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .env(
            "RUST_LOG",
            std::env::var("COURIER_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting courier serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find(|line| line.starts_with("courier ready"))
        .context("courier exited before its ready line")?;
    Ok((child, line, dir))
}

/// Stops a broker process: SIGTERM, then waits for it.
pub(super) fn stop_process(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
