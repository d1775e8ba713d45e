//! The brokers a bench compares, each a process of its own, and where they run: with two cores or
//! more, every broker under test alone on the last core and the load (this process) on the others,
//! the same for every side, so a figure is the broker's and not the load tool's (issue 21).

use std::{
    ffi::OsStr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result};
use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

/// The core brokers run on, once [`pin`] chose one.
static BROKER_CORE: OnceLock<Option<usize>> = OnceLock::new();

/// Pins this process's threads (the load; threads made later inherit it) to every core it may
/// use but the last, which brokers started afterwards get alone. `enabled` false, or fewer than
/// two cores, leaves everything where the scheduler puts it. Returns what was done, for the report.
pub(super) fn pin(enabled: bool) -> Result<String> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("reading this process's cores")?;
    let cores: Vec<usize> = (0..CpuSet::count())
        .filter(|core| allowed.is_set(*core).unwrap_or(false))
        .collect();
    let (Some((&broker, load)), true) = (cores.split_last(), enabled) else {
        let _ = BROKER_CORE.set(None);
        return Ok("not pinned".to_owned());
    };
    if load.is_empty() {
        let _ = BROKER_CORE.set(None);
        return Ok("not pinned (one core)".to_owned());
    }
    let mut set = CpuSet::new();
    for core in load {
        set.set(*core)?;
    }
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        // A thread may end between the listing and the call.
        let _ = sched_setaffinity(Pid::from_raw(tid), &set);
    }
    let _ = BROKER_CORE.set(Some(broker));
    let load: Vec<String> = load.iter().map(usize::to_string).collect();
    Ok(format!(
        "each broker alone on core {broker}, the load on core {}",
        load.join(",")
    ))
}

/// Runs `work` on a thread of its own, on a runtime of its own, on the brokers' core when one was
/// chosen: an in-process side (the embedded store written directly) measured on one core, as a
/// broker process is.
pub(super) async fn on_broker_core<T, F, Fut>(work: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let core = BROKER_CORE.get().copied().flatten();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-broker-core".into())
        .spawn(move || {
            let run = || -> Result<T> {
                if let Some(core) = core {
                    let mut set = CpuSet::new();
                    set.set(core)?;
                    // This thread, and the threads its runtime makes (they inherit it).
                    sched_setaffinity(Pid::from_raw(0), &set)?;
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(work())
            };
            let _ = done.send(run());
        })
        .context("starting a thread")?;
    result.await.context("the broker core's thread ended")?
}

/// A command running `program` on the brokers' core (through util-linux's `taskset`, so every
/// thread and child it makes stays there), or as it is when nothing is pinned.
pub(super) fn broker_command(program: impl AsRef<OsStr>) -> Command {
    match BROKER_CORE.get().copied().flatten() {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.args(["--cpu-list", &core.to_string()]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The first line `program args` prints (on stdout or stderr) that holds `marker`: a peer's
/// version, for the report.
pub(super) fn version_line(program: impl AsRef<OsStr>, args: &[&str], marker: &str) -> String {
    let Ok(output) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    else {
        return "unknown version".to_owned();
    };
    [output.stdout, output.stderr]
        .iter()
        .flat_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|line| line.contains(marker))
        .map_or_else(
            || "unknown version".to_owned(),
            |line| line.trim().to_owned(),
        )
}

/// What a started gateway keeps its topics in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Store<'a> {
    /// A fresh embedded log in the temporary directory, with this `log.fsync`.
    Embedded { fsync: &'a str },
    /// The `[log]` of this config file (a Kafka cluster's, say).
    Config(&'a Path),
}

/// `courier serve` (this binary, or the one `COURIER_BENCH_SERVER` names, to tell a change in the
/// gateway from one in the load tool) on `store`, every listener on a free loopback port: the
/// process, its ready line (naming the addresses) and its temporary directory. Its log level is
/// `warn`, or `COURIER_BENCH_LOG` (a `RUST_LOG` filter) when set, to see what it did. `env` adds
/// `COURIER_*` settings (TLS, say).
pub(super) fn start_courier(
    store: Store<'_>,
    env: &[(&str, String)],
) -> Result<(Child, String, tempfile::TempDir)> {
    let server = match std::env::var_os("COURIER_BENCH_SERVER") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe().context("finding the courier binary")?,
    };
    start_server(&server, store, env)
}

/// `courier serve` settings that give the load, one caller, room for `streams` streams at once
/// (and a few more): `grpc.max_streaming_calls` is 1,024 by default and a caller's share half of
/// it. Only what the defaults do not allow is set, so a binary older than a key still starts.
pub(super) fn room_for_streams(streams: usize) -> Vec<(&'static str, String)> {
    let needed = streams + 16;
    let mut env = Vec::new();
    if needed > 1024 {
        env.push(("COURIER_GRPC__MAX_STREAMING_CALLS", needed.to_string()));
    }
    if needed > 512 {
        env.push((
            "COURIER_GRPC__MAX_STREAMING_CALLS_PER_CALLER",
            "0".to_owned(),
        ));
    }
    env
}

/// [`start_courier`] with the `courier` binary at `server`.
pub(super) fn start_server(
    server: &Path,
    store: Store<'_>,
    env: &[(&str, String)],
) -> Result<(Child, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut command = broker_command(server);
    command.arg("serve");
    match store {
        Store::Embedded { fsync } => command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("COURIER_LOG__FSYNC", fsync),
        Store::Config(file) => command.env("COURIER_CONFIG", file),
    };
    let mut child = command
        .args(["--grpc-listen", "127.0.0.1:0"])
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
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

/// Clock ticks as time: Linux counts them at 100 per second (`USER_HZ`).
pub(super) fn ticks(count: u64) -> std::time::Duration {
    std::time::Duration::from_millis(count * 10)
}

/// CPU time a process and the processes it started have used (user + system), in clock ticks
/// (10 ms on Linux), from `/proc/<pid>/stat`: a broker started by a script (RabbitMQ's runs the
/// Erlang VM as its child) is counted whole.
pub(super) fn cpu_ticks(child: &Child) -> Result<u64> {
    Ok(process_tree(child)?.iter().map(|(_, ticks)| ticks).sum())
}

/// Name prefixes of a Courier process's threads that store what its clients send: the embedded
/// log's writer (`courier-log-writer`, cut to 15 bytes by the kernel; it also encodes the records
/// and answers the appends) and fjall's workers (memtable flushes, compaction). Mosquitto has none:
/// it keeps nothing on disk.
pub(super) const STORAGE_THREADS: [&str; 2] = ["courier-log-wri", "fjall"];

/// CPU time the threads whose names start with one of `prefixes` have used (user + system), in
/// clock ticks, in `child` and the processes it started (a broker run through a wrapper, as
/// `COURIER_BENCH_SERVER` allows, is counted too): what a broker's threads of one kind cost.
pub(super) fn thread_cpu_ticks(child: &Child, prefixes: &[&str]) -> Result<u64> {
    let mut total = 0;
    for (pid, _) in process_tree(child)? {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue; // ended since
        };
        for task in tasks {
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
                continue;
            };
            let name = stat
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map_or("", |(name, _)| name);
            if prefixes.iter().any(|prefix| name.starts_with(prefix)) {
                total += parse_stat(&stat)?.1;
            }
        }
    }
    Ok(total)
}

/// `child` and the processes it started, each with its CPU ticks.
fn process_tree(child: &Child) -> Result<Vec<(i64, u64)>> {
    let root = i64::from(child.id());
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let name = entry?.file_name();
        let Ok(pid) = name.to_string_lossy().parse::<i64>() else {
            continue;
        };
        // A process may end between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Ok((parent, ticks)) = parse_stat(&stat)
        {
            processes.push((pid, parent, ticks));
        }
    }
    if !processes.iter().any(|(pid, _, _)| *pid == root) {
        anyhow::bail!("process {root} is gone");
    }
    let mut tree = vec![root];
    let mut found = Vec::new();
    // Parents come before their children in no particular order: walk until nothing is added.
    let mut counted = std::collections::HashSet::new();
    while let Some(pid) = tree.pop() {
        if !counted.insert(pid) {
            continue;
        }
        for (process, parent, ticks) in &processes {
            if *process == pid {
                found.push((pid, *ticks));
            }
            if *parent == pid {
                tree.push(*process);
            }
        }
    }
    Ok(found)
}

/// A `/proc/<pid>/stat` line's parent pid and CPU ticks (user + system).
fn parse_stat(stat: &str) -> Result<(i64, u64)> {
    // Fields after the command name (which may hold spaces) start after its closing parenthesis;
    // the parent is the 2nd of them, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let field =
        |index: usize| -> Result<&str> { Ok(*fields.get(index).context("short /proc stat")?) };
    Ok((
        field(1)?.parse()?,
        field(11)?.parse::<u64>()? + field(12)?.parse::<u64>()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parent_and_the_cpu_ticks_of_a_stat_line() -> Result<()> {
        let stat = "4242 (beam.smp (x)) S 4200 4242 4200 0 -1 4194560 1 0 0 0 130 25 0 0 20 0 4 0";
        assert_eq!(parse_stat(stat)?, (4200, 155));
        Ok(())
    }

    /// Only the threads named are counted: a process that spins on its main thread has CPU time,
    /// and none of it in threads named otherwise.
    #[test]
    fn counts_the_threads_named() -> Result<()> {
        let mut child = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done"])
            .spawn()?;
        let (mut named, mut all) = (0, 0);
        for _ in 0..200 {
            // The thread first: the shell spins on, so the whole read after is never less.
            named = thread_cpu_ticks(&child, &["sh"])?;
            all = cpu_ticks(&child)?;
            if named > 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let other = thread_cpu_ticks(&child, &STORAGE_THREADS)?;
        child.kill()?;
        child.wait()?;
        assert!(named > 2, "the shell's thread never used the CPU");
        // The kernel rounds a thread's and a process's ticks apart: one tick either way.
        assert!(named <= all + 1, "{named} of {all} ticks");
        assert_eq!(other, 0);
        Ok(())
    }

    #[test]
    fn reads_a_running_child_and_refuses_one_that_ended() -> Result<()> {
        let mut child = Command::new("sleep").arg("5").spawn()?;
        let ticks = cpu_ticks(&child);
        child.kill()?;
        child.wait()?;
        ticks?;
        assert!(cpu_ticks(&child).is_err());
        Ok(())
    }
}
