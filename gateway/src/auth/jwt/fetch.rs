//! One GET of a JWKS URL over HTTP/1.1 (TLS for `https://`), bounded in time and size: an
//! identity provider that hangs or answers with megabytes costs one refresh, nothing more.
//!
//! A connection per fetch, closed after it: fetches are minutes apart, so a pool would only hold
//! idle sockets. Redirects are not followed; JWKS URLs are the provider's final address.

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::{
    Request, Uri,
    header::{ACCEPT, CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT},
    rt::{Read, Write},
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::errors::{JwksError, JwtError};

/// The largest JWKS accepted. Real ones are a few KiB; this leaves room for many keys with
/// certificate chains.
pub(super) const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where a JWKS URL points.
#[derive(Debug, Clone)]
pub(super) struct Target {
    https: bool,
    /// The host to connect to and to name in TLS, without an IPv6 literal's brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    path_and_query: String,
}

impl Target {
    /// Parses an `http://` or `https://` URL, or says what is wrong with it.
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with http:// or https://".into()),
        };
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("may not carry credentials (user@host)".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("has no host".into());
        }
        if !https && !is_loopback(host) {
            // The key set decides who is who: over plain HTTP anyone on the path could replace it.
            return Err("must be https:// (plain http:// only to a loopback host)".into());
        }
        Ok(Self {
            https,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Fetches one URL.
pub(super) struct Fetcher {
    url: String,
    target: Target,
    /// For `https://`: the TLS client, trusting the system's roots.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher of `url`, each fetch bounded by `timeout`. For `https://`, the system's root
    /// certificates are loaded now; finding none is an error.
    pub(super) fn new(url: &str, timeout: Duration) -> Result<Self, JwtError> {
        Self::trusting(url, timeout, native_roots)
    }

    /// A fetcher of `url` that trusts the roots `roots` gives (asked only for `https://`).
    pub(super) fn trusting(
        url: &str,
        timeout: Duration,
        roots: impl FnOnce() -> Result<rustls::RootCertStore, String>,
    ) -> Result<Self, JwtError> {
        let tls_error = |detail: String| JwtError::Tls {
            url: url.to_owned(),
            detail,
        };
        let target = Target::parse(url)
            .map_err(|reason| JwtError::Config(format!("auth.jwt.jwks_url {url:?}: {reason}")))?;
        let tls = if target.https {
            let name = match target.host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(target.host.clone())
                    .map_err(|e| tls_error(format!("not a TLS server name: {e}")))?,
            };
            let config = client_config(roots().map_err(tls_error)?).map_err(tls_error)?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            target,
            tls,
            timeout,
        })
    }

    /// The URL fetched.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The body of a 2xx answer to a GET, at most [`MAX_JWKS_BYTES`].
    pub(super) async fn get(&self) -> Result<Vec<u8>, JwksError> {
        tokio::time::timeout(self.timeout, self.exchange())
            .await
            .map_err(|_| JwksError::TimedOut(self.timeout))?
    }

    async fn exchange(&self) -> Result<Vec<u8>, JwksError> {
        let fetch = |e: std::io::Error| JwksError::Fetch(e.into());
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(fetch)?;
        // Plain HTTP was allowed for a loopback host only: `localhost` must have resolved to one
        // (not to whatever a tampered resolver said).
        if self.tls.is_none() && !tcp.peer_addr().map_err(fetch)?.ip().is_loopback() {
            return Err(fetch(std::io::Error::other(format!(
                "{} did not resolve to a loopback address; plain http:// is only for loopback",
                self.target.host
            ))));
        }
        match &self.tls {
            None => self.request(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(fetch)?;
                self.request(TokioIo::new(tls)).await
            }
        }
    }

    async fn request<T>(&self, io: T) -> Result<Vec<u8>, JwksError>
    where
        T: Read + Write + Unpin + Send + 'static,
    {
        let fetch = |e: hyper::Error| JwksError::Fetch(e.into());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(fetch)?;
        let request = Request::get(self.target.path_and_query.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("courier/", env!("CARGO_PKG_VERSION")))
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Fetch(e.into()))?;
        let response = sender.send_request(request);
        let body = async {
            let response = response.await.map_err(fetch)?;
            if !response.status().is_success() {
                return Err(JwksError::Status(response.status().as_u16()));
            }
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|length| length > MAX_JWKS_BYTES as u64) {
                return Err(JwksError::TooLarge {
                    limit: MAX_JWKS_BYTES,
                });
            }
            let collected = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        JwksError::TooLarge {
                            limit: MAX_JWKS_BYTES,
                        }
                    } else {
                        JwksError::Fetch(e)
                    }
                })?;
            Ok(collected.to_bytes().to_vec())
        };
        // The connection future does the socket I/O the response and its body need, so both are
        // polled together; once the body is in, the connection is dropped (closing the socket).
        tokio::pin!(body, connection);
        let mut connection_done = false;
        loop {
            tokio::select! {
                result = &mut body => return result,
                ended = &mut connection, if !connection_done => {
                    connection_done = true;
                    // Closing cleanly can still leave a complete body to read: keep polling it.
                    ended.map_err(fetch)?;
                }
            }
        }
    }
}

/// The system's trusted roots (honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`).
fn native_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no trusted root certificates found on this system (install ca-certificates, or \
             point SSL_CERT_FILE at a bundle){}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            }
        ));
    }
    Ok(roots)
}

/// A TLS client trusting `roots`, on ring (as the listeners are).
fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
