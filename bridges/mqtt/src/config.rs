//! `[mqtt]`: the MQTT listener, its limits, topic routes, and the older `[mqtt.auth]` spelling.

use std::{net::SocketAddr, time::Duration};

use courier_gateway::{auth::ProtocolAuth, tls::TlsConfig};
use serde::{Deserialize, Serialize};

/// The MQTT endpoint's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Serve MQTT at all.
    #[serde(default = "Config::default_enabled")]
    pub enabled: bool,
    /// Address of the MQTT-over-TCP listener (port 0 picks a free port; the ready line names it).
    #[serde(default = "Config::default_listen")]
    pub listen: SocketAddr,
    /// Address of the MQTT-over-WebSocket listener (subprotocol `mqtt`); unset serves no WebSocket.
    #[serde(default)]
    pub websocket_listen: Option<SocketAddr>,
    /// `[mqtt.tls]`: MQTT over TLS, on `tls.listen` (and secure WebSocket on
    /// `tls.websocket_listen`) beside the plain listeners, or, with neither set, on the plain
    /// listeners' addresses instead of plain text. Unset: plain text only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Largest MQTT packet accepted, in bytes (MQTT 5 clients are told in CONNACK).
    #[serde(default = "Config::default_max_packet_size")]
    pub max_packet_size: u32,
    /// QoS 1 and 2 publishes a client may have unacknowledged at once (MQTT 5 receive maximum). The
    /// gateway stops reading a connection that has this many appends in flight.
    #[serde(default = "Config::default_receive_maximum")]
    pub receive_maximum: u16,
    /// Messages the gateway sends a client before it must acknowledge them, when the client names no
    /// receive maximum of its own (MQTT 3.1.1 has none).
    #[serde(default = "Config::default_max_inflight")]
    pub max_inflight: u16,
    /// Most messages in flight to one client however large a receive maximum it names (MQTT 5
    /// allows 65,535): what the gateway holds for a client that stops acknowledging.
    #[serde(default = "Config::default_max_outbound_inflight")]
    pub max_outbound_inflight: u16,
    /// Most subscriptions one client may hold; a SUBSCRIBE past it is refused filter by filter
    /// (MQTT 5 0x97 Quota exceeded, 3.1.1 0x80).
    #[serde(default = "Config::default_max_subscriptions")]
    pub max_subscriptions: usize,
    /// Most retained messages waiting to go to one client: a new subscription's matching retained
    /// messages past it are not sent (and counted). A SUBSCRIBE made again while its previous one's
    /// retained messages still wait adds none, so `SUBSCRIBE #` repeated queues them once.
    #[serde(default = "Config::default_max_queued_retained")]
    pub max_queued_retained: usize,
    /// Most retained messages one principal holds (an anonymous client by its client id), counted
    /// from the retained topic, so the same on every replica. A retained PUBLISH that would take
    /// the count past it is refused at QoS 1 and 2 of MQTT 5 (PUBACK/PUBREC 0x97 Quota exceeded,
    /// nothing stored), and published without being retained at QoS 0 and by MQTT 3.1.1, whose
    /// only answer would be closing the connection. Replacing one's own with one no larger, and
    /// deleting one, always go. Expired retained messages count until replaced or deleted. 0 is
    /// no limit.
    #[serde(default = "Config::default_max_retained_per_principal")]
    pub max_retained_per_principal: u64,
    /// Most bytes of the retained messages one principal holds (topic, payload and properties:
    /// what every replica keeps in memory of them), counted and answered as
    /// `max_retained_per_principal`. 0 is no limit.
    #[serde(default = "Config::default_max_retained_bytes_per_principal")]
    pub max_retained_bytes_per_principal: u64,
    /// Most persistent sessions one principal keeps (connected, or left and within their expiry;
    /// a session whose replica went away without recording its end counts as connected until its
    /// client id connects again), counted from the session table, so the same on every replica
    /// (two connects at once, of different client ids, may both pass at the last place). A
    /// CONNECT that would start one more is refused with CONNACK 0x97 Quota exceeded (3.1.1: 3,
    /// server unavailable); resuming one's own session always goes. Anonymous clients are not
    /// counted (each client id is its own account), nor admins. 0 is no limit.
    #[serde(default = "Config::default_max_sessions_per_principal")]
    pub max_sessions_per_principal: u64,
    /// Longest will delay a client may ask for; longer ones are shortened to it.
    #[serde(default = "Config::default_max_will_delay", with = "humantime_serde")]
    pub max_will_delay: Duration,
    /// Longest a write to a client may make no progress: a client that stops reading its socket is
    /// disconnected after it, and what it had not acknowledged is delivered again (to its next
    /// connection, or to another member of its shared subscription).
    #[serde(default = "Config::default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Highest topic alias an MQTT 5 client may use; 0 turns aliases off.
    #[serde(default = "Config::default_topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// Longest a persistent session is kept after its client left; 0 keeps it forever. MQTT 5 clients
    /// asking for more are told the shorter interval.
    #[serde(
        default = "Config::default_max_session_expiry",
        with = "humantime_serde"
    )]
    pub max_session_expiry: Duration,
    /// Longest keep-alive a client may ask for. MQTT 5 clients asking for more, or for none (0), are
    /// told this one in CONNACK (Server Keep Alive); MQTT 3.1.1 clients are held to it without being
    /// told. 0 lets clients choose, none included.
    #[serde(default = "Config::default_max_keep_alive", with = "humantime_serde")]
    pub max_keep_alive: Duration,
    /// Add the record's `courier-id` (a ULID) as a user property to every delivery that does not carry
    /// one, so subscribers can deduplicate. Off by default: MQTT 5 requires user properties to reach
    /// subscribers unaltered, and the property costs room in clients with a small maximum packet size.
    #[serde(default)]
    pub courier_id_property: bool,
    /// How long a connection may take to send CONNECT.
    #[serde(default = "Config::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Kafka topic of MQTT messages no route names.
    #[serde(default = "Config::default_messages_topic")]
    pub messages_topic: String,
    /// Compacted Kafka topic of retained messages, keyed by MQTT topic.
    #[serde(default = "Config::default_retained_topic")]
    pub retained_topic: String,
    /// Compacted Kafka topic of session records, keyed by client id.
    #[serde(default = "Config::default_sessions_topic")]
    pub sessions_topic: String,
    /// Compacted Kafka topic of persistent sessions' unfinished QoS 2 exchanges (see `exchanges`).
    #[serde(default = "Config::default_qos2_topic")]
    pub qos2_topic: String,
    /// Routes from MQTT topic filters to Kafka topics, first match wins (`[[mqtt.routes]]`).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// `[mqtt.auth]`: the older spelling of `[auth]`'s `allow_anonymous` and `users_file` for MQTT
    /// clients only, still honoured (a key set here wins over `[auth]` for MQTT).
    #[serde(default)]
    pub auth: Option<ProtocolAuth>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: Self::default_enabled(),
            listen: Self::default_listen(),
            websocket_listen: None,
            tls: None,
            max_packet_size: Self::default_max_packet_size(),
            receive_maximum: Self::default_receive_maximum(),
            max_inflight: Self::default_max_inflight(),
            topic_alias_maximum: Self::default_topic_alias_maximum(),
            max_outbound_inflight: Self::default_max_outbound_inflight(),
            max_subscriptions: Self::default_max_subscriptions(),
            max_queued_retained: Self::default_max_queued_retained(),
            max_retained_per_principal: Self::default_max_retained_per_principal(),
            max_retained_bytes_per_principal: Self::default_max_retained_bytes_per_principal(),
            max_sessions_per_principal: Self::default_max_sessions_per_principal(),
            max_will_delay: Self::default_max_will_delay(),
            write_timeout: Self::default_write_timeout(),
            max_session_expiry: Self::default_max_session_expiry(),
            max_keep_alive: Self::default_max_keep_alive(),
            courier_id_property: false,
            connect_timeout: Self::default_connect_timeout(),
            messages_topic: Self::default_messages_topic(),
            retained_topic: Self::default_retained_topic(),
            sessions_topic: Self::default_sessions_topic(),
            qos2_topic: Self::default_qos2_topic(),
            routes: Vec::new(),
            auth: None,
        }
    }
}

impl Config {
    /// Checks what the types cannot: the TLS table's own rules. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            tls.validate_for("mqtt", true)?;
        }
        // Each of these at 0 would serve nobody: no delivery, no subscription, no write.
        if self.max_outbound_inflight == 0 {
            return Err("mqtt.max_outbound_inflight must be at least 1".into());
        }
        if self.max_subscriptions == 0 {
            return Err("mqtt.max_subscriptions must be at least 1".into());
        }
        if self.write_timeout.is_zero() {
            return Err("mqtt.write_timeout must be more than 0s".into());
        }
        Ok(())
    }

    fn default_enabled() -> bool {
        true
    }
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 1883))
    }
    fn default_max_packet_size() -> u32 {
        1 << 20
    }
    fn default_receive_maximum() -> u16 {
        256
    }
    fn default_max_inflight() -> u16 {
        100
    }
    fn default_topic_alias_maximum() -> u16 {
        64
    }
    fn default_max_outbound_inflight() -> u16 {
        1024
    }
    fn default_max_subscriptions() -> usize {
        1000
    }
    fn default_max_queued_retained() -> usize {
        100_000
    }
    /// Every replica holds the whole retained set in memory: one principal may take a bounded
    /// part of it.
    fn default_max_retained_per_principal() -> u64 {
        100_000
    }
    fn default_max_retained_bytes_per_principal() -> u64 {
        256 << 20
    }
    /// A fleet under one principal keeps one session per device: room for a large one.
    fn default_max_sessions_per_principal() -> u64 {
        100_000
    }
    fn default_max_will_delay() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    fn default_write_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_session_expiry() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    fn default_max_keep_alive() -> Duration {
        Duration::from_secs(300)
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_messages_topic() -> String {
        "mqtt.messages".into()
    }
    fn default_retained_topic() -> String {
        "mqtt.retained".into()
    }
    fn default_sessions_topic() -> String {
        "mqtt.sessions".into()
    }
    fn default_qos2_topic() -> String {
        "mqtt.qos2".into()
    }
}

/// One route: MQTT messages whose topic matches `filter` go to Kafka topic `topic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// MQTT topic filter (`+` and `#` allowed), e.g. `sensors/+/temperature`.
    pub filter: String,
    /// Kafka topic the matching messages are written to and read from.
    pub topic: String,
}
