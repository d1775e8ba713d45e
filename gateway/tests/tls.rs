//! The TLS acceptor against a real rustls client, with certificates made for each test: what it
//! serves (by SNI, after a rotation), the client identity it reads, and every refusal with its
//! reason. Over in-memory pipes, so time can be paused for the reload checks.

use std::{path::Path, sync::Arc, time::Duration};

use courier_gateway::tls::{ClientAuth, ClientIdentity, TlsAcceptor, TlsConfig, TlsVersion};
use courier_testkit::certs::{Issued, TestPki, Validity};
use rustls::{
    ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    version::TLS12,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A client's settings: whom it trusts, what it presents, which versions it speaks.
struct Client<'a> {
    trusts: &'a Path,
    certificate: Option<&'a Issued>,
    versions: &'a [&'static SupportedProtocolVersion],
    server_name: &'a str,
}

impl<'a> Client<'a> {
    fn trusting(ca: &'a Path) -> Self {
        Self {
            trusts: ca,
            certificate: None,
            versions: rustls::ALL_VERSIONS,
            server_name: "gateway.test",
        }
    }

    fn presenting(self, certificate: &'a Issued) -> Self {
        Self {
            certificate: Some(certificate),
            ..self
        }
    }

    fn config(&self) -> Result<ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(self.trusts)? {
            roots.add(certificate?)?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(self.versions)?
                .with_root_certificates(roots);
        Ok(match self.certificate {
            Some(issued) => builder.with_client_auth_cert(
                CertificateDer::pem_file_iter(&issued.cert)?.collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_file(&issued.key)?,
            )?,
            None => builder.with_no_client_auth(),
        })
    }
}

/// What a handshake gave each side: the server's identity of the client or its refusal, and the
/// identity of the certificate the server showed the client (when the client finished).
struct Outcome {
    server: Result<Option<ClientIdentity>, courier_gateway::tls::Refusal>,
    served: Option<ClientIdentity>,
}

/// One handshake between `client` and `acceptor` over an in-memory pipe. After it, the client
/// writes a byte the server reads, as a first request would: in TLS 1.3 a refused client
/// certificate is only seen by the client then.
async fn handshake(
    acceptor: &TlsAcceptor,
    client: &Client<'_>,
) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.config()?));
    let name = ServerName::try_from(client.server_name.to_owned())?;
    let client_side = async move {
        let mut stream = connector.connect(name, client_end).await.ok()?;
        let served = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(ClientIdentity::of);
        stream.write_all(b"x").await.ok()?;
        stream.flush().await.ok()?;
        served
    };
    let server_side = async {
        match acceptor.handshake(server_end).await {
            Ok((mut stream, identity)) => {
                let mut byte = [0u8; 1];
                let _ = stream.read_exact(&mut byte).await;
                Ok(identity)
            }
            Err(refusal) => Err(refusal),
        }
    };
    let (served, server) = tokio::join!(client_side, server_side);
    Ok(Outcome { server, served })
}

/// The server's refusal reason for `client`, failing if it was let in.
async fn refused(
    acceptor: &TlsAcceptor,
    client: &Client<'_>,
) -> Result<&'static str, Box<dyn std::error::Error + Send + Sync>> {
    match handshake(acceptor, client).await?.server {
        Ok(_) => Err("the handshake was accepted".into()),
        Err(refusal) => Ok(refusal.reason),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    pki: TestPki,
    server: Issued,
}

impl Fixture {
    fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let mut pki = TestPki::new(dir.path(), "gateway")?;
        let server = pki.server("server", &["gateway.test", "127.0.0.1"])?;
        Ok(Self {
            _dir: dir,
            pki,
            server,
        })
    }

    fn config(&self, client_auth: ClientAuth) -> TlsConfig {
        let mut config = TlsConfig::new(&self.server.cert, &self.server.key);
        if client_auth != ClientAuth::None {
            config.client_ca = Some(self.pki.ca().to_owned());
            config.client_auth = client_auth;
        }
        config
    }
}

fn start(config: &TlsConfig) -> courier_gateway::Result<TlsAcceptor> {
    TlsAcceptor::start("test", config, &[], CancellationToken::new())
}

#[tokio::test]
async fn reads_the_client_identity_of_a_verified_certificate() -> TestResult {
    let mut fixture = Fixture::new()?;
    let device = fixture.pki.client("device", "device-7", Validity::Now)?;
    let acceptor = start(&fixture.config(ClientAuth::Required))?;
    let outcome = handshake(
        &acceptor,
        &Client::trusting(fixture.pki.ca()).presenting(&device),
    )
    .await?;
    let identity = outcome
        .server
        .map_err(|refusal| refusal.detail)?
        .ok_or("no client identity")?;
    assert_eq!(identity.common_name.as_deref(), Some("device-7"));
    assert_eq!(identity.uris, ["spiffe://courier.test/device-7"]);
    assert_eq!(identity.fingerprint.len(), 64, "SHA-256 in hex");
    assert_eq!(identity.name(), Some("device-7"));
    let served = outcome
        .served
        .ok_or("the client saw no server certificate")?;
    assert_eq!(served.dns_names, ["gateway.test"]);
    Ok(())
}

#[tokio::test]
async fn every_refusal_names_its_reason() -> TestResult {
    let mut fixture = Fixture::new()?;
    let valid = fixture.pki.client("valid", "valid", Validity::Now)?;
    let expired = fixture
        .pki
        .client("expired", "expired", Validity::Expired)?;
    let early = fixture
        .pki
        .client("early", "early", Validity::NotYetValid)?;
    let revoked = fixture.pki.client("revoked", "revoked", Validity::Now)?;
    let other_dir = tempfile::tempdir()?;
    let mut stranger_pki = TestPki::new(other_dir.path(), "stranger")?;
    let stranger = stranger_pki.client("stranger", "stranger", Validity::Now)?;

    let mut config = fixture.config(ClientAuth::Required);
    config.crl = Some(fixture.pki.crl("revoked.crl", &[revoked.serial])?);
    let acceptor = start(&config)?;
    let ca = fixture.pki.ca();
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca)).await?,
        "certificate_required"
    );
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca).presenting(&stranger)).await?,
        "unknown_ca"
    );
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca).presenting(&expired)).await?,
        "certificate_expired"
    );
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca).presenting(&early)).await?,
        "certificate_not_yet_valid"
    );
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca).presenting(&revoked)).await?,
        "certificate_revoked"
    );
    assert!(
        handshake(&acceptor, &Client::trusting(ca).presenting(&valid))
            .await?
            .server
            .is_ok(),
        "a valid certificate is still let in"
    );

    // Plain text on a TLS port: an MQTT CONNECT's first bytes.
    let (mut client_end, server_end) = tokio::io::duplex(1024);
    client_end
        .write_all(&[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ])
        .await?;
    let plain = acceptor
        .handshake(server_end)
        .await
        .err()
        .ok_or("plain text was accepted")?;
    assert_eq!(plain.reason, "not_tls");

    // TLS 1.2 only, against a listener that asks for 1.3.
    let mut modern = fixture.config(ClientAuth::None);
    modern.min_version = TlsVersion::Tls13;
    let acceptor = start(&modern)?;
    const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&TLS12];
    let old = Client {
        versions: TLS12_ONLY,
        ..Client::trusting(ca)
    };
    assert_eq!(refused(&acceptor, &old).await?, "protocol_version");
    Ok(())
}

#[tokio::test]
async fn optional_client_certificates_are_checked_when_presented() -> TestResult {
    let mut fixture = Fixture::new()?;
    let expired = fixture
        .pki
        .client("expired", "expired", Validity::Expired)?;
    let valid = fixture.pki.client("valid", "valid", Validity::Now)?;
    let acceptor = start(&fixture.config(ClientAuth::Optional))?;
    let ca = fixture.pki.ca();
    let anonymous = handshake(&acceptor, &Client::trusting(ca)).await?;
    assert_eq!(
        anonymous.server.map_err(|r| r.detail)?,
        None,
        "no certificate, no identity"
    );
    let identified = handshake(&acceptor, &Client::trusting(ca).presenting(&valid)).await?;
    assert_eq!(
        identified
            .server
            .map_err(|r| r.detail)?
            .and_then(|id| id.common_name),
        Some("valid".to_owned())
    );
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca).presenting(&expired)).await?,
        "certificate_expired"
    );
    Ok(())
}

#[tokio::test]
async fn sni_chooses_among_several_certificates() -> TestResult {
    let mut fixture = Fixture::new()?;
    let devices = fixture.pki.server("devices", &["*.devices.test"])?;
    let mut config = fixture.config(ClientAuth::None);
    config.sni.push(courier_gateway::tls::SniCertificate {
        names: vec!["*.devices.test".into()],
        cert: devices.cert.clone(),
        key: devices.key.clone(),
    });
    let acceptor = start(&config)?;
    let ca = fixture.pki.ca();
    // Each client checks the name it asked for against the certificate served: the handshake only
    // finishes when the right one was chosen.
    let by_sni = handshake(
        &acceptor,
        &Client {
            server_name: "a.devices.test",
            ..Client::trusting(ca)
        },
    )
    .await?;
    assert_eq!(
        by_sni.served.map(|id| id.dns_names),
        Some(vec!["*.devices.test".to_owned()])
    );
    let default = handshake(&acceptor, &Client::trusting(ca)).await?;
    assert_eq!(
        default.served.map(|id| id.dns_names),
        Some(vec!["gateway.test".to_owned()])
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn rotated_files_serve_new_handshakes_and_bad_files_keep_the_last_good_ones() -> TestResult {
    let mut fixture = Fixture::new()?;
    let first = fixture
        .pki
        .server("first", &["gateway.test", "first.test"])?;
    let second = fixture
        .pki
        .server("second", &["gateway.test", "second.test"])?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first.cert, &cert)?;
    std::fs::copy(&first.key, &key)?;
    let mut config = TlsConfig::new(&cert, &key);
    config.reload_interval = Duration::from_secs(5);
    let stop = CancellationToken::new();
    let acceptor = TlsAcceptor::start("test", &config, &[], stop.clone())?;
    let ca = fixture.pki.ca();
    let served = |outcome: Outcome| outcome.served.map(|id| id.dns_names);
    let first_names = Some(vec!["gateway.test".to_owned(), "first.test".to_owned()]);
    let second_names = Some(vec!["gateway.test".to_owned(), "second.test".to_owned()]);
    assert_eq!(
        served(handshake(&acceptor, &Client::trusting(ca)).await?),
        first_names
    );

    std::fs::copy(&second.cert, &cert)?;
    std::fs::copy(&second.key, &key)?;
    assert_eq!(
        served(handshake(&acceptor, &Client::trusting(ca)).await?),
        first_names,
        "not before the next check"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        served(handshake(&acceptor, &Client::trusting(ca)).await?),
        second_names
    );

    // A key that is not the certificate's: the last good pair keeps serving.
    std::fs::copy(&first.key, &key)?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        served(handshake(&acceptor, &Client::trusting(ca)).await?),
        second_names
    );
    std::fs::write(&key, "not a key")?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        served(handshake(&acceptor, &Client::trusting(ca)).await?),
        second_names
    );
    // Fixed: loaded.
    std::fs::copy(&first.cert, &cert)?;
    std::fs::copy(&first.key, &key)?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        served(handshake(&acceptor, &Client::trusting(ca)).await?),
        first_names
    );
    stop.cancel();
    Ok(())
}

#[test]
fn a_config_that_cannot_work_is_refused_before_loading() -> TestResult {
    let mut config = TlsConfig::new("tls.crt", "tls.key");
    config.client_auth = ClientAuth::Required;
    assert!(config.validate().is_err(), "client_auth without client_ca");
    config.client_auth = ClientAuth::None;
    config.client_ca = Some("ca.crt".into());
    assert!(config.validate().is_err(), "client_ca without client_auth");
    config.client_ca = None;
    config.crl = Some("crl.pem".into());
    assert!(config.validate().is_err(), "crl without client_ca");
    let missing = TlsAcceptor::start(
        "test",
        &TlsConfig::new("/nonexistent/tls.crt", "k"),
        &[],
        CancellationToken::new(),
    );
    let error = missing
        .err()
        .ok_or("a missing file was accepted")?
        .to_string();
    assert!(
        error.contains("/nonexistent/tls.crt"),
        "the error names the file: {error}"
    );
    Ok(())
}

/// A revocation list file that holds no PEM CRL (empty, half written, or DER) is refused: rustls
/// would check no revocation at all with no list, and let revoked clients in.
#[tokio::test]
async fn a_crl_file_without_a_list_is_refused_rather_than_ignored() -> TestResult {
    let mut fixture = Fixture::new()?;
    let revoked = fixture.pki.client("revoked", "revoked", Validity::Now)?;
    let good = fixture.pki.crl("good.crl", &[revoked.serial])?;
    let mut config = fixture.config(ClientAuth::Required);
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.crl");
    std::fs::write(&empty, "")?;
    config.crl = Some(empty.clone());
    let refusal = start(&config)
        .err()
        .ok_or("an empty CRL file was taken")?
        .to_string();
    assert!(
        refusal.contains("empty.crl") && refusal.contains("no PEM X509 CRL"),
        "{refusal}"
    );

    // Reloaded: the last good list stays, and the revoked client stays out.
    let live = dir.path().join("live.crl");
    std::fs::copy(&good, &live)?;
    config.crl = Some(live.clone());
    config.reload_interval = Duration::from_millis(50);
    let acceptor = start(&config)?;
    std::fs::write(&live, "")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ca = fixture.pki.ca();
    assert_eq!(
        refused(&acceptor, &Client::trusting(ca).presenting(&revoked)).await?,
        "certificate_revoked"
    );
    Ok(())
}

/// With client certificates every handshake is a full one: a resumed session would skip the client
/// certificate's verification, so a certificate revoked meanwhile would keep working. Without them,
/// the same client resumes (which shows the check can see a resumption).
#[tokio::test]
async fn client_certificate_listeners_never_resume_a_session() -> TestResult {
    let mut fixture = Fixture::new()?;
    let device = fixture.pki.client("device", "device", Validity::Now)?;
    let ca = fixture.pki.ca().to_owned();
    for (client_auth, second) in [
        (ClientAuth::Required, HandshakeKind::Full),
        (ClientAuth::None, HandshakeKind::Resumed),
    ] {
        let acceptor = start(&fixture.config(client_auth))?;
        let client = Client::trusting(&ca).presenting(&device);
        // One config for both connections: its session store is what would resume.
        let config = Arc::new(client.config()?);
        let first = exchange(&acceptor, config.clone()).await?;
        assert_eq!(first, Some(HandshakeKind::Full));
        let again = exchange(&acceptor, config).await?;
        assert_eq!(again, Some(second), "client_auth {client_auth:?}");
    }
    Ok(())
}

/// A handshake and a byte each way (the client reads what the server sent after the handshake,
/// session tickets included); the kind of handshake the client saw.
async fn exchange(
    acceptor: &TlsAcceptor,
    config: Arc<ClientConfig>,
) -> Result<Option<HandshakeKind>, Box<dyn std::error::Error + Send + Sync>> {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(config);
    let client_side = async move {
        let mut stream = connector
            .connect(ServerName::try_from("gateway.test")?, client_end)
            .await?;
        stream.write_all(b"x").await?;
        stream.flush().await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(stream.get_ref().1.handshake_kind())
    };
    let server_side = async {
        let (mut stream, _) = acceptor
            .handshake(server_end)
            .await
            .map_err(|refusal| refusal.detail)?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        stream.write_all(b"y").await?;
        stream.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let (kind, served) = tokio::join!(client_side, server_side);
    served?;
    kind
}
