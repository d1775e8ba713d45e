//! Writes through the router: to the region writes go to, and, when that region is lost before it
//! acknowledged them, again to the region writes moved to, with the same `courier-id`s. The client
//! sees one acknowledgement, from whichever region stored the records durably.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::{shared::Shared, steer};
use crate::{
    Error, Result,
    log::{AppendReceipt, Appended, Log, NewRecord},
};

/// Queues records in the write region; the receipt follows them to another region if need be.
pub(super) async fn submit(
    shared: &Arc<Shared>,
    topic: &str,
    mut records: Vec<NewRecord>,
) -> Result<AppendReceipt> {
    // Ids now, so a resend to another region carries the same ones.
    for record in &mut records {
        if record.courier_id.is_empty() {
            record.courier_id = ulid::Ulid::new().to_string();
        }
    }
    // A planned switch holds writes until the target region has copied what was acknowledged.
    let (writes, region, in_flight) = loop {
        shared.ledger.admit().await;
        let mut writes = shared.writes.subscribe();
        let region = *writes.borrow_and_update();
        if let Some(in_flight) = shared.ledger.queued(region) {
            break (writes, region, in_flight);
        }
    };
    let receipt = shared.regions[region]
        .log()
        .submit(topic, records.clone())
        .await?;
    let pending = Pending {
        shared: shared.clone(),
        topic: topic.to_owned(),
        records,
        region,
        writes,
    };
    // Settled on a task of its own, not when the client polls its receipt: a front end blocked on
    // its next (held) write must not keep a planned switch from seeing this one acknowledged, and
    // a resend after a region's loss should not wait for the client either.
    let (settled, outcome) = oneshot::channel();
    shared.tasks.spawn(async move {
        let _ = settled.send(pending.settle(receipt).await);
        drop(in_flight);
    });
    Ok(Box::pin(async move {
        outcome.await.unwrap_or_else(|_| {
            Err(Error::RegionUnavailable {
                region: "(router)".into(),
                reason: "the write's task ended without an outcome".into(),
            })
        })
    }))
}

/// Records queued in a region and not yet acknowledged.
struct Pending {
    shared: Arc<Shared>,
    topic: String,
    records: Vec<NewRecord>,
    region: usize,
    writes: watch::Receiver<usize>,
}

impl Pending {
    async fn settle(mut self, mut receipt: AppendReceipt) -> Result<Vec<Appended>> {
        let mut watching = true;
        loop {
            tokio::select! {
                result = &mut receipt => match result {
                    Ok(appended) => {
                        self.shared.ledger.acknowledged(self.region, &self.topic, &appended);
                        return Ok(appended);
                    }
                    Err(error) if error.is_retryable() => {
                        steer::report_failure(&self.shared, self.region, error.to_string());
                        if *self.writes.borrow() == self.region {
                            return Err(error);
                        }
                        receipt = self.resend().await?;
                    }
                    Err(error) => return Err(error),
                },
                changed = self.writes.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let now = *self.writes.borrow_and_update();
                    // Writes also move on fail-back and by an operator's order; records queued in a
                    // region that still answers are acknowledged there.
                    if now != self.region && !self.shared.health(self.region).usable() {
                        receipt = self.resend().await?;
                    }
                }
            }
        }
    }

    /// Queues the records again in the region writes go to now.
    async fn resend(&mut self) -> Result<AppendReceipt> {
        let to = *self.writes.borrow();
        tracing::info!(
            topic = %self.topic,
            records = self.records.len(),
            from = %self.shared.regions[self.region].name,
            to = %self.shared.regions[to].name,
            "resending records the lost region had not acknowledged"
        );
        self.region = to;
        self.shared.regions[to]
            .log()
            .submit(&self.topic, self.records.clone())
            .await
    }
}
