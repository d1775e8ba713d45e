//! Who a verified client certificate says the client is: what authentication can take as the
//! principal (the subject's common name, or a subject alternative name) and the certificate's
//! fingerprint, to pin or to log.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

/// A client certificate's identity, read from the end-entity certificate after the handshake
/// verified its chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientIdentity {
    /// The subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// URIs among the subject alternative names (SPIFFE ids, for one).
    pub uris: Vec<String>,
    /// E-mail addresses among the subject alternative names.
    pub emails: Vec<String>,
    /// SHA-256 of the certificate's DER, in lower-case hex.
    pub fingerprint: String,
}

impl ClientIdentity {
    /// The identity of `certificate`; `None` if it does not parse (the verifier accepted it, so it
    /// does, but the parser is not the verifier's).
    pub fn of(certificate: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = X509Certificate::from_der(certificate.as_ref()).ok()?;
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .map(str::to_owned);
        let mut identity = Self {
            common_name,
            fingerprint: hex(
                ring::digest::digest(&ring::digest::SHA256, certificate.as_ref()).as_ref(),
            ),
            ..Self::default()
        };
        if let Ok(Some(names)) = parsed.subject_alternative_name() {
            for name in &names.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::RFC822Name(email) => identity.emails.push((*email).to_owned()),
                    _ => {}
                }
            }
        }
        Some(identity)
    }

    /// The name a principal would take: the common name, else the first URI, DNS name or e-mail.
    pub fn name(&self) -> Option<&str> {
        self.common_name
            .as_deref()
            .or(self.uris.first().map(String::as_str))
            .or(self.dns_names.first().map(String::as_str))
            .or(self.emails.first().map(String::as_str))
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (sha256 {})", self.fingerprint),
            None => write!(f, "sha256 {}", self.fingerprint),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
