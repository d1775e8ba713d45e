//! The JWKS changing and failing under a running verifier, and the fetches that read it.

use std::{path::PathBuf, time::Duration};

use serde_json::json;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    server::{Answer, JwksServer, TestCertificate},
    *,
};
use crate::auth::jwt::{
    JwksError, JwtConfig, JwtError, JwtRefusal, JwtVerifier, fetch::Fetcher, refresh::Schedule,
    refresh::Timing,
};

// ---- JWKS files ---------------------------------------------------------------------------

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up() {
    let (old, new) = (TestKey::ed("2024"), TestKey::ed("2025"));
    let fixture = FileVerifier::start(&[&old], |c| c.refresh = Duration::from_millis(50)).await;
    let (old_token, new_token) = (old.sign(&claims(json!({}))), new.sign(&claims(json!({}))));
    assert!(fixture.verifier.verify(&old_token).is_ok());
    assert_eq!(
        fixture.verifier.verify(&new_token),
        Err(JwtRefusal::UnknownKey)
    );

    // The provider publishes the new key beside the old one, then signs with it.
    fixture.rotate(&[&old, &new]);
    eventually("the new key verifies", || {
        fixture.verifier.verify(&new_token).is_ok()
    })
    .await;
    assert!(fixture.verifier.verify(&old_token).is_ok());

    // Then retires the old key.
    fixture.rotate(&[&new]);
    eventually("the old key is gone", || {
        fixture.verifier.verify(&old_token) == Err(JwtRefusal::UnknownKey)
    })
    .await;
    assert!(fixture.verifier.verify(&new_token).is_ok());
}

#[tokio::test]
async fn a_broken_jwks_file_keeps_the_last_good_keys() {
    let (key, next) = (TestKey::hmac("h1"), TestKey::hmac("h2"));
    let fixture = FileVerifier::start(&[&key], |c| c.refresh = Duration::from_millis(20)).await;
    let token = key.sign(&claims(json!({})));
    for broken in ["", "{\"keys\": [", "{\"keys\": []}"] {
        write_atomically(&fixture.path, broken);
        // Long enough for several failed reads (20 ms apart, then backing off from 50 ms).
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(fixture.verifier.verify(&token).is_ok(), "after {broken:?}");
    }
    fixture.rotate(&[&next]);
    let next_token = next.sign(&claims(json!({})));
    eventually("a good file is read again", || {
        fixture.verifier.verify(&next_token).is_ok()
    })
    .await;
}

#[tokio::test]
async fn an_unusable_jwks_file_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let start = |path: PathBuf| async move {
        JwtVerifier::start(&JwtConfig::with_file(path), CancellationToken::new()).await
    };
    let error = start(path.clone()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            JwtError::File {
                source: JwksError::Read(_),
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("auth.jwt.jwks_file "),
        "{error}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );

    std::fs::write(&path, "not json").unwrap();
    let error = start(path.clone()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            JwtError::File {
                source: JwksError::NotJson(_),
                ..
            }
        ),
        "{error}"
    );

    std::fs::write(&path, r#"{"keys": []}"#).unwrap();
    let error = start(path).await.unwrap_err();
    assert!(
        matches!(
            &error,
            JwtError::File {
                source: JwksError::NoUsableKeys(_),
                ..
            }
        ),
        "{error}"
    );
}

// ---- JWKS URLs ----------------------------------------------------------------------------

#[tokio::test]
async fn fetches_over_https_trusting_the_given_roots() {
    let certificate = TestCertificate::localhost();
    let body = r#"{"keys": []}"#;
    let server = JwksServer::start_tls(Answer::Json(body.into()), &certificate).await;
    let trusted = || {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certificate.der.clone())
            .map_err(|e| e.to_string())?;
        Ok(roots)
    };
    let fetcher = Fetcher::trusting(&server.url, Duration::from_secs(5), trusted).unwrap();
    assert_eq!(fetcher.get().await.unwrap(), body.as_bytes());

    // A server whose certificate no trusted root signed is refused.
    let stranger = TestCertificate::localhost();
    let untrusted = || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(stranger.der.clone()).map_err(|e| e.to_string())?;
        Ok(roots)
    };
    let fetcher = Fetcher::trusting(&server.url, Duration::from_secs(5), untrusted).unwrap();
    assert!(matches!(fetcher.get().await, Err(JwksError::Fetch(_))));
}

#[tokio::test]
async fn a_jwks_url_keeps_the_last_good_keys_while_failing() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(Answer::Json(jwks(&[&key]))).await;
    let (verifier, _stop) = url_verifier(&server, |c| c.refresh = Duration::from_millis(50)).await;
    let token = key.sign(&claims(json!({})));
    assert!(verifier.verify(&token).is_ok());
    assert_eq!(
        server.last_request(),
        "GET /realms/test/protocol/openid-connect/certs HTTP/1.1"
    );

    for failure in [
        Answer::Status(500),
        Answer::Close,
        Answer::Json(r#"{"keys": []}"#.into()),
        Answer::Json("<html>".into()),
    ] {
        server.answer(failure.clone());
        let seen = server.hits();
        eventually(&format!("two more fetches answered {failure:?}"), || {
            server.hits() >= seen + 2
        })
        .await;
        assert!(verifier.verify(&token).is_ok(), "after {failure:?}");
    }
}

#[tokio::test]
async fn a_jwks_url_failing_at_start_is_retried() {
    let key = TestKey::ec("ec-1");
    let server = JwksServer::start(Answer::Status(503)).await;
    let (verifier, _stop) = url_verifier(&server, |_| {}).await;
    let token = key.sign(&claims(json!({})));
    assert_eq!(verifier.verify(&token), Err(JwtRefusal::NoKeys));

    // Retried with backoff (50 ms, 100 ms, ...) although `refresh` is five minutes.
    server.answer(Answer::Json(jwks(&[&key])));
    eventually("the keys are fetched", || verifier.verify(&token).is_ok()).await;
}

#[tokio::test]
async fn a_jwks_url_nobody_answers_at_start_is_not_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    drop(listener);
    let config = config(None, Some(&url));
    let stop = CancellationToken::new();
    let verifier = JwtVerifier::start_with(&config, stop.clone(), fast())
        .await
        .unwrap();
    let token = TestKey::ed("ed-1").sign(&claims(json!({})));
    assert_eq!(verifier.verify(&token), Err(JwtRefusal::NoKeys));
    stop.cancel();
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_jwks_early() {
    let (old, new) = (TestKey::ec("old"), TestKey::ec("new"));
    let server = JwksServer::start(Answer::Json(jwks(&[&old]))).await;
    // An hour between refreshes: only the early fetch can find the new key in time.
    let (verifier, _stop) = url_verifier(&server, |c| c.refresh = Duration::from_secs(3600)).await;
    assert_eq!(server.hits(), 1);

    server.answer(Answer::Json(jwks(&[&old, &new])));
    let token = new.sign(&claims(json!({})));
    assert_eq!(verifier.verify(&token), Err(JwtRefusal::UnknownKey));
    eventually("the rotated key is fetched", || {
        verifier.verify(&token).is_ok()
    })
    .await;
    assert!(server.hits() >= 2);
}

#[test]
fn early_fetches_wait_out_the_cooldown() {
    let timing = Timing::default();
    let refresh = Duration::from_secs(300);
    let start = Instant::now();
    let mut schedule = Schedule::new(refresh, timing);
    schedule.loaded(start);
    assert_eq!(schedule.next(), start + refresh);

    schedule.early(start);
    assert_eq!(schedule.next(), start, "the first early fetch is at once");
    schedule.loaded(start);
    for forged in 1..100 {
        // A flood of forged key ids: one fetch per cooldown, however many ask.
        schedule.early(start + Duration::from_millis(forged));
        assert_eq!(schedule.next(), start + timing.early_cooldown);
    }
    schedule.loaded(start + timing.early_cooldown);
    schedule.early(start + timing.early_cooldown + Duration::from_secs(1));
    assert_eq!(schedule.next(), start + 2 * timing.early_cooldown);
}

#[test]
fn failed_reads_back_off_up_to_the_refresh_interval() {
    let timing = Timing::default();
    let refresh = Duration::from_secs(20);
    let start = Instant::now();
    let mut schedule = Schedule::new(refresh, timing);
    let waits: Vec<u64> = (0..7)
        .map(|_| {
            schedule.failed(start);
            (schedule.next() - start).as_secs()
        })
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 20, 20]);
    schedule.loaded(start);
    assert_eq!(schedule.next(), start + refresh);
}

#[tokio::test]
async fn fetches_are_bounded_in_size_and_time() {
    let huge = format!(
        r#"{{"keys": [], "padding": "{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let server = JwksServer::start(Answer::Json(huge.clone())).await;
    let fetcher = Fetcher::new(&server.url, Duration::from_secs(5)).unwrap();
    // Refused on its Content-Length, and without one, once the body passes the limit.
    for answer in [Answer::Json(huge.clone()), Answer::Unsized(huge)] {
        server.answer(answer);
        let fetched = fetcher.get().await;
        assert!(
            matches!(fetched, Err(JwksError::TooLarge { .. })),
            "{fetched:?}"
        );
    }

    server.answer(Answer::Status(404));
    assert!(matches!(fetcher.get().await, Err(JwksError::Status(404))));

    server.answer(Answer::Close);
    assert!(matches!(fetcher.get().await, Err(JwksError::Fetch(_))));

    server.answer(Answer::Hang);
    let impatient = Fetcher::new(&server.url, Duration::from_millis(200)).unwrap();
    assert!(matches!(impatient.get().await, Err(JwksError::TimedOut(_))));

    for answer in [Answer::Json, Answer::Unsized] {
        server.answer(answer(r#"{"keys": []}"#.into()));
        assert_eq!(fetcher.get().await.unwrap(), br#"{"keys": []}"#);
    }
}

async fn url_verifier(
    server: &JwksServer,
    adjust: impl FnOnce(&mut JwtConfig),
) -> (JwtVerifier, DropGuard) {
    let mut config = config(None, Some(&server.url));
    adjust(&mut config);
    let stop = CancellationToken::new();
    let verifier = JwtVerifier::start_with(&config, stop.clone(), fast())
        .await
        .unwrap();
    (verifier, stop.drop_guard())
}
