//! Retained messages in the compacted `mqtt.retained` topic, keyed by MQTT topic, and what each
//! principal may retain ([`owners`]).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use courier_gateway::{
    log::{AppendReceipt, Header, Log, NewRecord, now_ms},
    metrics::{self, Protocol},
    readers::table::Table,
};

use crate::{
    error::{Refusal, RefusalCode, Result},
    mapping::{self, HEADER_OWNER, Stored},
};

mod owners;

pub use self::owners::{Retained, RetainedOwners};

/// What one principal may retain; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedCaps {
    /// Retained messages.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

impl RetainedCaps {
    /// Whether any cap is set (else nobody's retained messages are counted).
    pub fn any(self) -> bool {
        self.messages > 0 || self.bytes > 0
    }
}

/// How long a subscribe waits for the retained table to catch up.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Stores and finds retained messages.
#[derive(Debug, Clone)]
pub struct RetainedStore {
    log: Arc<dyn Log>,
    topic: String,
    table: Table,
    caps: RetainedCaps,
    /// What each account retains, kept by the table's changes; fed only while a cap is set.
    owners: Arc<RetainedOwners>,
}

impl RetainedStore {
    /// A store over `topic`, read through `table`, which feeds `owners`; each account is held to
    /// `caps`.
    pub fn new(
        log: Arc<dyn Log>,
        topic: String,
        table: Table,
        caps: RetainedCaps,
        owners: Arc<RetainedOwners>,
    ) -> Self {
        Self {
            log,
            topic,
            table,
            caps,
            owners,
        }
    }

    /// Whether `owner` may retain `bytes` of payload on `topic`: a refusal saying which cap it
    /// would pass. Replacing one's own retained message counts its bytes only; deleting one
    /// (`bytes` 0 is a deletion) is always allowed. Publishes in flight are not yet counted, so
    /// an account may pass a cap by what its connections have in flight.
    pub fn admit(&self, owner: &str, topic: &str, bytes: u64) -> std::result::Result<(), Refusal> {
        if bytes == 0 || !self.caps.any() {
            return Ok(());
        }
        let after = self.owners.after_retaining(owner, topic, bytes);
        let passed = if self.caps.messages > 0 && after.messages > self.caps.messages {
            Some((
                "max_retained_per_principal",
                self.caps.messages,
                "retained messages",
            ))
        } else if self.caps.bytes > 0 && after.bytes > self.caps.bytes {
            Some((
                "max_retained_bytes_per_principal",
                self.caps.bytes,
                "bytes of retained payloads",
            ))
        } else {
            None
        };
        match passed {
            None => Ok(()),
            Some((key, cap, what)) => {
                metrics::limit_refused(Protocol::Mqtt, key);
                Err(Refusal::new(
                    RefusalCode::QuotaExceeded,
                    format!(
                        "{owner} may retain at most {cap} {what} (mqtt.{key}); delete one (an \
                         empty retained message) or publish without retain"
                    ),
                ))
            }
        }
    }

    /// Queues a message's record (from [`mapping::to_record`]) as its topic's retained message,
    /// retained by `owner` (see [`RetainedStore::admit`]); an empty payload deletes it. Its
    /// timestamp is its version: past the retained message it replaces, which it must win over
    /// in every region's copy.
    pub async fn submit(
        &self,
        record: NewRecord,
        owner: &str,
    ) -> courier_gateway::Result<AppendReceipt> {
        let mut record = mapping::as_retained(record);
        if record.value.is_some() {
            record.headers.push(Header {
                key: HEADER_OWNER.into(),
                value: Bytes::copy_from_slice(owner.as_bytes()),
            });
        }
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
