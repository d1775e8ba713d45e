//! Messages waiting for in-flight room, and what each becomes when its turn comes, without I/O: a
//! record is matched against the client's filters and sent as the subscriptions it matches want
//! it, or acknowledged to the log at once when none wants it (or the client had it before a
//! crash). Sending is the caller's.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use courier_gateway::log::{Record, SubscriptionEvent, now_ms};

use super::{
    sources::{LogAck, SourceId, Sources},
    subscriptions::{self, Subscriptions},
};
use crate::{
    mapping::{self, Message},
    store::exchanges::RecordAt,
};

/// A message waiting for in-flight room.
#[derive(Debug)]
enum Pending {
    /// A record from a log reader.
    Record(SourceId, Record),
    /// A retained message for a new subscription (to the filter it carries): nothing to
    /// acknowledge in the log.
    Retained(Message, Arc<str>, Option<usize>),
}

/// What the next waiting message becomes. Lives for one step of the caller's send loop: boxing the
/// large variant would cost an allocation per message delivered, to save stack space only there.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Outgoing {
    /// A message to send, with its subscription identifiers and the record to acknowledge in the
    /// log once the client has it (`None` for a retained message).
    Send {
        message: Message,
        identifiers: Vec<usize>,
        log_ack: Option<LogAck>,
        /// The record's id (empty for a retained message).
        courier_id: String,
    },
    /// A record no one is sent: acknowledged to the log at once.
    Ack(LogAck),
    /// A record whose reader was closed meanwhile: nothing to do.
    Nothing,
}

/// The messages waiting for in-flight room, oldest first.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pending: VecDeque<Pending>,
    /// Records a resumed session delivered and saw PUBREC for before a crash, which its groups may
    /// read again: acknowledged, not delivered again. Boxed, and only when there are some: two
    /// hash tables' room in every connection's task for what few resumes have.
    already_delivered: Option<Box<AlreadyDelivered>>,
    /// `mqtt.courier_id_property`: deliveries carry their record's `courier-id`.
    courier_id_property: bool,
    /// How many of `pending` are retained messages.
    retained: usize,
}

impl Queue {
    /// An empty queue. `already_delivered`: the records a resumed session delivered and saw PUBREC
    /// for before a crash, acknowledged instead of delivered when its groups read them again.
    pub(super) fn new(already_delivered: Vec<RecordAt>, courier_id_property: bool) -> Self {
        Self {
            pending: VecDeque::new(),
            already_delivered: (!already_delivered.is_empty())
                .then(|| Box::new(AlreadyDelivered::new(already_delivered))),
            courier_id_property,
            retained: 0,
        }
    }

    /// How many messages wait.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// A log reader's event.
    pub(super) fn on_event(&mut self, source: SourceId, event: SubscriptionEvent) {
        match event {
            SubscriptionEvent::Records(records) => self.pending.extend(
                records
                    .into_iter()
                    .map(|record| Pending::Record(source, record)),
            ),
            SubscriptionEvent::Revoked(partitions) => {
                // Their new owner reads them from the last commit; sending them here too would duplicate.
                self.pending.retain(|pending| match pending {
                    Pending::Record(id, record) => {
                        *id != source || !partitions.contains(&record.topic_partition())
                    }
                    Pending::Retained(..) => true,
                });
            }
            SubscriptionEvent::Assigned(_) => {}
        }
    }

    /// Queues a retained message for a new subscription to `filter`.
    pub(super) fn push_retained(
        &mut self,
        message: Message,
        filter: &Arc<str>,
        identifier: Option<usize>,
    ) {
        self.retained += 1;
        self.pending
            .push_back(Pending::Retained(message, filter.clone(), identifier));
    }

    /// How many retained messages wait.
    pub(super) fn retained_len(&self) -> usize {
        self.retained
    }

    /// Whether retained messages for a subscription to `filter` still wait.
    pub(super) fn has_retained_of(&self, filter: &str) -> bool {
        self.retained > 0
            && self.pending.iter().any(
                |pending| matches!(pending, Pending::Retained(_, of, _) if of.as_ref() == filter),
            )
    }

    /// Drops the records of a reader that is closing.
    pub(super) fn drop_source(&mut self, id: SourceId) {
        self.pending
            .retain(|pending| !matches!(pending, Pending::Record(source, _) if *source == id));
    }

    /// Takes the oldest waiting message and tells what it becomes for `client_id`; `None` when
    /// nothing waits.
    pub(super) fn next(
        &mut self,
        subscriptions: &Subscriptions,
        sources: &Sources,
        client_id: &str,
    ) -> Option<Outgoing> {
        Some(match self.pending.pop_front()? {
            Pending::Retained(message, _, identifier) => {
                self.retained -= 1;
                Outgoing::Send {
                    message,
                    identifiers: identifier.into_iter().collect(),
                    log_ack: None,
                    courier_id: String::new(),
                }
            }
            Pending::Record(source, record) => {
                self.record(subscriptions, sources, client_id, source, record)
            }
        })
    }

    /// What a record read through `source` becomes.
    fn record(
        &mut self,
        subscriptions: &Subscriptions,
        sources: &Sources,
        client_id: &str,
        source: SourceId,
        mut record: Record,
    ) -> Outgoing {
        let Some(key) = sources.key_of(source) else {
            return Outgoing::Nothing; // its reader was closed
        };
        let log_ack = (source, record.topic_partition(), record.offset);
        if self
            .already_delivered
            .as_mut()
            .is_some_and(|already| already.take(&record))
        {
            return Outgoing::Ack(log_ack);
        }
        let Some(mut stored) = mapping::from_record(&record, now_ms()) else {
            return Outgoing::Ack(log_ack);
        };
        if self.courier_id_property && !record.courier_id.is_empty() {
            mapping::add_courier_id(&mut stored.message, &record.courier_id);
        }
        let own = stored.publisher.as_deref() == Some(client_id);
        let matched = subscriptions.matching(key, &stored.message.topic, own);
        if matched.is_empty() {
            return Outgoing::Ack(log_ack);
        }
        let (message, identifiers) = subscriptions::delivered_to(&matched, stored.message);
        Outgoing::Send {
            message,
            identifiers,
            log_ack: Some(log_ack),
            courier_id: std::mem::take(&mut record.courier_id),
        }
    }
}

/// The records a resumed session delivered and saw PUBREC for: by id, and by where they were read
/// for entries written before entries named the id.
#[derive(Debug, Default)]
struct AlreadyDelivered {
    by_id: HashMap<String, RecordAt>,
    by_place: HashSet<(String, i32, i64)>,
}

impl AlreadyDelivered {
    fn new(records: Vec<RecordAt>) -> Self {
        let mut already = Self::default();
        for at in records {
            match at.courier_id.clone() {
                Some(id) => {
                    already.by_id.insert(id, at);
                }
                None => {
                    already.by_place.insert((at.topic, at.partition, at.offset));
                }
            }
        }
        already
    }

    /// Is `record` one of them? Then it is off the list. A record is known by its id in the same
    /// partition of its topic or of a mirror of it (`<region>.<topic>`), so its copy read from
    /// another region's mirror after a switch is known too; an id alone could be a client's.
    fn take(&mut self, record: &Record) -> bool {
        if self.by_id.is_empty() && self.by_place.is_empty() {
            return false;
        }
        let by_id = self.by_id.get(&record.courier_id).is_some_and(|at| {
            at.partition == record.partition
                && if *at.topic == *record.topic {
                    // The same log: the same record is at the same offset (ids can repeat).
                    at.offset == record.offset
                } else {
                    // One is the other's copy, whichever region it was delivered from.
                    is_copy_of(&record.topic, &at.topic) || is_copy_of(&at.topic, &record.topic)
                }
        });
        if by_id {
            self.by_id.remove(&record.courier_id);
            return true;
        }
        self.by_place
            .remove(&(record.topic.to_string(), record.partition, record.offset))
    }
}

/// Is `topic` named as a mirror of `original` is (`<region>.<original>`)?
fn is_copy_of(topic: &str, original: &str) -> bool {
    topic
        .strip_suffix(original)
        .and_then(|prefix| prefix.strip_suffix('.'))
        .is_some_and(|region| !region.is_empty() && !region.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64, courier_id: &str) -> Record {
        Record {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp_ms: 0,
            courier_id: courier_id.to_owned(),
            origin: String::new(),
        }
    }

    fn at(topic: &str, partition: i32, offset: i64, courier_id: Option<&str>) -> RecordAt {
        RecordAt {
            topic: topic.to_owned(),
            partition,
            offset,
            courier_id: courier_id.map(str::to_owned),
        }
    }

    #[test]
    fn a_record_delivered_before_a_switch_is_known_by_its_id_in_a_mirror() {
        let mut already = AlreadyDelivered::new(vec![
            at("mqtt.messages", 0, 41, Some("01A")),
            at("t", 1, 7, None),
        ]);
        // The same place in another region's copy holds another record.
        assert!(!already.take(&record("a.mqtt.messages", 0, 41, "01B")));
        // The same id elsewhere is not it (a client can set an id).
        assert!(!already.take(&record("other", 0, 12, "01A")));
        assert!(!already.take(&record("a.mqtt.messages", 1, 12, "01A")));
        assert!(
            !already.take(&record("mqtt.messages", 0, 40, "01A")),
            "same log, other offset"
        );
        assert!(already.take(&record("a.mqtt.messages", 0, 12, "01A")));
        assert!(
            !already.take(&record("a.mqtt.messages", 0, 12, "01A")),
            "skipped once"
        );
        // An entry written before entries named the record's id: known by where it was read.
        assert!(already.take(&record("t", 1, 7, "01C")));
        assert!(already.by_id.is_empty() && already.by_place.is_empty());
    }

    #[test]
    fn delivered_from_a_mirror_it_is_known_back_in_its_own_topic() {
        let mut already = AlreadyDelivered::new(vec![at("a.orders", 2, 9, Some("01A"))]);
        assert!(already.take(&record("orders", 2, 300, "01A")));
    }

    #[test]
    fn a_mirror_is_named_after_its_topic() {
        assert!(is_copy_of("a.mqtt.messages", "mqtt.messages"));
        assert!(!is_copy_of("mqtt.messages", "mqtt.messages"));
        assert!(!is_copy_of(".mqtt.messages", "mqtt.messages"));
        assert!(!is_copy_of("messages", "mqtt.messages"));
    }
}
