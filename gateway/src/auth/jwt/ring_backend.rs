//! jsonwebtoken's cryptography on ring.
//!
//! jsonwebtoken 10 and later leave the crypto to a process-wide provider: its own choices are
//! aws-lc-rs (a large C library to build) and RustCrypto (a second RSA, ECDSA and Ed25519 stack,
//! whose `rsa` crate carries an open timing advisory). The workspace already has ring, which the
//! TLS listeners use, so this provider runs every algorithm jsonwebtoken names on ring.
//!
//! Each factory refuses a key of another family than the algorithm's: that is jsonwebtoken's own
//! guard against algorithm confusion, which a provider must keep.

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{Error, ErrorKind},
    jwk::{EllipticCurve, ThumbprintHash},
    signature::{self, Signer, Verifier},
};
use ring::{
    digest, hmac,
    rand::SystemRandom,
    rsa::PublicKeyComponents,
    signature::{self as ring_signature, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
};

/// The provider, installed by [`install`].
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key,
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

/// Makes ring jsonwebtoken's provider for this process, unless one is already installed (then
/// that one serves: every provider checks the same signatures).
pub(super) fn install() {
    if CryptoProvider::try_get_default().is_none() {
        // Losing a race to another installer is as good as winning it.
        let _ = PROVIDER.install_default();
    }
}

fn check_family(algorithm: Algorithm, family: AlgorithmFamily) -> Result<(), Error> {
    if algorithm.family() == family {
        Ok(())
    } else {
        Err(ErrorKind::InvalidKeyFormat.into())
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    check_family(*algorithm, key.family())?;
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key: key.clone(),
    }))
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    check_family(*algorithm, key.family())?;
    Ok(Box::new(RingSigner {
        algorithm: *algorithm,
        key: key.clone(),
    }))
}

/// Checks one algorithm's signatures with one public key (or HMAC secret).
struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match (self.algorithm, self.key.kind()) {
            (algorithm, DecodingKeyKind::SecretOrDer(secret))
                if algorithm.family() == AlgorithmFamily::Hmac =>
            {
                let key = hmac::Key::new(hmac_algorithm(algorithm)?, secret);
                hmac::verify(&key, message, signature)
            }
            (algorithm, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                PublicKeyComponents { n, e }.verify(rsa_parameters(algorithm)?, message, signature)
            }
            // A DER key: PKCS#1 RSAPublicKey for RSA, the SEC1 point for ECDSA, the raw key for
            // Ed25519, as jsonwebtoken's other providers read them.
            (algorithm, DecodingKeyKind::SecretOrDer(der)) => {
                ring_signature::UnparsedPublicKey::new(public_key_algorithm(algorithm)?, der)
                    .verify(message, signature)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// Signs with one algorithm and one private key (PKCS#1 or PKCS#8 DER for RSA, PKCS#8 for ECDSA
/// and Ed25519) or HMAC secret. The gateway only verifies; tests and tools sign.
struct RingSigner {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let der = self.key.as_bytes();
        let rng = SystemRandom::new();
        match self.algorithm.family() {
            AlgorithmFamily::Hmac => {
                let key = hmac::Key::new(hmac_algorithm(self.algorithm)?, der);
                Ok(hmac::sign(&key, message).as_ref().to_vec())
            }
            AlgorithmFamily::Rsa => {
                let pair = rsa_key_pair(der).map_err(failed)?;
                let mut signed = vec![0; pair.public().modulus_len()];
                pair.sign(rsa_padding(self.algorithm)?, &rng, message, &mut signed)
                    .map_err(failed)?;
                Ok(signed)
            }
            AlgorithmFamily::Ec => {
                let pair = EcdsaKeyPair::from_pkcs8(ecdsa_signing(self.algorithm)?, der, &rng)
                    .map_err(failed)?;
                let signed = pair.sign(&rng, message).map_err(failed)?;
                Ok(signed.as_ref().to_vec())
            }
            AlgorithmFamily::Ed => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(failed)?;
                Ok(pair.sign(message).as_ref().to_vec())
            }
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn unsupported() -> signature::Error {
    signature::Error::new()
}

/// ring's errors say nothing beyond "no", so neither does this.
fn failed<E>(_: E) -> signature::Error {
    signature::Error::new()
}

fn hmac_algorithm(algorithm: Algorithm) -> Result<hmac::Algorithm, signature::Error> {
    match algorithm {
        Algorithm::HS256 => Ok(hmac::HMAC_SHA256),
        Algorithm::HS384 => Ok(hmac::HMAC_SHA384),
        Algorithm::HS512 => Ok(hmac::HMAC_SHA512),
        _ => Err(unsupported()),
    }
}

fn rsa_parameters(
    algorithm: Algorithm,
) -> Result<&'static ring_signature::RsaParameters, signature::Error> {
    match algorithm {
        Algorithm::RS256 => Ok(&ring_signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Ok(&ring_signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Ok(&ring_signature::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Ok(&ring_signature::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Ok(&ring_signature::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Ok(&ring_signature::RSA_PSS_2048_8192_SHA512),
        _ => Err(unsupported()),
    }
}

fn public_key_algorithm(
    algorithm: Algorithm,
) -> Result<&'static dyn ring_signature::VerificationAlgorithm, signature::Error> {
    match algorithm {
        Algorithm::ES256 => Ok(&ring_signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Ok(&ring_signature::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Ok(&ring_signature::ED25519),
        other => rsa_parameters(other).map(|p| p as &dyn ring_signature::VerificationAlgorithm),
    }
}

fn rsa_padding(
    algorithm: Algorithm,
) -> Result<&'static dyn ring_signature::RsaEncoding, signature::Error> {
    match algorithm {
        Algorithm::RS256 => Ok(&ring_signature::RSA_PKCS1_SHA256),
        Algorithm::RS384 => Ok(&ring_signature::RSA_PKCS1_SHA384),
        Algorithm::RS512 => Ok(&ring_signature::RSA_PKCS1_SHA512),
        Algorithm::PS256 => Ok(&ring_signature::RSA_PSS_SHA256),
        Algorithm::PS384 => Ok(&ring_signature::RSA_PSS_SHA384),
        Algorithm::PS512 => Ok(&ring_signature::RSA_PSS_SHA512),
        _ => Err(unsupported()),
    }
}

fn ecdsa_signing(
    algorithm: Algorithm,
) -> Result<&'static ring_signature::EcdsaSigningAlgorithm, signature::Error> {
    match algorithm {
        Algorithm::ES256 => Ok(&ring_signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Ok(&ring_signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => Err(unsupported()),
    }
}

fn rsa_key_pair(der: &[u8]) -> Result<RsaKeyPair, ring::error::KeyRejected> {
    RsaKeyPair::from_der(der).or_else(|_| RsaKeyPair::from_pkcs8(der))
}

fn rsa_pub_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair = rsa_key_pair(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let public: PublicKeyComponents<Vec<u8>> = pair.public().into();
    Ok((public.n, public.e))
}

fn rsa_pub_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    // ring checks PKCS#1 public keys but does not hand out their parts.
    Err(ErrorKind::Provider("ring cannot take apart an RSA public key's DER".into()).into())
}

fn ec_pub_components_from_private_key(
    der: &[u8],
    algorithm: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let (curve, coordinate) = match algorithm {
        Algorithm::ES256 => (EllipticCurve::P256, 32),
        Algorithm::ES384 => (EllipticCurve::P384, 48),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let signing = ecdsa_signing(algorithm).map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    let pair = EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
        .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    // Uncompressed SEC1: 0x04 || x || y.
    match pair.public_key().as_ref().split_first() {
        Some((4, xy)) if xy.len() == 2 * coordinate => {
            let (x, y) = xy.split_at(coordinate);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_pub_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidEddsaKey.into());
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}
