//! Who a connection or call is: the one [`Principal`] every front end hands to authorization,
//! whichever authenticator accepted the client.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use crate::limits::QuotaKey;

/// The longest [`Principal::remaining`] says.
const MAX_REMAINING: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a principal was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// No credentials, where anonymous clients are allowed.
    Anonymous,
    /// A user of the users file, by password.
    Password,
    /// A JWT bearer token.
    Token,
    /// A verified TLS client certificate.
    Certificate,
}

impl Source {
    /// The name in logs, audit events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Password => "password",
            Self::Token => "token",
            Self::Certificate => "certificate",
        }
    }
}

/// The name every anonymous principal has.
pub const ANONYMOUS: &str = "anonymous";

/// An authenticated (or anonymous) client: a name, roles, and attributes from whichever
/// authenticator accepted it (a JWT's other claims, a certificate's fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name policies and session ownership use: a user, a token's subject, a certificate's
    /// subject or SAN, or [`ANONYMOUS`].
    pub name: String,
    /// Roles, from the users file or a token's roles claim.
    pub roles: Vec<String>,
    /// Everything else the authenticator knew, for logs and audit events.
    pub attributes: BTreeMap<String, String>,
    /// Which authenticator accepted it.
    pub source: Source,
    /// When the credentials that established it stop holding (a token's `exp`, with the leeway
    /// it was checked with): a connection or stream it opened ends then. `None`: they do not
    /// expire (a password, a certificate, which is checked at the handshake).
    pub valid_until: Option<SystemTime>,
}

impl Principal {
    /// The principal of a client that presented nothing.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.to_owned(),
            roles: Vec::new(),
            attributes: BTreeMap::new(),
            source: Source::Anonymous,
            valid_until: None,
        }
    }

    /// A principal named `name` with `roles`, from `source`.
    pub fn new(name: impl Into<String>, roles: Vec<String>, source: Source) -> Self {
        Self {
            name: name.into(),
            roles,
            attributes: BTreeMap::new(),
            source,
            valid_until: None,
        }
    }

    /// Whether the client presented no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.source == Source::Anonymous
    }

    /// How long from now its credentials hold, if they expire: zero once they have, and at most
    /// a year (a token valid for longer is one whose connections a timer can count down to; an
    /// `exp` centuries away must not overflow the clock of whoever waits for it).
    pub fn remaining(&self) -> Option<Duration> {
        self.valid_until.map(|until| {
            until
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(MAX_REMAINING)
        })
    }

    /// Whose account its connections and calls draw from (quotas, a gRPC caller's share of the
    /// call places): its own by name; an anonymous client's by its MQTT client id, else its address.
    pub fn account_key(&self, client_id: Option<&str>, peer: Option<SocketAddr>) -> QuotaKey {
        if self.is_anonymous() {
            QuotaKey::anonymous(client_id, peer)
        } else {
            QuotaKey::Principal(self.name.clone())
        }
    }

    /// Whether the principal has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|held| held == role)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_anonymous() {
            f.write_str(ANONYMOUS)
        } else {
            write!(f, "{} ({})", self.name, self.source.as_str())
        }
    }
}
