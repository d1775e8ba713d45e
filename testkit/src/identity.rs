//! A token issuer of its own per test: an ES256 key, the JWKS that publishes it (as a file, or
//! served by a test's own HTTP server), and JWTs signed with it, with whatever claims the test
//! wants (expired, for another audience, signed by a key the gateway does not know).

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};

/// The issuer the tests' gateways are configured with.
pub const ISSUER: &str = "https://idp.courier.test";
/// The audience the tests' gateways are configured with.
pub const AUDIENCE: &str = "courier";

/// Why the issuer could not be made.
#[derive(Debug, thiserror::Error)]
#[error("test identity provider: {0}")]
pub struct IdentityError(String);

/// One signing key, with its key id.
#[derive(Debug)]
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    kid: String,
}

/// The claims of a token to mint.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `sub`.
    pub subject: String,
    /// `roles`.
    pub roles: Vec<String>,
    /// `aud`.
    pub audience: String,
    /// `iss`.
    pub issuer: String,
    /// `exp` relative to now, in seconds (negative: already expired).
    pub expires_in: i64,
}

impl Claims {
    /// A valid token's claims for `subject`, expiring in an hour.
    pub fn for_subject(subject: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            roles: Vec::new(),
            audience: AUDIENCE.to_owned(),
            issuer: ISSUER.to_owned(),
            expires_in: 3600,
        }
    }

    /// With `roles`.
    pub fn with_roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|role| (*role).to_owned()).collect();
        self
    }
}

impl TokenIssuer {
    /// A fresh P-256 key named `kid`.
    pub fn new(kid: &str) -> Result<Self, IdentityError> {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            .map_err(|_| IdentityError("generating a P-256 key".into()))?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random)
                .map_err(|_| IdentityError("reading the generated key".into()))?;
        Ok(Self {
            key,
            kid: kid.to_owned(),
        })
    }

    /// This key as one JWK (public part).
    pub fn jwk(&self) -> serde_json::Value {
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A JWKS document publishing `issuers`' keys.
    pub fn jwks(issuers: &[&TokenIssuer]) -> String {
        let keys: Vec<_> = issuers.iter().map(|issuer| issuer.jwk()).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// Writes the JWKS of `issuers` to `dir/name`.
    pub fn write_jwks(
        dir: &Path,
        name: &str,
        issuers: &[&TokenIssuer],
    ) -> Result<PathBuf, IdentityError> {
        let path = dir.join(name);
        std::fs::write(&path, Self::jwks(issuers))
            .map_err(|error| IdentityError(format!("writing {}: {error}", path.display())))?;
        Ok(path)
    }

    /// A compact JWS (ES256) with `claims`.
    pub fn token(&self, claims: &Claims) -> Result<String, IdentityError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|error| IdentityError(error.to_string()))?
            .as_secs() as i64;
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let body = serde_json::json!({
            "sub": claims.subject,
            "roles": claims.roles,
            "aud": claims.audience,
            "iss": claims.issuer,
            "iat": now,
            "nbf": now - 60,
            "exp": now + claims.expires_in,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| IdentityError("signing".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}
