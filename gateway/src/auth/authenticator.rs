//! Authentication: a client's credentials, whatever the protocol carried them in, to one
//! [`Principal`], or a [`Failure`] that the front end answers in its protocol's idiom. Every
//! failure is counted (`courier_auth_failures_total{protocol,reason}`) and logged as an audit event
//! with the peer; password checks ([`passwords`](super::passwords)) take their address's turn,
//! wait out the throttle and run on the hashing pool, unless the same password was verified
//! moments ago.

use std::{fmt, net::SocketAddr};

use super::{
    Principal, Source, failure::Failure, jwt::looks_like_jwt, passwords::PasswordCheck,
    reloading::Reloading, shared::Shared, users::Users,
};
use crate::tls::ClientIdentity;

/// What a client presented. Its `Debug` never shows a password or token.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing (a certificate, if any, is in [`Attempt::certificate`]).
    None,
    /// A user name and password: MQTT CONNECT, AMQP SASL PLAIN, HTTP and gRPC Basic. The password
    /// may be a JWT, as EMQX and HiveMQ accept; then the user name is not used.
    Password {
        /// The user name; MQTT 5 allows a password without one.
        username: Option<String>,
        /// The password, as sent.
        password: Vec<u8>,
    },
    /// A bearer token (gRPC and HTTP `authorization: Bearer`).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// One attempt to connect or call.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Where from.
    pub peer: SocketAddr,
    /// What was presented.
    pub credentials: &'a Credentials,
    /// The verified TLS client certificate, if the connection has one.
    pub certificate: Option<&'a ClientIdentity>,
}

/// Who may connect without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Anyone (`allow_anonymous = true`).
    Everywhere,
    /// Clients on loopback addresses only: nothing is configured (the secure default).
    LoopbackOnly,
    /// No one.
    Never,
}

/// One protocol's authentication. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    protocol: &'static str,
    anonymous: Anonymous,
    users: Option<Reloading<Users>>,
    shared: Shared,
}

impl Authenticator {
    pub(super) fn new(
        protocol: &'static str,
        anonymous: Anonymous,
        users: Option<Reloading<Users>>,
        shared: Shared,
    ) -> Self {
        Self {
            protocol,
            anonymous,
            users,
            shared,
        }
    }

    /// Who may connect without credentials.
    pub fn anonymous(&self) -> Anonymous {
        self.anonymous
    }

    /// Whether user names and passwords can succeed (a users file is configured).
    pub fn has_users(&self) -> bool {
        self.users.is_some()
    }

    /// Whether bearer tokens (or a token as password) can succeed.
    pub fn accepts_tokens(&self) -> bool {
        self.shared.jwt.is_some()
    }

    /// Whether a verified client certificate names the principal of a client that presents no
    /// other credentials (`auth.certificates`).
    pub fn accepts_certificates(&self) -> bool {
        self.shared.certificates
    }

    /// The protocol this authenticator serves (its metrics' and audit events' `protocol`).
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The principal `attempt` proves, or why not. A failure is counted and logged here.
    pub async fn authenticate(&self, attempt: Attempt<'_>) -> Result<Principal, Failure> {
        let outcome = self.check(attempt).await;
        match &outcome {
            Ok(principal) => {
                tracing::debug!(protocol = self.protocol, peer = %attempt.peer, %principal, "authenticated");
            }
            Err(failure) => {
                let user = claimed_name(attempt.credentials).unwrap_or("-");
                failure.count(self.protocol, attempt.peer, user);
            }
        }
        outcome
    }

    async fn check(&self, attempt: Attempt<'_>) -> Result<Principal, Failure> {
        match attempt.credentials {
            Credentials::Bearer(token) => self.token(token),
            Credentials::Password { username, password } => match std::str::from_utf8(password) {
                Ok(token) if self.accepts_tokens() && looks_like_jwt(token) => self.token(token),
                _ => {
                    self.password(attempt.peer, username.as_deref(), password)
                        .await
                }
            },
            Credentials::None => self.without_credentials(attempt),
        }
    }

    fn token(&self, token: &str) -> Result<Principal, Failure> {
        let jwt = self.shared.jwt.as_ref().ok_or(Failure::TokensNotAccepted)?;
        jwt.verify(token).map_err(Failure::Token)
    }

    async fn password(
        &self,
        peer: SocketAddr,
        username: Option<&str>,
        password: &[u8],
    ) -> Result<Principal, Failure> {
        let (Some(file), Some(username)) = (&self.users, username) else {
            return Err(Failure::BadCredentials);
        };
        let check = PasswordCheck {
            shared: self.shared.clone(),
            file: file.clone(),
            protocol: self.protocol,
            peer,
            username: username.to_owned(),
            remembered: self.shared.verified.key_of(file.id(), username, password),
            password: password.to_vec(),
        };
        check.run().await
    }

    fn without_credentials(&self, attempt: Attempt<'_>) -> Result<Principal, Failure> {
        if self.shared.certificates
            && let Some(identity) = attempt.certificate
            && let Some(name) = identity.name()
        {
            let mut principal = Principal::new(name, Vec::new(), Source::Certificate);
            principal
                .attributes
                .insert("fingerprint".into(), identity.fingerprint.clone());
            return Ok(principal);
        }
        if self.serves_anonymous(attempt.peer) {
            return Ok(Principal::anonymous());
        }
        match self.anonymous {
            Anonymous::LoopbackOnly => Err(Failure::NotLoopback),
            Anonymous::Everywhere | Anonymous::Never => Err(Failure::AnonymousRefused),
        }
    }

    /// Whether a client at `peer` may connect without credentials.
    pub fn serves_anonymous(&self, peer: SocketAddr) -> bool {
        match self.anonymous {
            Anonymous::Everywhere => true,
            Anonymous::LoopbackOnly => peer.ip().to_canonical().is_loopback(),
            Anonymous::Never => false,
        }
    }
}

/// The user name a client claimed, for the audit log (never the password or token).
fn claimed_name(credentials: &Credentials) -> Option<&str> {
    match credentials {
        Credentials::Password { username, .. } => username.as_deref(),
        Credentials::None | Credentials::Bearer(_) => None,
    }
}

/// An `authorization` header that is neither `Basic` nor `Bearer`, or not well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the authorization header must be `Basic <base64 user:password>` or `Bearer <token>`")]
pub struct MalformedAuthorization;

impl Credentials {
    /// What an HTTP or gRPC `authorization` header carries (RFC 7617 Basic, RFC 6750 Bearer);
    /// no header is no credentials.
    pub fn from_authorization(header: Option<&[u8]>) -> Result<Self, MalformedAuthorization> {
        use base64::Engine as _;
        let Some(header) = header else {
            return Ok(Self::None);
        };
        let header = std::str::from_utf8(header).map_err(|_| MalformedAuthorization)?;
        let (scheme, value) = header
            .trim()
            .split_once(' ')
            .ok_or(MalformedAuthorization)?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !value.is_empty() {
            return Ok(Self::Bearer(value.to_owned()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(MalformedAuthorization);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| MalformedAuthorization)?;
        let colon = decoded
            .iter()
            .position(|&byte| byte == b':')
            .ok_or(MalformedAuthorization)?;
        let username =
            String::from_utf8(decoded[..colon].to_vec()).map_err(|_| MalformedAuthorization)?;
        Ok(Self::Password {
            username: Some(username),
            password: decoded[colon + 1..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_secret() {
        let password = Credentials::Password {
            username: Some("alice".into()),
            password: b"s3cret".to_vec(),
        };
        let shown = format!("{password:?} {:?}", Credentials::Bearer("tok.en.x".into()));
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("tok.en"),
            "{shown}"
        );
    }

    #[test]
    fn authorization_headers_are_read() {
        assert_eq!(Credentials::from_authorization(None), Ok(Credentials::None));
        assert_eq!(
            Credentials::from_authorization(Some(b"Bearer abc.def.ghi")),
            Ok(Credentials::Bearer("abc.def.ghi".into()))
        );
        // "alice:pa:ss" — the password may hold a colon.
        assert_eq!(
            Credentials::from_authorization(Some(b"Basic YWxpY2U6cGE6c3M=")),
            Ok(Credentials::Password {
                username: Some("alice".into()),
                password: b"pa:ss".to_vec(),
            })
        );
        for bad in [
            &b"Digest x"[..],
            b"Basic !!",
            b"Basic YWxpY2U=",
            b"Bearer",
            b"\xff",
        ] {
            assert_eq!(
                Credentials::from_authorization(Some(bad)),
                Err(MalformedAuthorization),
                "{bad:?}"
            );
        }
    }
}
