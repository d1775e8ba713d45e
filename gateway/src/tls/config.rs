//! A listener's `[<front end>.tls]` table: where its certificate, key and client CA are, how client
//! certificates are asked for, and where the TLS listeners are.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// TLS for one front end's listeners. Files are PEM, in the layout cert-manager and Kubernetes TLS
/// secrets give (`tls.crt`, `tls.key`, `ca.crt`); they are read again when they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of a TLS listener beside the plain one. Unset (and no `websocket_listen`): the
    /// front end's own listeners speak TLS instead of plain text.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// MQTT only: address of an MQTT-over-secure-WebSocket listener beside the plain ones.
    #[serde(default)]
    pub websocket_listen: Option<SocketAddr>,
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// More certificates, chosen by the name a client asks for (SNI); a client naming none of them,
    /// or no name, gets `cert`.
    #[serde(default)]
    pub sni: Vec<SniCertificate>,
    /// CA certificates that client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether clients present a certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM) of the client CAs; a revoked client certificate is refused.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Oldest TLS version accepted: `"1.2"` or `"1.3"`. Older versions are never accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// How often the files are checked for changes (a changed file is loaded for new handshakes;
    /// live connections keep theirs).
    #[serde(
        default = "TlsConfig::default_reload_interval",
        with = "humantime_serde"
    )]
    pub reload_interval: Duration,
    /// Longest a TLS handshake may take.
    #[serde(
        default = "TlsConfig::default_handshake_timeout",
        with = "humantime_serde"
    )]
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    fn default_reload_interval() -> Duration {
        Duration::from_secs(10)
    }

    fn default_handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// A config serving `cert` and `key` with the defaults (no client certificates, TLS 1.2 and up).
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            listen: None,
            websocket_listen: None,
            cert: cert.into(),
            key: key.into(),
            sni: Vec::new(),
            client_ca: None,
            client_auth: ClientAuth::None,
            crl: None,
            min_version: TlsVersion::Tls12,
            reload_interval: Self::default_reload_interval(),
            handshake_timeout: Self::default_handshake_timeout(),
        }
    }

    /// Whether the front end's own listeners speak TLS (no separate TLS address is named).
    pub fn replaces_plain(&self) -> bool {
        self.listen.is_none() && self.websocket_listen.is_none()
    }

    /// The `[<front_end>.tls]` table's mistakes, the error naming the key (`mqtt.tls.client_ca`):
    /// those of [`validate`](Self::validate), and a `websocket_listen` where the front end serves
    /// no WebSocket (refused rather than silently serving nothing).
    pub fn validate_for(&self, front_end: &str, websocket: bool) -> Result<(), String> {
        if self.websocket_listen.is_some() && !websocket {
            return Err(format!(
                "{front_end}.tls.websocket_listen: only MQTT serves WebSocket; use listen"
            ));
        }
        self.validate()
            .map_err(|error| format!("{front_end}.tls.{error}"))
    }

    /// The mistakes a config can make on its own: a client CA without asking for certificates (or
    /// the reverse), a CRL without a CA. The key names are relative to the table (`client_ca`).
    pub fn validate(&self) -> Result<(), String> {
        match (self.client_auth, &self.client_ca) {
            (ClientAuth::None, Some(_)) => {
                return Err(
                    "client_ca is set but client_auth is \"none\": set client_auth to \"optional\" or \"required\""
                        .into(),
                );
            }
            (ClientAuth::Optional | ClientAuth::Required, None) => {
                return Err("client_auth asks for client certificates: set client_ca".into());
            }
            _ => {}
        }
        if self.crl.is_some() && self.client_ca.is_none() {
            return Err("crl is set without client_ca".into());
        }
        if self.reload_interval.is_zero() || self.handshake_timeout.is_zero() {
            return Err("reload_interval and handshake_timeout must be more than 0s".into());
        }
        Ok(())
    }
}

/// A certificate for the names clients ask for by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Host names served with this certificate; `*.example.com` matches one label.
    pub names: Vec<String>,
    /// Its chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// A client may present one (it must then be valid); one without is let in.
    Optional,
    /// Every client must present a valid certificate.
    Required,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}
