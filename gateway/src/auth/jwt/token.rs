//! A compact JWS taken apart (`header.payload.signature`, each base64url), before any key is
//! involved: the header says which algorithm and key the signer claims to have used.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use super::errors::JwtRefusal;

/// Longer tokens are refused unread: identity providers' tokens are a few KiB even with many
/// groups, and a client should not make us decode megabytes.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// The header fields that matter here.
#[derive(Debug, Deserialize)]
pub(super) struct Header {
    /// The algorithm the signer claims; checked against the key, never trusted alone.
    pub(super) alg: String,
    /// Which key of the JWKS signed it.
    #[serde(default)]
    pub(super) kid: Option<String>,
    /// Extensions the verifier must understand (RFC 7515 §4.1.11); we understand none.
    #[serde(default)]
    crit: Option<Value>,
}

/// A compact JWS, split.
#[derive(Debug)]
pub(super) struct Compact<'a> {
    pub(super) header: Header,
    /// `header.payload`, the bytes the signature covers.
    pub(super) signing_input: &'a str,
    payload: &'a str,
    /// The signature, still base64url (jsonwebtoken decodes it); known to decode.
    pub(super) signature: &'a str,
}

impl<'a> Compact<'a> {
    /// Splits `token` and decodes its header.
    pub(super) fn split(token: &'a str) -> Result<Self, JwtRefusal> {
        let (header, payload, signature) = segments(token).ok_or(JwtRefusal::Malformed)?;
        // Through a map, so that only a JSON object is a header (serde would take an array too).
        let header = decode_json::<Map<String, Value>>(header)
            .and_then(|header| serde_json::from_value::<Header>(Value::Object(header)).ok())
            .ok_or(JwtRefusal::Malformed)?;
        if header.crit.is_some() || URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(JwtRefusal::Malformed);
        }
        let signing_input = &token[..token.len() - signature.len() - 1];
        Ok(Self {
            header,
            signing_input,
            payload,
            signature,
        })
    }

    /// The claims, which must be a JSON object. Read only once the signature has verified.
    pub(super) fn claims(&self) -> Result<Map<String, Value>, JwtRefusal> {
        decode_json(self.payload).ok_or(JwtRefusal::Malformed)
    }
}

/// The algorithms accepted: one per key type, the ones identity providers sign with.
pub(super) fn allowed_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        "HS256" => Some(Algorithm::HS256),
        _ => None,
    }
}

/// Whether `text` has the shape of a compact JWT: three base64url segments separated by dots,
/// the first decoding to a JSON object with `"alg"`. A password field can then carry a token
/// (as EMQX and HiveMQ accept) without a password that merely contains dots being taken for one.
pub fn looks_like_jwt(text: &str) -> bool {
    segments(text)
        .and_then(|(header, _, _)| decode_json::<Map<String, Value>>(header))
        .is_some_and(|header| header.get("alg").is_some_and(Value::is_string))
}

/// The three segments of a compact JWS, if `token` has its shape.
fn segments(token: &str) -> Option<(&str, &str, &str)> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let base64url = |segment: &str| {
        segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let shaped = parts.next().is_none()
        && !header.is_empty()
        && !payload.is_empty()
        && [header, payload, signature].into_iter().all(base64url);
    shaped.then_some((header, payload, signature))
}

fn decode_json<T: DeserializeOwned>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}
