//! Writes through the router: to the region writes go to, and, when that region is lost before it
//! acknowledged them, again to the region writes moved to, with the same `courier-id`s. The client
//! sees one acknowledgement, from whichever region stored the records durably.

use std::sync::Arc;

use tokio::sync::watch;

use super::{shared::Shared, steer};
use crate::{
    Result,
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
    let mut writes = shared.writes.subscribe();
    let region = *writes.borrow_and_update();
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
    Ok(Box::pin(pending.settle(receipt)))
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
                    Ok(appended) => return Ok(appended),
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
