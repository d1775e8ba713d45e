//! What the gateway writes to one connection, read as a client reads it (rumqttc's decoders, not
//! the gateway's own) and checked against what the client did:
//!
//! - every packet decodes, is one a server sends in that version, and fits the client's maximum
//!   packet size;
//! - CONNACK comes first and once; nothing follows a refusal or a DISCONNECT;
//! - acknowledgements answer packets the client sent (PUBACK a QoS 1 PUBLISH, PUBREC a QoS 2 one,
//!   PUBCOMP a PUBREL, SUBACK/UNSUBACK a SUBSCRIBE/UNSUBSCRIBE with as many codes as filters,
//!   PINGRESP a PINGREQ);
//! - deliveries name a topic without wildcards, use no topic alias the client did not allow, and
//!   never have more QoS 1 and 2 messages unacknowledged than the client's receive maximum
//!   (or, when it named none, the gateway's `max_inflight`), nor reuse a packet id in flight.
//!
//! The in-flight count is a lower bound of the gateway's: an acknowledgement counts from the moment
//! the client writes it (the gateway may read it later), even when it was written before the
//! delivery it acknowledges arrived. So a count over the limit is the gateway's fault.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;
use courier_mqtt::codec::Version;
use rumqttd::protocol::Packet;

/// What the client promised and did that decides which answers are allowed.
#[derive(Debug)]
pub struct Answers {
    version: Version,
    /// The client's maximum packet size (MQTT 5), if it named one.
    max_packet_size: Option<u32>,
    /// Topic aliases the client accepts (MQTT 5 Topic Alias Maximum).
    topic_alias_maximum: u16,
    /// Most unacknowledged QoS 1 and 2 deliveries.
    receive_maximum: u16,
    buffer: BytesMut,
    /// Packets decoded so far.
    received: usize,
    /// CONNACK: `Some(accepted)` once read.
    connack: Option<bool>,
    session_present: bool,
    /// A DISCONNECT (MQTT 5) or refusing CONNACK was read: the gateway said its last.
    ended: bool,
    sent: ClientSent,
    /// Deliveries in flight by packet id (a lower bound of the gateway's view).
    in_flight: HashSet<u16>,
    /// Acknowledgements written for ids not in flight at the time, by id: the delivery they
    /// acknowledge may be on its way.
    early_acks: HashMap<u16, usize>,
    /// What a well-behaved client would acknowledge next, in order.
    owed: Vec<Packet>,
}

/// What the client sent that the gateway answers.
#[derive(Debug, Default)]
struct ClientSent {
    qos1: HashSet<u16>,
    qos2: HashSet<u16>,
    pubrel: HashSet<u16>,
    /// SUBSCRIBE and UNSUBSCRIBE packet ids with how many filters each named.
    subscribe: HashMap<u16, HashSet<usize>>,
    unsubscribe: HashMap<u16, HashSet<usize>>,
    pingreq: usize,
    /// PUBRECs the client sent for the gateway's QoS 2 deliveries: PUBREL answers them.
    pubrec: HashSet<u16>,
}

/// Limits the client named in CONNECT (MQTT 5 properties, `None` when absent or 3.1.1).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub receive_maximum: Option<u16>,
}

impl Answers {
    /// `max_inflight` is the gateway's own limit for a client that names no receive maximum.
    pub fn new(version: Version, limits: Limits, max_inflight: u16) -> Self {
        Self {
            version,
            max_packet_size: limits.max_packet_size,
            topic_alias_maximum: limits.topic_alias_maximum.unwrap_or(0),
            receive_maximum: limits.receive_maximum.unwrap_or(max_inflight),
            buffer: BytesMut::new(),
            received: 0,
            connack: None,
            session_present: false,
            ended: false,
            sent: ClientSent::default(),
            in_flight: HashSet::new(),
            early_acks: HashMap::new(),
            owed: Vec::new(),
        }
    }

    /// Whether CONNACK accepted the connection; `None` before (or without) one.
    pub fn accepted(&self) -> Option<bool> {
        self.connack
    }

    /// How many packets the gateway has written so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// The acknowledgements a well-behaved client owes for what it received so far (PUBACK or
    /// PUBREC for each QoS 1 or 2 delivery, PUBCOMP for each PUBREL), taken.
    pub fn take_owed(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.owed)
    }

    /// Notes a packet the client wrote; `qos_and_pkid` for a PUBLISH, whose rumqttd packet keeps
    /// them to itself.
    pub fn sent(&mut self, packet: &Packet, qos_and_pkid: Option<(u8, u16)>) {
        match packet {
            Packet::Publish(..) => match qos_and_pkid {
                Some((1, pkid)) => drop(self.sent.qos1.insert(pkid)),
                Some((2, pkid)) => drop(self.sent.qos2.insert(pkid)),
                _ => {}
            },
            Packet::PubRel(pubrel, _) => drop(self.sent.pubrel.insert(pubrel.pkid)),
            Packet::Subscribe(subscribe, _) => drop(
                self.sent
                    .subscribe
                    .entry(subscribe.pkid)
                    .or_default()
                    .insert(subscribe.filters.len()),
            ),
            Packet::Unsubscribe(unsubscribe, _) => drop(
                self.sent
                    .unsubscribe
                    .entry(unsubscribe.pkid)
                    .or_default()
                    .insert(unsubscribe.filters.len()),
            ),
            Packet::PingReq(_) => self.sent.pingreq += 1,
            Packet::PubAck(puback, _) => self.acknowledged(puback.pkid),
            Packet::PubRec(pubrec, _) => {
                self.sent.pubrec.insert(pubrec.pkid);
                // A PUBREC ends a delivery only when it refuses it (MQTT 5), but counting it as
                // the end keeps the count a lower bound either way.
                self.acknowledged(pubrec.pkid);
            }
            Packet::PubComp(pubcomp, _) => self.acknowledged(pubcomp.pkid),
            _ => {}
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if !self.in_flight.remove(&pkid) {
            *self.early_acks.entry(pkid).or_default() += 1;
        }
    }

    /// Takes in bytes the gateway wrote and checks every whole packet among them.
    pub fn read(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        while let Some(length) = frame_length(&self.buffer) {
            let mut frame = self.buffer.split_to(length);
            if let Some(max) = self.max_packet_size {
                assert!(
                    length <= max as usize,
                    "a {length}-byte packet to a client whose maximum packet size is {max}: {frame:?}"
                );
            }
            assert!(
                !self.ended,
                "a packet after the gateway's last word: {frame:?}"
            );
            let raw = frame.clone();
            let answer = match self.version {
                Version::V4 => decode_v4(&mut frame),
                Version::V5 => decode_v5(&mut frame),
            }
            .unwrap_or_else(|error| {
                panic!("the gateway wrote a malformed packet ({error}): {raw:?}")
            });
            self.received += 1;
            self.check(answer, &raw);
        }
    }

    /// The gateway closed its side: any bytes left are a packet it never finished.
    pub fn closed(&self) {
        assert!(
            self.buffer.is_empty(),
            "the gateway closed in the middle of a packet: {:?}",
            self.buffer
        );
    }

    fn check(&mut self, answer: Answer, raw: &[u8]) {
        if self.connack.is_none() {
            let Answer::ConnAck {
                accepted,
                session_present,
            } = answer
            else {
                panic!("the first packet is not CONNACK: {raw:?}");
            };
            self.connack = Some(accepted);
            self.session_present = session_present;
            self.ended = !accepted;
            assert!(
                accepted || !session_present,
                "a refusing CONNACK with session present"
            );
            return;
        }
        match answer {
            Answer::ConnAck { .. } => panic!("a second CONNACK: {raw:?}"),
            Answer::Publish {
                qos,
                pkid,
                dup,
                topic,
                alias,
            } => self.delivery(qos, pkid, dup, &topic, alias, raw),
            Answer::PubAck(pkid) => assert!(
                self.sent.qos1.contains(&pkid),
                "PUBACK {pkid} for no QoS 1 PUBLISH of the client"
            ),
            Answer::PubRec(pkid) => assert!(
                self.sent.qos2.contains(&pkid),
                "PUBREC {pkid} for no QoS 2 PUBLISH of the client"
            ),
            Answer::PubComp(pkid) => assert!(
                self.sent.pubrel.contains(&pkid),
                "PUBCOMP {pkid} for no PUBREL of the client"
            ),
            Answer::PubRel(pkid) => {
                // A resumed session's unfinished deliveries are released again at once.
                assert!(
                    self.session_present || self.sent.pubrec.contains(&pkid),
                    "PUBREL {pkid} for no PUBREC of the client"
                );
                self.owed.push(crate::encode::pubcomp(pkid));
            }
            Answer::SubAck { pkid, codes } => assert!(
                self.sent
                    .subscribe
                    .get(&pkid)
                    .is_some_and(|counts| counts.contains(&codes)),
                "SUBACK {pkid} with {codes} codes answers no SUBSCRIBE of the client"
            ),
            Answer::UnsubAck { pkid, codes } => assert!(
                self.sent
                    .unsubscribe
                    .get(&pkid)
                    .is_some_and(|counts| codes.is_none_or(|codes| counts.contains(&codes))),
                "UNSUBACK {pkid} ({codes:?} codes) answers no UNSUBSCRIBE of the client"
            ),
            Answer::PingResp => {
                assert!(self.sent.pingreq > 0, "PINGRESP without PINGREQ");
                self.sent.pingreq -= 1;
            }
            Answer::Disconnect => {
                assert!(
                    self.version == Version::V5,
                    "DISCONNECT to an MQTT 3.1.1 client"
                );
                self.ended = true;
            }
            Answer::ClientOnly(kind) => panic!("the gateway sent {kind}, a client's packet"),
        }
    }

    fn delivery(
        &mut self,
        qos: u8,
        pkid: u16,
        dup: bool,
        topic: &[u8],
        alias: Option<u16>,
        raw: &[u8],
    ) {
        let name = std::str::from_utf8(topic)
            .unwrap_or_else(|_| panic!("a delivery's topic is not UTF-8: {raw:?}"));
        assert!(
            !name.is_empty() || alias.is_some(),
            "a delivery without a topic: {raw:?}"
        );
        assert!(
            !name.contains(['+', '#', '\0']),
            "a delivery to topic {name:?}"
        );
        if let Some(alias) = alias {
            assert!(
                alias > 0 && alias <= self.topic_alias_maximum,
                "topic alias {alias} to a client allowing {}",
                self.topic_alias_maximum
            );
        }
        match qos {
            0 => return,
            1 => self.owed.push(crate::encode::puback(pkid)),
            _ => self.owed.push(crate::encode::pubrec(
                pkid,
                crate::script::AckReason::Success,
            )),
        }
        assert!(pkid != 0, "a QoS {qos} delivery with packet id 0");
        if let Some(early) = self.early_acks.get_mut(&pkid).filter(|early| **early > 0) {
            *early -= 1;
            return;
        }
        let new = self.in_flight.insert(pkid);
        assert!(
            new || dup,
            "packet id {pkid} reused while in flight: {raw:?}"
        );
        assert!(
            self.in_flight.len() <= usize::from(self.receive_maximum),
            "{} deliveries in flight to a client whose receive maximum is {}",
            self.in_flight.len(),
            self.receive_maximum
        );
    }
}

/// A packet the gateway wrote, in terms both versions share.
#[derive(Debug)]
enum Answer {
    ConnAck {
        accepted: bool,
        session_present: bool,
    },
    Publish {
        qos: u8,
        pkid: u16,
        dup: bool,
        topic: Vec<u8>,
        alias: Option<u16>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pkid: u16,
        codes: usize,
    },
    /// MQTT 3.1.1's UNSUBACK has no codes.
    UnsubAck {
        pkid: u16,
        codes: Option<usize>,
    },
    PingResp,
    Disconnect,
    ClientOnly(&'static str),
}

/// The length of the first whole packet in `buffer`, if it holds one. A remaining length longer
/// than four bytes is malformed.
fn frame_length(buffer: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (index, byte) in buffer.iter().skip(1).enumerate() {
        assert!(
            index < 4,
            "a remaining length of more than four bytes: {buffer:?}"
        );
        remaining |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            let length = 2 + index + remaining;
            return (buffer.len() >= length).then_some(length);
        }
    }
    None
}

fn decode_v4(frame: &mut BytesMut) -> Result<Answer, String> {
    use rumqttc::mqttbytes::{QoS, v4::ConnectReturnCode, v4::Packet};
    let packet = Packet::read(frame, usize::MAX).map_err(|error| format!("{error:?}"))?;
    Ok(match packet {
        Packet::ConnAck(connack) => Answer::ConnAck {
            accepted: connack.code == ConnectReturnCode::Success,
            session_present: connack.session_present,
        },
        Packet::Publish(publish) => Answer::Publish {
            qos: match publish.qos {
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce => 1,
                QoS::ExactlyOnce => 2,
            },
            pkid: publish.pkid,
            dup: publish.dup,
            topic: publish.topic.into_bytes(),
            alias: None,
        },
        Packet::PubAck(ack) => Answer::PubAck(ack.pkid),
        Packet::PubRec(ack) => Answer::PubRec(ack.pkid),
        Packet::PubRel(ack) => Answer::PubRel(ack.pkid),
        Packet::PubComp(ack) => Answer::PubComp(ack.pkid),
        Packet::SubAck(suback) => Answer::SubAck {
            pkid: suback.pkid,
            codes: suback.return_codes.len(),
        },
        Packet::UnsubAck(unsuback) => Answer::UnsubAck {
            pkid: unsuback.pkid,
            codes: None,
        },
        Packet::PingResp => Answer::PingResp,
        Packet::Disconnect => Answer::Disconnect,
        Packet::Connect(_) => Answer::ClientOnly("CONNECT"),
        Packet::Subscribe(_) => Answer::ClientOnly("SUBSCRIBE"),
        Packet::Unsubscribe(_) => Answer::ClientOnly("UNSUBSCRIBE"),
        Packet::PingReq => Answer::ClientOnly("PINGREQ"),
    })
}

fn decode_v5(frame: &mut BytesMut) -> Result<Answer, String> {
    use rumqttc::v5::mqttbytes::{
        QoS,
        v5::{ConnectReturnCode, Packet},
    };
    // A DISCONNECT may leave out its Property Length, and its reason code too when that is 0
    // [MQTT-3.14.2.2.1], which rumqttc's reader does not allow.
    if frame[0] == 0xe0 && frame.len() <= 3 {
        return Ok(Answer::Disconnect);
    }
    let packet = Packet::read(frame, None).map_err(|error| format!("{error:?}"))?;
    Ok(match packet {
        Packet::ConnAck(connack) => Answer::ConnAck {
            accepted: connack.code == ConnectReturnCode::Success,
            session_present: connack.session_present,
        },
        Packet::Publish(publish) => Answer::Publish {
            qos: match publish.qos {
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce => 1,
                QoS::ExactlyOnce => 2,
            },
            pkid: publish.pkid,
            dup: publish.dup,
            topic: publish.topic.to_vec(),
            alias: publish
                .properties
                .and_then(|properties| properties.topic_alias),
        },
        Packet::PubAck(ack) => Answer::PubAck(ack.pkid),
        Packet::PubRec(ack) => Answer::PubRec(ack.pkid),
        Packet::PubRel(ack) => Answer::PubRel(ack.pkid),
        Packet::PubComp(ack) => Answer::PubComp(ack.pkid),
        Packet::SubAck(suback) => Answer::SubAck {
            pkid: suback.pkid,
            codes: suback.return_codes.len(),
        },
        Packet::UnsubAck(unsuback) => Answer::UnsubAck {
            pkid: unsuback.pkid,
            codes: Some(unsuback.reasons.len()),
        },
        Packet::PingResp(_) => Answer::PingResp,
        Packet::Disconnect(_) => Answer::Disconnect,
        Packet::Auth(_) => Answer::ClientOnly("AUTH"),
        Packet::Connect(..) => Answer::ClientOnly("CONNECT"),
        Packet::Subscribe(_) => Answer::ClientOnly("SUBSCRIBE"),
        Packet::Unsubscribe(_) => Answer::ClientOnly("UNSUBSCRIBE"),
        Packet::PingReq(_) => Answer::ClientOnly("PINGREQ"),
    })
}
