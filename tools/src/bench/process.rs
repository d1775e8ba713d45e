//! The brokers a bench compares, each a process of its own.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

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
    let server = match std::env::var_os("COURIER_BENCH_SERVER") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe().context("finding the courier binary")?,
    };
    start_server(&server, fsync, env)
}

/// [`start_courier`] with the `courier` binary at `server`.
pub(super) fn start_server(
    server: &Path,
    fsync: &str,
    env: &[(&str, String)],
) -> Result<(Child, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
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
        .with_context(|| format!("starting {} serve", server.display()))?;
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

/// CPU time a process has used (user + system), in clock ticks (10 ms on Linux), from
/// `/proc/<pid>/stat`.
pub(super) fn cpu_ticks(child: &Child) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))?;
    // Fields after the command name (which may hold spaces) start after its closing parenthesis;
    // utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> Result<u64> {
        Ok(fields
            .get(index)
            .context("short /proc stat")?
            .parse::<u64>()?)
    };
    Ok(ticks(11)? + ticks(12)?)
}
