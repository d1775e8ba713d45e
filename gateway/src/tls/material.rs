//! From the files a `[<front end>.tls]` table names to a rustls `ServerConfig`: certificates and keys
//! (one default, more by SNI name), the client certificate verifier with its CA and revocation
//! lists, the versions and the ALPN protocols. The files are read once ([`Files`]) and both their
//! digest (has anything changed?) and the config are made from what was read.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    version::{TLS12, TLS13},
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject,
};

use super::config::{ClientAuth, TlsConfig, TlsVersion};
use crate::{Error, Result};

/// SHA-256 over every file a config names, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digest(Vec<u8>);

/// The files a config names, read, and their digest.
pub(super) struct Files {
    contents: HashMap<PathBuf, Vec<u8>>,
    /// What the reloader compares: a config is built again only when this changed.
    pub(super) digest: Digest,
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the contents: a private key is among them.
        f.debug_struct("Files")
            .field("paths", &self.contents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Files {
    /// Reads every file `config` names, in a fixed order.
    pub(super) fn read(config: &TlsConfig) -> Result<Self> {
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut contents = HashMap::new();
        for path in paths(config) {
            let bytes = std::fs::read(path).map_err(|error| tls_error(path, "reading", error))?;
            // The path too: two files swapped for each other are a change.
            hasher.update(path.as_os_str().as_encoded_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            contents.insert(path.to_owned(), bytes);
        }
        Ok(Self {
            contents,
            digest: Digest(hasher.finish().as_ref().to_vec()),
        })
    }

    fn get(&self, path: &Path) -> &[u8] {
        self.contents.get(path).map_or(&[], Vec::as_slice)
    }
}

fn tls_error(
    path: &Path,
    doing: &str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Tls {
        what: format!("{doing} {}", path.display()),
        source: source.into(),
    }
}

fn paths(config: &TlsConfig) -> impl Iterator<Item = &Path> {
    [config.cert.as_path(), config.key.as_path()]
        .into_iter()
        .chain(config.client_ca.as_deref())
        .chain(config.crl.as_deref())
        .chain(
            config
                .sni
                .iter()
                .flat_map(|sni| [sni.cert.as_path(), sni.key.as_path()]),
        )
}

/// A server config offering `alpn` from the files `config` names, as `files` holds them.
pub(super) fn build(
    config: &TlsConfig,
    files: &Files,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = certified_key(files, &config.cert, &config.key, &provider)?;
    let mut by_name = HashMap::new();
    for sni in &config.sni {
        let key = certified_key(files, &sni.cert, &sni.key, &provider)?;
        for name in &sni.names {
            by_name.insert(name.to_ascii_lowercase(), key.clone());
        }
    }
    let versions: &[&'static SupportedProtocolVersion] = match config.min_version {
        TlsVersion::Tls12 => &[&TLS13, &TLS12],
        TlsVersion::Tls13 => &[&TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|error| tls_error(&config.cert, "choosing the TLS versions for", error))?;
    let builder = match (&config.client_ca, config.client_auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(files.get(ca)) {
                let certificate =
                    certificate.map_err(|error| tls_error(ca, "reading certificates in", error))?;
                roots
                    .add(certificate)
                    .map_err(|error| tls_error(ca, "adding a CA certificate from", error))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &config.crl {
                let lists = CertificateRevocationListDer::pem_slice_iter(files.get(crl))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|error| tls_error(crl, "reading revocation lists in", error))?;
                // rustls checks no revocation at all when given no list: a DER, empty or half
                // written file must not switch revocation off.
                if lists.is_empty() {
                    return Err(tls_error(crl, "reading", "no PEM X509 CRL in the file"));
                }
                verifier = verifier.with_crls(lists);
            }
            if config.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|error| tls_error(ca, "building the client verifier from", error))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(Certificates { default, by_name }));
    server.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    if config.client_auth != ClientAuth::None {
        // A resumed session skips the client certificate's verification, so a certificate revoked
        // (or a CA removed) after the first handshake would keep working: every handshake is full.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
    }
    Ok(Arc::new(server))
}

fn certified_key(
    files: &Files,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(files.get(cert))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| tls_error(cert, "reading certificates in", error))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "reading", "no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_slice(files.get(key))
        .map_err(|error| tls_error(key, "reading the private key in", error))?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|error| tls_error(key, "pairing the certificate with the key in", error))?;
    Ok(Arc::new(certified))
}

/// The certificate for a client's SNI name, else the default one.
struct Certificates {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    fn for_name(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        self.by_name.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.by_name.get(&format!("*.{parent}"))
        })
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| self.for_name(name));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}
