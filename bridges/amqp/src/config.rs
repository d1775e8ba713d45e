//! `[amqp]`: the AMQP 1.0 listener, its limits, TLS, and authentication.

use std::{net::SocketAddr, time::Duration};

use courier_gateway::{auth::ProtocolAuth, tls::TlsConfig};
use serde::{Deserialize, Serialize};

/// The `[amqp]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Serve AMQP at all.
    #[serde(default = "Config::default_enabled")]
    pub enabled: bool,
    /// Address of the AMQP listener (port 0 picks a free port; the ready line names it).
    #[serde(default = "Config::default_listen")]
    pub listen: SocketAddr,
    /// `[amqp.tls]`: AMQP over TLS (AMQPS), on `tls.listen` beside the plain listener, or, with no
    /// `tls.listen`, on `listen` instead of plain text. Unset: plain text only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Largest frame the gateway accepts, in bytes (offered in OPEN; at least 512).
    #[serde(default = "Config::default_max_frame_size")]
    pub max_frame_size: u32,
    /// Largest message accepted on a link, in bytes (offered in ATTACH); larger ones close that link
    /// with `amqp:link:message-size-exceeded`.
    #[serde(default = "Config::default_max_message_size")]
    pub max_message_size: u64,
    /// A connection that sends nothing (not even an empty frame) for this long is closed. Offered to
    /// clients in OPEN as half this value, as the spec asks.
    #[serde(default = "Config::default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Credit granted to a client's sender link: deliveries it may have in flight before the log has
    /// acknowledged earlier ones. Credit is topped up only as the log acknowledges.
    #[serde(default = "Config::default_link_credit")]
    pub link_credit: u32,
    /// Records a receiver link may hold sent but not settled; its subscription stops reading at this
    /// many (the client's own credit limits it further).
    #[serde(default = "Config::default_max_unsettled")]
    pub max_unsettled: usize,
    /// A rejected delivery from topic `T` is written to topic `T` + this suffix.
    #[serde(default = "Config::default_dead_letter_suffix")]
    pub dead_letter_suffix: String,
    /// Times a receiver link delivers one record: a record released or modified this many times is
    /// written to the dead-letter topic (as a rejected one is) and acknowledged, so that no record
    /// comes back forever. Every redelivery counts, `released` too.
    #[serde(default = "Config::default_max_delivery_count")]
    pub max_delivery_count: u32,
    /// The whole AMQP handshake (protocol headers, SASL, and OPEN; after the TLS handshake when there
    /// is one) must be done this long after the connection was accepted, or it is closed.
    #[serde(
        default = "Config::default_handshake_timeout",
        with = "humantime_serde"
    )]
    pub handshake_timeout: Duration,
    /// A connection whose writes make no progress for this long (its client stopped reading) is
    /// closed; what its receiver links held unsettled goes to the next member of their group.
    #[serde(default = "Config::default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Sessions a connection may have open at once (offered in OPEN as `channel-max`, one less); a
    /// frame on a channel beyond it closes the connection with `amqp:connection:framing-error`.
    #[serde(default = "Config::default_max_sessions")]
    pub max_sessions: u32,
    /// Links a session may have attached at once (offered in BEGIN as `handle-max`, one less); a
    /// frame naming a handle beyond it closes the connection with `amqp:connection:framing-error`.
    #[serde(default = "Config::default_max_links_per_session")]
    pub max_links_per_session: u32,
    /// `[amqp.auth]`: the older spelling of `[auth]`'s `allow_anonymous` and `users_file`, for
    /// AMQP only; a key set here wins over `[auth]`'s.
    #[serde(default)]
    pub auth: Option<ProtocolAuth>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: Self::default_enabled(),
            listen: Self::default_listen(),
            tls: None,
            max_frame_size: Self::default_max_frame_size(),
            max_message_size: Self::default_max_message_size(),
            idle_timeout: Self::default_idle_timeout(),
            link_credit: Self::default_link_credit(),
            max_unsettled: Self::default_max_unsettled(),
            dead_letter_suffix: Self::default_dead_letter_suffix(),
            max_delivery_count: Self::default_max_delivery_count(),
            handshake_timeout: Self::default_handshake_timeout(),
            write_timeout: Self::default_write_timeout(),
            max_sessions: Self::default_max_sessions(),
            max_links_per_session: Self::default_max_links_per_session(),
            auth: None,
        }
    }
}

impl Config {
    fn default_enabled() -> bool {
        true
    }
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 5672))
    }
    fn default_max_frame_size() -> u32 {
        64 * 1024
    }
    fn default_max_message_size() -> u64 {
        1024 * 1024
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_link_credit() -> u32 {
        256
    }
    fn default_max_unsettled() -> usize {
        256
    }
    fn default_dead_letter_suffix() -> String {
        ".dlq".into()
    }
    fn default_max_delivery_count() -> u32 {
        10
    }
    fn default_handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_write_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_sessions() -> u32 {
        16
    }
    fn default_max_links_per_session() -> u32 {
        64
    }

    /// The highest channel number a client may use: `channel-max` in OPEN.
    pub fn channel_max(&self) -> u16 {
        u16::try_from(self.max_sessions.saturating_sub(1)).unwrap_or(u16::MAX)
    }

    /// The highest link handle a client may use in a session: `handle-max` in BEGIN.
    pub fn handle_max(&self) -> u32 {
        self.max_links_per_session.saturating_sub(1)
    }

    /// Checks values serde cannot: sizes the protocol forbids, zero windows that would stall, and
    /// the TLS table's own rules. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            tls.validate_for("amqp", false)?;
        }
        if self.max_frame_size < 512 {
            return Err("amqp.max_frame_size must be at least 512 (AMQP 1.0's minimum)".into());
        }
        if self.link_credit < 2 {
            return Err("amqp.link_credit must be at least 2".into());
        }
        if self.max_unsettled == 0 {
            return Err("amqp.max_unsettled must be at least 1".into());
        }
        if self.dead_letter_suffix.is_empty() {
            return Err("amqp.dead_letter_suffix may not be empty".into());
        }
        if self.max_delivery_count == 0 {
            return Err("amqp.max_delivery_count must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("amqp.handshake_timeout must be more than 0".into());
        }
        if self.write_timeout.is_zero() {
            return Err("amqp.write_timeout must be more than 0".into());
        }
        if !(1..=65536).contains(&self.max_sessions) {
            return Err(
                "amqp.max_sessions must be from 1 to 65536 (AMQP's channel numbers)".into(),
            );
        }
        if self.max_links_per_session == 0 {
            return Err("amqp.max_links_per_session must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use courier_gateway::tls::{ClientAuth, TlsConfig};

    use super::*;

    fn with_tls(tls: TlsConfig) -> Config {
        Config {
            tls: Some(tls),
            ..Config::default()
        }
    }

    #[test]
    fn tls_mistakes_name_the_amqp_tls_key() {
        let valid = TlsConfig::new("tls.crt", "tls.key");
        assert_eq!(with_tls(valid.clone()).validate(), Ok(()));

        let mut no_ca = valid.clone();
        no_ca.client_auth = ClientAuth::Required;
        let error = with_tls(no_ca).validate().unwrap_err();
        assert!(error.starts_with("amqp.tls.client_auth"), "{error}");

        let mut websocket = valid;
        websocket.websocket_listen = Some(SocketAddr::from(([127, 0, 0, 1], 8884)));
        let error = with_tls(websocket).validate().unwrap_err();
        assert!(error.starts_with("amqp.tls.websocket_listen"), "{error}");
    }

    #[test]
    fn limits_parse_and_their_mistakes_name_the_key() {
        let config: Config = serde_json::from_str(
            r#"{"handshake_timeout": "2s", "write_timeout": "1m", "max_sessions": 4,
                "max_links_per_session": 8, "max_delivery_count": 3}"#,
        )
        .unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.handshake_timeout, Duration::from_secs(2));
        assert_eq!(config.write_timeout, Duration::from_secs(60));
        assert_eq!((config.channel_max(), config.handle_max()), (3, 7));
        // Every channel number there is.
        let all = Config {
            max_sessions: 65536,
            ..Config::default()
        };
        assert_eq!((all.validate(), all.channel_max()), (Ok(()), u16::MAX));

        for (config, key) in [
            (
                Config {
                    max_sessions: 0,
                    ..Config::default()
                },
                "amqp.max_sessions",
            ),
            (
                Config {
                    max_sessions: 65537,
                    ..Config::default()
                },
                "amqp.max_sessions",
            ),
            (
                Config {
                    max_links_per_session: 0,
                    ..Config::default()
                },
                "amqp.max_links_per_session",
            ),
            (
                Config {
                    max_delivery_count: 0,
                    ..Config::default()
                },
                "amqp.max_delivery_count",
            ),
            (
                Config {
                    handshake_timeout: Duration::ZERO,
                    ..Config::default()
                },
                "amqp.handshake_timeout",
            ),
            (
                Config {
                    write_timeout: Duration::ZERO,
                    ..Config::default()
                },
                "amqp.write_timeout",
            ),
        ] {
            let error = config.validate().unwrap_err();
            assert!(error.starts_with(key), "{error}");
        }
    }

    #[test]
    fn the_tls_table_parses() {
        let config: Config = serde_json::from_str(
            r#"{"tls": {"listen": "0.0.0.0:5671", "cert": "tls.crt", "key": "tls.key"}}"#,
        )
        .unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.listen, Some(SocketAddr::from(([0, 0, 0, 0], 5671))));
        assert!(!tls.replaces_plain());
    }
}
