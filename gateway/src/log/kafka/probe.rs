//! A health probe of the cluster, for the region router: the calls a client's produce and read make,
//! on a canary topic of the gateway's own, each bounded by the probe's timeout so a dead cluster costs
//! the probe its timeout and no more.

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::producer::Producer;
use tokio::net::TcpStream;

use super::{Kafka, blocking, enqueue, metadata};
use crate::{
    Result,
    log::{Appended, NewRecord},
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
                // Made here, off the runtime: making a producer starts its threads (the first
                // probe pays for it, and for the producer's id, within its timeout). Asked through
                // it, the one client writing the canary sees it made again when it was deleted.
                let producer = shared.probe_producer()?;
                metadata::read_partition_counts(producer.client(), Some(&topic), timeout)
            })
            .await?;
            if counts.is_empty() {
                self.shared.partition_counts.forget(canary);
                create_canary(self, canary).await?;
            }
            write_and_read_back(self, region, canary, |record| {
                self.append_canary(canary, record)
            })
            .await
        })
        .await
    }

    /// Appends `record` to the canary topic's one partition through the probe's own producer (see
    /// [`clients::probe_producer`](super::clients::probe_producer)).
    async fn append_canary(&self, canary: &str, record: NewRecord) -> Result<Vec<Appended>> {
        let producer = self.shared.probe_producer()?;
        enqueue(&self.shared, producer, canary, vec![record], vec![0])
            .await?
            .await
    }

    /// Whether every bootstrap broker refuses a connection, each within `timeout`: nothing listens
    /// where the cluster was. The bootstrap list is the brokers an operator names for the cluster
    /// (a broker missing from it is not asked), and a refusal is the only answer that counts: a
    /// timeout or an unresolvable name is a silent cluster, left to the probes' count.
    pub async fn refuses_connections(&self, timeout: Duration) -> bool {
        refused_everywhere(&self.shared.config.bootstrap_servers, timeout).await
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

/// Whether each of `servers` (librdkafka's `bootstrap.servers`: `host:port` or
/// `protocol://host:port`, comma-separated) refuses a TCP connection within `timeout`.
async fn refused_everywhere(servers: &str, timeout: Duration) -> bool {
    let addresses: Vec<&str> = servers
        .split(',')
        .map(|server| {
            let server = server.trim();
            server
                .split_once("://")
                .map_or(server, |(_, address)| address)
        })
        .filter(|server| !server.is_empty())
        .collect();
    if addresses.is_empty() {
        return false;
    }
    let refusals = join_all(addresses.into_iter().map(|address| async move {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Err(error)) => error.kind() == std::io::ErrorKind::ConnectionRefused,
            Ok(Ok(_)) | Err(_) => false,
        }
    }))
    .await;
    refusals.into_iter().all(|refused| refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_refusal_by_every_server_counts() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap();
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let timeout = Duration::from_secs(1);
        assert!(refused_everywhere(&format!("{closed}"), timeout).await);
        assert!(refused_everywhere(&format!("PLAINTEXT://{closed}, {closed}"), timeout).await);
        assert!(!refused_everywhere(&format!("{closed},{open}"), timeout).await);
        assert!(!refused_everywhere(&format!("{open}"), timeout).await);
        assert!(!refused_everywhere("", timeout).await);
    }
}
