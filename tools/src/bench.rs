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
//! (`regions.rs`), measuring what the router costs while nothing fails. `--mqtt` and `--amqp` run
//! Courier against Mosquitto and RabbitMQ (`mqtt.rs`, `amqp.rs`). `--auth-rules N` compares a gateway
//! without authentication to one with users and a policy of `N` rules (`auth.rs`; with `--mqtt`,
//! Courier's MQTT endpoint, `mqtt/auth.rs`). `--tracing` compares `courier serve` with message
//! tracing on (every message sampled, exported to an OTLP receiver in the bench) and off, at gRPC
//! ProduceStream or, with `--mqtt`, QoS 1 publish; `--baseline BINARY` adds another build as a
//! third side (`tracing.rs`). `--scaling` runs the gRPC (or, with `--mqtt`, the MQTT QoS 1 publish)
//! comparison at each of several stream counts and record sizes (`scaling.rs`).
//!
//! Both sides use the same concurrency: `streams` producers, each keeping `pipeline` requests of
//! `batch` records in flight. Latency is per request: from submit to durable ack. The parts:
//! [`args`] (the options), [`measure`] (timing and latency), [`process`] (brokers as processes),
//! [`grpc`] (direct against gRPC), and one module per peer.

use anyhow::{Context, Result, bail};

mod amqp;
mod args;
mod auth;
mod grpc;
mod kafka;
mod measure;
mod mqtt;
mod process;
mod regions;
mod scaling;
mod tls;
mod tracing;

pub use args::BenchArgs;

/// What `--kafka` takes for librdkafka's mock cluster.
const MOCK: &str = "mock";

/// `--kafka mock`: the default comparison (rdkafka against the gateway) on librdkafka's mock
/// cluster, one broker, in this process. It batches as Kafka does, so the gateway's cost in front
/// of Kafka is measured where tansu (one record per batch) would be the bottleneck. The mock
/// cluster answers no CreateTopics request: the topics are made through its own API. With
/// `--regions mock` as well, the router's comparison (`regions.rs`) over two mock clusters.
async fn mock_kafka(mut args: BenchArgs) -> Result<()> {
    if args.auth_rules.is_some() {
        bail!("--kafka mock takes no --auth-rules");
    }
    let mock = |role: &str| {
        rdkafka::mocking::MockCluster::new(1)
            .with_context(|| format!("starting librdkafka's mock cluster for {role}"))
    };
    let cluster = mock("the primary")?;
    args.kafka = Some(cluster.bootstrap_servers());
    let make_topic = |name: &str, partitions: u32| -> Result<()> {
        let partitions = i32::try_from(partitions).context("partitions")?;
        cluster
            .create_topic(name, partitions, 1)
            .with_context(|| format!("creating {name} in the mock cluster"))
    };
    match args.regions.as_deref() {
        None => {
            println!("kafka: librdkafka's mock cluster, one broker, in the bench process");
            grpc::run_with(&args, Some(&make_topic)).await
        }
        Some(MOCK) => {
            let standby = mock("the standby")?;
            // The router's probes write to a canary topic in each region, which they cannot
            // create here.
            let canary = regions::canary_topic()?;
            for cluster in [&cluster, &standby] {
                cluster
                    .create_topic(&canary, 1, 1)
                    .context("creating the canary topic in a mock cluster")?;
            }
            println!(
                "kafka: two of librdkafka's mock clusters (primary and standby region), one \
                 broker each, in the bench process"
            );
            let primary = cluster.bootstrap_servers();
            regions::run(
                &args,
                &primary,
                &standby.bootstrap_servers(),
                Some(&make_topic),
            )
            .await
        }
        Some(_) => bail!("with --kafka mock, --regions takes mock too"),
    }
}

/// Runs the benchmark and prints a markdown table.
pub async fn run(args: BenchArgs) -> Result<()> {
    if args.records == 0 || args.streams == 0 || args.batch == 0 || args.pipeline == 0 {
        bail!("records, streams, batch and pipeline must be at least 1");
    }
    // Every mode whose broker runs as a process of its own (the default mode's `courier serve`, on
    // the embedded store or on Kafka, whose embedded direct side is a thread of its own) is pinned;
    // the others run a gateway in this process.
    let separate = args.tracing
        || args.mqtt
        || args.amqp
        || (args.auth_rules.is_none() && args.regions.is_none());
    if separate {
        println!("pinning: {}", process::pin(!args.no_pin)?);
    }
    if args.kafka.as_deref() == Some(MOCK) {
        return mock_kafka(args).await;
    }
    if args.scaling {
        if args.scaling_streams.contains(&0) || args.scaling_sizes.contains(&0) {
            bail!("--scaling-streams and --scaling-sizes take numbers of at least 1");
        }
        return scaling::run(&args).await;
    }
    if args.tracing {
        return tracing::run(&args).await;
    }
    if args.mqtt {
        return match args.auth_rules {
            Some(rules) => mqtt::auth::run(&args, rules).await,
            None => mqtt::run(&args).await,
        };
    }
    if args.amqp {
        return amqp::run(&args).await;
    }
    if let Some(rules) = args.auth_rules {
        return auth::run(&args, rules).await;
    }
    if let (Some(primary), Some(standby)) = (&args.kafka, &args.regions) {
        return regions::run(&args, primary, standby, None).await;
    }
    grpc::run(&args).await
}
