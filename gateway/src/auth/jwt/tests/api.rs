//! The rest of the public API: `looks_like_jwt`, refusal reasons, the config.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::auth::jwt::{JwtConfig, JwtError, JwtRefusal, JwtVerifier, looks_like_jwt};

// ---- the rest of the API ------------------------------------------------------------------

#[test]
fn looks_like_jwt_accepts_only_the_shape_of_a_jwt() {
    let token = TestKey::hmac("h").sign(&claims(json!({})));
    assert!(looks_like_jwt(&token));
    let header = b64(br#"{"alg":"RS256"}"#);
    assert!(looks_like_jwt(&format!("{header}.e30.")));
    for text in [
        "",
        "hunter2",
        "my.pass.word",
        "a.b.c",
        &format!("{header}.e30"),
        &format!("{header}.e30.sig.more"),
        &format!("{}.e30.sig", b64(br#"{"typ":"JWT"}"#)),
        &format!("{}.e30.sig", b64(br#"["alg"]"#)),
        &format!("{header}.e30.si g"),
        &format!("{header}..sig"),
    ] {
        assert!(!looks_like_jwt(text), "{text:?}");
    }
}

#[test]
fn refusal_reasons_are_distinct_snake_case_labels() {
    let all = [
        JwtRefusal::Malformed,
        JwtRefusal::UnknownKey,
        JwtRefusal::BadSignature,
        JwtRefusal::Expired,
        JwtRefusal::NotYetValid,
        JwtRefusal::WrongIssuer,
        JwtRefusal::WrongAudience,
        JwtRefusal::NoName,
        JwtRefusal::NoKeys,
        JwtRefusal::AlgorithmNotAllowed,
    ];
    let mut reasons: Vec<&str> = all.iter().map(|r| r.reason()).collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
    assert_eq!(JwtRefusal::WrongAudience.reason(), "wrong_audience");
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}

#[test]
fn config_defaults_and_validation() {
    let config: JwtConfig =
        serde_json::from_value(json!({"jwks_url": "https://idp.example/certs"})).unwrap();
    assert_eq!(config.name_claim, "sub");
    assert_eq!(config.roles_claim, "roles");
    assert_eq!(config.refresh, Duration::from_secs(300));
    assert_eq!(config.leeway, Duration::from_secs(30));
    assert_eq!(config.validate(), Ok(()));

    let config: JwtConfig = serde_json::from_value(
        json!({"jwks_file": "/etc/courier/jwks.json", "refresh": "1m", "leeway": "5s"}),
    )
    .unwrap();
    assert_eq!(
        (config.refresh, config.leeway),
        (Duration::from_secs(60), Duration::from_secs(5))
    );
    assert!(serde_json::from_value::<JwtConfig>(json!({"jwks_file": "x", "typo": 1})).is_err());

    let invalid = |changes: Value| {
        let mut config = json!({"jwks_url": "https://idp.example/certs"});
        for (key, value) in changes.as_object().unwrap() {
            config[key] = value.clone();
        }
        let config: JwtConfig = serde_json::from_value(config).unwrap();
        let message = config.validate().unwrap_err();
        assert!(message.starts_with("auth.jwt."), "{message}");
        message
    };
    assert!(invalid(json!({"jwks_file": "/x"})).contains("both"));
    assert!(invalid(json!({"jwks_url": null})).contains("must be set"));
    assert!(invalid(json!({"jwks_url": "ftp://idp.example/certs"})).contains("http"));
    assert!(invalid(json!({"jwks_url": "idp.example/certs"})).starts_with("auth.jwt.jwks_url"));
    assert!(invalid(json!({"jwks_url": "https://user:pw@idp.example/"})).contains("credentials"));
    assert!(invalid(json!({"name_claim": ""})).contains("name_claim"));
    assert!(invalid(json!({"audience": ""})).contains("audience"));
    assert!(invalid(json!({"refresh": "0s"})).contains("refresh"));
}

#[tokio::test]
async fn start_refuses_an_invalid_config() {
    let mut config = JwtConfig::with_file("/x");
    config.jwks_url = Some("https://idp.example/certs".into());
    let error = JwtVerifier::start(&config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(error, JwtError::Config(_)), "{error}");
}
