//! Certificates made at test time: a CA of its own per test, server and client certificates signed by
//! it (valid now, expired, or not valid yet), and revocation lists, written as PEM files the gateway
//! and real clients (mosquitto, paho, grpcio, qpid-proton, openssl) read.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// What the helpers here fail with.
pub type CertError = Box<dyn std::error::Error + Send + Sync>;

/// A test CA and the directory its files go to.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
    next_serial: u64,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Its serial number, to revoke it.
    pub serial: u64,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago to a day ahead.
    Now,
    /// It ended yesterday.
    Expired,
    /// It starts tomorrow.
    NotYetValid,
}

impl TestPki {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.crt`.
    pub fn new(dir: &Path, name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let certificate = params.self_signed(&key)?;
        let ca_file = dir.join(format!("{name}-ca.crt"));
        fs::write(&ca_file, certificate.pem())?;
        Ok(Self {
            dir: dir.to_owned(),
            ca: Issuer::new(params, key),
            ca_file,
            next_serial: 1,
        })
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `names` (DNS names or IP addresses), written to `dir/<file>.crt`
    /// and `.key`.
    pub fn server(&mut self, file: &str, names: &[&str]) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params, Validity::Now)
    }

    /// A client certificate with subject `common_name` and the SAN URI `spiffe://courier.test/<common_name>`.
    pub fn client(
        &mut self,
        file: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://courier.test/{common_name}").try_into()?,
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params, validity)
    }

    /// A revocation list of this CA naming `serials`, valid from an hour ago for a day, written to
    /// `dir/<file>`.
    pub fn crl(&self, file: &str, serials: &[u64]) -> Result<PathBuf, CertError> {
        let now = OffsetDateTime::now_utc();
        let list = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)?;
        let path = self.dir.join(file);
        fs::write(&path, list.pem()?)?;
        Ok(path)
    }

    fn issue(
        &mut self,
        file: &str,
        mut params: CertificateParams,
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match validity {
            Validity::Now => (now - Duration::days(1), now + Duration::days(1)),
            Validity::Expired => (now - Duration::days(3), now - Duration::days(1)),
            Validity::NotYetValid => (now + Duration::days(1), now + Duration::days(3)),
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.ca)?;
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
            serial,
        };
        fs::write(&issued.cert, certificate.pem())?;
        fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }
}
