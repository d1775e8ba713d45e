//! Why a token was refused, and why a JWKS could not be read or used.

use std::{path::PathBuf, time::Duration};

/// Why a token was refused. Each is a distinct reason in metrics ([`JwtRefusal::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtRefusal {
    /// Not a compact JWS, or its header, claims or signature do not decode, or `exp` is missing
    /// or not a number.
    #[error("the token is malformed")]
    Malformed,
    /// The token's key id is not in the JWKS (an early re-read was asked for), or no key of the
    /// token's algorithm is.
    #[error("the token is signed by an unknown key")]
    UnknownKey,
    /// No key that may check the token accepts its signature.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` has not been reached (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// The name claim is missing, empty, or not a string or integer.
    #[error("the token does not name a principal")]
    NoName,
    /// No keys are loaded yet (the JWKS URL has not answered since start).
    #[error("no token keys are loaded yet")]
    NoKeys,
    /// The token's algorithm is not one of RS256, ES256, EdDSA and HS256, or does not fit the
    /// key its `kid` names (an RSA key is never an HMAC secret).
    #[error("the token's algorithm is not allowed for its key")]
    AlgorithmNotAllowed,
}

impl JwtRefusal {
    /// A short snake_case label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::NoName => "no_name",
            Self::NoKeys => "no_keys",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
        }
    }
}

/// Why a JWKS could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// The document is over the size limit.
    #[error("it is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The HTTP request failed (connect, TLS, protocol).
    #[error("fetching it failed: {0}")]
    Fetch(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server answered with a status other than 2xx.
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// The fetch did not complete in time.
    #[error("fetching it took longer than {0:?}")]
    TimedOut(Duration),
    /// The document is not JSON.
    #[error("it is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The JSON has no `keys` array.
    #[error("it has no \"keys\" array")]
    NoKeysArray,
    /// No key in the set can check RS256, ES256, EdDSA or HS256 signatures.
    #[error("it has no usable signing keys ({})", skipped_summary(.0))]
    NoUsableKeys(Vec<String>),
}

fn skipped_summary(skipped: &[String]) -> String {
    if skipped.is_empty() {
        "the set is empty".into()
    } else {
        skipped.join("; ")
    }
}

/// Why [`JwtVerifier::start`] failed: the message names the key and the file or URL.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The config is invalid (see [`JwtConfig::validate`]).
    #[error("{0}")]
    Config(String),
    /// The JWKS file could not be read or used at start.
    #[error("auth.jwt.jwks_file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: JwksError,
    },
    /// An `https://` JWKS URL cannot be trusted: no root certificates were found.
    #[error("auth.jwt.jwks_url {url}: {detail}")]
    Tls {
        /// The URL.
        url: String,
        /// What was missing.
        detail: String,
    },
}
