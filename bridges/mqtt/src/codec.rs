//! Bytes <-> MQTT packets, with rumqttd's codecs (v4 = MQTT 3.1.1, v5 = MQTT 5). No I/O.
//!
//! The first packet decides the version: the codec reads the protocol level of CONNECT before handing
//! the bytes to rumqttd. rumqttd keeps a PUBLISH's QoS, packet id and DUP flag private to its crate, so
//! the codec reads them from the frame's header itself ([`PublishHeader`]) and builds outgoing
//! PUBLISH packets through rumqttd's own byte form ([`outgoing_publish`]).

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{
    self as wire, Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Protocol,
    Publish, QoS, v4::V4, v5::V5,
};

use crate::error::{Error, Result};

/// The MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

/// A decoded packet. For PUBLISH, also the header fields rumqttd does not expose.
#[derive(Debug)]
pub struct Frame {
    /// The packet.
    pub packet: Packet,
    /// QoS, packet id and DUP of a PUBLISH; `None` for other packets.
    pub publish: Option<PublishHeader>,
}

/// The header fields of a PUBLISH that rumqttd keeps to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader {
    /// Quality of service.
    pub qos: QoS,
    /// Packet identifier (0 for QoS 0).
    pub pkid: u16,
    /// Set on a retransmission.
    pub dup: bool,
}

/// One connection's packet codec.
#[derive(Debug)]
pub struct Codec {
    version: Option<Version>,
    max_packet_size: usize,
}

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;
const SUBSCRIBE: u8 = 8;
const UNSUBSCRIBE: u8 = 10;
const DISCONNECT: u8 = 14;
/// CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT.
const CLIENT_PACKETS: [u8; 10] = [1, 3, 4, 5, 6, 7, 8, 10, 12, 14];

impl Codec {
    /// A codec that learns its version from the first packet (CONNECT).
    pub fn new(max_packet_size: usize) -> Self {
        Self {
            version: None,
            max_packet_size,
        }
    }

    /// A codec of a known version (for tests and fuzzing past CONNECT).
    pub fn with_version(version: Version, max_packet_size: usize) -> Self {
        Self {
            version: Some(version),
            max_packet_size,
        }
    }

    /// The version learnt from CONNECT, if any yet.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Decodes the next packet from `buffer`, consuming its bytes. `Ok(None)`: more bytes are needed.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>> {
        let Some((header_len, remaining)) = fixed_header(buffer)? else {
            return Ok(None);
        };
        if remaining > self.max_packet_size {
            return Err(Error::PacketTooLarge {
                size: remaining,
                limit: self.max_packet_size,
            });
        }
        let frame_len = header_len + remaining;
        if buffer.len() < frame_len {
            buffer.reserve(frame_len - buffer.len());
            return Ok(None);
        }
        let kind = buffer[0] >> 4;
        // Only packets a client may send reach rumqttd: its v5 reader panics on CONNACK and UNSUBACK
        // (found by the property test below), and a server never receives those anyway.
        if !CLIENT_PACKETS.contains(&kind) {
            return Err(Error::Protocol(format!(
                "packet type {kind} is not one a client sends"
            )));
        }
        let version = match self.version {
            Some(version) => version,
            None if kind != CONNECT => {
                return Err(Error::Protocol(
                    "the first packet of a connection must be CONNECT".into(),
                ));
            }
            None => {
                let version = match connect_header(&buffer[header_len..frame_len])?.0 {
                    4 => Version::V4,
                    5 => Version::V5,
                    level => return Err(Error::UnsupportedProtocol(level)),
                };
                self.version = Some(version);
                version
            }
        };
        check_reserved_flags(kind, buffer[0])?;
        if kind == CONNECT {
            check_connect_flags(&buffer[header_len..frame_len])?;
        }
        if kind == SUBSCRIBE {
            check_subscription_options(version, &buffer[header_len..frame_len])?;
        }
        if version == Version::V5 && kind == DISCONNECT && remaining == 1 {
            // A reason code without a property length means no properties [MQTT 5 §3.14.2.2.1];
            // rumqttd's reader wants the length byte, so it is added.
            let reason = buffer[header_len];
            let _ = buffer.split_to(frame_len);
            let mut whole = BytesMut::from(&[DISCONNECT << 4, 2, reason, 0][..]);
            let packet = V5
                .read_mut(&mut whole, self.max_packet_size)
                .map_err(Error::Malformed)?;
            return Ok(Some(Frame {
                packet,
                publish: None,
            }));
        }
        let publish = if kind == PUBLISH {
            Some(publish_header(&buffer[..frame_len], header_len)?)
        } else {
            None
        };
        let packet = match version {
            Version::V4 => V4.read_mut(buffer, self.max_packet_size),
            Version::V5 => V5.read_mut(buffer, self.max_packet_size),
        }
        .map_err(Error::Malformed)?;
        if matches!(&packet, Packet::Unsubscribe(unsubscribe, _) if unsubscribe.filters.is_empty())
        {
            return Err(Error::Protocol(
                "an UNSUBSCRIBE must name at least one filter [MQTT-3.10.3-2]".into(),
            ));
        }
        Ok(Some(Frame { packet, publish }))
    }

    /// Encodes a packet. Before CONNECT is known (refusing an unsupported version) 3.1.1 is used, whose
    /// CONNACK older clients also read. MQTT 3.1.1 has no properties: they are dropped.
    pub fn encode(&self, packet: Packet, out: &mut BytesMut) -> Result<()> {
        match (self.version.unwrap_or(Version::V4), packet) {
            (Version::V4, packet) => V4.write(without_properties(packet), out),
            (Version::V5, Packet::Disconnect(disconnect, properties))
                if properties.as_ref().is_none_or(is_empty) =>
            {
                return bare_disconnect(disconnect, out);
            }
            (Version::V5, packet) => V5.write(packet, out),
        }
        .map(drop)
        .map_err(Error::Malformed)
    }
}

/// Writes an MQTT 5 DISCONNECT that has no properties to send as its reason code and a Property
/// Length of 0 (the Property Length may be left out too [MQTT-3.14.2.2.1], but not every client
/// reads that: rumqttc does not), or as no reason code at all for a normal disconnection.
/// rumqttd (0.20) writes such a DISCONNECT wrongly: with properties that are all empty (a reason
/// string too long for the client's maximum packet size was left out) as a normal disconnection,
/// its reason code dropped; without properties with a Remaining Length one byte short. rumqttd
/// keeps its reason codes' numbers to itself, so the code is taken from a DISCONNECT it writes
/// with an empty reason string, which it writes correctly.
fn bare_disconnect(disconnect: Disconnect, out: &mut BytesMut) -> Result<()> {
    if disconnect.reason_code == DisconnectReasonCode::NormalDisconnection {
        out.put_slice(&[DISCONNECT << 4, 0]);
        return Ok(());
    }
    let mut written = BytesMut::new();
    let with_reason_string = DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(String::new()),
        user_properties: Vec::new(),
        server_reference: None,
    };
    V5.write(
        Packet::Disconnect(disconnect, Some(with_reason_string)),
        &mut written,
    )
    .map_err(Error::Malformed)?;
    // The fixed header's two bytes (the packet is short), then the reason code.
    let code = *written
        .get(2)
        .ok_or(Error::Malformed(wire::Error::MalformedPacket))?;
    out.put_slice(&[DISCONNECT << 4, 2, code, 0]);
    Ok(())
}

/// Whether a DISCONNECT's properties have nothing to send.
fn is_empty(properties: &DisconnectProperties) -> bool {
    let DisconnectProperties {
        session_expiry_interval,
        reason_string,
        user_properties,
        server_reference,
    } = properties;
    session_expiry_interval.is_none()
        && reason_string.is_none()
        && user_properties.is_empty()
        && server_reference.is_none()
}

/// Builds a PUBLISH to send. rumqttd only lets its own crate set QoS, packet id and DUP, so the packet
/// is built from the byte form its `Publish::deserialize` reads: flags, packet id, topic, payload.
pub fn outgoing_publish(topic: &str, payload: &[u8], qos: QoS, pkid: u16, retain: bool) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(0b0011_0000 | ((qos as u8) << 1) | u8::from(retain));
    raw.put_u16(pkid);
    // Callers pass MQTT topic names, which mapping limits to u16::MAX bytes.
    raw.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    raw.put_slice(topic.as_bytes());
    raw.put_slice(payload);
    Publish::deserialize(raw.freeze())
}

/// The fixed header's length and the remaining length, or `None` if more bytes are needed.
fn fixed_header(buffer: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut remaining = 0usize;
    for (index, byte) in buffer.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((index + 2, remaining)));
        }
    }
    if buffer.len() >= 5 {
        return Err(Error::Malformed(wire::Error::MalformedRemainingLength));
    }
    Ok(None)
}

/// The protocol level and, when present, the Connect Flags in a CONNECT's variable header (after
/// the protocol name).
fn connect_header(body: &[u8]) -> Result<(u8, Option<u8>)> {
    let malformed = || Error::Malformed(wire::Error::MalformedPacket);
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(malformed)?,
        *body.get(1).ok_or_else(malformed)?,
    ]));
    let level = *body.get(2 + name_len).ok_or_else(malformed)?;
    Ok((level, body.get(3 + name_len).copied()))
}

/// The fixed header's reserved flag bits must be as the spec lists them, else the packet is malformed
/// [MQTT-2.1.3-1; 3.1.1: MQTT-2.2.2-1]: 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the other
/// packets a client sends but PUBLISH (whose flags are its own).
fn check_reserved_flags(kind: u8, byte1: u8) -> Result<()> {
    let expected = match kind {
        PUBLISH => return Ok(()),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if byte1 & 0x0F == expected {
        Ok(())
    } else {
        Err(Error::Malformed(wire::Error::MalformedPacket))
    }
}

/// CONNECT's reserved flag (bit 0 of the Connect Flags) must be 0 [MQTT-3.1.2-3; 3.1.1:
/// MQTT-3.1.2-3].
fn check_connect_flags(body: &[u8]) -> Result<()> {
    let malformed = || Error::Malformed(wire::Error::MalformedPacket);
    let flags = connect_header(body)?.1.ok_or_else(malformed)?;
    if flags & 1 == 0 {
        Ok(())
    } else {
        Err(malformed())
    }
}

/// The reserved bits of every subscription options byte must be 0 [MQTT-3.8.3-5: bits 6 and 7;
/// 3.1.1: MQTT-3.8.3-4, bits 2 to 7]. rumqttd reads the rest and ignores these.
fn check_subscription_options(version: Version, body: &[u8]) -> Result<()> {
    let malformed = || Error::Malformed(wire::Error::MalformedPacket);
    let reserved = match version {
        Version::V4 => 0b1111_1100,
        Version::V5 => 0b1100_0000,
    };
    // Packet id, then (MQTT 5) the properties, whose length is a variable byte integer.
    let mut at = 2;
    if version == Version::V5 {
        let (length_len, length) = variable_byte_integer(body.get(at..).ok_or_else(malformed)?)?;
        at += length_len + length;
    }
    while at < body.len() {
        let filter_len = usize::from(u16::from_be_bytes([
            *body.get(at).ok_or_else(malformed)?,
            *body.get(at + 1).ok_or_else(malformed)?,
        ]));
        at += 2 + filter_len;
        let options = *body.get(at).ok_or_else(malformed)?;
        if options & reserved != 0 {
            return Err(malformed());
        }
        at += 1;
    }
    Ok(())
}

/// A variable byte integer at the start of `bytes`: (its length in bytes, its value). More than
/// four bytes, or bytes that end before it does, make the packet malformed [MQTT-1.5.5-1].
fn variable_byte_integer(bytes: &[u8]) -> Result<(usize, usize)> {
    let mut value = 0usize;
    for (index, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((index + 1, value));
        }
    }
    Err(Error::Malformed(wire::Error::MalformedPacket))
}

/// QoS, DUP and packet id of a whole PUBLISH frame.
fn publish_header(frame: &[u8], header_len: usize) -> Result<PublishHeader> {
    let flags = frame[0];
    let qos = wire::qos((flags >> 1) & 0b11).ok_or(Error::Malformed(wire::Error::InvalidQoS(3)))?;
    let dup = flags & 0b1000 != 0;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        let malformed = || Error::Malformed(wire::Error::MalformedPacket);
        let topic_len = usize::from(u16::from_be_bytes([
            *frame.get(header_len).ok_or_else(malformed)?,
            *frame.get(header_len + 1).ok_or_else(malformed)?,
        ]));
        let at = header_len + 2 + topic_len;
        u16::from_be_bytes([
            *frame.get(at).ok_or_else(malformed)?,
            *frame.get(at + 1).ok_or_else(malformed)?,
        ])
    };
    Ok(PublishHeader { qos, pkid, dup })
}

/// The same packet without MQTT 5 properties, which rumqttd's v4 writer does not accept.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(connect, _, will, _, login) => {
            Packet::Connect(connect, None, will, None, login)
        }
        Packet::ConnAck(connack, _) => Packet::ConnAck(connack, None),
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(puback, _) => Packet::PubAck(puback, None),
        Packet::Subscribe(subscribe, _) => Packet::Subscribe(subscribe, None),
        Packet::SubAck(suback, _) => Packet::SubAck(suback, None),
        Packet::PubRec(pubrec, _) => Packet::PubRec(pubrec, None),
        Packet::PubRel(pubrel, _) => Packet::PubRel(pubrel, None),
        Packet::PubComp(pubcomp, _) => Packet::PubComp(pubcomp, None),
        Packet::Unsubscribe(unsubscribe, _) => Packet::Unsubscribe(unsubscribe, None),
        Packet::UnsubAck(unsuback, _) => Packet::UnsubAck(unsuback, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        other @ (Packet::PingReq(_) | Packet::PingResp(_)) => other,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use rumqttd::protocol::PublishProperties;

    use super::*;

    /// CONNECT of mosquitto_pub -V mqttv311 -i c1 (captured), then a QoS 1 PUBLISH.
    const CONNECT_V4: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
    const PUBLISH_QOS1: &[u8] = b"\x32\x0a\x00\x03a/b\x00\x07hey";

    #[test]
    fn reads_the_version_from_connect_then_publish_header() {
        let mut codec = Codec::new(1024);
        let mut buffer = BytesMut::from(&[CONNECT_V4, PUBLISH_QOS1].concat()[..]);
        let connect = codec.decode(&mut buffer).unwrap().unwrap();
        assert!(matches!(connect.packet, Packet::Connect(..)));
        assert_eq!(codec.version(), Some(Version::V4));
        let publish = codec.decode(&mut buffer).unwrap().unwrap();
        assert_eq!(
            publish.publish,
            Some(PublishHeader {
                qos: QoS::AtLeastOnce,
                pkid: 7,
                dup: false
            })
        );
        let Packet::Publish(publish, _) = publish.packet else {
            panic!("not a publish")
        };
        assert_eq!(&publish.topic[..], b"a/b");
        assert_eq!(&publish.payload[..], b"hey");
        assert!(buffer.is_empty());
    }

    /// An MQTT 5 CONNECT (client id `c5`, no properties) with the given Connect Flags.
    fn connect_v5(flags: u8) -> Vec<u8> {
        let mut frame = b"\x10\x0f\x00\x04MQTT\x05".to_vec();
        frame.extend([flags, 0x00, 0x3c, 0x00, 0x00, 0x02, b'c', b'5']);
        frame
    }

    fn decoded_after_connect(packet: &[u8]) -> Result<Option<Frame>> {
        let mut codec = Codec::new(1024);
        let mut buffer = BytesMut::from(&[&connect_v5(0x02)[..], packet].concat()[..]);
        codec.decode(&mut buffer)?;
        codec.decode(&mut buffer)
    }

    #[test]
    fn a_reserved_connect_flag_is_malformed() {
        let mut codec = Codec::new(1024);
        assert!(
            codec
                .decode(&mut BytesMut::from(&connect_v5(0x02)[..]))
                .is_ok()
        );
        let mut codec = Codec::new(1024);
        let refused = codec.decode(&mut BytesMut::from(&connect_v5(0x03)[..]));
        assert!(matches!(refused, Err(Error::Malformed(_))), "{refused:?}");
    }

    #[test]
    fn reserved_fixed_header_flags_are_checked() {
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE carry 0b0010; PUBACK, PINGREQ and DISCONNECT carry 0.
        for good in [
            &b"\x62\x02\x00\x01"[..],
            b"\x82\x07\x00\x01\x00\x00\x01a\x01",
            b"\xa2\x06\x00\x01\x00\x00\x01a",
            b"\x40\x02\x00\x01",
            b"\xc0\x00",
            b"\xe0\x00",
        ] {
            assert!(decoded_after_connect(good).is_ok(), "{good:x?}");
        }
        for bad in [
            &b"\x60\x02\x00\x01"[..],
            b"\x80\x07\x00\x01\x00\x00\x01a\x01",
            b"\xa0\x06\x00\x01\x00\x00\x01a",
            b"\x41\x02\x00\x01",
            b"\xc4\x00",
            b"\xe1\x00",
        ] {
            let refused = decoded_after_connect(bad);
            assert!(
                matches!(refused, Err(Error::Malformed(_))),
                "{bad:x?}: {refused:?}"
            );
        }
    }

    /// Found by the `session` fuzz target: a DISCONNECT to an MQTT 5 client whose maximum packet
    /// size leaves no room for the reason string went out as a normal disconnection.
    #[test]
    fn a_disconnect_without_properties_to_send_keeps_its_reason_code() {
        let mut codec = Codec::new(1024);
        codec
            .decode(&mut BytesMut::from(
                &b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00"[..],
            ))
            .unwrap();
        assert_eq!(codec.version(), Some(Version::V5));
        let empty = DisconnectProperties {
            session_expiry_interval: None,
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        };
        for (reason, expected) in [
            (
                DisconnectReasonCode::ProtocolError,
                &b"\xe0\x02\x82\x00"[..],
            ),
            (DisconnectReasonCode::PacketTooLarge, b"\xe0\x02\x95\x00"),
            (
                DisconnectReasonCode::ServerShuttingDown,
                b"\xe0\x02\x8b\x00",
            ),
            (DisconnectReasonCode::NormalDisconnection, b"\xe0\x00"),
        ] {
            for properties in [None, Some(empty.clone())] {
                let mut out = BytesMut::new();
                let packet = Packet::Disconnect(
                    Disconnect {
                        reason_code: reason,
                    },
                    properties,
                );
                codec.encode(packet, &mut out).unwrap();
                assert_eq!(&out[..], expected, "{reason:?}");
            }
        }
        // With properties to send, rumqttd writes it.
        let mut out = BytesMut::new();
        let properties = DisconnectProperties {
            reason_string: Some("why".into()),
            ..empty
        };
        let packet = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::ProtocolError,
            },
            Some(properties),
        );
        codec.encode(packet, &mut out).unwrap();
        assert_eq!(&out[..], b"\xe0\x08\x82\x06\x1f\x00\x03why");
    }

    #[test]
    fn a_disconnect_with_a_reason_and_no_property_length_is_read() {
        for (bytes, expected) in [
            (
                &b"\xe0\x01\x04"[..],
                DisconnectReasonCode::DisconnectWithWillMessage,
            ),
            (b"\xe0\x01\x00", DisconnectReasonCode::NormalDisconnection),
            (b"\xe0\x02\x80\x00", DisconnectReasonCode::UnspecifiedError),
        ] {
            let frame = decoded_after_connect(bytes).unwrap().unwrap();
            let Packet::Disconnect(disconnect, None) = frame.packet else {
                panic!("not a DISCONNECT without properties: {:?}", frame.packet)
            };
            assert_eq!(disconnect.reason_code, expected);
        }
    }

    #[test]
    fn reserved_subscription_option_bits_are_malformed() {
        // Two filters, `a` (options 0x01) and `b` (options as given), no properties.
        let subscribe = |options: u8| {
            [
                &b"\x82\x0b\x00\x01\x00\x00\x01a\x01\x00\x01b"[..],
                &[options],
            ]
            .concat()
        };
        assert!(decoded_after_connect(&subscribe(0x2e)).is_ok());
        for options in [0x41, 0x81] {
            let refused = decoded_after_connect(&subscribe(options));
            assert!(
                matches!(refused, Err(Error::Malformed(_))),
                "{options:#x}: {refused:?}"
            );
        }
        // With properties (a subscription identifier) before the filters.
        let identified = b"\x82\x09\x00\x01\x02\x0b\x07\x00\x01a\x41";
        assert!(matches!(
            decoded_after_connect(identified),
            Err(Error::Malformed(_))
        ));
        // A properties length of two bytes (130 bytes of user property), then a good filter.
        let mut long = vec![
            0x82, 0x8a, 0x01, 0x00, 0x01, 0x82, 0x01, 0x26, 0x00, 0x01, b'k',
        ];
        long.extend([0x00, 0x7c]);
        long.extend([b'v'; 0x7c]);
        long.extend([0x00, 0x01, b'a', 0x01]);
        assert_eq!(long.len(), 3 + 0x8a);
        assert!(decoded_after_connect(&long).is_ok());
        // MQTT 3.1.1 keeps bits 2 to 7 reserved.
        let mut codec = Codec::new(1024);
        let frames = [CONNECT_V4, b"\x82\x06\x00\x01\x00\x01a\x04"].concat();
        let mut buffer = BytesMut::from(&frames[..]);
        codec.decode(&mut buffer).unwrap();
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn an_unsubscribe_without_filters_is_a_protocol_error() {
        let refused = decoded_after_connect(b"\xa2\x03\x00\x01\x00");
        assert!(matches!(refused, Err(Error::Protocol(_))), "{refused:?}");
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let mut codec = Codec::new(1024);
        for cut in 0..CONNECT_V4.len() {
            let mut buffer = BytesMut::from(&CONNECT_V4[..cut]);
            assert!(codec.decode(&mut buffer).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_publish_before_connect_oversize_and_old_versions() {
        let mut codec = Codec::new(1024);
        let mut buffer = BytesMut::from(PUBLISH_QOS1);
        assert!(matches!(codec.decode(&mut buffer), Err(Error::Protocol(_))));
        let mut codec = Codec::new(4);
        let mut buffer = BytesMut::from(CONNECT_V4);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(Error::PacketTooLarge { size: 14, limit: 4 })
        ));
        let mut codec = Codec::new(1024);
        let mut buffer = BytesMut::from(&b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02c1"[..]);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(Error::UnsupportedProtocol(3))
        ));
    }

    #[test]
    fn outgoing_publish_round_trips_in_both_versions() {
        for version in [Version::V4, Version::V5] {
            let mut codec = Codec::with_version(version, 1024);
            let publish = outgoing_publish("x/y", b"payload", QoS::ExactlyOnce, 513, true);
            let properties = (version == Version::V5).then(|| PublishProperties {
                user_properties: vec![("k".into(), "v".into())],
                ..PublishProperties::default()
            });
            let mut buffer = BytesMut::new();
            codec
                .encode(Packet::Publish(publish, properties.clone()), &mut buffer)
                .unwrap();
            let frame = codec.decode(&mut buffer).unwrap().unwrap();
            assert_eq!(
                frame.publish,
                Some(PublishHeader {
                    qos: QoS::ExactlyOnce,
                    pkid: 513,
                    dup: false
                })
            );
            let Packet::Publish(publish, decoded_properties) = frame.packet else {
                panic!("not a publish")
            };
            assert!(publish.retain);
            assert_eq!(publish.topic, Bytes::from_static(b"x/y"));
            assert_eq!(publish.payload, Bytes::from_static(b"payload"));
            assert_eq!(decoded_properties, properties);
        }
    }

    proptest! {
        /// Whatever arrives, decoding answers a packet, "need more bytes" or an error; it never panics
        /// and never loops without consuming.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), v5 in any::<bool>()) {
            let version = if v5 { Version::V5 } else { Version::V4 };
            let mut codec = Codec::with_version(version, 256);
            let mut buffer = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buffer) {}
            let mut codec = Codec::new(256);
            let mut buffer = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buffer) {}
        }
    }
}
