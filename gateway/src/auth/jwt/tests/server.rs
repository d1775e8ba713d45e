//! A JWKS endpoint for the tests: HTTP/1.1 (or HTTPS) on loopback, answering every request
//! with what the test last set, counting connections.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

/// What the test server answers.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Json(String),
    /// JSON without a Content-Length, its end marked by closing the connection.
    Unsized(String),
    Status(u16),
    /// Close the connection without answering.
    Close,
    /// Read the request, never answer.
    Hang,
}

/// A server answering every request with the current [`Answer`].
pub(super) struct JwksServer {
    pub(super) url: String,
    answer: Arc<Mutex<Answer>>,
    /// Connections accepted.
    hits: Arc<AtomicUsize>,
    /// The request line of the last request read.
    last_request: Arc<Mutex<String>>,
    _stop: DropGuard,
}

/// A self-signed certificate for `localhost`, to serve HTTPS with and to trust.
pub(super) struct TestCertificate {
    pub(super) der: CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestCertificate {
    pub(super) fn localhost() -> Self {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        Self {
            der: issued.cert.der().clone(),
            key: issued.signing_key.serialize_der(),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl JwksServer {
    /// A plain HTTP server.
    pub(super) async fn start(answer: Answer) -> Self {
        Self::serve(answer, None).await
    }

    /// An HTTPS server presenting `certificate`, at `https://localhost:PORT/...`.
    pub(super) async fn start_tls(answer: Answer, certificate: &TestCertificate) -> Self {
        Self::serve(answer, Some(certificate.acceptor())).await
    }

    async fn serve(answer: Answer, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            None => format!("http://127.0.0.1:{port}/realms/test/protocol/openid-connect/certs"),
            Some(_) => {
                format!("https://localhost:{port}/realms/test/protocol/openid-connect/certs")
            }
        };
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let last_request = Arc::new(Mutex::new(String::new()));
        let stop = CancellationToken::new();
        let (answering, counting, recording, accepting) = (
            answer.clone(),
            hits.clone(),
            last_request.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    () = accepting.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                };
                counting.fetch_add(1, Ordering::SeqCst);
                let answer = answering.lock().unwrap().clone();
                let (recording, stop) = (recording.clone(), accepting.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => respond(socket, answer, recording, stop).await,
                        Some(tls) => {
                            if let Ok(socket) = tls.accept(socket).await {
                                respond(socket, answer, recording, stop).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            url,
            answer,
            hits,
            last_request,
            _stop: stop.drop_guard(),
        }
    }

    pub(super) fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub(super) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub(super) fn last_request(&self) -> String {
        self.last_request.lock().unwrap().clone()
    }
}

async fn respond(
    mut socket: impl AsyncRead + AsyncWrite + Unpin,
    answer: Answer,
    last_request: Arc<Mutex<String>>,
    stop: CancellationToken,
) {
    let mut request = Vec::new();
    let mut buffer = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    *last_request.lock().unwrap() = text.lines().next().unwrap_or_default().to_owned();
    let response = match answer {
        Answer::Json(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
        Answer::Unsized(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
        ),
        Answer::Status(code) => {
            format!("HTTP/1.1 {code} Failing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Answer::Close => return,
        Answer::Hang => {
            stop.cancelled().await;
            return;
        }
    };
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}
