//! QoS 2 exchanges of persistent sessions that are half done, in the compacted `mqtt.qos2` topic, so
//! they outlive the gateway that began them.
//!
//! MQTT asks the server to keep, with the session, every QoS 2 packet id it acknowledged with PUBREC
//! and has not seen released, and every one it sent PUBREL for and has not seen completed. Kept in the
//! gateway's memory, that state is gone when the gateway crashes or the client reconnects to another
//! replica: a retransmitted PUBLISH is then stored a second time, and a subscriber that delivers at
//! PUBREL (paho does) waits forever for a PUBREL nobody resends.
//!
//! - **Received** (client → gateway). Queued before the message's append, an entry names the record id
//!   (`courier_id`) and timestamp the record will carry; PUBREC waits for both. The entry is deleted
//!   at PUBREL, and PUBCOMP waits for the deletion: after PUBCOMP the client may use the id again.
//!   A gateway that finds an entry it did not write (the client is back after a crash or on another
//!   replica) looks for that record in its partition: found, the packet id awaits release (a
//!   retransmission gets PUBREC and is not stored again); not found, the append never happened and the
//!   entry is dropped (the retransmission is stored).
//! - **Delivered** (gateway → client). At the client's PUBREC an entry naming the record is written
//!   before the record is acknowledged to the log; it is deleted at PUBCOMP. A resumed session sends
//!   PUBREL again for each, and skips the record if its group reads it again (after a crash, the
//!   group's last commit can be older than the PUBREC).
//!
//! Keys are `in/<packet id>/<client id>` and `out/<packet id>/<client id>`: one entry per packet id in
//! use, overwritten when the id is used again.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use courier_gateway::{
    log::{
        AppendReceipt, FetchLimits, Log, NewRecord, Position, TopicPartition, now_ms, partitioner,
    },
    readers::table::Table,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long a connect waits for the table to catch up.
const CATCH_UP: Duration = Duration::from_secs(10);

/// How far past an entry's timestamp its record is looked for. An append that has not landed by then
/// has failed (the Kafka produce timeout is 30 s by default); the rest is room for clock skew between
/// gateways. Records are scanned in offset order, so a record written later but stamped earlier
/// (another gateway's clock) does not end the search.
const SEARCH_WINDOW_MS: i64 = 120_000;

/// Most records looked at in one search. Past it the record counts as not found: the message is
/// stored again, a duplicate rather than a loss.
const SEARCH_LIMIT: usize = 200_000;

/// Which way a QoS 2 message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Published by the client.
    In,
    /// Delivered to the client.
    Out,
}

impl Direction {
    fn prefix(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// A message the client published at QoS 2: the record it is (or was being) appended as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The session (ULID) it belongs to.
    pub session: String,
    /// The record's id.
    pub courier_id: String,
    /// The record's timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// The Kafka topic it went to.
    pub kafka_topic: String,
    /// The record's key (the MQTT topic), which chose its partition.
    pub key: String,
}

/// A message delivered at QoS 2 and acknowledged by the client with PUBREC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The session (ULID) it belongs to.
    pub session: String,
    /// The record it was. After a crash its group may not have committed past it yet; a resumed
    /// session that reads it again does not deliver it again.
    #[serde(default)]
    pub record: Option<RecordAt>,
}

/// Which record a delivery was: Kafka topic, partition, offset where it was read, and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordAt {
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record's `courier-id`, which its copy in another region's mirror keeps (its topic and
    /// offset there differ). Entries written before it was recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub courier_id: Option<String>,
}

/// What is stored under one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Received(Received),
    Delivered(Delivered),
}

/// The half-done exchanges of one client, as found at connect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// Published by the client, maybe appended, not released.
    pub received: Vec<(u16, Received)>,
    /// Delivered, PUBREC seen, PUBCOMP not seen.
    pub delivered: Vec<(u16, Delivered)>,
}

/// Reads and writes QoS 2 exchange entries.
#[derive(Debug, Clone)]
pub struct ExchangeStore {
    log: Arc<dyn Log>,
    topic: String,
    table: Table,
}

impl ExchangeStore {
    /// A store over `topic`, read through `table`.
    pub fn new(log: Arc<dyn Log>, topic: String, table: Table) -> Self {
        Self { log, topic, table }
    }

    /// Queues the entry saying the client's message `pkid` is appended as `received`; the receipt
    /// says when it is durable. Queued before the message's own append, it is normally durable first;
    /// if a crash lands between the two, the message can be stored twice, never lost.
    pub async fn received(
        &self,
        client_id: &str,
        pkid: u16,
        received: Received,
    ) -> Result<AppendReceipt> {
        let entry = Entry::Received(received);
        self.queue(client_id, Direction::In, pkid, Some(&entry))
            .await
    }

    /// Queues the entry saying the client acknowledged delivered message `pkid` with PUBREC; the
    /// receipt says when it is durable.
    pub async fn delivered(
        &self,
        client_id: &str,
        pkid: u16,
        session: &str,
        record: Option<RecordAt>,
    ) -> Result<AppendReceipt> {
        let entry = Entry::Delivered(Delivered {
            session: session.to_owned(),
            record,
        });
        self.queue(client_id, Direction::Out, pkid, Some(&entry))
            .await
    }

    /// Deletes an entry, durably: the exchange is over.
    pub async fn finished(&self, client_id: &str, direction: Direction, pkid: u16) -> Result<()> {
        self.finish(client_id, direction, pkid).await?.await?;
        Ok(())
    }

    /// Queues the deletion of an entry; the receipt says when it is durable.
    pub async fn finish(
        &self,
        client_id: &str,
        direction: Direction,
        pkid: u16,
    ) -> Result<AppendReceipt> {
        self.queue(client_id, direction, pkid, None).await
    }

    /// Every entry of a client, once everything written before the call has been read.
    pub async fn unfinished(&self, client_id: &str) -> Result<Unfinished> {
        self.table.caught_up(CATCH_UP).await?;
        let mut unfinished = Unfinished::default();
        for record in self.table.matching(|key| is_client_key(key, client_id)) {
            let (Some(key), Some(value)) = (&record.key, &record.value) else {
                continue;
            };
            let Some(pkid) = std::str::from_utf8(key).ok().and_then(packet_id) else {
                continue;
            };
            match serde_json::from_slice(value) {
                Ok(Entry::Received(received)) => unfinished.received.push((pkid, received)),
                Ok(Entry::Delivered(delivered)) => unfinished.delivered.push((pkid, delivered)),
                Err(error) => {
                    tracing::warn!(%error, client_id, pkid, "skipping a corrupt QoS 2 entry")
                }
            }
        }
        unfinished.received.sort_by_key(|(pkid, _)| *pkid);
        unfinished.delivered.sort_by_key(|(pkid, _)| *pkid);
        Ok(unfinished)
    }

    /// Was the message of `received` appended? Looks for its record id from its timestamp on, in the
    /// partition its key maps to, in its topic and (under region routing) the topic's mirrors: a
    /// message appended in a region that was lost since is in that region's mirror here.
    pub async fn was_appended(&self, received: &Received) -> Result<bool> {
        for topic in self.log.copies_of(&received.kafka_topic).await? {
            if self.appended_in(&topic, received).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Is the record of `received` in `topic` (its Kafka topic, or a mirror of it)?
    async fn appended_in(&self, topic: &str, received: &Received) -> Result<bool> {
        let description = self.log.describe_topic(topic).await?;
        let count = u32::try_from(description.partitions.len()).unwrap_or(u32::MAX);
        let partition = TopicPartition::new(
            topic,
            partitioner::partition_for_key(received.key.as_bytes(), count),
        );
        let mut offset = self
            .log
            .resolve(&partition, Position::Timestamp(received.timestamp_ms))
            .await?;
        let mut seen = 0;
        while seen < SEARCH_LIMIT {
            let page = self
                .log
                .fetch(&partition, offset, FetchLimits::default())
                .await?;
            let Some(last) = page.records.last() else {
                return Ok(false);
            };
            offset = last.offset + 1;
            seen += page.records.len();
            for record in &page.records {
                if record.courier_id == received.courier_id {
                    return Ok(true);
                }
                if record.timestamp_ms > received.timestamp_ms + SEARCH_WINDOW_MS {
                    return Ok(false);
                }
            }
        }
        tracing::warn!(
            %partition,
            courier_id = received.courier_id,
            "gave up looking for a QoS 2 record; it will be stored again if it is sent again"
        );
        Ok(false)
    }

    /// Queues an entry (`None`: its deletion); the receipt says when it is durable.
    async fn queue(
        &self,
        client_id: &str,
        direction: Direction,
        pkid: u16,
        entry: Option<&Entry>,
    ) -> Result<AppendReceipt> {
        let record = self.record(client_id, direction, pkid, entry)?;
        Ok(self.log.submit(&self.topic, vec![record]).await?)
    }

    /// The record of an entry (`None`: its deletion).
    fn record(
        &self,
        client_id: &str,
        direction: Direction,
        pkid: u16,
        entry: Option<&Entry>,
    ) -> Result<NewRecord> {
        let value =
            entry
                .map(serde_json::to_vec)
                .transpose()
                .map_err(|error| Error::CorruptSession {
                    client_id: client_id.to_owned(),
                    detail: error.to_string(),
                })?;
        let key = key(client_id, direction, pkid);
        Ok(NewRecord {
            // The version of the entry: past the one it replaces (see `Table::next_timestamp`).
            timestamp_ms: Some(self.table.next_timestamp(&key, now_ms())),
            key: Some(Bytes::from(key)),
            value: value.map(Bytes::from),
            ..NewRecord::default()
        })
    }
}

fn key(client_id: &str, direction: Direction, pkid: u16) -> String {
    format!("{}/{pkid}/{client_id}", direction.prefix())
}

/// Is `key` one of `client_id`'s? Client ids may hold `/`, so the id is what follows the second one.
fn is_client_key(key: &str, client_id: &str) -> bool {
    let mut parts = key.splitn(3, '/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some("in" | "out"), Some(_), Some(id)) if id == client_id
    )
}

/// The packet id in a key.
fn packet_id(key: &str) -> Option<u16> {
    key.split('/').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_direction_packet_id_and_client() {
        let key = key("site/7/sensor", Direction::Out, 513);
        assert_eq!(key, "out/513/site/7/sensor");
        assert!(is_client_key(&key, "site/7/sensor"));
        assert!(!is_client_key(&key, "site/7"));
        assert!(!is_client_key(&key, "7/sensor"));
        assert_eq!(packet_id(&key), Some(513));
        assert!(!is_client_key("retained/1/site/7/sensor", "site/7/sensor"));
    }

    /// A store over an embedded log in `dir`, with a one-partition `messages` topic.
    async fn store(dir: &std::path::Path) -> Result<(Arc<dyn Log>, ExchangeStore)> {
        use courier_gateway::log::TopicSpec;
        let log = courier_gateway::testing::embedded(dir).await?;
        log.create_topic(TopicSpec::named("exchanges").compacted())
            .await?;
        log.create_topic(TopicSpec::named("messages").partitions(3))
            .await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let table = Table::start(
            log.clone(),
            "mqtt",
            "exchanges",
            Box::new(|_, _, _| {}),
            cancel,
        )
        .await?;
        Ok((
            log.clone(),
            ExchangeStore::new(log, "exchanges".into(), table),
        ))
    }

    fn received(courier_id: &str, timestamp_ms: i64) -> Received {
        Received {
            session: "s".into(),
            courier_id: courier_id.into(),
            timestamp_ms,
            kafka_topic: "messages".into(),
            key: "site/1/temperature".into(),
        }
    }

    /// A record is found by its id in the partition its key maps to, from its timestamp on; one that
    /// was never appended is not, whatever else the partition holds.
    #[tokio::test]
    async fn an_appended_record_is_found_and_a_missing_one_is_not() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (log, store) = store(dir.path()).await?;
        let at = 1_700_000_000_000;
        let ids: Vec<String> = (0..50).map(|_| ulid::Ulid::new().to_string()).collect();
        let records = (0..50)
            .map(|i| NewRecord {
                key: Some(Bytes::from_static(b"site/1/temperature")),
                value: Some(Bytes::from(format!("reading {i}"))),
                timestamp_ms: Some(at - 1000 + i * 100),
                courier_id: ids[i as usize].clone(),
                ..NewRecord::default()
            })
            .collect();
        log.append("messages", records).await?;
        assert!(store.was_appended(&received(&ids[30], at + 2000)).await?);
        let never_appended = ulid::Ulid::new().to_string();
        assert!(!store.was_appended(&received(&never_appended, at)).await?);
        assert!(
            !store.was_appended(&received(&ids[5], at)).await?,
            "a record older than the entry is not the entry's"
        );
        Ok(())
    }

    /// Entries of a client are listed by direction and packet id, and a finished one is gone.
    #[tokio::test]
    async fn unfinished_lists_a_clients_entries() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (_log, store) = store(dir.path()).await?;
        store.received("a/b", 9, received("x", 1)).await?.await?;
        store.received("a/b", 3, received("y", 2)).await?.await?;
        let at = RecordAt {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            courier_id: Some("01JX".into()),
        };
        store
            .delivered("a/b", 4, "s", Some(at.clone()))
            .await?
            .await?;
        store.delivered("a", 5, "s", None).await?.await?;
        store.finished("a/b", Direction::In, 9).await?;
        let unfinished = store.unfinished("a/b").await?;
        assert_eq!(unfinished.received, vec![(3, received("y", 2))]);
        assert_eq!(
            unfinished.delivered,
            vec![(
                4,
                Delivered {
                    session: "s".into(),
                    record: Some(at)
                }
            )]
        );
        Ok(())
    }

    #[test]
    fn entries_round_trip_as_json() -> Result<(), serde_json::Error> {
        let entry = Entry::Received(Received {
            session: "01J".into(),
            courier_id: "01K".into(),
            timestamp_ms: 5,
            kafka_topic: "mqtt.messages".into(),
            key: "a/b".into(),
        });
        let text = serde_json::to_string(&entry)?;
        assert!(text.starts_with(r#"{"received":"#), "{text}");
        assert_eq!(serde_json::from_str::<Entry>(&text)?, entry);
        Ok(())
    }
}
