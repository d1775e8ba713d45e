//! `[auth]`: who may connect, shared by every front end, and the older per-protocol spellings
//! (`[mqtt.auth]`, `[amqp.auth]`) that override it for one protocol.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::jwt::JwtConfig;

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Serve clients that present no credentials. Unset: only when no authenticator is configured,
    /// and then only from loopback addresses (as Mosquitto 2 does); `true` anywhere; `false` never.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// File of users, one `name:PHC-hash[:role,role]` per line (argon2; `courier passwd NAME`
    /// prints one), re-read when it changes.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// The authorization policy (TOML `[[rules]]`), re-read when it changes. Unset: every
    /// authenticated client may do anything but reach the gateway's internal state.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// `[auth.jwt]`: JWT bearer tokens (gRPC `authorization: Bearer`, the MQTT password, AMQP
    /// SASL PLAIN's password).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Take a verified TLS client certificate's name (the subject's CN, else its first SAN) as the
    /// principal of a client that presents no other credentials.
    #[serde(default = "AuthConfig::default_certificates")]
    pub certificates: bool,
    /// The role that may use the Admin service and reflection, and reach internal topics.
    #[serde(default = "AuthConfig::default_admin_role")]
    pub admin_role: String,
    /// How often the users and policy files are checked for changes.
    #[serde(
        default = "AuthConfig::default_reload_interval",
        with = "humantime_serde"
    )]
    pub reload_interval: Duration,
    /// Password hashes checked at once (each takes a blocking thread for tens of milliseconds);
    /// 0: one per core. A login flood waits for these rather than taking every blocking thread.
    #[serde(default)]
    pub hashing_threads: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: None,
            users_file: None,
            policy_file: None,
            jwt: None,
            certificates: Self::default_certificates(),
            admin_role: Self::default_admin_role(),
            reload_interval: Self::default_reload_interval(),
            hashing_threads: 0,
        }
    }
}

impl AuthConfig {
    fn default_certificates() -> bool {
        true
    }

    fn default_admin_role() -> String {
        "admin".into()
    }

    fn default_reload_interval() -> Duration {
        Duration::from_secs(2)
    }

    /// What the types cannot check; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.reload_interval.is_zero() {
            return Err("auth.reload_interval must be more than 0s".into());
        }
        if self.admin_role.is_empty() {
            return Err("auth.admin_role may not be empty".into());
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        Ok(())
    }

    /// This table with one protocol's older `[<protocol>.auth]` keys over it.
    pub fn with_override(&self, protocol: Option<&ProtocolAuth>) -> Self {
        let mut merged = self.clone();
        if let Some(protocol) = protocol {
            if protocol.allow_anonymous.is_some() {
                merged.allow_anonymous = protocol.allow_anonymous;
            }
            if protocol.users_file.is_some() {
                merged.users_file.clone_from(&protocol.users_file);
            }
        }
        merged
    }

    /// Whether any authenticator that names a principal is configured (a users file or JWTs).
    /// Client certificates alone do not count: a listener without client certificates would
    /// then be open to anyone.
    pub fn has_authenticator(&self) -> bool {
        self.users_file.is_some() || self.jwt.is_some()
    }
}

/// `[mqtt.auth]` and `[amqp.auth]`: the older, per-protocol spelling of `[auth]`'s
/// `allow_anonymous` and `users_file`, still honoured; a key set here wins over `[auth]` for
/// that protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolAuth {
    /// See [`AuthConfig::allow_anonymous`].
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// See [`AuthConfig::users_file`].
    #[serde(default)]
    pub users_file: Option<PathBuf>,
}
