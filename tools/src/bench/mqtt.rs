//! `courier bench --mqtt`: Courier's MQTT endpoint (embedded log) against Mosquitto (Debian's
//! `mosquitto`, default config), each started by the benchmark as its own process, with the same MQTT
//! client (rumqttc) and the same workloads:
//!
//! - publish: `streams` clients publish `records` messages of `record_size` bytes at QoS 1, each with up
//!   to `mqtt_inflight` unacknowledged; latency is from the PUBLISH leaving the client to its PUBACK;
//! - QoS 2: the same publishers, with persistent sessions (clean session off), publish
//!   `qos2_messages` at QoS 2; latency is from the PUBLISH to its PUBCOMP (the whole exchange);
//! - fan-out: `subscribers` clients subscribe at QoS 1 and one client publishes `fanout_messages`;
//!   latency is from publish to delivery (the payload carries the send time);
//! - QoS 2 delivery: one subscriber with a persistent session subscribes at QoS 2 and one client
//!   publishes `qos2_messages` at QoS 2; the subscriber's PUBRECs are recorded (Courier's
//!   `mqtt.qos2`, Mosquitto's memory) while more messages flow;
//! - connections (first, on the fresh broker): `connections` clients connect, each subscribes at
//!   QoS 1 to command topics of its own (`devices/<run>/<i>/commands/#`, a wildcard, as devices
//!   do), and they stay; the broker's resident memory (RSS) is read from /proc before and while they
//!   are connected;
//! - new connections: `new_connections` clients, `streams` at a time, connect, get their CONNACK and
//!   disconnect (with `--tls`, each a full TLS handshake);
//! - commands, to those held clients: one client publishes `commands` messages at QoS 1, each to the
//!   next device's `devices/<run>/<i>/commands/set`; latency is from publish to delivery. Every
//!   record is matched against 10,000 wildcard filters: this is what the fan-out's filter index is
//!   for.
//!
//! With `--tls` every client connects over TLS to both brokers, which serve a certificate made for
//! the run: Courier's `[mqtt.tls]`, a Mosquitto TLS listener. Compare a run with and one without to
//! see what TLS costs each broker.
//!
//! With `--auth-rules N` the run is another: what authentication and a policy cost (see [`auth`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::{sync::mpsc, task::JoinSet};

use super::{
    args::BenchArgs,
    measure::{Measurement, histogram},
    process::{
        STORAGE_THREADS, Store, broker_command, cpu_ticks, start_courier, stop_process,
        thread_cpu_ticks, ticks, version_line,
    },
    tls::BenchTls,
};

pub(crate) mod auth;

/// Longest a broker is left to go idle after the held clients went away.
const SETTLE: Duration = Duration::from_secs(60);

/// A delivery workload's subscribers stop counting after this long without a message (a broker that
/// dropped messages sends no more); the time is measured to the last delivery.
const QUIET: Duration = Duration::from_secs(10);

/// Longest any single phase may take before the benchmark gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);

/// A broker process under test.
struct Broker {
    name: &'static str,
    child: Child,
    target: Target,
    /// Courier's HTTP endpoint (`/metrics`); Mosquitto has none.
    http: Option<SocketAddr>,
    /// Courier's data directory or Mosquitto's config file, removed when the broker is dropped.
    _data: Option<tempfile::TempDir>,
}

impl Broker {
    /// `courier serve` on a fresh embedded log in a temporary directory; with `tls`, its MQTT
    /// listener speaks TLS (`[mqtt.tls]` without an address of its own).
    fn courier(fsync: &str, tls: Option<&BenchTls>) -> Result<Self> {
        Self::courier_with("Courier (embedded)", fsync, tls, Vec::new())
    }

    /// [`Broker::courier`] named `name`, with more `COURIER_*` settings in `env`.
    fn courier_with(
        name: &'static str,
        fsync: &str,
        tls: Option<&BenchTls>,
        mut env: Vec<(&str, String)>,
    ) -> Result<Self> {
        if let Some(tls) = tls {
            env.push(("COURIER_MQTT__TLS__CERT", tls.cert.display().to_string()));
            env.push(("COURIER_MQTT__TLS__KEY", tls.key.display().to_string()));
        }
        let (child, line, dir) = start_courier(Store::Embedded { fsync }, &env)?;
        let field = |key: &str| -> Result<SocketAddr> {
            Ok(line
                .split_whitespace()
                .find_map(|field| field.strip_prefix(key))
                .with_context(|| format!("no {key} in the ready line"))?
                .parse()?)
        };
        let address = field(if tls.is_some() { "mqtts=" } else { "mqtt=" })?;
        let http = field("http=")?;
        Ok(Self {
            name,
            child,
            target: Target::new(address, tls),
            http: Some(http),
            _data: Some(dir),
        })
    }

    /// Mosquitto with its default configuration on a free port; with `tls`, one TLS listener with
    /// the same certificate (and anonymous clients allowed, as they are without a config file).
    fn mosquitto(program: &Path, tls: Option<&BenchTls>) -> Result<Self> {
        Self::mosquitto_with("Mosquitto", program, tls, None)
    }

    /// [`Broker::mosquitto`] named `name`; with `password_file` (made by `mosquitto_passwd`), only
    /// the clients it names are let in.
    fn mosquitto_with(
        name: &'static str,
        program: &Path,
        tls: Option<&BenchTls>,
        password_file: Option<&Path>,
    ) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = tempfile::tempdir()?;
        let mut command = broker_command(program);
        if tls.is_none() && password_file.is_none() {
            command.args(["-p", &port.to_string()]);
        } else {
            let mut lines = format!("listener {port} 127.0.0.1\n");
            match password_file {
                Some(file) => lines.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                )),
                None => lines.push_str("allow_anonymous true\n"),
            }
            if let Some(tls) = tls {
                lines.push_str(&format!(
                    "cafile {}\ncertfile {}\nkeyfile {}\n",
                    tls.ca.display(),
                    tls.cert.display(),
                    tls.key.display()
                ));
            }
            let file = config.path().join("mosquitto.conf");
            std::fs::write(&file, lines)?;
            command.arg("-c").arg(file);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {} (apt-get install mosquitto)", program.display())
            })?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {address}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            name,
            child,
            target: Target::new(address, tls),
            http: None,
            _data: Some(config),
        })
    }

    /// CPU time the broker has used (user + system), in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        cpu_ticks(&self.child)
    }

    /// CPU time the broker's storage threads have used, in clock ticks (none for Mosquitto).
    fn storage_ticks(&self) -> Result<u64> {
        thread_cpu_ticks(&self.child, &STORAGE_THREADS)
    }

    /// Waits until the broker is idle (under 5% of a core over half a second), at most `SETTLE`:
    /// what it does after many clients leave is not charged to the next workload.
    async fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE;
        let mut last = self.cpu_ticks()?;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.cpu_ticks()?;
            // Clock ticks are 10 ms on Linux: 5% of 500 ms is 2.5 ticks.
            if now.saturating_sub(last) <= 2 {
                return Ok(());
            }
            last = now;
        }
        Ok(())
    }

    /// Resident memory of the broker process, in MiB.
    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .context("no VmRSS in /proc status")?;
        Ok(kib / 1024.0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop_process(&mut self.child);
    }
}

struct Results {
    new_connections: Measurement,
    publish: Measurement,
    qos2: Measurement,
    fanout: Deliveries,
    qos2_delivery: Deliveries,
    commands: Deliveries,
    idle_rss: f64,
    connected_rss: f64,
    cpu: Vec<Cost>,
}

/// What one workload cost the broker.
struct Cost {
    workload: &'static str,
    /// Messages (or connections) measured.
    count: usize,
    /// CPU time (user + system).
    cpu: Duration,
    /// Of which its storage threads' ([`STORAGE_THREADS`]).
    storage: Duration,
}

/// What a workload counts its cost by: the messages (or connections) it measured.
trait Counted {
    fn count(&self) -> usize;
}

impl Counted for Measurement {
    fn count(&self) -> usize {
        self.records
    }
}

impl Counted for Deliveries {
    fn count(&self) -> usize {
        self.measurement.records
    }
}

/// Runs every workload against both brokers and prints the table and ratios.
pub(crate) async fn run(args: &BenchArgs) -> Result<()> {
    let tls = args.tls.then(BenchTls::new).transpose()?;
    let mut results = Vec::new();
    for broker in [
        Broker::courier(&args.fsync, tls.as_ref())?,
        Broker::mosquitto(&args.mosquitto, tls.as_ref())?,
    ] {
        let measured = measure(&broker, args).await?;
        results.push((broker.name, measured));
    }
    print_results(args, &results);
    Ok(())
}

/// Every workload against one broker, one after the other.
async fn measure(broker: &Broker, args: &BenchArgs) -> Result<Results> {
    // Connections first, on a fresh broker: what they cost, without stored messages in the figure.
    let mut cpu = Vec::new();
    let idle_rss = broker.rss_mib()?;
    let mut devices = connect_many(&broker.target, args.connections).await?;
    let connected_rss = broker.rss_mib()?;
    let commands = costed(
        broker,
        &mut cpu,
        "commands",
        commands(&broker.target, &mut devices, args),
    )
    .await?;
    // Ending their event loops closes the connections. The broker is left to let them go, so the
    // workloads below are not measured against 10,000 disconnects.
    for (_, event_loop) in devices.clients {
        event_loop.abort();
    }
    broker.settle().await?;
    let new = costed(
        broker,
        &mut cpu,
        "new connections",
        new_connections(&broker.target, args),
    )
    .await?;
    broker.settle().await?;
    let qos1 = costed(
        broker,
        &mut cpu,
        "QoS 1 publish",
        publish(&broker.target, args, Workload::Qos1),
    )
    .await?;
    let qos2 = costed(
        broker,
        &mut cpu,
        "QoS 2 publish",
        publish(&broker.target, args, Workload::Qos2Persistent),
    )
    .await?;
    let fanout = costed(
        broker,
        &mut cpu,
        "fan-out",
        deliver(&broker.target, args, Delivery::fanout(args)),
    )
    .await?;
    let qos2_delivery = costed(
        broker,
        &mut cpu,
        "QoS 2 delivery",
        deliver(&broker.target, args, Delivery::qos2_persistent(args)),
    )
    .await?;
    Ok(Results {
        new_connections: new,
        publish: qos1,
        qos2,
        fanout,
        qos2_delivery,
        commands,
        idle_rss,
        connected_rss,
        cpu,
    })
}

/// The tables and the ratios of Courier to Mosquitto.
fn print_results(args: &BenchArgs, results: &[(&str, Results)]) {
    println!(
        "peer: {}",
        version_line(&args.mosquitto, &["-h"], "version")
    );
    println!(
        "transport={} messages={} qos2_messages={} payload={} publishers={} inflight={} subscribers={} fanout_messages={} connections={} commands={} new_connections={} courier fsync={}",
        if args.tls { "TLS" } else { "TCP" },
        args.records,
        args.qos2_messages,
        args.record_size,
        args.streams,
        args.mqtt_inflight,
        args.subscribers,
        args.fanout_messages,
        args.connections,
        args.commands,
        args.new_connections,
        args.fsync
    );
    println!(
        "| broker | QoS 1 publish msg/s | p50 ack ms | p99 ack ms | QoS 2 persistent publish msg/s | p50 PUBCOMP ms | RSS idle MiB | RSS with {} subscribed clients MiB | new connections/s | p99 CONNACK ms |",
        args.connections
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in results {
        println!(
            "| {name} | {:.0} | {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.0} | {} |",
            r.publish.rate(),
            r.publish.percentile_ms(0.5),
            r.publish.percentile_ms(0.99),
            r.qos2.rate(),
            r.qos2.percentile_ms(0.5),
            r.idle_rss,
            r.connected_rss,
            r.new_connections.rate(),
            r.new_connections.percentile_ms(0.99)
        );
    }
    println!();
    println!("| broker | delivery | msg/s | p50 ms | p99 ms | sent, never received |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, r) in results {
        for (workload, deliveries) in [
            (
                format!("fan-out to {} subscribers", args.subscribers),
                &r.fanout,
            ),
            (
                "QoS 2 to a persistent subscriber".to_owned(),
                &r.qos2_delivery,
            ),
            (
                format!("commands to {} clients", args.connections),
                &r.commands,
            ),
        ] {
            let measured = &deliveries.measurement;
            println!(
                "| {name} | {workload} | {:.0} | {} | {} | {} |",
                measured.rate(),
                measured.percentile_ms(0.5),
                measured.percentile_ms(0.99),
                deliveries.missing
            );
        }
    }
    println!();
    println!(
        "| broker | workload | messages | broker CPU s | broker CPU µs per message | of which storage threads µs |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (name, r) in results {
        for cost in &r.cpu {
            let per_message = |time: Duration| time.as_secs_f64() * 1e6 / cost.count.max(1) as f64;
            println!(
                "| {name} | {} | {} | {:.2} | {:.1} | {:.1} |",
                cost.workload,
                cost.count,
                cost.cpu.as_secs_f64(),
                per_message(cost.cpu),
                per_message(cost.storage),
            );
        }
    }
    if let [(_, courier), (_, mosquitto)] = results {
        println!(
            "publish ratio Courier/Mosquitto: {:.2}",
            courier.publish.rate() / mosquitto.publish.rate()
        );
        println!(
            "new connections ratio Courier/Mosquitto: {:.2}",
            courier.new_connections.rate() / mosquitto.new_connections.rate()
        );
        println!(
            "QoS 2 (persistent) ratio Courier/Mosquitto: {:.2}",
            courier.qos2.rate() / mosquitto.qos2.rate()
        );
        println!(
            "fan-out ratio Courier/Mosquitto: {:.2}",
            courier.fanout.measurement.rate() / mosquitto.fanout.measurement.rate()
        );
        println!(
            "QoS 2 delivery (persistent) ratio Courier/Mosquitto: {:.2}",
            courier.qos2_delivery.measurement.rate() / mosquitto.qos2_delivery.measurement.rate()
        );
        println!(
            "commands ratio Courier/Mosquitto: {:.2}",
            courier.commands.measurement.rate() / mosquitto.commands.measurement.rate()
        );
    }
}

/// Where the load clients connect, whether over TLS, and who they say they are.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// User name and password every client sends in its CONNECT; none: anonymous.
    credentials: Option<(String, String)>,
}

impl Target {
    fn new(address: SocketAddr, tls: Option<&BenchTls>) -> Self {
        Self {
            address,
            tls: tls.map(|tls| tls.client.clone()),
            credentials: None,
        }
    }

    /// This target, with every client logging in as `user`.
    fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            credentials: Some((user.to_owned(), password.to_owned())),
            ..self.clone()
        }
    }
}

fn options(id: String, target: &Target, inflight: u16) -> MqttOptions {
    let mut options = MqttOptions::new(id, target.address.ip().to_string(), target.address.port());
    if let Some(tls) = &target.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    if let Some((user, password)) = &target.credentials {
        options.set_credentials(user, password);
    }
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(inflight);
    options.set_max_packet_size(4 << 20, 4 << 20);
    options
}

/// Polls an event loop until its CONNACK.
async fn connected(eventloop: &mut EventLoop) -> Result<()> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// What the publishers of [`publish`] send.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// `records` messages at QoS 1, clean sessions.
    Qos1,
    /// `qos2_messages` messages at QoS 2, persistent sessions.
    Qos2Persistent,
}

/// `streams` publishers, each with `mqtt_inflight` in flight; latency to PUBACK (QoS 1) or PUBCOMP
/// (QoS 2).
async fn publish(target: &Target, args: &BenchArgs, workload: Workload) -> Result<Measurement> {
    Publishers::connect(target, args, workload)
        .await?
        .send()
        .await
}

/// The connected publishers of [`publish`], before they send: the timed part is [`Self::send`].
struct Publishers {
    run: ulid::Ulid,
    qos: QoS,
    payload: Vec<u8>,
    per_client: usize,
    connections: Vec<(usize, AsyncClient, EventLoop)>,
}

impl Publishers {
    /// Connects `streams` publishers for `workload`, one after the other.
    async fn connect(target: &Target, args: &BenchArgs, workload: Workload) -> Result<Self> {
        let run = ulid::Ulid::new();
        let (qos, messages) = match workload {
            Workload::Qos1 => (QoS::AtLeastOnce, args.records),
            Workload::Qos2Persistent => (QoS::ExactlyOnce, args.qos2_messages),
        };
        let mut connections = Vec::new();
        for publisher in 0..args.streams {
            let mut options = options(
                format!("bench-pub-{run}-{publisher}"),
                target,
                args.mqtt_inflight,
            );
            options.set_clean_session(matches!(workload, Workload::Qos1));
            let (client, mut eventloop) =
                AsyncClient::new(options, usize::from(args.mqtt_inflight) * 2);
            connected(&mut eventloop).await?;
            connections.push((publisher, client, eventloop));
        }
        Ok(Self {
            run,
            qos,
            payload: vec![b'x'; args.record_size],
            per_client: messages / args.streams,
            connections,
        })
    }

    /// Each publisher sends its share and waits for every acknowledgement, all at once.
    async fn send(self) -> Result<Measurement> {
        let Self {
            run,
            qos,
            payload,
            per_client,
            connections,
        } = self;
        let streams = connections.len();
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for (publisher, client, mut eventloop) in connections {
            let payload = payload.clone();
            tasks.spawn(async move {
                let sender = tokio::spawn(async move {
                    for i in 0..per_client {
                        let topic = format!("bench/{run}/{publisher}/{}", i % 16);
                        client.publish(topic, qos, false, payload.clone()).await?;
                    }
                    Ok::<_, rumqttc::ClientError>(client)
                });
                let mut latency = histogram()?;
                let mut sent_at = HashMap::new();
                let mut acked = 0;
                while acked < per_client {
                    match eventloop.poll().await? {
                        Event::Outgoing(Outgoing::Publish(pkid)) => {
                            sent_at.insert(pkid, Instant::now());
                        }
                        Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid }))
                        | Event::Incoming(Packet::PubComp(rumqttc::PubComp { pkid })) => {
                            if let Some(sent) = sent_at.remove(&pkid) {
                                latency.record(sent.elapsed().as_micros().max(1) as u64)?;
                            }
                            acked += 1;
                        }
                        _ => {}
                    }
                }
                let client = sender.await??;
                client.disconnect().await?;
                Ok::<_, anyhow::Error>(latency)
            });
        }
        let mut latency = histogram()?;
        while let Some(done) = tokio::time::timeout(PHASE_DEADLINE, tasks.join_next())
            .await
            .context("publish phase timed out")?
        {
            latency.add(done??)?;
        }
        Ok(Measurement {
            records: per_client * streams,
            elapsed: started.elapsed(),
            latency: Some(latency),
            first_record: None,
        })
    }
}

/// The QoS 1 publish workload of [`publish`] against the plain MQTT listener at `address`, for
/// benches that start their brokers themselves (`--tracing`).
pub(super) async fn publish_qos1(address: SocketAddr, args: &BenchArgs) -> Result<Measurement> {
    publish(&Target::new(address, None), args, Workload::Qos1).await
}

/// One broker's run of a workload: what was measured and the broker's CPU time for it.
pub(super) struct Published {
    pub(super) measurement: Measurement,
    pub(super) cpu: Duration,
}

impl Published {
    pub(super) fn cpu_micros_per_message(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.measurement.records.max(1) as f64
    }
}

/// The QoS 1 publish workload alone, on a fresh Courier and then a fresh Mosquitto (`--scaling`).
pub(super) async fn publish_qos1_on_both(args: &BenchArgs) -> Result<[Published; 2]> {
    let mut published = Vec::new();
    for courier in [true, false] {
        // Each started in its turn, so the other is not idle on the same core meanwhile.
        let broker = if courier {
            Broker::courier(&args.fsync, None)?
        } else {
            Broker::mosquitto(&args.mosquitto, None)?
        };
        // The broker's CPU time is taken over the sending only, not the connecting.
        let publishers = Publishers::connect(&broker.target, args, Workload::Qos1).await?;
        let before = broker.cpu_ticks()?;
        let measurement = phase(&broker, "QoS 1 publish", publishers.send()).await?;
        let cpu = ticks(broker.cpu_ticks()?.saturating_sub(before));
        published.push(Published { measurement, cpu });
    }
    published
        .try_into()
        .map_err(|_| anyhow::anyhow!("two brokers, two measurements"))
}

/// [`phase`], booking the broker's CPU time (from /proc) for it in `cpu`.
async fn costed<T: Counted>(
    broker: &Broker,
    cpu: &mut Vec<Cost>,
    name: &'static str,
    workload: impl Future<Output = Result<T>>,
) -> Result<T> {
    let (before, storage_before) = (broker.cpu_ticks()?, broker.storage_ticks()?);
    let result = phase(broker, name, workload).await?;
    cpu.push(Cost {
        workload: name,
        count: result.count(),
        cpu: ticks(broker.cpu_ticks()?.saturating_sub(before)),
        storage: ticks(broker.storage_ticks()?.saturating_sub(storage_before)),
    });
    Ok(result)
}

/// Runs one workload, says on stderr when it is done (a run takes minutes), and names it in an error.
async fn phase<T>(
    broker: &Broker,
    name: &str,
    workload: impl Future<Output = Result<T>>,
) -> Result<T> {
    let result = workload
        .await
        .with_context(|| format!("{}: {name}", broker.name))?;
    eprintln!("{}: {name} done", broker.name);
    Ok(result)
}

/// What subscribers received of what was sent to them.
struct Deliveries {
    measurement: Measurement,
    /// Sent and never received (the broker dropped them).
    missing: usize,
}

impl Deliveries {
    /// From per-message latencies, the time from the start to the last delivery, and what was sent.
    fn new(latency: Histogram<u64>, started: Instant, last: Option<Instant>, sent: usize) -> Self {
        let received = usize::try_from(latency.len()).unwrap_or(usize::MAX);
        Self {
            measurement: Measurement {
                records: received,
                elapsed: last.map_or(Duration::ZERO, |last| last - started),
                latency: Some(latency),
                first_record: None,
            },
            missing: sent.saturating_sub(received),
        }
    }
}

/// Who receives in a delivery workload.
struct Delivery {
    subscribers: usize,
    messages: usize,
    /// Of the publishes and the subscriptions.
    qos: QoS,
    /// Subscribers keep their sessions (clean session off).
    persistent: bool,
}

impl Delivery {
    fn fanout(args: &BenchArgs) -> Self {
        Self {
            subscribers: args.subscribers,
            messages: args.fanout_messages,
            qos: QoS::AtLeastOnce,
            persistent: false,
        }
    }

    fn qos2_persistent(args: &BenchArgs) -> Self {
        Self {
            subscribers: 1,
            messages: args.qos2_messages,
            qos: QoS::ExactlyOnce,
            persistent: true,
        }
    }
}

/// `subscribers` subscribers; one publisher; latency from the send time in each payload.
async fn deliver(target: &Target, args: &BenchArgs, delivery: Delivery) -> Result<Deliveries> {
    let run = ulid::Ulid::new();
    let topic = format!("fanout/{run}");
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(delivery.subscribers.max(1));
    for subscriber in 0..delivery.subscribers {
        let mut options = options(
            format!("bench-sub-{run}-{subscriber}"),
            target,
            args.mqtt_inflight,
        );
        options.set_clean_session(!delivery.persistent);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (topic, ready, expected) = (topic.clone(), ready_tx.clone(), delivery.messages);
        let qos = delivery.qos;
        tasks.spawn(async move {
            client.subscribe(&topic, qos).await?;
            let mut latency = histogram()?;
            let mut last = None;
            while latency.len() < expected as u64 {
                // A broker that dropped messages sends nothing more: a quiet spell ends the count.
                let event = match tokio::time::timeout(QUIET, eventloop.poll()).await {
                    Ok(event) => event?,
                    Err(_) if last.is_some() => break,
                    Err(_) => continue,
                };
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Event::Incoming(Packet::Publish(publish)) => {
                        let micros = latency_micros(&publish.payload).context("short payload")?;
                        latency.record(micros.max(1))?;
                        last = Some(Instant::now());
                    }
                    _ => {}
                }
            }
            client.disconnect().await?;
            Ok::<_, anyhow::Error>((latency, last))
        });
    }
    drop(ready_tx);
    for _ in 0..delivery.subscribers {
        tokio::time::timeout(PHASE_DEADLINE, ready_rx.recv())
            .await
            .context("subscribers did not all subscribe")?;
    }
    let started = Instant::now();
    let messages = delivery.messages;
    let publisher = TimedPublisher::start(
        target,
        format!("bench-fan-pub-{run}"),
        args,
        messages,
        delivery.qos,
        move |_| topic.clone(),
    );
    let mut latency = histogram()?;
    let mut last = None;
    while let Some(done) = tokio::time::timeout(PHASE_DEADLINE, tasks.join_next())
        .await
        .context("timed out")?
    {
        let (received, received_last) = done??;
        latency.add(received)?;
        last = last.max(received_last);
    }
    drop(publisher);
    Ok(Deliveries::new(
        latency,
        started,
        last,
        messages * delivery.subscribers,
    ))
}

/// Held device connections, and the latency (µs) of each command they receive.
struct Devices {
    run: ulid::Ulid,
    clients: Vec<(AsyncClient, tokio::task::JoinHandle<()>)>,
    deliveries: mpsc::UnboundedReceiver<u64>,
}

/// `args.new_connections` connections, `args.streams` at a time, each connecting (over TLS: a full
/// handshake), waiting for its CONNACK and disconnecting: connections per second, latency to
/// CONNACK.
async fn new_connections(target: &Target, args: &BenchArgs) -> Result<Measurement> {
    let run = ulid::Ulid::new();
    let started = Instant::now();
    let mut connectors = JoinSet::new();
    for connector in 0..args.streams {
        let (target, count) = (target.clone(), args.new_connections / args.streams);
        connectors.spawn(async move {
            let mut latency = histogram()?;
            for i in 0..count {
                let began = Instant::now();
                let id = format!("bench-new-{run}-{connector}-{i}");
                let (client, mut eventloop) = AsyncClient::new(options(id, &target, 10), 4);
                connected(&mut eventloop).await?;
                latency.record((began.elapsed().as_micros() as u64).max(1))?;
                client.disconnect().await?;
                while let Ok(event) = eventloop.poll().await {
                    if let Event::Outgoing(Outgoing::Disconnect) = event {
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>(latency)
        });
    }
    let mut latency = histogram()?;
    while let Some(done) = connectors.join_next().await {
        latency.add(done.context("a connector panicked")??)?;
    }
    Ok(Measurement {
        records: args.new_connections / args.streams * args.streams,
        elapsed: started.elapsed(),
        latency: Some(latency),
        first_record: None,
    })
}

/// Opens `count` connections (500 at a time) and returns them, still connected.
async fn connect_many(target: &Target, count: usize) -> Result<Devices> {
    let run = ulid::Ulid::new();
    let (delivered, deliveries) = mpsc::unbounded_channel();
    let mut clients = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut connecting = JoinSet::new();
        for &i in chunk {
            let (delivered, target) = (delivered.clone(), target.clone());
            connecting.spawn(async move {
                let (client, mut eventloop) =
                    AsyncClient::new(options(format!("device-{run}-{i}"), &target, 10), 4);
                connected(&mut eventloop).await?;
                // Each device waits for commands on topics of its own, as devices do.
                client
                    .subscribe(format!("devices/{run}/{i}/commands/#"), QoS::AtLeastOnce)
                    .await?;
                loop {
                    if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
                        break;
                    }
                }
                let keep = tokio::spawn(async move {
                    while let Ok(event) = eventloop.poll().await {
                        if let Event::Incoming(Packet::Publish(publish)) = event
                            && let Some(micros) = latency_micros(&publish.payload)
                        {
                            let _ = delivered.send(micros);
                        }
                    }
                });
                Ok::<_, anyhow::Error>((client, keep))
            });
        }
        while let Some(client) = tokio::time::timeout(PHASE_DEADLINE, connecting.join_next())
            .await
            .context("connecting timed out")?
        {
            clients.push(client??);
        }
    }
    // Let the broker settle with every client connected before it is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Devices {
        run,
        clients,
        deliveries,
    })
}

/// `args.commands` QoS 1 messages from one publisher, each to the next held device.
async fn commands(target: &Target, devices: &mut Devices, args: &BenchArgs) -> Result<Deliveries> {
    let count = devices.clients.len();
    if count == 0 || args.commands == 0 {
        bail!("commands need at least one connection and one command");
    }
    let (run, messages) = (devices.run, args.commands);
    let started = Instant::now();
    let publisher = TimedPublisher::start(
        target,
        format!("bench-commander-{run}"),
        args,
        messages,
        QoS::AtLeastOnce,
        move |k| format!("devices/{run}/{}/commands/set", k % count),
    );
    let mut latency = histogram()?;
    let mut last = None;
    while latency.len() < messages as u64 {
        // The first command may take a while; after that, a quiet spell means the rest were dropped.
        let wait = if last.is_some() {
            QUIET
        } else {
            PHASE_DEADLINE
        };
        let Ok(delivered) = tokio::time::timeout(wait, devices.deliveries.recv()).await else {
            break;
        };
        let micros = delivered.context("every device connection ended")?;
        latency.record(micros.max(1))?;
        last = Some(Instant::now());
    }
    drop(publisher);
    Ok(Deliveries::new(latency, started, last, messages))
}

/// One client publishing payloads of `record_size` bytes that start with their send time, the k-th
/// to `topic(k)`, as fast as its window allows; both its tasks end when it is dropped.
struct TimedPublisher {
    sending: tokio::task::JoinHandle<Result<(), rumqttc::ClientError>>,
    polling: tokio::task::JoinHandle<()>,
}

impl TimedPublisher {
    fn start(
        target: &Target,
        id: String,
        args: &BenchArgs,
        messages: usize,
        qos: QoS,
        topic: impl Fn(usize) -> String + Send + 'static,
    ) -> Self {
        let (client, mut eventloop) = AsyncClient::new(
            options(id, target, args.mqtt_inflight),
            usize::from(args.mqtt_inflight) * 2,
        );
        let size = args.record_size.max(16);
        let sending = tokio::spawn(async move {
            for k in 0..messages {
                let mut payload = vec![b'x'; size];
                payload[..16].copy_from_slice(&now_nanos().to_be_bytes());
                client.publish(topic(k), qos, false, payload).await?;
            }
            Ok(())
        });
        let polling = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        Self { sending, polling }
    }
}

impl Drop for TimedPublisher {
    fn drop(&mut self) {
        self.sending.abort();
        self.polling.abort();
    }
}

/// Microseconds since the send time a benchmark payload starts with.
fn latency_micros(payload: &[u8]) -> Option<u64> {
    let sent = u128::from_be_bytes(payload.get(..16)?.try_into().ok()?);
    u64::try_from(now_nanos().saturating_sub(sent) / 1000).ok()
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}
