//! A fuzz input as a client's life: one to three connections in turn (one client id may come back
//! to its session), each a CONNECT and the packets that follow it. Every field is a small choice
//! (`arbitrary` turns the fuzzer's bytes into them), so most inputs are packet sequences the
//! session code must take seriously rather than bytes its decoder refuses at once: the decoder has a
//! target of its own.

use arbitrary::Arbitrary;

/// At most this many connections per input.
pub const MAX_CONNECTIONS: usize = 3;
/// At most this many packets (and steps) after CONNECT, over all the input's connections.
pub const MAX_STEPS: usize = 64;

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub struct Script {
    pub connections: Vec<Connection>,
}

impl Script {
    /// The connections and steps a run takes, within the bounds.
    pub fn bounded(mut self) -> Self {
        self.connections.truncate(MAX_CONNECTIONS);
        let mut budget = MAX_STEPS;
        for connection in &mut self.connections {
            connection.steps.truncate(budget);
            budget -= connection.steps.len();
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub struct Connection {
    pub connect: Connect,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub struct Connect {
    pub version: ProtocolVersion,
    pub client_id: ClientId,
    pub clean_start: bool,
    pub keep_alive: KeepAlive,
    /// User name and password: the gateway has no users, so a login is refused.
    pub login: bool,
    pub will: Option<Will>,
    /// MQTT 5 properties (dropped by the 3.1.1 encoder).
    pub session_expiry: Option<Interval>,
    pub receive_maximum: Option<Small>,
    pub max_packet_size: Option<PacketSize>,
    pub topic_alias_maximum: Option<Small>,
    /// Enhanced authentication (`authentication-method`), which the gateway does not offer.
    pub authentication_method: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum ProtocolVersion {
    V4,
    V5,
    /// A protocol level the gateway does not speak.
    Unsupported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum ClientId {
    /// The server assigns one (MQTT 5), or refuses (3.1.1 without clean session).
    Empty,
    /// One of a few ids, so a later connection of the input can come back to the session.
    Named(Small),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum KeepAlive {
    None,
    /// One second: the server gives up on a client silent for 1.5 s.
    Short,
    Minute,
}

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub struct Will {
    pub topic: TopicName,
    pub qos: Qos,
    pub retain: bool,
    pub payload: Payload,
    /// MQTT 5 will delay.
    pub delay: Option<WillDelay>,
}

/// A will delay. Not a long one: a delayed will waits in a task of the gateway's, and the
/// gateway lives as long as the fuzzing process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum WillDelay {
    Zero,
    Second,
}

/// A number from 0 to 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct Small(pub u8);

impl Small {
    pub fn get(self) -> u8 {
        self.0 % 4
    }
}

/// A session expiry or will delay: none, a second, or forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Interval {
    Zero,
    Second,
    Forever,
}

/// A client's maximum packet size: smaller than some of the gateway's packets, or roomy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum PacketSize {
    Zero,
    Tiny,
    Roomy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Payload {
    Empty,
    /// A few bytes (`byte` repeated), UTF-8 or not.
    Short(u8),
    /// Larger than a tiny maximum packet size.
    Large,
}

/// A topic name of one to three levels from a small alphabet, wildcards and `$` included (which a
/// PUBLISH may not use).
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub struct TopicName {
    pub first: Level,
    pub rest: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub struct TopicFilter {
    pub share: Option<Share>,
    pub first: Level,
    pub rest: Vec<Level>,
}

/// `$share/<group>/` in front of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Share {
    Group(Small),
    /// `$share//...`: no group name.
    NoGroup,
    /// `$share/<group>` with nothing after it.
    NoFilter(Small),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Level {
    A,
    B,
    /// The first level of the route to a topic of its own.
    Routed,
    Empty,
    Plus,
    Hash,
    Dollar,
    /// A level with a NUL in it (malformed in both).
    Nul,
}

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub enum Step {
    Publish(Publish),
    PubAck(PacketId),
    PubRec(PacketId, AckReason),
    PubRel(PacketId),
    PubComp(PacketId),
    Subscribe {
        pkid: PacketId,
        filters: Vec<Subscription>,
        /// MQTT 5 subscription identifier.
        id: Option<Small>,
    },
    Unsubscribe {
        pkid: PacketId,
        filters: Vec<TopicFilter>,
    },
    PingReq,
    Disconnect {
        reason: DisconnectReason,
        session_expiry: Option<Interval>,
    },
    /// An MQTT 5 AUTH packet (a packet type 3.1.1 reserves).
    Auth,
    /// Acknowledge every delivery and PUBREL received so far, as a well-behaved client would.
    AcknowledgeReceived,
    /// Wait (briefly) until the gateway sends something more.
    AwaitAnswer,
}

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub struct Publish {
    pub topic: TopicName,
    /// An MQTT 5 topic alias; with `alias_only` the topic is left out and the alias stands for it.
    pub alias: Option<Small>,
    pub alias_only: bool,
    pub qos: Qos,
    pub pkid: PacketId,
    pub retain: bool,
    pub dup: bool,
    pub payload: Payload,
}

/// A packet id: mostly one of a few (so acks can meet their packets), sometimes 0 (invalid) or
/// any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum PacketId {
    Few(Small),
    Zero,
    Any(u16),
}

impl PacketId {
    pub fn get(self) -> u16 {
        match self {
            Self::Few(small) => u16::from(small.get()) + 1,
            Self::Zero => 0,
            Self::Any(id) => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Arbitrary)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub qos: Qos,
    /// MQTT 5 options.
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum RetainHandling {
    OnSubscribe,
    OnNewSubscription,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum AckReason {
    Success,
    /// A failure code (MQTT 5): the exchange ends there.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum DisconnectReason {
    Normal,
    WithWill,
    Error,
}
