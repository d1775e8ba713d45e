//! Who may connect and what they may do, with fe2o3's client against the server on an embedded log:
//! SASL PLAIN against the users file, EXTERNAL from a client certificate, a client that skips SASL
//! where it may not, and links the policy or the gateway's own state refuse at attach, with
//! `amqp:unauthorized-access` and nothing stored or delivered; a connection made with a token closed
//! (`amqp:unauthorized-access`) when the token expires.

use std::{cell::Cell, fmt::Debug, path::Path, sync::Arc, time::Duration};

use courier_amqp::{Config, Server};
use courier_gateway::{
    auth::{Auth, AuthConfig, Protected, users_file_line},
    log::{Log, TopicPartition},
    tls::{ClientAuth, TlsConfig},
};
use courier_testkit::{
    certs::{TestPki, Validity},
    identity::{Claims, TokenIssuer},
};
use fe2o3_amqp::{
    Connection, Receiver, Sender, Session, connection::ConnectionHandle, sasl_profile::SaslProfile,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(20);
/// Longer than any allowed send takes here, even in a loaded full run (well under a second).
const SEND_WAIT: Duration = Duration::from_secs(5);
/// A refused link's DETACH is there already when its send went unanswered.
const DETACH_WAIT: Duration = Duration::from_secs(2);

const POLICY: &str = r#"
[[rules]]
who = ["alice"]
allow = ["produce", "consume"]
topics = ["orders*"]

[[rules]]
who = ["alice"]
allow = ["join_group"]
groups = ["billing-*"]

# Bob may do anything the policy can grant; the gateway's own topics stay out of reach.
[[rules]]
who = ["bob"]
allow = ["all"]
topics = ["*"]
groups = ["*"]
"#;

/// A served gateway on an embedded log.
struct Gateway {
    log: Arc<dyn Log>,
    address: std::net::SocketAddr,
    drain: CancellationToken,
    serving: JoinHandle<courier_amqp::Result<()>>,
    auth: Auth,
}

impl Gateway {
    async fn start(
        dir: &Path,
        auth: serde_json::Value,
        tls: Option<TlsConfig>,
    ) -> Result<Self, Error> {
        let log = courier_gateway::testing::embedded(&dir.join("data")).await?;
        let config: AuthConfig = serde_json::from_value(auth)?;
        let auth = Auth::start(
            &config,
            Protected::new(["mqtt.sessions".to_owned()]),
            &[],
            CancellationToken::new(),
        )
        .await?;
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            tls,
            ..Config::default()
        };
        let server = Server::bind(log.clone(), config, auth.access("amqp", None)).await?;
        let address = server.local_addr()?;
        let drain = CancellationToken::new();
        let serving = tokio::spawn(server.serve(drain.clone()));
        Ok(Self {
            log,
            address,
            drain,
            serving,
            auth,
        })
    }

    async fn connect(&self, profile: Option<SaslProfile>) -> Result<ConnectionHandle<()>, Error> {
        let mut builder = Connection::builder().container_id("auth-test");
        if let Some(profile) = profile {
            builder = builder.sasl_profile(profile);
        }
        let url = format!("amqp://{}", self.address);
        Ok(tokio::time::timeout(WAIT, builder.open(url.as_str())).await??)
    }

    /// Records in partition 0 of `topic`; none when the topic does not exist.
    async fn stored(&self, topic: &str) -> Result<usize, Error> {
        match self.log.describe_topic(topic).await {
            Ok(description) => {
                let mut records = 0;
                for partition in 0..description.partitions.len() {
                    let partition = TopicPartition::new(topic, partition as i32);
                    let end = self
                        .log
                        .resolve(&partition, courier_gateway::log::Position::Latest)
                        .await?;
                    records += usize::try_from(end)?;
                }
                Ok(records)
            }
            Err(courier_gateway::Error::UnknownTopic { .. }) => Ok(0),
            Err(error) => Err(error.into()),
        }
    }

    async fn stop(self) -> TestResult {
        self.drain.cancel();
        tokio::time::timeout(WAIT, self.serving).await???;
        self.auth.stop();
        Ok(())
    }
}

fn plain(user: &str, password: &str) -> SaslProfile {
    SaslProfile::Plain {
        username: user.to_owned(),
        password: password.to_owned(),
    }
}

fn users(dir: &Path) -> Result<std::path::PathBuf, Error> {
    let path = dir.join("users");
    let lines = [
        users_file_line("alice", "s3cret", &[])?,
        users_file_line("bob", "hunter2", &[])?,
    ];
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok(path)
}

fn policy(dir: &Path) -> Result<std::path::PathBuf, Error> {
    let path = dir.join("policy.toml");
    std::fs::write(&path, POLICY)?;
    Ok(path)
}

/// The refusal a link met, from its attach or its first use.
fn assert_unauthorized(outcome: impl Debug, naming: &str) {
    let text = format!("{outcome:?}");
    assert!(
        text.contains("UnauthorizedAccess") && text.contains(naming),
        "expected amqp:unauthorized-access naming {naming:?}, got {text}"
    );
}

/// Attaches a sender to `address` and sends one message; the first error met, or the outcome
/// (on a timeout, the step that did not finish).
async fn send_one(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
) -> String {
    let step = Cell::new("attach");
    let attempt = async {
        let mut sender = Sender::attach(session, name, address)
            .await
            .map_err(|e| format!("attach: {e:?}"))?;
        step.set("send");
        let outcome = match tokio::time::timeout(SEND_WAIT, sender.send("hello")).await {
            Ok(sent) => sent.map_err(|e| format!("send: {e:?}"))?,
            // fe2o3's sender can take the credit the gateway's acceptor grants a refused link
            // before the DETACH that follows, and then waits for a disposition of a transfer the
            // gateway never takes; the DETACH, with the reason, is still there to be read.
            Err(_) => {
                let detached = tokio::time::timeout(DETACH_WAIT, sender.on_detach()).await;
                return Err(match detached {
                    Ok(detach) => format!("send unanswered: {detach:?}"),
                    Err(_) => format!("send unanswered in {SEND_WAIT:?}, and no DETACH"),
                });
            }
        };
        let _ = sender.close().await;
        Ok::<_, String>(format!("{outcome:?}"))
    };
    match tokio::time::timeout(WAIT, attempt).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => error,
        Err(_) => format!("timed out in {}", step.get()),
    }
}

/// Attaches a receiver to `address` and waits for one message; the first error met, or the body
/// (on a timeout, the step that did not finish).
async fn receive_one(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
    wait: Duration,
) -> String {
    let step = Cell::new("attach");
    let attempt = async {
        let mut receiver = Receiver::attach(session, name, address)
            .await
            .map_err(|e| format!("attach: {e:?}"))?;
        step.set("recv");
        let delivery = receiver
            .recv::<String>()
            .await
            .map_err(|e| format!("recv: {e:?}"))?;
        let _ = receiver.accept(&delivery).await;
        let _ = receiver.close().await;
        Ok::<_, String>(delivery.body().clone())
    };
    match tokio::time::timeout(wait, attempt).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => error,
        Err(_) => format!("timed out in {}", step.get()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_checks_the_users_file_and_anonymous_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let users = users(dir.path())?;
    let gateway =
        Gateway::start(dir.path(), serde_json::json!({ "users_file": users }), None).await?;

    let mut connection = gateway.connect(Some(plain("alice", "s3cret"))).await?;
    let mut session = Session::begin(&mut connection).await?;
    assert_eq!(
        send_one(&mut session, "s", "orders").await,
        "Accepted(Accepted)"
    );
    session.end().await?;
    connection.close().await?;

    let wrong = gateway.connect(Some(plain("alice", "wrong"))).await;
    assert!(
        format!("{:?}", wrong.err()).contains("Auth"),
        "a wrong password was let in"
    );
    // ANONYMOUS is not offered; fe2o3's client gives up on its own.
    assert!(
        gateway.connect(Some(SaslProfile::Anonymous)).await.is_err(),
        "ANONYMOUS was let in"
    );

    // Skipping SASL is no way around it: the connection opens only to be closed with the reason.
    let mut skipped = gateway.connect(None).await?;
    let closed = tokio::time::timeout(WAIT, skipped.on_close()).await?;
    assert_unauthorized(closed, "credentials are required");
    assert_eq!(gateway.stored("orders").await?, 1);
    gateway.stop().await
}

/// A connection authenticated with a token (SASL PLAIN, the token as password) works until the
/// token expires, and is then closed with `amqp:unauthorized-access`; what it sent stays stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_connection_ends_when_the_token_expires() -> TestResult {
    let dir = tempfile::tempdir()?;
    let issuer = TokenIssuer::new("k1")?;
    let jwks = TokenIssuer::write_jwks(dir.path(), "jwks.json", &[&issuer])?;
    let auth = serde_json::json!({ "jwt": { "jwks_file": jwks, "leeway": "0s" } });
    let gateway = Gateway::start(dir.path(), auth, None).await?;
    let token = issuer.token(&Claims {
        expires_in: 8,
        ..Claims::for_subject("svc")
    })?;
    let mut connection = gateway.connect(Some(plain("svc", &token))).await?;
    let mut session = Session::begin(&mut connection).await?;
    assert_eq!(
        send_one(&mut session, "s", "orders").await,
        "Accepted(Accepted)"
    );
    let closed = tokio::time::timeout(WAIT, connection.on_close()).await?;
    assert_unauthorized(closed, "expired");
    assert_eq!(gateway.stored("orders").await?, 1);
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_the_policy_denies_are_refused_at_attach_and_move_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let auth =
        serde_json::json!({ "users_file": users(dir.path())?, "policy_file": policy(dir.path())? });
    let gateway = Gateway::start(dir.path(), auth, None).await?;
    let mut connection = gateway.connect(Some(plain("alice", "s3cret"))).await?;
    let mut session = Session::begin(&mut connection).await?;

    // Sending where the policy allows, and where it does not.
    assert_eq!(
        send_one(&mut session, "ok", "orders").await,
        "Accepted(Accepted)"
    );
    assert_unauthorized(
        send_one(&mut session, "denied", "payments").await,
        "alice may not produce topic",
    );
    assert_eq!(gateway.stored("payments").await?, 0);

    // Receiving: the allowed group gets the record; a topic or group the policy denies is refused.
    assert_eq!(
        receive_one(&mut session, "r-ok", "orders/groups/billing-1", WAIT).await,
        "hello"
    );
    assert_unauthorized(
        receive_one(&mut session, "r-topic", "payments", WAIT).await,
        "alice may not consume topic",
    );
    assert_unauthorized(
        receive_one(&mut session, "r-group", "orders/groups/audit", WAIT).await,
        "alice may not join_group group",
    );
    // Other protocols' groups are refused to a principal the policy allows every group.
    let mut bob = gateway.connect(Some(plain("bob", "hunter2"))).await?;
    let mut bobs = Session::begin(&mut bob).await?;
    assert_unauthorized(
        receive_one(&mut bobs, "r-mqtt", "orders/groups/mqtt.session.c1", WAIT).await,
        "belongs to mqtt",
    );
    // The gateway's own state: refused both ways, even to bob.
    assert_unauthorized(
        send_one(&mut bobs, "sessions-in", "mqtt.sessions").await,
        "internal state",
    );
    assert_unauthorized(
        receive_one(&mut bobs, "sessions-out", "mqtt.sessions", WAIT).await,
        "internal state",
    );
    assert_eq!(gateway.stored("mqtt.sessions").await?, 0);

    // The session survives its refused links.
    assert_eq!(
        send_one(&mut session, "ok-again", "orders").await,
        "Accepted(Accepted)"
    );
    assert_eq!(gateway.stored("orders").await?, 2);
    session.end().await?;
    connection.close().await?;
    bobs.end().await?;
    bob.close().await?;
    gateway.stop().await
}

fn tls_client(pki: &TestPki, cert: &Path, key: &Path) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(pki.ca())? {
        roots.add(certificate?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?,
    )
}

/// A client with a verified certificate that skips SASL is its certificate's name, as with SASL
/// EXTERNAL (which fe2o3's client offers only on its own TLS; the exchange itself is tested in
/// `sasl::tests`, and with Proton in the root crate's `tests/auth_amqp.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_principal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut pki = TestPki::new(dir.path(), "amqp")?;
    let server_cert = pki.server("server", &["localhost"])?;
    let client = pki.client("client", "alice", Validity::Now)?;
    let mut tls = TlsConfig::new(&server_cert.cert, &server_cert.key);
    tls.client_ca = Some(pki.ca().to_owned());
    tls.client_auth = ClientAuth::Required;
    let auth =
        serde_json::json!({ "users_file": users(dir.path())?, "policy_file": policy(dir.path())? });
    let gateway = Gateway::start(dir.path(), auth, Some(tls)).await?;

    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(gateway.address).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(
            &pki,
            &client.cert,
            &client.key,
        )?));
        let stream = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let connection = Connection::builder()
            .container_id("external-test")
            .open_with_stream(stream);
        Ok::<_, Error>(tokio::time::timeout(WAIT, connection).await??)
    };
    let mut connection = connect().await?;
    let mut session = Session::begin(&mut connection).await?;
    // The certificate's name is alice: the policy's rules for alice apply.
    assert_eq!(
        send_one(&mut session, "ok", "orders").await,
        "Accepted(Accepted)"
    );
    assert_unauthorized(
        send_one(&mut session, "denied", "payments").await,
        "alice may not produce",
    );
    assert_eq!(gateway.stored("payments").await?, 0);
    session.end().await?;
    connection.close().await?;
    gateway.stop().await
}
