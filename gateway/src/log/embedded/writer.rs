//! The single writer of the embedded log, with group commit.
//!
//! One thread owns every mutation of record data: it takes the first queued operation, gathers whatever
//! else is already queued (up to `group_commit_bytes`), writes it all as one atomic fjall batch, syncs
//! once (with `fsync = "always"`), and only then raises the high watermarks and answers every append in
//! the group. While one group syncs the next one queues up, so the cost of a sync is shared by everyone
//! who arrived during it. Retention runs on the same thread, so offsets and byte counts have one owner.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    thread,
};

use fjall::{Database, Keyspace, PersistMode};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    store::{self, StoredRecord},
    topics::{Topic, Topics},
};
use crate::{
    Error, Result,
    config::FsyncPolicy,
    log::{AppendReceipt, Appended, NewRecord, now_ms},
};

/// Appends that may queue for the writer before producers wait: bounds memory when the disk is slow.
const QUEUE_DEPTH: usize = 4096;

/// Records waiting for the next group commit, each with its chosen partition.
#[derive(Debug)]
struct PendingAppend {
    topic: Arc<Topic>,
    records: Vec<(usize, NewRecord)>,
    reply: oneshot::Sender<Result<Vec<Appended>>>,
}

/// Work for the writer thread.
#[derive(Debug)]
enum WriteOp {
    Append(PendingAppend),
    EnforceRetention { reply: oneshot::Sender<Result<()>> },
    Shutdown { reply: oneshot::Sender<Result<()>> },
}

/// Sends work to the writer thread. Cloned by everyone who writes.
#[derive(Debug, Clone)]
pub(super) struct WriterHandle {
    queue: mpsc::Sender<WriteOp>,
}

impl WriterHandle {
    /// Queues records (each with its chosen partition) in call order; the receipt resolves once they
    /// are durable.
    pub(super) async fn submit(
        &self,
        topic: Arc<Topic>,
        records: Vec<(usize, NewRecord)>,
    ) -> Result<AppendReceipt> {
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::Append(PendingAppend {
            topic,
            records,
            reply,
        }))
        .await?;
        Ok(Box::pin(async move {
            answer.await.map_err(|_| Error::ShuttingDown)?
        }))
    }

    /// Drops records past their topic's retention; resolves once done.
    pub(super) async fn enforce_retention(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::EnforceRetention { reply }).await?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Finishes queued work, syncs, and stops the thread.
    pub(super) async fn shutdown(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.send(WriteOp::Shutdown { reply }).await.is_err() {
            return Ok(()); // already stopped
        }
        answer.await.unwrap_or(Ok(()))
    }

    async fn send(&self, op: WriteOp) -> Result<()> {
        self.queue.send(op).await.map_err(|_| Error::ShuttingDown)
    }
}

/// What the writer thread owns.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) meta: Keyspace,
    pub(super) topics: Arc<Topics>,
    pub(super) fsync: FsyncPolicy,
    pub(super) group_commit_bytes: usize,
    /// Written into every record as `courier-origin`.
    pub(super) origin: String,
    /// Bumped after every durable group, to wake readers.
    pub(super) appended: watch::Sender<u64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("fsync", &self.fsync)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread.
    pub(super) fn spawn(self) -> Result<(WriterHandle, thread::JoinHandle<()>)> {
        let (queue, ops) = mpsc::channel(QUEUE_DEPTH);
        let thread = thread::Builder::new()
            .name("courier-log-writer".into())
            .spawn(move || self.run(ops))
            .map_err(|source| Error::Io {
                context: "starting the log writer thread",
                source,
            })?;
        Ok((WriterHandle { queue }, thread))
    }

    fn run(self, mut ops: mpsc::Receiver<WriteOp>) {
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(first) = ops.blocking_recv() else {
                break;
            };
            let mut appends = Vec::new();
            let mut retention = Vec::new();
            let mut gathered = 0usize;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    WriteOp::Append(append) => {
                        gathered += append
                            .records
                            .iter()
                            .map(|(_, record)| record.size() + 64)
                            .sum::<usize>();
                        appends.push(append);
                    }
                    WriteOp::EnforceRetention { reply } => retention.push(reply),
                    WriteOp::Shutdown { reply } => {
                        shutdown = Some(reply);
                        break;
                    }
                }
                if gathered < self.group_commit_bytes {
                    next = ops.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit_group(appends);
            }
            if !retention.is_empty() {
                let result = self.enforce_retention();
                for reply in retention {
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(clone_error));
                }
            }
        }
        let result = self
            .db
            .persist(PersistMode::SyncAll)
            .map_err(Error::storage("syncing the log at shutdown"));
        if let Some(reply) = shutdown {
            let _ = reply.send(result);
        }
    }

    /// Writes a group of appends as one batch and answers each.
    fn commit_group(&self, appends: Vec<PendingAppend>) {
        let now = now_ms();
        let mut batch = self.db.batch();
        let mut partitions = Staged::new();
        let mut answers = Vec::with_capacity(appends.len());
        for PendingAppend {
            topic,
            records,
            reply,
        } in appends
        {
            if topic.deleted.load(Ordering::Acquire) {
                let _ = reply.send(Err(Error::UnknownTopic {
                    topic: topic.name.to_string(),
                }));
                continue;
            }
            match self.encode(records, now) {
                Ok(encoded) => {
                    let acks = partitions.stage(&mut batch, &topic, encoded);
                    answers.push((reply, acks));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        if answers.is_empty() {
            return;
        }
        for ((topic_id, partition), (_, _, size)) in &partitions.0 {
            batch.insert(
                &self.meta,
                store::size_key(*topic_id, *partition),
                size.to_be_bytes(),
            );
        }
        match self.make_durable(batch) {
            Ok(()) => {
                // Only now may readers see the records: raise the watermarks, then wake them.
                partitions.publish();
                self.appended
                    .send_modify(|sequence| *sequence = sequence.wrapping_add(1));
                for (reply, acks) in answers {
                    let _ = reply.send(Ok(acks));
                }
            }
            Err(error) => {
                tracing::error!(%error, "group commit failed; its appends are answered with the error");
                for (reply, _) in answers {
                    let _ = reply.send(Err(clone_error(&error)));
                }
            }
        }
    }

    /// One append's records as stored: the partition chosen, and the encoded record.
    fn encode(&self, records: Vec<(usize, NewRecord)>, now: i64) -> Result<Vec<Encoded>> {
        records
            .into_iter()
            .map(|(partition, record)| {
                let stored = StoredRecord {
                    timestamp_ms: record.timestamp_ms.unwrap_or(now),
                    key: record.key,
                    value: record.value,
                    headers: record
                        .headers
                        .into_iter()
                        .map(|h| (h.key, h.value))
                        .collect(),
                    courier_id: record.courier_id,
                    origin: self.origin.clone(),
                };
                Ok(Encoded {
                    partition,
                    timestamp_ms: stored.timestamp_ms,
                    bytes: stored.encode()?,
                    courier_id: stored.courier_id,
                })
            })
            .collect()
    }

    /// Commits a group's batch, synced to disk first when `fsync = "always"`.
    fn make_durable(&self, batch: fjall::OwnedWriteBatch) -> Result<()> {
        batch.commit().map_err(Error::storage("writing records"))?;
        match self.fsync {
            FsyncPolicy::Always => self
                .db
                .persist(PersistMode::SyncData)
                .map_err(Error::storage("syncing records")),
            FsyncPolicy::Never => Ok(()),
        }
    }

    fn enforce_retention(&self) -> Result<()> {
        let now = now_ms();
        for topic in self.topics.all() {
            let (retention_ms, retention_bytes) =
                (topic.meta.retention_ms, topic.meta.retention_bytes);
            if (retention_ms <= 0 && retention_bytes <= 0) || topic.deleted.load(Ordering::Acquire)
            {
                continue;
            }
            for (partition, state) in topic.partitions.iter().enumerate() {
                let (low, high) = topic.watermarks(partition);
                let mut bytes = state.bytes.load(Ordering::Acquire);
                let mut new_low = low;
                let mut batch = self.db.batch();
                let keep_from = store::record_key(partition, high - 1);
                for guard in topic
                    .keyspace
                    .range(store::record_key(partition, low)..keep_from)
                {
                    let (key, value) = guard
                        .into_inner()
                        .map_err(Error::storage("reading for retention"))?;
                    let expired = retention_ms > 0
                        && StoredRecord::decode(&value)?.timestamp_ms < now - retention_ms;
                    let oversized = retention_bytes > 0 && bytes > retention_bytes as u64;
                    if !expired && !oversized {
                        break;
                    }
                    bytes = bytes.saturating_sub(value.len() as u64);
                    new_low = store::offset_of_key(&key)? + 1;
                    batch.remove(&topic.keyspace, key);
                }
                if new_low == low {
                    continue;
                }
                batch.insert(
                    &self.meta,
                    store::size_key(topic.meta.id, partition),
                    bytes.to_be_bytes(),
                );
                batch
                    .commit()
                    .map_err(Error::storage("removing expired records"))?;
                state.low.store(new_low, Ordering::Release);
                state.bytes.store(bytes, Ordering::Release);
                tracing::debug!(topic = %topic.name, partition, low = new_low, "retention removed old records");
            }
        }
        Ok(())
    }
}

/// A record ready for the batch.
struct Encoded {
    partition: usize,
    timestamp_ms: i64,
    bytes: Vec<u8>,
    courier_id: String,
}

/// The partitions a group commit touches: per (topic id, partition), the topic, the next offset and
/// the partition's size in bytes once the group is written. Offsets are given here, in the writer
/// thread, so they are dense and in append order.
struct Staged(HashMap<(u64, usize), (Arc<Topic>, i64, u64)>);

impl Staged {
    fn new() -> Self {
        Self(HashMap::new())
    }

    /// Gives one append's records their offsets and adds them to `batch`; their acks.
    fn stage(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        topic: &Arc<Topic>,
        encoded: Vec<Encoded>,
    ) -> Vec<Appended> {
        let mut acks = Vec::with_capacity(encoded.len());
        for record in encoded {
            let (_, next_offset, size) = self
                .0
                .entry((topic.meta.id, record.partition))
                .or_insert_with(|| {
                    let state = &topic.partitions[record.partition];
                    (
                        topic.clone(),
                        state.high.load(Ordering::Acquire),
                        state.bytes.load(Ordering::Acquire),
                    )
                });
            let offset = *next_offset;
            *next_offset += 1;
            *size += record.bytes.len() as u64;
            batch.insert(
                &topic.keyspace,
                store::record_key(record.partition, offset),
                record.bytes,
            );
            acks.push(Appended {
                partition: record.partition as i32,
                offset,
                timestamp_ms: record.timestamp_ms,
                courier_id: record.courier_id,
            });
        }
        acks
    }

    /// Raises each touched partition's size and high watermark: readers see the records from now.
    fn publish(self) {
        for ((_, partition), (topic, next_offset, size)) in self.0 {
            let state = &topic.partitions[partition];
            state.bytes.store(size, Ordering::Release);
            state.high.store(next_offset, Ordering::Release);
        }
    }
}

/// One storage failure answers many appends; fjall errors are not `Clone`, so each gets a description.
fn clone_error(error: &Error) -> Error {
    match error {
        Error::ShuttingDown => Error::ShuttingDown,
        other => Error::Io {
            context: "committing a group of appends",
            source: std::io::Error::other(other.to_string()),
        },
    }
}
