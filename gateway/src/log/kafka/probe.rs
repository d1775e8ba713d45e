//! A health probe of the cluster, for the region router: the calls a client's produce and read make,
//! on a canary topic of the gateway's own, each bounded by the probe's timeout so a dead cluster costs
//! the probe its timeout and no more.

use std::time::Duration;

use rdkafka::producer::Producer;

use super::{Kafka, blocking, metadata};
use crate::{
    Result,
    regions::regional::{create_canary, within, write_and_read_back},
};

impl Kafka {
    /// Probes the cluster: a metadata request for `canary` (creating it with one partition when it is
    /// missing), one canary record produced with `acks=all`, and that record read back. Returns how
    /// long it took; fails when any step fails or the whole takes longer than `timeout`.
    pub async fn probe(&self, canary: &str, timeout: Duration) -> Result<Duration> {
        let region = self.shared.origin.as_str();
        within(region, timeout, async {
            let topic = canary.to_owned();
            let counts = blocking(&self.shared, move |shared| {
                metadata::read_partition_counts(shared.producer.client(), Some(&topic), timeout)
            })
            .await?;
            if counts.is_empty() {
                self.shared.partition_counts.forget(canary);
                create_canary(self, canary).await?;
            }
            write_and_read_back(self, region, canary).await
        })
        .await
    }

    /// Forgets cached metadata. The region router calls it when a lost cluster answers again, whose
    /// topics may have been recreated (or lost) meanwhile.
    pub fn forget_cached_metadata(&self) {
        self.shared.partition_counts.forget_all();
    }

    /// New clients for the same cluster, with the same settings; these stay open until closed.
    pub fn reopen(&self) -> Result<Self> {
        Self::open(
            &self.shared.config,
            self.shared.topics_config.clone(),
            self.shared.groups_config.clone(),
            &self.shared.origin,
        )
    }
}
