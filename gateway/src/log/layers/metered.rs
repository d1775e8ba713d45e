//! The metrics layer: what a front end's clients produce, counted under the front end's protocol
//! ([`metrics`](crate::metrics)): records and bytes in once the log acknowledged them, the produce
//! latency from the submit to the acknowledgement, and a refusal by its kind.
//!
//! Each front end wraps the shared stack in its own `Metered` for its clients' requests, and uses
//! the unwrapped log for the gateway's own records (MQTT sessions, retained messages and QoS 2
//! exchanges, AMQP dead letters), which are not messages in. Outermost, so a refusal by any layer
//! counts, and the latency includes everything the request waited for.
//!
//! What goes out is counted by the front ends: only they know which records reached a client (an
//! MQTT connection acknowledges at once a record no filter of its wants) and which the client
//! acknowledged.

use async_trait::async_trait;

use super::{Layer, Layered};
use crate::{
    Result,
    log::{AppendReceipt, Log, NewRecord},
    metrics::{ProduceTimer, Protocol},
};

/// Counts produces through the log under it as `protocol`'s.
#[derive(Debug, Clone)]
pub struct Metering {
    protocol: Protocol,
}

/// A log whose produces are counted as one protocol's clients'.
pub type Metered<L> = Layered<Metering, L>;

impl<L> Metered<L> {
    /// `inner`, with what goes through it counted as `protocol`'s clients'.
    pub fn new(inner: L, protocol: Protocol) -> Self {
        Layered::over(Metering { protocol }, inner)
    }
}

#[async_trait]
impl Layer for Metering {
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        let timer = ProduceTimer::start(self.protocol, &records);
        match inner.submit(topic, records).await {
            Ok(receipt) => Ok(Box::pin(async move {
                let outcome = receipt.await;
                timer.finish(&outcome);
                outcome
            })),
            Err(error) => {
                timer.failed(&error);
                Err(error)
            }
        }
    }
}
