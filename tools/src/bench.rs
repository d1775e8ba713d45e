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
//! third side (`tracing.rs`).
//!
//! Both sides use the same concurrency: `streams` producers, each keeping `pipeline` requests of
//! `batch` records in flight. Latency is per request: from submit to durable ack. The parts:
//! [`args`] (the options), [`measure`] (timing and latency), [`process`] (brokers as processes),
//! [`grpc`] (direct against gRPC), and one module per peer.

use anyhow::{Result, bail};

mod amqp;
mod args;
mod auth;
mod grpc;
mod kafka;
mod measure;
mod mqtt;
mod process;
mod regions;
mod tls;
mod tracing;

pub use args::BenchArgs;

/// Runs the benchmark and prints a markdown table.
pub async fn run(args: BenchArgs) -> Result<()> {
    if args.records == 0 || args.streams == 0 || args.batch == 0 || args.pipeline == 0 {
        bail!("records, streams, batch and pipeline must be at least 1");
    }
    // Every mode whose broker runs as a process of its own (or, in the default mode, the embedded
    // store written directly, on a thread of its own) is pinned; the others run a gateway in this
    // process.
    let separate = args.tracing
        || args.mqtt
        || args.amqp
        || (args.kafka.is_none() && args.auth_rules.is_none());
    if separate {
        println!("pinning: {}", process::pin(!args.no_pin)?);
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
        return regions::run(&args, primary, standby).await;
    }
    grpc::run(&args).await
}
