//! TLS for a benchmark run: a CA and a server certificate for 127.0.0.1 made at the start (rcgen),
//! written where both brokers read them, and the rustls client config every load client uses.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore};

/// The run's certificate files and client config.
pub(super) struct BenchTls {
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub(super) ca: PathBuf,
    /// The server's certificate (PEM), for 127.0.0.1 and localhost.
    pub(super) cert: PathBuf,
    /// Its key (PEM).
    pub(super) key: PathBuf,
    /// What the load clients connect with: the CA trusted, nothing else.
    pub(super) client: Arc<ClientConfig>,
}

impl BenchTls {
    pub(super) fn new() -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a directory for the certificates")?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "courier bench CA");
        let ca_certificate = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate()?;
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&server_key, &issuer)?;
        let (ca, cert, key) = (
            dir.path().join("ca.crt"),
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
        );
        std::fs::write(&ca, ca_certificate.pem())?;
        std::fs::write(&cert, server.pem())?;
        std::fs::write(&key, server_key.serialize_pem())?;
        let mut roots = RootCertStore::empty();
        roots.add(ca_certificate.der().clone())?;
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            _dir: dir,
            ca,
            cert,
            key,
            client: Arc::new(client),
        })
    }
}
