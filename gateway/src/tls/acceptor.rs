//! A listener's TLS acceptor: the server config loaded from its files, watched and swapped whole
//! when they change (new handshakes use the new certificate, live connections keep theirs; a file
//! that does not load leaves the last good config serving and is reported), and the handshake
//! itself, bounded in time, whose refusals are logged with the peer and the reason and counted.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::{CertificateError, Error as TlsError, PeerIncompatible, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{
    ClientIdentity,
    config::TlsConfig,
    material::{self, Digest, Files},
};
use crate::{Result, metrics::names};

/// Accepts TLS on one listener with the current certificates. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    listener: &'static str,
    current: Arc<ArcSwap<ServerConfig>>,
    handshake_timeout: Duration,
}

/// A finished handshake: the stream, and the client's certificate identity if it presented one.
pub type Accepted<S> = (TlsStream<S>, Option<ClientIdentity>);

impl TlsAcceptor {
    /// Loads what `config` names (an error names the file and what was wrong with it) and checks
    /// the files every `reload_interval` until `stop`. `listener` names it in logs and metrics
    /// (`mqtt` for MQTT over TLS and secure WebSocket alike, `amqp`, `grpc`, `http`); `alpn` is
    /// what it offers (`h2` for gRPC).
    pub fn start(
        listener: &'static str,
        config: &TlsConfig,
        alpn: &[&[u8]],
        stop: CancellationToken,
    ) -> Result<Self> {
        let files = Files::read(config)?;
        let current = Arc::new(ArcSwap::new(material::build(config, &files, alpn)?));
        let watcher = Watcher {
            listener,
            config: config.clone(),
            alpn: alpn.iter().map(|protocol| protocol.to_vec()).collect(),
            current: current.clone(),
            seen: files.digest,
        };
        tokio::spawn(watcher.run(stop));
        Ok(Self {
            listener,
            current,
            handshake_timeout: config.handshake_timeout,
        })
    }

    /// Completes the server side of a handshake on `stream`. `None` when it was refused or failed:
    /// then the reason is logged with `peer` and counted in `courier_tls_handshake_failures_total`.
    pub async fn accept<S>(&self, stream: S, peer: SocketAddr) -> Option<Accepted<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let refusal = match self.handshake(stream).await {
            Ok(accepted) => return Some(accepted),
            Err(refusal) => refusal,
        };
        metrics::counter!(names::TLS_HANDSHAKE_FAILURES, "listener" => self.listener, "reason" => refusal.reason)
            .increment(1);
        match refusal.reason {
            // A client that went away or never spoke: not worth more than a debug line.
            "closed" | "timeout" => {
                tracing::debug!(%peer, listener = self.listener, reason = refusal.reason, detail = %refusal.detail, "TLS handshake failed");
            }
            _ => {
                tracing::warn!(%peer, listener = self.listener, reason = refusal.reason, detail = %refusal.detail, "TLS handshake refused");
            }
        }
        None
    }

    /// The handshake alone, neither logged nor counted: [`accept`](Self::accept) without the
    /// reporting.
    pub async fn handshake<S>(&self, stream: S) -> std::result::Result<Accepted<S>, Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(ClientIdentity::of);
                Ok((stream, identity))
            }
            Ok(Err(error)) => Err(Refusal::of(&error)),
            Err(_) => Err(Refusal {
                reason: "timeout",
                detail: format!("no handshake within {:?}", self.handshake_timeout),
            }),
        }
    }
}

/// Why a handshake failed, as a metric label and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `reason` label: `unknown_ca`, `certificate_expired`, `certificate_not_yet_valid`,
    /// `certificate_revoked`, `revocation_unknown`, `bad_certificate`, `certificate_required`,
    /// `protocol_version`, `incompatible`, `not_tls`, `no_application_protocol`, `client_alert`,
    /// `timeout`, `closed`, `io` or `other`.
    pub reason: &'static str,
    /// What rustls or the socket said.
    pub detail: String,
}

impl Refusal {
    fn of(error: &std::io::Error) -> Self {
        let detail = error.to_string();
        let reason = match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
        {
            Some(error) => reason(error),
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => "closed",
            None => "io",
        };
        Self { reason, detail }
    }
}

/// The metric label of a handshake error.
fn reason(error: &TlsError) -> &'static str {
    match error {
        TlsError::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::Revoked => "certificate_revoked",
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "revocation_unknown",
            _ => "bad_certificate",
        },
        TlsError::NoCertificatesPresented => "certificate_required",
        // A TLS 1.0 or 1.1 ClientHello has no signature algorithms extension (TLS 1.2 added it),
        // and rustls misses that before it reads the version: such a client offered no version
        // served here.
        TlsError::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ) => "protocol_version",
        TlsError::PeerIncompatible(_) => "incompatible",
        // Bytes that are no TLS record: a plain-text client on a TLS port.
        TlsError::InvalidMessage(_) => "not_tls",
        TlsError::NoApplicationProtocol => "no_application_protocol",
        TlsError::AlertReceived(_) => "client_alert",
        _ => "other",
    }
}

/// Checks a listener's files and swaps in a new config when they changed and load.
struct Watcher {
    listener: &'static str,
    config: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: Arc<ArcSwap<ServerConfig>>,
    /// The files as last seen, loaded or not: a bad file is reported once, not every interval.
    seen: Digest,
}

impl Watcher {
    async fn run(mut self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.reload_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => self.check(),
            }
        }
    }

    fn check(&mut self) {
        let files = match Files::read(&self.config) {
            Ok(files) => files,
            Err(error) => {
                // A file missing for a moment (a secret's files are swapped one by one): try again.
                tracing::debug!(listener = self.listener, %error, "TLS files not readable now");
                return;
            }
        };
        if files.digest == self.seen {
            return;
        }
        // Built from the very bytes just compared, so a failure is reported once per change and
        // the next change is tried however it went.
        self.seen = files.digest.clone();
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        match material::build(&self.config, &files, &alpn) {
            Ok(server) => {
                self.current.store(server);
                metrics::counter!(names::TLS_RELOADS, "listener" => self.listener, "outcome" => "loaded").increment(1);
                tracing::info!(listener = self.listener, "TLS certificates reloaded");
            }
            Err(error) => {
                metrics::counter!(names::TLS_RELOADS, "listener" => self.listener, "outcome" => "failed").increment(1);
                tracing::error!(listener = self.listener, %error, "new TLS files do not load; the previous certificates stay in use");
            }
        }
    }
}
