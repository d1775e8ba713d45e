//! The conformance suite against the embedded log, plus what only a local store can show: restart
//! recovery, retention and the auto-create policy.

mod conformance;

use std::{sync::Arc, time::Duration};

use conformance::*;
use courier_gateway::{
    Error,
    config::{EmbeddedConfig, FsyncPolicy, GroupsConfig, TopicsConfig},
    log::{
        Embedded, FetchLimits, Log, Position, TopicPartition, TopicSpec,
        layers::{self, Stack},
    },
};

async fn open(dir: &std::path::Path, topics: TopicsConfig) -> Result<Stack<Embedded>, Error> {
    let groups = GroupsConfig {
        commit_interval: Duration::from_millis(100),
        ..GroupsConfig::default()
    };
    let embedded = Embedded::open(
        &EmbeddedConfig::in_dir(dir),
        topics.clone(),
        groups,
        "test-region",
    )
    .await?;
    Ok(layers::stack(embedded, &topics))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> TestResult {
            let dir = tempfile::tempdir()?;
            let log: Arc<dyn Log> = Arc::new(open(dir.path(), TopicsConfig::default()).await?);
            conformance::$name(log.clone()).await?;
            log.close().await?;
            Ok(())
        }
    )*};
}

every_behaviour!(conformance);

/// Records, watermarks and committed offsets survive closing and reopening the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_records_and_offsets() -> TestResult {
    let dir = tempfile::tempdir()?;
    let topic = unique_topic("restart");
    let group = unique_topic("group");
    {
        let log: Arc<dyn Log> = Arc::new(open(dir.path(), TopicsConfig::default()).await?);
        create(&log, &topic, 2).await?;
        log.append(
            &topic,
            (0..30)
                .map(|i| keyed(&format!("k{}", i % 5), format!("r{i}")))
                .collect(),
        )
        .await?;
        let mut member = log
            .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
            .await?;
        receive(&mut member, 30, true).await?;
        member.close().await?;
        log.close().await?;
    }
    let log: Arc<dyn Log> = Arc::new(open(dir.path(), TopicsConfig::default()).await?);
    let described = log.describe_topic(&topic).await?;
    assert_eq!(described.partitions.iter().map(|p| p.high).sum::<i64>(), 30);
    let appended = log.append(&topic, vec![keyed("k0", "after")]).await?;
    let high_before = described.partitions[appended[0].partition as usize].high;
    assert_eq!(
        appended[0].offset, high_before,
        "offsets continue after a restart"
    );
    let group_state = log.describe_group(&group).await?;
    assert_eq!(
        group_state
            .offsets
            .iter()
            .map(|o| o.committed.unwrap_or(0))
            .sum::<i64>(),
        30
    );
    let mut member = log
        .subscribe(options(&[&topic], Some(&group), Position::Earliest, 100))
        .await?;
    let after = receive(&mut member, 1, true).await?;
    assert_eq!(
        text(&after[0]),
        "after",
        "the group resumes at its committed offsets"
    );
    assert_eq!(after[0].origin, "test-region");
    log.close().await?;
    Ok(())
}

/// Retention by size drops the oldest records of a partition, never the newest, and readers skip
/// ahead; fetches below the low watermark are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_and_age() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open(dir.path(), TopicsConfig::default()).await?;
    let sized = unique_topic("sized");
    log.create_topic(TopicSpec {
        retention_bytes: Some(2_000),
        retention_ms: Some(0),
        ..TopicSpec::named(&sized).partitions(1)
    })
    .await?;
    log.append(
        &sized,
        (0..20).map(|i| value(format!("{i:0>200}"))).collect(),
    )
    .await?;
    log.backend().enforce_retention().await?;
    let partition = TopicPartition::new(sized.as_str(), 0);
    let fetched = log
        .fetch(
            &partition,
            log.resolve(&partition, Position::Earliest).await?,
            FetchLimits::default(),
        )
        .await?;
    assert!(
        fetched.low_watermark > 0 && fetched.low_watermark < 20,
        "low watermark {}",
        fetched.low_watermark
    );
    assert_eq!(fetched.high_watermark, 20);
    assert_eq!(
        fetched.records.last().map(|r| r.offset),
        Some(19),
        "the newest record stays"
    );
    assert!(matches!(
        log.fetch(&partition, 0, FetchLimits::default()).await,
        Err(Error::OffsetOutOfRange { .. })
    ));

    let aged = unique_topic("aged");
    log.create_topic(TopicSpec {
        retention_ms: Some(1),
        ..TopicSpec::named(&aged).partitions(1)
    })
    .await?;
    let old = chrono_ms() - 60_000;
    let records = (0..5)
        .map(|i| courier_gateway::log::NewRecord {
            timestamp_ms: Some(old),
            ..value(format!("old{i}"))
        })
        .collect();
    log.append(&aged, records).await?;
    log.append(&aged, vec![value("fresh")]).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    log.backend().enforce_retention().await?;
    let aged_partition = TopicPartition::new(aged.as_str(), 0);
    assert_eq!(
        log.resolve(&aged_partition, Position::Earliest).await?,
        5,
        "only the newest record is kept"
    );

    // Retention survives a restart: the low watermark is recovered from what is stored.
    log.close().await?;
    drop(log); // releases the directory lock
    let log = open(dir.path(), TopicsConfig::default()).await?;
    assert_eq!(log.resolve(&aged_partition, Position::Earliest).await?, 5);
    assert_eq!(log.resolve(&aged_partition, Position::Latest).await?, 6);
    log.close().await?;
    Ok(())
}

/// With auto-create off, unknown topics are refused with a hint; with it on they appear with defaults
/// on first produce, subscribe or open (an AMQP attach), never on a describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_policy() -> TestResult {
    let dir = tempfile::tempdir()?;
    let strict = open(
        dir.path(),
        TopicsConfig {
            auto_create: false,
            ..TopicsConfig::default()
        },
    )
    .await?;
    let topic = unique_topic("auto");
    match strict.append(&topic, vec![value("x")]).await {
        Err(error @ Error::UnknownTopic { .. }) => {
            assert!(error.to_string().contains("courier topics create"))
        }
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
    assert!(matches!(
        strict
            .subscribe(options(&[&topic], None, Position::Earliest, 10))
            .await,
        Err(Error::UnknownTopic { .. })
    ));
    assert!(matches!(
        strict.open_topic(&topic).await,
        Err(Error::UnknownTopic { .. })
    ));
    assert!(matches!(
        strict.describe_topic(&topic).await,
        Err(Error::UnknownTopic { .. })
    ));
    strict.close().await?;

    let dir = tempfile::tempdir()?;
    let lenient = open(
        dir.path(),
        TopicsConfig {
            default_partitions: 5,
            ..TopicsConfig::default()
        },
    )
    .await?;
    lenient.append(&topic, vec![value("x")]).await?;
    assert_eq!(lenient.describe_topic(&topic).await?.partitions.len(), 5);
    // An AMQP link attaching to a missing topic opens it: created with the defaults, then described.
    let attached = unique_topic("attach");
    assert_eq!(lenient.open_topic(&attached).await?.partitions.len(), 5);
    assert_eq!(lenient.open_topic(&attached).await?.partitions.len(), 5);
    // Describing alone never creates.
    assert!(matches!(
        lenient.describe_topic(&unique_topic("described")).await,
        Err(Error::UnknownTopic { .. })
    ));
    lenient.close().await?;
    Ok(())
}

/// Without fsync the log still keeps what it acknowledged across a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_never_still_persists_on_close() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = EmbeddedConfig {
        fsync: FsyncPolicy::Never,
        ..EmbeddedConfig::in_dir(dir.path())
    };
    let topic = unique_topic("nosync");
    let embedded = Embedded::open(
        &config,
        TopicsConfig::default(),
        GroupsConfig::default(),
        "r",
    )
    .await?;
    let log = layers::stack(embedded, &TopicsConfig::default());
    log.append(&topic, (0..10).map(|i| value(format!("{i}"))).collect())
        .await?;
    log.close().await?;
    drop(log); // releases the directory lock
    let log = Embedded::open(
        &config,
        TopicsConfig::default(),
        GroupsConfig::default(),
        "r",
    )
    .await?;
    let total: i64 = log
        .describe_topic(&topic)
        .await?
        .partitions
        .iter()
        .map(|p| p.high)
        .sum();
    assert_eq!(total, 10);
    log.close().await?;
    Ok(())
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
