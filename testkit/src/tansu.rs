//! A tansu broker (a Kafka-protocol broker written in Rust) on a free loopback port with in-memory
//! storage: one process per "cluster". `./scripts/test` installs the binary (tansu 0.6.0); tests find
//! it through `COURIER_TANSU`, then `PATH`, then `~/.cargo/bin`.
//!
//! The broker runs under `timeout`, so it cannot outlive a test run that was killed before [`Drop`]
//! could stop it.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Longest a broker may live.
const LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Longest a broker may take to accept connections.
const STARTUP: Duration = Duration::from_secs(20);

/// Why a broker could not be started.
#[derive(Debug)]
pub struct TansuError(String);

impl std::fmt::Display for TansuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TansuError {}

/// A running tansu broker, stopped on drop.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    address: SocketAddr,
    log_file: PathBuf,
}

impl Tansu {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Result<Self, TansuError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| TansuError(format!("finding a free port: {e}")))?
            .port();
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Kills the broker and starts a new one on the same address: a region coming back. Storage is in
    /// memory, so it comes back empty, as a cluster rebuilt from nothing would.
    pub fn restart(&mut self) -> Result<(), TansuError> {
        self.kill();
        // The old process is dead already; dropping its handle only reaps it again.
        *self = Self::start_on(self.address)?;
        Ok(())
    }

    fn start_on(address: SocketAddr) -> Result<Self, TansuError> {
        let binary = find_binary()?;
        let port = address.port();
        let url = format!("tcp://{address}");
        let log_file = std::env::temp_dir().join(format!("courier-tansu-{port}.log"));
        let log = std::fs::File::create(&log_file)
            .map_err(|e| TansuError(format!("creating {}: {e}", log_file.display())))?;
        let stderr = log
            .try_clone()
            .map_err(|e| TansuError(format!("opening the broker log: {e}")))?;
        let child = Command::new("timeout")
            .args(["--signal=KILL", &LIFETIME.as_secs().to_string()])
            .arg(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| TansuError(format!("starting {}: {e}", binary.display())))?;
        let mut broker = Self {
            child,
            address,
            log_file,
        };
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(TansuError(format!(
                    "tansu exited with {status} before listening; see {}",
                    broker.log_file.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(TansuError(format!(
                    "tansu did not listen on {address} within {STARTUP:?}; see {}",
                    broker.log_file.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// The broker's own log, for reading when a test fails.
    pub fn log_file(&self) -> &std::path::Path {
        &self.log_file
    }

    /// Kills the broker now (a "region" going away). `timeout` leads a process group of its own with
    /// the broker in it; killing only `timeout` would leave the broker running, so the group goes.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the broker where it is (SIGSTOP) until [`Tansu::thaw`]: a cluster that is lost to its
    /// clients, whose connections hang rather than refuse, and that comes back with its data.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Sends `signal` to the broker's process group (`timeout` and tansu under it).
    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Result<PathBuf, TansuError> {
    if let Some(path) = std::env::var_os("COURIER_TANSU") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let in_cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin").join("tansu"));
    on_path
        .into_iter()
        .chain(in_cargo)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            TansuError(
                "tansu is not installed: run ./scripts/test (it installs tansu 0.6.0), or set COURIER_TANSU"
                    .into(),
            )
        })
}
