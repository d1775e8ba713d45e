//! Retained messages in the compacted `mqtt.retained` topic, keyed by MQTT topic, and what each
//! principal may retain ([`owners`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

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
    /// Their bytes as stored: topic, payload and headers.
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
    /// Whether the table has read the topic through since the start (so the counts are whole).
    replayed: Arc<AtomicBool>,
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
            replayed: Arc::default(),
        }
    }

    /// Whether `owner` may retain `record` (the message's record, from [`mapping::to_record`]) as
    /// `topic`'s retained message: a refusal saying which cap it would pass. Only a count that
    /// grows past its cap refuses, so replacing one's own with one no larger, and deleting one
    /// (an empty payload), always go. Counted as far as this replica's table has read: after a
    /// start, the first call waits for it to read the topic through; after that, what was
    /// retained (or deleted) a moment ago elsewhere may not be counted yet, nor what an
    /// account's connections have in flight.
    pub async fn admit(
        &self,
        owner: &str,
        topic: &str,
        record: &NewRecord,
    ) -> std::result::Result<(), Refusal> {
        if record.value.as_ref().is_none_or(Bytes::is_empty) || !self.caps.any() {
            return Ok(());
        }
        if !self.replayed.load(Ordering::Acquire) {
            match self.table.caught_up(CATCH_UP).await {
                Ok(()) => self.replayed.store(true, Ordering::Release),
                // Counted as far as it got: a slow log must not refuse the publish itself.
                Err(error) => {
                    tracing::debug!(%error, "retained caps checked before the table caught up")
                }
            }
        }
        let bytes = (record.size() + HEADER_OWNER.len() + owner.len()) as u64;
        let (now, after) = self.owners.retaining(owner, topic, bytes);
        let grows_past = |now: u64, after: u64, cap: u64| cap > 0 && after > now && after > cap;
        let passed = if grows_past(now.messages, after.messages, self.caps.messages) {
            Some((
                "max_retained_per_principal",
                self.caps.messages,
                "retained messages",
            ))
        } else if grows_past(now.bytes, after.bytes, self.caps.bytes) {
            Some((
                "max_retained_bytes_per_principal",
                self.caps.bytes,
                "bytes of retained messages",
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
