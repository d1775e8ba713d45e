//! Token verification end to end: keys generated here (RSA by `openssl`, the rest by ring), JWKS
//! files in temporary directories, and JWKS URLs served by a small HTTP server on loopback.
//! Waits poll with a deadline; refresh intervals are shortened so that none takes long.
//!
//! - `verifying`: algorithms, keys, claims, names and roles.
//! - `refreshing`: JWKS files and URLs changing and failing, the schedule, bounded fetches.
//! - `api`: `looks_like_jwt`, refusal reasons, the config.
//! - `server`: the test JWKS server.

mod api;
mod refreshing;
mod server;
mod verifying;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::{SecureRandom as _, SystemRandom},
    rsa::PublicKeyComponents,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
    },
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{JwtConfig, JwtVerifier, refresh::Timing, ring_backend};

// ---- keys and tokens ----------------------------------------------------------------------

/// A 2048-bit RSA private key (DER: PKCS#1 from OpenSSL 3, which ring and the provider read as
/// PKCS#8 too), made once per test run: ring cannot generate RSA keys.
fn rsa_private_der() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        let output = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .args(["-outform", "DER"])
            .output()
            .expect("openssl (apt-get install openssl) generates the RSA test key");
        assert!(
            output.status.success(),
            "openssl genpkey failed: {output:?}"
        );
        output.stdout
    })
}

fn rsa_key_pair() -> RsaKeyPair {
    RsaKeyPair::from_der(rsa_private_der())
        .or_else(|_| RsaKeyPair::from_pkcs8(rsa_private_der()))
        .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
struct TestKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        let pair = rsa_key_pair();
        let public: PublicKeyComponents<Vec<u8>> = pair.public().into();
        let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "n": b64(&public.n), "e": b64(&public.e)});
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_der(rsa_private_der()),
            jwk,
        )
    }

    fn ec(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let (x, y) = pair.public_key().as_ref()[1..].split_at(32);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        )
    }

    fn ed(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
        Self::new(
            kid,
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk,
        )
    }

    fn hmac(kid: &str) -> Self {
        let mut secret = [0; 32];
        SystemRandom::new().fill(&mut secret).unwrap();
        let jwk = json!({"kty": "oct", "alg": "HS256", "k": b64(&secret)});
        Self::new(
            kid,
            Algorithm::HS256,
            EncodingKey::from_secret(&secret).unwrap(),
            jwk,
        )
    }

    fn new(kid: &str, algorithm: Algorithm, encoding: EncodingKey, mut jwk: Value) -> Self {
        jwk["kid"] = kid.into();
        Self {
            kid: kid.into(),
            algorithm,
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.encoding)
    }

    fn sign_without_kid(&self, claims: &Value) -> String {
        encode(&Header::new(self.algorithm), claims, &self.encoding)
    }
}

fn encode(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    ring_backend::install();
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// Claims that pass every check of [`config`], changed by `changes` (`null` removes a claim).
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": "https://idp.example/realms/test",
        "aud": "courier",
        "sub": "alice",
        "exp": now() + 300,
        "roles": ["writer"],
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

// ---- verifiers ----------------------------------------------------------------------------

/// Shortened waits, so tests about refreshing take milliseconds.
fn fast() -> Timing {
    Timing {
        early_cooldown: Duration::from_millis(50),
        first_retry: Duration::from_millis(50),
        fetch_timeout: Duration::from_secs(2),
    }
}

fn config(file: Option<&Path>, url: Option<&str>) -> JwtConfig {
    JwtConfig {
        jwks_file: file.map(Path::to_path_buf),
        jwks_url: url.map(str::to_owned),
        issuer: Some("https://idp.example/realms/test".into()),
        audience: Some("courier".into()),
        ..JwtConfig::with_file("unused")
    }
}

/// A verifier of a JWKS file, stopped when dropped.
struct FileVerifier {
    verifier: JwtVerifier,
    path: PathBuf,
    _dir: TempDir,
    _stop: DropGuard,
}

impl FileVerifier {
    async fn start(keys: &[&TestKey], adjust: impl FnOnce(&mut JwtConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write_atomically(&path, &jwks(keys));
        let mut config = config(Some(&path), None);
        adjust(&mut config);
        let stop = CancellationToken::new();
        let verifier = JwtVerifier::start_with(&config, stop.clone(), fast())
            .await
            .unwrap();
        Self {
            verifier,
            path,
            _dir: dir,
            _stop: stop.drop_guard(),
        }
    }

    fn rotate(&self, keys: &[&TestKey]) {
        write_atomically(&self.path, &jwks(keys));
    }
}

/// Writes `text` to `path` by renaming a complete file over it, as an operator's tooling would.
fn write_atomically(path: &Path, text: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// Polls `condition` until it holds; fails the test after 10 seconds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
