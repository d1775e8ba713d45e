//! `[limits]`: connection limits for the whole process, per listener and per source address, and
//! the default quotas of every principal.
//!
//! ```toml
//! [limits]
//! max_connections = 50000            # every listener together; unset: 90% of the open-files limit
//! max_connections_per_address = 1000 # from one address (IPv6: its /64), every listener together
//! connect_rate_per_address = 20      # new connections per second from one address (burst: as many)
//!
//! [limits.listeners.mqtt]            # one listener's own caps, on top (names as in the ready line)
//! max_connections = 20000
//!
//! [limits.quotas]
//! over_quota = "slow"                # or "refuse", where the protocol has an answer
//! [limits.quotas.default]            # each principal, every protocol together
//! messages_in_per_second = 1000
//! [limits.quotas.mqtt]               # each principal, through MQTT only
//! bytes_in_per_second = 1048576
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The listener names `[limits.listeners.<name>]` may use: the ready line's.
const LISTENER_NAMES: [&str; 8] = [
    "grpc", "grpcs", "mqtt", "mqtts", "mqtt-ws", "mqtt-wss", "amqp", "amqps",
];

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections the process serves at once, every listener together; past it a client is
    /// refused in its protocol. Unset: 90% of the open-files limit (the rest stays for the log's
    /// files and the Kafka client), so a flood is refused cleanly rather than failing `accept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Connections one source address may hold at once (an IPv6 client by its /64), every listener
    /// together; 0 is no limit. Off by default: behind a load balancer that rewrites source
    /// addresses every client comes from a handful of addresses.
    #[serde(default)]
    pub max_connections_per_address: u32,
    /// New connections per second one source address may open (with a burst of as many); 0 is no
    /// limit. Off by default for the same reason.
    #[serde(default)]
    pub connect_rate_per_address: u32,
    /// One listener's own caps, on top of the process's (`[limits.listeners.mqtt]`, ...).
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerLimits>,
    /// `[limits.quotas]`: what each principal may send and receive.
    #[serde(default)]
    pub quotas: QuotaConfig,
}

impl LimitsConfig {
    /// What the types cannot check; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = self
            .listeners
            .keys()
            .find(|name| !LISTENER_NAMES.contains(&name.as_str()))
        {
            return Err(format!(
                "limits.listeners.{name}: no such listener (one of {})",
                LISTENER_NAMES.join(", ")
            ));
        }
        if self.max_connections == Some(0) {
            return Err("limits.max_connections: 0 would refuse every client; leave it unset for the default".into());
        }
        Ok(())
    }
}

/// `[limits.listeners.<name>]`: a listener's caps, counted over its own connections only. Unset
/// keys leave the listener to the process's caps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Connections this listener serves at once.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Connections one source address may hold on this listener.
    #[serde(default)]
    pub max_connections_per_address: Option<u32>,
    /// New connections per second one source address may open on this listener.
    #[serde(default)]
    pub connect_rate_per_address: Option<u32>,
}

/// `[limits.quotas]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// What a client over its quota meets.
    #[serde(default)]
    pub over_quota: OverQuota,
    /// Each principal's rates, every protocol together.
    #[serde(default)]
    pub default: QuotaRates,
    /// Each principal's rates through gRPC.
    #[serde(default)]
    pub grpc: QuotaRates,
    /// Each principal's rates through MQTT.
    #[serde(default)]
    pub mqtt: QuotaRates,
    /// Each principal's rates through AMQP.
    #[serde(default)]
    pub amqp: QuotaRates,
}

/// What a client over its quota meets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverQuota {
    /// It is slowed down: its next message is taken only when the quota allows (the gateway stops
    /// reading its connection, withholds AMQP credit, or lets gRPC flow control hold the stream).
    #[default]
    Slow,
    /// Its message is refused where the protocol has an answer (MQTT 5 PUBACK/PUBREC 0x97 Quota
    /// exceeded, or DISCONNECT 0x97 for QoS 0; gRPC `RESOURCE_EXHAUSTED`; AMQP
    /// `amqp:resource-limit-exceeded`), and slowed where it has none but a closed connection
    /// (MQTT 3.1.1). A request larger than one second's worth of its quota is always refused.
    Refuse,
}

/// Rates of one quota; 0 is no limit. Each is a token bucket holding one second's worth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRates {
    /// Messages (records) a principal may send per second.
    #[serde(default)]
    pub messages_in_per_second: u64,
    /// Bytes (keys, values and headers) a principal may send per second.
    #[serde(default)]
    pub bytes_in_per_second: u64,
    /// Messages a principal may be delivered per second.
    #[serde(default)]
    pub messages_out_per_second: u64,
    /// Bytes a principal may be delivered per second.
    #[serde(default)]
    pub bytes_out_per_second: u64,
}

impl QuotaRates {
    /// Whether no rate is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_listener_is_named() {
        let config = LimitsConfig {
            listeners: BTreeMap::from([("mqqt".to_owned(), ListenerLimits::default())]),
            ..LimitsConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("limits.listeners.mqqt"), "{error}");
    }

    #[test]
    fn the_table_parses() {
        let config: LimitsConfig = toml::from_str(
            "max_connections_per_address = 1000\n[listeners.mqtt]\nmax_connections = 5\n\
             [quotas]\nover_quota = \"refuse\"\n[quotas.mqtt]\nmessages_in_per_second = 10\n",
        )
        .unwrap();
        assert_eq!(config.max_connections_per_address, 1000);
        assert_eq!(config.listeners["mqtt"].max_connections, Some(5));
        assert_eq!(config.quotas.over_quota, OverQuota::Refuse);
        assert_eq!(config.quotas.mqtt.messages_in_per_second, 10);
        assert!(config.quotas.default.is_unlimited());
    }
}
