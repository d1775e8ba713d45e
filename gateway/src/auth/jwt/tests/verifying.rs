//! What a token must be to be accepted, and the principal it names.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rsa::PublicKeyComponents;
use serde_json::json;

use super::*;
use crate::auth::{
    Source,
    jwt::{JwksError, JwtRefusal, keys::KeySet},
};

// ---- each algorithm -----------------------------------------------------------------------

async fn assert_accepted(key: TestKey) {
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let claims = claims(json!({}));
    let principal = fixture.verifier.verify(&key.sign(&claims)).unwrap();
    assert_eq!(principal.name, "alice");
    assert_eq!(principal.roles, ["writer"]);
    assert_eq!(principal.source, Source::Token);
    let attribute = |name: &str| principal.attributes.get(name).map(String::as_str);
    assert_eq!(attribute("issuer"), Some("https://idp.example/realms/test"));
    assert_eq!(attribute("subject"), Some("alice"));
    assert_eq!(
        attribute("expires"),
        Some(claims["exp"].to_string().as_str())
    );
    assert_eq!(attribute("key_id"), Some(key.kid.as_str()));
}

#[tokio::test]
async fn accepts_rs256() {
    assert_accepted(TestKey::rsa("rsa-1")).await;
}

#[tokio::test]
async fn accepts_es256() {
    assert_accepted(TestKey::ec("ec-1")).await;
}

#[tokio::test]
async fn accepts_eddsa() {
    assert_accepted(TestKey::ed("ed-1")).await;
}

#[tokio::test]
async fn accepts_hs256_with_an_oct_key() {
    assert_accepted(TestKey::hmac("hmac-1")).await;
}

#[tokio::test]
async fn without_kid_every_key_of_the_algorithm_is_tried() {
    let (first, second, hmac) = (TestKey::ec("ec-1"), TestKey::ec("ec-2"), TestKey::hmac("h"));
    let fixture = FileVerifier::start(&[&first, &hmac, &second], |_| {}).await;
    let principal = fixture
        .verifier
        .verify(&second.sign_without_kid(&claims(json!({}))))
        .unwrap();
    assert_eq!(principal.attributes.get("key_id").unwrap(), "ec-2");
}

// ---- time, issuer, audience ---------------------------------------------------------------

#[tokio::test]
async fn refuses_expired_tokens_beyond_the_leeway() {
    let key = TestKey::ed("ed-1");
    let fixture = FileVerifier::start(&[&key], |c| c.leeway = Duration::from_secs(30)).await;
    let expired = key.sign(&claims(json!({"exp": now() - 120})));
    assert_eq!(fixture.verifier.verify(&expired), Err(JwtRefusal::Expired));
    let within_leeway = key.sign(&claims(json!({"exp": now() - 10})));
    let principal = fixture.verifier.verify(&within_leeway).unwrap();
    // What it opens ends when the leeway does, 20 s from now (less the time this test took).
    let left = principal.remaining().unwrap();
    assert!(
        (Duration::from_secs(10)..=Duration::from_secs(20)).contains(&left),
        "{left:?}"
    );
}

#[tokio::test]
async fn refuses_tokens_not_yet_valid() {
    let key = TestKey::ed("ed-1");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let early = key.sign(&claims(json!({"nbf": now() + 120})));
    assert_eq!(
        fixture.verifier.verify(&early),
        Err(JwtRefusal::NotYetValid)
    );
    let within_leeway = key.sign(&claims(json!({"nbf": now() + 10})));
    assert!(fixture.verifier.verify(&within_leeway).is_ok());
}

#[tokio::test]
async fn exp_is_required_and_times_must_be_numbers() {
    let key = TestKey::ed("ed-1");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let verify = |changes| fixture.verifier.verify(&key.sign(&claims(changes)));
    assert_eq!(verify(json!({"exp": null})), Err(JwtRefusal::Malformed));
    assert_eq!(verify(json!({"exp": "never"})), Err(JwtRefusal::Malformed));
    // A string `nbf` is not an absent one (CVE-2026-25537 in jsonwebtoken's own validation).
    assert_eq!(
        verify(json!({"nbf": "99999999999"})),
        Err(JwtRefusal::Malformed)
    );
    let fractional = json!({"exp": now() as f64 + 60.5});
    assert!(verify(fractional).is_ok());
}

#[tokio::test]
async fn refuses_the_wrong_audience() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let verify = |changes| fixture.verifier.verify(&key.sign(&claims(changes)));
    assert_eq!(
        verify(json!({"aud": "other"})),
        Err(JwtRefusal::WrongAudience)
    );
    assert_eq!(verify(json!({"aud": null})), Err(JwtRefusal::WrongAudience));
    assert_eq!(
        verify(json!({"aud": ["other"]})),
        Err(JwtRefusal::WrongAudience)
    );
    assert!(verify(json!({"aud": ["other", "courier"]})).is_ok());
}

#[tokio::test]
async fn refuses_the_wrong_issuer() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let verify = |changes| fixture.verifier.verify(&key.sign(&claims(changes)));
    assert_eq!(
        verify(json!({"iss": "https://evil.example"})),
        Err(JwtRefusal::WrongIssuer)
    );
    assert_eq!(verify(json!({"iss": null})), Err(JwtRefusal::WrongIssuer));
}

#[tokio::test]
async fn issuer_and_audience_are_not_checked_unless_configured() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |c| {
        c.issuer = None;
        c.audience = None;
    })
    .await;
    let token = key.sign(&claims(json!({"iss": null, "aud": null})));
    assert!(fixture.verifier.verify(&token).is_ok());
}

// ---- keys ---------------------------------------------------------------------------------

#[tokio::test]
async fn refuses_tokens_signed_by_a_key_not_in_the_set() {
    let (known, stranger) = (TestKey::ed("ed-1"), TestKey::ed("ed-1"));
    let fixture = FileVerifier::start(&[&known], |_| {}).await;
    let claims = claims(json!({}));
    let verify = |token: String| fixture.verifier.verify(&token);
    assert_eq!(
        verify(stranger.sign(&claims)),
        Err(JwtRefusal::BadSignature)
    );
    assert_eq!(
        verify(stranger.sign_without_kid(&claims)),
        Err(JwtRefusal::BadSignature)
    );
    let other_kid = TestKey::ed("ed-9");
    assert_eq!(verify(other_kid.sign(&claims)), Err(JwtRefusal::UnknownKey));
    assert!(verify(known.sign(&claims)).is_ok());
}

#[tokio::test]
async fn refuses_an_hs256_token_keyed_with_the_rsa_public_key() {
    let rsa = TestKey::rsa("rsa-1");
    let fixture = FileVerifier::start(&[&rsa], |_| {}).await;
    let claims = claims(json!({}));
    let pair = rsa_key_pair();
    // What an attacker can know of the key: its DER (as a PEM file holds it), its modulus, its JWK.
    let public_der = pair.public().as_ref().to_vec();
    let public: PublicKeyComponents<Vec<u8>> = pair.public().into();
    for secret in [public_der, public.n, rsa.jwk.to_string().into_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let forged = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&secret).unwrap(),
        );
        assert_eq!(
            fixture.verifier.verify(&forged),
            Err(JwtRefusal::AlgorithmNotAllowed)
        );
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&secret).unwrap(),
        );
        assert_eq!(
            fixture.verifier.verify(&forged),
            Err(JwtRefusal::UnknownKey)
        );
    }
    // And below our key selection, the ring provider refuses an RSA key for HMAC by itself.
    let rsa_key = DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]);
    let confused = jsonwebtoken::crypto::verify("AAAA", b"x.y", &rsa_key, Algorithm::HS256);
    assert!(confused.is_err());
    assert!(fixture.verifier.verify(&rsa.sign(&claims)).is_ok());
}

#[tokio::test]
async fn refuses_alg_none_and_unlisted_algorithms() {
    let key = TestKey::hmac("h");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let payload = b64(claims(json!({})).to_string().as_bytes());
    let unsigned = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"h"}"#));
    assert_eq!(
        fixture.verifier.verify(&unsigned),
        Err(JwtRefusal::AlgorithmNotAllowed)
    );
    let mut header = Header::new(Algorithm::HS512);
    header.kid = Some("h".into());
    let hs512 = encode(&header, &claims(json!({})), &key.encoding);
    assert_eq!(
        fixture.verifier.verify(&hs512),
        Err(JwtRefusal::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn refuses_malformed_tokens() {
    let key = TestKey::hmac("h");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let good = key.sign(&claims(json!({})));
    let (header, rest) = good.split_once('.').unwrap();
    let crit = b64(br#"{"alg":"HS256","kid":"h","crit":["b64"],"b64":false}"#);
    for token in [
        "",
        "not a token",
        "a.b",
        &format!("{good}.extra"),
        &format!("{header}.!!!.sig"),
        &format!("{}.{rest}", b64(b"[\"HS256\"]")),
        &format!("{crit}.{rest}"),
        &format!("{good}=="),
    ] {
        assert_eq!(
            fixture.verifier.verify(token),
            Err(JwtRefusal::Malformed),
            "{token:?}"
        );
    }
}

#[test]
fn a_jwks_keeps_the_keys_it_can_use() {
    let (ed, hmac) = (TestKey::ed("ed-1"), TestKey::hmac("h"));
    let document = json!({"keys": [
        ed.jwk,
        hmac.jwk,
        {"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
        {"kid": "p384", "kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"},
        {"kid": "small", "kty": "RSA", "n": b64(&[0xff; 128]), "e": "AQAB"},
        {"kid": "lying", "kty": "OKP", "crv": "Ed25519", "alg": "RS256", "x": b64(&[1; 32])},
        {"kid": "new", "kty": "AKP", "alg": "ML-DSA-44", "pub": "AAAA"},
        "not an object",
    ]});
    let set = KeySet::parse(document.to_string().as_bytes(), true).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.skipped().len(), 6, "{:?}", set.skipped());
    // Served at a URL, the shared secret is public: it is not taken.
    let served = KeySet::parse(document.to_string().as_bytes(), false).unwrap();
    assert_eq!(served.len(), 1);
    assert!(
        served.skipped().iter().any(|why| why.contains("jwks_file")),
        "{:?}",
        served.skipped()
    );
    let short = json!({"keys": [{"kid": "s", "kty": "oct", "k": b64(&[7; 16])}]});
    assert!(KeySet::parse(short.to_string().as_bytes(), true).is_err());

    let unusable =
        json!({"keys": [{"kid": "enc", "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]});
    let error = KeySet::parse(unusable.to_string().as_bytes(), true).unwrap_err();
    assert!(matches!(error, JwksError::NoUsableKeys(_)), "{error}");
    assert!(error.to_string().contains("\"enc\""), "{error}");
    assert!(matches!(
        KeySet::parse(b"{}", true),
        Err(JwksError::NoKeysArray)
    ));
    assert!(matches!(
        KeySet::parse(b"{\"keys\": []}", true),
        Err(JwksError::NoUsableKeys(_))
    ));
    assert!(matches!(
        KeySet::parse(b"<html>", true),
        Err(JwksError::NotJson(_))
    ));
}

// ---- names and roles ----------------------------------------------------------------------

#[tokio::test]
async fn name_and_roles_from_nested_claims() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |c| {
        c.name_claim = "preferred_username".into();
        c.roles_claim = "realm_access.roles".into();
    })
    .await;
    let token = key.sign(&claims(json!({
        "preferred_username": "alice@example.com",
        "realm_access": {"roles": ["reader", "writer", 7]},
    })));
    let principal = fixture.verifier.verify(&token).unwrap();
    assert_eq!(principal.name, "alice@example.com");
    assert_eq!(principal.roles, ["reader", "writer"]);
    assert_eq!(principal.attributes.get("subject").unwrap(), "alice");
}

#[tokio::test]
async fn roles_from_a_space_separated_string() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |c| c.roles_claim = "scope".into()).await;
    let token = key.sign(&claims(json!({"scope": "produce  consume admin"})));
    let principal = fixture.verifier.verify(&token).unwrap();
    assert_eq!(principal.roles, ["produce", "consume", "admin"]);
}

#[tokio::test]
async fn a_claim_name_with_dots_is_read_whole_first() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |c| {
        c.roles_claim = "https://courier.example/roles".into()
    })
    .await;
    let token = key.sign(&claims(json!({"https://courier.example/roles": ["admin"]})));
    assert_eq!(fixture.verifier.verify(&token).unwrap().roles, ["admin"]);
    let without = key.sign(&claims(json!({"roles": null})));
    assert!(fixture.verifier.verify(&without).unwrap().roles.is_empty());
}

#[tokio::test]
async fn refuses_tokens_that_name_no_one() {
    let key = TestKey::ec("ec-1");
    let fixture = FileVerifier::start(&[&key], |_| {}).await;
    let verify = |changes| fixture.verifier.verify(&key.sign(&claims(changes)));
    assert_eq!(verify(json!({"sub": null})), Err(JwtRefusal::NoName));
    assert_eq!(verify(json!({"sub": ""})), Err(JwtRefusal::NoName));
    assert_eq!(verify(json!({"sub": {"id": 1}})), Err(JwtRefusal::NoName));
    assert_eq!(verify(json!({"sub": 42})).unwrap().name, "42");
}
