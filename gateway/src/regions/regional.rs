//! What the router needs of a region's log beyond [`Log`]: a health probe, a way to forget metadata
//! a lost cluster may have invalidated, and fresh clients after a loss. Any backend can be a region:
//! Kafka in production, the embedded log in process (tests run the conformance suite and the router's
//! timing behaviours over embedded regions, on paused time).

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::{
    Error, Result,
    log::{
        Appended, Embedded, FetchLimits, Kafka, Log, NewRecord, TopicPartition, TopicSpec, now_ms,
    },
};

/// How long the canary topic keeps its records: they only need to be read back once.
const CANARY_RETENTION_MS: i64 = 3_600_000;

/// A region's log, as the router uses it.
#[async_trait]
pub trait RegionalLog: Log {
    /// Checks that the region answers a client's produce and read, within `timeout`; returns how
    /// long that took.
    async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration>;

    /// Whether every broker of the region refuses connections now (each answered within `timeout`
    /// with a refusal): a hard failure, which makes the region DOWN at once. `false` when any broker
    /// accepts, is silent, or the question means nothing (a log in this process). No default: a
    /// wrapper that forgot to pass it on would hide every hard failure.
    async fn refuses_connections(&self, timeout: Duration) -> bool;

    /// Forgets cached metadata: called when a lost region answers again, whose topics may have been
    /// recreated (or lost) meanwhile.
    fn forget_cached_metadata(&self);

    /// New clients for the same region, replacing these after it was lost (a cluster that comes
    /// back may be a rebuilt one, which old clients' cached state would confuse); the router closes
    /// the old ones itself. `None`: these hold no state of the remote side, keep them.
    fn reopen(&self) -> Result<Option<Arc<dyn RegionalLog>>>;
}

#[async_trait]
impl<L: RegionalLog + ?Sized> RegionalLog for Arc<L> {
    async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration> {
        (**self).probe(canary, timeout).await
    }

    async fn refuses_connections(&self, timeout: Duration) -> bool {
        (**self).refuses_connections(timeout).await
    }

    fn forget_cached_metadata(&self) {
        (**self).forget_cached_metadata();
    }

    fn reopen(&self) -> Result<Option<Arc<dyn RegionalLog>>> {
        (**self).reopen()
    }
}

#[async_trait]
impl RegionalLog for Kafka {
    async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration> {
        Kafka::probe(self, canary, timeout).await
    }

    async fn refuses_connections(&self, timeout: Duration) -> bool {
        Kafka::refuses_connections(self, timeout).await
    }

    fn forget_cached_metadata(&self) {
        Kafka::forget_cached_metadata(self);
    }

    fn reopen(&self) -> Result<Option<Arc<dyn RegionalLog>>> {
        Ok(Some(Arc::new(Kafka::reopen(self)?)))
    }
}

/// The embedded log as a region: one process's store, with no remote state to forget or rebuild.
#[async_trait]
impl RegionalLog for Embedded {
    async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration> {
        within(EMBEDDED, timeout, async {
            match self.describe_topic(canary).await {
                Ok(_) => {}
                Err(Error::UnknownTopic { .. }) => create_canary(self, canary).await?,
                Err(error) => return Err(error),
            }
            write_and_read_back(self, EMBEDDED, canary, |record| {
                self.append(canary, vec![record])
            })
            .await
        })
        .await
    }

    /// A log in this process has no brokers to refuse anything.
    async fn refuses_connections(&self, _timeout: Duration) -> bool {
        false
    }

    fn forget_cached_metadata(&self) {}

    fn reopen(&self) -> Result<Option<Arc<dyn RegionalLog>>> {
        Ok(None)
    }
}

/// How the embedded log names itself in a failed probe.
const EMBEDDED: &str = "embedded log";

/// Runs a probe's `steps` within `timeout`; how long they took.
pub(crate) async fn within(
    region: &str,
    timeout: Duration,
    steps: impl Future<Output = Result<()>>,
) -> Result<Duration> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, steps).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(unavailable(
            region,
            &format!("a probe took longer than {timeout:?}"),
        )),
    }
}

/// Makes the canary topic: one partition, short retention.
pub(crate) async fn create_canary(log: &dyn Log, canary: &str) -> Result<()> {
    let spec = TopicSpec {
        retention_ms: Some(CANARY_RETENTION_MS),
        ..TopicSpec::named(canary).partitions(1)
    };
    match log.create_topic(spec).await {
        Ok(_) | Err(Error::TopicExists { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// What a client's produce and read do: one canary record appended (by `append`, to the canary
/// topic of `log`) and read back from `log`.
pub(crate) async fn write_and_read_back<Appending>(
    log: &dyn Log,
    region: &str,
    canary: &str,
    append: impl FnOnce(NewRecord) -> Appending,
) -> Result<()>
where
    Appending: Future<Output = Result<Vec<Appended>>>,
{
    // Below the validation layer: the record needs its id from here.
    let sent = NewRecord {
        courier_id: ulid::Ulid::new().to_string(),
        ..NewRecord::with_value(Bytes::from(now_ms().to_string()))
    };
    let appended = append(sent).await?;
    let Some(appended) = appended.first() else {
        return Err(unavailable(region, "the canary produce returned no offset"));
    };
    let limits = FetchLimits {
        max_records: 1,
        max_bytes: 1024,
    };
    let partition = TopicPartition::new(canary, appended.partition);
    let fetched = log.fetch(&partition, appended.offset, limits).await?;
    match fetched.records.first() {
        Some(record) if record.courier_id == appended.courier_id => Ok(()),
        _ => Err(unavailable(
            region,
            "the canary record could not be read back",
        )),
    }
}

/// The records of `partition` from `from` up to (not including) `until`. A fetch may return fewer
/// records than asked (a Kafka fetch returns what the broker sent in one response), so this fetches
/// on from the last one it got; it stops early at the end of what is there.
pub(crate) async fn read_range(
    log: &dyn Log,
    partition: &TopicPartition,
    from: i64,
    until: i64,
) -> Result<Vec<crate::log::Record>> {
    let mut records = Vec::new();
    let mut next = from;
    while next < until {
        let limits = FetchLimits {
            max_records: usize::try_from(until - next).unwrap_or(usize::MAX).min(512),
            max_bytes: 4 << 20,
        };
        let fetched = log.fetch(partition, next, limits).await?;
        let Some(last) = fetched.records.last().map(|record| record.offset) else {
            break;
        };
        records.extend(
            fetched
                .records
                .into_iter()
                .filter(|record| record.offset >= next && record.offset < until),
        );
        next = last + 1;
    }
    Ok(records)
}

fn unavailable(region: &str, reason: &str) -> Error {
    Error::RegionUnavailable {
        region: region.to_owned(),
        reason: reason.to_owned(),
    }
}
