//! [`Auth`] as the front ends use it: every authenticator combined, from a real users file and a
//! JWKS file, with the anonymous rules and the throttle.

use std::{net::SocketAddr, time::Duration};

use courier_testkit::identity::{AUDIENCE, Claims, ISSUER, TokenIssuer};

use super::*;
use crate::tls::ClientIdentity;

const LOOPBACK: &str = "127.0.0.1:40000";
const REMOTE: &str = "192.0.2.7:40000";
/// Another remote client.
const ELSEWHERE: &str = "198.51.100.9:40000";
/// The wait after an address's first failure.
const FIRST_WAIT: Duration = Duration::from_millis(100);

fn peer(address: &str) -> SocketAddr {
    address.parse().unwrap()
}

fn password(user: &str, password: &str) -> Credentials {
    Credentials::Password {
        username: Some(user.to_owned()),
        password: password.as_bytes().to_vec(),
    }
}

async fn check(
    authenticator: &Authenticator,
    from: &str,
    credentials: &Credentials,
) -> Result<Principal, Failure> {
    authenticator
        .authenticate(Attempt {
            peer: peer(from),
            credentials,
            certificate: None,
        })
        .await
}

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Auth,
    issuer: TokenIssuer,
}

async fn fixture(allow_anonymous: Option<bool>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let lines = [
        users_file_line("alice", "s3cret", &[]).unwrap(),
        users_file_line("ops", "root", &["admin".to_owned()]).unwrap(),
    ];
    std::fs::write(&users, lines.join("\n")).unwrap();
    let issuer = TokenIssuer::new("k1").unwrap();
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer]).unwrap();
    let mut jwt = jwt::JwtConfig::with_file(jwks);
    jwt.issuer = Some(ISSUER.into());
    jwt.audience = Some(AUDIENCE.into());
    let config = AuthConfig {
        allow_anonymous,
        users_file: Some(users),
        jwt: Some(jwt),
        ..AuthConfig::default()
    };
    let auth = Auth::start(&config, Protected::new([]), &[], CancellationToken::new())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        auth,
        issuer,
    }
}

#[tokio::test]
async fn passwords_tokens_and_certificates_name_one_principal() {
    let fixture = fixture(None).await;
    let authenticator = fixture.auth.authenticator("grpc", None);

    let alice = check(&authenticator, REMOTE, &password("alice", "s3cret"))
        .await
        .unwrap();
    assert_eq!(
        (alice.name.as_str(), alice.source),
        ("alice", Source::Password)
    );
    let ops = check(&authenticator, REMOTE, &password("ops", "root"))
        .await
        .unwrap();
    assert!(fixture.auth.authorizer().may_administer(&ops));
    assert!(!fixture.auth.authorizer().may_administer(&alice));
    assert_eq!(
        check(&authenticator, REMOTE, &password("alice", "nope")).await,
        Err(Failure::BadCredentials)
    );

    let token = fixture
        .issuer
        .token(&Claims::for_subject("device-9").with_roles(&["devices"]))
        .unwrap();
    let by_token = check(&authenticator, REMOTE, &Credentials::Bearer(token.clone()))
        .await
        .unwrap();
    assert_eq!(by_token.name, "device-9");
    assert!(by_token.has_role("devices"));
    // A JWT in a password field, as MQTT clients send one: the user name is not used.
    let in_password = check(&authenticator, REMOTE, &password("whoever", &token)).await;
    assert_eq!(in_password.unwrap().name, "device-9");
    let expired = Claims {
        expires_in: -3600,
        ..Claims::for_subject("device-9")
    };
    let expired = fixture.issuer.token(&expired).unwrap();
    assert!(matches!(
        check(&authenticator, REMOTE, &Credentials::Bearer(expired)).await,
        Err(Failure::Token(_))
    ));

    let identity = ClientIdentity {
        common_name: Some("sensor-1".into()),
        fingerprint: "ab".into(),
        ..ClientIdentity::default()
    };
    let by_certificate = authenticator
        .authenticate(Attempt {
            peer: peer(REMOTE),
            credentials: &Credentials::None,
            certificate: Some(&identity),
        })
        .await
        .unwrap();
    assert_eq!(
        (by_certificate.name.as_str(), by_certificate.source),
        ("sensor-1", Source::Certificate)
    );

    // Authentication is configured: nobody is anonymous, loopback included.
    assert_eq!(authenticator.anonymous(), Anonymous::Never);
    assert_eq!(
        check(&authenticator, LOOPBACK, &Credentials::None).await,
        Err(Failure::AnonymousRefused)
    );
}

#[tokio::test]
async fn anonymous_clients_are_served_on_loopback_only_until_allowed() {
    let access = Access::loopback("mqtt", Protected::new([]));
    let none = Credentials::None;
    assert!(
        check(&access.authenticator, LOOPBACK, &none)
            .await
            .unwrap()
            .is_anonymous()
    );
    assert!(check(&access.authenticator, "[::1]:1", &none).await.is_ok());
    assert!(
        check(&access.authenticator, "[::ffff:127.0.0.1]:1", &none)
            .await
            .is_ok()
    );
    assert_eq!(
        check(&access.authenticator, REMOTE, &none).await,
        Err(Failure::NotLoopback)
    );
    // Nothing configured: the Admin service is for whoever is served (loopback).
    assert!(access.authorizer.may_administer(&Principal::anonymous()));

    let allowed = fixture(Some(true)).await;
    let authenticator = allowed.auth.authenticator("mqtt", None);
    assert!(check(&authenticator, REMOTE, &none).await.is_ok());
    // The older per-protocol spelling overrides [auth] for its protocol only.
    let closed = allowed.auth.authenticator(
        "amqp",
        Some(&ProtocolAuth {
            allow_anonymous: Some(false),
            users_file: None,
        }),
    );
    assert_eq!(
        check(&closed, REMOTE, &none).await,
        Err(Failure::AnonymousRefused)
    );
}

#[tokio::test(start_paused = true)]
async fn failed_logins_slow_down() {
    let fixture = fixture(None).await;
    let authenticator = fixture.auth.authenticator("mqtt", None);
    let wrong = password("alice", "guess");
    for _ in 0..4 {
        assert!(check(&authenticator, REMOTE, &wrong).await.is_err());
    }
    // The fifth attempt waits out the throttle (paused time: the wait is measured, not slept).
    let started = tokio::time::Instant::now();
    let right = check(&authenticator, REMOTE, &password("alice", "s3cret")).await;
    assert!(right.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // The success cleared the user (another address's attempt is checked at once; a wrong one, as
    // the right one is now remembered and would pass the throttle anyway) but not the address.
    let started = tokio::time::Instant::now();
    assert_eq!(
        check(&authenticator, ELSEWHERE, &wrong).await,
        Err(Failure::BadCredentials)
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    assert!(
        check(&authenticator, REMOTE, &password("bob", "x"))
            .await
            .is_err()
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_proved_its_password_is_let_in_while_others_guess_it() {
    let fixture = fixture(None).await;
    let mqtt = fixture.auth.authenticator("mqtt", None);
    let amqp = fixture.auth.authenticator("amqp", None);
    let right = password("alice", "s3cret");
    assert!(check(&mqtt, ELSEWHERE, &right).await.is_ok());
    // A flood of guesses at alice's password: each of her next checks waits seconds.
    let wrong = password("alice", "guess");
    for _ in 0..8 {
        assert!(check(&mqtt, REMOTE, &wrong).await.is_err());
    }
    let started = tokio::time::Instant::now();
    assert!(
        check(&mqtt, LOOPBACK, &password("ops", "root"))
            .await
            .is_ok()
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "another user is not slowed"
    );
    // The password alice proved moments ago lets her in at once, on any protocol, from anywhere.
    for (authenticator, from) in [(&mqtt, ELSEWHERE), (&amqp, LOOPBACK)] {
        let started = tokio::time::Instant::now();
        let principal = check(authenticator, from, &right).await.unwrap();
        assert_eq!(principal.name, "alice");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }
    // A wrong password is never remembered: it still waits, and still fails.
    let started = tokio::time::Instant::now();
    assert_eq!(
        check(&amqp, ELSEWHERE, &wrong).await,
        Err(Failure::BadCredentials)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // From the guessing address, even the right password waits the address's slot (else an
    // instant answer would tell a right guess from the wrong ones, refused at once), and only
    // skips the check.
    let started = tokio::time::Instant::now();
    assert!(check(&mqtt, REMOTE, &right).await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Past the memory's life, her password is checked again, after the throttle's wait.
    tokio::time::advance(verified::TTL).await;
    assert!(check(&mqtt, REMOTE, &wrong).await.is_err());
    let started = tokio::time::Instant::now();
    assert!(check(&mqtt, ELSEWHERE, &right).await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_guesses_from_a_clean_address_is_checked_one_after_another() {
    let fixture = fixture(None).await;
    let authenticator = fixture.auth.authenticator("mqtt", None);
    let wrong = password("alice", "guess");
    // Six guesses at once, before any has failed: each is checked only once the one before it
    // failed, so they wait out the doubling delays as if sent one after another (0.1 + 0.2 + 0.4
    // + 0.8 + 1.6 s), instead of six checks at once.
    let started = tokio::time::Instant::now();
    let attempts = (0..6).map(|_| check(&authenticator, REMOTE, &wrong));
    let burst = futures_util::future::join_all(attempts);
    // Another address's client, meanwhile, is not held behind them.
    let ops = async {
        let outcome = check(&authenticator, ELSEWHERE, &password("ops", "root")).await;
        (outcome, started.elapsed())
    };
    let (outcomes, (ops, ops_waited)) = tokio::join!(burst, ops);
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == Err(Failure::BadCredentials))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(3_100),
        "{:?}",
        started.elapsed()
    );
    assert!(ops.is_ok());
    assert!(ops_waited < Duration::from_millis(100), "{ops_waited:?}");
}

#[tokio::test(start_paused = true)]
async fn guesses_at_one_user_do_not_hold_up_the_other_users_of_an_address() {
    let fixture = fixture(None).await;
    let authenticator = fixture.auth.authenticator("mqtt", None);
    for _ in 0..6 {
        assert!(
            check(&authenticator, ELSEWHERE, &password("alice", "guess"))
                .await
                .is_err()
        );
    }
    // Behind one NAT, alice (whose password was guessed at elsewhere) and ops log in at once:
    // alice waits out her user's delay, ops does not wait behind her.
    const NAT: &str = "203.0.113.5:40000";
    let started = tokio::time::Instant::now();
    let alice = async {
        let outcome = check(&authenticator, NAT, &password("alice", "s3cret")).await;
        (outcome.is_ok(), started.elapsed())
    };
    let ops = async {
        let outcome = check(&authenticator, NAT, &password("ops", "root")).await;
        (outcome.is_ok(), started.elapsed())
    };
    let ((alice_in, alice_waited), (ops_in, ops_waited)) = tokio::join!(alice, ops);
    assert!(alice_in && ops_in);
    assert!(alice_waited >= Duration::from_secs(3), "{alice_waited:?}");
    assert!(ops_waited < Duration::from_millis(100), "{ops_waited:?}");
}

/// Real time: the guess is given up while argon2 runs on a thread of the pool.
#[tokio::test]
async fn a_guess_given_up_midway_still_counts() {
    let fixture = fixture(None).await;
    let authenticator = fixture.auth.authenticator("grpc", None);
    // The client goes away (a gRPC deadline, a closed connection) 1 ms into its guess, while the
    // password is being checked.
    let wrong = password("alice", "guess");
    let given_up = tokio::time::timeout(
        Duration::from_millis(1),
        check(&authenticator, REMOTE, &wrong),
    )
    .await;
    assert!(given_up.is_err(), "the guess was not given up midway");
    // The check finishes all the same and its failure is counted: the address's next attempt
    // waits it out.
    let throttle = &fixture.auth.shared.throttle;
    let address = peer(REMOTE).ip();
    let mut waited = 0;
    while throttle.address_delay(address) != FIRST_WAIT && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(throttle.address_delay(address), FIRST_WAIT);
}

/// Real time: the users file is re-read by a task that reads it from disk.
#[tokio::test]
async fn a_remembered_password_is_forgotten_when_the_users_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, users_file_line("alice", "s3cret", &[]).unwrap()).unwrap();
    let config = AuthConfig {
        users_file: Some(users.clone()),
        reload_interval: Duration::from_millis(20),
        ..AuthConfig::default()
    };
    let stop = CancellationToken::new();
    let auth = Auth::start(&config, Protected::new([]), &[], stop.clone())
        .await
        .unwrap();
    let authenticator = auth.authenticator("mqtt", None);
    let right = password("alice", "s3cret");
    assert!(check(&authenticator, REMOTE, &right).await.is_ok());
    // Alice is removed: her password, remembered for 30 s, stops working at the next reading.
    std::fs::write(&users, users_file_line("ops", "root", &[]).unwrap()).unwrap();
    let mut refused = false;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if check(&authenticator, REMOTE, &right).await.is_err() {
            refused = true;
            break;
        }
    }
    stop.cancel();
    assert!(
        refused,
        "a removed user's remembered password still let her in"
    );
}

#[tokio::test(start_paused = true)]
async fn guesses_sent_at_once_are_refused_once_their_queue_is_long() {
    let fixture = fixture(None).await;
    let authenticator = fixture.auth.authenticator("mqtt", None);
    let wrong = password("alice", "guess");
    for _ in 0..6 {
        assert!(check(&authenticator, REMOTE, &wrong).await.is_err());
    }
    // 3.2 s between checks now: of many guesses sent at once, checked one at a time, those that
    // would wait longer than the queue's bound are refused, and none is checked early.
    let started = tokio::time::Instant::now();
    let attempts = (0..8).map(|_| check(&authenticator, REMOTE, &wrong));
    let outcomes = futures_util::future::join_all(attempts).await;
    let throttled = outcomes
        .iter()
        .filter(|outcome| **outcome == Err(Failure::Throttled))
        .count();
    assert!((4..8).contains(&throttled), "{outcomes:?}");
    assert!(started.elapsed() >= Duration::from_millis(3_200));
}
