//! Writes the seed corpora of the `session` and `decode` targets (`corpus/<target>/`): client
//! scripts that reach the session code's main paths (QoS 1 and 2 both ways, subscriptions shared,
//! wildcard and routed, topic aliases, persistent sessions coming back, wills, the limits), as the
//! `session` target's input bytes and, for `decode`, as the packets they put on the wire.
//!
//! `arbitrary` has no inverse, so the inputs are written by [`Unparse`], which each seed checks by
//! reading its bytes back with `Script::arbitrary`. Run from this directory (not under cargo fuzz):
//! `cargo run --example seeds`.

use std::{fs, path::Path};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use courier_mqtt_fuzz::{encode, script::*};

fn main() {
    let seeds = seeds();
    for target in ["session", "decode"] {
        let directory = Path::new("corpus").join(target);
        if directory.exists() {
            fs::remove_dir_all(&directory).expect("remove the old seeds");
        }
        fs::create_dir_all(&directory).expect("a corpus directory");
    }
    for (name, script) in &seeds {
        let mut bytes = Vec::new();
        script.unparse(&mut bytes);
        // As the target reads its input.
        let read_back = Script::arbitrary_take_rest(Unstructured::new(&bytes))
            .expect("a seed reads back as a script");
        assert_eq!(
            &read_back, script,
            "seed {name} does not read back as written"
        );
        fs::write(Path::new("corpus/session").join(name), &bytes).expect("write a seed");
        for (index, connection) in script.connections.iter().enumerate() {
            let mut wire = BytesMut::new();
            encode::connect(&connection.connect, "fuzz-seed".into(), &mut wire);
            let version = encode::version(&connection.connect);
            for step in &connection.steps {
                encode::step(version, step, &mut wire);
            }
            fs::write(
                Path::new("corpus/decode").join(format!("{name}-{index}")),
                &wire,
            )
            .expect("write a seed");
        }
    }
    println!("wrote {} scripts", seeds.len());
}

// ---- The seeds ----

fn seeds() -> Vec<(&'static str, Script)> {
    vec![
        (
            "v4-ping-disconnect",
            one(connect(V4), vec![Step::PingReq, disconnect()]),
        ),
        (
            "v4-publish-each-qos",
            one(
                connect(V4),
                vec![
                    publish(&[Level::A], Qos::AtMostOnce, 0),
                    publish(&[Level::A, Level::B], Qos::AtLeastOnce, 1),
                    Step::AwaitAnswer,
                    publish(&[Level::B], Qos::ExactlyOnce, 2),
                    Step::AwaitAnswer,
                    Step::PubRel(id(2)),
                    Step::AwaitAnswer,
                    disconnect(),
                ],
            ),
        ),
        (
            "v5-subscribe-wildcard-and-receive",
            one(
                connect(V5),
                vec![
                    subscribe(
                        1,
                        vec![(filter(&[Level::A, Level::Hash]), Qos::AtLeastOnce)],
                    ),
                    Step::AwaitAnswer,
                    publish(&[Level::A, Level::B], Qos::AtLeastOnce, 2),
                    Step::AwaitAnswer,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    publish(&[Level::A], Qos::AtMostOnce, 0),
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    disconnect(),
                ],
            ),
        ),
        (
            "v4-subscribe-plus-qos2-both-ways",
            one(
                connect(V4),
                vec![
                    subscribe(
                        1,
                        vec![(filter(&[Level::A, Level::Plus]), Qos::ExactlyOnce)],
                    ),
                    Step::AwaitAnswer,
                    publish(&[Level::A, Level::B], Qos::ExactlyOnce, 3),
                    Step::AwaitAnswer,
                    Step::PubRel(id(3)),
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    Step::AwaitAnswer,
                    disconnect(),
                ],
            ),
        ),
        (
            "v5-shared-subscription",
            one(
                connect(V5),
                vec![
                    subscribe(
                        1,
                        vec![(
                            shared(Share::Group(Small(0)), &[Level::A, Level::Plus]),
                            Qos::ExactlyOnce,
                        )],
                    ),
                    publish(&[Level::A, Level::B], Qos::AtLeastOnce, 2),
                    Step::AwaitAnswer,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    Step::Unsubscribe {
                        pkid: id(3),
                        filters: vec![shared(Share::Group(Small(0)), &[Level::A, Level::Plus])],
                    },
                    Step::AwaitAnswer,
                    disconnect(),
                ],
            ),
        ),
        (
            "v5-bad-shares-and-filters",
            one(
                connect(V5),
                vec![
                    subscribe(
                        1,
                        vec![
                            (shared(Share::NoGroup, &[Level::A]), Qos::AtLeastOnce),
                            (
                                shared(Share::NoFilter(Small(1)), &[Level::A]),
                                Qos::AtMostOnce,
                            ),
                            (filter(&[Level::Hash, Level::A]), Qos::AtMostOnce),
                            (filter(&[Level::Dollar, Level::Hash]), Qos::AtLeastOnce),
                        ],
                    ),
                    Step::AwaitAnswer,
                    subscribe(2, vec![]),
                    Step::AwaitAnswer,
                ],
            ),
        ),
        (
            "v5-topic-aliases",
            one(
                connect(V5),
                vec![
                    publish_alias(&[Level::A, Level::B], 1, false),
                    publish_alias(&[Level::A], 1, true),
                    Step::AwaitAnswer,
                    publish_alias(&[Level::A], 2, true),
                    Step::AwaitAnswer,
                ],
            ),
        ),
        (
            "v5-persistent-session-comes-back",
            Script {
                connections: vec![
                    Connection {
                        connect: persistent(connect_as(V5, 0)),
                        steps: vec![
                            subscribe(
                                1,
                                vec![(filter(&[Level::B, Level::Hash]), Qos::AtLeastOnce)],
                            ),
                            Step::AwaitAnswer,
                            disconnect(),
                        ],
                    },
                    Connection {
                        connect: connect_as(V4, 1),
                        steps: vec![
                            publish(&[Level::B, Level::A], Qos::AtLeastOnce, 1),
                            publish(&[Level::B], Qos::ExactlyOnce, 2),
                            Step::AwaitAnswer,
                            Step::PubRel(id(2)),
                            Step::AwaitAnswer,
                        ],
                    },
                    Connection {
                        connect: persistent(connect_as(V5, 0)),
                        steps: vec![
                            Step::AwaitAnswer,
                            Step::AwaitAnswer,
                            Step::AcknowledgeReceived,
                            Step::AwaitAnswer,
                            Step::AcknowledgeReceived,
                            disconnect(),
                        ],
                    },
                ],
            },
        ),
        (
            "v4-persistent-qos2-left-unreleased",
            Script {
                connections: vec![
                    Connection {
                        connect: persistent(connect_as(V4, 2)),
                        steps: vec![publish(&[Level::A], Qos::ExactlyOnce, 4), Step::AwaitAnswer],
                    },
                    Connection {
                        connect: persistent(connect_as(V4, 2)),
                        steps: vec![
                            Step::PubRel(id(4)),
                            Step::AwaitAnswer,
                            publish(&[Level::A], Qos::ExactlyOnce, 4),
                            Step::AwaitAnswer,
                        ],
                    },
                ],
            },
        ),
        (
            "v5-will-published-and-received",
            Script {
                connections: vec![
                    Connection {
                        connect: Connect {
                            will: Some(Will {
                                topic: topic(&[Level::A, Level::A]),
                                qos: Qos::AtLeastOnce,
                                retain: true,
                                payload: Payload::Short(b'w'),
                                delay: Some(WillDelay::Zero),
                            }),
                            ..connect_as(V5, 0)
                        },
                        steps: vec![Step::Disconnect {
                            reason: DisconnectReason::WithWill,
                            session_expiry: None,
                        }],
                    },
                    Connection {
                        connect: connect_as(V5, 1),
                        steps: vec![
                            subscribe(
                                1,
                                vec![(filter(&[Level::A, Level::Hash]), Qos::AtLeastOnce)],
                            ),
                            Step::AwaitAnswer,
                            Step::AwaitAnswer,
                            Step::AcknowledgeReceived,
                        ],
                    },
                ],
            },
        ),
        (
            "v5-receive-maximum-one",
            one(
                Connect {
                    receive_maximum: Some(Small(1)),
                    ..connect(V5)
                },
                vec![
                    subscribe(1, vec![(filter(&[Level::Hash]), Qos::AtLeastOnce)]),
                    publish(&[Level::A], Qos::AtMostOnce, 0),
                    publish(&[Level::B], Qos::AtMostOnce, 0),
                    publish(&[Level::A, Level::B], Qos::AtMostOnce, 0),
                    Step::AwaitAnswer,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    Step::AwaitAnswer,
                ],
            ),
        ),
        (
            "v5-tiny-maximum-packet-size",
            one(
                Connect {
                    max_packet_size: Some(PacketSize::Tiny),
                    ..connect(V5)
                },
                vec![
                    subscribe(1, vec![(filter(&[Level::A]), Qos::AtMostOnce)]),
                    Step::Publish(Publish {
                        payload: Payload::Large,
                        ..publish_of(&[Level::A], Qos::AtLeastOnce, 1)
                    }),
                    Step::AwaitAnswer,
                    Step::Publish(Publish {
                        topic: topic(&[Level::Plus]),
                        ..publish_of(&[Level::A], Qos::AtLeastOnce, 2)
                    }),
                    Step::AwaitAnswer,
                ],
            ),
        ),
        // What the fuzzer found (fixed): a DISCONNECT with no room for its reason string lost its
        // reason code, and a CONNACK assigning a client id was larger than the client takes.
        (
            "v5-tiny-client-told-why",
            one(
                Connect {
                    max_packet_size: Some(PacketSize::Tiny),
                    ..connect(V5)
                },
                vec![publish_of_step(
                    &[Level::A],
                    Qos::AtLeastOnce,
                    PacketId::Zero,
                )],
            ),
        ),
        (
            "v5-tiny-client-assigned-id",
            one(
                Connect {
                    client_id: ClientId::Empty,
                    max_packet_size: Some(PacketSize::Tiny),
                    ..connect(V5)
                },
                vec![Step::PingReq, disconnect()],
            ),
        ),
        (
            "v5-retained-then-subscribe",
            one(
                connect(V5),
                vec![
                    Step::Publish(Publish {
                        retain: true,
                        ..publish_of(&[Level::B, Level::B], Qos::AtLeastOnce, 1)
                    }),
                    Step::AwaitAnswer,
                    Step::Subscribe {
                        pkid: id(2),
                        filters: vec![Subscription {
                            filter: filter(&[Level::B, Level::Plus]),
                            qos: Qos::ExactlyOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::OnNewSubscription,
                        }],
                        id: Some(Small(2)),
                    },
                    Step::AwaitAnswer,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                ],
            ),
        ),
        (
            "v4-routed-topic",
            one(
                connect(V4),
                vec![
                    subscribe(
                        1,
                        vec![(filter(&[Level::Routed, Level::Hash]), Qos::AtLeastOnce)],
                    ),
                    publish(&[Level::Routed, Level::A], Qos::AtLeastOnce, 2),
                    Step::AwaitAnswer,
                    Step::AwaitAnswer,
                    Step::AcknowledgeReceived,
                ],
            ),
        ),
        (
            "v5-refused-topics",
            one(
                connect(V5),
                vec![
                    publish(&[Level::Dollar, Level::A], Qos::AtLeastOnce, 1),
                    Step::AwaitAnswer,
                    publish(&[Level::A, Level::Nul], Qos::AtLeastOnce, 2),
                    Step::AwaitAnswer,
                ],
            ),
        ),
        (
            "v5-publish-wildcard-topic",
            one(
                connect(V5),
                vec![publish(&[Level::A, Level::Hash], Qos::AtMostOnce, 0)],
            ),
        ),
        (
            "v4-qos2-duplicate-and-unknown-release",
            one(
                connect(V4),
                vec![
                    publish(&[Level::A], Qos::ExactlyOnce, 1),
                    Step::Publish(Publish {
                        dup: true,
                        ..publish_of(&[Level::A], Qos::ExactlyOnce, 1)
                    }),
                    Step::AwaitAnswer,
                    Step::PubRel(id(1)),
                    Step::PubRel(id(3)),
                    Step::PubAck(id(2)),
                    Step::PubComp(id(4)),
                    Step::PubRec(id(1), AckReason::Refused),
                    Step::AwaitAnswer,
                ],
            ),
        ),
        (
            "v5-qos1-packet-id-zero",
            one(
                connect(V5),
                vec![publish_of_step(
                    &[Level::A],
                    Qos::AtLeastOnce,
                    PacketId::Zero,
                )],
            ),
        ),
        (
            "v5-expiry-at-disconnect-of-a-clean-session",
            one(
                connect(V5),
                vec![Step::Disconnect {
                    reason: DisconnectReason::Normal,
                    session_expiry: Some(Interval::Second),
                }],
            ),
        ),
        (
            "v5-auth-packet",
            one(connect(V5), vec![Step::PingReq, Step::Auth]),
        ),
        (
            "v5-enhanced-authentication",
            one(
                Connect {
                    authentication_method: true,
                    ..connect(V5)
                },
                vec![Step::PingReq],
            ),
        ),
        ("v4-auth-packet", one(connect(V4), vec![Step::Auth])),
        (
            "v4-login-refused",
            one(
                Connect {
                    login: true,
                    ..connect(V4)
                },
                vec![],
            ),
        ),
        (
            "v4-empty-id-persistent-refused",
            one(
                Connect {
                    client_id: ClientId::Empty,
                    clean_start: false,
                    ..connect(V4)
                },
                vec![],
            ),
        ),
        (
            "v5-empty-id-assigned",
            one(
                Connect {
                    client_id: ClientId::Empty,
                    ..connect(V5)
                },
                vec![Step::PingReq, disconnect()],
            ),
        ),
        (
            "unsupported-protocol-level",
            one(connect(ProtocolVersion::Unsupported), vec![Step::PingReq]),
        ),
        (
            "v5-receive-maximum-zero",
            one(
                Connect {
                    receive_maximum: Some(Small(0)),
                    ..connect(V5)
                },
                vec![],
            ),
        ),
        (
            "v5-keep-alive-short",
            one(
                Connect {
                    keep_alive: KeepAlive::Short,
                    ..connect(V5)
                },
                vec![Step::AwaitAnswer, Step::PingReq, Step::AwaitAnswer],
            ),
        ),
        (
            "v5-session-expiry-at-disconnect",
            one(
                persistent(connect_as(V5, 3)),
                vec![
                    subscribe(
                        1,
                        vec![(filter(&[Level::Empty, Level::A]), Qos::AtMostOnce)],
                    ),
                    Step::Disconnect {
                        reason: DisconnectReason::Error,
                        session_expiry: Some(Interval::Zero),
                    },
                ],
            ),
        ),
    ]
}

const V4: ProtocolVersion = ProtocolVersion::V4;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn one(connect: Connect, steps: Vec<Step>) -> Script {
    Script {
        connections: vec![Connection { connect, steps }],
    }
}

fn connect(version: ProtocolVersion) -> Connect {
    connect_as(version, 0)
}

fn connect_as(version: ProtocolVersion, client: u8) -> Connect {
    Connect {
        version,
        client_id: ClientId::Named(Small(client)),
        clean_start: true,
        keep_alive: KeepAlive::Minute,
        login: false,
        will: None,
        session_expiry: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_maximum: None,
        authentication_method: false,
    }
}

/// A session that outlives its connection (MQTT 5 needs an expiry for that).
fn persistent(connect: Connect) -> Connect {
    Connect {
        clean_start: false,
        session_expiry: (connect.version == V5).then_some(Interval::Forever),
        ..connect
    }
}

fn id(id: u8) -> PacketId {
    PacketId::Few(Small(id - 1))
}

fn topic(levels: &[Level]) -> TopicName {
    TopicName {
        first: levels[0],
        rest: levels[1..].to_vec(),
    }
}

fn filter(levels: &[Level]) -> TopicFilter {
    TopicFilter {
        share: None,
        first: levels[0],
        rest: levels[1..].to_vec(),
    }
}

fn shared(share: Share, levels: &[Level]) -> TopicFilter {
    TopicFilter {
        share: Some(share),
        ..filter(levels)
    }
}

fn publish_of_step(levels: &[Level], qos: Qos, pkid: PacketId) -> Step {
    Step::Publish(Publish {
        pkid,
        ..publish_of(levels, qos, 1)
    })
}

fn publish_of(levels: &[Level], qos: Qos, pkid: u8) -> Publish {
    Publish {
        topic: topic(levels),
        alias: None,
        alias_only: false,
        qos,
        pkid: if pkid == 0 { PacketId::Zero } else { id(pkid) },
        retain: false,
        dup: false,
        payload: Payload::Short(b'p'),
    }
}

fn publish(levels: &[Level], qos: Qos, pkid: u8) -> Step {
    Step::Publish(publish_of(levels, qos, pkid))
}

fn publish_alias(levels: &[Level], alias: u8, alias_only: bool) -> Step {
    Step::Publish(Publish {
        alias: Some(Small(alias)),
        alias_only,
        ..publish_of(levels, Qos::AtMostOnce, 0)
    })
}

fn subscribe(pkid: u8, filters: Vec<(TopicFilter, Qos)>) -> Step {
    Step::Subscribe {
        pkid: id(pkid),
        filters: filters
            .into_iter()
            .map(|(filter, qos)| Subscription {
                filter,
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            })
            .collect(),
        id: None,
    }
}

fn disconnect() -> Step {
    Step::Disconnect {
        reason: DisconnectReason::Normal,
        session_expiry: None,
    }
}

// ---- `arbitrary`'s reading, inverted ----

/// Writes the bytes `Arbitrary::arbitrary` (and `arbitrary_take_rest`) reads back as `self`
/// (arbitrary 1.5: integers little endian, `bool` a byte, `Option` a bool then the value, a
/// collection each element after a `true` byte and a `false` byte at its end, an enum's variant a
/// `u32` scaled to the count).
trait Unparse {
    fn unparse(&self, out: &mut Vec<u8>);
}

fn variant(index: usize, count: usize, out: &mut Vec<u8>) {
    // The smallest `x` with `(x * count) >> 32 == index`.
    let x = ((index as u64) << 32).div_ceil(count as u64);
    out.extend_from_slice(&u32::try_from(x).expect("a variant index").to_le_bytes());
}

impl Unparse for u8 {
    fn unparse(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Unparse for u16 {
    fn unparse(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Unparse for bool {
    fn unparse(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Unparse> Unparse for Option<T> {
    fn unparse(&self, out: &mut Vec<u8>) {
        self.is_some().unparse(out);
        if let Some(value) = self {
            value.unparse(out);
        }
    }
}

impl<T: Unparse> Unparse for Vec<T> {
    fn unparse(&self, out: &mut Vec<u8>) {
        for element in self {
            true.unparse(out);
            element.unparse(out);
        }
        false.unparse(out);
    }
}

/// Structs: their fields in order.
macro_rules! unparse_fields {
    ($($type:ident { $($field:ident),* })*) => {$(
        impl Unparse for $type {
            fn unparse(&self, out: &mut Vec<u8>) {
                $(self.$field.unparse(out);)*
            }
        }
    )*};
}

unparse_fields! {
    Script { connections }
    Connection { connect, steps }
    Connect {
        version, client_id, clean_start, keep_alive, login, will, session_expiry,
        receive_maximum, max_packet_size, topic_alias_maximum, authentication_method
    }
    Will { topic, qos, retain, payload, delay }
    TopicName { first, rest }
    TopicFilter { share, first, rest }
    Publish { topic, alias, alias_only, qos, pkid, retain, dup, payload }
    Subscription { filter, qos, no_local, retain_as_published, retain_handling }
}

impl Unparse for Small {
    fn unparse(&self, out: &mut Vec<u8>) {
        self.0.unparse(out);
    }
}

/// Enums without fields: the variant, by its place in the list (which must be the declaration's).
macro_rules! unparse_variants {
    ($($type:ident [$($variant:ident),*])*) => {$(
        impl Unparse for $type {
            fn unparse(&self, out: &mut Vec<u8>) {
                let variants = [$($type::$variant),*];
                let index = variants.iter().position(|variant| variant == self).expect("listed");
                variant(index, variants.len(), out);
            }
        }
    )*};
}

unparse_variants! {
    ProtocolVersion [V4, V5, Unsupported]
    KeepAlive [None, Short, Minute]
    WillDelay [Zero, Second]
    Interval [Zero, Second, Forever]
    PacketSize [Zero, Tiny, Roomy]
    Qos [AtMostOnce, AtLeastOnce, ExactlyOnce]
    Level [A, B, Routed, Empty, Plus, Hash, Dollar, Nul]
    RetainHandling [OnSubscribe, OnNewSubscription, Never]
    AckReason [Success, Refused]
    DisconnectReason [Normal, WithWill, Error]
}

impl Unparse for ClientId {
    fn unparse(&self, out: &mut Vec<u8>) {
        match self {
            Self::Empty => variant(0, 2, out),
            Self::Named(small) => {
                variant(1, 2, out);
                small.unparse(out);
            }
        }
    }
}

impl Unparse for Payload {
    fn unparse(&self, out: &mut Vec<u8>) {
        match self {
            Self::Empty => variant(0, 3, out),
            Self::Short(byte) => {
                variant(1, 3, out);
                byte.unparse(out);
            }
            Self::Large => variant(2, 3, out),
        }
    }
}

impl Unparse for Share {
    fn unparse(&self, out: &mut Vec<u8>) {
        match self {
            Self::Group(group) => {
                variant(0, 3, out);
                group.unparse(out);
            }
            Self::NoGroup => variant(1, 3, out),
            Self::NoFilter(group) => {
                variant(2, 3, out);
                group.unparse(out);
            }
        }
    }
}

impl Unparse for PacketId {
    fn unparse(&self, out: &mut Vec<u8>) {
        match self {
            Self::Few(small) => {
                variant(0, 3, out);
                small.unparse(out);
            }
            Self::Zero => variant(1, 3, out),
            Self::Any(id) => {
                variant(2, 3, out);
                id.unparse(out);
            }
        }
    }
}

impl Unparse for Step {
    fn unparse(&self, out: &mut Vec<u8>) {
        const STEPS: usize = 12;
        match self {
            Self::Publish(publish) => {
                variant(0, STEPS, out);
                publish.unparse(out);
            }
            Self::PubAck(pkid) => {
                variant(1, STEPS, out);
                pkid.unparse(out);
            }
            Self::PubRec(pkid, reason) => {
                variant(2, STEPS, out);
                pkid.unparse(out);
                reason.unparse(out);
            }
            Self::PubRel(pkid) => {
                variant(3, STEPS, out);
                pkid.unparse(out);
            }
            Self::PubComp(pkid) => {
                variant(4, STEPS, out);
                pkid.unparse(out);
            }
            Self::Subscribe { pkid, filters, id } => {
                variant(5, STEPS, out);
                pkid.unparse(out);
                filters.unparse(out);
                id.unparse(out);
            }
            Self::Unsubscribe { pkid, filters } => {
                variant(6, STEPS, out);
                pkid.unparse(out);
                filters.unparse(out);
            }
            Self::PingReq => variant(7, STEPS, out),
            Self::Disconnect {
                reason,
                session_expiry,
            } => {
                variant(8, STEPS, out);
                reason.unparse(out);
                session_expiry.unparse(out);
            }
            Self::Auth => variant(9, STEPS, out),
            Self::AcknowledgeReceived => variant(10, STEPS, out),
            Self::AwaitAnswer => variant(11, STEPS, out),
        }
    }
}
