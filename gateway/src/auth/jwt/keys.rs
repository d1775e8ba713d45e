//! A JWKS parsed into the keys that can check signatures, and the choice of keys for a token.
//!
//! Each key has one type (RSA, P-256, Ed25519, or an HMAC secret) and each accepted algorithm fits
//! exactly one type. A token's `alg` picks among the keys of its type only, so a token can never
//! make an RSA public key serve as an HMAC secret (the classic algorithm confusion attack), and a
//! key whose JWK declares an `alg` checks only that algorithm.

use jsonwebtoken::{
    Algorithm, DecodingKey, DecodingKeyKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use serde_json::Value;

use super::{errors::JwksError, token::Compact};

/// RSA moduli below this many bytes are skipped: ring refuses them, and they are too weak.
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;

/// The keys of one JWKS that can check signatures.
#[derive(Debug, Default)]
pub(super) struct KeySet {
    keys: Vec<Key>,
    /// Why each other key was skipped (encryption keys, other curves), for the log.
    skipped: Vec<String>,
}

/// Which keys may check a token.
#[derive(Debug)]
pub(super) enum Selection<'a> {
    /// Try these, in order; the first whose signature verifies wins.
    Keys(Vec<&'a Key>),
    /// The token's `kid` is not in the set, or (without a `kid`) no key fits its algorithm.
    Unknown,
    /// The token's `kid` names keys, but none of them is for the token's algorithm.
    WrongAlgorithm,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot check RS256, ES256, EdDSA or HS256 signatures are
    /// skipped; a set left with none is an error, so that it never replaces a good one.
    /// `secrets`: whether shared secrets (`"kty": "oct"`, HS256) may be taken from this document,
    /// only from a file: a secret served at a URL is no secret.
    pub(super) fn parse(document: &[u8], secrets: bool) -> Result<Self, JwksError> {
        let mut document: Value = serde_json::from_slice(document).map_err(JwksError::NotJson)?;
        let Some(Value::Array(entries)) = document.get_mut("keys").map(Value::take) else {
            return Err(JwksError::NoKeysArray);
        };
        let mut set = Self::default();
        for (index, entry) in entries.into_iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
            match Key::parse(entry, secrets) {
                Ok(key) => set.keys.push(key),
                Err(reason) => set.skipped.push(match kid {
                    Some(kid) => format!("key {kid:?}: {reason}"),
                    None => format!("key {index}: {reason}"),
                }),
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys(set.skipped));
        }
        Ok(set)
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The keys that may check a token signed with `algorithm`, naming `kid`.
    pub(super) fn select(&self, algorithm: Algorithm, kid: Option<&str>) -> Selection<'_> {
        let Some(kid) = kid else {
            let fitting: Vec<&Key> = self.keys.iter().filter(|key| key.fits(algorithm)).collect();
            return if fitting.is_empty() {
                Selection::Unknown
            } else {
                Selection::Keys(fitting)
            };
        };
        let named: Vec<&Key> = self
            .keys
            .iter()
            .filter(|key| key.id.as_deref() == Some(kid))
            .collect();
        if named.is_empty() {
            return Selection::Unknown;
        }
        let fitting: Vec<&Key> = named
            .into_iter()
            .filter(|key| key.fits(algorithm))
            .collect();
        if fitting.is_empty() {
            Selection::WrongAlgorithm
        } else {
            Selection::Keys(fitting)
        }
    }
}

/// What a key is, which decides the one algorithm it may check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    Ed25519,
    Secret,
}

impl KeyType {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Rsa => Algorithm::RS256,
            Self::P256 => Algorithm::ES256,
            Self::Ed25519 => Algorithm::EdDSA,
            Self::Secret => Algorithm::HS256,
        }
    }
}

/// One key of the set.
#[derive(Debug)]
pub(super) struct Key {
    id: Option<String>,
    key_type: KeyType,
    decoding: DecodingKey,
}

impl Key {
    /// One JWK, or why it cannot check signatures here.
    fn parse(entry: Value, secrets: bool) -> Result<Self, String> {
        let jwk: Jwk = serde_json::from_value(entry).map_err(|e| format!("not a JWK: {e}"))?;
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err("an encryption key (\"use\": \"enc\")".into());
        }
        let key_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyType::Rsa,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                KeyType::P256
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                KeyType::Ed25519
            }
            AlgorithmParameters::OctetKey(_) if secrets => KeyType::Secret,
            AlgorithmParameters::OctetKey(_) => {
                return Err("a shared secret (\"kty\": \"oct\") served at a URL is public; put HS256 secrets in jwks_file".into());
            }
            other => return Err(format!("an unsupported key type or curve ({other:?})")),
        };
        if let Some(declared) = jwk.common.key_algorithm {
            let algorithm = key_type.algorithm();
            if Algorithm::try_from(declared).ok() != Some(algorithm) {
                return Err(format!(
                    "declared for {declared}; a {key_type:?} key is used for {algorithm:?} only"
                ));
            }
        }
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unreadable: {e}"))?;
        check_size(key_type, decoding.kind())?;
        Ok(Self {
            id: jwk.common.key_id,
            key_type,
            decoding,
        })
    }

    pub(super) fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn fits(&self, algorithm: Algorithm) -> bool {
        self.key_type.algorithm() == algorithm
    }

    /// Whether this key's signature check passes for `compact`, signed with `algorithm`.
    pub(super) fn verifies(&self, compact: &Compact<'_>, algorithm: Algorithm) -> bool {
        // Checked again here, so the guard does not rest on the caller alone.
        self.fits(algorithm)
            && jsonwebtoken::crypto::verify(
                compact.signature,
                compact.signing_input.as_bytes(),
                &self.decoding,
                algorithm,
            )
            .unwrap_or(false)
    }
}

/// Rejects key material of the wrong size, so a bad JWK is reported when the set is read rather
/// than refusing every token it signs as a bad signature.
fn check_size(key_type: KeyType, kind: &DecodingKeyKind) -> Result<(), String> {
    let fits = match (key_type, kind) {
        (KeyType::Rsa, DecodingKeyKind::RsaModulusExponent { n, .. }) => {
            let significant = n.iter().skip_while(|b| **b == 0).count();
            significant >= MIN_RSA_MODULUS_BYTES
        }
        // 0x04 || x || y, uncompressed.
        (KeyType::P256, DecodingKeyKind::SecretOrDer(point)) => point.len() == 65,
        (KeyType::Ed25519, DecodingKeyKind::SecretOrDer(x)) => x.len() == 32,
        // RFC 7518 3.2: an HS256 key of at least the hash's size.
        (KeyType::Secret, DecodingKeyKind::SecretOrDer(secret)) => secret.len() >= 32,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("{key_type:?} key material of the wrong size"))
    }
}
