//! Session records in the compacted `mqtt.sessions` topic, keyed by client id.
//!
//! A record says which connection owns a client id (the newest record wins, on every replica: see
//! [`crate::takeover`]), whether the session outlives the connection, and, for one that does, its
//! subscriptions and the QoS 2 packet ids the client still has to release, and which principal the
//! session belongs to. A persistent session's
//! read positions are not here: they are the committed offsets of its consumer groups.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use courier_gateway::{
    log::{Log, NewRecord, now_ms},
    readers::table::{Table, Version},
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod owners;

pub use self::owners::SessionOwners;

/// How long a connect waits for the session table to catch up.
const CATCH_UP: Duration = Duration::from_secs(10);

/// What is stored of one client's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The connection that owns the client id (a ULID per connection).
    pub connection: String,
    /// The principal whose session this is: a client id whose live connection or unexpired
    /// session is another principal's is refused. Records written before sessions had owners
    /// have none, and are owned by whoever connects next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The session (a ULID per new session); its consumer groups are named after it.
    pub session: String,
    /// Is the session read through consumer groups of its own, so it can outlive the connection (see
    /// [`SessionRecord::outlives_connection`])?
    pub persistent: bool,
    /// Seconds a persistent session is kept after its client left; `None` forever; `Some(0)` when it
    /// ends with its connection.
    pub expiry_secs: Option<u32>,
    /// When the client left (ms since the epoch); `None` while connected or after a crash.
    /// Left out when `None`, as the QoS 2 ids when there are none: every connected client's record
    /// is in the session table of every replica (and in the log's write buffer), so its size is
    /// memory per client. Readers have always taken a missing field as `None` (and as empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at_ms: Option<i64>,
    /// The session's subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// QoS 2 packet ids received and recorded, waiting for the client's PUBREL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaiting_release: Vec<u16>,
}

impl SessionRecord {
    /// Does the session outlive its connection? A resumed session read through its groups
    /// (`persistent`) whose connection named an expiry of 0 ends with the connection.
    pub fn outlives_connection(&self) -> bool {
        self.persistent && self.expiry_secs != Some(0)
    }

    /// Is this a persistent session still within its expiry?
    pub fn is_resumable(&self, now_ms: i64) -> bool {
        if !self.outlives_connection() {
            return false;
        }
        match (self.disconnected_at_ms, self.expiry_secs) {
            (Some(left), Some(expiry)) => now_ms < left + i64::from(expiry) * 1000,
            _ => true,
        }
    }
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The filter as the client sent it (`$share/...` included).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
    /// MQTT 5 no-local.
    pub no_local: bool,
    /// MQTT 5 retain-as-published.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    pub identifier: Option<usize>,
    /// When it was made (ms since the epoch): partitions without a committed offset start here.
    pub since_ms: i64,
}

/// Reads and writes session records.
#[derive(Debug, Clone)]
pub struct SessionStore {
    log: Arc<dyn Log>,
    topic: String,
    table: Table,
    /// Each principal's sessions, kept by the table's changes (while a cap is set).
    owners: Arc<SessionOwners>,
}

impl SessionStore {
    /// A store over `topic`, read through `table`, which feeds `owners`.
    pub fn new(log: Arc<dyn Log>, topic: String, table: Table, owners: Arc<SessionOwners>) -> Self {
        Self {
            log,
            topic,
            table,
            owners,
        }
    }

    /// Whether `owner` may keep one more session for `client_id` within `cap`: yes when the
    /// client id's session already counts for it (a reconnect), or it has fewer than `cap`.
    /// Counted as far as the table has read (a load catches it up).
    pub fn within_cap(&self, owner: &str, client_id: &str, cap: u64, now_ms: i64) -> bool {
        self.owners.counts_for(owner, client_id, now_ms) || self.owners.count(owner, now_ms) < cap
    }

    /// The latest record of a client, once everything written before the call has been read.
    pub async fn load(&self, client_id: &str) -> Result<Option<SessionRecord>> {
        self.table.caught_up(CATCH_UP).await?;
        self.table
            .get(client_id)
            .and_then(|record| record.value)
            .map(|value| decode(client_id, &value))
            .transpose()
    }

    /// Writes a client's record durably and returns its version, newer than every record of the
    /// client the table held (the takeover fence orders connections by it).
    pub async fn save(&self, client_id: &str, record: &SessionRecord) -> Result<Version> {
        let value = serde_json::to_vec(record).map_err(|error| Error::CorruptSession {
            client_id: client_id.to_owned(),
            detail: error.to_string(),
        })?;
        self.append(client_id, Some(Bytes::from(value))).await
    }

    /// Does a record newer than `mine` (this connection's, written as `mine`) give the client id
    /// to another connection? Asked once the connection is registered: a newer record read before
    /// that found no connection here to take over.
    pub fn superseded(&self, client_id: &str, mine: &Version, connection: &str) -> bool {
        let Some((newest, version)) = self.table.newest(client_id) else {
            return false;
        };
        version.is_newer_than(mine)
            && newest
                .value
                .as_deref()
                .and_then(|value| decode(client_id, value).ok())
                .is_some_and(|record| {
                    record.connection != connection && record.disconnected_at_ms.is_none()
                })
    }

    /// Deletes a client's record (a tombstone, which compaction removes).
    pub async fn delete(&self, client_id: &str) -> Result<Version> {
        self.append(client_id, None).await
    }

    async fn append(&self, client_id: &str, value: Option<Bytes>) -> Result<Version> {
        let record = NewRecord {
            key: Some(Bytes::copy_from_slice(client_id.as_bytes())),
            value,
            timestamp_ms: Some(self.table.next_timestamp(client_id, now_ms())),
            ..NewRecord::default()
        };
        let appended = self.log.append(&self.topic, vec![record]).await?;
        appended
            .first()
            .map(Version::written)
            .ok_or_else(|| Error::CorruptSession {
                client_id: client_id.to_owned(),
                detail: "the log acknowledged no record".into(),
            })
    }
}

/// Decodes a stored session record.
pub fn decode(client_id: &str, value: &[u8]) -> Result<SessionRecord> {
    serde_json::from_slice(value).map_err(|error| Error::CorruptSession {
        client_id: client_id.to_owned(),
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(awaiting_release: Vec<u16>, disconnected_at_ms: Option<i64>) -> SessionRecord {
        SessionRecord {
            connection: "01KBXJ0M2W3Q7E5R8T9Y1U2I3O".into(),
            owner: Some("device-7".into()),
            session: "01KBXJ0M2W3Q7E5R8T9Y1U2I3P".into(),
            persistent: false,
            expiry_secs: Some(0),
            disconnected_at_ms,
            subscriptions: Vec::new(),
            awaiting_release,
        }
    }

    /// A connected client's record leaves out what it does not have, and reads back the same;
    /// records written with every field (by earlier versions) read as before.
    #[test]
    fn a_record_carries_only_what_it_has_and_reads_both_forms() -> Result<()> {
        let record = connected(Vec::new(), None);
        let encoded = serde_json::to_string(&record).expect("a record encodes");
        assert!(!encoded.contains("disconnected_at_ms"), "{encoded}");
        assert!(!encoded.contains("awaiting_release"), "{encoded}");
        assert_eq!(decode("c", encoded.as_bytes())?, record);

        let full = encoded.replace(
            "\"subscriptions\":[]",
            "\"disconnected_at_ms\":null,\"subscriptions\":[],\"awaiting_release\":[]",
        );
        assert_ne!(full, encoded);
        assert_eq!(decode("c", full.as_bytes())?, record);

        let left = connected(vec![3, 4], Some(1_000));
        let encoded = serde_json::to_vec(&left).expect("a record encodes");
        assert_eq!(decode("c", &encoded)?, left);
        Ok(())
    }
}
