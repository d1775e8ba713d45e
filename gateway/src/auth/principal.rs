//! Who a connection or call is: the one [`Principal`] every front end hands to authorization,
//! whichever authenticator accepted the client.

use std::{collections::BTreeMap, fmt};

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
}

impl Principal {
    /// The principal of a client that presented nothing.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.to_owned(),
            roles: Vec::new(),
            attributes: BTreeMap::new(),
            source: Source::Anonymous,
        }
    }

    /// A principal named `name` with `roles`, from `source`.
    pub fn new(name: impl Into<String>, roles: Vec<String>, source: Source) -> Self {
        Self {
            name: name.into(),
            roles,
            attributes: BTreeMap::new(),
            source,
        }
    }

    /// Whether the client presented no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.source == Source::Anonymous
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
