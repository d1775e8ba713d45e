//! SASL for AMQP connections (AMQP 1.0 §5.3): which mechanisms a connection is offered, and the
//! exchange that turns the one it picks into a [`Principal`] through the gateway's
//! [`Authenticator`] (which counts and logs every failure).
//!
//! | mechanism   | offered when                                          | principal                  |
//! |-------------|-------------------------------------------------------|----------------------------|
//! | `EXTERNAL`  | the connection has a verified client certificate      | the certificate's name     |
//! | `PLAIN`     | a users file or `[auth.jwt]` is configured            | the user, or the JWT's     |
//! | `ANONYMOUS` | anonymous clients are allowed from this peer          | `anonymous`                |
//!
//! PLAIN's password may be a JWT (then the user name is not used), as EMQX and HiveMQ accept.
//!
//! The exchange runs here rather than in fe2o3's `SaslAcceptor`, whose callbacks are synchronous
//! and know nothing of the connection: checking a password is asynchronous (it waits out the
//! login throttle and runs on the hashing pool), and the mechanisms offered and the principal
//! depend on the peer and its certificate. Once the outcome is `ok` the stream is where the
//! client's AMQP header starts, and fe2o3's acceptor opens the connection from there as for a
//! client that skipped SASL.

pub(crate) mod frame;

use std::{io, net::SocketAddr, time::Duration};

use courier_gateway::{
    auth::{Attempt, Authenticator, Credentials, Failure, Principal, Source},
    metrics::names,
    tls::ClientIdentity,
};
use fe2o3_amqp::{
    frames::sasl::Frame,
    types::{
        primitives::{Array, Symbol},
        sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome},
    },
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::transport::SASL_HEADER;

/// A SASL mechanism the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4422 appendix A: the identity the TLS layer proved.
    External,
    /// RFC 4616: a user name and password (or a JWT as the password).
    Plain,
    /// RFC 4505: no credentials.
    Anonymous,
}

impl Mechanism {
    /// The mechanism's SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::External => "EXTERNAL",
            Self::Plain => "PLAIN",
            Self::Anonymous => "ANONYMOUS",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::External, Self::Plain, Self::Anonymous]
            .into_iter()
            .find(|mechanism| mechanism.name() == name)
    }
}

/// Who is connecting, as far as is known before SASL.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The client's address.
    pub address: SocketAddr,
    /// The verified TLS client certificate, if any.
    pub certificate: Option<&'a ClientIdentity>,
}

/// Why a SASL exchange did not end in a principal.
#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    /// The client was not authenticated (it has been told so with a SASL outcome).
    #[error("{mechanism} refused: {reason}")]
    Refused {
        /// The mechanism the client chose, as it named it.
        mechanism: String,
        /// Why.
        reason: String,
    },
    /// The client broke the exchange off, took too long, or sent something that is not SASL.
    #[error("SASL exchange failed: {0}")]
    Io(#[from] io::Error),
}

/// The mechanisms offered to `peer`, in the order of preference a client picks by: EXTERNAL when
/// there is a certificate to take the principal from, PLAIN when there are users or tokens, and
/// ANONYMOUS when this peer may connect without credentials. The list may not be empty (§5.3.3.1):
/// when nothing applies ANONYMOUS is offered alone, and refused with the reason logged and counted.
pub fn offered(authenticator: &Authenticator, peer: Peer<'_>) -> Vec<Mechanism> {
    let mut offered = Vec::new();
    if external_identity(authenticator, peer).is_some() {
        offered.push(Mechanism::External);
    }
    if authenticator.has_users() || authenticator.accepts_tokens() {
        offered.push(Mechanism::Plain);
    }
    if offered.is_empty() || authenticator.serves_anonymous(peer.address) {
        offered.push(Mechanism::Anonymous);
    }
    offered
}

/// The certificate EXTERNAL would name the principal by, when certificates name principals.
fn external_identity<'a>(
    authenticator: &Authenticator,
    peer: Peer<'a>,
) -> Option<&'a ClientIdentity> {
    peer.certificate
        .filter(|identity| authenticator.accepts_certificates() && identity.name().is_some())
}

/// Runs the SASL layer on a stream whose first bytes are the client's SASL protocol header: the
/// header answered, the mechanisms offered, the client's choice checked and its outcome sent.
/// Frames may be up to `max_frame_size` bytes (a JWT as a PLAIN password does not fit SASL's usual
/// 512); the whole exchange must finish within `timeout`.
pub async fn negotiate<S>(
    stream: &mut S,
    authenticator: &Authenticator,
    peer: Peer<'_>,
    max_frame_size: u32,
    timeout: Duration,
) -> Result<Principal, SaslError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(
        timeout,
        exchange(stream, authenticator, peer, max_frame_size),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "SASL took too long"))?
}

async fn exchange<S>(
    stream: &mut S,
    authenticator: &Authenticator,
    peer: Peer<'_>,
    max_frame_size: u32,
) -> Result<Principal, SaslError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    // Answered either way: a client that asked for another protocol learns that this one is SASL
    // (§2.2) before the connection closes.
    stream.write_all(&SASL_HEADER).await?;
    if header != SASL_HEADER {
        stream.flush().await?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected the SASL protocol header, got {header:?}"),
        )
        .into());
    }
    let mechanisms = offered(authenticator, peer);
    let names = mechanisms
        .iter()
        .map(|mechanism| Symbol::from(mechanism.name()))
        .collect::<Vec<_>>();
    frame::write_frame(
        stream,
        Frame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: Array::from(names),
        }),
    )
    .await?;
    let init = match frame::read_frame(stream, max_frame_size).await? {
        Frame::Init(init) => init,
        other => {
            send_outcome(stream, SaslCode::Sys).await?;
            // Named, not printed: a misplaced sasl-response can carry a password.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected sasl-init, got {}", frame_name(&other)),
            )
            .into());
        }
    };
    let mechanism = init.mechanism.as_str().to_owned();
    match authenticate(authenticator, peer, &mechanisms, init).await {
        Ok(principal) => {
            send_outcome(stream, SaslCode::Ok).await?;
            Ok(principal)
        }
        Err(refusal) => {
            send_outcome(stream, refusal.code).await?;
            Err(SaslError::Refused {
                mechanism,
                reason: refusal.reason,
            })
        }
    }
}

/// A refused sasl-init: the outcome code and the reason, for the connection's log line.
struct Refusal {
    code: SaslCode,
    reason: String,
}

impl From<Failure> for Refusal {
    fn from(failure: Failure) -> Self {
        Self {
            // A busy hashing pool or a login throttle is a transient failure the client may retry
            // (sys-temp); every other failure is the credentials' (auth).
            code: match failure {
                Failure::Busy | Failure::Throttled => SaslCode::SysTemp,
                _ => SaslCode::Auth,
            },
            reason: failure.to_string(),
        }
    }
}

/// The principal a sasl-init proves, by the mechanism it names.
async fn authenticate(
    authenticator: &Authenticator,
    peer: Peer<'_>,
    offered: &[Mechanism],
    init: SaslInit,
) -> Result<Principal, Refusal> {
    let response: &[u8] = init
        .initial_response
        .as_deref()
        .map_or(&[], |r| r.as_slice());
    let attempt = |credentials, certificate| Attempt {
        peer: peer.address,
        credentials,
        certificate,
    };
    match Mechanism::from_name(init.mechanism.as_str()) {
        Some(Mechanism::Plain) => {
            let Some(credentials) = plain_credentials(response) else {
                return Err(refused(
                    authenticator,
                    peer,
                    "PLAIN",
                    "malformed PLAIN response",
                ));
            };
            Ok(authenticator
                .authenticate(attempt(&credentials, None))
                .await?)
        }
        Some(Mechanism::External) => {
            let Some(identity) = external_identity(authenticator, peer)
                .filter(|_| offered.contains(&Mechanism::External))
            else {
                return Err(refused(
                    authenticator,
                    peer,
                    "EXTERNAL",
                    "EXTERNAL needs a verified TLS client certificate naming the client",
                ));
            };
            // The optional authorization identity: the client may only ask to be who the
            // certificate says.
            if !response.is_empty() && Some(response) != identity.name().map(str::as_bytes) {
                return Err(refused(
                    authenticator,
                    peer,
                    "EXTERNAL",
                    "EXTERNAL's authorization identity is not the certificate's name",
                ));
            }
            let principal = authenticator
                .authenticate(attempt(&Credentials::None, Some(identity)))
                .await?;
            // `external_identity` checked that certificates name principals; this holds the
            // line should that ever change.
            if principal.source != Source::Certificate {
                return Err(refused(
                    authenticator,
                    peer,
                    "EXTERNAL",
                    "the certificate does not name a principal",
                ));
            }
            Ok(principal)
        }
        // ANONYMOUS's response is optional trace information (RFC 4505), not credentials. A
        // certificate, if any, is not taken: the client asked to be anonymous.
        Some(Mechanism::Anonymous) => Ok(authenticator
            .authenticate(attempt(&Credentials::None, None))
            .await?),
        None => Err(refused(
            authenticator,
            peer,
            init.mechanism.as_str(),
            "unknown mechanism",
        )),
    }
}

/// A refusal the authenticator does not see (a mechanism misused), counted and logged as its are.
fn refused(
    authenticator: &Authenticator,
    peer: Peer<'_>,
    mechanism: &str,
    reason: &str,
) -> Refusal {
    metrics::counter!(names::AUTH_FAILURES, "protocol" => authenticator.protocol(), "reason" => "bad_mechanism")
        .increment(1);
    tracing::warn!(
        target: "courier::audit",
        event = "authentication",
        outcome = "refused",
        protocol = authenticator.protocol(),
        peer = %peer.address,
        mechanism,
        reason = "bad_mechanism",
        "{reason}"
    );
    Refusal {
        code: SaslCode::Auth,
        reason: reason.to_owned(),
    }
}

async fn send_outcome<S: AsyncWrite + Unpin>(stream: &mut S, code: SaslCode) -> io::Result<()> {
    frame::write_frame(
        stream,
        Frame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }),
    )
    .await
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616). The authorization identity, when given, must be
/// the user itself: the gateway does not let one user act as another. An empty user name is
/// allowed for a JWT as the password.
fn plain_credentials(response: &[u8]) -> Option<Credentials> {
    let mut parts = response.split(|byte| *byte == 0);
    let authorization = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || (!authorization.is_empty() && authorization != user) {
        return None;
    }
    let username = std::str::from_utf8(user).ok()?;
    Some(Credentials::Password {
        username: (!username.is_empty()).then(|| username.to_owned()),
        password: password.to_vec(),
    })
}

/// A SASL frame's name, for errors.
fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Mechanisms(_) => "sasl-mechanisms",
        Frame::Init(_) => "sasl-init",
        Frame::Challenge(_) => "sasl-challenge",
        Frame::Response(_) => "sasl-response",
        Frame::Outcome(_) => "sasl-outcome",
    }
}

#[cfg(test)]
mod tests;
