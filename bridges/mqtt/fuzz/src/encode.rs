//! A script's packets as bytes on the wire, written with the bridge's own codec (rumqttd's v4 and
//! v5 writers; the 3.1.1 one drops MQTT 5 properties), and by hand where it has no say: the DUP
//! flag, a protocol level it does not speak, AUTH.

use bytes::BytesMut;
use courier_mqtt::codec::{Codec, Version, outgoing_publish};
use rumqttd::protocol::{
    Connect as WireConnect, ConnectProperties, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Filter, LastWill, LastWillProperties, Login, Packet, PingReq, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason,
    PublishProperties, QoS, RetainForwardRule, Subscribe, SubscribeProperties, Unsubscribe,
};

use crate::{
    answers::Limits,
    script::{
        AckReason, ClientId, Connect, DisconnectReason, Interval, KeepAlive, Level, PacketSize,
        Payload, ProtocolVersion, Publish, Qos, RetainHandling, Share, Step, Subscription,
        TopicFilter, TopicName, WillDelay,
    },
};

/// The client's maximum packet size for [`PacketSize::Tiny`]: smaller than a large delivery, a
/// reason string, and a CONNACK that says everything and assigns a client id (61 bytes), but not
/// than one that says only what the client must know (at most 50 bytes), which the gateway sends
/// however small the maximum.
pub const TINY_PACKET: u32 = 56;

/// The version a connection's packets after CONNECT are written in.
pub fn version(connect: &Connect) -> Version {
    match connect.version {
        ProtocolVersion::V5 => Version::V5,
        ProtocolVersion::V4 | ProtocolVersion::Unsupported => Version::V4,
    }
}

/// Appends `packet` to `out` in `version`.
fn write(version: Version, packet: Packet, out: &mut BytesMut) {
    Codec::with_version(version, usize::MAX)
        .encode(packet, out)
        .expect("rumqttd writes what the script builds");
}

/// The client id a connection names; `input` keeps different inputs' sessions apart.
pub fn client_id(id: ClientId, input: u64) -> String {
    match id {
        ClientId::Empty => String::new(),
        ClientId::Named(small) => format!("fuzz-{input}-{}", small.get()),
    }
}

/// Appends the CONNECT that opens a connection, naming `client_id`.
pub fn connect(connect: &Connect, client_id: String, out: &mut BytesMut) {
    let v5 = connect.version == ProtocolVersion::V5;
    let properties = v5.then(|| ConnectProperties {
        session_expiry_interval: connect.session_expiry.map(seconds),
        receive_maximum: connect.receive_maximum.map(|small| u16::from(small.get())),
        max_packet_size: connect.max_packet_size.map(packet_size),
        topic_alias_max: connect
            .topic_alias_maximum
            .map(|small| u16::from(small.get())),
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: connect
            .authentication_method
            .then(|| "SCRAM-SHA-256".to_owned()),
        authentication_data: None,
    });
    let will = connect.will.as_ref().map(|will| LastWill {
        topic: topic_name(&will.topic).into(),
        message: payload(will.payload).into(),
        qos: qos(will.qos),
        retain: will.retain,
    });
    let will_properties = connect
        .will
        .as_ref()
        .filter(|_| v5)
        .map(|will| LastWillProperties {
            delay_interval: will.delay.map(|delay| match delay {
                WillDelay::Zero => 0,
                WillDelay::Second => 1,
            }),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        });
    let login = connect.login.then(|| Login {
        username: "fuzz".to_owned(),
        password: "secret".to_owned(),
    });
    let packet = Packet::Connect(
        WireConnect {
            keep_alive: match connect.keep_alive {
                KeepAlive::None => 0,
                KeepAlive::Short => 1,
                KeepAlive::Minute => 60,
            },
            client_id,
            clean_session: connect.clean_start,
        },
        properties,
        will,
        will_properties,
        login,
    );
    let start = out.len();
    write(version(connect), packet, out);
    if connect.version == ProtocolVersion::Unsupported {
        // After the fixed header (one byte and the remaining length) come the protocol name's
        // length (2) and "MQTT" (4), then the level.
        let level_at = start + 1 + remaining_length_bytes(&out[start + 1..]) + 6;
        out[level_at] = 6;
    }
}

/// How many bytes the remaining length takes at the start of `bytes`.
fn remaining_length_bytes(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|byte| byte & 0x80 == 0)
        .map_or(1, |index| index + 1)
}

/// Appends one step's packet and returns it (AUTH, which rumqttd cannot write, is appended by
/// hand and not returned). Steps that are no packet (acknowledging what arrived, waiting) append
/// nothing.
pub fn step(version: Version, step: &Step, out: &mut BytesMut) -> Option<Packet> {
    let v5 = version == Version::V5;
    let packet = match step {
        Step::Publish(publish_step) => return Some(publish(version, publish_step, out)),
        Step::PubAck(pkid) => puback(pkid.get()),
        Step::PubRec(pkid, reason) => pubrec(pkid.get(), *reason),
        Step::PubRel(pkid) => Packet::PubRel(
            PubRel {
                pkid: pkid.get(),
                reason: PubRelReason::Success,
            },
            None,
        ),
        Step::PubComp(pkid) => pubcomp(pkid.get()),
        Step::Subscribe { pkid, filters, id } => Packet::Subscribe(
            Subscribe {
                pkid: pkid.get(),
                filters: filters.iter().map(subscription).collect(),
            },
            id.filter(|_| v5).map(|id| SubscribeProperties {
                id: Some(usize::from(id.get())),
                user_properties: Vec::new(),
            }),
        ),
        Step::Unsubscribe { pkid, filters } => Packet::Unsubscribe(
            Unsubscribe {
                pkid: pkid.get(),
                filters: filters.iter().map(topic_filter).collect(),
            },
            None,
        ),
        Step::PingReq => Packet::PingReq(PingReq),
        Step::Disconnect {
            reason,
            session_expiry,
        } => {
            let reason_code = match reason {
                DisconnectReason::Normal => DisconnectReasonCode::NormalDisconnection,
                DisconnectReason::WithWill => DisconnectReasonCode::DisconnectWithWillMessage,
                DisconnectReason::Error => DisconnectReasonCode::UnspecifiedError,
            };
            let properties = v5.then(|| DisconnectProperties {
                session_expiry_interval: session_expiry.map(seconds),
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            });
            Packet::Disconnect(Disconnect { reason_code }, properties)
        }
        // AUTH (type 15): reason code 0x19 (re-authenticate), no properties.
        Step::Auth => {
            out.extend_from_slice(&[0xf0, 0x02, 0x19, 0x00]);
            return None;
        }
        Step::AcknowledgeReceived | Step::AwaitAnswer => return None,
    };
    write(version, packet.clone(), out);
    Some(packet)
}

fn publish(version: Version, step: &Publish, out: &mut BytesMut) -> Packet {
    let v5 = version == Version::V5;
    let alias = step
        .alias
        .filter(|_| v5)
        .map(|alias| u16::from(alias.get()));
    let topic = if alias.is_some() && step.alias_only {
        String::new()
    } else {
        topic_name(&step.topic)
    };
    // rumqttd will not write a QoS 1 or 2 PUBLISH with packet id 0 (a protocol error the gateway
    // must refuse): it is written with id 1, then patched.
    let pkid = step.pkid.get();
    let patch_pkid_zero = pkid == 0 && step.qos != Qos::AtMostOnce;
    let wire = outgoing_publish(
        &topic,
        &payload(step.payload),
        qos(step.qos),
        if patch_pkid_zero { 1 } else { pkid },
        step.retain,
    );
    let properties = alias.map(|alias| PublishProperties {
        topic_alias: Some(alias),
        ..PublishProperties::default()
    });
    let packet = Packet::Publish(wire, properties);
    let start = out.len();
    write(version, packet.clone(), out);
    if step.dup {
        out[start] |= 0x08;
    }
    if patch_pkid_zero {
        // The packet id follows the fixed header and the topic (its length, then its bytes).
        let id_at = start + 1 + remaining_length_bytes(&out[start + 1..]) + 2 + topic.len();
        out[id_at..id_at + 2].copy_from_slice(&[0, 0]);
    }
    packet
}

pub fn puback(pkid: u16) -> Packet {
    Packet::PubAck(
        PubAck {
            pkid,
            reason: PubAckReason::Success,
        },
        None,
    )
}

pub fn pubrec(pkid: u16, reason: AckReason) -> Packet {
    let reason = match reason {
        AckReason::Success => PubRecReason::Success,
        AckReason::Refused => PubRecReason::UnspecifiedError,
    };
    Packet::PubRec(PubRec { pkid, reason }, None)
}

pub fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(
        PubComp {
            pkid,
            reason: PubCompReason::Success,
        },
        None,
    )
}

/// Writes an acknowledgement the client sends of its own accord (see `client`).
pub fn acknowledgement(version: Version, packet: Packet, out: &mut BytesMut) {
    write(version, packet, out);
}

fn subscription(subscription: &Subscription) -> Filter {
    Filter {
        path: topic_filter(&subscription.filter),
        qos: qos(subscription.qos),
        nolocal: subscription.no_local,
        preserve_retain: subscription.retain_as_published,
        retain_forward_rule: match subscription.retain_handling {
            RetainHandling::OnSubscribe => RetainForwardRule::OnEverySubscribe,
            RetainHandling::OnNewSubscription => RetainForwardRule::OnNewSubscribe,
            RetainHandling::Never => RetainForwardRule::Never,
        },
    }
}

pub fn topic_name(topic: &TopicName) -> String {
    levels(topic.first, &topic.rest)
}

pub fn topic_filter(filter: &TopicFilter) -> String {
    let levels = levels(filter.first, &filter.rest);
    match filter.share {
        None => levels,
        Some(Share::Group(group)) => format!("$share/g{}/{levels}", group.get()),
        Some(Share::NoGroup) => format!("$share//{levels}"),
        Some(Share::NoFilter(group)) => format!("$share/g{}", group.get()),
    }
}

fn levels(first: Level, rest: &[Level]) -> String {
    let mut text = level(first).to_owned();
    for next in rest.iter().take(2) {
        text.push('/');
        text.push_str(level(*next));
    }
    text
}

fn level(level: Level) -> &'static str {
    match level {
        Level::A => "a",
        Level::B => "b",
        Level::Routed => "r",
        Level::Empty => "",
        Level::Plus => "+",
        Level::Hash => "#",
        Level::Dollar => "$SYS",
        Level::Nul => "x\0y",
    }
}

pub fn payload(payload: Payload) -> Vec<u8> {
    match payload {
        Payload::Empty => Vec::new(),
        Payload::Short(byte) => vec![byte; 5],
        Payload::Large => vec![b'L'; 2000],
    }
}

pub fn qos(qos: Qos) -> QoS {
    match qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn seconds(interval: Interval) -> u32 {
    match interval {
        Interval::Zero => 0,
        Interval::Second => 1,
        Interval::Forever => u32::MAX,
    }
}

fn packet_size(size: PacketSize) -> u32 {
    match size {
        PacketSize::Zero => 0,
        PacketSize::Tiny => TINY_PACKET,
        PacketSize::Roomy => 64 * 1024,
    }
}

/// The limits a CONNECT names for what the gateway may send (MQTT 5 only). A maximum packet size
/// or receive maximum of 0 is a protocol error, which the gateway refuses: no limit then.
pub fn limits(connect: &Connect) -> Limits {
    let v5 = connect.version == ProtocolVersion::V5;
    Limits {
        max_packet_size: connect
            .max_packet_size
            .filter(|_| v5)
            .map(packet_size)
            .filter(|size| *size > 0),
        topic_alias_maximum: connect
            .topic_alias_maximum
            .filter(|_| v5)
            .map(|small| u16::from(small.get())),
        receive_maximum: connect
            .receive_maximum
            .filter(|_| v5)
            .map(|small| u16::from(small.get()))
            .filter(|maximum| *maximum > 0),
    }
}
