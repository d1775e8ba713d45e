//! Why a client was not let in, whatever the protocol: each front end answers a [`Failure`] in
//! its own idiom.

use std::net::SocketAddr;

use super::jwt::JwtRefusal;
use crate::metrics::names;

/// Why a client was not let in. The front end answers each in its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No credentials, and anonymous clients are not served.
    #[error("credentials are required")]
    AnonymousRefused,
    /// No credentials, from another host, and nothing allows anonymous clients beyond loopback.
    #[error(
        "anonymous clients are served on loopback only: configure [auth] users or tokens, or set auth.allow_anonymous = true"
    )]
    NotLoopback,
    /// Unknown user or wrong password.
    #[error("bad user name or password")]
    BadCredentials,
    /// A token was presented but tokens are not configured (`[auth.jwt]`).
    #[error("bearer tokens are not accepted: no [auth.jwt] is configured")]
    TokensNotAccepted,
    /// The token did not verify.
    #[error("token refused: {0}")]
    Token(JwtRefusal),
    /// Too many password checks are waiting.
    #[error("the server is busy checking passwords; retry later")]
    Busy,
    /// Too many logins from this address wait (its failures' delays, or its turn).
    #[error("too many logins from this address are waiting; retry later")]
    Throttled,
}

impl Failure {
    /// The `reason` label of `courier_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AnonymousRefused => "anonymous_refused",
            Self::NotLoopback => "not_loopback",
            Self::BadCredentials => "bad_credentials",
            Self::TokensNotAccepted => "tokens_not_accepted",
            Self::Token(refusal) => refusal.reason(),
            Self::Busy => "busy",
            Self::Throttled => "throttled",
        }
    }

    /// Counts this failure (`courier_auth_failures_total{protocol,reason}`) and logs it as an
    /// audit event with the peer and the user name the client claimed (`-`: none).
    pub(super) fn count(self, protocol: &'static str, peer: SocketAddr, user: &str) {
        metrics::counter!(names::AUTH_FAILURES, "protocol" => protocol, "reason" => self.reason())
            .increment(1);
        tracing::warn!(
            target: "courier::audit",
            event = "authentication",
            outcome = "refused",
            protocol,
            peer = %peer,
            user,
            reason = self.reason(),
            "{self}"
        );
    }
}
