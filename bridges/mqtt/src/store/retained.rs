//! Retained messages in the compacted `mqtt.retained` topic, keyed by MQTT topic.

use std::{sync::Arc, time::Duration};

use courier_gateway::{
    log::{AppendReceipt, Log, NewRecord, now_ms},
    readers::table::Table,
};

use crate::{
    error::Result,
    mapping::{self, Stored},
};

/// How long a subscribe waits for the retained table to catch up.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Stores and finds retained messages.
#[derive(Debug, Clone)]
pub struct RetainedStore {
    log: Arc<dyn Log>,
    topic: String,
    table: Table,
}

impl RetainedStore {
    /// A store over `topic`, read through `table`.
    pub fn new(log: Arc<dyn Log>, topic: String, table: Table) -> Self {
        Self { log, topic, table }
    }

    /// Queues a message's record (from [`mapping::to_record`]) as its topic's retained message; an
    /// empty payload deletes it. Its timestamp is its version: past the retained message it
    /// replaces, which it must win over in every region's copy.
    pub async fn submit(&self, record: NewRecord) -> courier_gateway::Result<AppendReceipt> {
        let mut record = mapping::as_retained(record);
        if let Some(topic) = record
            .key
            .as_deref()
            .and_then(|key| std::str::from_utf8(key).ok())
        {
            let written = record.timestamp_ms.unwrap_or_else(now_ms);
            record.timestamp_ms = Some(self.table.next_timestamp(topic, written));
        }
        self.log.submit(&self.topic, vec![record]).await
    }

    /// The retained messages whose topics match `filter`, once everything retained before the call has
    /// been read. Expired messages are left out.
    pub async fn matching(&self, filter: &str, now_ms: i64) -> Result<Vec<Stored>> {
        self.table.caught_up(CATCH_UP).await?;
        Ok(self
            .table
            .matching(|topic| mapping::matches(filter, topic))
            .iter()
            .filter_map(|record| mapping::from_record(record, now_ms))
            .collect())
    }
}
