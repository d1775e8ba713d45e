//! What is in flight to the client, by packet id, and the QoS 1 and 2 acknowledgements that settle
//! it. A persistent session's QoS 2 deliveries are recorded at PUBREC
//! ([`crate::store::exchanges`]): the entry is queued, and its PUBREL (and the record's
//! acknowledgement to the log) go out when it is durable, while the connection goes on with other
//! packets. Entries are written in the order the client's packets came, so a packet id's deletion
//! at PUBCOMP lands before its next use's entry.
//!
//! Acknowledging to the log is not done here but told to the caller, by the [`Settled`] each step
//! returns: the readers are not this module's.

use std::{collections::BTreeMap, fmt, future::Future, pin::Pin, sync::Arc};

use crate::session::in_order::InOrder;
use rumqttd::protocol::{Packet, PubRecReason, PubRel, PubRelReason};

use super::sources::LogAck;
use crate::{
    bridge::Bridge,
    error::Result,
    store::exchanges::{Direction, RecordAt},
};

/// One delivery the client has not finished acknowledging.
#[derive(Debug)]
struct Entry {
    /// The record to acknowledge in the log when the client acknowledges; `None` once acknowledged
    /// (a QoS 2 message between PUBREC and PUBCOMP keeps its packet id) or for a retained message.
    log_ack: Option<LogAck>,
    /// A persistent session's PUBREC is being recorded; its PUBREL waits for that.
    recording: bool,
    /// The record's id (empty for a retained message, or an exchange from before a reconnect).
    courier_id: String,
}

/// What one step of an exchange settled.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// The packet to answer the client with, if any.
    pub(super) reply: Option<Packet>,
    /// `Some` when the client acknowledged a delivery, which is counted: with the record to
    /// acknowledge to the log, if the delivery had one.
    pub(super) client_acked: Option<Option<LogAck>>,
}

impl Settled {
    fn reply(packet: Packet) -> Self {
        Self {
            reply: Some(packet),
            client_acked: None,
        }
    }

    fn acked(log_ack: Option<LogAck>, reply: Option<Packet>) -> Self {
        Self {
            reply,
            client_acked: Some(log_ack),
        }
    }
}

/// A persistent session's QoS 2 entry write that has finished.
#[derive(Debug)]
pub(crate) enum Recorded {
    /// The entry written at PUBREC: the PUBREL may go and the record be acknowledged to the log.
    Delivered {
        pkid: u16,
        outcome: courier_gateway::Result<()>,
    },
    /// The entry's deletion at PUBCOMP.
    Finished {
        pkid: u16,
        outcome: courier_gateway::Result<()>,
    },
}

type Recording = Pin<Box<dyn Future<Output = Recorded> + Send>>;

/// QoS 2 entry writes under way, finishing in the order they were queued.
#[derive(Default)]
pub(crate) struct Recordings(InOrder<Recording>);

impl Recordings {
    /// The oldest write, once it has finished; `None` at once when there is none. Not an
    /// `async fn`, whose state would be two more words of every idle connection's task.
    pub(crate) fn next(&mut self) -> impl Future<Output = Option<Recorded>> + '_ {
        self.0.next()
    }

    fn push(&mut self, recording: impl Future<Output = Recorded> + Send + 'static) {
        self.0.push_back(Box::pin(recording));
    }
}

impl fmt::Debug for Recordings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Recordings").field(&self.0.len()).finish()
    }
}

/// Deliveries the client has not acknowledged yet, by packet id.
#[derive(Debug, Default)]
pub(super) struct Inflight {
    /// A B-tree: empty, 24 bytes of every connection's task and no allocation, where a hash
    /// table is 48 and keeps its room once used. Made anew when emptied (see [`Self::remove`]),
    /// since an emptied B-tree keeps a node of eleven entries: a device that got one command
    /// holds nothing once it acknowledged it.
    entries: BTreeMap<u16, Entry>,
    next_pkid: u16,
    /// The session, when it is persistent: its QoS 2 exchanges are recorded in the log.
    durable_session: Option<Arc<str>>,
    /// PUBRELs a resumed session still owes the client, sent first.
    owed_releases: Vec<u16>,
}

impl Inflight {
    /// Starts with the QoS 2 packet ids a resumed session had delivered and seen PUBREC for, whose
    /// PUBREL is sent again (MQTT requires it after a reconnect; the client may deliver only then).
    pub(super) fn new(durable_session: Option<Arc<str>>, awaiting_completion: Vec<u16>) -> Self {
        let mut inflight = Self {
            durable_session,
            ..Self::default()
        };
        for pkid in awaiting_completion {
            inflight.entries.insert(
                pkid,
                Entry {
                    log_ack: None,
                    recording: false,
                    courier_id: String::new(),
                },
            );
            inflight.owed_releases.push(pkid);
        }
        inflight
    }

    /// How many deliveries are in flight.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The PUBRELs owed from before the reconnect, once.
    pub(super) fn take_owed_releases(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.owed_releases)
            .into_iter()
            .map(|pkid| pubrel(pkid, PubRelReason::Success))
            .collect()
    }

    /// A free packet id for a QoS 1 or 2 delivery.
    pub(super) fn allocate_pkid(&mut self) -> u16 {
        // In flight is bounded by the receive maximum (a u16), so a free id always exists.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.entries.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// A QoS 1 or 2 delivery went out with `pkid`.
    pub(super) fn sent(&mut self, pkid: u16, log_ack: Option<LogAck>, courier_id: String) {
        self.entries.insert(
            pkid,
            Entry {
                log_ack,
                recording: false,
                courier_id,
            },
        );
    }

    /// Takes a delivery out; the table's memory goes with the last one.
    fn remove(&mut self, pkid: u16) -> Option<Entry> {
        let entry = self.entries.remove(&pkid);
        if self.entries.is_empty() {
            self.entries = BTreeMap::new();
        }
        entry
    }

    /// PUBACK from the client.
    pub(super) fn on_puback(&mut self, pkid: u16) -> Settled {
        match self.remove(pkid) {
            Some(entry) => Settled::acked(entry.log_ack, None),
            None => Settled::default(),
        }
    }

    /// PUBREC from the client: the message is theirs; the log may forget it. Answers PUBREL, at once,
    /// or for a persistent session once the exchange is recorded ([`Self::on_recorded`]), so the
    /// PUBREL is owed even after a crash. The entry write goes into `recordings`.
    pub(super) async fn on_pubrec(
        &mut self,
        bridge: &Bridge,
        client_id: &str,
        recordings: &mut Recordings,
        pkid: u16,
        reason: PubRecReason,
    ) -> Result<Settled> {
        let Some(entry) = self.entries.get_mut(&pkid) else {
            return Ok(Settled::reply(pubrel(
                pkid,
                PubRelReason::PacketIdentifierNotFound,
            )));
        };
        if entry.recording {
            // A repeated PUBREC: the PUBREL follows when the first one is recorded.
            return Ok(Settled::default());
        }
        if is_failure(reason) {
            // The client refused the message: the exchange ends here.
            return Ok(match self.remove(pkid).and_then(|e| e.log_ack) {
                Some(log_ack) => Settled::acked(Some(log_ack), None),
                None => Settled::default(),
            });
        }
        let Some(log_ack) = entry.log_ack.take() else {
            // Acknowledged already (a repeated PUBREC, or a retained message): PUBREL again.
            return Ok(Settled::reply(pubrel(pkid, PubRelReason::Success)));
        };
        let Some(session) = &self.durable_session else {
            return Ok(Settled::acked(
                Some(log_ack),
                Some(pubrel(pkid, PubRelReason::Success)),
            ));
        };
        // Not acknowledged to the log until recorded: a failure delivers the record again.
        let (_, partition, offset) = &log_ack;
        let record = RecordAt {
            topic: partition.topic.to_string(),
            partition: partition.partition,
            offset: *offset,
            courier_id: (!entry.courier_id.is_empty()).then(|| entry.courier_id.clone()),
        };
        let receipt = bridge
            .exchanges
            .delivered(client_id, pkid, session, Some(record))
            .await?;
        entry.log_ack = Some(log_ack);
        entry.recording = true;
        recordings.push(async move {
            let outcome = receipt.await.map(drop);
            Recorded::Delivered { pkid, outcome }
        });
        Ok(Settled::default())
    }

    /// PUBCOMP from the client: the exchange is over. A persistent session's entry is deleted
    /// (queued into `recordings`: nothing waits for it).
    pub(super) async fn on_pubcomp(
        &mut self,
        bridge: &Bridge,
        client_id: &str,
        recordings: &mut Recordings,
        pkid: u16,
    ) {
        if self.entries.get(&pkid).is_some_and(|entry| entry.recording) {
            // No PUBREL was sent for it yet: the client is early, and the exchange goes on.
            return;
        }
        if self.remove(pkid).is_none() || self.durable_session.is_none() {
            return;
        }
        match bridge
            .exchanges
            .finish(client_id, Direction::Out, pkid)
            .await
        {
            Ok(receipt) => recordings.push(async move {
                let outcome = receipt.await.map(drop);
                Recorded::Finished { pkid, outcome }
            }),
            Err(error) => warn_not_deleted(&error, pkid),
        }
    }

    /// An entry write finished: the PUBREL to send, if any.
    pub(super) fn on_recorded(&mut self, recorded: Recorded) -> Result<Settled> {
        match recorded {
            Recorded::Delivered { pkid, outcome } => {
                // Unrecorded, the PUBREL could be lost in a crash: the connection closes instead,
                // the record is not acknowledged, and the resumed session delivers it again.
                outcome?;
                let Some(entry) = self.entries.get_mut(&pkid) else {
                    return Ok(Settled::default());
                };
                entry.recording = false;
                let reply = pubrel(pkid, PubRelReason::Success);
                Ok(match entry.log_ack.take() {
                    Some(log_ack) => Settled::acked(Some(log_ack), Some(reply)),
                    None => Settled::reply(reply),
                })
            }
            Recorded::Finished { pkid, outcome } => {
                if let Err(error) = outcome {
                    warn_not_deleted(&error, pkid);
                }
                Ok(Settled::default())
            }
        }
    }
}

fn pubrel(pkid: u16, reason: PubRelReason) -> Packet {
    Packet::PubRel(PubRel { pkid, reason }, None)
}

fn warn_not_deleted(error: &dyn fmt::Display, pkid: u16) {
    // Harmless: the next resumed connection sends this PUBREL again, and the client answers.
    tracing::warn!(%error, pkid, "could not delete a completed QoS 2 exchange");
}

/// Did the client refuse the message? "No matching subscribers" is its success too.
fn is_failure(reason: PubRecReason) -> bool {
    !matches!(
        reason,
        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
    )
}
