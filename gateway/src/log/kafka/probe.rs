//! A health probe of the cluster, for the region router: the calls a client's produce and read make,
//! on a canary topic of the gateway's own, each bounded by the probe's timeout so a dead cluster costs
//! the probe its timeout and no more.

use std::time::{Duration, Instant};

use bytes::Bytes;

use rdkafka::producer::Producer;

use super::{Kafka, blocking, metadata};
use crate::{
    Error, Result,
    log::{FetchLimits, Log, NewRecord, TopicPartition, TopicSpec},
};

/// How long the canary topic keeps its records: they only need to be read back once.
const CANARY_RETENTION_MS: i64 = 3_600_000;

impl Kafka {
    /// Probes the cluster: a metadata request for `canary` (creating it with one partition when it is
    /// missing), one canary record produced with `acks=all`, and that record read back. Returns how
    /// long it took; fails when any step fails or the whole takes longer than `timeout`.
    pub async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.probe_steps(canary, timeout)).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::RegionUnavailable {
                region: self.shared.origin.clone(),
                reason: format!("a probe took longer than {timeout:?}"),
            }),
        }
    }

    /// Forgets cached metadata. The region router calls it when a lost cluster answers again, whose
    /// topics may have been recreated (or lost) meanwhile.
    pub fn forget_cached_metadata(&self) {
        self.shared.partition_counts.forget_all();
    }

    async fn probe_steps(&self, canary: &str, timeout: Duration) -> Result<()> {
        let topic = canary.to_owned();
        let counts = blocking(&self.shared, move |shared| {
            metadata::read_partition_counts(shared.producer.client(), Some(&topic), timeout)
        })
        .await?;
        if counts.is_empty() {
            self.shared.partition_counts.forget(canary);
            let spec = TopicSpec {
                retention_ms: Some(CANARY_RETENTION_MS),
                ..TopicSpec::named(canary).partitions(1)
            };
            match self.create_topic(spec).await {
                Ok(_) | Err(Error::TopicExists { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        let sent = Bytes::from(super::super::now_ms().to_string());
        let appended = self
            .append(canary, vec![NewRecord::with_value(sent.clone())])
            .await?;
        let Some(appended) = appended.first() else {
            return Err(self.probe_failed("the canary produce returned no offset"));
        };
        let fetched = self
            .fetch(
                &TopicPartition::new(canary, appended.partition),
                appended.offset,
                FetchLimits {
                    max_records: 1,
                    max_bytes: 1024,
                },
            )
            .await?;
        match fetched.records.first() {
            Some(record) if record.courier_id == appended.courier_id => Ok(()),
            _ => Err(self.probe_failed("the canary record could not be read back")),
        }
    }

    fn probe_failed(&self, reason: &str) -> Error {
        Error::RegionUnavailable {
            region: self.shared.origin.clone(),
            reason: reason.to_owned(),
        }
    }
}
