//! The conformance suite against a real Kafka-protocol broker: a tansu 0.6.0 process (in-memory
//! storage) per test, on a free loopback port. The backend under test is the same `log::Kafka` that
//! fronts Apache Kafka in production.
//!
//! Where tansu 0.6.0 differs from Apache Kafka (seen with its memory storage), and what is done:
//! - It keeps produced batches whole and indexes them by base offset: ListOffsets(latest) answers the
//!   last batch's base offset + 1 (so 1 for a partition holding one batch of hundreds of records), and
//!   a fetch from an offset inside a batch returns only later batches, silently skipping the rest of
//!   that batch. Apache Kafka answers the true end and returns the batch holding the offset. A consumer
//!   resuming from a committed offset inside a batch would lose records on tansu whatever client it is,
//!   so these tests make the gateway's producer send one record per batch (`batch.num.messages = 1`);
//!   then base offsets are offsets and tansu answers as Kafka does. Production keeps librdkafka's
//!   batching.
//! - ListOffsets by timestamp answers 0 for every timestamp. The backend checks such answers against
//!   the record they name and reads forward (`log/kafka/reader.rs`); `records_round_trip` shows it.
//! - DescribeGroups carries neither client ids nor member assignments. The backend recovers the client
//!   id from the member id (`<client id>-<UUID>` on every broker) and shows its own subscribers'
//!   partitions; `group_members_share_partitions` and `bad_requests_are_refused` rely on it.
//! - A leader that leaves between its JoinGroup answer and its SyncGroup stays the group's leader for
//!   every later member, whose SyncGroup then fails for ever: the group never assigns again. Kafka
//!   elects a new leader. The backend lets a join finish before leaving (`await_join` in
//!   `log/kafka/member/leave.rs`); `members_that_leave_at_once_leave_the_group_working` checks that a
//!   member closed at once was assigned before it left, and that the group still works (the stall
//!   itself needs the window hit, which the MQTT conformance test's `leave-at-once` rounds under CPU
//!   load do: tests/mqtt_conformance.rs).

mod conformance;

use std::{sync::Arc, time::Duration};

use conformance::*;
use courier_gateway::{
    Error,
    config::{GroupsConfig, KafkaConfig, TopicsConfig},
    log::{
        Kafka, Log,
        layers::{self, Stack},
    },
};
use courier_testkit::Tansu;

async fn connect(broker: &Tansu, topics: TopicsConfig) -> Result<Stack<Kafka>, Error> {
    let config = KafkaConfig {
        // One record per batch: see the module docs.
        producer_properties: [("batch.num.messages".to_owned(), "1".to_owned())].into(),
        replication_factor: 1,
        session_timeout: Duration::from_secs(6),
        ..KafkaConfig::new(broker.bootstrap())
    };
    let groups = GroupsConfig {
        commit_interval: Duration::from_millis(100),
        ..GroupsConfig::default()
    };
    let kafka = Kafka::connect(&config, topics.clone(), groups, "test-region").await?;
    Ok(layers::stack(kafka, &topics))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> TestResult {
            let broker = Tansu::start()?;
            let log: Arc<dyn Log> = Arc::new(connect(&broker, TopicsConfig::default()).await?);
            let outcome = conformance::$name(log.clone()).await;
            log.close().await?;
            if outcome.is_err() {
                eprintln!("broker log: {}", broker.log_file().display());
            }
            outcome
        }
    )*};
}

every_behaviour!(conformance);
