//! The mechanisms offered to each kind of peer, and the exchange over an in-memory stream, as a
//! client would see it: the outcome code, and nothing opened for a refused client.

use std::path::Path;

use courier_gateway::auth::{Auth, AuthConfig, Protected, users_file_line};
use courier_testkit::identity::{Claims, TokenIssuer};
use fe2o3_amqp::types::primitives::Binary;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const LOOPBACK: &str = "127.0.0.1:40000";
const REMOTE: &str = "192.0.2.7:40000";

/// The AMQP authenticator for an `[auth]` table given as JSON, with a users file holding `alice`
/// (password `s3cret`, role `ops`) when the table names `users_file`.
async fn authenticator(
    dir: &Path,
    auth: serde_json::Value,
) -> Result<Authenticator, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::write(
        dir.join("users"),
        format!(
            "{}\n",
            users_file_line("alice", "s3cret", &["ops".to_owned()])?
        ),
    )?;
    let config: AuthConfig = serde_json::from_value(auth)?;
    let auth = Auth::start(&config, Protected::new([]), &[], CancellationToken::new()).await?;
    Ok(auth.access("amqp", None).authenticator)
}

fn certificate(name: &str) -> ClientIdentity {
    ClientIdentity {
        common_name: Some(name.to_owned()),
        fingerprint: "ab".repeat(32),
        ..ClientIdentity::default()
    }
}

fn peer<'a>(address: &str, certificate: Option<&'a ClientIdentity>) -> Peer<'a> {
    Peer {
        address: address
            .parse()
            .unwrap_or_else(|_| unreachable!("a constant address")),
        certificate,
    }
}

fn names(mechanisms: &[Mechanism]) -> Vec<&'static str> {
    mechanisms
        .iter()
        .map(|mechanism| mechanism.name())
        .collect()
}

#[tokio::test]
async fn mechanisms_follow_what_is_configured_and_who_connects() -> TestResult {
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users");
    let app = certificate("app-1");

    // Nothing configured: anonymous on loopback only. A remote peer is offered ANONYMOUS alone (the
    // list may not be empty), and refused when it tries it.
    let open = authenticator(dir.path(), serde_json::json!({})).await?;
    assert_eq!(names(&offered(&open, peer(LOOPBACK, None))), ["ANONYMOUS"]);
    assert_eq!(names(&offered(&open, peer(REMOTE, None))), ["ANONYMOUS"]);
    assert!(!open.serves_anonymous(REMOTE.parse()?));
    assert_eq!(
        names(&offered(&open, peer(REMOTE, Some(&app)))),
        ["EXTERNAL"]
    );

    // Users: PLAIN, and no anonymous clients unless allowed.
    let users_only = authenticator(dir.path(), serde_json::json!({ "users_file": users })).await?;
    assert_eq!(
        names(&offered(&users_only, peer(LOOPBACK, None))),
        ["PLAIN"]
    );
    assert_eq!(
        names(&offered(&users_only, peer(REMOTE, Some(&app)))),
        ["EXTERNAL", "PLAIN"]
    );
    let anyone = authenticator(
        dir.path(),
        serde_json::json!({ "users_file": users, "allow_anonymous": true }),
    )
    .await?;
    assert_eq!(
        names(&offered(&anyone, peer(REMOTE, None))),
        ["PLAIN", "ANONYMOUS"]
    );

    // Certificates that do not name principals offer no EXTERNAL.
    let no_certificates = authenticator(
        dir.path(),
        serde_json::json!({ "users_file": users, "certificates": false }),
    )
    .await?;
    assert_eq!(
        names(&offered(&no_certificates, peer(REMOTE, Some(&app)))),
        ["PLAIN"]
    );
    Ok(())
}

/// What the client saw: the mechanisms offered and the outcome's code.
#[derive(Debug)]
struct Seen {
    mechanisms: Vec<String>,
    code: SaslCode,
}

/// Runs the exchange with a client that picks `mechanism` with `response`.
async fn exchange_with(
    authenticator: &Authenticator,
    peer: Peer<'_>,
    mechanism: &str,
    response: Option<&[u8]>,
) -> Result<(Result<Principal, SaslError>, Seen), Box<dyn std::error::Error + Send + Sync>> {
    let (mut client, mut server): (DuplexStream, DuplexStream) = tokio::io::duplex(4096);
    client.write_all(&SASL_HEADER).await?;
    let init = SaslInit {
        mechanism: Symbol::from(mechanism),
        initial_response: response.map(|bytes| Binary::from(bytes.to_vec())),
        hostname: None,
    };
    frame::write_frame(&mut client, Frame::Init(init)).await?;
    let outcome = negotiate(
        &mut server,
        authenticator,
        peer,
        64 * 1024,
        Duration::from_secs(30),
    )
    .await;
    let mut header = [0u8; 8];
    client.read_exact(&mut header).await?;
    assert_eq!(header, SASL_HEADER);
    let Frame::Mechanisms(mechanisms) = frame::read_frame(&mut client, 512).await? else {
        return Err("no sasl-mechanisms".into());
    };
    let Frame::Outcome(sasl_outcome) = frame::read_frame(&mut client, 512).await? else {
        return Err("no sasl-outcome".into());
    };
    let seen = Seen {
        mechanisms: mechanisms
            .sasl_server_mechanisms
            .0
            .iter()
            .map(|symbol| symbol.as_str().to_owned())
            .collect(),
        code: sasl_outcome.code,
    };
    Ok((outcome, seen))
}

#[tokio::test]
async fn plain_checks_the_password_and_takes_a_jwt_as_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let issuer = TokenIssuer::new("k1")?;
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer])?;
    let authenticator = authenticator(
        dir.path(),
        serde_json::json!({
            "users_file": dir.path().join("users"),
            "jwt": {
                "jwks_file": jwks,
                "issuer": courier_testkit::identity::ISSUER,
                "audience": courier_testkit::identity::AUDIENCE,
            },
        }),
    )
    .await?;

    let (principal, seen) = exchange_with(
        &authenticator,
        peer(REMOTE, None),
        "PLAIN",
        Some(b"\0alice\0s3cret"),
    )
    .await?;
    assert_eq!(seen.mechanisms, ["PLAIN"]);
    assert!(matches!(seen.code, SaslCode::Ok), "{seen:?}");
    let principal = principal?;
    assert_eq!(
        (principal.name.as_str(), principal.roles.as_slice()),
        ("alice", &["ops".to_owned()][..])
    );

    let (refused, seen) = exchange_with(
        &authenticator,
        peer(REMOTE, None),
        "PLAIN",
        Some(b"\0alice\0wrong"),
    )
    .await?;
    assert!(matches!(seen.code, SaslCode::Auth), "{seen:?}");
    assert!(
        matches!(refused, Err(SaslError::Refused { .. })),
        "{refused:?}"
    );

    let token = issuer.token(&Claims::for_subject("svc-orders").with_roles(&["writer"]))?;
    let response = format!("\0\0{token}");
    let (principal, seen) = exchange_with(
        &authenticator,
        peer(REMOTE, None),
        "PLAIN",
        Some(response.as_bytes()),
    )
    .await?;
    assert!(matches!(seen.code, SaslCode::Ok), "{seen:?}");
    let principal = principal?;
    assert_eq!(principal.name, "svc-orders");
    assert_eq!(principal.source, Source::Token);

    // No response at all, or a response that names someone else to act as.
    for response in [None, Some(&b"bob\0alice\0s3cret"[..])] {
        let (refused, seen) =
            exchange_with(&authenticator, peer(REMOTE, None), "PLAIN", response).await?;
        assert!(
            matches!(seen.code, SaslCode::Auth),
            "{response:?}: {seen:?}"
        );
        assert!(refused.is_err());
    }
    Ok(())
}

#[tokio::test]
async fn external_takes_the_certificate_and_needs_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Anonymous clients allowed everywhere: EXTERNAL without a certificate must still be refused,
    // not taken as an anonymous client.
    let authenticator =
        authenticator(dir.path(), serde_json::json!({ "allow_anonymous": true })).await?;
    let app = certificate("app-1");

    let (principal, seen) =
        exchange_with(&authenticator, peer(REMOTE, Some(&app)), "EXTERNAL", None).await?;
    assert_eq!(seen.mechanisms, ["EXTERNAL", "ANONYMOUS"]);
    assert!(matches!(seen.code, SaslCode::Ok), "{seen:?}");
    let principal = principal?;
    assert_eq!(
        (principal.name.as_str(), principal.source),
        ("app-1", Source::Certificate)
    );

    // The authorization identity may only be the certificate's own name.
    let (principal, seen) = exchange_with(
        &authenticator,
        peer(REMOTE, Some(&app)),
        "EXTERNAL",
        Some(b"app-1"),
    )
    .await?;
    assert!(matches!(seen.code, SaslCode::Ok), "{seen:?}");
    assert_eq!(principal?.name, "app-1");
    let (refused, seen) = exchange_with(
        &authenticator,
        peer(REMOTE, Some(&app)),
        "EXTERNAL",
        Some(b"admin"),
    )
    .await?;
    assert!(matches!(seen.code, SaslCode::Auth), "{seen:?}");
    assert!(refused.is_err());

    let (refused, seen) =
        exchange_with(&authenticator, peer(REMOTE, None), "EXTERNAL", None).await?;
    assert_eq!(seen.mechanisms, ["ANONYMOUS"]);
    assert!(matches!(seen.code, SaslCode::Auth), "{seen:?}");
    assert!(
        matches!(refused, Err(SaslError::Refused { .. })),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn anonymous_follows_the_peer_rule() -> TestResult {
    let dir = tempfile::tempdir()?;
    let loopback_only = authenticator(dir.path(), serde_json::json!({})).await?;
    let (principal, seen) =
        exchange_with(&loopback_only, peer(LOOPBACK, None), "ANONYMOUS", None).await?;
    assert!(matches!(seen.code, SaslCode::Ok), "{seen:?}");
    assert!(principal?.is_anonymous());
    let (refused, seen) =
        exchange_with(&loopback_only, peer(REMOTE, None), "ANONYMOUS", None).await?;
    assert!(matches!(seen.code, SaslCode::Auth), "{seen:?}");
    assert!(refused.is_err());

    let never = authenticator(dir.path(), serde_json::json!({ "allow_anonymous": false })).await?;
    let (refused, seen) = exchange_with(&never, peer(LOOPBACK, None), "ANONYMOUS", None).await?;
    assert!(matches!(seen.code, SaslCode::Auth), "{seen:?}");
    assert!(refused.is_err());

    // A mechanism the gateway does not know.
    let (refused, seen) =
        exchange_with(&loopback_only, peer(LOOPBACK, None), "SCRAM-SHA-256", None).await?;
    assert!(matches!(seen.code, SaslCode::Auth), "{seen:?}");
    assert!(refused.is_err());
    Ok(())
}

#[tokio::test]
async fn a_header_that_is_not_sasl_is_answered_and_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let authenticator = authenticator(dir.path(), serde_json::json!({})).await?;
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"AMQP\x02\x01\x00\x00").await?;
    let outcome = negotiate(
        &mut server,
        &authenticator,
        peer(LOOPBACK, None),
        512,
        Duration::from_secs(30),
    )
    .await;
    assert!(matches!(outcome, Err(SaslError::Io(_))), "{outcome:?}");
    let mut header = [0u8; 8];
    client.read_exact(&mut header).await?;
    assert_eq!(header, SASL_HEADER);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stalls_is_cut_off() -> TestResult {
    let dir = tempfile::tempdir()?;
    let authenticator = authenticator(dir.path(), serde_json::json!({})).await?;
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&SASL_HEADER).await?;
    let outcome = negotiate(
        &mut server,
        &authenticator,
        peer(LOOPBACK, None),
        512,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(&outcome, Err(SaslError::Io(error)) if error.kind() == io::ErrorKind::TimedOut),
        "{outcome:?}"
    );
    Ok(())
}

fn password(user: Option<&str>, password: &str) -> Option<Credentials> {
    Some(Credentials::Password {
        username: user.map(str::to_owned),
        password: password.as_bytes().to_vec(),
    })
}

#[test]
fn plain_responses_split_into_user_and_password() {
    assert_eq!(
        plain_credentials(b"\0alice\0s3cret"),
        password(Some("alice"), "s3cret")
    );
    assert_eq!(
        plain_credentials(b"alice\0alice\0s3cret"),
        password(Some("alice"), "s3cret")
    );
    assert_eq!(
        plain_credentials(b"\0\0a.jwt.token"),
        password(None, "a.jwt.token")
    );
    assert_eq!(plain_credentials(b"\0alice\0"), password(Some("alice"), ""));
    // Acting as another user, no separators, too many, or a user name that is not UTF-8.
    assert_eq!(plain_credentials(b"admin\0alice\0s3cret"), None);
    assert_eq!(plain_credentials(b"alice"), None);
    assert_eq!(plain_credentials(b"\0a\0b\0c"), None);
    assert_eq!(plain_credentials(b"\0\xff\0pw"), None);
}

#[test]
fn mechanisms_are_known_by_name() {
    for mechanism in [Mechanism::External, Mechanism::Plain, Mechanism::Anonymous] {
        assert_eq!(Mechanism::from_name(mechanism.name()), Some(mechanism));
    }
    assert_eq!(Mechanism::from_name("SCRAM-SHA-256"), None);
}

#[test]
fn a_busy_hashing_pool_is_a_temporary_failure_and_the_rest_are_the_credentials() {
    assert!(matches!(
        Refusal::from(Failure::Busy).code,
        SaslCode::SysTemp
    ));
    for failure in [Failure::BadCredentials, Failure::AnonymousRefused] {
        assert!(matches!(Refusal::from(failure).code, SaslCode::Auth));
    }
}
