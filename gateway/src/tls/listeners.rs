//! A request/response endpoint's listeners (gRPC, HTTP): one plain, one over TLS, or both, accepted
//! by one task. TLS handshakes run in tasks of their own, so a slow client never holds up the
//! others; finished connections arrive on a channel, plain or TLS alike ([`MaybeTls`]).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};

use super::{ClientIdentity, TlsAcceptor, TlsConfig, TlsStream};
use crate::{
    Result,
    limits::{ListenerGate, Permit},
};

/// The listeners of one endpoint, bound, with the TLS certificates loaded.
#[derive(Debug)]
pub struct Listeners {
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TlsAcceptor)>,
    /// Stops the certificates' reloader when these listeners go, served or not.
    _reloader: DropGuard,
}

/// A connection, its TLS handshake done.
#[derive(Debug)]
pub struct Connection {
    /// The stream.
    pub stream: MaybeTls,
    /// The client's address.
    pub peer: SocketAddr,
    /// The verified client certificate's identity, when the client presented one.
    pub certificate: Option<ClientIdentity>,
    /// Its place under the connection limits, when its listener has a gate: keep it as long as
    /// the connection.
    pub permit: Option<Permit>,
}

/// The connection limits of an endpoint's two listeners ([`Listeners::incoming_through`]).
#[derive(Debug, Clone)]
pub struct Gates {
    /// The plain listener's.
    pub plain: ListenerGate,
    /// The TLS listener's.
    pub tls: ListenerGate,
}

impl Listeners {
    /// Binds `listen`, and `tls.listen` when the TLS table names one; with a TLS table and no
    /// address of its own, `listen` speaks TLS. `name` labels the TLS listener in logs and metrics;
    /// `alpn` is what it offers.
    pub async fn bind(
        listen: SocketAddr,
        tls: Option<&TlsConfig>,
        name: &'static str,
        alpn: &[&[u8]],
    ) -> Result<Self> {
        let main = TcpListener::bind(listen)
            .await
            .map_err(bind_error(listen))?;
        let reloader = CancellationToken::new();
        // Armed before the reloader starts: a bind that fails below stops it too.
        let guard = reloader.clone().drop_guard();
        let Some(settings) = tls else {
            return Ok(Self {
                plain: Some(main),
                tls: None,
                _reloader: guard,
            });
        };
        let acceptor = TlsAcceptor::start(name, settings, alpn, reloader)?;
        let (plain, tls) = match settings.listen {
            Some(address) => {
                let tls = TcpListener::bind(address)
                    .await
                    .map_err(bind_error(address))?;
                (Some(main), tls)
            }
            None => (None, main),
        };
        Ok(Self {
            plain,
            tls: Some((tls, acceptor)),
            _reloader: guard,
        })
    }

    /// The bound addresses, named as the ready line names them: `plain` (`grpc`, `http`) for the
    /// plain listener, `tls` (`grpcs`, `https`) for the TLS one.
    pub fn addresses(
        &self,
        plain: &'static str,
        tls: &'static str,
    ) -> io::Result<Vec<(&'static str, SocketAddr)>> {
        let mut addresses = Vec::new();
        if let Some(listener) = &self.plain {
            addresses.push((plain, listener.local_addr()?));
        }
        if let Some((listener, _)) = &self.tls {
            addresses.push((tls, listener.local_addr()?));
        }
        Ok(addresses)
    }

    /// Accepts until `stop` fires (or the receiver is dropped), sending each connection once its
    /// handshake is done.
    pub fn incoming(self, stop: CancellationToken) -> mpsc::Receiver<Connection> {
        let (connections, incoming) = mpsc::channel(64);
        tokio::spawn(self.accept(connections, None, stop));
        incoming
    }

    /// As [`Listeners::incoming`], admitting each connection through its listener's gate first:
    /// one the limits refuse is closed at accept, before any TLS handshake (a request/response
    /// protocol has no answer to give before one, and the handshake is what a flood would have
    /// the gateway spend).
    pub fn incoming_through(
        self,
        gates: Gates,
        stop: CancellationToken,
    ) -> mpsc::Receiver<Connection> {
        let (connections, incoming) = mpsc::channel(64);
        tokio::spawn(self.accept(connections, Some(gates), stop));
        incoming
    }

    async fn accept(
        self,
        connections: mpsc::Sender<Connection>,
        gates: Option<Gates>,
        stop: CancellationToken,
    ) {
        let handshakes = TaskTracker::new();
        loop {
            let (accepted, tls) = tokio::select! {
                () = stop.cancelled() => break,
                () = connections.closed() => break,
                accepted = accept_on(self.plain.as_ref()) => (accepted, None),
                accepted = accept_on(self.tls.as_ref().map(|(listener, _)| listener)) => {
                    (accepted, self.tls.as_ref().map(|(_, acceptor)| acceptor.clone()))
                }
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: the listener itself is fine, so keep accepting.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let gate = gates.as_ref().map(|gates| match tls {
                Some(_) => &gates.tls,
                None => &gates.plain,
            });
            let permit = match gate.map(|gate| gate.admit(peer)).transpose() {
                Ok(permit) => permit,
                // Counted by the gate; dropping the stream closes it.
                Err(_) => continue,
            };
            // Small answers (acks) go out at once: Nagle's algorithm would hold them back.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
            }
            let Some(acceptor) = tls else {
                let connection = Connection {
                    stream: MaybeTls::Plain(stream),
                    peer,
                    certificate: None,
                    permit,
                };
                if connections.send(connection).await.is_err() {
                    break;
                }
                continue;
            };
            let (connections, stop) = (connections.clone(), stop.clone());
            handshakes.spawn(async move {
                let accepted = tokio::select! {
                    accepted = acceptor.accept(stream, peer) => accepted,
                    () = stop.cancelled() => None,
                };
                if let Some((stream, certificate)) = accepted {
                    let connection = Connection {
                        stream: MaybeTls::Tls(Box::new(stream)),
                        peer,
                        certificate,
                        permit,
                    };
                    let _ = connections.send(connection).await;
                }
            });
        }
        // The ports close at once (new clients are refused, not left in the backlog) while the
        // handshakes under way give up.
        drop((self.plain, self.tls));
        handshakes.close();
        handshakes.wait().await;
    }
}

fn bind_error(address: SocketAddr) -> impl FnOnce(io::Error) -> crate::Error {
    move |source| crate::Error::Bind { address, source }
}

/// Accepts on a listener that may not be bound (then never resolves): one `select!` branch per
/// listener an endpoint may have, plain or TLS.
pub async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A TCP stream, plain or under TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain text.
    Plain(TcpStream),
    /// TLS (boxed: a TLS stream is several hundred bytes, a plain one a few).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Forwards a poll to the stream under it.
macro_rules! forward {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            MaybeTls::Tls($stream) => {
                let $stream = Pin::new($stream.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, stream => stream.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, stream => stream.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, stream => stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, stream => stream.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, stream => stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(stream) => stream.is_write_vectored(),
            MaybeTls::Tls(stream) => stream.is_write_vectored(),
        }
    }
}
