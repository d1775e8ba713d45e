//! The latest record of every key of a compacted topic, followed live.
//!
//! A front end keeps state that must outlive a replica (MQTT: sessions, retained messages, unfinished
//! QoS 2 exchanges) in compacted topics. Each gateway replica reads such a topic from its start with a
//! plain reader and keeps the newest record per key in memory, so a lookup is a map access and every
//! replica sees what the others wrote. [`Table::caught_up`] waits until the table holds everything
//! written before the call: a client that reconnects to another replica sees its own session, and a
//! subscriber sees a retained message published a moment earlier elsewhere.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    log::{Log, Position, Record, SubscribeOptions, SubscriptionEvent, TopicSelector},
    sync::lock,
};

/// Called for every record the table applies: its key, and the record (`None` for a tombstone).
pub type OnChange = Box<dyn Fn(&str, Option<&Record>) + Send + Sync>;

/// Records a reader keeps at once before acknowledging: large, since the table acks as it applies.
const WINDOW: usize = 10_000;

/// A live key → latest record map over one topic.
#[derive(Debug, Clone)]
pub struct Table {
    topic: String,
    log: Arc<dyn Log>,
    state: Arc<Mutex<State>>,
    progress: watch::Receiver<u64>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Record>,
    /// Next offset to apply, per partition.
    next_offsets: HashMap<i32, i64>,
}

impl Table {
    /// Starts following `topic` from its start for the front end named `protocol`; stops when
    /// `cancel` fires.
    pub async fn start(
        log: Arc<dyn Log>,
        protocol: &'static str,
        topic: &str,
        on_change: OnChange,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let mut subscription = log
            .subscribe(SubscribeOptions {
                topics: TopicSelector::Names(vec![topic.to_owned()]),
                group: None,
                start: Position::Earliest,
                max_in_flight: WINDOW,
                client: format!("courier-{protocol} table of {topic}"),
                protocol,
            })
            .await?;
        let state = Arc::new(Mutex::new(State::default()));
        let (progress_tx, progress) = watch::channel(0u64);
        let task_state = state.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => break,
                    event = subscription.next_event() => event,
                };
                let Some(SubscriptionEvent::Records(records)) = event else {
                    if event.is_none() {
                        break;
                    }
                    continue;
                };
                {
                    let mut state = lock(&task_state);
                    for record in records {
                        subscription
                            .control
                            .ack(&record.topic_partition(), record.offset);
                        state
                            .next_offsets
                            .insert(record.partition, record.offset + 1);
                        let Some(key) = record
                            .key
                            .as_deref()
                            .and_then(|key| std::str::from_utf8(key).ok())
                            .map(str::to_owned)
                        else {
                            continue;
                        };
                        if record.value.is_none() {
                            on_change(&key, None);
                            state.entries.remove(&key);
                        } else {
                            on_change(&key, Some(&record));
                            state.entries.insert(key, record);
                        }
                    }
                }
                progress_tx.send_modify(|applied| *applied += 1);
            }
            let _ = subscription.close().await;
        });
        Ok(Self {
            topic: topic.to_owned(),
            log,
            state,
            progress,
        })
    }

    /// Waits until every record written to the topic before this call has been applied.
    pub async fn caught_up(&self, deadline: Duration) -> Result<()> {
        let description = self.log.describe_topic(&self.topic).await?;
        let mut progress = self.progress.clone();
        let wait = async {
            loop {
                let behind = {
                    let state = lock(&self.state);
                    description.partitions.iter().any(|partition| {
                        let applied = state
                            .next_offsets
                            .get(&partition.partition)
                            .copied()
                            .unwrap_or(partition.low);
                        applied < partition.high
                    })
                };
                if !behind {
                    return Ok(());
                }
                if progress.changed().await.is_err() {
                    return Err(Error::ShuttingDown);
                }
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .map_err(|_| Error::Behind {
                topic: self.topic.clone(),
            })?
    }

    /// The latest record of a key.
    pub fn get(&self, key: &str) -> Option<Record> {
        lock(&self.state).entries.get(key).cloned()
    }

    /// Every latest record whose key passes `keep`.
    pub fn matching(&self, keep: impl Fn(&str) -> bool) -> Vec<Record> {
        lock(&self.state)
            .entries
            .iter()
            .filter(|(key, _)| keep(key))
            .map(|(_, record)| record.clone())
            .collect()
    }
}
