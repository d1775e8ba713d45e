//! The conformance suite against a real Kafka-protocol broker: a tansu 0.6.0 process (in-memory
//! storage) per test, on a free loopback port. The backend under test is the same `log::Kafka` that
//! fronts Apache Kafka in production.
//!
//! Where tansu differs from Apache Kafka, the backend copes, and the tests say so:
//! - ListOffsets(latest) can answer 1 for a partition holding hundreds of records. The backend never
//!   trusts that answer alone: it confirms every high watermark with a fetch from it (see
//!   `log/kafka/reader.rs`), which `plain_readers_start_where_asked`, `seek_and_commit` and
//!   `fetch_limits_and_range` exercise.

mod conformance;

use std::{sync::Arc, time::Duration};

use conformance::*;
use courier_gateway::{
    Error,
    config::{GroupsConfig, KafkaConfig, TopicsConfig},
    log::{Kafka, Log},
};
use courier_testkit::Tansu;

async fn connect(broker: &Tansu, topics: TopicsConfig) -> Result<Kafka, Error> {
    let config = KafkaConfig {
        replication_factor: 1,
        session_timeout: Duration::from_secs(6),
        ..KafkaConfig::new(broker.bootstrap())
    };
    let groups = GroupsConfig {
        commit_interval: Duration::from_millis(100),
        ..GroupsConfig::default()
    };
    Kafka::connect(&config, topics, groups, "test-region").await
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

conformance!(
    offsets_are_dense_per_partition,
    keyed_records_keep_order,
    fetch_limits_and_range,
    plain_readers_start_where_asked,
    group_members_share_partitions,
    sparse_acks_and_redelivery,
    dropped_member_records_are_redelivered,
    in_flight_window_pauses_delivery,
    seek_and_commit,
    patterns_follow_new_topics,
    bad_requests_are_refused,
    records_round_trip,
    delete_topic_removes_everything,
    concurrent_appends_are_all_acknowledged,
);
