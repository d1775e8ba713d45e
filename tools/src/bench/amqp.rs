//! `courier bench --amqp`: Courier's AMQP 1.0 endpoint (embedded log) against RabbitMQ's AMQP 1.0
//! plugin (Debian's `rabbitmq-server` with `rabbitmq_amqp1_0`), each started by the benchmark as its own
//! process, with the same AMQP client (fe2o3-amqp) and the same settings:
//!
//! - send: `streams` connections each send `records / streams` durable messages of `record_size`
//!   bytes, unsettled, keeping up to `amqp_window` unsettled at once; latency is from the transfer to
//!   its `accepted` outcome (Courier: once the log has it on disk; RabbitMQ: once its queue has it);
//! - receive: one receiver reads them all back, accepting each (credit: fe2o3's default of 200).
//!
//! Addresses: Courier `T` and `T/groups/bench`; RabbitMQ `/queue/T` for both (the plugin declares it).

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fe2o3_amqp::{
    Connection, Receiver, Sender, Session,
    link::delivery::Delivery,
    types::{
        messaging::{Body, Header, Message, Outcome},
        primitives::{Binary, Value},
    },
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::task::JoinSet;

use super::{
    args::BenchArgs,
    measure::{Measurement, histogram},
    process::{Store, broker_command, cpu_ticks, start_courier, stop_process, ticks, version_line},
};

/// Longest any single phase may take before the benchmark gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);

/// A broker process under test.
struct Broker {
    name: &'static str,
    child: Child,
    /// Where clients connect (`amqp://...`).
    url: String,
    /// Address for senders and for the receiver of topic/queue `name`.
    addresses: fn(&str) -> (String, String),
    _dir: tempfile::TempDir,
}

impl Broker {
    fn courier(fsync: &str) -> Result<Self> {
        let (child, ready, dir) = start_courier(Store::Embedded { fsync }, &[])?;
        let address: SocketAddr = ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix("amqp="))
            .context("no amqp= in the ready line")?
            .parse()?;
        Ok(Self {
            name: "Courier (embedded)",
            child,
            url: format!("amqp://{address}"),
            addresses: |name| (name.to_owned(), format!("{name}/groups/bench")),
            _dir: dir,
        })
    }

    /// RabbitMQ with the AMQP 1.0 plugin, its node and data in a temporary directory, on free ports.
    fn rabbitmq(server: &Path) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let free_port = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (port, dist_port) = (free_port()?, free_port()?);
        std::fs::write(dir.path().join("enabled_plugins"), "[rabbitmq_amqp1_0].")?;
        let child = broker_command(server)
            .env("HOME", dir.path())
            .env(
                "RABBITMQ_NODENAME",
                format!("courier-bench-{port}@localhost"),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.path().join("enabled_plugins"),
            )
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.path().join("plugins"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (apt-get install rabbitmq-server)",
                    server.display()
                )
            })?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(address).is_err() {
            if Instant::now() > deadline {
                bail!("RabbitMQ did not listen on {address} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            name: "RabbitMQ 3 (AMQP 1.0 plugin)",
            child,
            url: format!("amqp://guest:guest@{address}"),
            addresses: |name| (format!("/queue/{name}"), format!("/queue/{name}")),
            _dir: dir,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop_process(&mut self.child);
    }
}

/// Runs both workloads against both brokers and prints the table and ratios.
pub(crate) async fn run(args: &BenchArgs) -> Result<()> {
    // One broker at a time: each is stopped (dropped) before the next starts, so neither competes
    // with the other for the two cores.
    let results = [
        measure(Broker::courier(&args.fsync)?, args).await?,
        measure(Broker::rabbitmq(&args.rabbitmq)?, args).await?,
    ];
    println!(
        "peer: RabbitMQ {}",
        version_line(
            "dpkg-query",
            &["--show", "--showformat=${Version}\n", "rabbitmq-server"],
            "."
        )
    );
    println!(
        "messages={} payload={} senders={} window={} durable=true courier fsync={}",
        args.records, args.record_size, args.streams, args.amqp_window, args.fsync
    );
    println!(
        "| broker | send msg/s | p50 accepted ms | p99 accepted ms | send CPU µs/msg | receive msg/s | receive CPU µs/msg |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for side in &results {
        let per_message =
            |cpu: Duration, count: usize| cpu.as_secs_f64() * 1e6 / count.max(1) as f64;
        println!(
            "| {} | {:.0} | {} | {} | {:.1} | {:.0} | {:.1} |",
            side.name,
            side.sent.rate(),
            side.sent.percentile_ms(0.5),
            side.sent.percentile_ms(0.99),
            per_message(side.send_cpu, side.sent.records),
            side.received.rate(),
            per_message(side.receive_cpu, side.received.records),
        );
    }
    let [courier, rabbit] = &results;
    let (courier_sent, courier_received) = (&courier.sent, &courier.received);
    let (rabbit_sent, rabbit_received) = (&rabbit.sent, &rabbit.received);
    println!(
        "send ratio Courier/RabbitMQ: {:.2}",
        courier_sent.rate() / rabbit_sent.rate()
    );
    println!(
        "receive ratio Courier/RabbitMQ: {:.2}",
        courier_received.rate() / rabbit_received.rate()
    );
    Ok(())
}

/// One broker's figures, with its CPU time (user + system, from /proc) in each workload.
struct Side {
    name: &'static str,
    sent: Measurement,
    send_cpu: Duration,
    received: Measurement,
    receive_cpu: Duration,
}

/// Sends and then receives through `broker` on a fresh topic (queue).
async fn measure(broker: Broker, args: &BenchArgs) -> Result<Side> {
    let name = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    let (send_address, receive_address) = (broker.addresses)(&name);
    let before = cpu_ticks(&broker.child)?;
    let sent = send(&broker.url, &send_address, args).await?;
    let between = cpu_ticks(&broker.child)?;
    let received = receive(&broker.url, &receive_address, args.records).await?;
    let after = cpu_ticks(&broker.child)?;
    Ok(Side {
        name: broker.name,
        sent,
        send_cpu: ticks(between.saturating_sub(before)),
        received,
        receive_cpu: ticks(after.saturating_sub(between)),
    })
}

async fn send(url: &str, address: &str, args: &BenchArgs) -> Result<Measurement> {
    let per_sender = args.records / args.streams;
    let payload = vec![b'x'; args.record_size];
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for index in 0..args.streams {
        let (url, address, payload) = (url.to_owned(), address.to_owned(), payload.clone());
        let window = args.amqp_window;
        senders.spawn(async move {
            let mut connection = Connection::open(format!("bench-sender-{index}"), url.as_str())
                .await
                .context("opening an AMQP connection")?;
            let mut session = Session::begin(&mut connection)
                .await
                .context("beginning a session")?;
            let mut sender = Sender::attach(&mut session, format!("bench-sender-{index}"), address)
                .await
                .context("attaching a sender")?;
            let mut latency = histogram()?;
            let mut unsettled = FuturesUnordered::new();
            for _ in 0..per_sender {
                if unsettled.len() >= window {
                    settle(unsettled.next().await, &mut latency)?;
                }
                let message = Message::builder()
                    .header(Header::builder().durable(true).build())
                    .data(Binary::from(payload.clone()))
                    .build();
                let sent_at = Instant::now();
                let outcome = sender.send_batchable(message).await.context("sending")?;
                unsettled.push(async move { (sent_at, outcome.await) });
            }
            while let Some(done) = unsettled.next().await {
                settle(Some(done), &mut latency)?;
            }
            // Every outcome is in; how a broker answers the closing handshake is not measured
            // (RabbitMQ 3's plugin answers a closing detach in a way fe2o3 calls illegal).
            let _ = sender.close().await;
            let _ = session.close().await;
            let _ = connection.close().await;
            Ok::<_, anyhow::Error>(latency)
        });
    }
    let mut latency = histogram()?;
    while let Some(done) = tokio::time::timeout(PHASE_DEADLINE, senders.join_next())
        .await
        .context("the send phase timed out")?
    {
        latency.add(done??)?;
    }
    Ok(Measurement {
        records: per_sender * args.streams,
        elapsed: started.elapsed(),
        latency: Some(latency),
        first_record: None,
    })
}

/// Records one outcome's latency; anything but `accepted` fails the run.
fn settle(
    done: Option<(Instant, Result<Outcome, fe2o3_amqp::link::SendError>)>,
    latency: &mut hdrhistogram::Histogram<u64>,
) -> Result<()> {
    let Some((sent_at, outcome)) = done else {
        return Ok(());
    };
    match outcome.context("waiting for an outcome")? {
        Outcome::Accepted(_) => {
            latency.record(sent_at.elapsed().as_micros().max(1) as u64)?;
            Ok(())
        }
        other => bail!("a message was not accepted: {other:?}"),
    }
}

async fn receive(url: &str, address: &str, records: usize) -> Result<Measurement> {
    let mut connection = Connection::open("bench-receiver", url)
        .await
        .context("opening an AMQP connection")?;
    let mut session = Session::begin(&mut connection)
        .await
        .context("beginning a session")?;
    let mut receiver = Receiver::attach(&mut session, "bench-receiver", address)
        .await
        .context("attaching the receiver")?;
    let started = Instant::now();
    let deadline = started + PHASE_DEADLINE;
    for received in 0..records {
        let delivery: Delivery<Body<Value>> =
            tokio::time::timeout_at(deadline.into(), receiver.recv())
                .await
                .with_context(|| format!("received {received} of {records} in time"))??;
        receiver.accept(&delivery).await.context("accepting")?;
    }
    let elapsed = started.elapsed();
    let _ = receiver.close().await;
    let _ = session.close().await;
    let _ = connection.close().await;
    Ok(Measurement {
        records,
        elapsed,
        latency: None,
        first_record: None,
    })
}
