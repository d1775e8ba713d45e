//! AMQPS in the crate: the plain address turned to TLS when `[amqp.tls]` names no listener of its
//! own (the end-to-end tests in the root `tests/amqp.rs` run a TLS listener beside the plain one), a
//! client that skips SASL over TLS (fe2o3's own client on a rustls stream), and certificates that do
//! not load refused at bind with the key named.

use std::{sync::Arc, time::Duration};

use courier_amqp::{Config, Server};
use courier_gateway::{
    auth::{Access, Protected},
    tls::TlsConfig,
};
use courier_testkit::certs::TestPki;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn client_config(
    ca: &std::path::Path,
) -> Result<ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca)? {
        roots.add(certificate?)?;
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_replaces_the_plain_address_when_it_names_no_listener() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut pki = TestPki::new(dir.path(), "amqp")?;
    let server_cert = pki.server("server", &["localhost"])?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        tls: Some(TlsConfig::new(&server_cert.cert, &server_cert.key)),
        ..Config::default()
    };
    let server = Server::bind(
        courier_gateway::testing::embedded(&dir.path().join("data")).await?,
        config,
        Access::loopback("amqp", Protected::new([])),
    )
    .await?;
    let address = server.local_addr()?;
    assert_eq!(server.addresses()?, vec![("amqps", address)]);
    let drain = CancellationToken::new();
    let serving = tokio::spawn(server.serve(drain.clone()));

    let tcp = tokio::net::TcpStream::connect(address).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(pki.ca())?));
    let stream = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    // No SASL profile: the client sends the AMQP header at once, over TLS.
    let mut connection = Connection::builder()
        .container_id("tls-test")
        .open_with_stream(stream)
        .await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "tls-sender", "amqps-topic").await?;
    let mut receiver =
        Receiver::attach(&mut session, "tls-receiver", "amqps-topic/groups/g").await?;
    let outcome = sender.send("over TLS").await?;
    assert!(outcome.is_accepted(), "{outcome:?}");
    let delivery =
        tokio::time::timeout(Duration::from_secs(10), receiver.recv::<String>()).await??;
    assert_eq!(delivery.body(), "over TLS");
    receiver.accept(&delivery).await?;
    sender.close().await?;
    receiver.close().await?;
    session.end().await?;
    connection.close().await?;

    drain.cancel();
    serving.await??;
    Ok(())
}

#[tokio::test]
async fn certificates_that_do_not_load_are_refused_at_bind_naming_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        tls: Some(TlsConfig::new(
            dir.path().join("missing.crt"),
            dir.path().join("missing.key"),
        )),
        ..Config::default()
    };
    let error = Server::bind(
        courier_gateway::testing::embedded(&dir.path().join("data")).await?,
        config,
        Access::loopback("amqp", Protected::new([])),
    )
    .await
    .err()
    .ok_or("bound with missing certificates")?;
    let error = error.to_string();
    assert!(
        error.starts_with("amqp.tls: ") && error.contains("missing.crt"),
        "{error}"
    );
    Ok(())
}
