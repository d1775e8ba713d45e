//! `courier bench`: the project's load tool. One run measures the same workload two ways and prints
//! them side by side with their ratio:
//!
//! - produce: `direct` writes batches without the gateway (the ceiling); `grpc` sends the same batches
//!   over `ProduceStream` to a gateway serving on loopback;
//! - subscribe: a consumer group reads everything back, acknowledging each batch, directly and over
//!   `Subscribe`.
//!
//! Against the embedded log (default), `direct` is the store in-process, each side on a fresh store in
//! a temporary directory. With `--kafka BOOTSTRAP`, both sides use the same broker, each its own topic:
//! `direct` is a plain rdkafka producer and consumer with the gateway's settings (`kafka.rs`), `grpc` a
//! gateway in front of that broker. With `--regions B` as well, both sides are gateways over `A`: one
//! over the plain Kafka backend, one over the region router with `B` as its standby region
//! (`regions.rs`), measuring what the router costs while nothing fails.
//!
//! Both sides use the same concurrency: `streams` producers, each keeping `pipeline` requests of
//! `batch` records in flight. Latency is per request: from submit to durable ack.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use courier_gateway::{
    config::{EmbeddedConfig, FsyncPolicy, GroupsConfig, TopicsConfig},
    log::{
        Embedded, Log, NewRecord, Position, SubscribeOptions, SubscriptionEvent, TopicSelector,
        TopicSpec, layers,
    },
};
use courier_grpc::{
    GrpcServer,
    proto::v1::{
        self as pb, admin_client::AdminClient, streams_client::StreamsClient,
        subscribe_request::Kind as RequestKind, subscribe_response::Kind as ResponseKind,
    },
};
use hdrhistogram::Histogram;

mod amqp;
mod kafka;
mod mqtt;
mod regions;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// `courier bench` options.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Records to produce (and read back) per side.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) records: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) record_size: usize,
    /// Concurrent producer streams.
    #[arg(long, default_value_t = 4)]
    pub(crate) streams: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Requests in flight per stream.
    #[arg(long, default_value_t = 8)]
    pub(crate) pipeline: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub(crate) partitions: u32,
    /// fsync policy of the embedded logs: always or never.
    #[arg(long, default_value = "always", value_parser = ["always", "never"])]
    pub(crate) fsync: String,
    /// Measure against this Kafka cluster (`host:port,...`) instead of the embedded log.
    #[arg(long)]
    pub(crate) kafka: Option<String>,
    /// With `--kafka`: compare a gateway over the plain Kafka backend with one over the region router,
    /// whose standby region is the Kafka cluster here (see tools/src/bench/regions.rs).
    #[arg(long, requires = "kafka")]
    pub(crate) regions: Option<String>,
    /// A librdkafka producer property (`KEY=VALUE`, repeatable), given to both sides alike.
    #[arg(long = "producer-property", value_parser = parse_property)]
    pub(crate) producer_properties: Vec<(String, String)>,
    /// MQTT mode: Courier's MQTT endpoint (embedded) against Mosquitto; `records` messages of
    /// `record_size` bytes from `streams` publishers (see tools/src/bench/mqtt.rs).
    #[arg(long)]
    pub(crate) mqtt: bool,
    /// MQTT mode: QoS 1 messages a publisher keeps unacknowledged.
    #[arg(long, default_value_t = 100)]
    pub(crate) mqtt_inflight: u16,
    /// MQTT mode: messages of the QoS 2 workload (persistent sessions), from `streams` publishers.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) qos2_messages: usize,
    /// MQTT mode: subscribers of the fan-out workload.
    #[arg(long, default_value_t = 100)]
    pub(crate) subscribers: usize,
    /// MQTT mode: messages published to the fan-out subscribers.
    #[arg(long, default_value_t = 1000)]
    pub(crate) fanout_messages: usize,
    /// MQTT mode: clients held connected, each subscribed to command topics of its own, while memory
    /// is measured and commands are sent to them.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// MQTT mode: commands sent to the held clients, one client after another.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) commands: usize,
    /// MQTT mode: the Mosquitto broker to compare with.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub(crate) mosquitto: std::path::PathBuf,
    /// AMQP mode: Courier's AMQP 1.0 endpoint (embedded) against RabbitMQ's AMQP 1.0 plugin; `records`
    /// messages of `record_size` bytes from `streams` senders, read back by one receiver (see
    /// tools/src/bench/amqp.rs).
    #[arg(long)]
    pub(crate) amqp: bool,
    /// AMQP mode: unsettled messages a sender keeps in flight.
    #[arg(long, default_value_t = 100)]
    pub(crate) amqp_window: usize,
    /// AMQP mode: the RabbitMQ server to compare with (run as the current user, not through Debian's
    /// wrapper, so it stops with the benchmark).
    #[arg(long, default_value = "/usr/lib/rabbitmq/bin/rabbitmq-server")]
    pub(crate) rabbitmq: std::path::PathBuf,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// One measured side.
pub(crate) struct Measurement {
    pub(crate) records: usize,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Option<Histogram<u64>>,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, quantile: f64) -> String {
        self.latency.as_ref().map_or_else(
            || "-".to_owned(),
            |h| format!("{:.2}", h.value_at_quantile(quantile) as f64 / 1000.0),
        )
    }
}

/// Runs the benchmark and prints a markdown table.
pub async fn run(args: BenchArgs) -> Result<()> {
    if args.records == 0 || args.streams == 0 || args.batch == 0 || args.pipeline == 0 {
        bail!("records, streams, batch and pipeline must be at least 1");
    }
    if args.mqtt {
        return mqtt::run(&args).await;
    }
    if args.amqp {
        return amqp::run(&args).await;
    }
    if let (Some(primary), Some(standby)) = (&args.kafka, &args.regions) {
        return regions::run(&args, primary, standby).await;
    }
    let fsync = if args.fsync == "never" {
        FsyncPolicy::Never
    } else {
        FsyncPolicy::Always
    };
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let (direct_produce, direct_subscribe, grpc_produce, grpc_subscribe) = match &args.kafka {
        None => {
            // Direct: in-process into the embedded store.
            let topic = "bench";
            let direct_dir = tempfile::tempdir().context("creating a temporary directory")?;
            let direct = open_log(direct_dir.path(), fsync).await?;
            direct
                .create_topic(TopicSpec::named(topic).partitions(args.partitions))
                .await?;
            let direct_produce = produce_direct(&direct, topic, &args, &value).await?;
            let direct_subscribe = subscribe_direct(&direct, topic, args.records).await?;
            direct.close().await?;
            // gRPC: the same through a gateway on loopback, on its own fresh store.
            let grpc_dir = tempfile::tempdir().context("creating a temporary directory")?;
            let (grpc_produce, grpc_subscribe) = through_gateway(
                open_log(grpc_dir.path(), fsync).await?,
                topic,
                &args,
                &value,
            )
            .await?;
            (
                direct_produce,
                direct_subscribe,
                grpc_produce,
                grpc_subscribe,
            )
        }
        Some(bootstrap) => {
            let run = ulid::Ulid::new().to_string().to_lowercase();
            let config = kafka::config(bootstrap, &args.producer_properties);
            let log = kafka::backend(&config, "bench").await?;
            let direct_topic = format!("bench-direct-{run}");
            log.create_topic(TopicSpec::named(&direct_topic).partitions(args.partitions))
                .await?;
            let direct_produce = kafka::produce(&config, &direct_topic, &args, &value).await?;
            let direct_subscribe = kafka::subscribe(&config, &direct_topic, args.records).await?;
            let (grpc_produce, grpc_subscribe) =
                through_gateway(log, &format!("bench-grpc-{run}"), &args, &value).await?;
            (
                direct_produce,
                direct_subscribe,
                grpc_produce,
                grpc_subscribe,
            )
        }
    };

    println!(
        "records={} record_size={} streams={} batch={} pipeline={} partitions={} backend={}",
        args.records,
        args.record_size,
        args.streams,
        args.batch,
        args.pipeline,
        args.partitions,
        args.kafka.as_ref().map_or_else(
            || format!("embedded fsync={}", args.fsync),
            |b| format!("kafka {b}")
        )
    );
    let direct_side = if args.kafka.is_some() {
        "direct (rdkafka)"
    } else {
        "direct (in-process)"
    };
    println!("| workload | side | records/s | MiB/s | p50 ack ms | p99 ack ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (workload, side, m) in [
        ("produce", direct_side, &direct_produce),
        ("produce", "gRPC ProduceStream", &grpc_produce),
        ("subscribe", direct_side, &direct_subscribe),
        ("subscribe", "gRPC Subscribe", &grpc_subscribe),
    ] {
        println!(
            "| {workload} | {side} | {:.0} | {:.1} | {} | {} |",
            m.rate(),
            m.rate() * args.record_size as f64 / (1 << 20) as f64,
            m.percentile_ms(0.5),
            m.percentile_ms(0.99)
        );
    }
    println!(
        "produce ratio gRPC/direct: {:.2}",
        grpc_produce.rate() / direct_produce.rate()
    );
    println!(
        "subscribe ratio gRPC/direct: {:.2}",
        grpc_subscribe.rate() / direct_subscribe.rate()
    );
    if let (Some(direct), Some(grpc)) = (&direct_produce.latency, &grpc_produce.latency) {
        let added = |q: f64| {
            (grpc.value_at_quantile(q) as f64 - direct.value_at_quantile(q) as f64) / 1000.0
        };
        println!(
            "ack latency added by the gateway: p50 {:.2} ms, p99 {:.2} ms",
            added(0.5),
            added(0.99)
        );
    }
    Ok(())
}

/// Serves `log` over gRPC on loopback, produces and subscribes through it, and closes it.
async fn through_gateway(
    log: Arc<dyn Log>,
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
) -> Result<(Measurement, Measurement)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let address = listener.local_addr()?;
    let drain = CancellationToken::new();
    let server = GrpcServer {
        log: log.clone(),
        regions: None,
        config: courier_grpc::Config::default(),
        groups: GroupsConfig::default(),
    };
    let serving = tokio::spawn(server.serve(listener, drain.clone()));
    let channel = courier_grpc::client_endpoint(format!("http://{address}"))?
        .connect()
        .await
        .context("connecting to the gateway")?;
    AdminClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            partitions: args.partitions,
            ..Default::default()
        })
        .await?;
    let produced = produce_grpc(&channel, topic, args, value).await?;
    let subscribed = subscribe_grpc(&channel, topic, args.records).await?;
    drain.cancel();
    serving.await.context("the gateway task panicked")??;
    log.close().await?;
    Ok((produced, subscribed))
}

async fn open_log(dir: &std::path::Path, fsync: FsyncPolicy) -> Result<Arc<dyn Log>> {
    let config = EmbeddedConfig {
        fsync,
        ..EmbeddedConfig::in_dir(dir)
    };
    let topics = TopicsConfig::default();
    let embedded =
        Embedded::open(&config, topics.clone(), GroupsConfig::default(), "bench").await?;
    Ok(Arc::new(layers::stack(embedded, &topics)))
}

/// `courier serve` (this binary, or the one `COURIER_BENCH_SERVER` names, to tell a change in the
/// gateway from one in the load tool) on a fresh embedded log in a temporary directory, every listener
/// on a free loopback port: the process, its ready line (naming the addresses) and the directory. Its
/// log level is `warn`, or `COURIER_BENCH_LOG` (a `RUST_LOG` filter) when set, to see what it did.
pub(crate) fn start_courier(fsync: &str) -> Result<(Child, String, tempfile::TempDir)> {
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
pub(crate) fn stop_process(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a histogram")
}

/// Splits `records` into per-stream batch counts.
pub(crate) fn batches_per_stream(args: &BenchArgs) -> Vec<Vec<usize>> {
    let mut plan = vec![Vec::new(); args.streams];
    let mut left = args.records;
    let mut stream = 0;
    while left > 0 {
        let size = left.min(args.batch);
        plan[stream % args.streams].push(size);
        left -= size;
        stream += 1;
    }
    plan
}

async fn produce_direct(
    log: &Arc<dyn Log>,
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
) -> Result<Measurement> {
    measure_producers(args, |batches| {
        let (log, topic, value, pipeline) =
            (log.clone(), topic.to_owned(), value.clone(), args.pipeline);
        async move {
            pipelined(batches, pipeline, |size| {
                let records = (0..size)
                    .map(|_| NewRecord::with_value(value.clone()))
                    .collect();
                let (log, topic) = (log.clone(), topic.clone());
                async move {
                    let receipt = log.submit(&topic, records).await?;
                    anyhow::Ok(async move { receipt.await.map(drop).map_err(Into::into) })
                }
            })
            .await
        }
    })
    .await
}

async fn produce_grpc(
    channel: &Channel,
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
) -> Result<Measurement> {
    measure_producers(args, |batches| {
        let (mut client, topic, value) = (
            StreamsClient::new(channel.clone()),
            topic.to_owned(),
            value.clone(),
        );
        let window = Arc::new(Semaphore::new(args.pipeline));
        async move {
            let (requests, outbound) = mpsc::channel(batches.len().max(1));
            let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
            let mut responses = client
                .produce_stream(ReceiverStream::new(outbound))
                .await?
                .into_inner();
            let sender = {
                let (window, sent_at) = (window.clone(), sent_at.clone());
                tokio::spawn(async move {
                    for (request_id, size) in batches.into_iter().enumerate() {
                        window.acquire().await?.forget();
                        let records = (0..size)
                            .map(|_| pb::ProduceRecord {
                                value: Some(value.clone()),
                                ..Default::default()
                            })
                            .collect();
                        sent_at
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .insert(request_id as u64, Instant::now());
                        requests
                            .send(pb::ProduceRequest {
                                topic: topic.clone(),
                                records,
                                request_id: request_id as u64,
                            })
                            .await?;
                    }
                    anyhow::Ok(())
                })
            };
            let mut latency = histogram()?;
            while let Some(response) = responses.next().await {
                let response = response?;
                if let Some(error) = response.error {
                    bail!("produce failed: {}", error.message);
                }
                let sent = sent_at
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .remove(&response.request_id);
                if let Some(sent) = sent {
                    latency.record(sent.elapsed().as_micros() as u64)?;
                }
                window.add_permits(1);
            }
            sender.await??;
            anyhow::Ok(latency)
        }
    })
    .await
}

async fn subscribe_direct(log: &Arc<dyn Log>, topic: &str, records: usize) -> Result<Measurement> {
    let started = Instant::now();
    let mut subscription = log
        .subscribe(SubscribeOptions {
            topics: TopicSelector::Names(vec![topic.to_owned()]),
            group: Some("bench-direct".into()),
            start: Position::Earliest,
            max_in_flight: 1000,
            client: "bench".into(),
            protocol: "bench",
        })
        .await?;
    let mut seen = 0;
    while seen < records {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next_event()).await {
            Ok(Some(SubscriptionEvent::Records(batch))) => {
                for record in &batch {
                    subscription
                        .control
                        .ack(&record.topic_partition(), record.offset);
                }
                seen += batch.len();
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                bail!("direct subscription stopped after {seen} of {records} records")
            }
        }
    }
    let elapsed = started.elapsed();
    subscription.close().await?;
    Ok(Measurement {
        records,
        elapsed,
        latency: None,
    })
}

async fn subscribe_grpc(channel: &Channel, topic: &str, records: usize) -> Result<Measurement> {
    let started = Instant::now();
    let mut client = StreamsClient::new(channel.clone());
    let start = pb::SubscribeStart {
        topics: vec![topic.to_owned()],
        group: "bench-grpc".into(),
        start: Some(pb::Position {
            kind: Some(pb::position::Kind::Earliest(true)),
        }),
        max_in_flight: 1000,
        ..Default::default()
    };
    let (requests, mut responses) = crate::client::open_subscription(&mut client, start).await?;
    let mut seen = 0;
    while seen < records {
        let next = tokio::time::timeout(Duration::from_secs(30), responses.next()).await;
        let Ok(Some(response)) = next else {
            bail!("gRPC subscription stopped after {seen} of {records} records")
        };
        if let Some(ResponseKind::Records(batch)) = response?.kind {
            seen += batch.records.len();
            let acks = batch
                .records
                .into_iter()
                .map(|r| pb::PartitionOffset {
                    topic: r.topic,
                    partition: r.partition,
                    offset: r.offset,
                })
                .collect();
            requests
                .send(pb::SubscribeRequest {
                    kind: Some(RequestKind::Ack(pb::Ack { records: acks })),
                })
                .await?;
        }
    }
    Ok(Measurement {
        records,
        elapsed: started.elapsed(),
        latency: None,
    })
}

/// Runs one producer per stream (each given its share of [`batches_per_stream`]) at once; the
/// measurement spans them all and merges their ack latencies.
pub(crate) async fn measure_producers<Fut>(
    args: &BenchArgs,
    mut producer: impl FnMut(Vec<usize>) -> Fut,
) -> Result<Measurement>
where
    Fut: Future<Output = Result<Histogram<u64>>> + Send + 'static,
{
    let started = Instant::now();
    let mut streams = JoinSet::new();
    for batches in batches_per_stream(args) {
        streams.spawn(producer(batches));
    }
    let mut latency = histogram()?;
    while let Some(done) = streams.join_next().await {
        latency.add(done.context("a benchmark stream panicked")??)?;
    }
    Ok(Measurement {
        records: args.records,
        elapsed: started.elapsed(),
        latency: Some(latency),
    })
}

/// One producer stream that keeps `pipeline` batches in flight: `send(size)` queues a batch and
/// returns what completes when it is acknowledged. Latency runs from `send` to that completion.
pub(crate) async fn pipelined<Sent, Done>(
    batches: Vec<usize>,
    pipeline: usize,
    mut send: impl FnMut(usize) -> Sent,
) -> Result<Histogram<u64>>
where
    Sent: Future<Output = Result<Done>>,
    Done: Future<Output = Result<()>> + Send + 'static,
{
    let mut latency = histogram()?;
    let mut pending = JoinSet::new();
    for size in batches {
        if pending.len() >= pipeline
            && let Some(done) = pending.join_next().await
        {
            latency.record(done??)?;
        }
        let sent = Instant::now();
        let done = send(size).await?;
        pending.spawn(async move { done.await.map(|()| sent.elapsed().as_micros() as u64) });
    }
    while let Some(done) = pending.join_next().await {
        latency.record(done??)?;
    }
    Ok(latency)
}
