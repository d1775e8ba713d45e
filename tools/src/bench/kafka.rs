//! The `direct` side against Kafka: a plain rdkafka producer and consumer, configured as the gateway
//! configures its own (acks=all, idempotence, the same linger and batch size), so the comparison
//! measures what the gateway adds and nothing else.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use courier_gateway::{
    config::{GroupsConfig, KafkaConfig, TopicsConfig},
    log::{Kafka, Log, layers},
};
use rdkafka::{
    ClientConfig,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};

use super::{
    args::BenchArgs,
    measure::{FirstRecords, Measurement, measure_producers, pipelined},
};

/// The gateway's Kafka settings for a benchmark broker (one broker: one replica per topic), with
/// the librdkafka properties `args` gives for producers and consumers.
pub(super) fn config(bootstrap: &str, args: &BenchArgs) -> KafkaConfig {
    KafkaConfig {
        replication_factor: 1,
        producer_properties: args.producer_properties.iter().cloned().collect(),
        consumer_properties: args.consumer_properties.iter().cloned().collect(),
        ..KafkaConfig::new(bootstrap)
    }
}

/// A `courier serve` config for `config`'s cluster: its `[log]`, the properties given to the bench
/// included (so both sides get them), and gRPC only: the MQTT and AMQP endpoints create their
/// topics at start, which librdkafka's mock cluster does not answer.
pub(super) fn serve_config(config: &KafkaConfig) -> Result<String> {
    let table = |properties: &std::collections::BTreeMap<String, String>| {
        properties
            .iter()
            .map(|(key, value)| (key.clone(), toml::Value::String(value.clone())))
            .collect::<toml::Table>()
    };
    let mut log = toml::Table::new();
    log.insert("kind".into(), "kafka".into());
    log.insert(
        "bootstrap_servers".into(),
        config.bootstrap_servers.clone().into(),
    );
    log.insert(
        "replication_factor".into(),
        i64::from(config.replication_factor).into(),
    );
    log.insert(
        "producer_properties".into(),
        table(&config.producer_properties).into(),
    );
    log.insert(
        "consumer_properties".into(),
        table(&config.consumer_properties).into(),
    );
    let mut root = toml::Table::new();
    root.insert("log".into(), log.into());
    for endpoint in ["mqtt", "amqp"] {
        let mut off = toml::Table::new();
        off.insert("enabled".into(), false.into());
        root.insert(endpoint.into(), off.into());
    }
    Ok(toml::to_string(&root)?)
}

/// The gateway's Kafka backend on `config`'s cluster, writing `origin` into every record.
pub(super) async fn backend(config: &KafkaConfig, origin: &str) -> Result<Arc<dyn Log>> {
    let topics = TopicsConfig::default();
    let kafka = Kafka::connect(config, topics.clone(), GroupsConfig::default(), origin)
        .await
        .with_context(|| format!("connecting to Kafka at {}", config.bootstrap_servers))?;
    Ok(Arc::new(layers::stack(kafka, &topics)))
}

fn client(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    client
}

/// Produces the benchmark's batches with rdkafka, `pipeline` batches in flight per stream.
pub(super) async fn produce(
    config: &KafkaConfig,
    topic: &str,
    args: &BenchArgs,
    value: &Bytes,
) -> Result<Measurement> {
    let mut settings = client(config);
    for (key, value) in &config.producer_properties {
        settings.set(key, value);
    }
    let producer: FutureProducer = settings
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("batch.size", config.batch_bytes.to_string())
        .set("compression.codec", &config.compression)
        .create()
        .context("creating the rdkafka producer")?;
    measure_producers(args, |batches| {
        let (producer, topic, value) = (producer.clone(), topic.to_owned(), value.clone());
        pipelined(batches, args.pipeline, move |size| {
            let queued = (0..size)
                .map(|_| {
                    producer
                        .send_result(FutureRecord::<(), [u8]>::to(&topic).payload(&value[..]))
                        .map_err(|(error, _)| anyhow::anyhow!("queueing: {error}"))
                })
                .collect::<Result<Vec<_>>>();
            async move {
                let deliveries = queued?;
                anyhow::Ok(async move {
                    for delivery in deliveries {
                        match delivery.await {
                            Ok(Ok(_)) => {}
                            Ok(Err((error, _))) => bail!("delivery failed: {error}"),
                            Err(_) => bail!("the producer went away"),
                        }
                    }
                    Ok(())
                })
            }
        })
    })
    .await
}

/// Reads `records` back with an rdkafka consumer in a new group, committing as a native client does.
pub(super) async fn subscribe(
    config: &KafkaConfig,
    topic: &str,
    records: usize,
) -> Result<Measurement> {
    let mut settings = client(config);
    for (key, value) in &config.consumer_properties {
        settings.set(key, value);
    }
    let consumer: StreamConsumer = settings
        .set("group.id", format!("bench-direct-{}", ulid::Ulid::new()))
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .context("creating the rdkafka consumer")?;
    let started = Instant::now();
    consumer.subscribe(&[topic])?;
    let mut seen = 0;
    let mut first_record = None;
    while seen < records {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(_)) => {
                first_record.get_or_insert_with(|| FirstRecords {
                    after: started.elapsed(),
                    count: 1,
                });
                seen += 1;
            }
            Ok(Err(error)) => bail!("consuming: {error}"),
            Err(_) => bail!("direct consumer stopped after {seen} of {records} records"),
        }
    }
    Ok(Measurement {
        records,
        elapsed: started.elapsed(),
        latency: None,
        first_record,
    })
}
