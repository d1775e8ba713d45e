//! Runs the real `courier` binary for end-to-end tests: on a free loopback port, in a temporary data
//! directory, ready when it prints its ready line, stopped with SIGTERM (or SIGKILL for crash tests).

#![allow(dead_code, unreachable_pub)] // each test file uses what it needs

pub mod clients;
pub mod mqtt5;
pub mod regions;
pub mod replicator;
pub mod scrape;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use courier_grpc::proto::v1::{
    self as pb, admin_client::AdminClient, streams_client::StreamsClient,
    subscribe_request::Kind as RequestKind,
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::sync::mpsc as tokio_mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), BoxError>;

/// Longest the gateway may take to start or stop, and any single wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running gateway process.
pub struct Gateway {
    child: Option<Child>,
    /// The bound gRPC address.
    pub grpc: SocketAddr,
    /// The bound MQTT address.
    pub mqtt: SocketAddr,
    /// The bound MQTT-over-WebSocket address, when one was configured.
    pub mqtt_ws: Option<SocketAddr>,
    /// The bound AMQP address.
    pub amqp: SocketAddr,
    /// The bound HTTP address (health, metrics, status page).
    pub http: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its logs go (stderr), to read when a test fails.
    pub log_file: PathBuf,
    /// Its ready line, naming every bound address (`mqtts=...`, `amqps=...`).
    pub ready: String,
}

impl Gateway {
    /// Starts a gateway on the embedded log in `data_dir`, with extra `COURIER_*` settings.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        let args = ["--data-dir".into(), data_dir.as_os_str().to_owned()];
        Self::start_with(data_dir, &args, env)
    }

    /// Starts a gateway in front of the Kafka cluster at `bootstrap`; `work_dir` names its log file.
    pub fn start_kafka(
        work_dir: &Path,
        bootstrap: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        // One record per produced batch: tansu 0.6.0 cannot fetch from inside a batch (see
        // gateway/tests/kafka.rs). One broker, so one replica per topic.
        let config = work_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "[log]\nkind = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n\
                 replication_factor = 1\nsession_timeout = \"6s\"\n\
                 [log.producer_properties]\n\"batch.num.messages\" = \"1\"\n"
            ),
        )
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
        Self::start_with(work_dir, &["--config".into(), config.into_os_string()], env)
    }

    /// Starts a gateway with this config file text; `work_dir` names its config and log files.
    pub fn start_with_config(
        work_dir: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let file = work_dir.with_extension("toml");
        std::fs::write(&file, config).map_err(|e| format!("writing {}: {e}", file.display()))?;
        Self::start_with(work_dir, &["--config".into(), file.into_os_string()], env)
    }

    fn start_with(
        data_dir: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let log_file = data_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
        command
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--amqp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("RUST_LOG", "info,courier_gateway=debug,courier_grpc=debug")
            .env("COURIER_SHUTDOWN__GRACE", "10s")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting courier: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (lines, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = ready.recv_timeout(left).map_err(|_| {
                format!(
                    "no ready line within {DEADLINE:?}; log:\n{}",
                    std::fs::read_to_string(&log_file).unwrap_or_default()
                )
            })?;
            if line.starts_with("courier ready ") {
                let address = |name: &str| -> Result<SocketAddr, String> {
                    line.split_whitespace()
                        .find_map(|field| field.strip_prefix(name))
                        .ok_or_else(|| format!("no {name} in {line:?}"))?
                        .parse()
                        .map_err(|e| format!("bad {name} address in {line:?}: {e}"))
                };
                return Ok(Self {
                    child: Some(child),
                    grpc: address("grpc=")?,
                    mqtt: address("mqtt=")?,
                    mqtt_ws: address("mqtt-ws=").ok(),
                    amqp: address("amqp=")?,
                    http: address("http=")?,
                    data_dir: data_dir.to_owned(),
                    log_file,
                    ready: line,
                });
            }
        }
    }

    /// The address its ready line names `name` (`mqtts`, `mqtt-wss`, `amqps`, `https`, ...).
    pub fn listener(&self, name: &str) -> Result<SocketAddr, String> {
        let prefix = format!("{name}=");
        self.ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix(&prefix))
            .ok_or_else(|| format!("no {name} in {:?}", self.ready))?
            .parse()
            .map_err(|e| format!("bad {name} address in {:?}: {e}", self.ready))
    }

    /// The gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn channel(&self) -> Result<Channel, BoxError> {
        Ok(Channel::from_shared(self.url())?.connect().await?)
    }

    pub async fn streams(&self) -> Result<StreamsClient<Channel>, BoxError> {
        Ok(StreamsClient::new(self.channel().await?))
    }

    pub async fn admin(&self) -> Result<AdminClient<Channel>, BoxError> {
        Ok(AdminClient::new(self.channel().await?))
    }

    /// The process id, while it runs (for a client that kills the gateway mid-stream itself).
    pub fn process_id(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .map(|child| Pid::from_raw(child.id() as i32))
    }

    /// Sends SIGTERM and waits for the exit within the deadline.
    pub fn terminate(mut self) -> Result<ExitStatus, String> {
        let pid = self.pid().ok_or("already stopped")?;
        nix::sys::signal::kill(pid, Signal::SIGTERM).map_err(|e| e.to_string())?;
        self.wait()
    }

    /// Sends SIGTERM and returns at once: the drain runs while the test watches.
    pub fn send_sigterm(&self) -> Result<(), String> {
        let pid = self.pid().ok_or("already stopped")?;
        nix::sys::signal::kill(pid, Signal::SIGTERM).map_err(|e| e.to_string())
    }

    /// Waits for the process to exit within the deadline.
    pub fn wait_for_exit(mut self) -> Result<ExitStatus, String> {
        self.wait()
    }

    /// Kills the process outright (a crash).
    pub fn kill9(mut self) -> Result<(), String> {
        let pid = self.pid().ok_or("already stopped")?;
        nix::sys::signal::kill(pid, Signal::SIGKILL).map_err(|e| e.to_string())?;
        self.wait().map(|_| ())
    }

    fn wait(&mut self) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("already stopped")?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("courier did not exit within {DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The log once a line satisfies `wanted`, or as it is after [`DEADLINE`]: lines reach the
    /// file a moment after what they tell of (the ready line, an answer) is seen.
    pub fn log_once(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = self.log();
            if log.lines().any(&wanted) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A topic name unique to this run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Creates a topic named `<prefix>-<unique>` with `partitions`; returns the admin client and the name.
pub async fn create_topic(
    gateway: &Gateway,
    prefix: &str,
    partitions: u32,
) -> Result<(AdminClient<Channel>, String), BoxError> {
    let mut admin = gateway.admin().await?;
    let topic = unique(prefix);
    admin
        .create_topic(pb::CreateTopicRequest {
            name: topic.clone(),
            partitions,
            ..Default::default()
        })
        .await?;
    Ok((admin, topic))
}

/// Opens a ProduceStream and feeds it from a task: request `n` carries `records_for(n)`, for
/// `request_id` 0, 1, 2, ... up to `requests`, or until the stream closes or the task is aborted.
pub async fn produce_continuously(
    client: &mut StreamsClient<Channel>,
    topic: &str,
    requests: u64,
    records_for: impl Fn(u64) -> Vec<pb::ProduceRecord> + Send + 'static,
) -> Result<
    (
        tokio::task::JoinHandle<()>,
        tonic::Streaming<pb::ProduceResponse>,
    ),
    tonic::Status,
> {
    let (sender, outbound) = tokio_mpsc::channel(64);
    let responses = client
        .produce_stream(ReceiverStream::new(outbound))
        .await?
        .into_inner();
    let topic = topic.to_owned();
    let producer = tokio::spawn(async move {
        for request_id in 0..requests {
            let request = pb::ProduceRequest {
                topic: topic.clone(),
                records: records_for(request_id),
                request_id,
            };
            if sender.send(request).await.is_err() {
                return;
            }
        }
    });
    Ok((producer, responses))
}

/// A record with a value (and optional key).
pub fn record(key: Option<&str>, value: &str) -> pb::ProduceRecord {
    pb::ProduceRecord {
        key: key.map(|k| bytes::Bytes::from(k.to_owned())),
        value: Some(bytes::Bytes::from(value.to_owned())),
        ..Default::default()
    }
}

pub fn value_of(record: &pb::Record) -> String {
    record
        .value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// An open Subscribe stream: send acks through `requests`, read `responses`.
pub struct SubscribeStream {
    pub requests: tokio_mpsc::Sender<pb::SubscribeRequest>,
    pub responses: tonic::Streaming<pb::SubscribeResponse>,
}

impl SubscribeStream {
    pub async fn open(
        client: &mut StreamsClient<Channel>,
        start: pb::SubscribeStart,
    ) -> Result<Self, tonic::Status> {
        let (requests, outbound) = tokio_mpsc::channel(1024);
        requests
            .send(pb::SubscribeRequest {
                kind: Some(RequestKind::Start(start)),
            })
            .await
            .map_err(|_| tonic::Status::internal("request channel closed"))?;
        let responses = client
            .subscribe(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    /// The next batch of records, skipping assignment messages; `None` on timeout or end.
    pub async fn next_records(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Vec<pb::Record>>, tonic::Status> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.responses.message()).await {
                Err(_) => return Ok(None),
                Ok(message) => match message? {
                    None => return Ok(None),
                    Some(pb::SubscribeResponse {
                        kind: Some(pb::subscribe_response::Kind::Records(batch)),
                    }) => {
                        return Ok(Some(batch.records));
                    }
                    Some(_) => continue,
                },
            }
        }
    }

    /// Follows assignment messages until this member holds `count` partitions (records arriving
    /// meanwhile are left unacknowledged, to be redelivered); returns them.
    pub async fn wait_for_partitions(
        &mut self,
        count: usize,
    ) -> Result<std::collections::BTreeSet<(String, i32)>, BoxError> {
        let mut held = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while held.len() != count {
            let message = tokio::time::timeout_at(deadline, self.responses.message())
                .await
                .map_err(|_| format!("held {held:?}, expected {count} partitions"))??;
            match message.and_then(|m| m.kind) {
                Some(pb::subscribe_response::Kind::Assigned(assignment)) => {
                    held.extend(
                        assignment
                            .partitions
                            .into_iter()
                            .map(|p| (p.topic, p.partition)),
                    );
                }
                Some(pb::subscribe_response::Kind::Revoked(assignment)) => {
                    for p in assignment.partitions {
                        held.remove(&(p.topic, p.partition));
                    }
                }
                Some(_) => {}
                None => return Err("the subscribe stream ended".into()),
            }
        }
        Ok(held)
    }

    /// Receives and acknowledges batches until at least `count` records came; returns how many did.
    /// `what` names the reader in the error when records stop coming.
    pub async fn ack_at_least(&mut self, count: usize, what: &str) -> Result<usize, BoxError> {
        let mut received = 0;
        while received < count {
            let batch = self
                .next_records(DEADLINE)
                .await?
                .ok_or_else(|| format!("{what} got {received} of {count} records"))?;
            self.ack(&batch).await?;
            received += batch.len();
        }
        Ok(received)
    }

    /// Acknowledges records.
    pub async fn ack(&self, records: &[pb::Record]) -> Result<(), String> {
        let acks = records
            .iter()
            .map(|r| pb::PartitionOffset {
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
            })
            .collect();
        self.requests
            .send(pb::SubscribeRequest {
                kind: Some(RequestKind::Ack(pb::Ack {
                    records: acks,
                    ranges: Vec::new(),
                })),
            })
            .await
            .map_err(|_| "the subscribe stream is closed".to_owned())
    }
}

/// Every value stored in `topic`, read from the start without a group, in delivery order (copies
/// included).
pub async fn stored_values(gateway: &Gateway, topic: &str) -> Result<Vec<String>, BoxError> {
    let mut client = gateway.streams().await?;
    let start = pb::SubscribeStart {
        topics: vec![topic.to_owned()],
        start: Some(pb::Position {
            kind: Some(pb::position::Kind::Earliest(true)),
        }),
        max_in_flight: 1000,
        ..Default::default()
    };
    let mut reader = SubscribeStream::open(&mut client, start).await?;
    let mut values = Vec::new();
    while let Some(batch) = reader.next_records(Duration::from_secs(2)).await? {
        reader.ack(&batch).await?;
        values.extend(batch.iter().map(value_of));
    }
    Ok(values)
}

/// A group subscription start message.
pub fn start_in_group(topic: &str, group: &str, max_in_flight: u32) -> pb::SubscribeStart {
    pb::SubscribeStart {
        topics: vec![topic.to_owned()],
        group: group.to_owned(),
        start: Some(pb::Position {
            kind: Some(pb::position::Kind::Earliest(true)),
        }),
        max_in_flight,
        ..Default::default()
    }
}

/// Runs a Mosquitto client (`mosquitto_pub`, `mosquitto_sub`) to completion with `stdin` as its input
/// (bounded by its own `-W` timeout or a kill), returning stdout; fails if it does.
pub fn mosquitto(program: &str, args: &[&str], stdin: &str) -> Result<String, BoxError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} (apt-get install mosquitto-clients): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(stdin.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(format!(
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The Python interpreter with the client libraries: `COURIER_PYTHON`, else `./.venv` (made by
/// `scripts/test`).
pub fn python() -> Result<PathBuf, String> {
    if let Ok(python) = std::env::var("COURIER_PYTHON") {
        return Ok(python.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    Err("no Python with the client libraries: run scripts/test (it installs them into .venv) or set COURIER_PYTHON".into())
}

/// Runs `tests/python/<script>` with `args`; fails with its output (and the gateway's log) unless it
/// exits 0 within three minutes. Returns its stdout.
pub fn run_python(script: &str, args: &[&str], gateway: &Gateway) -> Result<String, BoxError> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python()?)
        .arg(root.join("tests/python").join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            return Err(format!("{script} did not finish in 180 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}");
    if !output.status.success() {
        return Err(format!(
            "{script} failed:\n{stdout}\n{}\ngateway log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            gateway.log()
        )
        .into());
    }
    Ok(stdout)
}

/// End-to-end tests that start a broker or gateways run one at a time within their test binary: several
/// at once on two cores slow consumer-group rebalances past the clients' deadlines.
static ONE_BROKER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the one-at-a-time lock for the rest of the test.
pub fn one_broker_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_BROKER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
