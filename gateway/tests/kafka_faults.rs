//! Faults inside one Kafka cluster, on librdkafka's mock cluster (3 brokers, replication 3): the
//! partition leader's broker dies during a produce stream, brokers answer with injected errors
//! (produces, and the group coordinator's offset lookup), round trips slow down. What must hold every
//! time: every acknowledged record is readable afterwards, where its acknowledgement said, exactly
//! once; a group resumes after its commit; errors that do reach the client say what happened and
//! whether a retry can help.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use courier_gateway::{
    Error,
    config::{GroupsConfig, KafkaConfig, TopicsConfig},
    log::{
        Appended, FetchLimits, Kafka, Log, NewRecord, Position, SubscribeOptions, Subscription,
        SubscriptionEvent, TopicPartition, TopicSelector, layers,
    },
};
use rdkafka::{mocking::MockCluster, types::RDKafkaApiKey, types::RDKafkaRespErr};
use tokio::task::JoinSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const BROKERS: i32 = 3;
const PARTITIONS: i32 = 3;

async fn connect(bootstrap: String, message_timeout: Duration) -> Result<Arc<dyn Log>, Error> {
    let config = KafkaConfig {
        message_timeout,
        request_timeout: Duration::from_secs(5),
        ..KafkaConfig::new(bootstrap)
    };
    // The mock cluster has no CreateTopics; topics are made through its own API.
    let topics = TopicsConfig {
        auto_create: false,
        ..TopicsConfig::default()
    };
    let kafka = Kafka::connect(
        &config,
        topics.clone(),
        GroupsConfig::default(),
        "test-region",
    )
    .await?;
    Ok(Arc::new(layers::stack(kafka, &topics)))
}

/// Record `index` of a run; values are unique across runs of one test.
fn numbered(run: &str, index: usize) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(format!("key-{}", index % 17))),
        ..NewRecord::with_value(Bytes::from(format!("{run}-{index}")))
    }
}

/// What a run of producers got back: acknowledged records with their values, and errors.
#[derive(Default)]
struct Outcome {
    acked: Vec<(Appended, String)>,
    errors: Vec<Error>,
}

/// `producers` tasks each append `batches` batches of 5 records, pipelining 8 batches at a time.
async fn produce(
    log: &Arc<dyn Log>,
    topic: &str,
    run: &'static str,
    producers: usize,
    batches: usize,
) -> Outcome {
    produce_counting(log, topic, run, producers, batches, Arc::default()).await
}

/// [`produce`], counting acknowledged records in `progress` as they come.
async fn produce_counting(
    log: &Arc<dyn Log>,
    topic: &str,
    run: &'static str,
    producers: usize,
    batches: usize,
    progress: Arc<AtomicUsize>,
) -> Outcome {
    let mut tasks = JoinSet::new();
    for producer in 0..producers {
        let (log, topic, progress) = (log.clone(), topic.to_owned(), progress.clone());
        tasks.spawn(async move {
            let mut outcome = Outcome::default();
            let mut pending = std::collections::VecDeque::new();
            for batch in 0..batches {
                let first = (producer * batches + batch) * 5;
                let records: Vec<NewRecord> =
                    (first..first + 5).map(|i| numbered(run, i)).collect();
                match log.submit(&topic, records).await {
                    Ok(receipt) => pending.push_back((first, receipt)),
                    Err(error) => outcome.errors.push(error),
                }
                while pending.len() >= 8 || (batch + 1 == batches && !pending.is_empty()) {
                    let Some((first, receipt)) = pending.pop_front() else {
                        break;
                    };
                    match receipt.await {
                        Ok(appended) => {
                            progress.fetch_add(appended.len(), Ordering::Relaxed);
                            outcome.acked.extend(
                                appended
                                    .into_iter()
                                    .enumerate()
                                    .map(|(i, a)| (a, format!("{run}-{}", first + i))),
                            )
                        }
                        Err(error) => outcome.errors.push(error),
                    }
                }
            }
            outcome
        });
    }
    let mut all = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(outcome) = done {
            all.acked.extend(outcome.acked);
            all.errors.extend(outcome.errors);
        }
    }
    all
}

/// Reads every partition from the start: (partition, offset) -> value.
async fn read_all(log: &Arc<dyn Log>, topic: &str) -> Result<BTreeMap<(i32, i64), String>, Error> {
    let mut stored = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let page = log
                .fetch(
                    &TopicPartition::new(topic, partition),
                    offset,
                    FetchLimits::default(),
                )
                .await?;
            let Some(last) = page.records.last() else {
                break;
            };
            offset = last.offset + 1;
            for record in &page.records {
                let value = record
                    .value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                stored.insert((partition, record.offset), value);
            }
        }
    }
    Ok(stored)
}

/// Waits until producers have `count` acknowledgements.
async fn wait_for_progress(progress: &AtomicUsize, count: usize) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::Relaxed) < count {
        if tokio::time::Instant::now() > deadline {
            return Err(
                format!("producers stalled at {}", progress.load(Ordering::Relaxed)).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Every acknowledged record is stored where its ack said, and nothing is stored twice.
fn assert_acked_records_stored(outcome: &Outcome, stored: &BTreeMap<(i32, i64), String>) {
    let mut seen = BTreeMap::new();
    for (ack, value) in &outcome.acked {
        assert!(
            seen.insert((ack.partition, ack.offset), value).is_none(),
            "two acks name {}/{}",
            ack.partition,
            ack.offset
        );
        assert_eq!(
            stored.get(&(ack.partition, ack.offset)),
            Some(value),
            "acknowledged record at {}/{} is missing or different",
            ack.partition,
            ack.offset
        );
    }
    let mut values: Vec<&String> = stored.values().collect();
    values.sort();
    let before = values.len();
    values.dedup();
    assert_eq!(before, values.len(), "a record was stored twice");
}

/// The broker leading every partition goes down mid-stream; leadership moves to another broker, the
/// dead one comes back later. Producers carry on; nothing acknowledged is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_broker_down_during_produce() -> TestResult {
    let cluster = MockCluster::new(BROKERS)?;
    let topic = "leader-down";
    cluster.create_topic(topic, PARTITIONS, BROKERS)?;
    for partition in 0..PARTITIONS {
        cluster.partition_leader(topic, partition, Some(1))?;
    }
    let log = connect(cluster.bootstrap_servers(), Duration::from_secs(30)).await?;
    let progress = Arc::new(AtomicUsize::new(0));
    let producing = {
        let (log, progress) = (log.clone(), progress.clone());
        tokio::spawn(async move { produce_counting(&log, topic, "stream", 4, 400, progress).await })
    };
    wait_for_progress(&progress, 500).await?;
    cluster.broker_down(1)?;
    for partition in 0..PARTITIONS {
        cluster.partition_leader(topic, partition, Some(2))?;
    }
    let at_failover = progress.load(Ordering::Relaxed);
    wait_for_progress(&progress, at_failover + 500).await?;
    cluster.broker_up(1)?;
    let outcome = producing.await?;
    for error in &outcome.errors {
        // Anything that failed must say it can be retried: the cluster, not the request, was at fault.
        assert!(error.is_retryable(), "unexpected error: {error}");
    }
    assert!(
        outcome.acked.len() > at_failover,
        "producers carried on after the failover"
    );
    let stored = read_all(&log, topic).await?;
    assert_acked_records_stored(&outcome, &stored);
    log.close().await?;
    Ok(())
}

/// Brokers answer produce requests with retriable errors (leader moved, timeouts, too few replicas):
/// the idempotent producer retries them, every record is acknowledged once and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_retriable_errors_are_retried_without_duplicates() -> TestResult {
    let cluster = MockCluster::new(BROKERS)?;
    let topic = "retriable";
    cluster.create_topic(topic, PARTITIONS, BROKERS)?;
    let log = connect(cluster.bootstrap_servers(), Duration::from_secs(30)).await?;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    let outcome = produce(&log, topic, "retried", 2, 40).await;
    assert!(
        outcome.errors.is_empty(),
        "retriable errors reached the client: {:?}",
        outcome.errors
    );
    assert_eq!(outcome.acked.len(), 2 * 40 * 5);
    let stored = read_all(&log, topic).await?;
    assert_eq!(stored.len(), outcome.acked.len(), "stored exactly once");
    assert_acked_records_stored(&outcome, &stored);
    log.close().await?;
    Ok(())
}

/// A broker that refuses the request itself (authorization): the client gets a clear, non-retryable
/// error, and records acknowledged before are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_reach_the_client_clearly() -> TestResult {
    let cluster = MockCluster::new(BROKERS)?;
    let topic = "refused";
    cluster.create_topic(topic, PARTITIONS, BROKERS)?;
    let log = connect(cluster.bootstrap_servers(), Duration::from_secs(10)).await?;
    let before = produce(&log, topic, "before", 1, 10).await;
    assert!(before.errors.is_empty());
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let refused = log.append(topic, vec![numbered("refused", 0)]).await;
    let Err(error) = refused else {
        return Err("a refused produce was acknowledged".into());
    };
    assert!(
        !error.is_retryable(),
        "authorization is not transient: {error}"
    );
    assert!(
        error.to_string().to_lowercase().contains("authoriz"),
        "the error names the cause: {error}"
    );
    assert!(matches!(
        log.append("no-such-topic", vec![numbered("unknown", 0)])
            .await,
        Err(Error::UnknownTopic { .. })
    ));
    let stored = read_all(&log, topic).await?;
    assert_acked_records_stored(&before, &stored);
    log.close().await?;
    Ok(())
}

/// Round trips slow down: produces still complete. When a broker is slower than the produce timeout,
/// the client gets a retryable timeout, never a false acknowledgement, and retrying after the broker
/// recovered stores the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_round_trips_delay_but_do_not_lose() -> TestResult {
    let cluster = MockCluster::new(BROKERS)?;
    let topic = "slow";
    cluster.create_topic(topic, PARTITIONS, BROKERS)?;
    let log = connect(cluster.bootstrap_servers(), Duration::from_secs(2)).await?;
    for broker in 1..=BROKERS {
        cluster.broker_round_trip_time(broker, Duration::from_millis(150))?;
    }
    let slow = produce(&log, topic, "slow", 2, 10).await;
    assert!(slow.errors.is_empty(), "{:?}", slow.errors);
    for broker in 1..=BROKERS {
        cluster.broker_round_trip_time(broker, Duration::from_secs(4))?;
    }
    let timed_out = log.append(topic, vec![numbered("timed-out", 0)]).await;
    let Err(error) = timed_out else {
        return Err("acknowledged although no broker answered in time".into());
    };
    assert!(error.is_retryable(), "a timeout may be retried: {error}");
    for broker in 1..=BROKERS {
        cluster.broker_round_trip_time(broker, Duration::ZERO)?;
    }
    let retried = produce(&log, topic, "after", 1, 2).await;
    assert!(retried.errors.is_empty(), "{:?}", retried.errors);
    let stored = read_all(&log, topic).await?;
    assert_acked_records_stored(&slow, &stored);
    assert_acked_records_stored(&retried, &stored);
    log.close().await?;
    Ok(())
}

/// A group member subscribing at `start`.
async fn member(
    log: &Arc<dyn Log>,
    topic: &str,
    group: &str,
    start: Position,
) -> Result<Subscription, Error> {
    log.subscribe(SubscribeOptions {
        topics: TopicSelector::Names(vec![topic.to_owned()]),
        group: Some(group.to_owned()),
        start,
        max_in_flight: 100,
        client: "kafka-faults".into(),
        protocol: "grpc",
    })
    .await
}

/// The offsets of the next `count` records delivered, acknowledging the first `ack` of them.
async fn receive_offsets(
    subscription: &mut Subscription,
    count: usize,
    ack: usize,
) -> Result<Vec<i64>, String> {
    let mut offsets = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while offsets.len() < count {
        match tokio::time::timeout_at(deadline, subscription.next_event()).await {
            Ok(Some(SubscriptionEvent::Records(records))) => {
                for record in records {
                    if offsets.len() < ack {
                        subscription
                            .control
                            .ack(&record.topic_partition(), record.offset);
                    }
                    offsets.push(record.offset);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err(format!("received {offsets:?} of {count}")),
        }
    }
    Ok(offsets)
}

/// The group coordinator refuses the committed-offset lookup a member makes when it is given a
/// partition. The member must not fall back to its start position (latest, as for a resumed MQTT
/// session) and skip what the group has not read: it resumes right after the group's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_offset_lookup_on_assignment_skips_nothing() -> TestResult {
    let cluster = MockCluster::new(BROKERS)?;
    let topic = "lookup";
    cluster.create_topic(topic, 1, BROKERS)?;
    let log = connect(cluster.bootstrap_servers(), Duration::from_secs(10)).await?;
    let records = (0..10).map(|i| numbered("lookup", i)).collect();
    log.append(topic, records).await?;

    let mut first = member(&log, topic, "resumed", Position::Earliest).await?;
    let delivered = receive_offsets(&mut first, 10, 4).await?;
    assert_eq!(delivered, (0..10).collect::<Vec<i64>>());
    first.close().await?;

    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    let mut resumed = member(&log, topic, "resumed", Position::Latest).await?;
    let redelivered = receive_offsets(&mut resumed, 6, 6).await?;
    assert_eq!(
        redelivered,
        (4..10).collect::<Vec<i64>>(),
        "the member resumes after the group's commit (4)"
    );
    resumed.close().await?;
    log.close().await?;
    Ok(())
}
