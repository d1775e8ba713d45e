//! librdkafka client settings. The gateway's guarantees rest on a few of them (`acks=all`, idempotence,
//! manual offset storage), so those are applied last and cannot be overridden by pass-through properties.

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Settings every client shares: brokers, pass-through properties (security among them), and no
/// broker-side auto-creation: the gateway's own `topics.auto_create` policy decides.
fn common(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("allow.auto.create.topics", "false")
        .set(
            "socket.timeout.ms",
            millis(config.request_timeout).to_string(),
        );
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// The one producer of clients' records in a gateway process: batching from config, durability
/// enforced.
pub(super) fn producer(config: &KafkaConfig) -> ClientConfig {
    producer_named(config, "courier-producer")
}

/// The region router's probe writes its canary records through a producer of its own, with the same
/// settings: a partition a producer knows of takes a turn in the order librdkafka serves its
/// partitions, so an idle canary partition in the clients' producer would hand its turns to the
/// partition after it, which on a broker taking one record a request made that partition's records
/// wait behind the others (the router's produce p99 on tansu was 2.3 to 3x the plain backend's).
pub(super) fn probe_producer(config: &KafkaConfig) -> ClientConfig {
    producer_named(config, "courier-probe")
}

fn producer_named(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = common(config);
    client
        .set("client.id", client_id)
        .set("linger.ms", millis(config.linger).to_string())
        .set("batch.size", config.batch_bytes.to_string())
        .set("compression.codec", &config.compression)
        .set(
            "message.timeout.ms",
            millis(config.message_timeout).to_string(),
        )
        // The gateway partitions records itself (Kafka's murmur2, as the Java client does); this
        // setting only matters for records it leaves unpartitioned, which it never does.
        .set("partitioner", "murmur2_random");
    for (key, value) in &config.producer_properties {
        client.set(key, value);
    }
    // What an acknowledgement to a client means: every in-sync replica has the record, written once
    // and in order even when the producer retries.
    client
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5");
    client
}

/// A consumer: of `group` (cooperative rebalancing), or without a group for plain readers and offset
/// lookups. `client_id` names the subscriber in describe-group output.
pub(super) fn consumer(config: &KafkaConfig, group: Option<&str>, client_id: &str) -> ClientConfig {
    let mut client = common(config);
    client
        .set("client.id", client_id)
        .set(
            "session.timeout.ms",
            millis(config.session_timeout).to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (millis(config.session_timeout) / 4).max(100).to_string(),
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        // When retention removed the committed offset, continue from the oldest record rather than
        // skipping to the end: at-least-once prefers redelivery to loss.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        // Prefetch per consumer; the default (64 MiB) is too much with one consumer per subscriber.
        .set("queued.max.messages.kbytes", "8192")
        // A member stops polling while its subscriber's buffer is full (see `member/task.rs`), so
        // the prefetch fills to the bound above; librdkafka then postpones the next fetch by this
        // much (default 1 s), which left the reader idle once the subscriber had caught up.
        .set("fetch.queue.backoff.ms", "20");
    // librdkafka assigns partitions only in consumers with a group id, even without joining the
    // group; consumers outside any group get a private one that never commits.
    let private;
    let group = match group {
        Some(group) => group,
        None => {
            private = format!("courier-private-{}", ulid::Ulid::new());
            &private
        }
    };
    client.set("group.id", group);
    for (key, value) in &config.consumer_properties {
        client.set(key, value);
    }
    // Offsets are committed by the gateway, and only for records its clients acknowledged.
    client
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    client
}

/// The reader that serves fetches and watermark lookups: it reports the end of a partition, waits
/// little for data, and fails rather than resets on an offset outside the partition.
pub(super) fn reader(config: &KafkaConfig) -> ClientConfig {
    let mut client = consumer(config, None, "courier-reader");
    client
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("auto.offset.reset", "error");
    client
}

/// The admin client (topic creation and deletion, configs).
pub(super) fn admin(config: &KafkaConfig) -> ClientConfig {
    let mut client = common(config);
    client.set("client.id", "courier-admin");
    client
}

fn millis(duration: std::time::Duration) -> u128 {
    duration.as_millis().max(1)
}
