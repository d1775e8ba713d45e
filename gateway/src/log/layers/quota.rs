//! The quota layer: what one connection's (or call's) principal sends and is delivered, held to its
//! quotas ([`limits::Quotas`](crate::limits::Quotas)).
//!
//! A produce takes its records and bytes from the principal's buckets before it is queued: with
//! `over_quota = "slow"` it waits, and since every front end submits in order before it reads
//! further, the wait reaches the client as its protocol's backpressure (MQTT stops reading the
//! socket, AMQP credit is not given back, a gRPC stream stops being read and HTTP/2 flow control
//! holds the client); with `"refuse"` it fails with
//! [`Error::QuotaExceeded`](crate::Error::QuotaExceeded), which each front end
//! answers in its protocol. Deliveries are only ever slowed: a fetch's records, and a
//! subscription's on their way to the front end (a task per subscription, only when a delivery
//! quota applies), and the backend's in-flight window bounds what waits there.
//!
//! Per connection, added by the front end behind [`Authorized`](super::Authorized), so refused
//! requests take nothing from the quota, and in front of [`Metered`](super::Metered), so the
//! produce latency it measures is the log's, not the quota's wait.

use async_trait::async_trait;

use super::{Layer, Layered};
use crate::{
    Result,
    limits::Usage,
    log::{
        AppendReceipt, FetchLimits, Fetched, Log, NewRecord, Record, SubscribeOptions,
        Subscription, SubscriptionEvent, TopicPartition, events,
    },
};

/// Holds a connection's requests to its principal's quotas.
#[derive(Debug, Clone)]
pub struct Quota {
    usage: Usage,
}

/// A log whose produces and deliveries are held to one principal's quotas.
pub type Quoted<L> = Layered<Quota, L>;

impl<L> Quoted<L> {
    /// `inner`, with what goes through it held to `usage`'s quotas.
    pub fn new(inner: L, usage: Usage) -> Self {
        Layered::over(Quota { usage }, inner)
    }
}

#[async_trait]
impl Layer for Quota {
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        let bytes: usize = records.iter().map(NewRecord::size).sum();
        self.usage
            .take_in(records.len() as u64, bytes as u64)
            .await?;
        inner.submit(topic, records).await
    }

    async fn subscribe(&self, inner: &dyn Log, options: SubscribeOptions) -> Result<Subscription> {
        let window = options.max_in_flight;
        let subscription = inner.subscribe(options).await?;
        Ok(paced_deliveries(subscription, &self.usage, window))
    }

    /// A fetch is a delivery too: what it returns is paced like a subscription's records.
    async fn fetch(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        let fetched = inner.fetch(partition, offset, limits).await?;
        if self.usage.limits_out() {
            let bytes: usize = fetched.records.iter().map(Record::size).sum();
            self.usage
                .take_out(fetched.records.len() as u64, bytes as u64)
                .await;
        }
        Ok(fetched)
    }
}

/// `subscription`, its records delivered no faster than `usage`'s delivery quotas allow
/// (`subscription` itself when no delivery quota applies). For readers that do not go through a
/// [`Quoted`] log: the gateway's shared fan-out readers, whose members each pace their own
/// deliveries. At most `window` records wait in the paced queue (the subscriber's in-flight
/// window); behind it, a backend subscription holds at most its own window, and a fan-out member
/// up to the hub's lag limit, past which the hub detaches it to read on alone.
pub fn paced_deliveries(subscription: Subscription, usage: &Usage, window: usize) -> Subscription {
    if !usage.limits_out() {
        return subscription;
    }
    let Subscription {
        mut events,
        control,
    } = subscription;
    // The paced queue is bounded as the backend's is: records move on only while it has room.
    let (paced, receiver) = events::channel(window);
    let usage = usage.clone();
    // Every wait also watches the front end's end: a subscription dropped without being closed
    // must let go of the backend's at once (the router leaves a group when its forwarder ends),
    // not at the next record.
    tokio::spawn(async move {
        let forwarding = async {
            while let Some(event) = events.recv().await {
                if let SubscriptionEvent::Records(records) = &event {
                    let bytes: usize = records.iter().map(Record::size).sum();
                    usage.take_out(records.len() as u64, bytes as u64).await;
                    while paced.room() < records.len().min(window) {
                        paced.taken().await;
                    }
                }
                if paced.send(event).is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            () = forwarding => {}
            () = paced.closed() => {}
        }
    });
    Subscription {
        events: receiver,
        control,
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{
        Error,
        limits::{OverQuota, QuotaConfig, QuotaKey, QuotaRates, QuotaRules, Quotas},
        log::{AckOutcome, Position, TopicSelector},
        metrics::Protocol,
        testing,
    };

    fn quotas(over_quota: OverQuota, rates: QuotaRates) -> Arc<Quotas> {
        Quotas::new(&QuotaConfig {
            over_quota,
            grpc: rates,
            ..QuotaConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_produce_over_the_quota_is_refused_or_waits() {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        let rates = QuotaRates {
            messages_in_per_second: 2,
            ..QuotaRates::default()
        };
        let refusing = quotas(OverQuota::Refuse, rates);
        let usage = refusing
            .usage(
                QuotaKey::Principal("p".into()),
                Protocol::Grpc,
                &QuotaRules::default(),
            )
            .unwrap();
        let quoted = Quoted::new(log.clone(), usage);
        let two = vec![NewRecord::with_value("a"), NewRecord::with_value("b")];
        // The receipt is awaited after the next submit: waiting for the disk lets paused time run.
        let receipt = quoted.submit("t", two).await.unwrap();
        let refused = quoted.submit("t", vec![NewRecord::with_value("c")]).await;
        assert!(matches!(refused, Err(Error::QuotaExceeded { .. })));
        receipt.await.unwrap();

        let slowing = quotas(OverQuota::Slow, rates);
        let usage = slowing
            .usage(
                QuotaKey::Principal("p".into()),
                Protocol::Grpc,
                &QuotaRules::default(),
            )
            .unwrap();
        let quoted = Quoted::new(log.clone(), usage);
        let start = tokio::time::Instant::now();
        for value in 0..6 {
            let record = NewRecord::with_value(format!("{value}"));
            quoted
                .submit("t", vec![record])
                .await
                .unwrap()
                .await
                .unwrap();
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deliveries_over_the_quota_are_paced_and_all_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        for value in 0..10 {
            let record = NewRecord::with_value(format!("{value}"));
            log.submit("paced", vec![record])
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let quotas = quotas(
            OverQuota::Slow,
            QuotaRates {
                messages_out_per_second: 5,
                ..QuotaRates::default()
            },
        );
        let usage = quotas
            .usage(
                QuotaKey::Principal("p".into()),
                Protocol::Grpc,
                &QuotaRules::default(),
            )
            .unwrap();
        let quoted = Quoted::new(log.clone(), usage);
        let mut subscription = quoted
            .subscribe(SubscribeOptions {
                topics: TopicSelector::Names(vec!["paced".into()]),
                group: None,
                start: Position::Earliest,
                max_in_flight: 100,
                client: "test".into(),
                protocol: "grpc",
            })
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        let mut received = 0;
        while received < 10 {
            let event = tokio::time::timeout(Duration::from_secs(60), subscription.next_event())
                .await
                .unwrap()
                .unwrap();
            if let SubscriptionEvent::Records(records) = event {
                for record in &records {
                    assert_eq!(
                        subscription
                            .control
                            .ack(&record.topic_partition(), record.offset),
                        AckOutcome::Acked
                    );
                }
                received += records.len();
            }
        }
        assert_eq!(received, 10);
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
    }
}
