//! The default bench: the same workload written and read directly (the embedded store in-process, or
//! rdkafka with `--kafka`) and through a gateway over gRPC on loopback.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use courier_gateway::{
    auth::{Access, Protected},
    config::{EmbeddedConfig, FsyncPolicy, GroupsConfig, TopicsConfig},
    log::{
        Embedded, Log, NewRecord, Position, SubscribeOptions, SubscriptionEvent, TopicSelector,
        TopicSpec, layers,
    },
    tls::TlsConfig,
};
use courier_grpc::{
    GrpcListeners, GrpcServer,
    proto::v1::{
        self as pb, admin_client::AdminClient, streams_client::StreamsClient,
        subscribe_request::Kind as RequestKind, subscribe_response::Kind as ResponseKind,
    },
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::client::{Api, Credentials};

use super::{
    args::BenchArgs,
    kafka,
    measure::{FirstRecords, Measurement, histogram, measure_producers, pipelined},
    process::{self, Store},
    tls::BenchTls,
};

/// The four measured sides: produce direct, subscribe direct, produce and subscribe over gRPC.
pub(super) struct Sides {
    pub(super) direct_produce: Measurement,
    pub(super) direct_subscribe: Measurement,
    pub(super) grpc_produce: Measurement,
    pub(super) grpc_subscribe: Measurement,
    /// The gateway process's CPU time producing and subscribing.
    pub(super) gateway_cpu: (Duration, Duration),
}

/// Producer streams the bench's client puts on one HTTP/2 connection to `courier serve`, well under
/// the gateway's `grpc.max_concurrent_streams` (1,024): a client with thousands of streams spreads
/// them over connections, or the ones past that limit would wait for a slot.
const STREAMS_PER_CONNECTION: usize = 256;

/// Direct against gRPC: produces and subscribes both ways, and prints the table.
pub(super) async fn run(args: &BenchArgs) -> Result<()> {
    run_with(args, None).await
}

/// Makes a topic on the Kafka cluster by other means than the gateway's CreateTopics (the mock
/// cluster answers none).
pub(super) type MakeTopic<'a> = &'a dyn Fn(&str, u32) -> Result<()>;

/// [`run`], the Kafka topics made by `make_topic` when given.
pub(super) async fn run_with(args: &BenchArgs, make_topic: Option<MakeTopic<'_>>) -> Result<()> {
    let sides = measure(args, make_topic).await?;
    print_sides(args, &sides);
    Ok(())
}

/// Runs the workloads, direct and over gRPC, each on a fresh store or topic.
pub(super) async fn measure(args: &BenchArgs, make_topic: Option<MakeTopic<'_>>) -> Result<Sides> {
    let fsync = if args.fsync == "never" {
        FsyncPolicy::Never
    } else {
        FsyncPolicy::Always
    };
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let (direct_produce, direct_subscribe, grpc_produce, grpc_subscribe, cpu) = match &args.kafka {
        None => {
            // Direct: in-process into the embedded store, on the brokers' core.
            let topic = "bench";
            let (direct_produce, direct_subscribe) = {
                let (args, value) = (args.clone(), value.clone());
                process::on_broker_core(move || async move {
                    let direct_dir =
                        tempfile::tempdir().context("creating a temporary directory")?;
                    let direct = open_log(direct_dir.path(), fsync).await?;
                    direct
                        .create_topic(TopicSpec::named(topic).partitions(args.partitions))
                        .await?;
                    let produced = produce_direct(&direct, topic, &args, &value).await?;
                    let subscribed = subscribe_direct(&direct, topic, args.records).await?;
                    direct.close().await?;
                    Ok((produced, subscribed))
                })
                .await?
            };
            // gRPC: the same through `courier serve` on its own fresh store, alone on its core.
            let (grpc_produce, grpc_subscribe, cpu) = through_process(
                topic,
                args,
                &value,
                Store::Embedded { fsync: &args.fsync },
                true,
            )
            .await?;
            (
                direct_produce,
                direct_subscribe,
                grpc_produce,
                grpc_subscribe,
                cpu,
            )
        }
        Some(bootstrap) => {
            let run = ulid::Ulid::new().to_string().to_lowercase();
            let config = kafka::config(bootstrap, args);
            let direct_topic = format!("bench-direct-{run}");
            let grpc_topic = format!("bench-grpc-{run}");
            if let Some(make) = make_topic {
                make(&direct_topic, args.partitions)?;
                make(&grpc_topic, args.partitions)?;
            } else {
                let admin = kafka::backend(&config, "bench-admin").await?;
                admin
                    .create_topic(TopicSpec::named(&direct_topic).partitions(args.partitions))
                    .await?;
                admin.close().await?;
            }
            let direct_produce = kafka::produce(&config, &direct_topic, args, &value).await?;
            let direct_subscribe = kafka::subscribe(&config, &direct_topic, args.records).await?;
            // The gateway starts now: idle through the direct side, its clients would see their
            // requests time out on the mock cluster's one broker thread, busy serving that side.
            // `courier serve` on the same cluster, alone on its core as in the embedded mode.
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let file = dir.path().join("courier.toml");
            std::fs::write(&file, kafka::serve_config(&config)?)
                .context("writing the gateway's config")?;
            let (grpc_produce, grpc_subscribe, cpu) = through_process(
                &grpc_topic,
                args,
                &value,
                Store::Config(&file),
                make_topic.is_none(),
            )
            .await?;
            (
                direct_produce,
                direct_subscribe,
                grpc_produce,
                grpc_subscribe,
                cpu,
            )
        }
    };
    Ok(Sides {
        direct_produce,
        direct_subscribe,
        grpc_produce,
        grpc_subscribe,
        gateway_cpu: cpu,
    })
}

/// The table, the ratios, and the ack latency the gateway adds.
fn print_sides(args: &BenchArgs, sides: &Sides) {
    let Sides {
        direct_produce,
        direct_subscribe,
        grpc_produce,
        grpc_subscribe,
        gateway_cpu,
    } = sides;
    println!(
        "records={} record_size={} streams={} batch={} pipeline={} partitions={} grpc={} backend={}",
        args.records,
        args.record_size,
        args.streams,
        args.batch,
        args.pipeline,
        args.partitions,
        if args.tls { "TLS" } else { "h2c" },
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
        ("produce", direct_side, direct_produce),
        ("produce", "gRPC ProduceStream", grpc_produce),
        ("subscribe", direct_side, direct_subscribe),
        ("subscribe", "gRPC Subscribe", grpc_subscribe),
    ] {
        println!(
            "| {workload} | {side} | {:.0} | {:.1} | {} | {} |",
            m.rate(),
            m.rate() * args.record_size as f64 / (1 << 20) as f64,
            m.percentile_ms(0.5),
            m.percentile_ms(0.99)
        );
    }
    let (produce, subscribe) = gateway_cpu;
    let per_record = |cpu: &Duration| cpu.as_secs_f64() * 1e6 / args.records.max(1) as f64;
    println!(
        "gateway process CPU: produce {:.2} s ({:.1} µs/record), subscribe {:.2} s ({:.1} µs/record)",
        produce.as_secs_f64(),
        per_record(produce),
        subscribe.as_secs_f64(),
        per_record(subscribe)
    );
    println!(
        "produce ratio gRPC/direct: {:.2}",
        grpc_produce.rate() / direct_produce.rate()
    );
    println!(
        "subscribe ratio gRPC/direct: {:.2}",
        grpc_subscribe.rate() / direct_subscribe.rate()
    );
    if let (Some(direct), Some(grpc)) = (
        direct_subscribe.rate_from_first(),
        grpc_subscribe.rate_from_first(),
    ) {
        let first = |m: &Measurement| {
            m.first_record
                .map_or(0.0, |first| first.after.as_secs_f64())
        };
        println!(
            "subscribe from the first record: direct {direct:.0} records/s (first after {:.2} s), \
             gRPC {grpc:.0} (first after {:.2} s), ratio {:.2}",
            first(direct_subscribe),
            first(grpc_subscribe),
            grpc / direct
        );
    }
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
}

/// Serves `log` over gRPC on loopback, produces and subscribes through it, and closes it.
pub(super) async fn through_gateway(
    log: Arc<dyn Log>,
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
) -> Result<(Measurement, Measurement)> {
    let open = Access::loopback("grpc", Protected::new([]));
    through_gateway_as(log, topic, args, value, open, Credentials::default()).await
}

/// [`through_gateway`], the gateway deciding calls with `access` and the client presenting
/// `credentials`.
pub(super) async fn through_gateway_as(
    log: Arc<dyn Log>,
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
    access: Access,
    credentials: Credentials,
) -> Result<(Measurement, Measurement)> {
    // With --tls, the gRPC port speaks TLS (a certificate made for the run) and so does the client.
    let tls = args.tls.then(BenchTls::new).transpose()?;
    let config = courier_grpc::Config {
        listen: "127.0.0.1:0".parse()?,
        tls: tls.as_ref().map(|tls| TlsConfig::new(&tls.cert, &tls.key)),
        // The load is one caller, however many streams it opens.
        max_unary_calls_per_caller: Some(0),
        max_streaming_calls_per_caller: Some(0),
        ..courier_grpc::Config::default()
    };
    let listeners = GrpcListeners::bind(&config)
        .await
        .context("binding a loopback port")?;
    let address = listeners
        .addresses()?
        .first()
        .map(|(_, address)| *address)
        .context("no gRPC address")?;
    let drain = CancellationToken::new();
    let server = GrpcServer {
        log: log.clone(),
        access,
        regions: None,
        config,
        groups: GroupsConfig::default(),
    };
    let serving = tokio::spawn(server.serve(listeners, drain.clone()));
    let channel = credentials.on(connect(address, tls.as_ref())
        .await
        .context("connecting to the gateway")?);
    // Created over gRPC (as a client would), unless it exists: the authenticated bench's user
    // may not use Admin, so its topic is made beforehand. Found by the topic list (a metadata
    // request) rather than by describing the topic, which also asks for its configs.
    let exists = log
        .list_topics()
        .await?
        .iter()
        .any(|summary| summary.name == topic);
    if !exists {
        create_topic(&channel, topic, args.partitions).await?;
    }
    // One call before measuring, as a long-running client has made: with Basic credentials the
    // password is checked on the first call and remembered, not on every stream.
    StreamsClient::new(channel.clone())
        .fetch(pb::FetchRequest {
            topic: topic.into(),
            max_records: 1,
            ..Default::default()
        })
        .await?;
    let produced = produce_grpc(std::slice::from_ref(&channel), topic, args, value).await?;
    let subscribed = subscribe_grpc(&channel, topic, args.records).await?;
    drain.cancel();
    serving.await.context("the gateway task panicked")??;
    log.close().await?;
    Ok((produced, subscribed))
}

/// Starts `courier serve` on `store` (alone on the brokers' core when pinned), produces and
/// subscribes through its gRPC port as a client would (creating `topic` over Admin first when
/// `create`), and stops it. Returns both measurements and the gateway's CPU time for each.
async fn through_process(
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
    store: Store<'_>,
    create: bool,
) -> Result<(Measurement, Measurement, (Duration, Duration))> {
    let tls = args.tls.then(BenchTls::new).transpose()?;
    let mut env = process::room_for_streams(args.streams);
    if let Some(tls) = &tls {
        env.push(("COURIER_GRPC__TLS__CERT", tls.cert.display().to_string()));
        env.push(("COURIER_GRPC__TLS__KEY", tls.key.display().to_string()));
    }
    let (mut child, ready, _dir) = process::start_courier(store, &env)?;
    let measured = async {
        // With TLS and no `tls.listen`, the gRPC port speaks TLS and is named so.
        let key = if tls.is_some() { "grpcs=" } else { "grpc=" };
        let address: SocketAddr = ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix(key))
            .with_context(|| format!("no {key} in the ready line"))?
            .parse()?;
        let mut channels = Vec::new();
        for _ in 0..args.streams.div_ceil(STREAMS_PER_CONNECTION) {
            channels.push(
                Credentials::default().on(connect(address, tls.as_ref())
                    .await
                    .context("connecting to the gateway")?),
            );
        }
        let channel = channels.first().context("no connection")?.clone();
        if create {
            create_topic(&channel, topic, args.partitions).await?;
        }
        let before = process::cpu_ticks(&child)?;
        let produced = produce_grpc(&channels, topic, args, value).await?;
        let between = process::cpu_ticks(&child)?;
        let subscribed = subscribe_grpc(&channel, topic, args.records).await?;
        let after = process::cpu_ticks(&child)?;
        let cpu = (
            process::ticks(between.saturating_sub(before)),
            process::ticks(after.saturating_sub(between)),
        );
        anyhow::Ok((produced, subscribed, cpu))
    }
    .await;
    process::stop_process(&mut child);
    measured
}

/// Creates `topic` over the gateway's Admin API, as a client would.
async fn create_topic(channel: &Api, topic: &str, partitions: u32) -> Result<()> {
    AdminClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            partitions,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// A channel to the gateway at `address`, over TLS when `tls` is given (the TLS is the client's
/// own, through tonic's connector: hyper sees a stream, HTTP/2 over it as over TCP).
pub(super) async fn connect(address: SocketAddr, tls: Option<&BenchTls>) -> Result<Channel> {
    let endpoint = courier_grpc::client_endpoint(format!("http://{address}"))?;
    let Some(tls) = tls else {
        return Ok(endpoint.connect().await?);
    };
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let connecting = tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector(connecting).await?)
}

pub(super) async fn open_log(dir: &std::path::Path, fsync: FsyncPolicy) -> Result<Arc<dyn Log>> {
    let config = EmbeddedConfig {
        fsync,
        ..EmbeddedConfig::in_dir(dir)
    };
    let topics = TopicsConfig::default();
    let embedded =
        Embedded::open(&config, topics.clone(), GroupsConfig::default(), "bench").await?;
    Ok(Arc::new(layers::stack(embedded, &topics)))
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

/// `streams` ProduceStream calls spread over `channels` in turn, each keeping `pipeline` requests
/// of `batch` records in flight; latency from a request's send to its response.
pub(super) async fn produce_grpc(
    channels: &[Api],
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
) -> Result<Measurement> {
    let mut connections = channels.iter().cycle();
    measure_producers(args, |batches| {
        let (client, topic, value) = (
            connections.next().cloned().map(StreamsClient::new),
            topic.to_owned(),
            value.clone(),
        );
        let window = Arc::new(Semaphore::new(args.pipeline));
        async move {
            let mut client = client.context("no connection to produce on")?;
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
    let mut first_record = None;
    while seen < records {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next_event()).await {
            Ok(Some(SubscriptionEvent::Records(batch))) => {
                first_record.get_or_insert_with(|| FirstRecords {
                    after: started.elapsed(),
                    count: batch.len(),
                });
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
        first_record,
    })
}

async fn subscribe_grpc(channel: &Api, topic: &str, records: usize) -> Result<Measurement> {
    let started = Instant::now();
    let mut client = StreamsClient::new(channel.clone());
    let start = pb::SubscribeStart {
        topics: vec![topic.to_owned()],
        // A group of its own per topic: one left by an earlier side (the router's comparison runs
        // four on one cluster) would hold up the join until the broker timed its member out.
        group: format!("bench-grpc-{topic}"),
        start: Some(pb::Position {
            kind: Some(pb::position::Kind::Earliest(true)),
        }),
        max_in_flight: 1000,
        ..Default::default()
    };
    let (requests, mut responses) = crate::client::open_subscription(&mut client, start).await?;
    let mut seen = 0;
    let mut first_record = None;
    while seen < records {
        let next = tokio::time::timeout(Duration::from_secs(30), responses.next()).await;
        let Ok(Some(response)) = next else {
            bail!("gRPC subscription stopped after {seen} of {records} records")
        };
        if let Some(ResponseKind::Records(batch)) = response?.kind {
            first_record.get_or_insert_with(|| FirstRecords {
                after: started.elapsed(),
                count: batch.records.len(),
            });
            seen += batch.records.len();
            requests
                .send(pb::SubscribeRequest {
                    kind: Some(RequestKind::Ack(pb::Ack {
                        records: Vec::new(),
                        ranges: crate::client::ack_ranges(&batch.records),
                    })),
                })
                .await?;
        }
    }
    Ok(Measurement {
        records,
        elapsed: started.elapsed(),
        latency: None,
        first_record,
    })
}
